//! EBS volumes: records and rules. A volume is a qcow2 file (`DATA_DIR/volumes/<id>.qcow2`)
//! that the agent creates and removes; attaching hot-plugs it into the instance's VM (or
//! puts it on the VM's command line at the next boot). The control plane writes what is
//! wanted (`creating`, `deleting`, attachment `attaching`/`detaching`); the agent makes it
//! true and reports (`available`, gone, `attached`, detached), as for instances.
//!
//! A volume made from a snapshot is a copy of the snapshot's file (grown to its size).
//! ModifyVolume grows a volume (the file, or the device of a running VM with QMP
//! `block_resize`: the guest sees the new size at once) and changes its type's figures.
//!
//! An instance's root volume is one of these too (`root`): made by RunInstances in the same
//! transaction as the instance, attached at `/dev/xvda` from the start, its file an overlay
//! on the image's disk that the agent makes at the first launch. It can be snapshotted and
//! grown like any volume, and detached while its instance is stopped; a volume attached at
//! `/dev/xvda` of a stopped instance becomes its root (the rescue workflow).

use chrono::{DateTime, Utc};
use sqlx::{AnyConnection, Row};

use super::billing::{self, Interval};
use super::filter::{self, Filterable};
use super::images::ROOT_DEVICE;
use super::instance_state::InstanceState;
use super::model::{Caller, Tags};
use super::tags::{not_found_for, put_tags, tags_for};
use super::Control;
use crate::api::error::{ApiError, ApiResult};
use crate::api::query::{Filter, TagSpec};
use crate::ids::{AccountId, InstanceId, VolumeId};
use crate::store::{self, instances as idb, parse_ts, ts};

/// How many volumes one instance can have attached (its VM's spare hot-plug ports).
pub const MAX_ATTACHED: usize = 8;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Volume {
    pub id: VolumeId,
    pub owner: AccountId,
    pub availability_zone: String,
    pub size_gb: i64,
    pub volume_type: String,
    pub iops: Option<i64>,
    pub throughput: Option<i64>,
    pub snapshot_id: Option<String>,
    /// creating | available | in-use | deleting
    pub state: String,
    pub created_at: DateTime<Utc>,
    pub instance_id: Option<String>,
    pub device: Option<String>,
    /// attaching | attached | detaching
    pub attach_state: Option<String>,
    pub attach_time: Option<DateTime<Utc>>,
    pub delete_on_termination: bool,
    pub force_detach: bool,
    /// Attached at its instance's root device.
    pub root: bool,
    /// Where the current size and type started to be metered (creation, or the last
    /// ModifyVolume).
    pub metered_since: DateTime<Utc>,
    pub tags: Tags,
}

/// One ModifyVolume and how far it got.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Modification {
    pub volume_id: String,
    /// modifying | completed | failed
    pub state: String,
    pub original_size: i64,
    pub target_size: i64,
    pub original_type: String,
    pub target_type: String,
    pub original_iops: Option<i64>,
    pub target_iops: Option<i64>,
    pub original_throughput: Option<i64>,
    pub target_throughput: Option<i64>,
    pub start_time: DateTime<Utc>,
    pub end_time: Option<DateTime<Utc>>,
}

impl Filterable for Modification {
    const FILTERS: &'static [&'static str] = &[
        "modification-state",
        "original-size",
        "original-volume-type",
        "target-size",
        "target-volume-type",
        "volume-id",
        "start-time",
    ];
    fn filter_values(&self, name: &str) -> Vec<String> {
        match name {
            "modification-state" => vec![self.state.clone()],
            "original-size" => vec![self.original_size.to_string()],
            "original-volume-type" => vec![self.original_type.clone()],
            "target-size" => vec![self.target_size.to_string()],
            "target-volume-type" => vec![self.target_type.clone()],
            "volume-id" => vec![self.volume_id.clone()],
            "start-time" => vec![crate::api::timestamp(&self.start_time)],
            _ => vec![],
        }
    }
    fn tags(&self) -> &Tags {
        const NONE: &Tags = &Vec::new();
        NONE
    }
    fn sort_key(&self) -> &str {
        &self.volume_id
    }
}

fn modification_from_row(r: &sqlx::any::AnyRow) -> sqlx::Result<Modification> {
    Ok(Modification {
        volume_id: r.try_get("volume_id")?,
        state: r.try_get("state")?,
        original_size: r.try_get("original_size")?,
        target_size: r.try_get("target_size")?,
        original_type: r.try_get("original_type")?,
        target_type: r.try_get("target_type")?,
        original_iops: r.try_get("original_iops")?,
        target_iops: r.try_get("target_iops")?,
        original_throughput: r.try_get("original_throughput")?,
        target_throughput: r.try_get("target_throughput")?,
        start_time: parse_ts(&r.try_get::<String, _>("start_time")?),
        end_time: r.try_get::<Option<String>, _>("end_time")?.map(|t| parse_ts(&t)),
    })
}

/// ModifyVolume, decoded.
#[derive(Debug, Clone, Default)]
pub struct ModifyVolumeRequest {
    pub size_gb: Option<i64>,
    pub volume_type: Option<String>,
    pub iops: Option<i64>,
    pub throughput: Option<i64>,
}

impl Filterable for Volume {
    const FILTERS: &'static [&'static str] = &[
        "attachment.attach-time",
        "attachment.delete-on-termination",
        "attachment.device",
        "attachment.instance-id",
        "attachment.status",
        "availability-zone",
        "create-time",
        "encrypted",
        "multi-attach-enabled",
        "size",
        "snapshot-id",
        "status",
        "volume-id",
        "volume-type",
    ];
    fn filter_values(&self, name: &str) -> Vec<String> {
        match name {
            "attachment.attach-time" => self.attach_time.iter().map(crate::api::timestamp).collect(),
            "attachment.delete-on-termination" => {
                self.instance_id.as_ref().map(|_| self.delete_on_termination.to_string()).into_iter().collect()
            }
            "attachment.device" => self.device.clone().into_iter().collect(),
            "attachment.instance-id" => self.instance_id.clone().into_iter().collect(),
            "attachment.status" => self.attach_state.clone().into_iter().collect(),
            "availability-zone" => vec![self.availability_zone.clone()],
            "create-time" => vec![crate::api::timestamp(&self.created_at)],
            "encrypted" | "multi-attach-enabled" => vec!["false".into()],
            "size" => vec![self.size_gb.to_string()],
            "snapshot-id" => vec![self.snapshot_id.clone().unwrap_or_default()],
            "status" => vec![self.state.clone()],
            "volume-id" => vec![self.id.to_string()],
            "volume-type" => vec![self.volume_type.clone()],
            _ => vec![],
        }
    }
    fn tags(&self) -> &Tags {
        &self.tags
    }
    fn sort_key(&self) -> &str {
        self.id.as_str()
    }
}

fn from_row(r: &sqlx::any::AnyRow) -> sqlx::Result<Volume> {
    Ok(Volume {
        id: VolumeId::from_db(r.try_get("id")?),
        owner: AccountId::from_db(r.try_get("account_id")?),
        availability_zone: r.try_get("availability_zone")?,
        size_gb: r.try_get("size_gb")?,
        volume_type: r.try_get("volume_type")?,
        iops: r.try_get("iops")?,
        throughput: r.try_get("throughput")?,
        snapshot_id: r.try_get("snapshot_id")?,
        state: r.try_get("state")?,
        created_at: parse_ts(&r.try_get::<String, _>("created_at")?),
        instance_id: r.try_get("instance_id")?,
        device: r.try_get("device")?,
        attach_state: r.try_get("attach_state")?,
        attach_time: r.try_get::<Option<String>, _>("attach_time")?.map(|t| parse_ts(&t)),
        delete_on_termination: r.try_get::<i64, _>("delete_on_termination")? != 0,
        force_detach: r.try_get::<i64, _>("force_detach")? != 0,
        root: r.try_get::<i64, _>("root")? != 0,
        metered_since: parse_ts(
            &r.try_get::<Option<String>, _>("metered_since")?.unwrap_or(r.try_get::<String, _>("created_at")?),
        ),
        tags: Vec::new(),
    })
}

pub async fn of_account(c: &mut AnyConnection, account: &AccountId) -> sqlx::Result<Vec<Volume>> {
    let rows = sqlx::query("SELECT * FROM volumes WHERE account_id = $1 ORDER BY created_at, id")
        .bind(account.as_str())
        .fetch_all(c)
        .await?;
    rows.iter().map(from_row).collect()
}

pub async fn all(c: &mut AnyConnection) -> sqlx::Result<Vec<Volume>> {
    let rows = sqlx::query("SELECT * FROM volumes ORDER BY created_at, id").fetch_all(c).await?;
    rows.iter().map(from_row).collect()
}

pub async fn modification_of(c: &mut AnyConnection, id: &str) -> sqlx::Result<Option<Modification>> {
    let row = sqlx::query("SELECT * FROM volume_modifications WHERE volume_id = $1").bind(id).fetch_optional(c).await?;
    row.as_ref().map(modification_from_row).transpose()
}

pub async fn by_id(c: &mut AnyConnection, id: &str) -> sqlx::Result<Option<Volume>> {
    let row = sqlx::query("SELECT * FROM volumes WHERE id = $1").bind(id).fetch_optional(c).await?;
    row.as_ref().map(from_row).transpose()
}

/// RunInstances: the instance's root volume, in use at its root device from the start (the
/// agent makes its file at the first launch). Metered from the launch.
pub async fn insert_root(c: &mut AnyConnection, i: &super::instances::Instance, snapshot_id: &str) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO volumes (id, account_id, availability_zone, size_gb, volume_type, iops, throughput, snapshot_id,
         state, created_at, instance_id, device, attach_state, attach_time, delete_on_termination, metered_since, root)
         VALUES ($1, $2, $3, $4, 'gp3', 3000, 125, $5, 'in-use', $6, $7, $8, 'attached', $9, $10, $11, 1)",
    )
    .bind(&i.root_volume_id)
    .bind(i.owner.as_str())
    .bind(&i.availability_zone)
    .bind(i.root_size_gb)
    .bind(snapshot_id)
    .bind(ts(&i.launch_time))
    .bind(i.id.as_str())
    .bind(ROOT_DEVICE)
    .bind(ts(&i.launch_time))
    .bind(i.delete_on_termination as i64)
    .bind(ts(&i.launch_time))
    .execute(c)
    .await?;
    Ok(())
}

/// A volume's interval from creation to `end`.
pub fn interval(v: &Volume, catalogue: &crate::catalog::Catalogue, end: DateTime<Utc>) -> Interval {
    Interval {
        account_id: v.owner.to_string(),
        resource_id: v.id.to_string(),
        resource_type: "volume".into(),
        usage_type: format!("EBS:VolumeUsage.{}", v.volume_type),
        service: billing::STORAGE_SERVICE.into(),
        start: v.metered_since,
        end,
        unit_price: catalogue.storage.gp3_gb_month,
        size_gb: v.size_gb,
    }
}

/// EC2's block device names for data volumes.
fn valid_device(d: &str) -> bool {
    let tail = d.strip_prefix("/dev/sd").or_else(|| d.strip_prefix("/dev/xvd"));
    matches!(tail.map(str::as_bytes), Some([c]) if (b'b'..=b'z').contains(c))
}

/// The sizes a volume type allows (GiB).
fn size_range(volume_type: &str) -> (i64, i64) {
    match volume_type {
        "io1" | "io2" => (4, 16384),
        "standard" => (1, 1024),
        "st1" | "sc1" => (125, 16384),
        _ => (1, 16384),
    }
}

/// CreateVolume, decoded.
#[derive(Debug, Clone, Default)]
pub struct CreateVolumeRequest {
    pub availability_zone: String,
    pub size_gb: Option<i64>,
    pub volume_type: Option<String>,
    pub iops: Option<i64>,
    pub throughput: Option<i64>,
    pub snapshot_id: Option<String>,
    pub tags: Vec<TagSpec>,
}

fn volume_not_found(id: &str) -> ApiError {
    not_found_for("volume", id)
}

impl Control {
    pub async fn create_volume(&self, caller: &Caller, r: CreateVolumeRequest) -> ApiResult<Volume> {
        if !self.region.zones.contains(&r.availability_zone) {
            return Err(ApiError::invalid_value(format!("Invalid availability zone: [{}]", r.availability_zone)));
        }
        let snapshot = match &r.snapshot_id {
            Some(s) => {
                let mut c = self.store().read().await?;
                let snap = self.visible_snapshot(&mut c, caller, s).await?;
                if snap.state != "completed" {
                    return Err(ApiError::Conflict {
                        code: "IncorrectState",
                        message: format!("Snapshot {s} is not completed"),
                    });
                }
                Some(snap)
            }
            None => None,
        };
        let volume_type = r.volume_type.clone().unwrap_or_else(|| "gp2".into());
        if !matches!(volume_type.as_str(), "gp2" | "gp3" | "io1" | "io2" | "standard" | "st1" | "sc1") {
            return Err(ApiError::invalid_value(format!(
                "Value ({volume_type}) for parameter volumeType is invalid. Valid values: standard, io1, io2, gp2, gp3, sc1, st1"
            )));
        }
        let size = r
            .size_gb
            .or(snapshot.as_ref().map(|s| s.volume_size_gb))
            .ok_or_else(|| ApiError::MissingParameter("size".into()))?;
        if let Some(s) = snapshot.as_ref().filter(|s| size < s.volume_size_gb) {
            return Err(ApiError::invalid_value(format!(
                "Volume of {size}GiB is too small; minimum is {}GiB (the snapshot's size).",
                s.volume_size_gb
            )));
        }
        let (lo, hi) = size_range(&volume_type);
        if !(lo..=hi).contains(&size) {
            return Err(ApiError::invalid_value(format!(
                "Volume of {size}GiB is too {} for {volume_type}; it must be {lo}-{hi} GiB.",
                if size < lo { "small" } else { "large" }
            )));
        }
        match (volume_type.as_str(), r.iops) {
            ("io1" | "io2", None) => return Err(ApiError::MissingParameter("iops".into())),
            ("io1" | "io2", Some(i)) if !(100..=64000).contains(&i) => {
                return Err(ApiError::invalid_value(format!("Invalid iops {i}: 100-64000")))
            }
            ("gp3", Some(i)) if !(3000..=16000).contains(&i) => {
                return Err(ApiError::invalid_value(format!("Invalid iops {i} for gp3: 3000-16000")))
            }
            ("gp2" | "standard" | "st1" | "sc1", Some(_)) => {
                return Err(ApiError::InvalidParameterCombination(format!(
                    "The parameter iops is not supported for {volume_type} volumes."
                )))
            }
            _ => {}
        }
        match (volume_type.as_str(), r.throughput) {
            ("gp3", Some(t)) if !(125..=1000).contains(&t) => {
                return Err(ApiError::invalid_value(format!("Invalid throughput {t} for gp3: 125-1000 MiB/s")))
            }
            ("gp3", _) | (_, None) => {}
            (_, Some(_)) => {
                return Err(ApiError::InvalidParameterCombination(format!(
                    "The parameter throughput is not supported for {volume_type} volumes."
                )))
            }
        }
        let tags = tags_for(&r.tags, "volume")?;
        let v = Volume {
            id: VolumeId::generate(),
            owner: caller.account_id.clone(),
            availability_zone: r.availability_zone.clone(),
            size_gb: size,
            iops: r.iops.or((volume_type == "gp3").then_some(3000)),
            throughput: r.throughput.or((volume_type == "gp3").then_some(125)),
            volume_type,
            snapshot_id: snapshot.map(|s| s.id.to_string()),
            state: "creating".into(),
            created_at: Utc::now(),
            instance_id: None,
            device: None,
            attach_state: None,
            attach_time: None,
            delete_on_termination: false,
            force_detach: false,
            root: false,
            metered_since: Utc::now(),
            tags: tags.clone(),
        };
        let mut tx = self.store().begin_write().await?;
        sqlx::query(
            "INSERT INTO volumes (id, account_id, availability_zone, size_gb, volume_type, iops, throughput, state, created_at, snapshot_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(v.id.as_str())
        .bind(v.owner.as_str())
        .bind(&v.availability_zone)
        .bind(v.size_gb)
        .bind(&v.volume_type)
        .bind(v.iops)
        .bind(v.throughput)
        .bind(&v.state)
        .bind(ts(&v.created_at))
        .bind(&v.snapshot_id)
        .execute(tx.conn())
        .await?;
        put_tags(tx.conn(), &caller.account_id, v.id.as_str(), "volume", &tags).await?;
        tx.commit().await?;
        self.agent_wake.notify_one();
        Ok(v)
    }

    pub async fn describe_volumes(
        &self,
        caller: &Caller,
        ids: &[String],
        filters: &[Filter],
        max: Option<usize>,
        token: Option<&str>,
    ) -> ApiResult<(Vec<Volume>, Option<String>)> {
        for id in ids {
            VolumeId::parse(id)?;
        }
        filter::check_filters::<Volume>(filters)?;
        let mut c = self.store().read().await?;
        let mut list = of_account(&mut c, &caller.account_id).await?;
        let mut tags = store::tags_by_type(&mut c, &caller.account_id, "volume").await?;
        for v in &mut list {
            v.tags = tags.remove(v.id.as_str()).unwrap_or_default();
        }
        filter::select_filter_page(list, ids, |v| v.id.as_str(), volume_not_found, filters, max, token)
    }

    async fn my_volume(&self, c: &mut AnyConnection, caller: &Caller, id: &str) -> ApiResult<Volume> {
        VolumeId::parse(id)?;
        by_id(c, id).await?.filter(|v| v.owner == caller.account_id).ok_or_else(|| volume_not_found(id))
    }

    pub async fn delete_volume(&self, caller: &Caller, id: &str) -> ApiResult<()> {
        let mut tx = self.store().begin_write().await?;
        let v = self.my_volume(tx.conn(), caller, id).await?;
        if let Some(i) = &v.instance_id {
            return Err(ApiError::Conflict {
                code: "VolumeInUse",
                message: format!("Volume {id} is currently attached to {i}"),
            });
        }
        if v.state != "available" {
            return Err(ApiError::Conflict {
                code: "IncorrectState",
                message: format!("The volume '{id}' is in the '{}' state.", v.state),
            });
        }
        sqlx::query("UPDATE volumes SET state = 'deleting' WHERE id = $1").bind(id).execute(tx.conn()).await?;
        tx.commit().await?;
        self.agent_wake.notify_one();
        Ok(())
    }

    pub async fn attach_volume(&self, caller: &Caller, id: &str, instance_id: &str, device: &str) -> ApiResult<Volume> {
        let instance_id = InstanceId::parse(instance_id)?;
        let as_root = device == ROOT_DEVICE;
        if !valid_device(device) && !as_root {
            return Err(ApiError::invalid_value(format!(
                "Value ({device}) for parameter device is invalid. {device} is not a valid EBS device name."
            )));
        }
        let mut tx = self.store().begin_write().await?;
        let c = tx.conn();
        let v = self.my_volume(c, caller, id).await?;
        let i = idb::by_id(c, &instance_id)
            .await?
            .filter(|i| i.owner == caller.account_id)
            .ok_or_else(|| not_found_for("instance", instance_id.as_str()))?;
        if let Some(other) = &v.instance_id {
            return Err(ApiError::Conflict {
                code: "VolumeInUse",
                message: format!("{id} is already attached to an instance ({other})"),
            });
        }
        if v.state != "available" {
            return Err(ApiError::Conflict {
                code: "IncorrectState",
                message: format!("The volume '{id}' is in the '{}' state.", v.state),
            });
        }
        if matches!(i.state, InstanceState::ShuttingDown | InstanceState::Terminated) {
            return Err(ApiError::IncorrectInstanceState(format!(
                "Instance '{instance_id}' is not 'running' or 'stopped'."
            )));
        }
        if i.availability_zone != v.availability_zone {
            return Err(ApiError::Conflict {
                code: "InvalidVolume.ZoneMismatch",
                message: format!("The volume '{id}' is not in the same availability zone as instance '{instance_id}'"),
            });
        }
        let attached: Vec<Volume> =
            all(c).await?.into_iter().filter(|x| x.instance_id.as_deref() == Some(instance_id.as_str())).collect();
        let same_slot = |d: &str| d.trim_start_matches("/dev/xvd").trim_start_matches("/dev/sd").to_owned();
        if attached.iter().any(|x| x.device.as_deref().map(same_slot) == Some(same_slot(device))) {
            return Err(ApiError::invalid_value(format!("Attachment point {device} is already in use")));
        }
        // A new root device only for a stopped instance (whose root was detached).
        if as_root && i.state != InstanceState::Stopped {
            return Err(ApiError::IncorrectInstanceState(format!(
                "The instance '{instance_id}' is not 'stopped': a volume can be attached at its root device {ROOT_DEVICE} only while it is stopped."
            )));
        }
        if attached.iter().filter(|x| !x.root).count() >= MAX_ATTACHED && !as_root {
            return Err(ApiError::LimitExceeded {
                code: "AttachmentLimitExceeded",
                message: format!("Instance {instance_id} already has {MAX_ATTACHED} volumes attached"),
            });
        }
        let now = Utc::now();
        sqlx::query(
            "UPDATE volumes SET state = 'in-use', instance_id = $1, device = $2, attach_state = 'attaching',
             attach_time = $3, delete_on_termination = 0, force_detach = 0, root = $4 WHERE id = $5",
        )
        .bind(instance_id.as_str())
        .bind(device)
        .bind(ts(&now))
        .bind(as_root as i64)
        .bind(id)
        .execute(&mut *c)
        .await?;
        if as_root {
            sqlx::query("UPDATE instances SET root_volume_id = $1, root_size_gb = $2 WHERE id = $3")
                .bind(id)
                .bind(v.size_gb)
                .bind(instance_id.as_str())
                .execute(&mut *c)
                .await?;
        }
        let v = by_id(c, id).await?.ok_or_else(|| volume_not_found(id))?;
        tx.commit().await?;
        self.agent_wake.notify_one();
        Ok(v)
    }

    pub async fn detach_volume(
        &self,
        caller: &Caller,
        id: &str,
        instance_id: Option<&str>,
        force: bool,
    ) -> ApiResult<Volume> {
        let mut tx = self.store().begin_write().await?;
        let c = tx.conn();
        let v = self.my_volume(c, caller, id).await?;
        let Some(attached_to) = v.instance_id.clone() else {
            return Err(ApiError::Conflict {
                code: "IncorrectState",
                message: format!("Volume '{id}' is in the '{}' state.", v.state),
            });
        };
        if let Some(want) = instance_id {
            InstanceId::parse(want)?;
            if want != attached_to {
                return Err(ApiError::not_found(
                    "InvalidAttachment.NotFound",
                    format!("The volume {id} is not attached to instance {want}"),
                ));
            }
        }
        if v.root {
            let i = idb::by_id(c, &InstanceId::parse(&attached_to)?).await?;
            if i.is_none_or(|i| i.state != InstanceState::Stopped) {
                return Err(ApiError::Conflict {
                    code: "IncorrectState",
                    message: format!("Unable to detach root volume '{id}' from instance '{attached_to}'"),
                });
            }
        }
        sqlx::query("UPDATE volumes SET attach_state = 'detaching', force_detach = $1 WHERE id = $2")
            .bind(force as i64)
            .bind(id)
            .execute(&mut *c)
            .await?;
        let v = by_id(c, id).await?.ok_or_else(|| volume_not_found(id))?;
        tx.commit().await?;
        self.agent_wake.notify_one();
        Ok(v)
    }

    pub async fn modify_volume(&self, caller: &Caller, id: &str, r: ModifyVolumeRequest) -> ApiResult<Modification> {
        let mut tx = self.store().begin_write().await?;
        let c = tx.conn();
        let v = self.my_volume(c, caller, id).await?;
        if !matches!(v.state.as_str(), "available" | "in-use") {
            return Err(ApiError::Conflict {
                code: "IncorrectState",
                message: format!("The volume '{id}' is in the '{}' state.", v.state),
            });
        }
        if let Some(m) = modification_of(c, id).await?.filter(|m| m.state == "modifying") {
            return Err(ApiError::Conflict {
                code: "IncorrectModificationState",
                message: format!(
                    "Volume {id} is already being modified (since {})",
                    crate::api::timestamp(&m.start_time)
                ),
            });
        }
        let size = r.size_gb.unwrap_or(v.size_gb);
        if size < v.size_gb {
            return Err(ApiError::invalid_value(format!(
                "New size cannot be smaller than existing size: {size} < {}",
                v.size_gb
            )));
        }
        let volume_type = r.volume_type.clone().unwrap_or_else(|| v.volume_type.clone());
        if volume_type != v.volume_type
            && !matches!(volume_type.as_str(), "gp2" | "gp3" | "io1" | "io2" | "standard" | "st1" | "sc1")
        {
            return Err(ApiError::invalid_value(format!("Value ({volume_type}) for parameter volumeType is invalid.")));
        }
        let (lo, hi) = size_range(&volume_type);
        if !(lo..=hi).contains(&size) {
            return Err(ApiError::invalid_value(format!(
                "Volume of {size}GiB is out of range for {volume_type} ({lo}-{hi} GiB)."
            )));
        }
        if size == v.size_gb && volume_type == v.volume_type && r.iops.is_none() && r.throughput.is_none() {
            return Err(ApiError::Conflict {
                code: "InvalidParameterCombination",
                message: "New size, type, IOPS or throughput must differ from the volume's".into(),
            });
        }
        let iops =
            r.iops.or(if volume_type == v.volume_type { v.iops } else { (volume_type == "gp3").then_some(3000) });
        let throughput = r.throughput.or(if volume_type == v.volume_type {
            v.throughput
        } else {
            (volume_type == "gp3").then_some(125)
        });
        let now = Utc::now();
        // The old size's usage ends now; the new one starts.
        billing::record(c, &interval(&v, &self.catalogue, now)).await?;
        sqlx::query(
            "UPDATE volumes SET size_gb = $1, volume_type = $2, iops = $3, throughput = $4, metered_since = $5 WHERE id = $6",
        )
        .bind(size)
        .bind(&volume_type)
        .bind(iops)
        .bind(throughput)
        .bind(ts(&now))
        .bind(id)
        .execute(&mut *c)
        .await?;
        if let Some(i) = v.instance_id.as_deref().filter(|_| v.root) {
            sqlx::query("UPDATE instances SET root_size_gb = $1 WHERE id = $2")
                .bind(size)
                .bind(i)
                .execute(&mut *c)
                .await?;
        }
        let m = Modification {
            volume_id: id.to_owned(),
            state: "modifying".into(),
            original_size: v.size_gb,
            target_size: size,
            original_type: v.volume_type.clone(),
            target_type: volume_type,
            original_iops: v.iops,
            target_iops: iops,
            original_throughput: v.throughput,
            target_throughput: throughput,
            start_time: now,
            end_time: None,
        };
        sqlx::query(
            "INSERT INTO volume_modifications (volume_id, account_id, state, original_size, target_size,
             original_type, target_type, original_iops, target_iops, original_throughput, target_throughput, start_time)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT (volume_id) DO UPDATE SET account_id = excluded.account_id, state = excluded.state,
             original_size = excluded.original_size, target_size = excluded.target_size,
             original_type = excluded.original_type, target_type = excluded.target_type,
             original_iops = excluded.original_iops, target_iops = excluded.target_iops,
             original_throughput = excluded.original_throughput, target_throughput = excluded.target_throughput,
             start_time = excluded.start_time, end_time = NULL",
        )
        .bind(id)
        .bind(caller.account_id.as_str())
        .bind(&m.state)
        .bind(m.original_size)
        .bind(m.target_size)
        .bind(&m.original_type)
        .bind(&m.target_type)
        .bind(m.original_iops)
        .bind(m.target_iops)
        .bind(m.original_throughput)
        .bind(m.target_throughput)
        .bind(ts(&now))
        .execute(&mut *c)
        .await?;
        tx.commit().await?;
        self.agent_wake.notify_one();
        Ok(m)
    }

    pub async fn describe_volume_modifications(
        &self,
        caller: &Caller,
        ids: &[String],
        filters: &[Filter],
    ) -> ApiResult<Vec<Modification>> {
        for id in ids {
            VolumeId::parse(id)?;
        }
        filter::check_filters::<Modification>(filters)?;
        let mut c = self.store().read().await?;
        let rows = sqlx::query("SELECT * FROM volume_modifications WHERE account_id = $1 ORDER BY start_time")
            .bind(caller.account_id.as_str())
            .fetch_all(&mut *c)
            .await?;
        let list: Vec<Modification> = rows.iter().map(modification_from_row).collect::<sqlx::Result<_>>()?;
        for id in ids {
            if !list.iter().any(|m| &m.volume_id == id) {
                // A volume never modified has no modification to show.
                return Err(ApiError::not_found(
                    "InvalidVolumeModification.NotFound",
                    format!("Modification for volume '{id}' does not exist."),
                ));
            }
        }
        Ok(list
            .into_iter()
            .filter(|m| ids.is_empty() || ids.contains(&m.volume_id))
            .filter(|m| filter::matches(m, filters))
            .collect())
    }

    pub async fn modifying_volumes(&self) -> anyhow::Result<Vec<Modification>> {
        let mut c = self.store().read().await?;
        let rows =
            sqlx::query("SELECT * FROM volume_modifications WHERE state = 'modifying'").fetch_all(&mut *c).await?;
        Ok(rows.iter().map(modification_from_row).collect::<sqlx::Result<_>>()?)
    }

    pub async fn volume_modified(&self, id: &str, ok: bool) -> anyhow::Result<()> {
        let mut tx = self.store().begin_write().await?;
        sqlx::query(
            "UPDATE volume_modifications SET state = $1, end_time = $2 WHERE volume_id = $3 AND state = 'modifying'",
        )
        .bind(if ok { "completed" } else { "failed" })
        .bind(ts(&Utc::now()))
        .bind(id)
        .execute(tx.conn())
        .await?;
        tx.commit().await?;
        Ok(())
    }

    // ---- what the agent reports

    pub async fn all_volumes(&self) -> anyhow::Result<Vec<Volume>> {
        let mut c = self.store().read().await?;
        Ok(all(&mut c).await?)
    }

    /// Applies one of the agent's reports: `sql` updates the volume `?` if it is still in the
    /// state the report answers (a stale report changes nothing).
    async fn volume_report(&self, sql: &str, id: &VolumeId) -> anyhow::Result<()> {
        let mut tx = self.store().begin_write().await?;
        sqlx::query(sql).bind(id.as_str()).execute(tx.conn()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The file exists: `creating` becomes `available`.
    pub async fn volume_created(&self, id: &VolumeId) -> anyhow::Result<()> {
        self.volume_report("UPDATE volumes SET state = 'available' WHERE id = $1 AND state = 'creating'", id).await
    }

    /// The file is gone: the volume ends, its storage interval is recorded.
    pub async fn volume_deleted(&self, id: &VolumeId) -> anyhow::Result<()> {
        let mut tx = self.store().begin_write().await?;
        if let Some(v) = by_id(tx.conn(), id.as_str()).await?.filter(|v| v.state == "deleting") {
            billing::record(tx.conn(), &interval(&v, &self.catalogue, Utc::now())).await?;
            sqlx::query("DELETE FROM volumes WHERE id = $1").bind(id.as_str()).execute(tx.conn()).await?;
            sqlx::query("DELETE FROM volume_modifications WHERE volume_id = $1")
                .bind(id.as_str())
                .execute(tx.conn())
                .await?;
            store::delete_all_tags(tx.conn(), id.as_str()).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The VM has the volume (or the instance is not running: it gets it at boot).
    pub async fn volume_attached(&self, id: &VolumeId) -> anyhow::Result<()> {
        self.volume_report(
            "UPDATE volumes SET attach_state = 'attached' WHERE id = $1 AND attach_state = 'attaching'",
            id,
        )
        .await
    }

    /// The VM let the volume go.
    pub async fn volume_detached(&self, id: &VolumeId) -> anyhow::Result<()> {
        self.volume_report(
            "UPDATE volumes SET state = 'available', instance_id = NULL, device = NULL, attach_state = NULL,
             attach_time = NULL, force_detach = 0, root = 0 WHERE id = $1 AND attach_state = 'detaching'",
            id,
        )
        .await
    }
}
