//! Instance rows.

use chrono::{DateTime, Utc};
use sqlx::{AnyConnection, Row};

use super::{parse_ts, ts};
use crate::control::instance_state::InstanceState;
use crate::control::instances::Instance;
use crate::ids::{AccountId, InstanceId};

fn from_row(r: &sqlx::any::AnyRow) -> sqlx::Result<Instance> {
    let groups: String = r.try_get("security_groups")?;
    Ok(Instance {
        id: InstanceId::from_db(r.try_get("id")?),
        owner: AccountId::from_db(r.try_get("account_id")?),
        reservation_id: r.try_get("reservation_id")?,
        launch_index: r.try_get("launch_index")?,
        image_id: r.try_get("image_id")?,
        instance_type: r.try_get("instance_type")?,
        state: InstanceState::parse(&r.try_get::<String, _>("state")?).unwrap_or(InstanceState::Stopped),
        state_reason_code: r.try_get("state_reason_code")?,
        state_reason: r.try_get("state_reason")?,
        transition_reason: r.try_get("transition_reason")?,
        key_name: r.try_get("key_name")?,
        public_key: r.try_get("public_key")?,
        subnet_id: r.try_get("subnet_id")?,
        vpc_id: r.try_get("vpc_id")?,
        availability_zone: r.try_get("availability_zone")?,
        private_ip: r.try_get("private_ip")?,
        security_groups: serde_json::from_str(&groups).unwrap_or_default(),
        user_data: r.try_get("user_data")?,
        root_volume_id: r.try_get("root_volume_id")?,
        root_size_gb: r.try_get("root_size_gb")?,
        delete_on_termination: r.try_get::<i64, _>("delete_on_termination")? != 0,
        disable_api_termination: r.try_get::<i64, _>("disable_api_termination")? != 0,
        shutdown_behavior: r.try_get("shutdown_behavior")?,
        tokens_required: r.try_get::<i64, _>("tokens_required")? != 0,
        force_stop: r.try_get::<i64, _>("force_stop")? != 0,
        reboot_requested: r.try_get::<i64, _>("reboot_requested")? != 0,
        status_ok: r.try_get::<i64, _>("status_ok")? != 0,
        client_token: r.try_get("client_token")?,
        request_hash: r.try_get("request_hash")?,
        launch_time: parse_ts(&r.try_get::<String, _>("launch_time")?),
        state_changed_at: parse_ts(&r.try_get::<String, _>("state_changed_at")?),
        generation: r.try_get("generation")?,
        public_ip: r.try_get("public_ip")?,
        wants_public_ip: r.try_get::<i64, _>("wants_public_ip")? != 0,
        host_id: r.try_get("host_id")?,
        auto_recovery: r.try_get::<i64, _>("auto_recovery")? != 0,
        credit_spec: r.try_get("credit_spec")?,
        disable_api_stop: r.try_get::<i64, _>("disable_api_stop")? != 0,
        ebs_optimized: r.try_get::<i64, _>("ebs_optimized")? != 0,
        tags: Vec::new(),
        block_devices: Vec::new(),
    })
}

pub async fn insert(c: &mut AnyConnection, i: &Instance) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO instances (id, account_id, reservation_id, launch_index, image_id, instance_type, state, state_reason_code,
         state_reason, transition_reason, key_name, public_key, subnet_id, vpc_id, availability_zone, private_ip, security_groups,
         user_data, root_volume_id, root_size_gb, delete_on_termination, disable_api_termination, shutdown_behavior,
         tokens_required, client_token, request_hash, launch_time, state_changed_at, generation, public_ip, wants_public_ip, host_id, auto_recovery,
         credit_spec, disable_api_stop, ebs_optimized)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, 0, $29, $30, $31, $32,
         $33, $34, $35)",
    )
    .bind(i.id.as_str())
    .bind(i.owner.as_str())
    .bind(&i.reservation_id)
    .bind(i.launch_index)
    .bind(&i.image_id)
    .bind(&i.instance_type)
    .bind(i.state.name())
    .bind(&i.state_reason_code)
    .bind(&i.state_reason)
    .bind(&i.transition_reason)
    .bind(&i.key_name)
    .bind(&i.public_key)
    .bind(&i.subnet_id)
    .bind(&i.vpc_id)
    .bind(&i.availability_zone)
    .bind(&i.private_ip)
    .bind(serde_json::to_string(&i.security_groups).unwrap_or_else(|_| "[]".into()))
    .bind(&i.user_data)
    .bind(&i.root_volume_id)
    .bind(i.root_size_gb)
    .bind(i.delete_on_termination as i64)
    .bind(i.disable_api_termination as i64)
    .bind(&i.shutdown_behavior)
    .bind(i.tokens_required as i64)
    .bind(&i.client_token)
    .bind(&i.request_hash)
    .bind(ts(&i.launch_time))
    .bind(ts(&i.state_changed_at))
    .bind(&i.public_ip)
    .bind(i.wants_public_ip as i64)
    .bind(i.host_id.as_deref())
    .bind(i.auto_recovery as i64)
    .bind(&i.credit_spec)
    .bind(i.disable_api_stop as i64)
    .bind(i.ebs_optimized as i64)
    .execute(c)
    .await?;
    Ok(())
}

pub async fn of_account(c: &mut AnyConnection, account: &AccountId) -> sqlx::Result<Vec<Instance>> {
    let rows = sqlx::query("SELECT * FROM instances WHERE account_id = $1 ORDER BY launch_time, launch_index")
        .bind(account.as_str())
        .fetch_all(c)
        .await?;
    rows.iter().map(from_row).collect()
}

/// Every instance that is not terminated (the agent's work list, and capacity checks).
pub async fn live(c: &mut AnyConnection) -> sqlx::Result<Vec<Instance>> {
    let rows =
        sqlx::query("SELECT * FROM instances WHERE state != 'terminated' ORDER BY launch_time").fetch_all(c).await?;
    rows.iter().map(from_row).collect()
}

/// The instances placed on `host` that are not terminated.
pub async fn live_on(c: &mut AnyConnection, host: &str) -> sqlx::Result<Vec<Instance>> {
    let rows = sqlx::query("SELECT * FROM instances WHERE host_id = $1 AND state != 'terminated' ORDER BY launch_time")
        .bind(host)
        .fetch_all(c)
        .await?;
    rows.iter().map(from_row).collect()
}

/// The ids of the instances not on `host` (or on none) that are not terminated.
pub async fn live_ids_elsewhere(c: &mut AnyConnection, host: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT id FROM instances WHERE state != 'terminated' AND (host_id IS NULL OR host_id != $1)")
        .bind(host)
        .fetch_all(c)
        .await
}

pub async fn by_id(c: &mut AnyConnection, id: &InstanceId) -> sqlx::Result<Option<Instance>> {
    let row = sqlx::query("SELECT * FROM instances WHERE id = $1").bind(id.as_str()).fetch_optional(c).await?;
    row.as_ref().map(from_row).transpose()
}

/// Moves an instance to a new state, bumping its generation.
pub async fn set_state(
    c: &mut AnyConnection,
    id: &InstanceId,
    state: InstanceState,
    reason: Option<(&str, &str)>,
    transition_reason: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE instances SET state = $1, state_reason_code = $2, state_reason = $3, transition_reason = $4, state_changed_at = $5,
         generation = generation + 1, force_stop = CASE WHEN $6 IN ('stopped', 'terminated') THEN 0 ELSE force_stop END,
         status_ok = CASE WHEN $7 = 'running' THEN status_ok ELSE 0 END,
         public_ip = CASE WHEN $8 = 'terminated' THEN NULL
                          WHEN $9 = 'stopped' AND id NOT IN (SELECT instance_id FROM addresses WHERE instance_id IS NOT NULL) THEN NULL
                          ELSE public_ip END
         WHERE id = $10",
    )
    .bind(state.name())
    .bind(reason.map(|r| r.0))
    .bind(reason.map(|r| r.1))
    .bind(transition_reason)
    .bind(ts(&now))
    .bind(state.name())
    .bind(state.name())
    .bind(state.name())
    .bind(state.name())
    .bind(id.as_str())
    .execute(&mut *c)
    .await?;
    if state == InstanceState::Terminated {
        // A terminated instance lets go of its elastic IP (the allocation stays).
        sqlx::query("UPDATE addresses SET instance_id = NULL, association_id = NULL WHERE instance_id = $1")
            .bind(id.as_str())
            .execute(&mut *c)
            .await?;
        // Its volumes: DeleteOnTermination ones go, the others are detached.
        sqlx::query(
            "UPDATE volumes SET state = CASE WHEN delete_on_termination = 1 THEN 'deleting' ELSE 'available' END,
             instance_id = NULL, device = NULL, attach_state = NULL, attach_time = NULL, force_detach = 0
             WHERE instance_id = $1",
        )
        .bind(id.as_str())
        .execute(c)
        .await?;
    }
    Ok(())
}

/// Sets one of the agent's flags: `force_stop`, `reboot_requested` or `status_ok`.
pub async fn set_flag(c: &mut AnyConnection, id: &InstanceId, flag: &str, value: bool) -> sqlx::Result<()> {
    // The column comes from this fixed list, never from a request.
    let column = match flag {
        "force_stop" => "force_stop",
        "reboot_requested" => "reboot_requested",
        "status_ok" => "status_ok",
        _ => return Err(sqlx::Error::ColumnNotFound(flag.to_owned())),
    };
    sqlx::query(&format!("UPDATE instances SET {column} = $1 WHERE id = $2"))
        .bind(value as i64)
        .bind(id.as_str())
        .execute(c)
        .await?;
    Ok(())
}

/// Writes the attributes ModifyInstanceAttribute and ModifyInstanceMetadataOptions change.
pub async fn update_attributes(c: &mut AnyConnection, i: &Instance) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE instances SET instance_type = $1, user_data = $2, disable_api_termination = $3, shutdown_behavior = $4,
         security_groups = $5, tokens_required = $6, auto_recovery = $7, credit_spec = $8, disable_api_stop = $9,
         ebs_optimized = $10 WHERE id = $11",
    )
    .bind(&i.instance_type)
    .bind(&i.user_data)
    .bind(i.disable_api_termination as i64)
    .bind(&i.shutdown_behavior)
    .bind(serde_json::to_string(&i.security_groups).unwrap_or_else(|_| "[]".into()))
    .bind(i.tokens_required as i64)
    .bind(i.auto_recovery as i64)
    .bind(&i.credit_spec)
    .bind(i.disable_api_stop as i64)
    .bind(i.ebs_optimized as i64)
    .bind(i.id.as_str())
    .execute(c)
    .await?;
    Ok(())
}

/// Every public address in use: instances' and elastic IPs.
pub async fn public_ips_in_use(c: &mut AnyConnection) -> sqlx::Result<std::collections::HashSet<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT public_ip FROM instances WHERE public_ip IS NOT NULL UNION SELECT public_ip FROM addresses",
    )
    .fetch_all(c)
    .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

pub async fn set_public_ip(c: &mut AnyConnection, id: &InstanceId, ip: Option<&str>) -> sqlx::Result<()> {
    sqlx::query("UPDATE instances SET public_ip = $1 WHERE id = $2").bind(ip).bind(id.as_str()).execute(c).await?;
    Ok(())
}

pub async fn set_host(c: &mut AnyConnection, id: &InstanceId, host: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE instances SET host_id = $1 WHERE id = $2").bind(host).bind(id.as_str()).execute(c).await?;
    Ok(())
}

/// Sets the state reason without a state change (an instance left impaired by a dead host).
pub async fn set_state_reason(c: &mut AnyConnection, id: &InstanceId, code: &str, message: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE instances SET state_reason_code = $1, state_reason = $2 WHERE id = $3")
        .bind(code)
        .bind(message)
        .bind(id.as_str())
        .execute(c)
        .await?;
    Ok(())
}
