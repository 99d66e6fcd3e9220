//! DHCP options sets: what a VPC's DHCP server (its dnsmasq) hands the instances: DNS
//! servers (`AmazonProvidedDNS` is the VPC's own, at its base address + 2), the domain name,
//! NTP and NetBIOS servers. A VPC uses one set or `default`; a set in use cannot be deleted.
//! Values are checked strictly here (addresses, domain names) because they become dnsmasq
//! options.

use std::net::Ipv4Addr;

use chrono::Utc;

use super::filter::{self, Filterable};
use super::model::{Caller, Tags};
use super::network::vpc_not_found;
use super::tags::{not_found_for, put_tags, validate_tags};
use super::Control;
use crate::api::error::{ApiError, ApiResult};
use crate::api::query::Filter;
use crate::ids::{AccountId, DhcpOptionsId, VpcId};
use crate::store::{self, dhcp_options as db};

pub use crate::net::{dnsmasq_options, DhcpConfig};

#[derive(Debug, Clone)]
pub struct DhcpOptions {
    pub id: DhcpOptionsId,
    pub owner: AccountId,
    pub config: DhcpConfig,
    pub tags: Tags,
}

impl Filterable for DhcpOptions {
    const FILTERS: &'static [&'static str] = &["dhcp-options-id", "key", "value", "owner-id"];
    fn filter_values(&self, name: &str) -> Vec<String> {
        match name {
            "dhcp-options-id" => vec![self.id.to_string()],
            "key" => self.config.iter().map(|(k, _)| k.clone()).collect(),
            "value" => self.config.iter().flat_map(|(_, v)| v.clone()).collect(),
            "owner-id" => vec![self.owner.to_string()],
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

fn addresses(key: &str, values: &[String], allow_amazon: bool) -> ApiResult<()> {
    if values.is_empty() || values.len() > 4 {
        return Err(ApiError::invalid_value(format!("{key} takes 1 to 4 values")));
    }
    for v in values {
        if !(allow_amazon && v == "AmazonProvidedDNS") && v.parse::<Ipv4Addr>().is_err() {
            return Err(ApiError::invalid_value(format!("Invalid value '{v}' for {key}: an IPv4 address")));
        }
    }
    Ok(())
}

/// Checks a set as CreateDhcpOptions gives it.
pub fn check_config(config: &DhcpConfig) -> ApiResult<()> {
    if config.is_empty() {
        return Err(ApiError::MissingParameter("DhcpConfiguration".into()));
    }
    for (i, (key, values)) in config.iter().enumerate() {
        if config[..i].iter().any(|(k, _)| k == key) {
            return Err(ApiError::invalid_value(format!("The option {key} is given twice")));
        }
        match key.as_str() {
            "domain-name-servers" => addresses(key, values, true)?,
            "ntp-servers" | "netbios-name-servers" => addresses(key, values, false)?,
            "domain-name" => {
                let names: Vec<&str> = values.iter().flat_map(|v| v.split_whitespace()).collect();
                if names.is_empty()
                    || names.iter().any(|n| {
                        n.len() > 255 || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
                    })
                {
                    return Err(ApiError::invalid_value(format!(
                        "Invalid value '{}' for domain-name: domain names of letters, digits, dots and hyphens",
                        values.join(" ")
                    )));
                }
            }
            "netbios-node-type" => {
                if !matches!(values.as_slice(), [v] if matches!(v.as_str(), "1" | "2" | "4" | "8")) {
                    return Err(ApiError::invalid_value("netbios-node-type is one of 1, 2, 4, 8"));
                }
            }
            "ipv6-address-preferred-lease-time" => {
                return Err(ApiError::UnsupportedOperation(
                    "Strato's VPCs have no IPv6 yet (ipv6-address-preferred-lease-time)".into(),
                ))
            }
            other => return Err(ApiError::invalid_value(format!("Invalid DHCP option key '{other}'"))),
        }
    }
    Ok(())
}

fn parse_config(text: &str) -> ApiResult<DhcpConfig> {
    serde_json::from_str(text).map_err(|e| ApiError::Internal(anyhow::anyhow!("DHCP options: {e}")))
}

impl Control {
    pub async fn create_dhcp_options(&self, caller: &Caller, config: DhcpConfig, tags: Tags) -> ApiResult<DhcpOptions> {
        check_config(&config)?;
        validate_tags(&tags)?;
        let row = db::DhcpOptionsRow {
            id: DhcpOptionsId::generate(),
            owner: caller.account_id.clone(),
            config: serde_json::to_string(&config).map_err(|e| ApiError::Internal(e.into()))?,
            created_at: Utc::now(),
        };
        let mut tx = self.store().begin_write().await?;
        db::insert(tx.conn(), &row).await?;
        put_tags(tx.conn(), &caller.account_id, row.id.as_str(), "dhcp-options", &tags).await?;
        tx.commit().await?;
        Ok(DhcpOptions { id: row.id, owner: row.owner, config, tags })
    }

    pub async fn describe_dhcp_options(
        &self,
        caller: &Caller,
        ids: &[String],
        filters: &[Filter],
        max: Option<usize>,
        token: Option<&str>,
    ) -> ApiResult<(Vec<DhcpOptions>, Option<String>)> {
        for id in ids {
            DhcpOptionsId::parse(id)?;
        }
        filter::check_filters::<DhcpOptions>(filters)?;
        let mut c = self.store().read().await?;
        let mut tags = store::tags_by_type(&mut c, &caller.account_id, "dhcp-options").await?;
        let mut list = Vec::new();
        for r in db::of_account(&mut c, &caller.account_id).await? {
            list.push(DhcpOptions {
                tags: tags.remove(r.id.as_str()).unwrap_or_default(),
                config: parse_config(&r.config)?,
                id: r.id,
                owner: r.owner,
            });
        }
        filter::select_filter_page(
            list,
            ids,
            |d| d.id.as_str(),
            |id| not_found_for("dhcp-options", id),
            filters,
            max,
            token,
        )
    }

    pub async fn delete_dhcp_options(&self, caller: &Caller, id: &str) -> ApiResult<()> {
        let id = DhcpOptionsId::parse(id)?;
        let mut tx = self.store().begin_write().await?;
        if !db::of_account(tx.conn(), &caller.account_id).await?.iter().any(|d| d.id == id) {
            return Err(not_found_for("dhcp-options", id.as_str()));
        }
        let vpcs = store::vpcs(tx.conn(), &caller.account_id).await?;
        if let Some(v) = vpcs.iter().find(|v| v.dhcp_options_id.as_deref() == Some(id.as_str())) {
            return Err(ApiError::DependencyViolation(format!(
                "The dhcpOptions '{id}' has dependencies and cannot be deleted (it is associated with {}).",
                v.id
            )));
        }
        db::delete(tx.conn(), &id).await?;
        store::delete_all_tags(tx.conn(), id.as_str()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// AssociateDhcpOptions: `default` or one of the caller's sets, for one of its VPCs.
    /// The VPC's dnsmasq is restarted with the new options; instances get them at their
    /// next lease renewal or boot, as on EC2.
    pub async fn associate_dhcp_options(&self, caller: &Caller, id: &str, vpc_id: &str) -> ApiResult<()> {
        let vpc_id = VpcId::parse(vpc_id)?;
        let set = match id {
            "default" => None,
            other => Some(DhcpOptionsId::parse(other)?),
        };
        let mut tx = self.store().begin_write().await?;
        if !store::vpcs(tx.conn(), &caller.account_id).await?.iter().any(|v| v.id == vpc_id) {
            return Err(vpc_not_found(vpc_id.as_str()));
        }
        if let Some(set) = &set {
            if !db::of_account(tx.conn(), &caller.account_id).await?.iter().any(|d| &d.id == set) {
                return Err(not_found_for("dhcp-options", set.as_str()));
            }
        }
        db::associate(tx.conn(), &vpc_id, set.as_ref()).await?;
        tx.commit().await?;
        self.agent_wake.notify_one();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(v: &[(&str, &[&str])]) -> DhcpConfig {
        v.iter().map(|(k, vs)| ((*k).to_owned(), vs.iter().map(|s| (*s).to_owned()).collect())).collect()
    }

    #[test]
    fn sets_are_checked_and_become_dnsmasq_options() {
        let c =
            cfg(&[("domain-name-servers", &["AmazonProvidedDNS", "10.0.0.53"]), ("domain-name", &["corp.example"])]);
        check_config(&c).expect("valid");
        let opts = dnsmasq_options(&c, Some(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(
            opts,
            ["--dhcp-option=option:dns-server,10.0.0.2,10.0.0.53", "--dhcp-option=option:domain-name,corp.example"]
        );
        // Nothing that could become another dnsmasq option gets through.
        for bad in [
            cfg(&[("domain-name", &["a.com,option:router"])]),
            cfg(&[("domain-name-servers", &["10.0.0.1,10.0.0.2"])]),
            cfg(&[("ntp-servers", &["pool.ntp.org"])]),
            cfg(&[("no-such-key", &["x"])]),
            cfg(&[("domain-name-servers", &["1.1.1.1", "1.1.1.2", "1.1.1.3", "1.1.1.4", "1.1.1.5"])]),
        ] {
            assert_eq!(check_config(&bad).unwrap_err().code(), "InvalidParameterValue", "{bad:?}");
        }
    }
}
