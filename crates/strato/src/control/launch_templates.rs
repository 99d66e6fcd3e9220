//! Launch templates: a named, per-account list of numbered versions of launch data, one of
//! them the default. The data is what `RequestLaunchTemplateData` holds, kept as a JSON tree
//! named by the EC2 model's members (`api::model::to_tree`), so that RunInstances can take
//! it as its own parameters and Describe can answer it in `ResponseLaunchTemplateData`'s XML.
//!
//! Versions: `$Latest`, `$Default` or a number. A new version may start from a source
//! version, whose top-level members it keeps unless it gives them itself. The default
//! version cannot be deleted; deleting the template deletes them all.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::filter::{self, Filterable};
use super::model::{Caller, Tags};
use super::tags::{put_tags, validate_tags};
use super::Control;
use crate::api::error::{ApiError, ApiResult};
use crate::api::query::Filter;
use crate::ids::{AccountId, LaunchTemplateId};
use crate::store::{self, launch_templates as db};

/// The most versions one template may have (EC2's quota).
pub const MAX_VERSIONS: i64 = 10_000;

/// A launch template as DescribeLaunchTemplates shows it.
#[derive(Debug, Clone)]
pub struct LaunchTemplate {
    pub id: LaunchTemplateId,
    pub name: String,
    pub owner: AccountId,
    pub created_at: DateTime<Utc>,
    pub default_version: i64,
    pub latest_version: i64,
    pub tags: Tags,
}

/// One version, with its data.
#[derive(Debug, Clone)]
pub struct TemplateVersion {
    pub template_id: LaunchTemplateId,
    pub template_name: String,
    pub owner: AccountId,
    pub version: i64,
    pub description: Option<String>,
    pub default: bool,
    pub created_at: DateTime<Utc>,
    pub data: Value,
}

impl LaunchTemplate {
    fn from_row(r: db::TemplateRow, tags: Tags) -> Self {
        LaunchTemplate {
            id: r.id,
            name: r.name,
            owner: r.owner,
            created_at: r.created_at,
            default_version: r.default_version,
            latest_version: r.latest_version,
            tags,
        }
    }
}

impl Filterable for LaunchTemplate {
    const FILTERS: &'static [&'static str] = &["create-time", "launch-template-name"];
    fn filter_values(&self, name: &str) -> Vec<String> {
        match name {
            "create-time" => vec![crate::api::timestamp(&self.created_at)],
            "launch-template-name" => vec![self.name.clone()],
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

/// Which version a request means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSel {
    Latest,
    Default,
    Number(i64),
}

impl VersionSel {
    pub fn parse(s: &str) -> ApiResult<VersionSel> {
        match s {
            "$Latest" => Ok(VersionSel::Latest),
            "$Default" => Ok(VersionSel::Default),
            n => match n.parse::<i64>() {
                Ok(v) if v >= 1 => Ok(VersionSel::Number(v)),
                _ => Err(ApiError::invalid_value(format!(
                    "Invalid launch template version '{s}': a number from 1, $Latest or $Default"
                ))),
            },
        }
    }

    fn number(self, t: &db::TemplateRow) -> i64 {
        match self {
            VersionSel::Latest => t.latest_version,
            VersionSel::Default => t.default_version,
            VersionSel::Number(n) => n,
        }
    }
}

/// EC2's rule for template names: 3 to 128 of `a-z A-Z 0-9 ( ) . - / _` (the model checks
/// the length).
fn check_name(name: &str) -> ApiResult<()> {
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"().-/_".contains(&b)) {
        return Err(ApiError::invalid_value(format!(
            "Launch template name '{name}' may contain only letters, digits and ( ) . - / _"
        )));
    }
    Ok(())
}

/// What is checked of launch data when it is stored: its tag specifications (types a launch
/// tags, valid tags). Everything else is checked when an instance is launched from it, as
/// on EC2.
fn check_data(data: &Value) -> ApiResult<()> {
    for spec in data.get("TagSpecifications").and_then(Value::as_array).into_iter().flatten() {
        let kind = spec.get("ResourceType").and_then(Value::as_str).unwrap_or("");
        if !matches!(kind, "instance" | "volume" | "network-interface") {
            return Err(ApiError::invalid_value(format!(
                "'{kind}' is not a valid taggable resource type for a launch template (instance, volume, network-interface)"
            )));
        }
        let tags: Tags = spec
            .get("Tags")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|t| {
                let s = |k: &str| t.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
                (s("Key"), s("Value"))
            })
            .collect();
        validate_tags(&tags)?;
    }
    Ok(())
}

fn template_not_found(id: Option<&str>, name: Option<&str>) -> ApiError {
    match (id, name) {
        (Some(id), _) => ApiError::not_found(
            "InvalidLaunchTemplateId.NotFound",
            format!("The specified launch template, with template ID {id}, does not exist."),
        ),
        (None, Some(name)) => ApiError::not_found(
            "InvalidLaunchTemplateName.NotFoundException",
            format!("The specified launch template, with template name {name}, does not exist."),
        ),
        (None, None) => ApiError::MissingParameter("LaunchTemplateId or LaunchTemplateName".into()),
    }
}

fn version_not_found(t: &db::TemplateRow, v: i64) -> ApiError {
    ApiError::not_found(
        "InvalidLaunchTemplateId.VersionNotFound",
        format!("Could not find launch template version {v} for template {}", t.id),
    )
}

fn parse_data(v: &db::VersionRow) -> ApiResult<Value> {
    serde_json::from_str(&v.data).map_err(|e| ApiError::Internal(anyhow::anyhow!("launch template data: {e}")))
}

impl Control {
    /// One of the caller's templates, by id or name (exactly one of them given).
    async fn find_template(
        &self,
        c: &mut sqlx::AnyConnection,
        caller: &Caller,
        id: Option<&str>,
        name: Option<&str>,
    ) -> ApiResult<db::TemplateRow> {
        match (id, name) {
            (Some(_), Some(_)) => {
                return Err(ApiError::InvalidParameterCombination(
                    "Specify either LaunchTemplateId or LaunchTemplateName, not both".into(),
                ))
            }
            (Some(id), None) => {
                LaunchTemplateId::parse(id)?;
            }
            (None, Some(name)) => check_name(name)?,
            (None, None) => return Err(template_not_found(None, None)),
        }
        db::find(c, &caller.account_id, id, name).await?.ok_or_else(|| template_not_found(id, name))
    }

    pub async fn create_launch_template(
        &self,
        caller: &Caller,
        name: &str,
        description: Option<String>,
        data: Value,
        tags: Tags,
    ) -> ApiResult<LaunchTemplate> {
        check_name(name)?;
        check_data(&data)?;
        validate_tags(&tags)?;
        let mut tx = self.store().begin_write().await?;
        if db::find(tx.conn(), &caller.account_id, None, Some(name)).await?.is_some() {
            return Err(ApiError::duplicate(
                "InvalidLaunchTemplateName.AlreadyExistsException",
                format!("Launch template name already in use: {name}"),
            ));
        }
        let now = Utc::now();
        let row = db::TemplateRow {
            id: LaunchTemplateId::generate(),
            owner: caller.account_id.clone(),
            name: name.to_owned(),
            default_version: 1,
            latest_version: 1,
            created_at: now,
        };
        db::insert(tx.conn(), &row).await?;
        let version = db::VersionRow {
            template_id: row.id.clone(),
            version: 1,
            description,
            data: data.to_string(),
            created_at: now,
        };
        db::insert_version(tx.conn(), &version).await?;
        put_tags(tx.conn(), &caller.account_id, row.id.as_str(), "launch-template", &tags).await?;
        tx.commit().await?;
        tracing::info!(launch_template_id = %row.id, name, "launch template created");
        Ok(LaunchTemplate::from_row(row, tags))
    }

    pub async fn create_launch_template_version(
        &self,
        caller: &Caller,
        id: Option<&str>,
        name: Option<&str>,
        source: Option<&str>,
        description: Option<String>,
        mut data: Value,
    ) -> ApiResult<TemplateVersion> {
        check_data(&data)?;
        let mut tx = self.store().begin_write().await?;
        let t = self.find_template(tx.conn(), caller, id, name).await?;
        if let Some(source) = source {
            let n = VersionSel::parse(source)?.number(&t);
            let versions = db::versions(tx.conn(), &t.id).await?;
            let base = versions.iter().find(|v| v.version == n).ok_or_else(|| version_not_found(&t, n))?;
            // The new data's members replace the source's; the rest is kept.
            let mut merged = parse_data(base)?;
            if let (Value::Object(m), Value::Object(new)) = (&mut merged, data) {
                m.extend(new);
            }
            data = merged;
        }
        if t.latest_version >= MAX_VERSIONS {
            return Err(ApiError::LimitExceeded {
                code: "LaunchTemplateVersionLimitExceeded",
                message: format!("A launch template has at most {MAX_VERSIONS} versions"),
            });
        }
        let now = Utc::now();
        let v = db::VersionRow {
            template_id: t.id.clone(),
            version: t.latest_version + 1,
            description,
            data: data.to_string(),
            created_at: now,
        };
        db::insert_version(tx.conn(), &v).await?;
        db::set_versions(tx.conn(), &t.id, t.default_version, v.version).await?;
        tx.commit().await?;
        Ok(TemplateVersion {
            template_id: t.id,
            template_name: t.name,
            owner: t.owner,
            version: v.version,
            description: v.description,
            default: false,
            created_at: now,
            data,
        })
    }

    pub async fn describe_launch_templates(
        &self,
        caller: &Caller,
        ids: &[String],
        names: &[String],
        filters: &[Filter],
        max: Option<usize>,
        token: Option<&str>,
    ) -> ApiResult<(Vec<LaunchTemplate>, Option<String>)> {
        filter::check_filters::<LaunchTemplate>(filters)?;
        for id in ids {
            LaunchTemplateId::parse(id)?;
        }
        let mut c = self.store().read().await?;
        let mut tags = store::tags_by_type(&mut c, &caller.account_id, "launch-template").await?;
        let list: Vec<LaunchTemplate> = db::of_account(&mut c, &caller.account_id)
            .await?
            .into_iter()
            .map(|r| {
                let t = tags.remove(r.id.as_str()).unwrap_or_default();
                LaunchTemplate::from_row(r, t)
            })
            .collect();
        if let Some(id) = ids.iter().find(|id| !list.iter().any(|t| t.id.as_str() == id.as_str())) {
            return Err(template_not_found(Some(id), None));
        }
        if let Some(name) = names.iter().find(|n| !list.iter().any(|t| &t.name == *n)) {
            return Err(template_not_found(None, Some(name)));
        }
        let chosen: Vec<LaunchTemplate> = list
            .into_iter()
            .filter(|t| ids.is_empty() || ids.iter().any(|i| i.as_str() == t.id.as_str()))
            .filter(|t| names.is_empty() || names.contains(&t.name))
            .collect();
        filter::select_filter_page(
            chosen,
            &[],
            |t| t.id.as_str(),
            |id| template_not_found(Some(id), None),
            filters,
            max,
            token,
        )
    }

    /// DescribeLaunchTemplateVersions: the versions asked for (all when none is named) of one
    /// template, or `$Latest`/`$Default` of every template when none is named.
    #[allow(clippy::too_many_arguments)]
    pub async fn describe_launch_template_versions(
        &self,
        caller: &Caller,
        id: Option<&str>,
        name: Option<&str>,
        versions: &[String],
        min_version: Option<i64>,
        max_version: Option<i64>,
    ) -> ApiResult<Vec<TemplateVersion>> {
        let sels = versions.iter().map(|v| VersionSel::parse(v)).collect::<ApiResult<Vec<_>>>()?;
        let mut c = self.store().read().await?;
        let templates = if id.is_none() && name.is_none() {
            if sels.is_empty() || sels.iter().any(|s| matches!(s, VersionSel::Number(_))) {
                return Err(ApiError::MissingParameter(
                    "LaunchTemplateId or LaunchTemplateName (without one, only $Latest and $Default may be asked for)"
                        .into(),
                ));
            }
            db::of_account(&mut c, &caller.account_id).await?
        } else {
            vec![self.find_template(&mut c, caller, id, name).await?]
        };
        let mut out = Vec::new();
        for t in templates {
            let all = db::versions(&mut c, &t.id).await?;
            let wanted: Vec<i64> = sels.iter().map(|s| s.number(&t)).collect();
            for n in &wanted {
                if !all.iter().any(|v| v.version == *n) {
                    return Err(version_not_found(&t, *n));
                }
            }
            for v in all {
                let asked = if wanted.is_empty() {
                    min_version.is_none_or(|m| v.version >= m) && max_version.is_none_or(|m| v.version <= m)
                } else {
                    wanted.contains(&v.version)
                };
                if !asked {
                    continue;
                }
                out.push(TemplateVersion {
                    template_id: t.id.clone(),
                    template_name: t.name.clone(),
                    owner: t.owner.clone(),
                    version: v.version,
                    default: v.version == t.default_version,
                    data: parse_data(&v)?,
                    description: v.description,
                    created_at: v.created_at,
                });
            }
        }
        Ok(out)
    }

    /// ModifyLaunchTemplate: which version is the default.
    pub async fn modify_launch_template(
        &self,
        caller: &Caller,
        id: Option<&str>,
        name: Option<&str>,
        default_version: Option<&str>,
    ) -> ApiResult<LaunchTemplate> {
        let mut tx = self.store().begin_write().await?;
        let mut t = self.find_template(tx.conn(), caller, id, name).await?;
        if let Some(v) = default_version {
            let n = VersionSel::parse(v)?.number(&t);
            if !db::versions(tx.conn(), &t.id).await?.iter().any(|x| x.version == n) {
                return Err(version_not_found(&t, n));
            }
            t.default_version = n;
            db::set_versions(tx.conn(), &t.id, t.default_version, t.latest_version).await?;
        }
        let tags = store::tags_by_type(tx.conn(), &caller.account_id, "launch-template").await?;
        tx.commit().await?;
        let tags = tags.get(t.id.as_str()).cloned().unwrap_or_default();
        Ok(LaunchTemplate::from_row(t, tags))
    }

    pub async fn delete_launch_template(
        &self,
        caller: &Caller,
        id: Option<&str>,
        name: Option<&str>,
    ) -> ApiResult<LaunchTemplate> {
        let mut tx = self.store().begin_write().await?;
        let t = self.find_template(tx.conn(), caller, id, name).await?;
        db::delete(tx.conn(), &t.id).await?;
        store::delete_all_tags(tx.conn(), t.id.as_str()).await?;
        tx.commit().await?;
        tracing::info!(launch_template_id = %t.id, "launch template deleted");
        Ok(LaunchTemplate::from_row(t, Vec::new()))
    }

    /// DeleteLaunchTemplateVersions: each version is deleted or gets its own error, as EC2
    /// answers (the default version is not deleted).
    pub async fn delete_launch_template_versions(
        &self,
        caller: &Caller,
        id: Option<&str>,
        name: Option<&str>,
        versions: &[String],
    ) -> ApiResult<(LaunchTemplate, Vec<(String, Option<(&'static str, String)>)>)> {
        if versions.is_empty() {
            return Err(ApiError::MissingParameter("LaunchTemplateVersion".into()));
        }
        let mut tx = self.store().begin_write().await?;
        let mut t = self.find_template(tx.conn(), caller, id, name).await?;
        let mut existing: Vec<i64> = db::versions(tx.conn(), &t.id).await?.iter().map(|v| v.version).collect();
        let mut out = Vec::new();
        for v in versions {
            let n = match v.parse::<i64>() {
                Ok(n) if n >= 1 => n,
                _ => {
                    out.push((v.clone(), Some(("launchTemplateVersionDoesNotExist", format!("Invalid version {v}")))));
                    continue;
                }
            };
            if n == t.default_version {
                out.push((v.clone(), Some(("unexpectedError", "Cannot delete the default version".to_owned()))));
            } else if !existing.contains(&n) {
                out.push((
                    v.clone(),
                    Some(("launchTemplateVersionDoesNotExist", format!("The version {n} does not exist"))),
                ));
            } else {
                db::delete_version(tx.conn(), &t.id, n).await?;
                existing.retain(|x| *x != n);
                out.push((v.clone(), None));
            }
        }
        // $Latest is the highest version left.
        t.latest_version = existing.iter().copied().max().unwrap_or(t.default_version);
        db::set_versions(tx.conn(), &t.id, t.default_version, t.latest_version).await?;
        tx.commit().await?;
        Ok((LaunchTemplate::from_row(t, Vec::new()), out))
    }

    /// The launch data RunInstances starts from: (template id, version number, data).
    pub async fn resolve_launch_template(
        &self,
        caller: &Caller,
        id: Option<&str>,
        name: Option<&str>,
        version: Option<&str>,
    ) -> ApiResult<(LaunchTemplateId, i64, Value)> {
        let mut c = self.store().read().await?;
        let t = self.find_template(&mut c, caller, id, name).await?;
        let n = VersionSel::parse(version.unwrap_or("$Default"))?.number(&t);
        let versions = db::versions(&mut c, &t.id).await?;
        let v = versions.iter().find(|v| v.version == n).ok_or_else(|| version_not_found(&t, n))?;
        Ok((t.id.clone(), n, parse_data(v)?))
    }
}
