//! Hosts and placement. A host is a machine that runs instances: every `strato serve` runs an
//! agent in-process, which registers this machine as a host (its id kept in
//! `DATA_DIR/host-id`), reports its capacity (vCPUs, memory, the overcommit it allows) and
//! heartbeats every `HEARTBEAT`. A host is live while its last heartbeat is younger than the
//! control plane's `host_timeout`.
//!
//! A host serves one availability zone (`serve --az`), or, by default, every zone of the
//! region: one machine is then a whole cloud. A zone that no live host serves is not
//! `available` in DescribeAvailabilityZones, and its running instances' system status checks
//! are `impaired`.
//!
//! Placement (`place`): RunInstances puts each instance on a live host serving its subnet's
//! zone with room for it (memory and vCPUs, each times the host's overcommit, counted over
//! the instances that have or are about to have a VM there), preferring the host with the
//! fewest of the account's instances (spreading an account across hosts), then the least
//! loaded. No room anywhere in the zone: `InsufficientInstanceCapacity`. StartInstances keeps
//! an instance on its host when that host is live and has room, and moves it otherwise.
//!
//! Work that belongs to no instance (creating, deleting, growing or snapshotting a volume
//! that is not attached) is done by the zone's "volume worker": the live host with the
//! lowest id among those serving the volume's zone (volumes live on storage every host of
//! the zone reaches).
//!
//! Host failure (`monitor`, run by every `strato serve`; one at a time does the work, the
//! holder of the `host-monitor` lease in the database): the instances of a dead host that
//! were running are started again on another live host of their zone with room (EC2's
//! automatic recovery, `MaintenanceOptions.AutoRecovery=default`), keeping their id, private
//! address and volumes; with recovery disabled, an instance store, or no room, they are
//! stopped with a `Server.InternalError` state reason saying why. A monitor never judges
//! its own host (it is running). A dead host's agent that comes back ends the VMs of
//! instances that are no longer its own.

use chrono::{DateTime, Utc};
use sqlx::{AnyConnection, Row};

use super::instance_state::{Event, InstanceState};
use super::instances::Instance;
use super::Control;
use crate::catalog::{Catalogue, InstanceType};
use crate::ids::{AccountId, HostId, InstanceId};
use crate::store::{parse_ts, ts};

/// How often an agent heartbeats.
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(2);
/// A host whose last heartbeat is older than this is down (the default of `host_timeout`).
pub const HOST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Guest vCPUs a host promises per core, by default (`serve --vcpu-overcommit`).
pub const VCPU_OVERCOMMIT: f64 = 16.0;

/// What a host reports of itself when it registers.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct HostSpec {
    pub name: String,
    /// The zone it serves; `None` for every zone.
    pub zone: Option<String>,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub vcpu_overcommit: f64,
    pub memory_overcommit: f64,
    /// The local end of its VXLAN tunnels to other hosts (`--underlay`); `None`: its VPC
    /// networks reach no other host.
    #[serde(default)]
    pub underlay: Option<std::net::Ipv4Addr>,
}

impl HostSpec {
    /// This machine: its hostname, cores and RAM.
    pub fn this_machine(zone: Option<String>, vcpu_overcommit: f64, memory_overcommit: f64) -> HostSpec {
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "localhost".into());
        let vcpus = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
        HostSpec {
            name,
            zone,
            vcpus,
            memory_mib: host_memory_mib(),
            vcpu_overcommit,
            memory_overcommit,
            underlay: None,
        }
    }
}

/// This machine's RAM in MiB (0 when /proc/meminfo cannot be read).
pub fn host_memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map(|kib| kib / 1024)
        .unwrap_or(0)
}

#[derive(Debug, Clone)]
pub struct Host {
    pub id: HostId,
    pub name: String,
    pub zone: Option<String>,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub vcpu_overcommit: f64,
    pub memory_overcommit: f64,
    pub registered_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    /// Its end of the VXLAN tunnels, if it has one.
    pub underlay: Option<String>,
}

impl Host {
    pub fn serves(&self, zone: &str) -> bool {
        self.zone.as_deref().is_none_or(|z| z == zone)
    }

    pub fn live(&self, now: DateTime<Utc>, timeout: std::time::Duration) -> bool {
        (now - self.heartbeat_at).to_std().map(|age| age < timeout).unwrap_or(true)
    }

    fn memory_capacity(&self) -> u64 {
        (self.memory_mib as f64 * self.memory_overcommit) as u64
    }

    fn vcpu_capacity(&self) -> u64 {
        (self.vcpus as f64 * self.vcpu_overcommit) as u64
    }
}

fn from_row(r: &sqlx::any::AnyRow) -> sqlx::Result<Host> {
    Ok(Host {
        id: HostId::from_db(r.try_get("id")?),
        name: r.try_get("name")?,
        zone: r.try_get("availability_zone")?,
        vcpus: r.try_get::<i64, _>("vcpus")? as u32,
        memory_mib: r.try_get::<i64, _>("memory_mib")? as u64,
        vcpu_overcommit: r.try_get("vcpu_overcommit")?,
        memory_overcommit: r.try_get("memory_overcommit")?,
        registered_at: parse_ts(&r.try_get::<String, _>("registered_at")?),
        heartbeat_at: parse_ts(&r.try_get::<String, _>("heartbeat_at")?),
        underlay: r.try_get("underlay")?,
    })
}

pub async fn all(c: &mut AnyConnection) -> sqlx::Result<Vec<Host>> {
    let rows = sqlx::query("SELECT * FROM hosts ORDER BY id").fetch_all(c).await?;
    rows.iter().map(from_row).collect()
}

/// What the instances placed on each host use: (memory MiB, vCPUs, per account counts).
#[derive(Default)]
struct Load {
    memory_mib: u64,
    vcpus: u64,
    of_account: u64,
}

/// What is to be placed: `count` instances of `itype` in `zone` for `account`.
pub struct Demand<'a> {
    pub zone: &'a str,
    pub account: &'a AccountId,
    pub itype: &'a InstanceType,
    pub count: usize,
}

/// Chooses a host for each instance of the demand; fewer when the zone's live hosts have no
/// room for more. `live` are the instances that are not terminated (those with a VM, or
/// about to have one, count).
pub fn place(
    hosts: &[Host],
    live: &[Instance],
    catalogue: &Catalogue,
    now: DateTime<Utc>,
    timeout: std::time::Duration,
    demand: &Demand<'_>,
) -> Vec<HostId> {
    let Demand { zone, account, itype, count } = *demand;
    let mut candidates: Vec<(&Host, Load)> = hosts
        .iter()
        .filter(|h| h.serves(zone) && h.live(now, timeout))
        .map(|h| {
            let mut load = Load::default();
            for i in live.iter().filter(|i| i.host_id.as_deref() == Some(h.id.as_str())) {
                if i.state.wants_vm() || i.state == InstanceState::Stopping {
                    if let Some(t) = catalogue.get(&i.instance_type) {
                        load.memory_mib += t.memory_mib;
                        load.vcpus += t.vcpus as u64;
                    }
                }
                if &i.owner == account {
                    load.of_account += 1;
                }
            }
            (h, load)
        })
        .collect();
    let mut out = Vec::new();
    for _ in 0..count {
        let best = candidates
            .iter_mut()
            .filter(|(h, l)| {
                l.memory_mib + itype.memory_mib <= h.memory_capacity()
                    && l.vcpus + itype.vcpus as u64 <= h.vcpu_capacity()
            })
            .min_by(|(ha, la), (hb, lb)| {
                let fill = |h: &Host, l: &Load| l.memory_mib as f64 / h.memory_capacity().max(1) as f64;
                la.of_account.cmp(&lb.of_account).then(fill(ha, la).total_cmp(&fill(hb, lb))).then(ha.id.cmp(&hb.id))
            });
        let Some((h, l)) = best else { break };
        l.memory_mib += itype.memory_mib;
        l.vcpus += itype.vcpus as u64;
        l.of_account += 1;
        out.push(h.id.clone());
    }
    out
}

/// The host that does a zone's work that belongs to no instance: the live host with the
/// lowest id among those serving it.
pub fn volume_worker(hosts: &[Host], zone: &str, now: DateTime<Utc>, timeout: std::time::Duration) -> Option<HostId> {
    hosts.iter().filter(|h| h.serves(zone) && h.live(now, timeout)).map(|h| h.id.clone()).min()
}

impl Control {
    /// Registers (or re-registers, after a restart) a host and takes the instances from
    /// before hosts existed that it can serve. `id` is the host's own id if it has one.
    pub async fn register_host(&self, id: Option<HostId>, spec: &HostSpec) -> anyhow::Result<HostId> {
        if let Some(z) = &spec.zone {
            anyhow::ensure!(
                self.region.zones.contains(z),
                "{z} is not a zone of region {} (its zones: {})",
                self.region.name,
                self.region.zones.join(", ")
            );
        }
        let id = id.unwrap_or_else(HostId::generate);
        let now = ts(&Utc::now());
        let mut tx = self.store().begin_write().await?;
        sqlx::query(
            "INSERT INTO hosts (id, name, availability_zone, vcpus, memory_mib, vcpu_overcommit, memory_overcommit,
             registered_at, heartbeat_at, underlay) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, availability_zone = excluded.availability_zone,
             vcpus = excluded.vcpus, memory_mib = excluded.memory_mib, vcpu_overcommit = excluded.vcpu_overcommit,
             memory_overcommit = excluded.memory_overcommit, heartbeat_at = excluded.heartbeat_at,
             underlay = excluded.underlay",
        )
        .bind(id.as_str())
        .bind(&spec.name)
        .bind(spec.zone.as_deref())
        .bind(spec.vcpus as i64)
        .bind(spec.memory_mib as i64)
        .bind(spec.vcpu_overcommit)
        .bind(spec.memory_overcommit)
        .bind(&now)
        .bind(&now)
        .bind(spec.underlay.map(|a| a.to_string()))
        .execute(tx.conn())
        .await?;
        let adopted = match &spec.zone {
            None => {
                sqlx::query("UPDATE instances SET host_id = $1 WHERE host_id IS NULL AND state != 'terminated'")
                    .bind(id.as_str())
                    .execute(tx.conn())
                    .await?
            }
            Some(z) => {
                sqlx::query(
                    "UPDATE instances SET host_id = $1
                     WHERE host_id IS NULL AND state != 'terminated' AND availability_zone = $2",
                )
                .bind(id.as_str())
                .bind(z)
                .execute(tx.conn())
                .await?
            }
        }
        .rows_affected();
        tx.commit().await?;
        tracing::info!(host_id = %id, zone = spec.zone.as_deref().unwrap_or("every zone"), adopted, "host registered");
        Ok(id)
    }

    /// The host is alive. An error when it is not registered (its row was removed).
    pub async fn heartbeat(&self, id: &HostId) -> anyhow::Result<()> {
        let mut tx = self.store().begin_write().await?;
        let n = sqlx::query("UPDATE hosts SET heartbeat_at = $1 WHERE id = $2")
            .bind(ts(&Utc::now()))
            .bind(id.as_str())
            .execute(tx.conn())
            .await?
            .rows_affected();
        tx.commit().await?;
        anyhow::ensure!(n == 1, "host {id} is not registered");
        Ok(())
    }

    /// Removes a host that is down and has no instance left that is not terminated or
    /// stopped (a decommissioned machine): its zone then no longer counts it.
    pub async fn remove_host(&self, id: &HostId) -> anyhow::Result<()> {
        let mut tx = self.store().begin_write().await?;
        let host = all(tx.conn()).await?.into_iter().find(|h| &h.id == id);
        let host = host.ok_or_else(|| anyhow::anyhow!("there is no host {id}"))?;
        anyhow::ensure!(
            !host.live(Utc::now(), self.host_timeout),
            "host {id} is up (its last heartbeat is recent): stop its strato serve first"
        );
        let running: Vec<Instance> = crate::store::instances::live_on(tx.conn(), id.as_str())
            .await?
            .into_iter()
            .filter(|i| i.state != InstanceState::Stopped)
            .collect();
        anyhow::ensure!(
            running.is_empty(),
            "host {id} still has {} instance(s) that are not stopped ({}): stop or terminate them first",
            running.len(),
            running.iter().map(|i| i.id.as_str()).collect::<Vec<_>>().join(", ")
        );
        // Its stopped instances start elsewhere (StartInstances places them anew).
        sqlx::query("UPDATE instances SET host_id = NULL WHERE host_id = $1")
            .bind(id.as_str())
            .execute(tx.conn())
            .await?;
        sqlx::query("DELETE FROM hosts WHERE id = $1").bind(id.as_str()).execute(tx.conn()).await?;
        tx.commit().await?;
        tracing::info!(host_id = %id, "host removed");
        Ok(())
    }

    pub async fn hosts(&self) -> anyhow::Result<Vec<Host>> {
        let mut c = self.store().read().await?;
        Ok(all(&mut c).await?)
    }

    /// Sets how long a host may be silent before it is down, for every server of this
    /// database (kept in its `meta` table, read by `load_host_timeout`).
    pub async fn set_host_timeout(&mut self, timeout: std::time::Duration) -> anyhow::Result<()> {
        let mut tx = self.store().begin_write().await?;
        crate::store::set_meta(tx.conn(), "host_timeout_ms", &timeout.as_millis().to_string()).await?;
        tx.commit().await?;
        self.host_timeout = timeout;
        Ok(())
    }

    /// The host timeout this database was given (`set_host_timeout`), if any.
    pub async fn load_host_timeout(&mut self) -> anyhow::Result<()> {
        let mut c = self.store().read().await?;
        if let Some(ms) = crate::store::get_meta(&mut c, "host_timeout_ms").await?.and_then(|v| v.parse::<u64>().ok()) {
            self.host_timeout = std::time::Duration::from_millis(ms);
        }
        Ok(())
    }

    /// How often agents heartbeat: `HEARTBEAT`, or a quarter of a shorter `host_timeout`.
    pub fn heartbeat_interval(&self) -> std::time::Duration {
        HEARTBEAT.min(self.host_timeout / 4)
    }

    /// Whether a host is live now.
    pub fn host_live(&self, h: &Host) -> bool {
        h.live(Utc::now(), self.host_timeout)
    }
}

/// What one host's agent does this pass: its instances, and which volumes and snapshots
/// are its work.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Duties {
    pub host: HostId,
    /// The instances placed on this host that are not terminated.
    pub instances: Vec<Instance>,
    /// Instances of other hosts that are not terminated.
    others: std::collections::HashSet<String>,
    /// Zones whose volume worker this host is.
    worker_zones: std::collections::HashSet<String>,
    /// This host is the live host with the lowest id: the work of the region that belongs to
    /// no zone (CopySnapshot, removing the files of deleted snapshots) is its.
    pub region_worker: bool,
}

impl Duties {
    /// The instance is live and placed on another host.
    pub fn elsewhere(&self, instance_id: &str) -> bool {
        self.others.contains(instance_id)
    }

    /// Whether the work on volume (`id`, `zone`, attached instance) is this host's: that of
    /// the instance it is attached to, or its zone's worker's when it is attached to no
    /// instance that has a host.
    pub fn volume(&self, zone: &str, instance_id: Option<&str>) -> bool {
        match instance_id {
            Some(i) if self.instances.iter().any(|x| x.id.as_str() == i) => true,
            Some(i) if self.others.contains(i) => false,
            _ => self.worker_zones.contains(zone),
        }
    }
}

impl Control {
    /// This pass's duties of `host`.
    pub async fn duties(&self, host: &HostId) -> anyhow::Result<Duties> {
        let mut c = self.store().read().await?;
        let instances = crate::store::instances::live_on(&mut c, host.as_str()).await?;
        let others = crate::store::instances::live_ids_elsewhere(&mut c, host.as_str()).await?;
        let hosts = all(&mut c).await?;
        drop(c);
        let now = Utc::now();
        let worker_zones = self
            .region
            .zones
            .iter()
            .filter(|z| volume_worker(&hosts, z, now, self.host_timeout).as_ref() == Some(host))
            .cloned()
            .collect();
        let region_worker = hosts.iter().filter(|h| h.live(now, self.host_timeout)).map(|h| &h.id).min() == Some(host);
        Ok(Duties { host: host.clone(), instances, others: others.into_iter().collect(), worker_zones, region_worker })
    }
}

/// The lease under which one `strato serve` of those sharing a database runs the monitor.
pub const MONITOR_LEASE: &str = "host-monitor";

/// What the monitor did with an instance of a dead host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Started again on this host.
    Moved(HostId),
    /// Its stop or termination finished (the VM went with the host).
    Ended(InstanceState),
    /// Left as it is, impaired, with a state reason saying why it was not recovered.
    NotRecovered,
}

impl Control {
    /// Takes or renews the lease `name` for `holder` until `ttl` from now; false while
    /// another holder's lease has not expired. Serialised with every other write, so two
    /// processes never both hold it.
    pub async fn take_lease(&self, name: &str, holder: &str, ttl: std::time::Duration) -> anyhow::Result<bool> {
        let now = Utc::now();
        let mut tx = self.store().begin_write().await?;
        let row: Option<(String, String)> = sqlx::query_as("SELECT holder, expires_at FROM leases WHERE name = $1")
            .bind(name)
            .fetch_optional(tx.conn())
            .await?;
        let ours = match &row {
            None => true,
            Some((h, expires)) => h == holder || parse_ts(expires) <= now,
        };
        if ours {
            let until = now + chrono::Duration::from_std(ttl)?;
            sqlx::query(
                "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at",
            )
            .bind(name)
            .bind(holder)
            .bind(ts(&until))
            .execute(tx.conn())
            .await?;
            tx.commit().await?;
            if row.as_ref().is_none_or(|(h, _)| h != holder) {
                tracing::info!(lease = name, holder, "lease taken");
            }
        }
        Ok(ours)
    }

    /// One pass of the host monitor: the instances of every host that stopped heartbeating
    /// (but `me`, which is running this) that were running or about to are started again on
    /// another live host of their zone with room (automatic recovery: same id, private
    /// address, volumes; a new generation, so the dead host's late reports are ignored).
    /// When recovery is disabled, the type has an instance store or no host has room, they
    /// stay as they are (running, system status impaired, as EC2 leaves them) with a
    /// `Server.InternalError` state reason that says which: a stop then ends at once and a
    /// start places them on a live host. Stops and terminations in progress there finish
    /// (the VM went with its host). All in one transaction.
    pub async fn recover_dead_hosts(&self, me: &HostId) -> anyhow::Result<Vec<(InstanceId, Recovery)>> {
        let mut tx = self.store().begin_write().await?;
        let hosts = all(tx.conn()).await?;
        let now = Utc::now();
        let dead: Vec<&Host> = hosts.iter().filter(|h| &h.id != me && !h.live(now, self.host_timeout)).collect();
        let mut live = crate::store::instances::live(tx.conn()).await?;
        let victims: Vec<Instance> = live
            .iter()
            .filter(|i| dead.iter().any(|h| i.host_id.as_deref() == Some(h.id.as_str())))
            .filter(|i| i.state != InstanceState::Stopped)
            .cloned()
            .collect();
        let mut out = Vec::new();
        for i in victims {
            let host = i.host_id.clone().unwrap_or_default();
            let itype = self.catalogue.get(&i.instance_type);
            let (event, why, to) = match (i.state, itype) {
                (InstanceState::Stopping | InstanceState::ShuttingDown, _) => (Event::VmGone, None, None),
                (_, None) => (Event::VmGone, Some("its instance type left the catalogue".to_owned()), None),
                (_, Some(_)) if !i.auto_recovery => {
                    (Event::VmGone, Some("automatic recovery is disabled".to_owned()), None)
                }
                (_, Some(t)) if t.instance_storage_gb.is_some() => {
                    (Event::VmGone, Some("an instance with an instance store is not recovered".to_owned()), None)
                }
                (_, Some(t)) => {
                    let demand = Demand { zone: &i.availability_zone, account: &i.owner, itype: t, count: 1 };
                    match place(&hosts, &live, &self.catalogue, now, self.host_timeout, &demand).pop() {
                        Some(to) => (Event::Recover, None, Some(to)),
                        None => (
                            Event::VmGone,
                            Some(format!("no other host of {} has room for it", i.availability_zone)),
                            None,
                        ),
                    }
                }
            };
            let message = why.map(|w| format!("Server.InternalError: its host {host} failed and {w}"));
            if event == Event::VmGone && i.state.wants_vm() {
                if let Some(m) = &message {
                    if i.state_reason.as_deref() != Some(m.as_str()) {
                        crate::store::instances::set_state_reason(tx.conn(), &i.id, "Server.InternalError", m).await?;
                        tracing::warn!(instance_id = %i.id, host_id = %host, reason = %m, "instance not recovered");
                        out.push((i.id.clone(), Recovery::NotRecovered));
                    }
                }
                continue;
            }
            let Ok(next) = i.state.transition(event) else { continue };
            let transition = match &to {
                Some(_) => {
                    format!("Instance recovered after its host failed ({})", now.format("%Y-%m-%d %H:%M:%S GMT"))
                }
                None => i.transition_reason.clone(),
            };
            // A stop or termination keeps the reason it had; a recovered instance has none.
            let kept = i.state_reason_code.as_deref().zip(i.state_reason.as_deref()).filter(|_| to.is_none());
            super::billing::meter_transition(tx.conn(), &i, next, &self.catalogue, now).await?;
            crate::store::instances::set_state(tx.conn(), &i.id, next, kept, &transition, now).await?;
            if let Some(to) = &to {
                crate::store::instances::set_host(tx.conn(), &i.id, to.as_str()).await?;
            }
            if let Some(x) = live.iter_mut().find(|x| x.id == i.id) {
                x.state = next;
                x.host_id = to.as_ref().map(|h| h.to_string()).or(x.host_id.take());
            }
            tracing::warn!(instance_id = %i.id, host_id = %host, to = ?to, state = %next, "instance of a dead host");
            out.push((i.id.clone(), to.map(Recovery::Moved).unwrap_or(Recovery::Ended(next))));
        }
        tx.commit().await?;
        Ok(out)
    }
}

/// The host monitor of one `strato serve` (`me` is its host): while it holds the monitor
/// lease, every heartbeat interval, it recovers the instances of dead hosts. Runs until
/// aborted.
pub async fn monitor(control: std::sync::Arc<Control>, me: HostId) {
    loop {
        match control.take_lease(MONITOR_LEASE, me.as_str(), control.host_timeout).await {
            Ok(true) => {
                if let Err(e) = control.recover_dead_hosts(&me).await {
                    tracing::warn!(error = format!("{e:#}"), "host monitor pass failed");
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = format!("{e:#}"), "host monitor lease"),
        }
        tokio::time::sleep(control.heartbeat_interval()).await;
    }
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

impl Control {
    /// A join token for one host, good once until `ttl` from now (`strato host token`):
    /// `sjt-SECRET.FINGERPRINT`, the second part the SHA-256 of the control plane's agent
    /// TLS certificate (made now if it does not exist), which the agent pins.
    pub async fn create_join_token(&self, ttl: std::time::Duration) -> anyhow::Result<String> {
        let identity = crate::agent::tls::identity(self).await?;
        let token = format!("sjt-{}.{}", hex::encode(rand::random::<[u8; 24]>()), identity.fingerprint());
        let now = Utc::now();
        let mut tx = self.store().begin_write().await?;
        sqlx::query("INSERT INTO join_tokens (token_hash, expires_at, created_at) VALUES ($1, $2, $3)")
            .bind(sha256_hex(&token))
            .bind(ts(&(now + chrono::Duration::from_std(ttl)?)))
            .bind(ts(&now))
            .execute(tx.conn())
            .await?;
        tx.commit().await?;
        Ok(token)
    }

    /// A host joins with a join token (used up by this): it is registered and gets its
    /// credential, which only it knows (the database keeps its hash). `None` when the token
    /// is unknown, used or expired.
    pub async fn join_host(&self, token: &str, spec: &HostSpec) -> anyhow::Result<Option<(HostId, String)>> {
        let mut tx = self.store().begin_write().await?;
        let expires: Option<String> = sqlx::query_scalar("SELECT expires_at FROM join_tokens WHERE token_hash = $1")
            .bind(sha256_hex(token))
            .fetch_optional(tx.conn())
            .await?;
        let Some(expires) = expires else { return Ok(None) };
        sqlx::query("DELETE FROM join_tokens WHERE token_hash = $1").bind(sha256_hex(token)).execute(tx.conn()).await?;
        tx.commit().await?;
        if parse_ts(&expires) <= Utc::now() {
            return Ok(None);
        }
        let id = self.register_host(None, spec).await?;
        let credential = hex::encode(rand::random::<[u8; 32]>());
        let mut tx = self.store().begin_write().await?;
        sqlx::query("UPDATE hosts SET credential_hash = $1 WHERE id = $2")
            .bind(sha256_hex(&credential))
            .bind(id.as_str())
            .execute(tx.conn())
            .await?;
        tx.commit().await?;
        Ok(Some((id, credential)))
    }

    /// Whether `credential` is the one `host` got when it joined.
    pub async fn host_credential_ok(&self, host: &HostId, credential: &str) -> anyhow::Result<bool> {
        use subtle::ConstantTimeEq;
        let mut c = self.store().read().await?;
        let hash: Option<Option<String>> = sqlx::query_scalar("SELECT credential_hash FROM hosts WHERE id = $1")
            .bind(host.as_str())
            .fetch_optional(&mut *c)
            .await?;
        Ok(match hash.flatten() {
            Some(h) => bool::from(h.as_bytes().ct_eq(sha256_hex(credential).as_bytes())),
            None => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str, zone: Option<&str>, vcpus: u32, memory_mib: u64, heartbeat_age_s: i64) -> Host {
        let now = Utc::now();
        Host {
            id: HostId::from_db(id.into()),
            name: id.into(),
            zone: zone.map(str::to_owned),
            vcpus,
            memory_mib,
            vcpu_overcommit: 1.0,
            memory_overcommit: 1.0,
            registered_at: now,
            heartbeat_at: now - chrono::Duration::seconds(heartbeat_age_s),
            underlay: None,
        }
    }

    fn ids(v: &[HostId]) -> Vec<&str> {
        v.iter().map(|h| h.as_str()).collect()
    }

    #[test]
    fn placement_takes_live_hosts_of_the_zone_with_room() {
        let catalogue = Catalogue::parse(crate::catalog::DEFAULT_CATALOGUE).unwrap();
        let nano = catalogue.get("t2.nano").unwrap(); // 1 vCPU, 512 MiB
        let account = AccountId::generate();
        let hosts = [
            host("h-1", Some("local-1a"), 2, 1024, 0),
            host("h-2", Some("local-1b"), 8, 8192, 0),
            host("h-3", Some("local-1a"), 1, 8192, 0),
            host("h-4", Some("local-1a"), 8, 8192, 60), // down
            host("h-5", None, 1, 512, 0),               // every zone
        ];
        let demand = |count| Demand { zone: "local-1a", account: &account, itype: nano, count };
        let placed = place(&hosts, &[], &catalogue, Utc::now(), HOST_TIMEOUT, &demand(10));
        // Only h-1 (2), h-3 (1 vCPU) and h-5 (1) serve local-1a, are up and have room: four.
        assert_eq!(placed.len(), 4);
        let mut sorted = ids(&placed);
        sorted.sort();
        assert_eq!(sorted, ["h-1", "h-1", "h-3", "h-5"]);
        // The account's instances are spread: the first three go to three different hosts.
        let mut first: Vec<&str> = ids(&placed[..3]);
        first.sort();
        first.dedup();
        assert_eq!(first.len(), 3);
        assert!(place(&hosts, &[], &catalogue, Utc::now(), HOST_TIMEOUT, &Demand { zone: "local-1c", ..demand(1) })
            .iter()
            .all(|h| h.as_str() == "h-5"));
    }

    #[test]
    fn the_volume_worker_is_the_lowest_live_host_of_the_zone() {
        let hosts = [
            host("h-1", Some("local-1a"), 2, 1024, 60),
            host("h-2", Some("local-1a"), 2, 1024, 0),
            host("h-3", None, 2, 1024, 0),
        ];
        let now = Utc::now();
        assert_eq!(volume_worker(&hosts, "local-1a", now, HOST_TIMEOUT).unwrap().as_str(), "h-2");
        assert_eq!(volume_worker(&hosts, "local-1b", now, HOST_TIMEOUT).unwrap().as_str(), "h-3");
        assert!(volume_worker(&hosts[..1], "local-1a", now, HOST_TIMEOUT).is_none());
    }
}
