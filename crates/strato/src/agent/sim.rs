//! A simulated agent: the test double of the control-plane tests. It moves instances through
//! the same reports the real agent sends (`Booted`, `VmGone`, ...) at once and without any
//! VM (and does the same for volumes), so that many control-plane tests (quotas, filters, pagination, state rules) run in
//! milliseconds. `strato serve` never runs it; it exists for tests only.

use std::sync::Arc;

use crate::control::instance_state::{Event, InstanceState};
use crate::control::Control;

pub struct SimAgent {
    control: Arc<Control>,
}

impl SimAgent {
    pub fn new(control: Arc<Control>) -> SimAgent {
        SimAgent { control }
    }

    pub async fn reconcile_once(&self) -> anyhow::Result<()> {
        for i in self.control.live_instances().await? {
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
        for v in self.control.all_volumes().await? {
            match (v.state.as_str(), v.attach_state.as_deref()) {
                ("creating", _) => self.control.volume_created(&v.id).await?,
                ("deleting", _) => self.control.volume_deleted(&v.id).await?,
                (_, Some("attaching")) => self.control.volume_attached(&v.id).await?,
                (_, Some("detaching")) => self.control.volume_detached(&v.id).await?,
                _ => {}
            }
        }
        for m in self.control.modifying_volumes().await? {
            self.control.volume_modified(&m.volume_id, true).await?;
        }
        for s in self.control.all_snapshots().await? {
            if s.state == "pending" {
                self.control.snapshot_done(&s.id, true).await?;
            }
        }
        Ok(())
    }

    pub async fn run(self) {
        loop {
            if let Err(e) = self.reconcile_once().await {
                tracing::warn!(error = format!("{e:#}"), "simulated agent pass failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
                _ = self.control.agent_wake.notified() => {}
            }
        }
    }
}
