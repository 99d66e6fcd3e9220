//! Strato: a compute cloud behind the Amazon EC2 API.
//!
//! The parts, as in `../shared/DESIGN.md`:
//! - `api`: the EC2 Query protocol (SigV4, form decoding, typed actions, XML, error codes);
//! - `control`: accounts, resources, validation; the only writer of the database;
//! - `store`: persistence (embedded SQLite);
//! - `catalog`: the region, its zones and the instance-type catalogue with prices;
//! - `image`: the image builder (kernel, initramfs, minimal and debian-12 root disks) and a
//!   bare QEMU runner for image checks;
//! - `metadata`: the instance metadata service's answers (IMDSv1/v2);
//! - `server`: wiring a data dir, the control plane and the API into `strato serve`;
//! - `bench`: the API benchmark behind `strato bench api`.
//!
//! Instances, networks and volumes arrive with the agent, hypervisor, net and disk parts;
//! this crate does not pretend to have them yet.

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
pub mod server;
pub mod store;
