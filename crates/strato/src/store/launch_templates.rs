//! Launch template rows and their versions.

use chrono::{DateTime, Utc};
use sqlx::{AnyConnection, Row};

use super::{parse_ts, ts};
use crate::ids::{AccountId, LaunchTemplateId};

/// One launch template, without its versions.
#[derive(Debug, Clone)]
pub struct TemplateRow {
    pub id: LaunchTemplateId,
    pub owner: AccountId,
    pub name: String,
    pub default_version: i64,
    pub latest_version: i64,
    pub created_at: DateTime<Utc>,
}

/// One version of a launch template: its data is JSON named by the model's members.
#[derive(Debug, Clone)]
pub struct VersionRow {
    pub template_id: LaunchTemplateId,
    pub version: i64,
    pub description: Option<String>,
    pub data: String,
    pub created_at: DateTime<Utc>,
}

fn template(r: &sqlx::any::AnyRow) -> sqlx::Result<TemplateRow> {
    Ok(TemplateRow {
        id: LaunchTemplateId::from_db(r.try_get("id")?),
        owner: AccountId::from_db(r.try_get("account_id")?),
        name: r.try_get("name")?,
        default_version: r.try_get("default_version")?,
        latest_version: r.try_get("latest_version")?,
        created_at: parse_ts(&r.try_get::<String, _>("created_at")?),
    })
}

fn version(r: &sqlx::any::AnyRow) -> sqlx::Result<VersionRow> {
    Ok(VersionRow {
        template_id: LaunchTemplateId::from_db(r.try_get("template_id")?),
        version: r.try_get("version")?,
        description: r.try_get("description")?,
        data: r.try_get("data")?,
        created_at: parse_ts(&r.try_get::<String, _>("created_at")?),
    })
}

pub async fn insert(c: &mut AnyConnection, t: &TemplateRow) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO launch_templates (id, account_id, name, default_version, latest_version, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(t.id.as_str())
    .bind(t.owner.as_str())
    .bind(&t.name)
    .bind(t.default_version)
    .bind(t.latest_version)
    .bind(ts(&t.created_at))
    .execute(c)
    .await?;
    Ok(())
}

pub async fn insert_version(c: &mut AnyConnection, v: &VersionRow) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO launch_template_versions (template_id, version, description, data, created_at)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(v.template_id.as_str())
    .bind(v.version)
    .bind(&v.description)
    .bind(&v.data)
    .bind(ts(&v.created_at))
    .execute(c)
    .await?;
    Ok(())
}

/// The account's templates, by id.
pub async fn of_account(c: &mut AnyConnection, account: &AccountId) -> sqlx::Result<Vec<TemplateRow>> {
    let rows = sqlx::query("SELECT * FROM launch_templates WHERE account_id = $1 ORDER BY id")
        .bind(account.as_str())
        .fetch_all(c)
        .await?;
    rows.iter().map(template).collect()
}

/// One of the account's templates, by id or by name.
pub async fn find(
    c: &mut AnyConnection,
    account: &AccountId,
    id: Option<&str>,
    name: Option<&str>,
) -> sqlx::Result<Option<TemplateRow>> {
    let (column, value) = match (id, name) {
        (Some(id), _) => ("id", id),
        (None, Some(name)) => ("name", name),
        (None, None) => return Ok(None),
    };
    // The column is one of the two above, never from the request.
    let row = sqlx::query(&format!("SELECT * FROM launch_templates WHERE account_id = $1 AND {column} = $2"))
        .bind(account.as_str())
        .bind(value)
        .fetch_optional(c)
        .await?;
    row.as_ref().map(template).transpose()
}

/// Every version of a template, oldest first.
pub async fn versions(c: &mut AnyConnection, id: &LaunchTemplateId) -> sqlx::Result<Vec<VersionRow>> {
    let rows = sqlx::query("SELECT * FROM launch_template_versions WHERE template_id = $1 ORDER BY version")
        .bind(id.as_str())
        .fetch_all(c)
        .await?;
    rows.iter().map(version).collect()
}

pub async fn set_versions(c: &mut AnyConnection, id: &LaunchTemplateId, default: i64, latest: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE launch_templates SET default_version = $1, latest_version = $2 WHERE id = $3")
        .bind(default)
        .bind(latest)
        .bind(id.as_str())
        .execute(c)
        .await?;
    Ok(())
}

pub async fn delete(c: &mut AnyConnection, id: &LaunchTemplateId) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM launch_template_versions WHERE template_id = $1")
        .bind(id.as_str())
        .execute(&mut *c)
        .await?;
    sqlx::query("DELETE FROM launch_templates WHERE id = $1").bind(id.as_str()).execute(c).await?;
    Ok(())
}

pub async fn delete_version(c: &mut AnyConnection, id: &LaunchTemplateId, version: i64) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM launch_template_versions WHERE template_id = $1 AND version = $2")
        .bind(id.as_str())
        .bind(version)
        .execute(c)
        .await?;
    Ok(())
}
