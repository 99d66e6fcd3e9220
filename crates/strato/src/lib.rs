//! Strato: a compute cloud behind the Amazon EC2 API.
//!
//! The parts, as in `../shared/DESIGN.md`:
//! - `api`: the EC2 Query protocol (SigV4, form decoding, typed actions, XML, error codes);
//! - `control`: accounts, resources, validation; the only writer of the database;
//! - `store`: persistence (embedded SQLite, or PostgreSQL for several servers);
//! - `catalog`: the region, its zones and the instance-type catalogue with prices;
//! - `image`: the image builder (kernel, initramfs, minimal and debian-12 root disks) and a
//!   bare QEMU runner for image checks;
//! - `metadata`: the instance metadata service's answers (IMDSv1/v2);
//! - `hypervisor`: one QEMU VM (argv, QMP, adoption after a restart);
//! - `agent`: the host agent that turns instances' desired states into VMs;
//! - `net`: VPC namespaces, taps, DHCP/DNS, security groups in nftables, public addresses
//!   and the metadata listener;
//! - `secrets`: secrets sealed at rest, the umask and private data dirs;
//! - `server`: wiring a data dir, the control plane and the API into `strato serve`;
//! - `bench`: `strato bench api|boot|launch|...`.

pub mod agent;
pub mod api;
pub mod bench;
pub mod catalog;
pub mod control;
pub mod hypervisor;
pub mod ids;
pub mod image;
pub mod metadata;
pub mod net;
pub mod secrets;
pub mod server;
pub mod store;
