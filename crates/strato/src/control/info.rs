//! What the cloud is: its region, zones, account attributes and instance types, as the
//! Describe calls show them.

use super::filter::{self, Filterable};
use super::model::{Caller, Tags};
use super::Control;
use crate::api::error::{ApiError, ApiResult};
use crate::api::query::Filter;
use crate::catalog::InstanceType;
use crate::store;

static NO_TAGS: Tags = Vec::new();

#[derive(Debug, Clone)]
pub struct RegionView {
    pub name: String,
    pub endpoint: String,
}

impl Filterable for RegionView {
    const FILTERS: &'static [&'static str] = &["endpoint", "region-name", "opt-in-status"];
    fn filter_values(&self, name: &str) -> Vec<String> {
        match name {
            "endpoint" => vec![self.endpoint.clone()],
            "region-name" => vec![self.name.clone()],
            "opt-in-status" => vec!["opt-in-not-required".into()],
            _ => vec![],
        }
    }
    fn tags(&self) -> &Tags {
        &NO_TAGS
    }
    fn sort_key(&self) -> &str {
        &self.name
    }
}

#[derive(Debug, Clone)]
pub struct ZoneView {
    pub name: String,
    pub id: String,
    pub region: String,
    /// `available` while a live host serves it; `impaired` when its hosts are all down,
    /// `unavailable` when no host serves it.
    pub state: String,
    /// Why it is not available.
    pub message: Option<String>,
}

impl Filterable for ZoneView {
    const FILTERS: &'static [&'static str] =
        &["zone-name", "zone-id", "region-name", "state", "zone-type", "group-name", "opt-in-status"];
    fn filter_values(&self, name: &str) -> Vec<String> {
        match name {
            "zone-name" => vec![self.name.clone()],
            "zone-id" => vec![self.id.clone()],
            "region-name" => vec![self.region.clone()],
            "state" => vec![self.state.clone()],
            "zone-type" => vec!["availability-zone".into()],
            "group-name" => vec![self.region.clone()],
            "opt-in-status" => vec!["opt-in-not-required".into()],
            _ => vec![],
        }
    }
    fn tags(&self) -> &Tags {
        &NO_TAGS
    }
    fn sort_key(&self) -> &str {
        &self.name
    }
}

impl Filterable for InstanceType {
    const FILTERS: &'static [&'static str] = &[
        "instance-type",
        "current-generation",
        "free-tier-eligible",
        "burstable-performance-supported",
        "vcpu-info.default-vcpus",
        "memory-info.size-in-mib",
        "instance-storage-supported",
        "instance-storage-info.total-size-in-gb",
        "processor-info.supported-architecture",
        "supported-virtualization-type",
        "hypervisor",
        "bare-metal",
    ];
    fn filter_values(&self, name: &str) -> Vec<String> {
        match name {
            "instance-type" => vec![self.name.clone()],
            "current-generation" => vec![(!self.previous_generation).to_string()],
            "free-tier-eligible" => vec![self.free_tier.to_string()],
            "burstable-performance-supported" => vec![self.burstable.to_string()],
            "vcpu-info.default-vcpus" => vec![self.vcpus.to_string()],
            "memory-info.size-in-mib" => vec![self.memory_mib.to_string()],
            "instance-storage-supported" => vec![self.instance_storage_gb.is_some().to_string()],
            "instance-storage-info.total-size-in-gb" => {
                self.instance_storage_gb.map(|g| g.to_string()).into_iter().collect()
            }
            "processor-info.supported-architecture" => vec!["x86_64".into()],
            "supported-virtualization-type" => vec!["hvm".into()],
            "hypervisor" => vec!["kvm".into()],
            "bare-metal" => vec!["false".into()],
            _ => vec![],
        }
    }
    fn tags(&self) -> &Tags {
        &NO_TAGS
    }
    fn sort_key(&self) -> &str {
        &self.name
    }
}

impl Control {
    pub fn describe_regions(&self, names: &[String], filters: &[Filter], endpoint: &str) -> ApiResult<Vec<RegionView>> {
        filter::check_filters::<RegionView>(filters)?;
        for n in names {
            if *n != self.region.name {
                return Err(ApiError::invalid_value(format!("Invalid region names: {n}")));
            }
        }
        let r = RegionView { name: self.region.name.clone(), endpoint: endpoint.to_owned() };
        Ok([r].into_iter().filter(|r| filter::matches(r, filters)).collect())
    }

    pub async fn describe_zones(
        &self,
        names: &[String],
        ids: &[String],
        filters: &[Filter],
    ) -> ApiResult<Vec<ZoneView>> {
        filter::check_filters::<ZoneView>(filters)?;
        let hosts = self.hosts().await?;
        let zones: Vec<ZoneView> = self
            .region
            .zones
            .iter()
            .map(|z| {
                let serving: Vec<_> = hosts.iter().filter(|h| h.serves(z)).collect();
                let (state, message) = if serving.iter().any(|h| self.host_live(h)) {
                    ("available", None)
                } else if serving.is_empty() {
                    ("unavailable", Some("No host serves this zone.".to_owned()))
                } else {
                    ("impaired", Some(format!("All {} hosts of this zone are down.", serving.len())))
                };
                ZoneView {
                    name: z.clone(),
                    id: self.region.zone_id(z).unwrap_or_default(),
                    region: self.region.name.clone(),
                    state: state.into(),
                    message,
                }
            })
            .collect();
        for n in names {
            if !zones.iter().any(|z| &z.name == n) {
                return Err(ApiError::invalid_value(format!("The zone '{n}' does not exist.")));
            }
        }
        for n in ids {
            if !zones.iter().any(|z| &z.id == n) {
                return Err(ApiError::invalid_value(format!("The zone ID '{n}' does not exist.")));
            }
        }
        Ok(zones
            .into_iter()
            .filter(|z| (names.is_empty() && ids.is_empty()) || names.contains(&z.name) || ids.contains(&z.id))
            .filter(|z| filter::matches(z, filters))
            .collect())
    }

    /// DescribeAccountAttributes: (name, values) pairs.
    pub async fn account_attributes(&self, caller: &Caller, names: &[String]) -> ApiResult<Vec<(String, Vec<String>)>> {
        const KNOWN: &[&str] = &[
            "supported-platforms",
            "default-vpc",
            "max-instances",
            "vpc-max-security-groups-per-interface",
            "max-elastic-ips",
            "vpc-max-elastic-ips",
        ];
        for n in names {
            if !KNOWN.contains(&n.as_str()) {
                return Err(ApiError::invalid_value(format!(
                    "Value ({n}) for parameter attributeName is invalid. Unknown attribute."
                )));
            }
        }
        let mut c = self.store().read().await?;
        let default_vpc = store::vpcs(&mut c, &caller.account_id)
            .await?
            .into_iter()
            .find(|v| v.is_default)
            .map(|v| v.id.to_string())
            .unwrap_or_else(|| "none".into());
        let all = vec![
            ("supported-platforms".to_owned(), vec!["VPC".to_owned()]),
            ("default-vpc".to_owned(), vec![default_vpc]),
            ("max-instances".to_owned(), vec![self.vcpu_quota(&caller.account_id).await?.to_string()]),
            ("vpc-max-security-groups-per-interface".to_owned(), vec!["5".to_owned()]),
            ("max-elastic-ips".to_owned(), vec!["5".to_owned()]),
            ("vpc-max-elastic-ips".to_owned(), vec!["5".to_owned()]),
        ];
        Ok(all.into_iter().filter(|(n, _)| names.is_empty() || names.contains(n)).collect())
    }

    pub fn describe_instance_types(
        &self,
        names: &[String],
        filters: &[Filter],
        max: Option<usize>,
        token: Option<&str>,
    ) -> ApiResult<(Vec<InstanceType>, Option<String>)> {
        filter::check_filters::<InstanceType>(filters)?;
        for n in names {
            if self.catalogue.get(n).is_none() {
                return Err(ApiError::invalid_value(format!(
                    "The following supplied instance types do not exist: [{n}]"
                )));
            }
        }
        let types: Vec<InstanceType> = self
            .catalogue
            .types
            .iter()
            .filter(|t| names.is_empty() || names.contains(&t.name))
            .filter(|t| filter::matches(*t, filters))
            .cloned()
            .collect();
        filter::paginate(types, max, token)
    }
}
