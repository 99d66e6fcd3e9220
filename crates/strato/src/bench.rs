//! `strato bench api`: signed requests per second and latency percentiles over loopback.
//!
//! Each connection is a keep-alive HTTP/1.1 client that signs every request afresh (SigV4,
//! as boto3 does) and waits for the answer before sending the next. By default the bench
//! starts its own server on a fresh data dir in this process; `--endpoint` with `--data-dir`
//! measures a running `strato serve` instead. Client and server share the machine's cores,
//! so the numbers are a floor for the server alone.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::api::sigv4::Signer;
use crate::api::ApiState;
use crate::control::Credentials;
use crate::server;

pub struct Options {
    pub duration: Duration,
    pub connections: usize,
    /// A running server to measure; `None` starts one in-process.
    pub endpoint: Option<String>,
    /// The data dir whose admin credentials sign the requests (with `endpoint`).
    pub data_dir: Option<PathBuf>,
    pub actions: Vec<String>,
}

pub struct Result {
    pub action: String,
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl Result {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

pub async fn run(opts: Options) -> anyhow::Result<Vec<Result>> {
    let (addr, creds, region, cleanup) = match (&opts.endpoint, &opts.data_dir) {
        (Some(ep), Some(dir)) => {
            let control = server::open_control(dir, "local-1")
                .await
                .or_else(|_| anyhow::bail!("cannot open data dir {}", dir.display()))?;
            let creds = server::ensure_admin(&control).await?;
            let addr = ep.trim_start_matches("http://").trim_end_matches('/').to_owned();
            (addr, creds, control.region.name.clone(), None)
        }
        (Some(_), None) => anyhow::bail!("--endpoint needs --data-dir for the admin credentials"),
        (None, _) => {
            let dir = std::env::temp_dir().join(format!("strato-bench-{}", std::process::id()));
            let control = Arc::new(server::open_control(&dir, "local-1").await?);
            let creds = server::ensure_admin(&control).await?;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?.to_string();
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let state = Arc::new(ApiState { control: control.clone() });
            let handle = tokio::spawn(crate::api::serve(listener, state, async {
                let _ = rx.await;
            }));
            let region = control.region.name.clone();
            (addr, creds, region, Some((tx, handle, dir)))
        }
    };
    let mut results = Vec::new();
    for action in &opts.actions {
        results.push(measure(&addr, &creds, &region, action, opts.connections, opts.duration).await?);
    }
    if let Some((tx, handle, dir)) = cleanup {
        let _ = tx.send(());
        let _ = handle.await;
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(results)
}

async fn measure(
    addr: &str,
    creds: &Credentials,
    region: &str,
    action: &str,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<Result> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let addr = addr.to_owned();
        let key = creds.access_key_id.clone();
        let secret = creds.secret_access_key.clone();
        let region = region.to_owned();
        let body = format!("Action={action}&Version=2016-11-15");
        tasks.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(&addr).await.with_context(|| format!("connecting to {addr}"))?;
            stream.set_nodelay(true)?;
            let signer = Signer { access_key: &key, secret: &secret, region: &region, service: "ec2" };
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut buf = Vec::with_capacity(64 * 1024);
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let (date, auth) = signer.sign_form_post(&addr, body.as_bytes(), chrono::Utc::now());
                let req = format!(
                    "POST / HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/x-www-form-urlencoded; charset=utf-8\r\nx-amz-date: {date}\r\nauthorization: {auth}\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(req.as_bytes()).await?;
                let status = read_response(&mut stream, &mut buf).await?;
                lat.push(t0.elapsed().as_micros() as u64);
                if status != 200 {
                    errors += 1;
                }
            }
            anyhow::Ok((lat, errors))
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await??;
        all.extend(lat);
        errors += e;
    }
    let seconds = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct =
        |p: f64| all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied().unwrap_or(0);
    Ok(Result {
        action: action.to_owned(),
        requests: all.len() as u64,
        errors,
        seconds,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        max_us: all.last().copied().unwrap_or(0),
    })
}

/// Reads one HTTP/1.1 response with a Content-Length body; returns its status.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<u16> {
    buf.clear();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).context("response head is not UTF-8")?;
            let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).context("no status in response")?;
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.split_once(':')
                        .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                        .map(|(_, v)| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = stream.read(&mut chunk).await?;
                anyhow::ensure!(n > 0, "connection closed mid-body");
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(status);
        }
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "connection closed before the response");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `strato bench boot`: boots an image `runs` times and prints the times to its ready marker
/// and to its sshd's banner.
pub fn boot(kind: crate::image::Kind, cache: &std::path::Path, runs: usize, memory_mib: u32) -> anyhow::Result<()> {
    use crate::image::bare::{sample_metadata, BareVm, Options};
    let progress = crate::image::StderrProgress(Instant::now());
    let built = crate::image::build(kind, cache, false, &progress)?;
    let marker = match kind {
        crate::image::Kind::Minimal => "STRATO-BOOT: ready",
        crate::image::Kind::Debian12 => "login:",
    };
    let opts = Options {
        memory_mib,
        metadata: sample_metadata(
            Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBenchmarkKeyNotUsedForLogin bench".into()),
            None,
        ),
        strato_bin: std::env::current_exe()?,
    };
    let timeout = Duration::from_secs(if kind == crate::image::Kind::Minimal { 60 } else { 300 });
    let mut ready = Vec::new();
    let mut ssh = Vec::new();
    for run in 0..runs {
        let work = std::env::temp_dir().join(format!("strato-bench-boot-{}-{run}", std::process::id()));
        let result = (|| -> anyhow::Result<(f64, f64)> {
            let vm = BareVm::start(&built, &work, &opts)?;
            let r = vm
                .wait_console(marker, timeout)
                .with_context(|| format!("no '{marker}' on the console:\n{}", vm.console_text()))?;
            let s = vm.wait_ssh_banner(timeout).context("sshd never answered")?;
            Ok((r.as_secs_f64(), s.as_secs_f64()))
        })();
        let _ = std::fs::remove_dir_all(&work);
        let (r, s) = result?;
        eprintln!("run {}: ready marker {r:.2}s, sshd banner {s:.2}s", run + 1);
        ready.push(r);
        ssh.push(s);
    }
    let stats = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    let (rm, rmin, rmax) = stats(&mut ready);
    let (sm, smin, smax) = stats(&mut ssh);
    println!("{} under TCG, {memory_mib} MiB, 1 vCPU, {runs} boots (QEMU start to ...):", built.manifest.name);
    println!("  {marker:<22} median {rm:.2}s  min {rmin:.2}s  max {rmax:.2}s");
    println!("  {:<22} median {sm:.2}s  min {smin:.2}s  max {smax:.2}s", "sshd banner");
    Ok(())
}
