//! The HTTP listener of the API (and of the agent API over TLS): HTTP/1.1 by hyper, with
//! limits a slow or hostile client cannot get past, so that one tenant's client never takes
//! the endpoint from the others:
//!
//! - at most `max_connections` connections at once (`--max-connections`); beyond it new
//!   connections wait in the kernel's backlog until one ends;
//! - a request's head must arrive within `header_timeout` of the connection's start or of the
//!   previous answer (so an idle keep-alive connection is closed after it too): a client that
//!   dribbles its headers (slowloris) is cut off;
//! - a body must arrive within `BODY_TIMEOUT` (`read_body`), and one over `MAX_BODY_BYTES`
//!   is answered 413 after it was read and dropped, so the client sees the answer instead of
//!   a reset (beyond `DRAIN_LIMIT` the connection is closed at once).
//!
//! On shutdown the listener stops accepting and in-flight requests get `GRACE` to finish.

use std::future::Future;
use std::time::Duration;

use axum::body::{Body, Bytes};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};

use super::error::{ApiError, ApiResult};
use super::MAX_BODY_BYTES;

/// How many connections the API serves at once by default.
pub const MAX_CONNECTIONS: usize = 1024;
/// How long a client may take to send a request's head by default.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Up to this many bytes of an oversized body are read and dropped before the 413.
pub const DRAIN_LIMIT: usize = 16 * MAX_BODY_BYTES;
/// How long in-flight requests may run on after shutdown began.
const GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_connections: MAX_CONNECTIONS, header_timeout: HEADER_TIMEOUT }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves.
pub async fn serve<L>(
    mut listener: L,
    app: axum::Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()>
where
    L: axum::serve::Listener,
    L::Io: Send + 'static,
{
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p?,
            _ = &mut shutdown => break,
        };
        let (io, _peer) = tokio::select! {
            c = listener.accept() => c,
            _ = &mut shutdown => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = graceful.watch(http.serve_connection(TokioIo::new(io), service));
        tokio::spawn(async move {
            // A client that goes away mid-request is not our error.
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(GRACE, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open {} s after shutdown began: closed", GRACE.as_secs());
    }
    Ok(())
}

/// A request's body, whole: at most `MAX_BODY_BYTES`, within `BODY_TIMEOUT`. A larger one is
/// read on (up to `DRAIN_LIMIT`) and dropped, then refused with 413.
pub async fn read_body(headers: &axum::http::HeaderMap, mut body: Body) -> ApiResult<Bytes> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large =
        || ApiError::BodyTooLarge(format!("The request body is larger than {MAX_BODY_BYTES} bytes, the most accepted"));
    if declared.is_some_and(|n| n > DRAIN_LIMIT as u64) {
        return Err(too_large());
    }
    let deadline = tokio::time::Instant::now() + BODY_TIMEOUT;
    let mut out = Vec::with_capacity(declared.map_or(0, |n| n.min(MAX_BODY_BYTES as u64) as usize));
    let mut seen = 0usize;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return Err(ApiError::BodyTimeout(format!(
                    "The request body did not arrive within {} s",
                    BODY_TIMEOUT.as_secs()
                )))
            }
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(ApiError::InvalidRequest("The request body could not be read".into())),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        seen += data.len();
        if seen > DRAIN_LIMIT {
            return Err(too_large());
        }
        if seen <= MAX_BODY_BYTES {
            out.extend_from_slice(&data);
        }
    }
    if seen > MAX_BODY_BYTES {
        return Err(too_large());
    }
    Ok(out.into())
}
