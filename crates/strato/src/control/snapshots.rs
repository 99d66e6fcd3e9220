//! EBS snapshots: point-in-time copies of volumes, as independent qcow2 files
//! (`DATA_DIR/snapshots/<id>.qcow2`) that the agent makes (`pending` -> `completed`). A
//! snapshot can be copied, shared with other accounts (createVolumePermission) and turned
//! into new volumes (copies, so deleting either never breaks the other).

use chrono::{DateTime, Utc};
use sqlx::{AnyConnection, Row};

use super::billing::{self, Interval};
use super::filter::{self, Filterable};
use super::model::{Caller, Tags};
use super::tags::{not_found_for, put_tags, tags_for};
use super::Control;
use crate::api::error::{ApiError, ApiResult};
use crate::api::query::{Filter, TagSpec};
use crate::ids::{AccountId, SnapshotId, VolumeId};
use crate::store::{self, parse_ts, ts};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub id: SnapshotId,
    pub owner: AccountId,
    pub volume_id: String,
    pub source_snapshot: Option<String>,
    pub volume_size_gb: i64,
    pub description: String,
    /// pending | completed | error
    pub state: String,
    pub started_at: DateTime<Utc>,
    /// CreateImage: the instance whose root disk this copies, and whether its VM is paused
    /// while it does (without NoReboot).
    pub instance_id: Option<String>,
    pub pause_vm: bool,
    /// Accounts that may create volumes from it (`all`: everyone).
    pub permissions: Vec<String>,
    pub tags: Tags,
}

impl Snapshot {
    pub fn visible_to(&self, account: &AccountId) -> bool {
        &self.owner == account || self.permissions.iter().any(|p| p == "all" || p == account.as_str())
    }
}

impl Filterable for Snapshot {
    const FILTERS: &'static [&'static str] = &[
        "description",
        "encrypted",
        "owner-alias",
        "owner-id",
        "progress",
        "snapshot-id",
        "start-time",
        "status",
        "storage-tier",
        "volume-id",
        "volume-size",
    ];
    fn filter_values(&self, name: &str) -> Vec<String> {
        match name {
            "description" => vec![self.description.clone()],
            "encrypted" => vec!["false".into()],
            "owner-id" => vec![self.owner.to_string()],
            "progress" => vec![progress(&self.state).into()],
            "snapshot-id" => vec![self.id.to_string()],
            "start-time" => vec![crate::api::timestamp(&self.started_at)],
            "status" => vec![self.state.clone()],
            "storage-tier" => vec!["standard".into()],
            "volume-id" => vec![self.volume_id.clone()],
            "volume-size" => vec![self.volume_size_gb.to_string()],
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

pub fn progress(state: &str) -> &'static str {
    if state == "completed" {
        "100%"
    } else {
        "0%"
    }
}

fn from_row(r: &sqlx::any::AnyRow) -> sqlx::Result<Snapshot> {
    Ok(Snapshot {
        id: SnapshotId::from_db(r.try_get("id")?),
        owner: AccountId::from_db(r.try_get("account_id")?),
        volume_id: r.try_get("volume_id")?,
        source_snapshot: r.try_get("source_snapshot")?,
        volume_size_gb: r.try_get("volume_size_gb")?,
        description: r.try_get("description")?,
        state: r.try_get("state")?,
        started_at: parse_ts(&r.try_get::<String, _>("started_at")?),
        instance_id: r.try_get("instance_id")?,
        pause_vm: r.try_get::<i64, _>("pause_vm")? != 0,
        permissions: Vec::new(),
        tags: Vec::new(),
    })
}

/// Every snapshot with its permissions.
pub async fn all(c: &mut AnyConnection) -> sqlx::Result<Vec<Snapshot>> {
    let rows = sqlx::query("SELECT * FROM snapshots ORDER BY started_at, id").fetch_all(&mut *c).await?;
    let mut list: Vec<Snapshot> = rows.iter().map(from_row).collect::<sqlx::Result<_>>()?;
    let perms: Vec<(String, String)> =
        sqlx::query_as("SELECT snapshot_id, grantee FROM snapshot_permissions").fetch_all(&mut *c).await?;
    for s in &mut list {
        s.permissions = perms.iter().filter(|p| p.0 == s.id.as_str()).map(|p| p.1.clone()).collect();
    }
    Ok(list)
}

/// A snapshot's storage interval from its start to `end` (billed at the volume's size).
pub fn interval(s: &Snapshot, catalogue: &crate::catalog::Catalogue, end: DateTime<Utc>) -> Interval {
    Interval {
        account_id: s.owner.to_string(),
        resource_id: s.id.to_string(),
        resource_type: "snapshot".into(),
        usage_type: "EBS:SnapshotUsage".into(),
        service: billing::STORAGE_SERVICE.into(),
        start: s.started_at,
        end,
        unit_price: catalogue.storage.snapshot_gb_month,
        size_gb: s.volume_size_gb,
    }
}

pub(crate) async fn insert(c: &mut AnyConnection, s: &Snapshot) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO snapshots (id, account_id, volume_id, source_snapshot, volume_size_gb, description, state, started_at,
         instance_id, pause_vm) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(s.id.as_str())
    .bind(s.owner.as_str())
    .bind(&s.volume_id)
    .bind(&s.source_snapshot)
    .bind(s.volume_size_gb)
    .bind(&s.description)
    .bind(&s.state)
    .bind(ts(&s.started_at))
    .bind(&s.instance_id)
    .bind(s.pause_vm as i64)
    .execute(c)
    .await?;
    Ok(())
}

/// DescribeSnapshots' selectors besides filters.
#[derive(Debug, Clone, Default)]
pub struct SnapshotQuery {
    pub ids: Vec<String>,
    /// `self`, account ids (`amazon` matches nothing here).
    pub owners: Vec<String>,
    /// `self` or account ids that may create volumes from them.
    pub restorable_by: Vec<String>,
}

/// Who ModifySnapshotAttribute adds or removes.
#[derive(Debug, Clone, Default)]
pub struct PermissionChange {
    pub add: Vec<String>,
    pub remove: Vec<String>,
}

impl Control {
    pub async fn create_snapshot(
        &self,
        caller: &Caller,
        volume_id: &str,
        description: Option<String>,
        specs: &[TagSpec],
    ) -> ApiResult<Snapshot> {
        VolumeId::parse(volume_id)?;
        let tags = tags_for(specs, "snapshot")?;
        let mut tx = self.store().begin_write().await?;
        let v = super::volumes::by_id(tx.conn(), volume_id)
            .await?
            .filter(|v| v.owner == caller.account_id)
            .ok_or_else(|| not_found_for("volume", volume_id))?;
        if !matches!(v.state.as_str(), "available" | "in-use") {
            return Err(ApiError::Conflict {
                code: "IncorrectState",
                message: format!("The volume '{volume_id}' is in the '{}' state.", v.state),
            });
        }
        let s = Snapshot {
            id: SnapshotId::generate(),
            owner: caller.account_id.clone(),
            volume_id: volume_id.to_owned(),
            source_snapshot: None,
            volume_size_gb: v.size_gb,
            description: description.unwrap_or_default(),
            state: "pending".into(),
            started_at: Utc::now(),
            instance_id: None,
            pause_vm: false,
            permissions: Vec::new(),
            tags: tags.clone(),
        };
        insert(tx.conn(), &s).await?;
        put_tags(tx.conn(), &caller.account_id, s.id.as_str(), "snapshot", &tags).await?;
        tx.commit().await?;
        self.agent_wake.notify_one();
        Ok(s)
    }

    /// A snapshot the caller may see (own, shared with it, or public).
    pub async fn visible_snapshot(&self, c: &mut AnyConnection, caller: &Caller, id: &str) -> ApiResult<Snapshot> {
        SnapshotId::parse(id)?;
        all(c)
            .await?
            .into_iter()
            .find(|s| s.id.as_str() == id && s.visible_to(&caller.account_id))
            .ok_or_else(|| not_found_for("snapshot", id))
    }

    pub async fn describe_snapshots(
        &self,
        caller: &Caller,
        q: &SnapshotQuery,
        filters: &[Filter],
        max: Option<usize>,
        token: Option<&str>,
    ) -> ApiResult<(Vec<Snapshot>, Option<String>)> {
        let (ids, owners, restorable_by) = (&q.ids, &q.owners, &q.restorable_by);
        for id in ids {
            SnapshotId::parse(id)?;
        }
        filter::check_filters::<Snapshot>(filters)?;
        let mut c = self.store().read().await?;
        let me = &caller.account_id;
        let mut list: Vec<Snapshot> = all(&mut c).await?.into_iter().filter(|s| s.visible_to(me)).collect();
        let mut tags = store::tags_by_type(&mut c, me, "snapshot").await?;
        for s in &mut list {
            s.tags = tags.remove(s.id.as_str()).unwrap_or_default();
        }
        // Without ids or owners, EC2 lists every snapshot the caller can restore; keep that.
        list.retain(|s| {
            owners.is_empty()
                || owners.iter().any(|o| match o.as_str() {
                    "self" => &s.owner == me,
                    "amazon" => false,
                    id => s.owner.as_str() == id,
                })
        });
        list.retain(|s| {
            restorable_by.is_empty()
                || restorable_by.iter().any(|r| {
                    let who = if r == "self" { me.as_str() } else { r.as_str() };
                    s.owner.as_str() == who || s.permissions.iter().any(|p| p == "all" || p == who)
                })
        });
        filter::select_filter_page(
            list,
            ids,
            |s| s.id.as_str(),
            |id| not_found_for("snapshot", id),
            filters,
            max,
            token,
        )
    }

    pub async fn delete_snapshot(&self, caller: &Caller, id: &str) -> ApiResult<()> {
        let mut tx = self.store().begin_write().await?;
        let s = self.visible_snapshot(tx.conn(), caller, id).await?;
        if s.owner != caller.account_id {
            return Err(not_found_for("snapshot", id));
        }
        let used: Vec<(String,)> =
            sqlx::query_as("SELECT id FROM images WHERE root_snapshot_id = $1 AND state != 'deregistered'")
                .bind(id)
                .fetch_all(tx.conn())
                .await?;
        if let Some((image,)) = used.first() {
            return Err(ApiError::Conflict {
                code: "InvalidSnapshot.InUse",
                message: format!("The snapshot {id} is currently in use by {image}"),
            });
        }
        let creating: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM volumes WHERE snapshot_id = $1 AND state = 'creating'")
                .bind(id)
                .fetch_one(tx.conn())
                .await?;
        if s.state == "pending" || creating > 0 {
            return Err(ApiError::Conflict {
                code: "IncorrectState",
                message: format!("The snapshot {id} is being used (pending, or a volume is being made from it)"),
            });
        }
        billing::record(tx.conn(), &interval(&s, &self.catalogue, Utc::now())).await?;
        sqlx::query("DELETE FROM snapshots WHERE id = $1").bind(id).execute(tx.conn()).await?;
        store::delete_all_tags(tx.conn(), id).await?;
        tx.commit().await?;
        // The file goes with the next agent pass (it removes files no snapshot names).
        self.agent_wake.notify_one();
        Ok(())
    }

    pub async fn copy_snapshot(
        &self,
        caller: &Caller,
        source: &str,
        source_region: &str,
        description: Option<String>,
        specs: &[TagSpec],
    ) -> ApiResult<Snapshot> {
        if source_region != self.region.name {
            return Err(ApiError::invalid_value(format!(
                "Unknown source region '{source_region}': this cloud has one region, {}",
                self.region.name
            )));
        }
        let tags = tags_for(specs, "snapshot")?;
        let mut tx = self.store().begin_write().await?;
        let src = self.visible_snapshot(tx.conn(), caller, source).await?;
        if src.state != "completed" {
            return Err(ApiError::Conflict {
                code: "IncorrectState",
                message: format!("Snapshot {source} is not completed"),
            });
        }
        let s = Snapshot {
            id: SnapshotId::generate(),
            owner: caller.account_id.clone(),
            volume_id: src.volume_id.clone(),
            source_snapshot: Some(src.id.to_string()),
            volume_size_gb: src.volume_size_gb,
            description: description.unwrap_or_else(|| format!("Copied for DestinationSnapshot from {source}")),
            state: "pending".into(),
            started_at: Utc::now(),
            instance_id: None,
            pause_vm: false,
            permissions: Vec::new(),
            tags: tags.clone(),
        };
        insert(tx.conn(), &s).await?;
        put_tags(tx.conn(), &caller.account_id, s.id.as_str(), "snapshot", &tags).await?;
        tx.commit().await?;
        self.agent_wake.notify_one();
        Ok(s)
    }

    pub async fn modify_snapshot_permissions(
        &self,
        caller: &Caller,
        id: &str,
        change: &PermissionChange,
    ) -> ApiResult<()> {
        let mut tx = self.store().begin_write().await?;
        let s = self.visible_snapshot(tx.conn(), caller, id).await?;
        if s.owner != caller.account_id {
            return Err(not_found_for("snapshot", id));
        }
        for who in change.add.iter().chain(&change.remove) {
            if who != "all" && !(who.len() == 12 && who.bytes().all(|b| b.is_ascii_digit())) {
                return Err(ApiError::invalid_value(format!("Invalid user id or group: {who}")));
            }
        }
        for who in &change.add {
            sqlx::query(
                "INSERT INTO snapshot_permissions (snapshot_id, grantee) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(id)
            .bind(who)
            .execute(tx.conn())
            .await?;
        }
        for who in &change.remove {
            sqlx::query("DELETE FROM snapshot_permissions WHERE snapshot_id = $1 AND grantee = $2")
                .bind(id)
                .bind(who)
                .execute(tx.conn())
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn snapshot_permissions(&self, caller: &Caller, id: &str) -> ApiResult<Vec<String>> {
        let mut c = self.store().read().await?;
        let s = self.visible_snapshot(&mut c, caller, id).await?;
        if s.owner != caller.account_id {
            return Err(not_found_for("snapshot", id));
        }
        Ok(s.permissions)
    }

    // ---- the agent's side

    pub async fn all_snapshots(&self) -> anyhow::Result<Vec<Snapshot>> {
        let mut c = self.store().read().await?;
        Ok(all(&mut c).await?)
    }

    pub async fn snapshot_done(&self, id: &SnapshotId, ok: bool) -> anyhow::Result<()> {
        let mut tx = self.store().begin_write().await?;
        sqlx::query("UPDATE snapshots SET state = $1 WHERE id = $2 AND state = 'pending'")
            .bind(if ok { "completed" } else { "error" })
            .bind(id.as_str())
            .execute(tx.conn())
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
