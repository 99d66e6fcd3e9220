//! The region and the instance-type catalogue: what this cloud offers and at what price.
//!
//! The catalogue is one TOML file. `strato serve` writes the built-in default to
//! `DATA_DIR/instance-types.toml` on first start and reads that file at every start, so an
//! operator edits prices and types in one place.

use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

pub const DEFAULT_CATALOGUE: &str = include_str!("instance-types.toml");

/// One instance type of the catalogue.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceType {
    /// EC2's name for the type, e.g. `t3.micro`.
    pub name: String,
    /// Virtual CPUs the guest gets.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// On-demand price per hour of running time, in USD.
    pub price_per_hour: f64,
    /// Burstable (T family) types.
    #[serde(default)]
    pub burstable: bool,
    /// Marked free-tier eligible, as on EC2.
    #[serde(default)]
    pub free_tier: bool,
    /// Size of the instance-store disk in GB, for types that have one (`m5d`, `c5d`).
    #[serde(default)]
    pub instance_storage_gb: Option<u64>,
    /// A previous-generation type (`m1`, `m3`, `c4`...): `currentGeneration` false.
    #[serde(default)]
    pub previous_generation: bool,
    /// EC2's network performance label (`Up to 5 Gigabit`, `25 Gigabit`...); Strato's
    /// virtio NICs are not shaped to it.
    #[serde(default)]
    pub network_performance: Option<String>,
}

/// Prices of storage, per GB-month (USD).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoragePrices {
    /// General purpose SSD (gp3) volumes, root volumes included.
    pub gp3_gb_month: f64,
    /// Snapshots (EC2's standard tier).
    #[serde(default = "default_snapshot_price")]
    pub snapshot_gb_month: f64,
}

fn default_snapshot_price() -> f64 {
    0.05
}

impl Default for StoragePrices {
    fn default() -> Self {
        StoragePrices { gp3_gb_month: 0.08, snapshot_gb_month: default_snapshot_price() }
    }
}

/// Prices of public addresses (USD per hour).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressPrices {
    /// An elastic IP that is not on a running instance.
    pub idle_eip_hour: f64,
}

impl Default for AddressPrices {
    fn default() -> Self {
        AddressPrices { idle_eip_hour: 0.005 }
    }
}

/// Billing settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BillingSettings {
    /// Cost Explorer may group by RESOURCE_ID (AWS's opt-in resource-level data).
    #[serde(default)]
    pub resource_level_data: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogueFile {
    #[serde(default)]
    storage: StoragePrices,
    #[serde(default)]
    billing: BillingSettings,
    #[serde(default)]
    addresses: AddressPrices,
    instance_type: Vec<InstanceType>,
}

#[derive(Debug, Clone)]
pub struct Catalogue {
    pub types: Vec<InstanceType>,
    pub storage: StoragePrices,
    pub billing: BillingSettings,
    pub addresses: AddressPrices,
}

impl Catalogue {
    pub fn parse(text: &str) -> anyhow::Result<Catalogue> {
        let f: CatalogueFile = toml::from_str(text)?;
        let mut names = std::collections::HashSet::new();
        for t in &f.instance_type {
            anyhow::ensure!(names.insert(t.name.clone()), "instance type {} is listed twice", t.name);
            anyhow::ensure!(
                t.vcpus > 0 && t.memory_mib >= 128,
                "instance type {} needs at least 1 vCPU and 128 MiB",
                t.name
            );
            anyhow::ensure!(t.price_per_hour >= 0.0, "instance type {} has a negative price", t.name);
        }
        anyhow::ensure!(f.storage.gp3_gb_month >= 0.0, "a negative storage price");
        anyhow::ensure!(f.addresses.idle_eip_hour >= 0.0, "a negative address price");
        Ok(Catalogue { types: f.instance_type, storage: f.storage, billing: f.billing, addresses: f.addresses })
    }

    /// Reads `path`, writing the built-in default there first if it does not exist.
    pub fn load_or_init(path: &Path) -> anyhow::Result<Catalogue> {
        if !path.exists() {
            std::fs::write(path, DEFAULT_CATALOGUE).with_context(|| format!("writing {}", path.display()))?;
        }
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Catalogue::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn get(&self, name: &str) -> Option<&InstanceType> {
        self.types.iter().find(|t| t.name == name)
    }
}

/// The region this cloud is, and its availability zones (`REGION` + `a`, `b`, `c`).
#[derive(Debug, Clone)]
pub struct Region {
    pub name: String,
    pub zones: Vec<String>,
}

impl Region {
    pub fn new(name: &str) -> anyhow::Result<Region> {
        anyhow::ensure!(
            !name.is_empty()
                && name.len() <= 32
                && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && name.bytes().last().is_some_and(|b| b.is_ascii_digit()),
            "region name {name:?} must be lowercase letters, digits and dashes, ending in a digit (like local-1)"
        );
        Ok(Region { name: name.to_owned(), zones: ["a", "b", "c"].iter().map(|s| format!("{name}{s}")).collect() })
    }

    /// EC2's zone id for a zone (`use1-az1` style): 3 letters of the region, its number, az N.
    pub fn zone_id(&self, zone: &str) -> Option<String> {
        let idx = self.zones.iter().position(|z| z == zone)?;
        let letters: String = self.name.chars().filter(|c| c.is_ascii_alphabetic()).take(3).collect();
        let digits: String =
            self.name.chars().rev().take_while(|c| c.is_ascii_digit()).collect::<Vec<_>>().into_iter().rev().collect();
        Some(format!("{letters}{digits}-az{}", idx + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_catalogue_parses() {
        let c = Catalogue::parse(DEFAULT_CATALOGUE).unwrap();
        assert_eq!(c.get("t3.micro").unwrap().vcpus, 2);
        assert_eq!(c.get("m5d.large").unwrap().instance_storage_gb, Some(75));
    }

    #[test]
    fn regions_and_zone_ids() {
        let r = Region::new("local-1").unwrap();
        assert_eq!(r.zones, vec!["local-1a", "local-1b", "local-1c"]);
        assert_eq!(r.zone_id("local-1b").unwrap(), "loc1-az2");
        assert!(Region::new("Bad Region").is_err());
    }
}
