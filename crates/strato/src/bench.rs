//! `strato bench api`: signed requests per second and latency percentiles over loopback.
//!
//! Each connection is a keep-alive HTTP/1.1 client that signs every request afresh (SigV4,
//! as boto3 does) and waits for the answer before sending the next. By default the bench
//! starts its own server on a fresh data dir in this process; `--endpoint` with `--data-dir`
//! measures a running `strato serve` instead. Client and server share the machine's cores,
//! so the numbers are a floor for the server alone.

use std::collections::HashMap;
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
    /// The database (`--database`): of the measured server with `endpoint`, else of the
    /// in-process one (default a SQLite file in a temporary data dir).
    pub database: Option<String>,
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
            let control = server::open_control(dir, opts.database.as_deref(), "local-1", None)
                .await
                .or_else(|_| anyhow::bail!("cannot open data dir {}", dir.display()))?;
            let creds = server::ensure_admin(&control).await?;
            let addr = ep.trim_start_matches("http://").trim_end_matches('/').to_owned();
            (addr, creds, control.region.name.clone(), None)
        }
        (Some(_), None) => anyhow::bail!("--endpoint needs --data-dir for the admin credentials"),
        (None, _) => {
            let dir = std::env::temp_dir().join(format!("strato-bench-{}", std::process::id()));
            let control = Arc::new(server::open_control(&dir, opts.database.as_deref(), "local-1", None).await?);
            let creds = server::ensure_admin(&control).await?;
            let (addr, tx, handle) = api_in_process(&control).await?;
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
pub fn boot(
    kind: crate::image::Kind,
    cache: &std::path::Path,
    runs: usize,
    memory_mib: u32,
    guest_kernel: bool,
) -> anyhow::Result<()> {
    use crate::image::bare::{sample_metadata, BareVm, Options};
    let progress = crate::image::StderrProgress(Instant::now());
    let built = crate::image::build(kind, cache, false, &progress)?;
    let marker = match kind {
        crate::image::Kind::Minimal => "STRATO-BOOT: ready",
        crate::image::Kind::Debian12 => "login:",
    };
    let kernel = if guest_kernel { Some(crate::image::guest_kernel(cache, &progress)?) } else { None };
    let opts = Options {
        memory_mib,
        kernel: kernel.clone(),
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
    println!(
        "{} under TCG with {}, {memory_mib} MiB, 1 vCPU, {runs} boots (QEMU start to ...):",
        built.manifest.name,
        if kernel.is_some() { "Strato's guest kernel" } else { "Debian's kernel and initramfs" }
    );
    println!("  {marker:<22} median {rm:.2}s  min {rmin:.2}s  max {rmax:.2}s");
    println!("  {:<22} median {sm:.2}s  min {smin:.2}s  max {smax:.2}s", "sshd banner");
    Ok(())
}

/// One signed POST of a form body; returns (status, body).
async fn signed_call(
    stream: &mut TcpStream,
    addr: &str,
    creds: &Credentials,
    region: &str,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let signer = Signer { access_key: &creds.access_key_id, secret: &creds.secret_access_key, region, service: "ec2" };
    let (date, auth) = signer.sign_form_post(addr, body.as_bytes(), chrono::Utc::now());
    let req = format!(
        "POST / HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/x-www-form-urlencoded; charset=utf-8\r\nx-amz-date: {date}\r\nauthorization: {auth}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    let status = read_response(stream, &mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

fn xml_field<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(&xml[start..end])
}

/// Every value of a tag, in order.
fn xml_fields<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let body = &rest[start + open.len()..];
        let Some(end) = body.find(&close) else { break };
        out.push(&body[..end]);
        rest = &body[end..];
    }
    out
}

/// The host's busy and total CPU time so far (jiffies, all CPUs), from /proc/stat.
fn host_cpu() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let total: u64 = fields.iter().sum();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// The number of translated blocks in a TCG VM's translation cache (HMP `info jit`); None
/// under KVM or when QEMU does not say.
async fn tcg_blocks(vm: &crate::hypervisor::Vm) -> Option<u64> {
    let mut q = vm.qmp().await.ok()?;
    let out = q.execute("human-monitor-command", Some(serde_json::json!({"command-line": "info jit"}))).await.ok()?;
    let text = out.as_str()?;
    text.lines().find_map(|l| l.strip_prefix("TB count")).and_then(|n| n.trim().parse().ok())
}

/// Clock ticks (`/proc`'s CPU times) in seconds.
fn ticks_s(ticks: u64) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ticks as f64 / hz.max(1) as f64
}

/// The CPU time a process has used (user and system), in seconds.
fn process_cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command's closing parenthesis: state is field 3, utime and stime 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ticks_s(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?))
}

/// A process's proportional set size (shared pages split among their users), in MiB.
fn pss_mib(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let kb: f64 = text.lines().find(|l| l.starts_with("Pss:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// `strato bench fast-launch`: rounds of `count` instances of a minimal image launched at
/// once, booting cold and then restored from the launch snapshot.
pub async fn fast_launch(cache: &std::path::Path, rounds: &Rounds<'_>, restored_only: bool) -> anyhow::Result<()> {
    let Rounds { image, runs, count, instance_type, .. } = *rounds;
    anyhow::ensure!(runs >= 1 && count >= 1, "--runs and --count must be at least 1");
    let mut report = Vec::new();
    // The warm pool holds a whole round.
    for (mode, snapshots, pool) in [("cold boot", false, 0), ("restored", true, 0), ("warm pool", true, count)] {
        if restored_only && !snapshots {
            continue;
        }
        let dir = std::env::temp_dir().join(format!("strato-bench-fast-{}-{snapshots}-{pool}", std::process::id()));
        let result = fast_rounds(&dir, cache, rounds, snapshots, pool).await;
        // Whatever happened, no VM (template included) or network of this run stays behind.
        crate::server::down(&dir).await;
        let _ = std::fs::remove_dir_all(&dir);
        report.push((mode, result?));
    }
    println!(
        "{image}, {instance_type}, {}, {runs} rounds of {count} launched at once:",
        crate::hypervisor::detect_accel().0.label()
    );
    for (mode, (mut each, mut all, mut pss, mut drop)) in report {
        println!(
            "  {mode:<10} RunInstances to SSH login: each p50 {:5.2} s p90 {:5.2} s; whole round p50 {:5.2} s max {:5.2} s; per VM p50: PSS {:4.0} MiB, host MemAvailable drop {:4.0} MiB",
            percentile(&mut each, 0.5),
            percentile(&mut each, 0.9),
            percentile(&mut all, 0.5),
            percentile(&mut all, 1.0),
            percentile(&mut pss, 0.5),
            percentile(&mut drop, 0.5),
        );
    }
    Ok(())
}

/// Waits until the agent's warm pool holds `size` warm VMs (the console of each says so);
/// their QEMUs' CPU time so far and TCG's translated blocks, by pid.
async fn wait_warm_pool(dir: &std::path::Path, size: usize) -> anyhow::Result<HashMap<u32, (f64, Option<u64>)>> {
    let t0 = Instant::now();
    loop {
        let warm: Vec<crate::hypervisor::Vm> = std::fs::read_dir(dir.join("warm-pool"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| crate::hypervisor::Vm::adopt(&e.path()))
            .filter(|vm| vm.console().contains("warm: waiting for an instance"))
            .collect();
        if warm.len() >= size {
            let mut out = HashMap::new();
            for vm in &warm {
                if let Some(cpu) = process_cpu_s(vm.pid) {
                    out.insert(vm.pid, (cpu, tcg_blocks(vm).await));
                }
            }
            return Ok(out);
        }
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(60 + 20 * size as u64), "the warm pool never filled");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The host's `MemAvailable`, in MiB.
fn mem_available_mib() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: f64 = text.lines().find(|l| l.starts_with("MemAvailable:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// The rounds of `strato bench fast-launch`.
#[derive(Debug, Clone, Copy)]
pub struct Rounds<'a> {
    pub image: &'a str,
    pub runs: usize,
    /// Instances per RunInstances.
    pub count: usize,
    pub instance_type: &'a str,
    /// The instances of each round stay running until the end.
    pub keep: bool,
}

/// The rounds of one mode: (each instance's time to SSH, each round's time, PSS per VM, the
/// host's MemAvailable drop per VM).
async fn fast_rounds(
    dir: &std::path::Path,
    cache: &std::path::Path,
    rounds: &Rounds<'_>,
    snapshots: bool,
    pool: usize,
) -> anyhow::Result<(Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>)> {
    let Rounds { image, runs, count, instance_type, keep } = *rounds;
    let BenchCloud {
        control, creds, addr, region, mut stream, image_id, stop, server_task, agent_task, key_path, ..
    } = BenchCloud::start(dir, cache, image, "127.96.0.0/16", snapshots, pool).await?;
    // Big rounds need more than the default 32 vCPUs.
    control
        .set_vcpu_quota(crate::control::ADMIN_ACCOUNT, (count * runs * 8).max(32) as u32)
        .await
        .map_err(|e| anyhow::anyhow!("raising the quota: {e}"))?;
    let run = |n: usize| {
        format!(
            "Action=RunInstances&Version=2016-11-15&ImageId={image_id}&InstanceType={instance_type}&MinCount={n}&MaxCount={n}&KeyName=bench"
        )
    };
    let mut stream2 = TcpStream::connect(&addr).await?;
    let terminate = |ids: Vec<String>| {
        let body = ids.iter().enumerate().map(|(n, id)| format!("&InstanceId.{}={id}", n + 1)).collect::<String>();
        format!("Action=TerminateInstances&Version=2016-11-15{body}")
    };
    if snapshots {
        // The first launch boots cold and makes the snapshot; wait for it.
        let (status, xml) = signed_call(&mut stream, &addr, &creds, &region, &run(1)).await?;
        anyhow::ensure!(status == 200, "RunInstances: {xml}");
        let ids: Vec<String> = xml_fields(&xml, "instanceId").into_iter().map(str::to_owned).collect();
        let t0 = Instant::now();
        loop {
            let made = std::fs::read_dir(dir.join("launch-snapshots"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| e.path().join("state").exists());
            if made {
                break;
            }
            anyhow::ensure!(t0.elapsed() < Duration::from_secs(120), "the launch snapshot was never made");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = signed_call(&mut stream2, &addr, &creds, &region, &terminate(ids)).await?;
    }
    let (mut each, mut all, mut pss, mut drops) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let base_available = mem_available_mib();
    let mut kept: Vec<String> = Vec::new();
    for round in 0..runs {
        // A full warm pool first; its VMs' CPU so far (their restore and warm-up) is not
        // the round's.
        let warm_cpu = wait_warm_pool(dir, pool).await?;
        let available0 = mem_available_mib();
        let cpu0 = host_cpu();
        let tries0 = SSH_TRIES.load(std::sync::atomic::Ordering::Relaxed);
        let t0 = Instant::now();
        let (status, xml) = signed_call(&mut stream, &addr, &creds, &region, &run(count)).await?;
        anyhow::ensure!(status == 200, "RunInstances: {xml}");
        let ids: Vec<String> = xml_fields(&xml, "instanceId").into_iter().map(str::to_owned).collect();
        let ips: Vec<String> = xml_fields(&xml, "ipAddress").into_iter().map(str::to_owned).collect();
        anyhow::ensure!(ips.len() == ids.len(), "every instance needs a public address");
        let logins = ips.iter().map(|ip| {
            let (key, ip) = (key_path.clone(), ip.clone());
            tokio::spawn(async move { ssh_login(&key, &ip, t0, Duration::from_secs(300)).await })
        });
        let mut times = Vec::new();
        for l in logins.collect::<Vec<_>>() {
            times.push(l.await?.context("SSH never worked")?.as_secs_f64());
        }
        let whole = times.iter().cloned().fold(0.0, f64::max);
        // Where the round's CPU went, by the last login: all of the host's, and the part
        // the new VMs' QEMUs used (their start, load and guest).
        let vms = |ids: &[String]| -> Vec<crate::hypervisor::Vm> {
            ids.iter().filter_map(|id| crate::hypervisor::Vm::adopt(&dir.join("instances").join(id))).collect()
        };
        let round_vms = vms(&ids);
        let qemu_cpu: f64 = round_vms
            .iter()
            .filter_map(|vm| Some(process_cpu_s(vm.pid)? - warm_cpu.get(&vm.pid).map_or(0.0, |w| w.0)))
            .sum();
        let host_cpu_s = match (cpu0, host_cpu()) {
            (Some((b0, _)), Some((b1, _))) => ticks_s(b1 - b0),
            _ => f64::NAN,
        };
        let drop = match (available0, mem_available_mib()) {
            (Some(a), Some(b)) => (a - b) / ids.len().max(1) as f64,
            _ => f64::NAN,
        };
        let mean_pss = |vms: &[crate::hypervisor::Vm]| {
            let mem: Vec<f64> = vms.iter().filter_map(|vm| pss_mib(vm.pid)).collect();
            mem.iter().sum::<f64>() / mem.len().max(1) as f64
        };
        let mean_pss_ready = mean_pss(&round_vms);
        // How much guest code TCG translated for the first VM by then (each block is
        // translated once per QEMU: a restored VM starts with none).
        let blocks = match round_vms.first() {
            Some(vm) => tcg_blocks(vm).await.map(|b| match warm_cpu.get(&vm.pid).and_then(|w| w.1) {
                // A warm-pool VM: the part translated since its take-over too.
                Some(before) => format!("{b}, {} since its take-over", b.saturating_sub(before)),
                None => b.to_string(),
            }),
            None => None,
        };
        // Then idle for a while: memory and the host CPU they take doing nothing.
        let busy0 = host_cpu();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let idle_cpu = match (busy0, host_cpu()) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => (b1 - b0) as f64 / (t1 - t0) as f64,
            _ => f64::NAN,
        };
        let tries = SSH_TRIES.load(std::sync::atomic::Ordering::Relaxed) - tries0;
        eprintln!(
            "round {}: {} instances, SSH login {:.2}-{:.2} s ({tries} ssh runs), host CPU to the last login {:.2} s per VM (its QEMU {:.2} s; the first VM's TCG blocks {}), PSS per VM {mean_pss_ready:.0} MiB, host MemAvailable drop per VM {drop:.0} MiB; idle 10 s later: PSS per VM {:.0} MiB, host CPU busy {:.0}%",
            round + 1,
            ids.len(),
            times.iter().cloned().fold(f64::MAX, f64::min),
            whole,
            host_cpu_s / ids.len().max(1) as f64,
            qemu_cpu / ids.len().max(1) as f64,
            blocks.unwrap_or_else(|| "?".to_string()),
            mean_pss(&round_vms),
            idle_cpu * 100.0
        );
        // Where the guest's time went: the first instance's boot lines after the last
        // "snapshot point" (the template's boot comes first in a restored VM's console).
        if let Some(id) = ids.first() {
            let console =
                std::fs::read_to_string(dir.join("instances").join(id).join("console.log")).unwrap_or_default();
            let own =
                console.rfind(crate::agent::snapshot::SNAPSHOT_POINT).map_or(console.as_str(), |at| &console[at..]);
            let steps: Vec<String> = own
                .lines()
                .filter_map(|l| l.strip_prefix("STRATO-BOOT: "))
                .filter_map(|l| {
                    let (what, t) = l.rsplit_once(" t=")?;
                    Some(format!("{} {t}", what.split_whitespace().next()?))
                })
                .collect();
            eprintln!("  {id}'s guest (uptime, s): {}", steps.join(", "));
        }
        each.extend(times);
        all.push(whole);
        pss.push(mean_pss_ready);
        drops.push(drop);
        if keep {
            kept.extend(ids);
            let drop_all = match (base_available, mem_available_mib()) {
                (Some(a), Some(b)) => (a - b) / kept.len() as f64,
                _ => f64::NAN,
            };
            eprintln!(
                "  {} running: PSS per VM {:.0} MiB, host MemAvailable drop per VM {drop_all:.0} MiB (since the first round), host MemAvailable {:.0} MiB",
                kept.len(),
                mean_pss(&vms(&kept)),
                mem_available_mib().unwrap_or(f64::NAN)
            );
            continue;
        }
        let _ = signed_call(&mut stream2, &addr, &creds, &region, &terminate(ids.clone())).await?;
        for id in &ids {
            while crate::hypervisor::Vm::adopt(&dir.join("instances").join(id)).is_some() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // And the rest of the round's teardown (its VPC's namespace, the instances
        // `terminated`): the agent pass that does it takes ~90 ms, and the next round's
        // launch, coming while it ran, waited behind it.
        let site = crate::net::Site::new(dir);
        let describe = format!(
            "Action=DescribeInstances&Version=2016-11-15{}",
            ids.iter().enumerate().map(|(n, id)| format!("&InstanceId.{}={id}", n + 1)).collect::<String>()
        );
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            let (_, xml) = signed_call(&mut stream2, &addr, &creds, &region, &describe).await?;
            if site.namespaces().is_empty() && xml.matches("<code>48</code>").count() >= ids.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for chunk in kept.chunks(500) {
        let _ = signed_call(&mut stream2, &addr, &creds, &region, &terminate(chunk.to_vec())).await?;
    }
    agent_task.abort();
    let _ = stop.send(());
    let _ = server_task.await;
    Ok((each, all, pss, drops))
}

/// The API of `control` on a loopback port in this process: its address, the sender that
/// stops it and its task.
async fn api_in_process(
    control: &Arc<crate::control::Control>,
) -> anyhow::Result<(String, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let state = Arc::new(ApiState { control: control.clone() });
    let task = tokio::spawn(crate::api::serve(listener, state, async {
        let _ = rx.await;
    }));
    Ok((addr, stop, task))
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// An in-process cloud for the VM benchmarks: a data dir's control plane with its own public
/// pool, the image registered, the API on a loopback port, the real agent, a signed
/// connection, and a key pair whose port 22 is open to 127.0.0.1.
struct BenchCloud {
    control: Arc<crate::control::Control>,
    creds: Credentials,
    addr: String,
    region: String,
    stream: TcpStream,
    built: crate::image::Built,
    image_id: crate::ids::ImageId,
    stop: tokio::sync::oneshot::Sender<()>,
    server_task: tokio::task::JoinHandle<anyhow::Result<()>>,
    agent_task: tokio::task::JoinHandle<()>,
    key_path: std::path::PathBuf,
}

impl BenchCloud {
    async fn start(
        dir: &std::path::Path,
        cache: &std::path::Path,
        image: &str,
        pool: &str,
        launch_snapshots: bool,
        warm_pool: usize,
    ) -> anyhow::Result<BenchCloud> {
        let mut control = server::open_control(dir, None, "local-1", None).await?;
        control.public_pool = crate::control::cidr::Ipv4Cidr::parse(pool, true).context("the bench's public pool")?;
        // Rounds of many small guests: the host's RAM, not their nominal memory, is the limit.
        control.memory_overcommit = 8.0;
        let control = Arc::new(control);
        let creds = server::ensure_admin(&control).await?;
        let (built, image_id, _) = match image {
            "minimal-fast" => server::build_and_register_fast(&control, cache, false).await?,
            other => {
                let kind = crate::image::Kind::parse(other).context("the image kinds are minimal and debian-12")?;
                server::build_and_register(&control, cache, kind, false).await?
            }
        };
        let (addr, stop, server_task) = api_in_process(&control).await?;
        // 256 vCPUs per core: a density round of hundreds of idle 1-vCPU guests fits.
        let spec = crate::control::hosts::HostSpec::this_machine(None, 256.0, control.memory_overcommit);
        let host = server::register_host(&control, dir, &spec).await?;
        let mut agent = crate::agent::Agent::new(control.clone(), dir, host.clone())?;
        agent.snapshots.enabled = launch_snapshots;
        agent.pool.size = warm_pool;
        let heartbeats = crate::agent::Agent::heartbeats(control.clone(), host);
        let agent_task = tokio::spawn(async move {
            tokio::join!(agent.run(), heartbeats);
        });
        let region = control.region.name.clone();
        let mut stream = TcpStream::connect(&addr).await?;
        stream.set_nodelay(true)?;
        let (status, xml) = signed_call(
            &mut stream,
            &addr,
            &creds,
            &region,
            "Action=CreateKeyPair&Version=2016-11-15&KeyName=bench&KeyType=ed25519",
        )
        .await?;
        anyhow::ensure!(status == 200, "CreateKeyPair: {xml}");
        let key_path = dir.join("bench.pem");
        {
            use std::os::unix::fs::OpenOptionsExt;
            let material = xml_field(&xml, "keyMaterial").context("no keyMaterial")?;
            let mut f =
                std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&key_path)?;
            std::io::Write::write_all(&mut f, crate::api::xml::unescape(material).as_bytes())?;
        }
        let (status, xml) = signed_call(
            &mut stream,
            &addr,
            &creds,
            &region,
            "Action=AuthorizeSecurityGroupIngress&Version=2016-11-15&GroupName=default&IpProtocol=tcp&FromPort=22&ToPort=22&CidrIp=127.0.0.1/32",
        )
        .await?;
        anyhow::ensure!(status == 200, "AuthorizeSecurityGroupIngress: {xml}");
        Ok(BenchCloud {
            control,
            creds,
            addr,
            region,
            stream,
            built,
            image_id,
            stop,
            server_task,
            agent_task,
            key_path,
        })
    }
}

/// How many `ssh` logins the bench has tried (each costs the guest a key exchange).
static SSH_TRIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Tries `ssh root@ip true` with the key until it works; the time it took. Port 22 is
/// probed first with short connection attempts (a connect to an address nobody has yet
/// waits for ARP or a SYN's resend, which would measure the probe rather than the guest).
/// `ssh`'s `ConnectTimeout` bounds its key exchange too: under the load of 20 launches a
/// guest's exchange took over 2 s, and each retry cost it another (20 t3.nano logins took
/// 104 ssh runs at 2 s, 20 at 30 s).
async fn ssh_login(key: &std::path::Path, ip: &str, t0: Instant, limit: Duration) -> Option<Duration> {
    while t0.elapsed() < limit {
        // Port 22 open first, one connection attempt at a time: refused or unreachable, the
        // next 10 ms later; unanswered (a SYN sent before the guest's NIC is up is lost, or
        // waits in the host's ARP queue), it is dropped after a window that starts at 20 ms
        // and doubles to 1 s (a loaded guest answers slowly). A dropped attempt's SYN that
        // gets through later is answered by the host with a reset: only the connection that
        // counts reaches the guest's sshd, which forks a process for every one it accepts
        // (overlapping attempts left to finish cost 20 warm-pool guests at once twice the CPU).
        let mut window = Duration::from_millis(20);
        loop {
            if t0.elapsed() >= limit {
                return None;
            }
            match tokio::time::timeout(window, TcpStream::connect((ip, 22))).await {
                Ok(Ok(_)) => break,
                Ok(Err(_)) => {
                    window = Duration::from_millis(20);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(_) => window = (window * 2).min(Duration::from_secs(1)),
            }
        }
        SSH_TRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ok = tokio::process::Command::new("ssh")
            .arg("-i")
            .arg(key)
            .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"])
            .args(["-o", "ConnectTimeout=30", "-o", "LogLevel=ERROR", &format!("root@{ip}"), "true"])
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// `strato bench launch`: launches an image `runs` times, one after another, through the API
/// of an in-process server (real agent, VMs and network), timing the API answer, `running`,
/// the guest's first metadata request and an SSH login at the public address; for the
/// minimal image, beside it boots the same image with a bare QEMU.
pub async fn launch(cache: &std::path::Path, runs: usize, image: &str, instance_type: &str) -> anyhow::Result<()> {
    use crate::image::bare::sample_metadata;
    let dir = std::env::temp_dir().join(format!("strato-bench-launch-{}", std::process::id()));
    let result = async {
        // Its own public pool, beside a `strato serve` on the default one.
        let BenchCloud { control, creds, addr, region, mut stream, built, image_id, stop: tx, server_task, agent_task, key_path } =
            BenchCloud::start(&dir, cache, image, "127.98.0.0/16", false, 0).await?;
        let (mut api, mut to_running, mut to_metadata, mut to_ssh) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for run in 0..runs {
            let t0 = Instant::now();
            let body = format!(
                "Action=RunInstances&Version=2016-11-15&ImageId={image_id}&InstanceType={instance_type}&MinCount=1&MaxCount=1&KeyName=bench"
            );
            let (status, xml) = signed_call(&mut stream, &addr, &creds, &region, &body).await?;
            anyhow::ensure!(status == 200, "RunInstances: {xml}");
            let answered = t0.elapsed();
            let id = xml_field(&xml, "instanceId").context("no instanceId")?.to_owned();
            let md_log = dir.join("instances").join(&id).join("metadata.log");
            let (mut running, mut metadata) = (None, None);
            while (running.is_none() || metadata.is_none()) && t0.elapsed() < Duration::from_secs(120) {
                if running.is_none() {
                    let (_, d) = signed_call(
                        &mut stream,
                        &addr,
                        &creds,
                        &region,
                        &format!("Action=DescribeInstances&Version=2016-11-15&InstanceId.1={id}"),
                    )
                    .await?;
                    if d.contains("<name>running</name>") {
                        running = Some(t0.elapsed());
                    }
                }
                if metadata.is_none() && std::fs::metadata(&md_log).map(|m| m.len() > 0).unwrap_or(false) {
                    metadata = Some(t0.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let (running, metadata) = (running.context("never running")?, metadata.context("no metadata request")?);
            let public = xml_field(&xml, "ipAddress").context("the instance got no public address")?.to_owned();
            let ssh = ssh_login(&key_path, &public, t0, Duration::from_secs(300)).await.context("SSH never worked")?;
            eprintln!(
                "run {}: API {:.1} ms, running {:.2} s, first metadata request {:.2} s, SSH login {:.2} s",
                run + 1,
                answered.as_secs_f64() * 1e3,
                running.as_secs_f64(),
                metadata.as_secs_f64(),
                ssh.as_secs_f64()
            );
            api.push(answered.as_secs_f64() * 1e3);
            to_running.push(running.as_secs_f64());
            to_metadata.push(metadata.as_secs_f64());
            to_ssh.push(ssh.as_secs_f64());
            let _ = signed_call(
                &mut stream,
                &addr,
                &creds,
                &region,
                &format!("Action=TerminateInstances&Version=2016-11-15&InstanceId.1={id}"),
            )
            .await?;
            while crate::hypervisor::Vm::adopt(&dir.join("instances").join(&id)).is_some() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // The same image and QEMU flags (the hypervisor driver's), without the control plane
        // and agent: a bare launch of the same VM spec.
        let mut bare = Vec::new();
        let strato_bin = std::env::current_exe()?;
        let bare_runs = if image == "minimal" { runs } else { 0 };
        for run in 0..bare_runs {
            let work = dir.join(format!("bare-{run}"));
            std::fs::create_dir_all(&work)?;
            let disk = work.join("root.qcow2");
            let out = tokio::process::Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(&built.rootfs)
                .arg(&disk)
                .output()
                .await?;
            anyhow::ensure!(out.status.success(), "qemu-img: {}", String::from_utf8_lossy(&out.stderr));
            let md_log = work.join("metadata.log");
            let cfg = crate::metadata::StdioConfig {
                metadata: sample_metadata(None, None),
                token_key: "00".into(),
                log: Some(md_log.clone()),
            };
            let cfg_path = work.join("metadata.json");
            std::fs::write(&cfg_path, serde_json::to_vec(&cfg)?)?;
            let t = crate::catalog::Catalogue::parse(crate::catalog::DEFAULT_CATALOGUE)?;
            let nano = t.get("t3.nano").context("t3.nano")?.clone();
            let spec = crate::hypervisor::VmSpec {
                run_dir: work.clone(),
                vcpus: nano.vcpus,
                memory_mib: nano.memory_mib,
                kernel: built.kernel.clone(),
                initrd: Some(built.initrd.clone()),
                cmdline: format!("{} root=/dev/vda", crate::image::KERNEL_CMDLINE),
                root_disk: disk,
                uuid: crate::hypervisor::ec2_uuid("i-0123456789abcdef0"),
                netdev: Some((
                    crate::hypervisor::metadata_netdev(&strato_bin, &cfg_path, None)?,
                    "02:00:00:00:00:01".into(),
                )),
                netns: None,
                hotplug_ports: 0,
                volumes: Vec::new(),
                ephemeral: None,
                snapshot: Default::default(),
                identity: None,
                paused: false,
                qboot: false,
            };
            let (accel, _) = crate::hypervisor::detect_accel();
            let t0 = Instant::now();
            let vm = tokio::task::spawn_blocking(move || crate::hypervisor::Vm::launch(&spec, accel)).await??;
            let mut first = None;
            while t0.elapsed() < Duration::from_secs(120) {
                if std::fs::metadata(&md_log).map(|m| m.len() > 0).unwrap_or(false) {
                    first = Some(t0.elapsed().as_secs_f64());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            vm.kill().await;
            bare.push(first.context("bare boot made no metadata request")?);
        }
        agent_task.abort();
        let _ = tx.send(());
        let _ = server_task.await;
        let t = control.catalogue.get(instance_type).context("instance type")?;
        println!(
            "{} image, {instance_type} ({} vCPU, {} MiB), {}, {runs} launches one at a time:",
            image,
            t.vcpus,
            t.memory_mib,
            crate::hypervisor::detect_accel().0.label()
        );
        println!(
            "  RunInstances answer            p50 {:7.1} ms  p90 {:7.1} ms",
            percentile(&mut api, 0.5),
            percentile(&mut api, 0.9)
        );
        println!(
            "  RunInstances to running        p50 {:7.2} s   p90 {:7.2} s",
            percentile(&mut to_running, 0.5),
            percentile(&mut to_running, 0.9)
        );
        println!(
            "  RunInstances to first metadata p50 {:7.2} s   p90 {:7.2} s",
            percentile(&mut to_metadata, 0.5),
            percentile(&mut to_metadata, 0.9)
        );
        println!(
            "  RunInstances to SSH login      p50 {:7.2} s   p90 {:7.2} s",
            percentile(&mut to_ssh, 0.5),
            percentile(&mut to_ssh, 0.9)
        );
        if !bare.is_empty() {
            println!(
                "  same VM launched bare, to md  p50 {:7.2} s   p90 {:7.2} s",
                percentile(&mut bare, 0.5),
                percentile(&mut bare, 0.9)
            );
        }
        anyhow::Ok(())
    }
    .await;
    // Whatever happened, no VM of this run stays behind.
    crate::server::down(&dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Runs a command in a guest over SSH; its stdout.
async fn ssh_run(key: &std::path::Path, ip: &str, command: &str) -> anyhow::Result<String> {
    let out = tokio::process::Command::new("ssh")
        .arg("-i")
        .arg(key)
        .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"])
        .args(["-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR", &format!("root@{ip}"), command])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .context("running ssh")?;
    anyhow::ensure!(out.status.success(), "ssh {command}: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The dd runs of `bench volume`: (name, dd arguments, bytes moved). Direct I/O on both sides.
const DD_RUNS: &[(&str, &str, u64)] = &[
    ("sequential write 1 MiB blocks", "if=/dev/zero of=TARGET bs=1M count=256 oflag=direct", 256 << 20),
    ("sequential read 1 MiB blocks", "if=TARGET of=/dev/null bs=1M count=256 iflag=direct", 256 << 20),
    ("4 KiB writes", "if=/dev/zero of=TARGET bs=4k count=8192 oflag=direct", 8192 * 4096),
    ("4 KiB reads", "if=TARGET of=/dev/null bs=4k count=8192 iflag=direct", 8192 * 4096),
];

/// `strato bench volume`: an instance (real agent, VM and network) with a 1 GiB gp3 volume
/// hot-plugged; `dd` with direct I/O on the volume inside the guest, and the same `dd` on a
/// file on the host's disk, in MB/s, with the ratio. busybox dd: the 4 KiB runs are
/// sequential, not random (there is no fio in the minimal image).
pub async fn volume(cache: &std::path::Path) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("strato-bench-volume-{}", std::process::id()));
    let result = async {
        let BenchCloud { creds, addr, region, mut stream, image_id, stop: tx, server_task, agent_task, key_path, .. } =
            BenchCloud::start(&dir, cache, "minimal", "127.97.0.0/16", false, 0).await?;
        macro_rules! call {
            ($body:expr) => {{
                let body: String = $body;
                let (status, xml) = signed_call(&mut stream, &addr, &creds, &region, &body).await?;
                anyhow::ensure!(status == 200, "{body}: {xml}");
                anyhow::Ok(xml)
            }};
        }
        let xml = call!(format!(
            "Action=RunInstances&Version=2016-11-15&ImageId={image_id}&InstanceType=t3.small&MinCount=1&MaxCount=1&KeyName=bench&Placement.AvailabilityZone=local-1a"
        ))?;
        let instance = xml_field(&xml, "instanceId").context("no instanceId")?.to_owned();
        let ip = xml_field(&xml, "ipAddress").context("no public address")?.to_owned();
        ssh_login(&key_path, &ip, Instant::now(), Duration::from_secs(120)).await.context("SSH never worked")?;
        let xml =
            call!("Action=CreateVolume&Version=2016-11-15&AvailabilityZone=local-1a&Size=1&VolumeType=gp3".into())?;
        let volume = xml_field(&xml, "volumeId").context("no volumeId")?.to_owned();
        let t0 = Instant::now();
        loop {
            let d = call!(format!("Action=DescribeVolumes&Version=2016-11-15&VolumeId.1={volume}"))?;
            if d.contains("<status>available</status>") {
                break;
            }
            anyhow::ensure!(t0.elapsed() < Duration::from_secs(30), "the volume was never available");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        call!(format!(
            "Action=AttachVolume&Version=2016-11-15&VolumeId={volume}&InstanceId={instance}&Device=/dev/sdf"
        ))?;
        let serial = volume.replace('-', "");
        let probe = format!(
            "for d in /sys/block/vd*; do [ \"$(cat $d/serial 2>/dev/null)\" = {serial} ] && echo ${{d##*/}}; done; true"
        );
        let t0 = Instant::now();
        let dev = loop {
            let d = ssh_run(&key_path, &ip, &probe).await?.trim().to_owned();
            if !d.is_empty() {
                break d;
            }
            anyhow::ensure!(t0.elapsed() < Duration::from_secs(30), "the guest never saw the volume");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let host_file = dir.join("host-target.raw");
        std::fs::write(&host_file, b"")?;
        println!("volume I/O: dd with direct I/O, t3.small guest (TCG) on a hot-plugged 1 GiB gp3 volume vs the host's disk:");
        for (name, args, bytes) in DD_RUNS {
            // In the guest: seconds from /proc/uptime around the run.
            let guest_args = args.replace("TARGET", &format!("/dev/{dev}"));
            let out = ssh_run(
                &key_path,
                &ip,
                &format!("a=$(cut -d' ' -f1 /proc/uptime); dd {guest_args} 2>/dev/null; b=$(cut -d' ' -f1 /proc/uptime); echo $a $b"),
            )
            .await?;
            let mut it = out.split_whitespace().filter_map(|v| v.parse::<f64>().ok());
            let (a, b) = (it.next().context("uptime")?, it.next().context("uptime")?);
            let guest = *bytes as f64 / (b - a).max(0.01) / 1e6;
            let host_args: Vec<String> =
                args.replace("TARGET", &host_file.display().to_string()).split(' ').map(str::to_owned).collect();
            let t = Instant::now();
            let st = tokio::process::Command::new("dd").args(&host_args).stderr(std::process::Stdio::null()).status().await?;
            anyhow::ensure!(st.success(), "dd on the host failed");
            let host = *bytes as f64 / t.elapsed().as_secs_f64() / 1e6;
            println!("  {name:32} guest {guest:8.1} MB/s   host {host:8.1} MB/s   ratio {:5.2}", guest / host);
        }
        agent_task.abort();
        let _ = tx.send(());
        let _ = server_task.await;
        anyhow::Ok(())
    }
    .await;
    crate::server::down(&dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// `strato bench schedule`: RunInstances answer time (placement included, one instance per
/// call, through the signed API) with `hosts` simulated hosts spread over the zones, then
/// the host monitor's pass after one host dies: how long it takes to recover its instances.
/// A control plane on a fresh data dir for the simulated-host benchmarks: the admin's
/// credentials (with room for any number of vCPUs) and the minimal image.
async fn sim_control(
    dir: &std::path::Path,
    cache: &std::path::Path,
    database: Option<&str>,
    host_timeout: Duration,
) -> anyhow::Result<(Arc<crate::control::Control>, Credentials, crate::ids::ImageId)> {
    let mut control = server::open_control(dir, database, "local-1", None).await?;
    control.host_timeout = host_timeout;
    let control = Arc::new(control);
    let creds = server::ensure_admin(&control).await?;
    control
        .set_vcpu_quota(crate::control::ADMIN_ACCOUNT, 10_000_000)
        .await
        .map_err(crate::api::error::ApiError::into_anyhow)?;
    let (_, image, _) = server::build_and_register(&control, cache, crate::image::Kind::Minimal, false).await?;
    Ok((control, creds, image))
}

/// A simulated host's description.
fn sim_host(name: &str, zone: Option<String>, vcpus: u32, memory_mib: u64) -> crate::control::hosts::HostSpec {
    crate::control::hosts::HostSpec {
        name: name.to_owned(),
        zone,
        vcpus,
        memory_mib,
        vcpu_overcommit: 1.0,
        memory_overcommit: 1.0,
        underlay: None,
    }
}

pub async fn schedule(
    cache: &std::path::Path,
    hosts: usize,
    launches: usize,
    database: Option<&str>,
) -> anyhow::Result<()> {
    anyhow::ensure!(hosts >= 2, "--hosts must be at least 2 (one dies at the end)");
    let dir = std::env::temp_dir().join(format!("strato-bench-schedule-{}", std::process::id()));
    let result = schedule_in(&dir, cache, hosts, launches, database).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn schedule_in(
    dir: &std::path::Path,
    cache: &std::path::Path,
    hosts: usize,
    launches: usize,
    database: Option<&str>,
) -> anyhow::Result<()> {
    use crate::agent::sim::SimAgent;
    let (control, creds, image) = sim_control(dir, cache, database, Duration::from_secs(2)).await?;
    let zones = control.region.zones.clone();
    let mut agents = Vec::new();
    for n in 0..hosts {
        let spec = sim_host(&format!("sim{n}"), Some(zones[n % zones.len()].clone()), 1024, 1 << 20);
        let agent = SimAgent::register(control.clone(), &spec).await?.with_real_tick();
        let host = agent.host().clone();
        agents.push((host, tokio::spawn(agent.run())));
    }
    let (addr, stop, server_task) = api_in_process(&control).await?;
    let region = control.region.name.clone();
    let mut stream = TcpStream::connect(&addr).await?;
    stream.set_nodelay(true)?;
    let mut answers = Vec::new();
    for n in 0..launches {
        let body = format!(
            "Action=RunInstances&Version=2016-11-15&ImageId={image}&InstanceType=t2.nano&MinCount=1&MaxCount=1&Placement.AvailabilityZone={}",
            zones[n % zones.len()]
        );
        let t = Instant::now();
        let (status, xml) = signed_call(&mut stream, &addr, &creds, &region, &body).await?;
        answers.push(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(status == 200, "RunInstances: {xml}");
    }
    let backend = format!("{:?}", control.store().backend()).to_lowercase();
    println!("{hosts} simulated hosts in {} zones, {launches} launches of one t2.nano ({backend}):", zones.len());
    let last: Vec<f64> = answers[answers.len().saturating_sub(50)..].to_vec();
    println!(
        "  RunInstances answer (placement included)  p50 {:6.2} ms  p99 {:6.2} ms  max {:6.2} ms; last 50 p50 {:6.2} ms",
        percentile(&mut answers.clone(), 0.50),
        percentile(&mut answers.clone(), 0.99),
        percentile(&mut answers.clone(), 1.0),
        percentile(&mut last.clone(), 0.50),
    );
    // One host dies; after the timeout, one monitor pass recovers its instances.
    let (dead, task) = &agents[0];
    task.abort();
    let on_dead =
        control.live_instances().await?.iter().filter(|i| i.host_id.as_deref() == Some(dead.as_str())).count();
    tokio::time::sleep(control.host_timeout + Duration::from_millis(100)).await;
    let t = Instant::now();
    let moved = control.recover_dead_hosts(&crate::ids::HostId::generate()).await?;
    let pass = t.elapsed();
    println!(
        "  host death: {on_dead} instances on it; one monitor pass recovered {} in {:.1} ms (plus the host timeout and up to one heartbeat interval before it)",
        moved.len(),
        pass.as_secs_f64() * 1000.0
    );
    let _ = stop.send(());
    let _ = server_task.await;
    for (_, task) in agents {
        task.abort();
    }
    control.store().close().await;
    Ok(())
}

/// `strato bench reads`: RunInstances answer times while `readers` clients run
/// DescribeInstances (of all `instances` instances) in a loop, three ways in one run: with no
/// readers; with readers and everything sharing one pool and no gate on reads (as before
/// 2026-12-08); with readers, the store's pools split and read-only requests gated (the
/// default). In-process, one simulated host; `--database` as for the others.
pub async fn reads(
    cache: &std::path::Path,
    instances: usize,
    readers: usize,
    launches: usize,
    database: Option<&str>,
) -> anyhow::Result<()> {
    anyhow::ensure!(launches > 0, "--launches must be at least 1");
    let dir = std::env::temp_dir().join(format!("strato-bench-reads-{}", std::process::id()));
    let result = reads_in(&dir, cache, instances, readers, launches, database).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn reads_in(
    dir: &std::path::Path,
    cache: &std::path::Path,
    instances: usize,
    readers: usize,
    launches: usize,
    database: Option<&str>,
) -> anyhow::Result<()> {
    use crate::agent::sim::SimAgent;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let (control, creds, image) = sim_control(dir, cache, database, crate::control::hosts::HOST_TIMEOUT).await?;
    let spec = sim_host("sim0", None, 1 << 20, 1 << 30);
    let agent = SimAgent::register(control.clone(), &spec).await?.with_real_tick();
    let agent = tokio::spawn(agent.run());
    let (addr, stop, server_task) = api_in_process(&control).await?;
    let region = control.region.name.clone();
    let mut stream = TcpStream::connect(&addr).await?;
    stream.set_nodelay(true)?;
    let mut made = 0;
    while made < instances {
        let n = (instances - made).min(100);
        let body = format!(
            "Action=RunInstances&Version=2016-11-15&ImageId={image}&InstanceType=t2.nano&MinCount={n}&MaxCount={n}"
        );
        let (status, xml) = signed_call(&mut stream, &addr, &creds, &region, &body).await?;
        anyhow::ensure!(status == 200, "RunInstances: {xml}");
        made += n;
    }
    let backend = format!("{:?}", control.store().backend()).to_lowercase();
    println!("{instances} instances ({backend}), {readers} clients running DescribeInstances of all of them, {launches} launches of one t2.nano each:");
    for (label, n, priority) in [
        ("no readers", 0, true),
        ("readers, one shared pool, reads not gated (before)", readers, false),
        ("readers, split pools, reads gated (now)", readers, true),
    ] {
        control.store().set_split(priority);
        crate::api::set_read_priority(priority);
        let stop_readers = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..n {
            let (addr, creds, region) = (addr.clone(), creds.clone(), region.clone());
            let (stop_readers, served) = (stop_readers.clone(), served.clone());
            tasks.push(tokio::spawn(async move {
                let mut s = TcpStream::connect(&addr).await?;
                s.set_nodelay(true)?;
                while !stop_readers.load(Ordering::Relaxed) {
                    let body = "Action=DescribeInstances&Version=2016-11-15";
                    if signed_call(&mut s, &addr, &creds, &region, body).await?.0 == 200 {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                }
                anyhow::Ok(())
            }));
        }
        // The readers fill the queue before the launches begin.
        tokio::time::sleep(Duration::from_secs(if n > 0 { 2 } else { 0 })).await;
        let (t0, before) = (Instant::now(), served.load(Ordering::Relaxed));
        // A connection of its own (the last one sat idle past the server's timeout while
        // the readers drained).
        let mut stream = TcpStream::connect(&addr).await?;
        stream.set_nodelay(true)?;
        let mut answers = Vec::new();
        let mut failed: HashMap<String, usize> = HashMap::new();
        for _ in 0..launches {
            let body = format!(
                "Action=RunInstances&Version=2016-11-15&ImageId={image}&InstanceType=t2.nano&MinCount=1&MaxCount=1"
            );
            let t = Instant::now();
            let (status, xml) = signed_call(&mut stream, &addr, &creds, &region, &body).await?;
            answers.push(t.elapsed().as_secs_f64() * 1000.0);
            if status != 200 {
                // (InsufficientInstanceCapacity: the host's heartbeats starved, it looked down.)
                *failed.entry(xml_field(&xml, "Code").unwrap_or("?").to_owned()).or_default() += 1;
            }
        }
        let reads_per_s = (served.load(Ordering::Relaxed) - before) as f64 / t0.elapsed().as_secs_f64();
        stop_readers.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await??;
        }
        let failed: Vec<String> = failed.iter().map(|(code, n)| format!("{n} {code}")).collect();
        println!(
            "  {label:52} RunInstances p50 {:8.1} ms  p99 {:8.1} ms  max {:8.1} ms; DescribeInstances {reads_per_s:6.1}/s{}",
            percentile(&mut answers.clone(), 0.50),
            percentile(&mut answers.clone(), 0.99),
            percentile(&mut answers.clone(), 1.0),
            if failed.is_empty() { String::new() } else { format!("; failed: {}", failed.join(", ")) }
        );
    }
    control.store().set_split(true);
    crate::api::set_read_priority(true);
    let _ = stop.send(());
    let _ = server_task.await;
    agent.abort();
    control.store().close().await;
    Ok(())
}
