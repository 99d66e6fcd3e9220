//! The instance metadata service of each VPC: a listener on 169.254.169.254:80 inside the
//! VPC's namespace, owned by the Strato process (the socket is made on a thread that entered
//! the namespace, so the server needs no process there).
//!
//! Which instance asks is the source address of the connection, never anything in the
//! request: the namespace's bridge rules drop any packet whose source address is not the
//! sending tap's instance's, so the address is trustworthy. The agent keeps the table of
//! (VPC, address) -> metadata current on every pass.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::metadata::StdioConfig;

type Table = Arc<RwLock<HashMap<(String, Ipv4Addr), StdioConfig>>>;

/// The metadata listeners of this host and what they serve.
#[derive(Default)]
pub struct Imds {
    table: Table,
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
        let table = self.table.clone();
        let vpc = vpc_id.to_owned();
        let handle = tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let table = table.clone();
                let vpc = vpc.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(10), serve(stream, peer, &vpc, table)).await;
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
async fn serve(mut stream: tokio::net::TcpStream, peer: SocketAddr, vpc: &str, table: Table) -> std::io::Result<()> {
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
        let cfg = match peer.ip() {
            IpAddr::V4(ip) => table.read().ok().and_then(|t| t.get(&(vpc.to_owned(), ip)).cloned()),
            IpAddr::V6(_) => None,
        };
        let Some(cfg) = cfg else {
            // Nobody we know: the address is not an instance of this VPC on this host.
            stream.write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await?;
            break;
        };
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
