//! The warm pool: VMs restored from a launch snapshot ahead of any launch and warmed up,
//! which a launch of that image and size takes over.
//!
//! Why: a restored QEMU starts with an empty TCG translation cache, so everything its guest
//! runs after the restore (kernel paths, the first fork and exec, the first login) is translated
//! afresh, most of a restored launch's time under TCG. A pool VM has run those paths
//! already: restored with the template's devices on a tap of its own (`sp<site><name>`, in
//! the agent's namespace, down and on no bridge: what its guest sends goes nowhere), it is
//! sent `warm` and throwaway keys on its identity channel, gives its sshd (running since
//! the template) the throwaway host key, takes an SSH login
//! over loopback from its own dbclient, writes to its disk, brings its NIC up and down with
//! a test address, removes the throwaway keys and answers `warm` (see the minimal image's
//! rcS). It is its own VM from the restore on (its kernel reseeded its RNG on the new VM
//! generation id before its NIC came up or sshd took a connection), and holds nothing of
//! an instance.
//!
//! A launch that would be restored (`agent::restorable`) takes a pool VM of its snapshot if
//! there is one: the tap moves into the VPC's namespace under the instance's tap name and
//! onto the bridge (`Network::adopt_pool_tap`; QEMU keeps its open tap), the root disk file
//! and the console file are renamed to the instance's (QEMU keeps its open files), the run
//! directory too (`hypervisor::HOME_FILE` names the one QEMU was started in); then, once the
//! VPC's rules are in place, the guest is written its identity as in any restore. Files:
//! `DATA_DIR/warm-pool/<name>/` (run dir), `STORAGE_DIR/volumes/warm-pool/<host>/<name>.qcow2`,
//! `STORAGE_DIR/consoles/warm-pool/<host>/<name>.log`, so that the renames stay on one
//! filesystem (and each host clears only its own when its agent starts).
//!
//! The pool holds `STRATO_WARM_POOL` VMs (default 1, 0 turns it off) for each snapshot that
//! a launch on this host used or made, warmed one at a time while no launch is pending
//! here. Pool VMs are not instances: their memory and vCPUs are not in the host's capacity
//! (a few per host; ~60-90 MiB each). They end when the agent starts (ones left by a
//! previous run), when their snapshot is pruned, and with `strato down`. A pool VM's SMBIOS
//! UUID is its own (`ec2...`, fixed when its QEMU started), not the one derived from the
//! instance id that a cold boot of the instance gets.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::snapshot::{self, Snapshot};
use crate::control::model::Image;
use crate::hypervisor::{ec2_uuid, Accel, LaunchSnapshot, Vm, HOME_FILE};
use crate::net::Site;

/// How long a pool VM may take from its restore to `warm`.
const WARM_TIMEOUT: Duration = Duration::from_secs(90);
/// After a pool VM failed to warm up, how long before another try.
const RETRY_AFTER: Duration = Duration::from_secs(300);
/// How long the host must have had no launch before a pool VM is warmed: the VMs just
/// launched are still booting, and a warm-up would take CPU from them (20 taken at once
/// were all SSH-ready only ~5 s later; a warm-up 3 s after them slowed the last ones).
const QUIET: Duration = Duration::from_secs(10);

/// What a snapshot's pool VMs are made from.
#[derive(Clone)]
struct Kind {
    image: Image,
    vcpus: u32,
    memory_mib: u64,
    snapshot: Snapshot,
}

/// A pool VM, warm and waiting for an instance.
#[derive(Debug)]
pub struct Warm {
    /// The snapshot it was restored from (its directory name).
    pub key: String,
    pub run_dir: PathBuf,
    pub disk: PathBuf,
    pub console: PathBuf,
    pub tap: String,
    pub pid: u32,
}

impl Warm {
    /// Ends its QEMU (by its pid) and removes its files and tap.
    async fn discard(self, site: &Site) {
        if let Some(vm) = Vm::adopt(&self.run_dir) {
            vm.kill().await;
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
        let _ = std::fs::remove_file(&self.disk);
        let _ = std::fs::remove_file(&self.console);
        site.remove_pool_taps(Some(&self.tap)).await;
    }
}

pub struct Pool {
    /// VMs per snapshot (0: no pool).
    pub size: usize,
    dir: PathBuf,
    disks: PathBuf,
    consoles: PathBuf,
    site: Site,
    accel: Accel,
    wanted: HashMap<String, Kind>,
    ready: Vec<Warm>,
    /// The warm-up under way: its snapshot, its task.
    warming: Option<(String, tokio::task::JoinHandle<anyhow::Result<Warm>>)>,
    /// When a warm-up last failed, per snapshot (that one is not warmed for `RETRY_AFTER`).
    failed: HashMap<String, Instant>,
    /// When a launch was last pending on this host.
    busy_at: Option<Instant>,
}

/// The pool's size from `STRATO_WARM_POOL` (default 1).
pub fn size_from_env() -> usize {
    std::env::var("STRATO_WARM_POOL").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(1)
}

impl Pool {
    /// `disks` and `consoles`: this host's own directories in the storage dir (which other
    /// hosts may share).
    pub fn new(data_dir: &Path, disks: &Path, consoles: &Path, site: Site, accel: Accel, size: usize) -> Pool {
        Pool {
            size,
            dir: data_dir.join("warm-pool"),
            disks: disks.to_owned(),
            consoles: consoles.to_owned(),
            site,
            accel,
            wanted: HashMap::new(),
            ready: Vec::new(),
            warming: None,
            failed: HashMap::new(),
            busy_at: None,
        }
    }

    /// Ends the pool VMs a previous run of the agent left, and removes their files and taps.
    pub async fn clear_leftovers(&self) {
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                if let Some(vm) = Vm::adopt(&e.path()) {
                    vm.kill().await;
                }
            }
        }
        for d in [&self.dir, &self.disks, &self.consoles] {
            let _ = std::fs::remove_dir_all(d);
        }
        self.site.remove_pool_taps(None).await;
    }

    /// A snapshot that launches on this host use: its pool is kept full.
    pub fn want(&mut self, image: &Image, vcpus: u32, memory_mib: u64, snapshot: &Snapshot) {
        if self.size > 0 {
            self.wanted.entry(snapshot.key()).or_insert_with(|| Kind {
                image: image.clone(),
                vcpus,
                memory_mib,
                snapshot: snapshot.clone(),
            });
        }
    }

    /// A warm VM of this snapshot, taken out of the pool.
    pub fn take(&mut self, snapshot: &Snapshot) -> Option<Warm> {
        let key = snapshot.key();
        while let Some(n) = self.ready.iter().position(|w| w.key == key) {
            let w = self.ready.swap_remove(n);
            if Vm::adopt(&w.run_dir).is_some_and(|vm| vm.pid == w.pid) {
                return Some(w);
            }
            tracing::warn!(pool_vm = %w.run_dir.display(), "a warm-pool VM had ended");
        }
        None
    }

    /// Collects a finished warm-up, ends the pool VMs of snapshots that are gone, and, when
    /// the host has not been `busy` launching for a while (`QUIET`), starts warming the next
    /// VM that a pool lacks.
    pub async fn refill(&mut self, busy: bool) {
        if busy {
            self.busy_at = Some(Instant::now());
        }
        self.collect().await;
        let live =
            |key: &str, wanted: &HashMap<String, Kind>| wanted.get(key).is_some_and(|k| k.snapshot.state().exists());
        let (keep, gone): (Vec<Warm>, Vec<Warm>) =
            std::mem::take(&mut self.ready).into_iter().partition(|w| live(&w.key, &self.wanted));
        self.ready = keep;
        for w in gone {
            tracing::info!(snapshot = %w.key, "ending a warm-pool VM of a snapshot that is gone");
            w.discard(&self.site).await;
        }
        if self.busy_at.is_some_and(|t| t.elapsed() < QUIET) || self.warming.is_some() {
            return;
        }
        let lacking = self.wanted.values().find(|k| {
            let key = k.snapshot.key();
            k.snapshot.state().exists()
                && self.failed.get(&key).is_none_or(|t| t.elapsed() >= RETRY_AFTER)
                && self.ready.iter().filter(|w| w.key == key).count() < self.size
        });
        if let Some(kind) = lacking.cloned() {
            let key = kind.snapshot.key();
            let (dir, disks, consoles, site, accel) =
                (self.dir.clone(), self.disks.clone(), self.consoles.clone(), self.site.clone(), self.accel);
            let task = tokio::spawn(async move { warm(&dir, &disks, &consoles, &site, accel, kind).await });
            self.warming = Some((key, task));
        }
    }

    /// Puts a VM that finished warming up into the pool.
    pub async fn collect(&mut self) {
        if self.warming.as_ref().is_some_and(|(_, t)| t.is_finished()) {
            if let Some((key, task)) = self.warming.take() {
                match task.await {
                    Ok(Ok(w)) => {
                        tracing::info!(snapshot = %w.key, pid = w.pid, "warm-pool VM ready");
                        self.ready.push(w);
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = format!("{e:#}"), "a warm-pool VM failed to warm up");
                        self.failed.insert(key, Instant::now());
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the warm-up task failed");
                        self.failed.insert(key, Instant::now());
                    }
                }
            }
        }
    }
}

/// Restores a pool VM of `kind` and warms it up.
async fn warm(
    dir: &Path,
    disks: &Path,
    consoles: &Path,
    site: &Site,
    accel: Accel,
    kind: Kind,
) -> anyhow::Result<Warm> {
    let t0 = Instant::now();
    let name = format!("{:07x}", rand::random::<u32>() & 0x0fff_ffff);
    let w = Warm {
        key: kind.snapshot.key(),
        run_dir: dir.join(&name),
        disk: disks.join(format!("{name}.qcow2")),
        console: consoles.join(format!("{name}.log")),
        tap: format!("{}{name}", site.pool_tap_prefix()),
        pid: 0,
    };
    let result = async {
        for d in [&w.run_dir, disks, consoles] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        site.add_pool_tap(&w.tap).await?;
        std::fs::copy(kind.snapshot.disk(), &w.disk).context("copying the snapshot's disk")?;
        let link = w.run_dir.join("console.log");
        super::fresh_console(&link, &w.console, Some(&kind.snapshot.console()))?;
        let mut spec = snapshot::spec(
            &kind.image,
            &w.run_dir,
            w.disk.clone(),
            kind.vcpus,
            kind.memory_mib,
            LaunchSnapshot::Restore { ram: kind.snapshot.ram(), tap: w.tap.clone() },
        );
        spec.uuid = ec2_uuid(&format!("warm-pool/{}", w.run_dir.display()));
        let identity_path = spec.identity_path();
        let vm = tokio::task::spawn_blocking(move || Vm::launch(&spec, accel)).await??;
        let mut q = snapshot::load(&vm, &kind.snapshot).await?;
        let mut channel =
            tokio::net::UnixStream::connect(&identity_path).await.context("connecting to the identity channel")?;
        tokio::io::AsyncWriteExt::write_all(&mut channel, warm_line()?.as_bytes()).await?;
        q.execute("cont", None).await?;
        let mut answer = String::new();
        let mut reader = tokio::io::BufReader::new(channel);
        let read = tokio::io::AsyncBufReadExt::read_line(&mut reader, &mut answer);
        match tokio::time::timeout(WARM_TIMEOUT, read).await {
            Ok(Ok(_)) if answer.trim() == "warm" => {}
            Ok(r) => anyhow::bail!("the pool VM answered {answer:?} ({r:?}) instead of warm"),
            Err(_) => anyhow::bail!("the pool VM did not warm up in {WARM_TIMEOUT:?}"),
        }
        tracing::info!(ms = t0.elapsed().as_millis() as u64, pid = vm.pid, "warm-pool VM warmed up");
        anyhow::Ok(vm.pid)
    }
    .await;
    match result {
        Ok(pid) => Ok(Warm { pid, ..w }),
        Err(e) => {
            w.discard(site).await;
            Err(e)
        }
    }
}

/// The line that warms a pool VM up: a throwaway SSH host key for its sshd, and a
/// throwaway client key (dropbear's format, for dbclient) with its public key.
fn warm_line() -> anyhow::Result<String> {
    let host = snapshot::dropbear_host_key()?;
    let client = snapshot::dropbear_host_key()?;
    let public = snapshot::dropbear_public_key(&client).context("the throwaway client key")?;
    Ok(format!(
        "warm hostkey={} clientkey={} clientpub=ssh-ed25519,{public}\n",
        snapshot::printf_escaped(&host),
        snapshot::printf_escaped(&client)
    ))
}

/// Moves a pool VM's disk, console and run directory to the instance's (`disk`; `console`,
/// the shared console file; `run_dir`), once its tap moved (`tap_moved`: the result of
/// `Network::adopt_pool_taps`). On failure the pool VM is ended (and whatever moved is left
/// for the normal launch to replace).
pub async fn adopt(
    w: Warm,
    tap_moved: anyhow::Result<()>,
    site: &Site,
    disk: &Path,
    console: &Path,
    run_dir: &Path,
) -> anyhow::Result<Vm> {
    let pid = w.pid;
    let moved = async {
        tap_moved?;
        for p in [disk, console] {
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)?;
            }
        }
        std::fs::rename(&w.disk, disk).context("moving the pool VM's disk")?;
        std::fs::rename(&w.console, console).context("moving the pool VM's console")?;
        // Its QEMU's command line names the directory it started in; until the identity is
        // written, a crash of the agent leaves a VM to end (`end_cut_short_restores`).
        std::fs::write(w.run_dir.join(HOME_FILE), w.run_dir.display().to_string())?;
        std::fs::write(w.run_dir.join(super::IDENTITY_PENDING), b"")?;
        if run_dir.exists() {
            std::fs::remove_dir_all(run_dir)?;
        }
        if let Some(parent) = run_dir.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::rename(&w.run_dir, run_dir).context("moving the pool VM's run directory")?;
        let link = run_dir.join("console.log");
        std::fs::remove_file(&link)?;
        std::os::unix::fs::symlink(console, &link)?;
        let vm = Vm::adopt(run_dir).context("the pool VM is not there after the move")?;
        anyhow::ensure!(vm.pid == pid, "another QEMU in the pool VM's directory");
        anyhow::Ok(vm)
    }
    .await;
    match moved {
        Ok(vm) => Ok(vm),
        Err(e) => {
            let _ = std::process::Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            let _ = std::fs::remove_dir_all(&w.run_dir);
            let _ = std::fs::remove_file(run_dir.join(super::IDENTITY_PENDING));
            // The root disk, if it moved already: the launch makes its own.
            if !w.disk.exists() {
                let _ = std::fs::remove_file(disk);
            }
            let _ = std::fs::remove_file(&w.disk);
            let _ = std::fs::remove_file(&w.console);
            site.remove_pool_taps(Some(&w.tap)).await;
            Err(e)
        }
    }
}
