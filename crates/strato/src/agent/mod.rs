//! The host agent: makes the instances' desired state true on this host and reports what it
//! sees. `strato serve` runs one in-process for the host it registered (`control::hosts`):
//! each pass acts on the instances placed on this host only, on the volumes attached to them,
//! and, when this host is its zone's volume worker, on the unattached ones (and their
//! snapshots); a VM here whose instance was placed on another host meanwhile (recovered while
//! this host was cut off) is ended first. It reconciles every `TICK`:
//!
//! - `pending`, first launch, an image with launch snapshots and the snapshot ready: restored
//!   from it (`snapshot`), all such instances of a pass at once, before the loop below: QEMU
//!   starts and loads while the network syncs (for instances whose tap is already there;
//!   the others after the sync), and runs, given its identity, only once the VPC's rules
//!   are in place; a failed restore is undone and the instance boots cold. A VM of the warm
//!   pool (`pool`: restored ahead and warmed up) is taken instead when there is one; the
//!   pool is refilled once the host has had no launch for a while.
//! - `pending` with no VM: create the root volume's file (a qcow2 overlay on the image,
//!   `DATA_DIR/volumes/<vol>.qcow2`, once), write the metadata config, launch QEMU with it
//!   as `vda` and the attached data volumes; report `Booted` (EC2's `running` means the VM
//!   runs).
//! - `running`: a VM that is gone powered itself off (console says so: the instance's
//!   shutdown behaviour applies) or died (stopped, with a server error as state reason);
//!   a reboot request resets the VM; the guest reading its metadata marks it healthy.
//! - `stopping`: press the ACPI power button once; force after `STOP_TIMEOUT` or when asked;
//!   report `VmGone` when QEMU has exited.
//! - `shutting-down`: end QEMU, report (the control plane then marks the DeleteOnTermination
//!   volumes, the root volume among them, `deleting`, and the volumes' pass removes them).
//! - Instance store: types with local storage get a scratch disk (`ephemeral0.qcow2`, serial
//!   `ephemeral0`) made new at every start and removed at stop and termination.
//!
//! Volumes (after the instances): `creating` -> make the qcow2 file, report available;
//! `deleting` -> remove it, report gone; an attachment `attaching` -> hot-plug it into the
//! instance's VM (`blockdev-add` + `device_add` into a free slot of its hot-plug bridge), or, with no VM,
//! report it attached (it is on the command line at the next boot); `detaching` -> `device_del`
//! (the guest lets go), then `blockdev-del`, report detached. Once per agent start, every
//! attached volume of a running VM is checked to be in it, and plugged in if not.
//!
//! Modifications: a volume being modified is grown to its new size (`block_resize` in a
//! running VM, `qemu-img resize` otherwise), then the modification completes.
//!
//! Snapshots: `pending` -> a point-in-time copy of the volume into
//! `DATA_DIR/snapshots/<id>.qcow2`: QEMU's `blockdev-backup` (sync=full) when the volume is
//! in a running VM (crash-consistent while the guest writes; for a root volume
//! `blockdev-backup` of `virtio0`, which flattens the image under it, the VM paused meanwhile
//! for CreateImage without NoReboot), `qemu-img convert` otherwise; a copy of the source
//! file for CopySnapshot. Files no snapshot names are removed.
//!
//! Crashes: every file is made under a `.tmp` name and renamed into place before the report,
//! so a crash between the two leaves the work to be redone by the next pass (the row still
//! says `creating`/`pending`/`modifying`), never a half-written file under a real name; a
//! snapshot's backup job dies with a QEMU or is redone after a `strato serve` restart
//! (its `.tmp` is replaced). A hot-plug the database does not know of yet is found by the
//! check every agent start makes of every attached volume.
//!
//! VMs are daemonized QEMUs found again from their run directories
//! (`DATA_DIR/instances/<id>/`), so restarting `strato serve` leaves them running and the
//! agent picks them up. Every report carries the generation the agent acted on; the control
//! plane ignores stale ones.
//!
//! Network: before the instances are reconciled, every pass makes the host's networking
//! match the instances that have (or are about to have) a VM: their VPC namespaces, taps,
//! leases, security-group rules, public addresses and metadata table (`net::Network::sync`).
//! A VM's one NIC is a tap on its VPC's bridge; QEMU runs in the VPC's namespace.

pub mod link;
pub mod pool;
pub mod remote;
pub mod sim;
pub mod snapshot;
pub mod tls;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::control::hosts::Duties;
use crate::control::instance_state::{Event, InstanceState};
use crate::control::instances::Instance;
use crate::control::volumes::{Volume, MAX_ATTACHED};
use crate::control::Control;
use crate::hypervisor::{detect_accel, ec2_uuid, Accel, Vm, VmSpec, VolumeDisk};
use crate::ids::HostId;
use crate::metadata::{InstanceMetadata, StdioConfig};
use crate::net::{self, Network, Site};
use link::Link;

pub const TICK: Duration = Duration::from_millis(250);
/// How long a graceful stop may take before the VM is ended.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a launch waits for its VPC's network before it fails.
pub const NETWORK_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Agent<L: Link = Control> {
    control: Arc<L>,
    /// The host this agent runs (registered by `register_host`).
    host: HostId,
    instances_dir: PathBuf,
    accel: Accel,
    net: Network,
    /// VPCs whose network failed to sync on the last pass.
    net_failed: std::collections::BTreeSet<String>,
    volumes_dir: PathBuf,
    snapshots_dir: PathBuf,
    /// Attached volumes checked to be in their VM since this agent started.
    volumes_checked: std::collections::HashSet<String>,
    /// When `device_del` was sent, per volume being detached.
    unplug_sent: HashMap<String, Instant>,
    token_key: String,
    /// When the power button was pressed, per instance (stopping).
    powerdown_sent: HashMap<String, Instant>,
    /// Launch snapshots (`STRATO_LAUNCH_SNAPSHOTS=off` turns them off).
    pub snapshots: snapshot::Snapshots,
    /// Instances whose restore failed: they boot cold.
    restore_failed: std::collections::HashSet<String>,
    /// Restored instances whose guest this process is waiting on to take its identity (their
    /// run directories hold `IDENTITY_PENDING` until it answers). A marker with no waiter
    /// here is a restore a crash cut short: the VM is redone.
    identity_waits: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// When the launch snapshots of deregistered images were last looked for.
    pruned: Option<Instant>,
    /// VMs restored and warmed up ahead of launches (`pool`).
    pub pool: pool::Pool,
}

impl<L: Link> Agent<L> {
    pub fn new(control: Arc<L>, data_dir: &Path, host: HostId) -> anyhow::Result<Agent<L>> {
        let (accel, why) = detect_accel();
        // Measured here, once (20 ms), rather than at the first launch.
        let clocks = crate::hypervisor::guest_clock_args();
        tracing::info!(accel = %accel.label(), reason = %why, guest_clocks = %clocks.trim(), "agent accelerator");
        let key_path = data_dir.join("metadata-token.key");
        let token_key = match std::fs::read_to_string(&key_path) {
            Ok(k) => k.trim().to_owned(),
            Err(_) => {
                let k = hex::encode(rand::random::<[u8; 32]>());
                std::fs::write(&key_path, &k).context("writing the metadata token key")?;
                k
            }
        };
        let (volumes_dir, snapshots_dir) = (control.volumes_dir(), control.snapshots_dir());
        let snapshots = snapshot::Snapshots::new(
            data_dir,
            !matches!(std::env::var("STRATO_LAUNCH_SNAPSHOTS").as_deref(), Ok("off" | "0" | "false")),
        );
        let consoles_dir = control.console_file("x").parent().map(Path::to_owned).unwrap_or_else(|| data_dir.into());
        let pool = pool::Pool::new(
            data_dir,
            &volumes_dir.join("warm-pool").join(host.as_str()),
            &consoles_dir.join("warm-pool").join(host.as_str()),
            Site::new(data_dir),
            accel,
            if snapshots.enabled { pool::size_from_env() } else { 0 },
        );
        Ok(Agent {
            control,
            host,
            instances_dir: data_dir.join("instances"),
            accel,
            net: Network::new(Site::new(data_dir), net::imds::Imds::default()),
            net_failed: Default::default(),
            volumes_dir,
            snapshots_dir,
            volumes_checked: Default::default(),
            unplug_sent: HashMap::new(),
            token_key,
            powerdown_sent: HashMap::new(),
            restore_failed: Default::default(),
            identity_waits: Default::default(),
            pruned: None,
            snapshots,
            pool,
        })
    }

    /// Reconciles forever: every `TICK`, and at once when the control plane changes a
    /// desired state.
    pub async fn run(mut self) {
        let control = self.control.clone();
        // A previous run's pool VMs: their state is not known, they end; so does any QEMU
        // of this data dir whose run directory is gone.
        self.pool.clear_leftovers().await;
        if let Some(data_dir) = self.instances_dir.parent() {
            crate::hypervisor::end_orphans(data_dir).await;
        }
        loop {
            if let Err(e) = self.reconcile_once().await {
                tracing::warn!(error = format!("{e:#}"), "agent pass failed");
            }
            control.changed(TICK).await;
        }
    }

    /// Heartbeats for `host` (every `Control::heartbeat_interval`), until aborted.
    pub async fn heartbeats(control: Arc<L>, host: HostId) {
        loop {
            if let Err(e) = control.heartbeat(&host).await {
                tracing::warn!(host_id = %host, error = format!("{e:#}"), "heartbeat failed");
            }
            tokio::time::sleep(control.heartbeat_interval()).await;
        }
    }

    pub fn run_dir(&self, id: &str) -> PathBuf {
        self.instances_dir.join(id)
    }

    pub async fn reconcile_once(&mut self) -> anyhow::Result<()> {
        let mut phases = Phases::new();
        let duties = self.control.duties(&self.host).await?;
        let live = duties.instances.clone();
        // Run directories of instances that are not this host's: a VM whose instance now
        // runs on another host (recovered elsewhere while this host was cut off) must not
        // run twice, and one whose instance is terminated must not run at all; then the
        // directory goes (its sockets, pid file and metadata log).
        if let Ok(entries) = std::fs::read_dir(&self.instances_dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if live.iter().any(|i| i.id.as_str() == name) {
                    continue;
                }
                if let Some(vm) = Vm::adopt(&e.path()) {
                    if duties.elsewhere(&name) {
                        tracing::warn!(instance_id = %name, "ending a VM whose instance was placed on another host");
                    } else {
                        tracing::warn!(instance_id = %name, "ending a VM whose instance is terminated");
                    }
                    vm.kill().await;
                }
                if Vm::adopt(&e.path()).is_none() {
                    if let Err(err) = std::fs::remove_dir_all(e.path()) {
                        tracing::warn!(instance_id = %name, error = %err, "removing a run directory failed");
                    }
                }
            }
        }
        let on_host: Vec<Instance> = live
            .iter()
            .filter(|i| matches!(i.state, InstanceState::Pending | InstanceState::Running | InstanceState::Stopping))
            .cloned()
            .collect();
        let views = self.control.network_views(&self.host, &on_host).await?;
        // Restores start on the taps already there while the rest of the network syncs.
        let volumes = self.control.all_volumes().await?;
        phases.mark("read");
        self.end_cut_short_restores(&live, &volumes).await;
        self.pool.collect().await;
        // Launches that take a warm-pool VM bring its tap: no tap of their own is made.
        let takes = self.take_pool_vms(&live, &volumes, &views).await;
        let brought: std::collections::HashSet<String> =
            takes.iter().map(|(job, _, _)| net::tap_name(&job.instance_id)).collect();
        self.net.make_taps(&views, &brought).await;
        phases.mark("taps");
        let early = self.start_restores(&live, &volumes, &views, true, &[], takes).await;
        phases.mark("restores");
        let restoring: Vec<String> = match &early {
            Ok(r) => r.iter().map(|r| r.instance_id.clone()).collect(),
            Err(_) => Vec::new(),
        };
        self.start_cold_early(&live, &views, &restoring).await;
        phases.mark("cold");
        self.net_failed = self.net.sync(&views).await;
        phases.mark("sync");
        let table = on_host
            .iter()
            .filter_map(|i| {
                let ip = i.private_ip.parse().ok()?;
                Some(((i.vpc_id.clone(), ip), self.metadata_config(i, &self.run_dir(i.id.as_str()), &volumes)))
            })
            .collect();
        self.net.imds.set_table(table);
        if self.pruned.is_none_or(|t| t.elapsed() > net::RECHECK) {
            self.snapshots.prune(&self.control.image_ids().await?);
            self.pruned = Some(Instant::now());
        }
        let mut restoring = early.unwrap_or_else(|e| {
            tracing::warn!(error = format!("{e:#}"), "restoring launches failed");
            Vec::new()
        });
        match self.start_restores(&live, &volumes, &views, false, &restoring, Vec::new()).await {
            Ok(late) => restoring.extend(late),
            Err(e) => tracing::warn!(error = format!("{e:#}"), "restoring launches failed"),
        }
        self.finish_restores(restoring).await;
        phases.mark("resumes");
        self.pool.refill(live.iter().any(|i| i.state == InstanceState::Pending)).await;
        for i in &live {
            if let Err(e) = self.reconcile(i, &views).await {
                tracing::warn!(instance_id = %i.id, error = format!("{e:#}"), "reconcile failed");
            }
        }
        phases.mark("instances");
        // Read again: the instances' passes may have changed volumes (a termination
        // detaches them), and this pass should act on that at once.
        let volumes = self.control.all_volumes().await?;
        for v in volumes.iter().filter(|v| duties.volume(&v.availability_zone, v.instance_id.as_deref())) {
            if let Err(e) = self.reconcile_volume(v, &live).await {
                tracing::warn!(volume_id = %v.id, error = format!("{e:#}"), "volume reconcile failed");
            }
        }
        self.reconcile_snapshots(&volumes, &live, &duties).await?;
        for m in self.control.modifying_volumes().await? {
            let Some(v) = volumes.iter().find(|v| v.id.as_str() == m.volume_id) else { continue };
            if v.state == "creating" || !duties.volume(&v.availability_zone, v.instance_id.as_deref()) {
                continue;
            }
            let disk = self.volume_disk(v);
            let vm = self.attached_vm(v, live.as_slice());
            let bytes = m.target_size << 30;
            let result = match vm {
                // The running guest sees the new capacity at once (virtio config change).
                Some(vm) => {
                    async {
                        let mut q = vm.qmp().await?;
                        let target = if v.root {
                            serde_json::json!({"device": "virtio0", "size": bytes})
                        } else {
                            serde_json::json!({"node-name": disk.node(), "size": bytes})
                        };
                        q.execute("block_resize", Some(target)).await?;
                        anyhow::Ok(())
                    }
                    .await
                }
                None => async { qemu_img_resize(&disk.path, &bytes.to_string()).await }.await,
            };
            if let Err(e) = &result {
                tracing::error!(volume_id = %v.id, error = format!("{e:#}"), "volume modification failed");
            }
            self.control.volume_modified(&m.volume_id, result.is_ok()).await?;
        }
        phases.mark("volumes");
        phases.log_if_slow(views.len());
        Ok(())
    }

    fn snapshot_path(&self, id: &str) -> PathBuf {
        self.snapshots_dir.join(format!("{id}.qcow2"))
    }

    async fn reconcile_snapshots(
        &mut self,
        volumes: &[Volume],
        live: &[Instance],
        duties: &Duties,
    ) -> anyhow::Result<()> {
        let snapshots = self.control.all_snapshots().await?;
        let mine =
            |s: &&crate::control::snapshots::Snapshot| match volumes.iter().find(|v| v.id.as_str() == s.volume_id) {
                Some(v) if s.source_snapshot.is_none() => duties.volume(&v.availability_zone, v.instance_id.as_deref()),
                _ => duties.region_worker,
            };
        for s in snapshots.iter().filter(|s| s.state == "pending").filter(mine) {
            std::fs::create_dir_all(&self.snapshots_dir)?;
            let target = self.snapshot_path(s.id.as_str());
            let tmp = target.with_extension("tmp");
            let _ = std::fs::remove_file(&tmp);
            let result = match &s.source_snapshot {
                Some(src) => qemu_img_convert(&self.snapshot_path(src), &tmp).await,
                None => match volumes.iter().find(|v| v.id.as_str() == s.volume_id) {
                    None => Err(anyhow::anyhow!("the volume {} is gone", s.volume_id)),
                    Some(v) => {
                        let disk = self.volume_disk(v);
                        let vm = self.attached_vm(v, live);
                        match vm {
                            // A root volume: flattened (the image under it included).
                            Some(vm) if v.root => root_backup(&vm, s.id.as_str(), v.size_gb, s.pause_vm, &tmp).await,
                            Some(vm) => backup(&vm, &disk, s.id.as_str(), v.size_gb, &tmp).await,
                            None => qemu_img_convert(&disk.path, &tmp).await,
                        }
                    }
                },
            };
            match result {
                Ok(()) => {
                    std::fs::rename(&tmp, &target)?;
                    self.control.snapshot_done(&s.id, true).await?;
                    self.control.image_snapshot_done(&s.id, Some(&target)).await?;
                    tracing::info!(snapshot_id = %s.id, volume_id = %s.volume_id, "snapshot completed");
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    tracing::error!(snapshot_id = %s.id, error = format!("{e:#}"), "snapshot failed");
                    self.control.snapshot_done(&s.id, false).await?;
                    self.control.image_snapshot_done(&s.id, None).await?;
                }
            }
        }
        // Files of deleted snapshots (one host removes them: the directory may be shared).
        if !duties.region_worker {
            return Ok(());
        }
        if let Ok(entries) = std::fs::read_dir(&self.snapshots_dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(id) = name.strip_suffix(".qcow2") else { continue };
                if !snapshots.iter().any(|s| s.id.as_str() == id) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    /// A root volume made before root volumes were volumes lived in its instance's run
    /// directory: it moves to its place (a running VM keeps its open file).
    fn adopt_legacy_root(&self, v: &Volume, instance_id: &str) {
        let disk = self.volume_disk(v);
        let legacy = self.run_dir(instance_id).join("root.qcow2");
        if !disk.path.exists() && legacy.exists() {
            let moved = std::fs::create_dir_all(&self.volumes_dir).and_then(|_| std::fs::rename(&legacy, &disk.path));
            match moved {
                Ok(()) => tracing::info!(volume_id = %v.id, instance_id, "root volume moved to the volumes directory"),
                Err(e) => tracing::warn!(volume_id = %v.id, error = %e, "could not move the root volume"),
            }
        }
    }

    /// The running VM a volume is attached in (the attachment complete), if any.
    fn attached_vm(&self, v: &Volume, live: &[Instance]) -> Option<Vm> {
        v.instance_id
            .as_ref()
            .filter(|_| v.attach_state.as_deref() == Some("attached"))
            .and_then(|i| live.iter().find(|x| x.id.as_str() == i))
            .and_then(|i| Vm::adopt(&self.run_dir(i.id.as_str())))
    }

    fn volume_disk(&self, v: &Volume) -> VolumeDisk {
        VolumeDisk { path: self.volumes_dir.join(format!("{}.qcow2", v.id)), volume_id: v.id.to_string() }
    }

    async fn reconcile_volume(&mut self, v: &Volume, live: &[Instance]) -> anyhow::Result<()> {
        let disk = self.volume_disk(v);
        match v.state.as_str() {
            "creating" => {
                std::fs::create_dir_all(&self.volumes_dir)?;
                let tmp = disk.path.with_extension("tmp");
                match &v.snapshot_id {
                    // A copy of the snapshot (never a file that depends on it), grown to size.
                    Some(snap) => {
                        qemu_img_convert(&self.snapshot_path(snap), &tmp).await?;
                        qemu_img_resize(&tmp, &format!("{}G", v.size_gb)).await?;
                    }
                    None => qemu_img_create(&tmp, v.size_gb, None).await?,
                }
                std::fs::rename(&tmp, &disk.path)?;
                self.control.volume_created(&v.id).await?;
                return Ok(());
            }
            "deleting" => {
                match std::fs::remove_file(&disk.path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
                self.control.volume_deleted(&v.id).await?;
                return Ok(());
            }
            _ => {}
        }
        let Some(instance_id) = &v.instance_id else { return Ok(()) };
        if v.root {
            // A root volume is the VM's `vda` from its start: never hot-plugged. It is
            // attached or detached only while its instance is stopped.
            self.adopt_legacy_root(v, instance_id);
            match v.attach_state.as_deref() {
                Some("attaching") => self.control.volume_attached(&v.id).await?,
                Some("detaching") if Vm::adopt(&self.run_dir(instance_id)).is_none() => {
                    self.control.volume_detached(&v.id).await?
                }
                _ => {}
            }
            return Ok(());
        }
        let vm = live
            .iter()
            .find(|i| i.id.as_str() == instance_id)
            .filter(|i| matches!(i.state, InstanceState::Pending | InstanceState::Running | InstanceState::Stopping))
            .and_then(|i| Vm::adopt(&self.run_dir(i.id.as_str())));
        match (v.attach_state.as_deref(), vm) {
            (Some("attaching"), Some(vm)) => {
                hotplug(&vm, &disk).await?;
                self.volumes_checked.insert(v.id.to_string());
                self.control.volume_attached(&v.id).await?;
                tracing::info!(volume_id = %v.id, instance_id, "volume hot-plugged");
            }
            (Some("attaching"), None) => self.control.volume_attached(&v.id).await?,
            (Some("attached"), Some(vm)) if !self.volumes_checked.contains(v.id.as_str()) => {
                let mut q = vm.qmp().await?;
                if !device_present(&mut q, &disk.device_id()).await? {
                    drop(q);
                    hotplug(&vm, &disk).await?;
                    tracing::info!(volume_id = %v.id, instance_id, "attached volume was missing from its VM: plugged in");
                }
                self.volumes_checked.insert(v.id.to_string());
            }
            (Some("detaching"), Some(vm)) => {
                let mut q = vm.qmp().await?;
                if device_present(&mut q, &disk.device_id()).await? {
                    // The guest must let go of the device (PCIe hot-unplug takes seconds).
                    let sent = self.unplug_sent.get(v.id.as_str()).copied();
                    if sent.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        let _ = q.execute("device_del", Some(serde_json::json!({"id": disk.device_id()}))).await;
                        self.unplug_sent.insert(v.id.to_string(), Instant::now());
                    }
                    return Ok(());
                }
                let _ = q.execute("blockdev-del", Some(serde_json::json!({"node-name": disk.node()}))).await;
                self.unplug_sent.remove(v.id.as_str());
                self.volumes_checked.remove(v.id.as_str());
                self.control.volume_detached(&v.id).await?;
                tracing::info!(volume_id = %v.id, instance_id, "volume unplugged");
            }
            (Some("detaching"), None) => {
                self.unplug_sent.remove(v.id.as_str());
                self.control.volume_detached(&v.id).await?;
            }
            _ => {}
        }
        Ok(())
    }

    async fn reconcile(&mut self, i: &Instance, views: &[net::rules::VpcView]) -> anyhow::Result<()> {
        let dir = self.run_dir(i.id.as_str());
        let vm = Vm::adopt(&dir);
        match (i.state, vm) {
            (InstanceState::Pending, None) => {
                let first_launch = i.generation == 0;
                let waited = (chrono::Utc::now() - i.state_changed_at).to_std().unwrap_or_default();
                if self.net_failed.contains(&i.vpc_id) && waited < NETWORK_TIMEOUT {
                    return Ok(());
                }
                match self.launch(i, &dir, views, false).await {
                    Ok(_) => {
                        self.control.apply(&i.id, i.generation, Event::Booted, None).await?;
                    }
                    Err(e) => {
                        tracing::error!(instance_id = %i.id, error = format!("{e:#}"), "launch failed");
                        // A first launch ends terminated: its root volume then goes with it
                        // (or stays, without DeleteOnTermination, as EC2 keeps it).
                        let reason = ("Server.InternalError", "Server.InternalError: Internal error on launch");
                        self.control
                            .apply(&i.id, i.generation, Event::LaunchFailed { first_launch }, Some(reason))
                            .await?;
                    }
                }
            }
            (InstanceState::Pending, Some(vm)) => {
                // Started before the network sync (`start_cold_early`): its link comes up
                // now that the VPC's rules are there.
                if dir.join(NETWORK_HELD).exists() {
                    if self.net_failed.contains(&i.vpc_id) {
                        // It starts again once its network is there.
                        vm.kill().await;
                        let _ = std::fs::remove_file(dir.join(NETWORK_HELD));
                        return Ok(());
                    }
                    let mut q = vm.qmp().await?;
                    q.execute("set_link", Some(serde_json::json!({"name": "n0", "up": true}))).await?;
                    let _ = std::fs::remove_file(dir.join(NETWORK_HELD));
                }
                self.control.apply(&i.id, i.generation, Event::Booted, None).await?;
            }
            (InstanceState::Running, Some(vm)) if self.identity_cut_short(i.id.as_str(), &dir) => {
                // Restored, reported running, but its guest never took its identity (the
                // server crashed before it answered, or it never did): it would never come
                // up. Redone as a cold boot from its root volume, which the guest has not
                // written to since the template's snapshot point.
                tracing::warn!(instance_id = %i.id, "a restored guest never took its identity: booting it cold");
                vm.kill().await;
                let _ = std::fs::remove_file(dir.join(IDENTITY_PENDING));
                self.launch(i, &dir, views, false).await?;
            }
            (InstanceState::Running, Some(vm)) => {
                if i.reboot_requested {
                    if let Ok(mut q) = vm.qmp().await {
                        q.system_reset().await?;
                    }
                    self.control.set_instance_flag(&i.id, "reboot_requested", false).await?;
                }
                if !i.status_ok && std::fs::metadata(dir.join("metadata.log")).map(|m| m.len() > 0).unwrap_or(false) {
                    self.control.set_instance_flag(&i.id, "status_ok", true).await?;
                }
            }
            (InstanceState::Running, None) => {
                let console = std::fs::read_to_string(dir.join("console.log")).unwrap_or_default();
                if console.contains("reboot: Power down") {
                    let terminate = i.shutdown_behavior == "terminate";
                    self.control
                        .apply(
                            &i.id,
                            i.generation,
                            Event::GuestShutdown { terminate },
                            Some((
                                "Client.InstanceInitiatedShutdown",
                                "Client.InstanceInitiatedShutdown: Instance initiated shutdown",
                            )),
                        )
                        .await?;
                } else {
                    self.control
                        .apply(
                            &i.id,
                            i.generation,
                            Event::VmGone,
                            Some((
                                "Server.InternalError",
                                "Server.InternalError: the instance's VM stopped unexpectedly",
                            )),
                        )
                        .await?;
                }
            }
            (InstanceState::Stopping, Some(vm)) => {
                let sent = self.powerdown_sent.get(i.id.as_str()).copied();
                let overdue = sent.is_some_and(|t| t.elapsed() > STOP_TIMEOUT);
                if i.force_stop || overdue {
                    vm.kill().await;
                } else if sent.is_none() {
                    match vm.qmp().await {
                        Ok(mut q) => {
                            q.system_powerdown().await?;
                            self.powerdown_sent.insert(i.id.to_string(), Instant::now());
                        }
                        Err(_) => vm.kill().await,
                    }
                }
            }
            (InstanceState::Stopping, None) => {
                self.powerdown_sent.remove(i.id.as_str());
                // The instance store does not outlive the run.
                let _ = std::fs::remove_file(dir.join("ephemeral0.qcow2"));
                let reason = if i.state_reason_code.is_some() {
                    None
                } else {
                    Some(("Client.UserInitiatedShutdown", "Client.UserInitiatedShutdown: User initiated shutdown"))
                };
                self.control.apply(&i.id, i.generation, Event::VmGone, reason).await?;
            }
            (InstanceState::ShuttingDown, vm) => {
                if let Some(vm) = vm {
                    vm.kill().await;
                }
                self.powerdown_sent.remove(i.id.as_str());
                let _ = std::fs::remove_file(dir.join("ephemeral0.qcow2"));
                let reason = if i.state_reason_code.is_some() {
                    None
                } else {
                    Some(("Client.UserInitiatedShutdown", "Client.UserInitiatedShutdown: User initiated shutdown"))
                };
                self.control.apply(&i.id, i.generation, Event::VmGone, reason).await?;
            }
            (InstanceState::Stopped, Some(vm)) | (InstanceState::Terminated, Some(vm)) => vm.kill().await,
            // (A terminated instance's run directory goes at the start of a pass.)
            (InstanceState::Stopped, None) | (InstanceState::Terminated, None) => {}
        }
        Ok(())
    }

    /// What the instance's metadata service serves (re-read for every request, so changes
    /// such as HttpTokens apply to a running guest).
    fn metadata_config(&self, i: &Instance, dir: &Path, volumes: &[Volume]) -> StdioConfig {
        // The instance store, then the attached volumes in device order, as EC2 lists them.
        let mut block_devices = Vec::new();
        if self.control.catalogue().get(&i.instance_type).is_some_and(|t| t.instance_storage_gb.is_some()) {
            block_devices.push(("ephemeral0".to_owned(), "sdb".to_owned()));
        }
        let mut devices: Vec<&str> = volumes
            .iter()
            .filter(|v| {
                !v.root
                    && v.instance_id.as_deref() == Some(i.id.as_str())
                    && v.attach_state.as_deref() == Some("attached")
            })
            .filter_map(|v| v.device.as_deref())
            .collect();
        devices.sort();
        for (n, d) in devices.iter().enumerate() {
            block_devices.push((format!("ebs{}", n + 1), d.trim_start_matches("/dev/").to_owned()));
        }
        let md = InstanceMetadata {
            instance_id: i.id.to_string(),
            ami_id: i.image_id.clone(),
            instance_type: i.instance_type.clone(),
            account_id: i.owner.to_string(),
            region: self.control.region_name().to_owned(),
            availability_zone: i.availability_zone.clone(),
            local_ipv4: i.private_ip.clone(),
            public_ipv4: i.public_ip.clone(),
            mac: mac_of(i.id.as_str()),
            security_groups: i.security_groups.iter().map(|g| g.1.clone()).collect(),
            public_key: i.key_name.clone().zip(i.public_key.clone()),
            user_data: i
                .user_data
                .as_deref()
                .and_then(|u| base64::Engine::decode(&base64::engine::general_purpose::STANDARD, u).ok()),
            tokens_required: i.tokens_required,
            block_devices,
        };
        StdioConfig { metadata: md, token_key: self.token_key.clone(), log: Some(dir.join("metadata.log")) }
    }

    /// Cold boots (pending, with no VM and not being restored) whose tap is there already
    /// start before the pass's network sync, at most `EARLY_COLD` a pass, their NIC's link
    /// down (set by QMP before the guest runs at all: QEMU drops what either side sends):
    /// the guest boots while its VPC's namespace, rules, DHCP and metadata service are
    /// made, and `reconcile` brings the link up after a sync that did not fail (or ends the
    /// VM, to start again once the network is there). The others start after the sync.
    async fn start_cold_early(&mut self, live: &[Instance], views: &[net::rules::VpcView], restoring: &[String]) {
        let mut started = 0;
        for i in live {
            if started == EARLY_COLD {
                break;
            }
            if i.state != InstanceState::Pending
                || restoring.iter().any(|r| r == i.id.as_str())
                || !self.net.has_tap(&i.vpc_id, &net::tap_name(i.id.as_str()))
            {
                continue;
            }
            let dir = self.run_dir(i.id.as_str());
            if Vm::adopt(&dir).is_some() {
                continue;
            }
            match self.launch(i, &dir, views, true).await {
                Ok(_) => started += 1,
                Err(e) => {
                    tracing::warn!(instance_id = %i.id, error = format!("{e:#}"), "early start failed; it starts after the network sync");
                }
            }
        }
    }

    /// Boots an instance cold; `hold`: with its NIC's link down (see `start_cold_early`).
    async fn launch(
        &mut self,
        i: &Instance,
        dir: &Path,
        views: &[net::rules::VpcView],
        hold: bool,
    ) -> anyhow::Result<Vm> {
        let image = self
            .control
            .image_for_launch(&i.image_id)
            .await?
            .with_context(|| format!("image {} is gone", i.image_id))?;
        let itype = self
            .control
            .catalogue()
            .get(&i.instance_type)
            .with_context(|| format!("instance type {} left the catalogue", i.instance_type))?
            .clone();
        std::fs::create_dir_all(dir)?;
        // Attached volumes are there from the start (those being detached are let go).
        let all = self.control.all_volumes().await?;
        let mine: Vec<&Volume> = all
            .iter()
            .filter(|v| v.instance_id.as_deref() == Some(i.id.as_str()))
            .filter(|v| matches!(v.attach_state.as_deref(), Some("attaching" | "attached")))
            .collect();
        let root = mine.iter().find(|v| v.root).context("no volume is attached at its root device")?;
        self.adopt_legacy_root(root, i.id.as_str());
        let disk = self.volume_disk(root).path;
        anyhow::ensure!(!self.net_failed.contains(&i.vpc_id), "the network of {} is not ready", i.vpc_id);
        // Booting cold a launch that could have been restored: the snapshot for next time.
        if restorable(&self.snapshots, i, &image, &itype, &mine, &disk) {
            self.snapshots.ensure(&image, itype.vcpus, itype.memory_mib, self.accel);
            let planned = self.snapshots.planned(&image, itype.vcpus, itype.memory_mib);
            self.pool.want(&image, itype.vcpus, itype.memory_mib, &planned);
        }
        if !disk.exists() {
            // Made once, at the first launch; a root volume whose file went is an error,
            // never silently a fresh disk.
            anyhow::ensure!(i.generation == 0, "the root volume {} has no file", root.id);
            std::fs::create_dir_all(&self.volumes_dir)?;
            let tmp = disk.with_extension("tmp");
            qemu_img_create(&tmp, root.size_gb, Some((&image.disk_format, Path::new(&image.disk_path)))).await?;
            std::fs::rename(&tmp, &disk)?;
        }
        let volumes: Vec<VolumeDisk> = mine.iter().filter(|v| !v.root).map(|v| self.volume_disk(v)).collect();
        for v in &volumes {
            self.volumes_checked.insert(v.volume_id.clone());
        }
        // The instance store is new at every start: what a previous run wrote is gone.
        let ephemeral = match itype.instance_storage_gb {
            Some(gb) => {
                let path = dir.join("ephemeral0.qcow2");
                let _ = std::fs::remove_file(&path);
                qemu_img_create(&path, gb as i64, None).await?;
                Some(path)
            }
            None => None,
        };
        // A warm-pool VM's marker, if taking it failed; an early start's, if it ended.
        for stale in ["metadata.log", IDENTITY_PENDING, NETWORK_HELD] {
            let _ = std::fs::remove_file(dir.join(stale));
        }
        let tap = net::tap_name(i.id.as_str());
        let netdev = format!("tap,id=n0,ifname={tap},script=no,downscript=no");
        let identity = cold_identity(dir, i, views)?;
        let spec = VmSpec {
            run_dir: dir.to_owned(),
            vcpus: itype.vcpus,
            memory_mib: itype.memory_mib,
            kernel: image.kernel_path.clone().into(),
            initrd: image.initrd_path.clone().map(Into::into),
            cmdline: snapshot::boot_cmdline(&image),
            root_disk: disk,
            uuid: ec2_uuid(i.id.as_str()),
            netdev: Some((netdev, mac_of(i.id.as_str()))),
            netns: Some(self.net.site.netns(&i.vpc_id)),
            hotplug_ports: MAX_ATTACHED as u32,
            volumes,
            ephemeral,
            snapshot: Default::default(),
            identity: identity.clone(),
            paused: hold,
            qboot: crate::image::boots_on_qboot(&image.cmdline) && crate::hypervisor::have_qboot(),
        };
        // The console of the previous run goes; GetConsoleOutput shows this boot's.
        fresh_console(&spec.console_path(), &self.control.console_file(i.id.as_str()), None)?;
        let accel = self.accel;
        let t = Instant::now();
        let launched = tokio::task::spawn_blocking(move || Vm::launch(&spec, accel)).await;
        // QEMU has read it (at its start, before it daemonized): the host key stays in no file.
        if let Some(f) = identity {
            let _ = std::fs::remove_file(f);
        }
        let vm = launched??;
        if hold {
            let held = async {
                std::fs::write(dir.join(NETWORK_HELD), b"")?;
                let mut q = vm.qmp().await?;
                q.execute("set_link", Some(serde_json::json!({"name": "n0", "up": false}))).await?;
                q.execute("cont", None).await?;
                anyhow::Ok(())
            }
            .await;
            if let Err(e) = held {
                vm.kill().await;
                let _ = std::fs::remove_file(dir.join(NETWORK_HELD));
                return Err(e.context("holding the NIC's link down"));
            }
        }
        tracing::debug!(ms = t.elapsed().as_millis() as u64, "QEMU started");
        tracing::info!(instance_id = %i.id, pid = vm.pid, accel = ?accel, vcpus = itype.vcpus, memory_mib = itype.memory_mib, "VM started");
        Ok(vm)
    }
}

/// A cold boot's identity line (as a restored guest is sent, with a host key made now), in a
/// file of the run dir only root reads, for QEMU to hand the guest as a firmware file: an
/// init that knows it (the minimal image's) takes its address, keys and sshd's start from
/// it, not from DHCP, dropbearkey and the metadata, 0.25 s sooner under TCG. None when this
/// host's view of the VPC does not have the instance yet (the guest then uses DHCP).
fn cold_identity(dir: &Path, i: &Instance, views: &[net::rules::VpcView]) -> anyhow::Result<Option<PathBuf>> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let Some(view) = views.iter().find(|v| v.vpc_id == i.vpc_id) else { return Ok(None) };
    let host_key = snapshot::dropbear_host_key()?;
    let Some(line) = snapshot::identity(view, i.id.as_str(), &host_key, i.public_key.as_deref()) else {
        return Ok(None);
    };
    let path = dir.join("identity.fw_cfg");
    let _ = std::fs::remove_file(&path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(line.as_bytes())?;
    Ok(Some(path))
}

/// A first launch of an image that supports it, with nothing but its root volume (of the
/// image's size) and no instance store, can be restored from a launch snapshot.
fn restorable(
    snapshots: &snapshot::Snapshots,
    i: &Instance,
    image: &crate::control::model::Image,
    itype: &crate::catalog::InstanceType,
    attached: &[&Volume],
    disk: &Path,
) -> bool {
    snapshots.enabled
        && snapshot::image_supports(image)
        && i.generation == 0
        && !disk.exists()
        && attached.len() == 1
        && attached[0].root
        && attached[0].size_gb == image.root_size_gb
        && itype.instance_storage_gb.is_none()
}

impl<L: Link> Agent<L> {
    /// The restore of a pending instance's first launch, if it can be restored and its
    /// launch snapshot is ready.
    async fn restore_job(
        &mut self,
        i: &Instance,
        volumes: &[Volume],
        views: &[net::rules::VpcView],
    ) -> anyhow::Result<Option<RestoreJob>> {
        if i.state != InstanceState::Pending || i.generation != 0 || self.net_failed.contains(&i.vpc_id) {
            return Ok(None);
        }
        let dir = self.run_dir(i.id.as_str());
        if Vm::adopt(&dir).is_some() {
            return Ok(None);
        }
        let Some(image) = self.control.image_for_launch(&i.image_id).await? else { return Ok(None) };
        let Some(itype) = self.control.catalogue().get(&i.instance_type).cloned() else { return Ok(None) };
        let attached: Vec<&Volume> = volumes
            .iter()
            .filter(|v| v.instance_id.as_deref() == Some(i.id.as_str()))
            .filter(|v| matches!(v.attach_state.as_deref(), Some("attaching" | "attached")))
            .collect();
        let Some(root) = attached.iter().find(|v| v.root) else { return Ok(None) };
        let disk = self.volume_disk(root).path;
        if !restorable(&self.snapshots, i, &image, &itype, &attached, &disk) {
            return Ok(None);
        }
        let Some(snapshot) = self.snapshots.ready(&image, itype.vcpus, itype.memory_mib) else { return Ok(None) };
        self.pool.want(&image, itype.vcpus, itype.memory_mib, &snapshot);
        // Its VPC's view has it once its network is there.
        let Some(view) =
            views.iter().find(|v| v.vpc_id == i.vpc_id && v.instances.iter().any(|n| n.id == i.id.as_str()))
        else {
            return Ok(None);
        };
        let host_key = snapshot::dropbear_host_key()?;
        let Some(identity) = snapshot::identity(view, i.id.as_str(), &host_key, i.public_key.as_deref()) else {
            return Ok(None);
        };
        Ok(Some(RestoreJob {
            instance_id: i.id.to_string(),
            console_file: self.control.console_file(i.id.as_str()),
            identity,
            spec: {
                let mut spec = snapshot::spec(
                    &image,
                    &dir,
                    disk.clone(),
                    itype.vcpus,
                    itype.memory_mib,
                    crate::hypervisor::LaunchSnapshot::Restore {
                        ram: snapshot.ram(),
                        tap: net::tap_name(i.id.as_str()),
                    },
                );
                spec.uuid = ec2_uuid(i.id.as_str());
                spec.netns = Some(self.net.site.netns(&i.vpc_id));
                spec
            },
            snapshot,
            disk,
            accel: self.accel,
        }))
    }

    /// The pending launches that take a warm-pool VM of their snapshot (`pool`), each with
    /// its restore job, the VM taken out of the pool, and its VPC.
    async fn take_pool_vms(
        &mut self,
        live: &[Instance],
        volumes: &[Volume],
        views: &[net::rules::VpcView],
    ) -> Vec<(RestoreJob, pool::Warm, String)> {
        let mut takes = Vec::new();
        for i in live {
            if self.restore_failed.contains(i.id.as_str()) {
                continue;
            }
            if let Some(job) = self.prepared_restore(i, volumes, views).await {
                if let Some(warm) = self.pool.take(&job.snapshot) {
                    takes.push((job, warm, i.vpc_id.clone()));
                }
            }
        }
        takes
    }

    /// `restore_job`, with a failure logged: one that cannot be prepared is skipped (the
    /// next pass tries again).
    async fn prepared_restore(
        &mut self,
        i: &Instance,
        volumes: &[Volume],
        views: &[net::rules::VpcView],
    ) -> Option<RestoreJob> {
        self.restore_job(i, volumes, views)
            .await
            .inspect_err(
                |e| tracing::warn!(instance_id = %i.id, error = format!("{e:#}"), "preparing a restore failed"),
            )
            .ok()
            .flatten()
    }

    /// Hands the warm-pool VMs of `takes` (`take_pool_vms`) to their instances, and starts
    /// restoring every other pending instance that can be, all at once (each on its own
    /// task, so that a RunInstances of many does not wait for one restore after another):
    /// QEMU starts on the instance's tap and loads the snapshot, paused. `early`: before
    /// the pass's network sync, only for instances whose tap is there already (QEMU would
    /// make a missing one itself, and the sync could not); the others start after it.
    async fn start_restores(
        &mut self,
        live: &[Instance],
        volumes: &[Volume],
        views: &[net::rules::VpcView],
        early: bool,
        started: &[Restoring],
        takes: Vec<(RestoreJob, pool::Warm, String)>,
    ) -> anyhow::Result<Vec<Restoring>> {
        let mut out = Vec::new();
        // The warm-pool take-overs: all taps at once (`adopt_pool_taps`: three `ip` runs per
        // tap, one after another, held 20 instances' identities back by ~0.9 s), then the
        // renames.
        let moves: Vec<net::PoolTapMove> = takes
            .iter()
            .map(|(job, warm, vpc_id)| net::PoolTapMove {
                pool_tap: warm.tap.clone(),
                vpc_id: vpc_id.clone(),
                tap: net::tap_name(&job.instance_id),
            })
            .collect();
        let moved = self.net.adopt_pool_taps(&moves).await;
        let taken: Vec<String> = takes.iter().map(|(job, _, _)| job.instance_id.clone()).collect();
        for ((job, warm, vpc_id), tap_moved) in takes.into_iter().zip(moved) {
            match Self::take_warm(&self.net.site, warm, tap_moved, &job).await {
                Ok(loaded) => out.push(Restoring::of(&job, &vpc_id, tokio::spawn(async move { Ok(loaded) }))),
                Err(e) => {
                    // The next pass launches it (its tap is made again first).
                    tracing::warn!(instance_id = %job.instance_id, error = format!("{e:#}"), "taking a warm-pool VM failed");
                    self.net.forget_tap(&vpc_id, &net::tap_name(&job.instance_id)).await;
                }
            }
        }
        for i in live {
            if self.restore_failed.contains(i.id.as_str())
                || started.iter().any(|r| r.instance_id == i.id.as_str())
                || taken.iter().any(|t| t == i.id.as_str())
            {
                continue;
            }
            if early && !self.net.has_tap(&i.vpc_id, &net::tap_name(i.id.as_str())) {
                continue;
            }
            if let Some(job) = self.prepared_restore(i, volumes, views).await {
                let task = tokio::spawn(job.clone().load());
                out.push(Restoring::of(&job, &i.vpc_id, task));
            }
        }
        Ok(out)
    }

    /// Hands a warm-pool VM to a restore job's instance (`pool::adopt`): it then waits for its
    /// identity like a restored VM that has loaded its snapshot.
    async fn take_warm(
        site: &Site,
        warm: pool::Warm,
        tap_moved: anyhow::Result<()>,
        job: &RestoreJob,
    ) -> anyhow::Result<Loaded> {
        let t0 = Instant::now();
        let run_dir = &job.spec.run_dir;
        let vm = pool::adopt(warm, tap_moved, site, &job.disk, &job.console_file, run_dir).await?;
        Ok(Loaded {
            instance_id: job.instance_id.clone(),
            vm,
            qmp: None,
            identity_path: job.spec.identity_path(),
            identity: job.identity.clone(),
            netns: job.spec.netns.clone().unwrap_or_default(),
            t0,
            started: Duration::ZERO,
            loaded: t0.elapsed(),
        })
    }

    /// A restore cut short by a crash of the server leaves a QEMU that never ran (still
    /// loading, or paused without its identity), or a warm-pool VM taken but not yet given
    /// its identity: it ends, and the launch starts over.
    async fn end_cut_short_restores(&self, live: &[Instance], volumes: &[Volume]) {
        for i in live.iter().filter(|i| i.state == InstanceState::Pending && i.generation == 0) {
            let dir = self.run_dir(i.id.as_str());
            let Some(vm) = Vm::adopt(&dir) else { continue };
            let Ok(mut q) = vm.qmp().await else { continue };
            let half_done = self.identity_cut_short(i.id.as_str(), &dir)
                || q.query_status()
                    .await
                    .is_ok_and(|s| matches!(s.status.as_str(), "inmigrate" | "prelaunch" | "paused"));
            drop(q);
            if half_done {
                tracing::warn!(instance_id = %i.id, "a restore was cut short: starting the launch over");
                vm.kill().await;
                if let Some(root) = volumes.iter().find(|v| v.root && v.instance_id.as_deref() == Some(i.id.as_str())) {
                    let _ = std::fs::remove_file(self.volume_disk(root).path);
                }
            }
        }
    }

    /// Whether a restored VM's guest was handed its identity by no live waiter of this
    /// process: the marker is there, and nobody here waits for the guest's answer (a crash
    /// cut the restore short, or the guest never answered).
    fn identity_cut_short(&self, instance_id: &str, dir: &Path) -> bool {
        dir.join(IDENTITY_PENDING).exists() && !self.identity_waits.lock().is_ok_and(|w| w.contains(instance_id))
    }

    /// Runs the restored VMs on, once their network is in place (rules and all: a guest
    /// never runs unfiltered). A failed restore is undone; the instance then boots cold in
    /// the pass's instance loop.
    ///
    /// One after another: on a host whose CPUs are the limit (TCG), guests resumed in turn
    /// finish in turn, where all resumed at once all finish late (25 restored t2.nano at
    /// once, 2 cores: first SSH login 8.5 s, last 17.1 s in turn; 11.5 s and 17.6 s all at
    /// once).
    async fn finish_restores(&mut self, restoring: Vec<Restoring>) {
        for r in restoring {
            let waits = self.identity_waits.clone();
            let result = async {
                let loaded = r.task.await??;
                anyhow::ensure!(!self.net_failed.contains(&r.vpc_id), "the VPC's network is not in place");
                loaded.resume(waits).await
            }
            .await;
            if let Err(e) = result {
                tracing::warn!(instance_id = %r.instance_id, error = format!("{e:#}"), "restore failed; booting cold");
                if let Some(vm) = Vm::adopt(&r.dir) {
                    vm.kill().await;
                }
                let _ = std::fs::remove_file(&r.disk);
                self.restore_failed.insert(r.instance_id);
            }
        }
    }
}

/// Where an agent pass's time went, logged when the pass took over a second: the parts of
/// a launch's path (reading the desired state, taps, restores and warm-pool take-overs,
/// early cold boots, the network sync, the restored VMs resumed, the instances, volumes).
struct Phases {
    start: Instant,
    last: Instant,
    ms: Vec<(&'static str, u128)>,
}

impl Phases {
    fn new() -> Phases {
        let now = Instant::now();
        Phases { start: now, last: now, ms: Vec::new() }
    }

    fn mark(&mut self, what: &'static str) {
        self.ms.push((what, self.last.elapsed().as_millis()));
        self.last = Instant::now();
    }

    /// Logs the pass's phases if it took longer than `STRATO_SLOW_PASS_MS` (default 1000;
    /// a low value shows where every launch's pass goes).
    fn log_if_slow(&self, vpcs: usize) {
        static SLOW: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
        let slow = *SLOW.get_or_init(|| {
            Duration::from_millis(
                std::env::var("STRATO_SLOW_PASS_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000),
            )
        });
        if self.start.elapsed() > slow {
            let phases: Vec<String> = self.ms.iter().map(|(w, ms)| format!("{w} {ms}")).collect();
            tracing::info!(ms = self.start.elapsed().as_millis() as u64, vpcs, phases = %phases.join(", "), "agent pass was slow");
        }
    }
}

/// A restore under way (`start_restores`).
struct Restoring {
    instance_id: String,
    vpc_id: String,
    dir: PathBuf,
    disk: PathBuf,
    task: tokio::task::JoinHandle<anyhow::Result<Loaded>>,
}

impl Restoring {
    fn of(job: &RestoreJob, vpc_id: &str, task: tokio::task::JoinHandle<anyhow::Result<Loaded>>) -> Restoring {
        Restoring {
            instance_id: job.instance_id.clone(),
            vpc_id: vpc_id.to_owned(),
            dir: job.spec.run_dir.clone(),
            disk: job.disk.clone(),
            task,
        }
    }
}

/// In a taken warm-pool VM's run directory until its identity is written.
pub(crate) const IDENTITY_PENDING: &str = "identity.pending";

/// In a run dir: its VM started before its network was made, the NIC's link held down.
const NETWORK_HELD: &str = "network.held";

/// Cold boots started before a pass's network sync, at most (each takes ~0.1 s to start,
/// which the sync and the rest then wait for).
const EARLY_COLD: usize = 4;

/// How long a restored guest may take to read its identity.
const IDENTITY_TIMEOUT: Duration = Duration::from_secs(60);

/// One instance's launch from a launch snapshot: its root volume a copy of the template's
/// disk, a QEMU with the template's devices (its NIC on the instance's tap) loading the
/// saved state, the instance's identity written to the guest's identity channel, then
/// running (see `snapshot`).
#[derive(Clone)]
struct RestoreJob {
    instance_id: String,
    /// The console's file in the storage dir.
    console_file: PathBuf,
    snapshot: snapshot::Snapshot,
    spec: VmSpec,
    disk: PathBuf,
    /// The identity channel's line (`snapshot::identity`).
    identity: String,
    accel: Accel,
}

/// A restored VM, paused, that has loaded its snapshot.
struct Loaded {
    instance_id: String,
    vm: Vm,
    /// None for a warm-pool VM, which runs already.
    qmp: Option<crate::hypervisor::qmp::Qmp>,
    identity_path: PathBuf,
    identity: String,
    netns: String,
    t0: Instant,
    started: Duration,
    loaded: Duration,
}

impl RestoreJob {
    /// Copies the disk, starts QEMU and loads the snapshot.
    async fn load(self) -> anyhow::Result<Loaded> {
        let t0 = Instant::now();
        if let Some(parent) = self.disk.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let tmp = self.disk.with_extension("tmp");
        std::fs::copy(self.snapshot.disk(), &tmp).context("copying the snapshot's disk")?;
        std::fs::rename(&tmp, &self.disk)?;
        std::fs::create_dir_all(&self.spec.run_dir)?;
        // The console starts with the template's boot; the restored VM appends.
        for stale in ["metadata.log", IDENTITY_PENDING] {
            let _ = std::fs::remove_file(self.spec.run_dir.join(stale));
        }
        fresh_console(&self.spec.console_path(), &self.console_file, Some(&self.snapshot.console()))?;
        let (spec, accel) = (self.spec.clone(), self.accel);
        let vm = tokio::task::spawn_blocking(move || Vm::launch(&spec, accel)).await??;
        let started = t0.elapsed();
        let q = snapshot::load(&vm, &self.snapshot).await?;
        Ok(Loaded {
            instance_id: self.instance_id,
            vm,
            qmp: Some(q),
            identity_path: self.spec.identity_path(),
            identity: self.identity,
            netns: self.spec.netns.unwrap_or_default(),
            t0,
            started,
            loaded: t0.elapsed(),
        })
    }
}

impl Loaded {
    /// Hands the guest its identity and runs it. Until the guest answers, its run directory
    /// holds `IDENTITY_PENDING` and `waits` its instance id: a crash before the answer (QEMU
    /// drops a line the guest has not read when our end closes) leaves the marker without a
    /// waiter, and the VM is redone (`identity_cut_short`).
    async fn resume(self, waits: Arc<std::sync::Mutex<std::collections::HashSet<String>>>) -> anyhow::Result<Vm> {
        let Loaded { instance_id, vm, qmp, identity_path, identity, netns, t0, started, loaded } = self;
        let pooled = qmp.is_none();
        let waited = t0.elapsed();
        if let Ok(mut w) = waits.lock() {
            w.insert(instance_id.clone());
        }
        let marker = vm.run_dir.join(IDENTITY_PENDING);
        std::fs::write(&marker, b"")?;
        // The guest reads it as soon as it runs; QEMU passes it on as the guest's serial
        // port takes it (the socket's buffer holds it until then). The connection stays
        // open until the guest answers: QEMU drops what it has not passed on when the other
        // end closes.
        let mut channel =
            tokio::net::UnixStream::connect(&identity_path).await.context("connecting to the identity channel")?;
        tokio::io::AsyncWriteExt::write_all(&mut channel, identity.as_bytes()).await?;
        // (A warm-pool VM runs already: it reads the line at once.)
        if let Some(mut q) = qmp {
            q.execute("cont", None).await?;
        }
        let id = instance_id.clone();
        tokio::spawn(async move {
            let mut answer = [0u8; 16];
            let read = tokio::io::AsyncReadExt::read(&mut channel, &mut answer);
            if matches!(tokio::time::timeout(IDENTITY_TIMEOUT, read).await, Ok(Ok(n)) if n > 0) {
                let _ = std::fs::remove_file(&marker);
            } else {
                // The marker stays: the next pass redoes the VM.
                tracing::warn!(instance_id = %id, "the restored guest never took its identity");
            }
            if let Ok(mut w) = waits.lock() {
                w.remove(&id);
            }
        });
        tracing::info!(
            instance_id = %instance_id,
            netns,
            pid = vm.pid,
            qemu_started_ms = started.as_millis() as u64,
            loaded_ms = loaded.as_millis() as u64,
            network_ready_ms = waited.as_millis() as u64,
            total_ms = t0.elapsed().as_millis() as u64,
            warm_pool = pooled,
            "VM restored from its launch snapshot"
        );
        Ok(vm)
    }
}

/// Runs `qemu-img` with an argument vector.
async fn qemu_img(args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
    let out = tokio::process::Command::new("qemu-img").args(args).output().await.context("running qemu-img")?;
    anyhow::ensure!(
        out.status.success(),
        "qemu-img {}: {}",
        args.first().map(|a| a.to_string_lossy()).unwrap_or_default(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// A new qcow2 file of `size_gb` GiB, optionally an overlay on (format, backing file).
async fn qemu_img_create(path: &Path, size_gb: i64, backing: Option<(&str, &Path)>) -> anyhow::Result<()> {
    let size = format!("{size_gb}G");
    let mut args: Vec<&std::ffi::OsStr> = ["create", "-q", "-f", "qcow2"].iter().map(std::ffi::OsStr::new).collect();
    if let Some((format, file)) = backing {
        args.extend([
            std::ffi::OsStr::new("-F"),
            std::ffi::OsStr::new(format),
            std::ffi::OsStr::new("-b"),
            file.as_os_str(),
        ]);
    }
    args.extend([path.as_os_str(), std::ffi::OsStr::new(&size)]);
    qemu_img(&args).await
}

/// Grows a qcow2 file to `size` (`3G`, or bytes).
async fn qemu_img_resize(path: &Path, size: &str) -> anyhow::Result<()> {
    let args = ["resize", "-q", "-f", "qcow2"].map(std::ffi::OsStr::new);
    qemu_img(&[&args[..], &[path.as_os_str(), std::ffi::OsStr::new(size)]].concat()).await
}

/// `qemu-img convert` to a new standalone qcow2 file.
async fn qemu_img_convert(from: &Path, to: &Path) -> anyhow::Result<()> {
    let args = ["convert", "-q", "-O", "qcow2"].map(std::ffi::OsStr::new);
    qemu_img(&[&args[..], &[from.as_os_str(), to.as_os_str()]].concat()).await
}

/// A point-in-time copy of a volume in a running VM: `blockdev-backup` (sync=full) into a
/// new qcow2 file, waiting for the job to end.
async fn backup(vm: &Vm, disk: &VolumeDisk, snapshot: &str, size_gb: i64, target: &Path) -> anyhow::Result<()> {
    backup_from(vm, &disk.node(), snapshot, size_gb, target).await
}

/// `backup` of the block device or node `device` (a root drive, `virtio0`, reads through
/// its image: the copy is standalone).
async fn backup_from(vm: &Vm, device: &str, snapshot: &str, size_gb: i64, target: &Path) -> anyhow::Result<()> {
    qemu_img_create(target, size_gb, None).await?;
    let node = format!("sn{}", snapshot.trim_start_matches("snap-"));
    let job = format!("job-{snapshot}");
    let mut q = vm.qmp().await?;
    // Handed over open: the VM's QEMU runs as a user that may open no file of the host.
    let fdset = q.add_fd(&open_rw(target)?).await?;
    q.execute(
        "blockdev-add",
        Some(serde_json::json!({
            "driver": "qcow2", "node-name": node,
            "file": {"driver": "file", "filename": format!("/dev/fdset/{fdset}")}
        })),
    )
    .await?;
    let result = async {
        q.execute(
            "blockdev-backup",
            Some(serde_json::json!({"job-id": job, "device": device, "target": node, "sync": "full", "auto-dismiss": false})),
        )
        .await?;
        wait_job(&mut q, &job).await
    }
    .await;
    let _ = q.execute("blockdev-del", Some(serde_json::json!({"node-name": node}))).await;
    result
}

/// Waits for a block job to conclude, then dismisses it.
async fn wait_job(q: &mut crate::hypervisor::qmp::Qmp, job: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let jobs = q.execute("query-jobs", None).await?;
        let mine = jobs.as_array().into_iter().flatten().find(|j| j["id"] == job).cloned();
        match mine {
            Some(j) if j["status"] == "concluded" => {
                let _ = q.execute("job-dismiss", Some(serde_json::json!({"id": job}))).await;
                if let Some(e) = j.get("error") {
                    anyhow::bail!("backup job failed: {e}");
                }
                return Ok(());
            }
            Some(_) => {}
            None => anyhow::bail!("the backup job disappeared"),
        }
        anyhow::ensure!(Instant::now() < deadline, "the backup job took too long");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// CreateImage of a running instance: a full, standalone copy of its root drive (`virtio0`,
/// its image included), the VM paused meanwhile when asked. The target is made here and
/// handed over open (`backup_from`): the VM's QEMU may run as a user that opens no file.
async fn root_backup(vm: &Vm, snapshot: &str, size_gb: i64, pause: bool, target: &Path) -> anyhow::Result<()> {
    if pause {
        vm.qmp().await?.execute("stop", None).await?;
    }
    let result = backup_from(vm, "virtio0", snapshot, size_gb, target).await;
    if pause {
        vm.qmp().await?.execute("cont", None).await?;
    }
    result
}

/// A file opened for reading and writing, to hand to a VM's QEMU.
fn open_rw(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new().read(true).write(true).open(path).with_context(|| format!("opening {}", path.display()))
}

/// Whether the VM has a device with this id.
async fn device_present(q: &mut crate::hypervisor::qmp::Qmp, id: &str) -> anyhow::Result<bool> {
    let list = q.execute("qom-list", Some(serde_json::json!({"path": "/machine/peripheral"}))).await?;
    Ok(list.as_array().into_iter().flatten().any(|p| p["name"] == id))
}

/// Hot-plugs a volume into the first free slot of a VM's hot-plug bridge (or, in a VM started
/// before VMs had one, into its first free PCIe root port).
async fn hotplug(vm: &Vm, disk: &VolumeDisk) -> anyhow::Result<()> {
    let mut q = vm.qmp().await?;
    if device_present(&mut q, &disk.device_id()).await? {
        return Ok(());
    }
    let fdset = q.add_fd(&open_rw(&disk.path)?).await?;
    if let Err(e) = q.execute("blockdev-add", Some(disk.blockdev_at(&format!("/dev/fdset/{fdset}")))).await {
        // Left from an earlier try: the node may exist already.
        tracing::debug!(error = %e, "blockdev-add");
    }
    let mut last = None;
    let slots = (0..MAX_ATTACHED as u32).map(|n| disk.device(n));
    let legacy = (0..MAX_ATTACHED as u32).map(|n| disk.legacy_device(n));
    for device in slots.chain(legacy) {
        match q.execute("device_add", Some(device)).await {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    let _ = q.execute("blockdev-del", Some(serde_json::json!({"node-name": disk.node()}))).await;
    anyhow::bail!("no free hot-plug slot took the volume: {}", last.map(|e| e.to_string()).unwrap_or_default())
}

/// A stable locally administered MAC for an instance.
pub fn mac_of(id: &str) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(id.as_bytes());
    format!("02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", h[0], h[1], h[2], h[3], h[4])
}

/// Starts an instance's console anew: its file in the storage dir (`shared`, where every API
/// server reads it) emptied, or a copy of `initial`, and the VM's `console.log` in its run
/// directory a link to it, which QEMU appends to.
fn fresh_console(link: &Path, shared: &Path, initial: Option<&Path>) -> anyhow::Result<()> {
    if let Some(parent) = shared.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    match initial {
        Some(from) => {
            std::fs::copy(from, shared).with_context(|| format!("copying the console to {}", shared.display()))?;
        }
        None => std::fs::write(shared, b"").with_context(|| format!("writing {}", shared.display()))?,
    }
    if let Some(parent) = link.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(shared, link).with_context(|| format!("linking {}", link.display()))?;
    Ok(())
}
