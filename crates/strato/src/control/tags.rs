//! Tags: CreateTags, DeleteTags, DescribeTags, and the TagSpecifications of create calls.

use sqlx::AnyConnection;

use super::filter::{self, Filterable};
use super::model::{Caller, Tags};
use super::Control;
use crate::api::error::{ApiError, ApiResult};
use crate::api::query::{Filter, TagSpec};
use crate::ids::{resource_type_of, AccountId};
use crate::store;

/// EC2's limit of tags per resource.
pub const MAX_TAGS: usize = 50;

pub fn validate_tags(tags: &[(String, String)]) -> ApiResult<()> {
    if tags.len() > MAX_TAGS {
        return Err(ApiError::LimitExceeded {
            code: "TagLimitExceeded",
            message: format!("The maximum number of tags per resource is {MAX_TAGS}"),
        });
    }
    for (k, v) in tags {
        if k.is_empty() || k.chars().count() > 128 {
            return Err(ApiError::invalid_value(format!("Tag key '{k}' must be 1 to 128 characters long")));
        }
        if v.chars().count() > 256 {
            return Err(ApiError::invalid_value(format!("Tag value of key '{k}' must be at most 256 characters long")));
        }
        if k.to_ascii_lowercase().starts_with("aws:") {
            return Err(ApiError::invalid_value("Tag keys starting with 'aws:' are reserved for internal use"));
        }
    }
    Ok(())
}

/// The tags of a create call for `resource_type`. A specification for another type, or two
/// for the same type, is an error, as on EC2.
pub fn tags_for(specs: &[TagSpec], resource_type: &str) -> ApiResult<Tags> {
    Ok(tags_for_types(specs, &[resource_type])?.into_iter().next().unwrap_or_default())
}

/// The tags of a create call that makes resources of several types (RunInstances tags its
/// instances, their volumes and their network interfaces): one set per type of `types`, in
/// that order. A specification for another type, or two for one type, is an error.
pub fn tags_for_types(specs: &[TagSpec], types: &[&str]) -> ApiResult<Vec<Tags>> {
    let mut out: Vec<Option<Tags>> = vec![None; types.len()];
    for s in specs {
        let Some(n) = types.iter().position(|t| *t == s.resource_type) else {
            return Err(ApiError::invalid_value(format!(
                "'{}' is not a valid taggable resource type for this operation.",
                s.resource_type
            )));
        };
        if out[n].is_some() {
            return Err(ApiError::invalid_value(format!(
                "The tag specification for resource type '{}' is given twice",
                s.resource_type
            )));
        }
        validate_tags(&s.tags)?;
        out[n] = Some(s.tags.clone());
    }
    Ok(out.into_iter().map(Option::unwrap_or_default).collect())
}

pub async fn put_tags(
    c: &mut AnyConnection,
    account: &AccountId,
    id: &str,
    resource_type: &str,
    tags: &Tags,
) -> ApiResult<()> {
    for (k, v) in tags {
        store::put_tag(c, account, id, resource_type, k, v).await?;
    }
    if store::tag_count(c, id).await? as usize > MAX_TAGS {
        return Err(ApiError::LimitExceeded {
            code: "TagLimitExceeded",
            message: format!("The maximum number of tags per resource is {MAX_TAGS}"),
        });
    }
    Ok(())
}

/// One row of DescribeTags.
#[derive(Debug, Clone)]
pub struct TagRow {
    pub resource_id: String,
    pub resource_type: String,
    pub key: String,
    pub value: String,
    sort: String,
    one: Tags,
}

impl Filterable for TagRow {
    const FILTERS: &'static [&'static str] = &["key", "value", "resource-id", "resource-type"];
    fn filter_values(&self, name: &str) -> Vec<String> {
        match name {
            "key" => vec![self.key.clone()],
            "value" => vec![self.value.clone()],
            "resource-id" => vec![self.resource_id.clone()],
            "resource-type" => vec![self.resource_type.clone()],
            _ => vec![],
        }
    }
    fn tags(&self) -> &Tags {
        &self.one
    }
    fn sort_key(&self) -> &str {
        &self.sort
    }
}

/// Checks that every id names a resource of the caller's, with the NotFound code of its kind.
async fn check_owned(c: &mut AnyConnection, caller: &Caller, ids: &[String]) -> ApiResult<Vec<&'static str>> {
    let mut types = Vec::new();
    for id in ids {
        let Some(kind) = resource_type_of(id) else {
            return Err(ApiError::not_found("InvalidID", format!("The ID '{id}' is not valid")));
        };
        if store::owns(c, &caller.account_id, kind, id).await? != Some(true) {
            return Err(not_found_for(kind, id));
        }
        types.push(kind);
    }
    Ok(types)
}

/// The `...NotFound` error EC2 gives for an id of this kind.
pub fn not_found_for(kind: &str, id: &str) -> ApiError {
    let (code, what) = match kind {
        "instance" => ("InvalidInstanceID.NotFound", "instance ID"),
        "volume" => ("InvalidVolume.NotFound", "volume"),
        "snapshot" => ("InvalidSnapshot.NotFound", "snapshot"),
        "image" => ("InvalidAMIID.NotFound", "image id"),
        "security-group" => ("InvalidGroup.NotFound", "security group"),
        "security-group-rule" => ("InvalidSecurityGroupRuleId.NotFound", "security group rule"),
        "vpc" => ("InvalidVpcID.NotFound", "vpc ID"),
        "subnet" => ("InvalidSubnetID.NotFound", "subnet ID"),
        "key-pair" => ("InvalidKeyPair.NotFound", "key pair"),
        "network-interface" => ("InvalidNetworkInterfaceID.NotFound", "network interface"),
        "elastic-ip" => ("InvalidAllocationID.NotFound", "allocation ID"),
        "route-table" => ("InvalidRouteTableID.NotFound", "route table ID"),
        "network-acl" => ("InvalidNetworkAclID.NotFound", "network ACL"),
        "internet-gateway" => ("InvalidInternetGatewayID.NotFound", "internet gateway"),
        "launch-template" => ("InvalidLaunchTemplateId.NotFound", "launch template ID"),
        "dhcp-options" => ("InvalidDhcpOptionID.NotFound", "dhcp option ID"),
        _ => ("InvalidID", "ID"),
    };
    ApiError::not_found(code, format!("The {what} '{id}' does not exist"))
}

impl Control {
    pub async fn create_tags(&self, caller: &Caller, ids: &[String], tags: &Tags) -> ApiResult<()> {
        if ids.is_empty() {
            return Err(ApiError::MissingParameter("ResourceId".into()));
        }
        if tags.is_empty() {
            return Err(ApiError::MissingParameter("Tag".into()));
        }
        validate_tags(tags)?;
        let mut tx = self.store().begin_write().await?;
        let types = check_owned(tx.conn(), caller, ids).await?;
        for (id, kind) in ids.iter().zip(types) {
            put_tags(tx.conn(), &caller.account_id, id, kind, tags).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deletes tags by key, or by key and value when a value is given (as the wire says:
    /// `Tag.N.Value` present, even empty, means "only with this value").
    pub async fn delete_tags(
        &self,
        caller: &Caller,
        ids: &[String],
        tags: &[(String, Option<String>)],
    ) -> ApiResult<()> {
        if ids.is_empty() {
            return Err(ApiError::MissingParameter("ResourceId".into()));
        }
        let mut tx = self.store().begin_write().await?;
        check_owned(tx.conn(), caller, ids).await?;
        for id in ids {
            if tags.is_empty() {
                store::delete_all_tags(tx.conn(), id).await?;
            }
            for (k, v) in tags {
                store::delete_tag(tx.conn(), &caller.account_id, id, k, v.as_deref()).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn describe_tags(
        &self,
        caller: &Caller,
        filters: &[Filter],
        max: Option<usize>,
        token: Option<&str>,
    ) -> ApiResult<(Vec<TagRow>, Option<String>)> {
        filter::check_filters::<TagRow>(filters)?;
        let mut c = self.store().read().await?;
        let rows: Vec<TagRow> = store::tags_of_account(&mut c, &caller.account_id)
            .await?
            .into_iter()
            .map(|(resource_id, resource_type, key, value)| TagRow {
                sort: format!("{resource_id}\u{0}{key}"),
                one: vec![(key.clone(), value.clone())],
                resource_id,
                resource_type,
                key,
                value,
            })
            .filter(|r| filter::matches(r, filters))
            .collect();
        filter::paginate(rows, max, token)
    }
}
