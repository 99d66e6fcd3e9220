//! A simulated agent: the test double of the control-plane tests. It moves instances through
//! the same reports the real agent sends (`Booted`, `VmGone`, ...) at once and without any
//! VM (and does the same for volumes), so that many control-plane tests (quotas, filters, pagination, state rules) run in
//! milliseconds. `strato serve` never runs it; it exists for tests only.

use std::sync::Arc;

use crate::control::hosts::HostSpec;
use crate::control::instance_state::{Event, InstanceState};
use crate::control::Control;
use crate::ids::HostId;

pub struct SimAgent {
    control: Arc<Control>,
    host: HostId,
    /// How often it looks at the database unwoken (50 ms: tests wait less).
    tick: std::time::Duration,
}

impl SimAgent {
    /// Registers a simulated host (any capacity, any zone: nothing runs) and returns its
    /// agent; it heartbeats while `run` runs.
    pub async fn register(control: Arc<Control>, spec: &HostSpec) -> anyhow::Result<SimAgent> {
        let host = control.register_host(None, spec).await?;
        Ok(SimAgent { control, host, tick: std::time::Duration::from_millis(50) })
    }

    /// A simulated host serving every zone with this machine's memory (times the control
    /// plane's overcommit) and no vCPU limit (the account quotas are what these tests check).
    pub async fn new(control: Arc<Control>) -> anyhow::Result<SimAgent> {
        let spec = HostSpec::this_machine(None, 1000.0, control.memory_overcommit);
        Self::register(control, &spec).await
    }

    /// Polls like the real agent (`agent::TICK`), for benchmarks of many hosts.
    pub fn with_real_tick(mut self) -> SimAgent {
        self.tick = crate::agent::TICK;
        self
    }

    pub fn host(&self) -> &HostId {
        &self.host
    }

    pub async fn reconcile_once(&self) -> anyhow::Result<()> {
        let duties = self.control.duties(&self.host).await?;
        for i in duties.instances.iter().cloned() {
            match i.state {
                InstanceState::Pending => {
                    self.control.apply(&i.id, i.generation, Event::Booted, None).await?;
                }
                InstanceState::Running => {
                    if i.reboot_requested {
                        self.control.set_instance_flag(&i.id, "reboot_requested", false).await?;
                    }
                    if !i.status_ok {
                        self.control.set_instance_flag(&i.id, "status_ok", true).await?;
                    }
                }
                InstanceState::Stopping | InstanceState::ShuttingDown => {
                    let reason = if i.state_reason_code.is_some() {
                        None
                    } else {
                        Some(("Client.UserInitiatedShutdown", "Client.UserInitiatedShutdown: User initiated shutdown"))
                    };
                    self.control.apply(&i.id, i.generation, Event::VmGone, reason).await?;
                }
                InstanceState::Stopped | InstanceState::Terminated => {}
            }
        }
        // Volumes: every wanted change is done at once (no files, no VMs).
        let volumes = self.control.all_volumes().await?;
        for v in volumes.iter().filter(|v| duties.volume(&v.availability_zone, v.instance_id.as_deref())) {
            match (v.state.as_str(), v.attach_state.as_deref()) {
                ("creating", _) => self.control.volume_created(&v.id).await?,
                ("deleting", _) => self.control.volume_deleted(&v.id).await?,
                (_, Some("attaching")) => self.control.volume_attached(&v.id).await?,
                (_, Some("detaching")) => self.control.volume_detached(&v.id).await?,
                _ => {}
            }
        }
        let of_volume = |id: &str| match volumes.iter().find(|v| v.id.as_str() == id) {
            Some(v) => duties.volume(&v.availability_zone, v.instance_id.as_deref()),
            None => duties.region_worker,
        };
        for m in self.control.modifying_volumes().await? {
            if of_volume(&m.volume_id) {
                self.control.volume_modified(&m.volume_id, true).await?;
            }
        }
        for s in self.control.all_snapshots().await? {
            let source = if s.source_snapshot.is_some() { "" } else { s.volume_id.as_str() };
            if s.state == "pending" && of_volume(source) {
                self.control.snapshot_done(&s.id, true).await?;
            }
        }
        Ok(())
    }

    /// Passes and heartbeats until aborted, reading from the store's priority pool as the
    /// real agent does.
    pub async fn run(self) {
        crate::store::priority(self.run_loop()).await
    }

    async fn run_loop(self) {
        let mut beat = std::time::Instant::now();
        loop {
            if beat.elapsed() >= self.control.heartbeat_interval() {
                if let Err(e) = self.control.heartbeat(&self.host).await {
                    tracing::warn!(error = format!("{e:#}"), "simulated host heartbeat failed");
                }
                beat = std::time::Instant::now();
            }
            if let Err(e) = self.reconcile_once().await {
                tracing::warn!(error = format!("{e:#}"), "simulated agent pass failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(self.tick) => {}
                _ = self.control.agent_wake.notified() => {}
            }
        }
    }
}
