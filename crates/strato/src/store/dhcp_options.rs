//! DHCP options sets and which VPC uses which.

use chrono::{DateTime, Utc};
use sqlx::{AnyConnection, Row};

use super::{parse_ts, ts};
use crate::ids::{AccountId, DhcpOptionsId, VpcId};

#[derive(Debug, Clone)]
pub struct DhcpOptionsRow {
    pub id: DhcpOptionsId,
    pub owner: AccountId,
    /// JSON: `[["domain-name-servers", ["10.0.0.2"]], ...]`.
    pub config: String,
    pub created_at: DateTime<Utc>,
}

pub async fn insert(c: &mut AnyConnection, d: &DhcpOptionsRow) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO dhcp_options (id, account_id, config, created_at) VALUES ($1, $2, $3, $4)")
        .bind(d.id.as_str())
        .bind(d.owner.as_str())
        .bind(&d.config)
        .bind(ts(&d.created_at))
        .execute(c)
        .await?;
    Ok(())
}

pub async fn of_account(c: &mut AnyConnection, account: &AccountId) -> sqlx::Result<Vec<DhcpOptionsRow>> {
    let rows = sqlx::query("SELECT * FROM dhcp_options WHERE account_id = $1 ORDER BY id")
        .bind(account.as_str())
        .fetch_all(c)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(DhcpOptionsRow {
                id: DhcpOptionsId::from_db(r.try_get("id")?),
                owner: AccountId::from_db(r.try_get("account_id")?),
                config: r.try_get("config")?,
                created_at: parse_ts(&r.try_get::<String, _>("created_at")?),
            })
        })
        .collect()
}

/// Every set in use by some VPC, by id (for the network views of all VPCs).
pub async fn in_use(c: &mut AnyConnection) -> sqlx::Result<Vec<(String, String)>> {
    sqlx::query_as(
        "SELECT d.id, d.config FROM dhcp_options d WHERE d.id IN (SELECT dhcp_options_id FROM vpcs WHERE dhcp_options_id IS NOT NULL)",
    )
    .fetch_all(c)
    .await
}

pub async fn delete(c: &mut AnyConnection, id: &DhcpOptionsId) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM dhcp_options WHERE id = $1").bind(id.as_str()).execute(c).await?;
    Ok(())
}

/// Sets a VPC's options set (`None`: the default).
pub async fn associate(c: &mut AnyConnection, vpc: &VpcId, id: Option<&DhcpOptionsId>) -> sqlx::Result<()> {
    sqlx::query("UPDATE vpcs SET dhcp_options_id = $1 WHERE id = $2")
        .bind(id.map(|i| i.as_str().to_owned()))
        .bind(vpc.as_str())
        .execute(c)
        .await?;
    Ok(())
}
