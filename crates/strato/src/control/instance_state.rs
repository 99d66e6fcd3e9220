//! The EC2 instance lifecycle, as one explicit state machine.
//!
//! ```text
//!            launch / start                 guest up
//!   (new) ───────────────► pending ───────────────────► running ──┐ reboot
//!                            │  ▲                       │   ▲  └──┘
//!                      stop  │  │ start          stop / │   │
//!                            ▼  │           guest off   ▼   │
//!                          stopping ◄───────────────────┘   │
//!                            │                               │
//!                   VM gone  ▼                               │
//!                          stopped ──────────────────────────┘ (via pending)
//!
//!   any state but terminated ── terminate ──► shutting-down ── VM gone ──► terminated
//! ```
//!
//! The codes are EC2's (low byte of `InstanceState.Code`). `transition` is the only place
//! that says which moves are legal; an illegal request is `IncorrectInstanceState`.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum InstanceState {
    Pending,
    Running,
    Stopping,
    Stopped,
    ShuttingDown,
    Terminated,
}

/// Something that happens to an instance: a user's request or what the host saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Event {
    /// StartInstances.
    Start,
    /// The VM is up (the hypervisor reports it running).
    Booted,
    /// StopInstances (graceful or forced).
    Stop,
    /// RebootInstances: the state stays `running`.
    Reboot,
    /// TerminateInstances.
    Terminate,
    /// The guest powered itself off; `terminate` is its InstanceInitiatedShutdownBehavior.
    GuestShutdown { terminate: bool },
    /// The VM process is gone (after a stop or terminate, or a crash).
    VmGone,
    /// The VM could not be started: a first launch ends terminated (as on EC2), a start of
    /// a stopped instance ends stopped again.
    LaunchFailed { first_launch: bool },
    /// Its host died and it is started again on another (automatic recovery).
    Recover,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("The instance is in the '{from}' state, which does not allow {event:?}")]
pub struct IllegalTransition {
    pub from: InstanceState,
    pub event: Event,
}

impl InstanceState {
    /// EC2's state code: 0 pending, 16 running, 32 shutting-down, 48 terminated, 64 stopping,
    /// 80 stopped.
    pub fn code(self) -> u16 {
        match self {
            InstanceState::Pending => 0,
            InstanceState::Running => 16,
            InstanceState::ShuttingDown => 32,
            InstanceState::Terminated => 48,
            InstanceState::Stopping => 64,
            InstanceState::Stopped => 80,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            InstanceState::Pending => "pending",
            InstanceState::Running => "running",
            InstanceState::ShuttingDown => "shutting-down",
            InstanceState::Terminated => "terminated",
            InstanceState::Stopping => "stopping",
            InstanceState::Stopped => "stopped",
        }
    }

    pub fn parse(s: &str) -> Option<InstanceState> {
        [
            InstanceState::Pending,
            InstanceState::Running,
            InstanceState::ShuttingDown,
            InstanceState::Terminated,
            InstanceState::Stopping,
            InstanceState::Stopped,
        ]
        .into_iter()
        .find(|st| st.name() == s)
    }

    /// Whether a VM should exist for an instance in this state.
    pub fn wants_vm(self) -> bool {
        matches!(self, InstanceState::Pending | InstanceState::Running)
    }

    /// The one transition function: the state after `event`, or why it is not allowed.
    pub fn transition(self, event: Event) -> Result<InstanceState, IllegalTransition> {
        use Event::*;
        use InstanceState::*;
        let next = match (self, event) {
            (Stopped, Start) => Pending,
            // Starting what already runs or is starting is a no-op, as on EC2.
            (Pending | Running, Start) => self,
            (Pending, Booted) => Running,
            (Running, Booted) => Running,
            (Pending | Running, Stop) => Stopping,
            (Stopping | Stopped, Stop) => self,
            (Running, Reboot) => Running,
            (Terminated, Terminate) => Terminated,
            (ShuttingDown, Terminate) => ShuttingDown,
            (_, Terminate) => ShuttingDown,
            (Running | Pending, GuestShutdown { terminate: true }) => ShuttingDown,
            (Running | Pending, GuestShutdown { terminate: false }) => Stopping,
            (Stopping, VmGone) => Stopped,
            (ShuttingDown, VmGone) => Terminated,
            // A VM that dies on its own ends stopped (its state reason says why).
            (Pending | Running, VmGone) => Stopped,
            (Stopped | Terminated, VmGone) => self,
            (Pending, LaunchFailed { first_launch: true }) => Terminated,
            (Pending, LaunchFailed { first_launch: false }) => Stopped,
            (Pending | Running, Recover) => Pending,
            _ => return Err(IllegalTransition { from: self, event }),
        };
        Ok(next)
    }
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::Event::*;
    use super::InstanceState::*;
    use super::*;

    fn ok(from: InstanceState, e: Event, to: InstanceState) {
        assert_eq!(from.transition(e), Ok(to), "{from} + {e:?}");
    }

    fn illegal(from: InstanceState, e: Event) {
        assert!(from.transition(e).is_err(), "{from} + {e:?} must be refused");
    }

    #[test]
    fn pending() {
        ok(Pending, Booted, Running);
        ok(Pending, Stop, Stopping);
        ok(Pending, Terminate, ShuttingDown);
        ok(Pending, Start, Pending);
        ok(Pending, VmGone, Stopped);
        ok(Pending, LaunchFailed { first_launch: true }, Terminated);
        ok(Pending, LaunchFailed { first_launch: false }, Stopped);
        illegal(Pending, Reboot);
    }

    #[test]
    fn running() {
        ok(Running, Stop, Stopping);
        ok(Running, Reboot, Running);
        ok(Running, Terminate, ShuttingDown);
        ok(Running, GuestShutdown { terminate: false }, Stopping);
        ok(Running, GuestShutdown { terminate: true }, ShuttingDown);
        ok(Running, VmGone, Stopped);
        ok(Running, Start, Running);
        illegal(Running, LaunchFailed { first_launch: true });
    }

    #[test]
    fn stopping() {
        ok(Stopping, VmGone, Stopped);
        ok(Stopping, Stop, Stopping);
        ok(Stopping, Terminate, ShuttingDown);
        illegal(Stopping, Start);
        illegal(Stopping, Reboot);
        illegal(Stopping, Booted);
    }

    #[test]
    fn stopped() {
        ok(Stopped, Start, Pending);
        ok(Stopped, Terminate, ShuttingDown);
        ok(Stopped, Stop, Stopped);
        illegal(Stopped, Reboot);
        illegal(Stopped, Booted);
    }

    #[test]
    fn shutting_down() {
        ok(ShuttingDown, VmGone, Terminated);
        ok(ShuttingDown, Terminate, ShuttingDown);
        illegal(ShuttingDown, Start);
        illegal(ShuttingDown, Stop);
        illegal(ShuttingDown, Reboot);
    }

    #[test]
    fn terminated() {
        ok(Terminated, Terminate, Terminated);
        for e in [Start, Stop, Reboot, Booted, GuestShutdown { terminate: false }] {
            illegal(Terminated, e);
        }
    }

    #[test]
    fn codes_and_names_are_ec2s() {
        for (s, code, name) in [
            (Pending, 0, "pending"),
            (Running, 16, "running"),
            (ShuttingDown, 32, "shutting-down"),
            (Terminated, 48, "terminated"),
            (Stopping, 64, "stopping"),
            (Stopped, 80, "stopped"),
        ] {
            assert_eq!(s.code(), code);
            assert_eq!(s.name(), name);
            assert_eq!(InstanceState::parse(name), Some(s));
        }
    }
}
