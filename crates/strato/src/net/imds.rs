//! The instance metadata service of each VPC: a listener on 169.254.169.254:80 inside the
//! VPC's namespace, owned by the Strato process (the socket is made on a thread that entered
//! the namespace, so the server needs no process there).
//!
//! Which instance asks is the source address of the connection, never anything in the
//! request: the namespace's bridge rules drop any packet whose source address is not the
//! sending tap's instance's, so the address is trustworthy. The agent keeps the table of
//! (VPC, address) -> metadata current on every pass.
//!
//! One guest cannot take the service (or the process's file descriptors) from the others,
//! as EC2 throttles its own per instance: at most `PER_INSTANCE_CONNECTIONS` connections
//! of one instance at once and `TOTAL_CONNECTIONS` of all; requests at `RATE` per second
//! per instance with bursts of `BURST`; each connection ends after 10 s. Beyond a limit the
//! answer is `429 Too Many Requests` and the connection closes.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::metadata::StdioConfig;

type Table = Arc<RwLock<HashMap<(String, Ipv4Addr), StdioConfig>>>;

/// Connections one instance may hold open at once.
pub const PER_INSTANCE_CONNECTIONS: usize = 16;
/// Connections all instances of this host may hold open at once.
pub const TOTAL_CONNECTIONS: usize = 2048;
/// Requests per second an instance may make, sustained...
pub const RATE: f64 = 50.0;
/// ... and at once (a Debian guest's cloud-init reads about 60 paths at boot).
pub const BURST: f64 = 300.0;

const TOO_MANY: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// One instance's use of the service.
struct Usage {
    open: usize,
    tokens: f64,
    at: std::time::Instant,
}

/// Who holds how many connections, and each instance's request budget.
#[derive(Default)]
struct Limits {
    by_instance: std::sync::Mutex<HashMap<(String, Ipv4Addr), Usage>>,
    total: std::sync::atomic::AtomicUsize,
}

impl Limits {
    /// A connection of `key` admitted, or None when a limit is reached.
    fn admit(self: &Arc<Self>, key: &(String, Ipv4Addr)) -> Option<Admitted> {
        use std::sync::atomic::Ordering;
        let mut m = self.by_instance.lock().ok()?;
        if self.total.load(Ordering::Relaxed) >= TOTAL_CONNECTIONS {
            return None;
        }
        let u = m.entry(key.clone()).or_insert_with(|| Usage { open: 0, tokens: BURST, at: std::time::Instant::now() });
        if u.open >= PER_INSTANCE_CONNECTIONS {
            return None;
        }
        u.open += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Some(Admitted { limits: self.clone(), key: key.clone() })
    }

    /// Takes one request from `key`'s budget; false when it has none left.
    fn take(&self, key: &(String, Ipv4Addr)) -> bool {
        let Ok(mut m) = self.by_instance.lock() else { return false };
        let Some(u) = m.get_mut(key) else { return false };
        let now = std::time::Instant::now();
        u.tokens = (u.tokens + now.duration_since(u.at).as_secs_f64() * RATE).min(BURST);
        u.at = now;
        if u.tokens < 1.0 {
            return false;
        }
        u.tokens -= 1.0;
        true
    }

    /// Forgets instances that are gone and hold no connection.
    fn retain(&self, known: impl Fn(&(String, Ipv4Addr)) -> bool) {
        if let Ok(mut m) = self.by_instance.lock() {
            m.retain(|k, u| u.open > 0 || known(k));
        }
    }
}

/// An admitted connection: released when dropped.
struct Admitted {
    limits: Arc<Limits>,
    key: (String, Ipv4Addr),
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.limits.total.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut m) = self.limits.by_instance.lock() {
            if let Some(u) = m.get_mut(&self.key) {
                u.open = u.open.saturating_sub(1);
            }
        }
    }
}

/// The metadata listeners of this host and what they serve.
#[derive(Default)]
pub struct Imds {
    table: Table,
    limits: Arc<Limits>,
    listeners: HashMap<String, tokio::task::JoinHandle<()>>,
}

/// Binds a TCP listener inside a named network namespace.
pub fn bind_in_netns(netns: &str, addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let path = std::path::Path::new("/run/netns").join(netns);
    std::thread::scope(|s| {
        s.spawn(|| -> anyhow::Result<std::net::TcpListener> {
            let f = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            // SAFETY: setns(2) on this short-lived thread only; the descriptor is open.
            let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error()).context("entering the VPC namespace");
            }
            let l = std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr} in {netns}"))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
    })
}

impl Imds {
    /// Replaces what every instance is served (called by the agent on each pass).
    pub fn set_table(&self, entries: HashMap<(String, Ipv4Addr), StdioConfig>) {
        self.limits.retain(|k| entries.contains_key(k));
        if let Ok(mut t) = self.table.write() {
            *t = entries;
        }
    }

    /// Starts the listener of a VPC if it is not running.
    pub fn ensure(&mut self, vpc_id: &str, netns: &str) -> anyhow::Result<()> {
        if self.listeners.get(vpc_id).is_some_and(|h| !h.is_finished()) {
            return Ok(());
        }
        let std_listener = bind_in_netns(netns, SocketAddr::new(IpAddr::V4(super::rules::METADATA_ADDR), 80))?;
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        let (table, limits) = (self.table.clone(), self.limits.clone());
        let vpc = vpc_id.to_owned();
        let handle = tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let IpAddr::V4(ip) = peer.ip() else { continue };
                let key = (vpc.clone(), ip);
                let Some(admitted) = limits.admit(&key) else {
                    // Over a limit: told so at once, without waiting on what it sends.
                    let _ = stream.try_write(TOO_MANY);
                    continue;
                };
                let (table, limits) = (table.clone(), limits.clone());
                tokio::spawn(async move {
                    let _held = admitted;
                    let serving = serve(stream, &key, &table, &limits);
                    let _ = tokio::time::timeout(Duration::from_secs(10), serving).await;
                });
            }
        });
        self.listeners.insert(vpc_id.to_owned(), handle);
        Ok(())
    }

    pub fn stop(&mut self, vpc_id: &str) {
        if let Some(h) = self.listeners.remove(vpc_id) {
            h.abort();
        }
    }
}

impl Drop for Imds {
    fn drop(&mut self) {
        for (_, h) in self.listeners.drain() {
            h.abort();
        }
    }
}

/// Where a request's head ends in `buf` (after its blank line), if it is all there.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// One connection: its requests answered in turn (`metadata::serve_one`: an HTTP/1.1
/// request keeps the connection open, and requests sent without waiting are answered in
/// order), until one closes it, the client does, or `MAX_REQUESTS`.
async fn serve(
    mut stream: tokio::net::TcpStream,
    key: &(String, Ipv4Addr),
    table: &Table,
    limits: &Limits,
) -> std::io::Result<()> {
    const MAX_HEAD: usize = 16 * 1024;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    for n in 0..crate::metadata::MAX_REQUESTS {
        // A request's head, whole; or what came before the client stopped (the first
        // request is answered all the same, as a bad one if it is).
        let end = loop {
            if let Some(end) = head_end(&buf) {
                break Some(end);
            }
            if buf.len() > MAX_HEAD {
                break None;
            }
            let got = stream.read(&mut chunk).await?;
            if got == 0 {
                break None;
            }
            buf.extend_from_slice(&chunk[..got]);
        };
        if end.is_none() && n > 0 {
            break;
        }
        let head: Vec<u8> = match end {
            Some(end) => buf.drain(..end).collect(),
            None => std::mem::take(&mut buf),
        };
        let cfg = table.read().ok().and_then(|t| t.get(key).cloned());
        let Some(cfg) = cfg else {
            // Nobody we know: the address is not an instance of this VPC on this host.
            stream.write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await?;
            break;
        };
        if !limits.take(key) {
            stream.write_all(TOO_MANY).await?;
            break;
        }
        let mut out = Vec::new();
        let may_keep = end.is_some() && n + 1 < crate::metadata::MAX_REQUESTS;
        let keep = crate::metadata::serve_one(&cfg, &mut std::io::Cursor::new(head), &mut out, n == 0, may_keep)?;
        stream.write_all(&out).await?;
        if !keep {
            break;
        }
    }
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_has_a_connection_cap_and_a_request_budget() {
        let limits = Arc::new(Limits::default());
        let a = ("vpc-1".to_owned(), Ipv4Addr::new(172, 31, 0, 4));
        let b = ("vpc-1".to_owned(), Ipv4Addr::new(172, 31, 0, 5));
        let held: Vec<Admitted> = (0..PER_INSTANCE_CONNECTIONS).map(|_| limits.admit(&a).unwrap()).collect();
        assert!(limits.admit(&a).is_none(), "one more than the cap");
        assert!(limits.admit(&b).is_some(), "another instance is not held up");
        drop(held);
        assert!(limits.admit(&a).is_some(), "connections are given back");
        assert_eq!(limits.total.load(std::sync::atomic::Ordering::Relaxed), 0);
        let taken = (0..BURST as usize + 10).filter(|_| limits.take(&a)).count();
        assert!((BURST as usize..BURST as usize + 2).contains(&taken), "a burst of {taken}");
        limits.retain(|_| false);
        assert!(limits.by_instance.lock().unwrap().is_empty(), "gone instances are forgotten");
    }
}
