//! VPCs and subnets, and the view of them the host network is built from
//! (`network_views`; the packets themselves are the `net` module's). Every VPC has a default
//! security group; every account has a default VPC (172.31.0.0/16) with an internet gateway
//! and one default subnet per availability zone (172.31.0.0/20, 172.31.16.0/20, ...),
//! public IP on launch, as on EC2.

use sqlx::AnyConnection;

use super::cidr::Ipv4Cidr;
use super::filter::{self, Filterable};
use super::model::{Caller, Subnet, Tags, Vpc};
use super::security_groups::create_default_group;
use super::tags::{put_tags, tags_for};
use super::Control;
use crate::api::error::{ApiError, ApiResult};
use crate::api::query::{Filter, TagSpec};
use crate::catalog::Region;
use crate::ids::{AccountId, SubnetId, VpcId};
use crate::net::rules::{NetInstance, VpcView};
use crate::store;

pub const DEFAULT_VPC_CIDR: &str = "172.31.0.0/16";

pub async fn create_default_vpc(c: &mut AnyConnection, region: &Region, account: &AccountId) -> ApiResult<Vpc> {
    let vpc = Vpc {
        id: VpcId::generate(),
        owner: account.clone(),
        cidr: DEFAULT_VPC_CIDR.into(),
        is_default: true,
        instance_tenancy: "default".into(),
        enable_dns_support: true,
        enable_dns_hostnames: true,
        dhcp_options_id: None,
        tags: vec![],
    };
    store::insert_vpc(c, &vpc).await?;
    create_default_group(c, account, &vpc.id).await?;
    super::gateways::insert_gateway(c, account, Some(&vpc.id)).await?;
    for (i, zone) in region.zones.iter().enumerate() {
        let s = Subnet {
            id: SubnetId::generate(),
            owner: account.clone(),
            vpc_id: vpc.id.clone(),
            cidr: format!("172.31.{}.0/20", i * 16),
            availability_zone: zone.clone(),
            availability_zone_id: region.zone_id(zone).unwrap_or_default(),
            is_default: true,
            map_public_ip: true,
            tags: vec![],
        };
        store::insert_subnet(c, &s).await?;
    }
    Ok(vpc)
}

impl Filterable for Vpc {
    const FILTERS: &'static [&'static str] = &[
        "cidr",
        "cidr-block-association.cidr-block",
        "cidr-block-association.state",
        "cidr-block-association.association-id",
        "dhcp-options-id",
        "is-default",
        // The older spelling EC2 still answers, which Ansible's amazon.aws modules send.
        "isDefault",
        "owner-id",
        "state",
        "vpc-id",
        "instance-tenancy",
        "ipv6-cidr-block-association.ipv6-cidr-block",
        "ipv6-cidr-block-association.ipv6-pool",
        "ipv6-cidr-block-association.association-id",
        "ipv6-cidr-block-association.state",
    ];
    fn filter_values(&self, name: &str) -> Vec<String> {
        match name {
            "cidr" | "cidr-block-association.cidr-block" => vec![self.cidr.clone()],
            "cidr-block-association.state" => vec!["associated".into()],
            "cidr-block-association.association-id" => {
                vec![format!("vpc-cidr-assoc-{}", self.id.as_str().trim_start_matches("vpc-"))]
            }
            "is-default" | "isDefault" => vec![self.is_default.to_string()],
            "dhcp-options-id" => vec![self.dhcp_options_id.clone().unwrap_or_else(|| "default".into())],
            "owner-id" => vec![self.owner.to_string()],
            "state" => vec!["available".into()],
            "vpc-id" => vec![self.id.to_string()],
            "instance-tenancy" => vec![self.instance_tenancy.clone()],
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

impl Filterable for Subnet {
    const FILTERS: &'static [&'static str] = &[
        "availability-zone",
        "availability-zone-id",
        "available-ip-address-count",
        "cidr-block",
        "cidr",
        "cidrBlock",
        "default-for-az",
        "defaultForAz",
        "map-public-ip-on-launch",
        "owner-id",
        "state",
        "subnet-id",
        "vpc-id",
    ];
    fn filter_values(&self, name: &str) -> Vec<String> {
        match name {
            "availability-zone" => vec![self.availability_zone.clone()],
            "availability-zone-id" => vec![self.availability_zone_id.clone()],
            "available-ip-address-count" => vec![self.available_ips().to_string()],
            "cidr-block" | "cidr" | "cidrBlock" => vec![self.cidr.clone()],
            "default-for-az" | "defaultForAz" => vec![self.is_default.to_string()],
            "map-public-ip-on-launch" => vec![self.map_public_ip.to_string()],
            "owner-id" => vec![self.owner.to_string()],
            "state" => vec!["available".into()],
            "subnet-id" => vec![self.id.to_string()],
            "vpc-id" => vec![self.vpc_id.to_string()],
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

impl Subnet {
    /// Addresses left for instances: EC2 reserves the first four and the last of each subnet.
    pub fn available_ips(&self) -> u64 {
        Ipv4Cidr::parse(&self.cidr, false).map(|c| c.size().saturating_sub(5)).unwrap_or(0)
    }
}

pub(crate) fn vpc_not_found(id: &str) -> ApiError {
    ApiError::not_found("InvalidVpcID.NotFound", format!("The vpc ID '{id}' does not exist"))
}

fn subnet_not_found(id: &str) -> ApiError {
    ApiError::not_found("InvalidSubnetID.NotFound", format!("The subnet ID '{id}' does not exist"))
}

/// Keeps the items whose ids were asked for, failing on the first id that is not there.
pub fn select_ids<T, F: Fn(&T) -> &str>(
    items: Vec<T>,
    ids: &[String],
    id_of: F,
    missing: impl Fn(&str) -> ApiError,
) -> ApiResult<Vec<T>> {
    if ids.is_empty() {
        return Ok(items);
    }
    // EC2 names every missing id in one error ("The instance IDs 'i-1, i-2' do not exist").
    let absent: Vec<&str> =
        ids.iter().map(String::as_str).filter(|id| !items.iter().any(|i| id_of(i) == *id)).collect();
    match absent.as_slice() {
        [] => {}
        [one] => return Err(missing(one)),
        many => {
            return Err(match missing(&many.join(", ")) {
                ApiError::NotFound { code, message } => ApiError::NotFound {
                    code,
                    message: message.replace(" ID '", " IDs '").replace("does not exist", "do not exist"),
                },
                other => other,
            })
        }
    }
    Ok(items.into_iter().filter(|i| ids.iter().any(|id| id == id_of(i))).collect())
}

impl Control {
    pub(crate) async fn load_vpcs(&self, c: &mut AnyConnection, account: &AccountId) -> ApiResult<Vec<Vpc>> {
        let mut vpcs = store::vpcs(c, account).await?;
        let mut tags = store::tags_by_type(c, account, "vpc").await?;
        for v in &mut vpcs {
            v.tags = tags.remove(v.id.as_str()).unwrap_or_default();
        }
        Ok(vpcs)
    }

    pub(crate) async fn load_subnets(&self, c: &mut AnyConnection, account: &AccountId) -> ApiResult<Vec<Subnet>> {
        let mut subnets = store::subnets(c, account).await?;
        let mut tags = store::tags_by_type(c, account, "subnet").await?;
        for s in &mut subnets {
            s.tags = tags.remove(s.id.as_str()).unwrap_or_default();
            s.availability_zone_id = self.region.zone_id(&s.availability_zone).unwrap_or_default();
        }
        Ok(subnets)
    }

    pub async fn create_vpc(
        &self,
        caller: &Caller,
        cidr: &str,
        tenancy: Option<&str>,
        specs: &[TagSpec],
    ) -> ApiResult<Vpc> {
        // EC2 takes a VPC block with host bits set as its network: 10.250.1.0/16 is
        // 10.250.0.0/16.
        let block = Ipv4Cidr::parse(cidr, false).map(Ipv4Cidr::network).ok_or_else(|| {
            ApiError::invalid_value(format!(
                "Value ({cidr}) for parameter cidrBlock is invalid. This is not a valid CIDR block."
            ))
        })?;
        if !(16..=28).contains(&block.prefix) {
            return Err(ApiError::InvalidVpcRange(format!("The CIDR '{cidr}' is invalid.")));
        }
        let tenancy = tenancy.unwrap_or("default");
        if tenancy != "default" {
            return Err(ApiError::invalid_value(format!(
                "Instance tenancy '{tenancy}' is not supported: Strato offers shared (default) tenancy only"
            )));
        }
        let tags = tags_for(specs, "vpc")?;
        let vpc = Vpc {
            id: VpcId::generate(),
            owner: caller.account_id.clone(),
            cidr: block.to_string(),
            is_default: false,
            instance_tenancy: tenancy.into(),
            enable_dns_support: true,
            enable_dns_hostnames: false,
            dhcp_options_id: None,
            tags: tags.clone(),
        };
        let mut tx = self.store().begin_write().await?;
        store::insert_vpc(tx.conn(), &vpc).await?;
        create_default_group(tx.conn(), &caller.account_id, &vpc.id).await?;
        put_tags(tx.conn(), &caller.account_id, vpc.id.as_str(), "vpc", &tags).await?;
        tx.commit().await?;
        Ok(vpc)
    }

    /// CreateDefaultVpc: a new default VPC (172.31.0.0/16, a gateway, a public default
    /// subnet per zone, a default security group) for an account whose default VPC was
    /// deleted.
    pub async fn create_default_vpc(&self, caller: &Caller) -> ApiResult<Vpc> {
        let mut tx = self.store().begin_write().await?;
        if store::vpcs(tx.conn(), &caller.account_id).await?.iter().any(|v| v.is_default) {
            return Err(ApiError::Conflict {
                code: "DefaultVpcAlreadyExists",
                message: "A Default VPC already exists for this account in this region.".into(),
            });
        }
        let vpc = create_default_vpc(tx.conn(), &self.region, &caller.account_id).await?;
        tx.commit().await?;
        self.agent_wake.notify_one();
        Ok(vpc)
    }

    /// CreateDefaultSubnet: the default VPC's default subnet in a zone that has none (the
    /// next free /20 of 172.31.0.0/16, public IP on launch).
    pub async fn create_default_subnet(
        &self,
        caller: &Caller,
        zone: Option<&str>,
        zone_id: Option<&str>,
    ) -> ApiResult<Subnet> {
        let zone = match (zone, zone_id) {
            (Some(z), None) => self.region.zones.iter().find(|x| *x == z).cloned(),
            (None, Some(id)) => {
                self.region.zones.iter().find(|z| self.region.zone_id(z).as_deref() == Some(id)).cloned()
            }
            (Some(_), Some(_)) => {
                return Err(ApiError::InvalidParameterCombination(
                    "Only one of AvailabilityZone or AvailabilityZoneId may be given".into(),
                ))
            }
            (None, None) => return Err(ApiError::MissingParameter("AvailabilityZone".into())),
        }
        .ok_or_else(|| {
            ApiError::invalid_value(format!(
                "Value ({}) for parameter availabilityZone is invalid.",
                zone.or(zone_id).unwrap_or("")
            ))
        })?;
        let mut tx = self.store().begin_write().await?;
        let vpc =
            store::vpcs(tx.conn(), &caller.account_id).await?.into_iter().find(|v| v.is_default).ok_or_else(|| {
                ApiError::Conflict { code: "DefaultVpcDoesNotExist", message: "No default VPC for this user".into() }
            })?;
        let subnets: Vec<Subnet> =
            store::subnets(tx.conn(), &caller.account_id).await?.into_iter().filter(|s| s.vpc_id == vpc.id).collect();
        if subnets.iter().any(|s| s.is_default && s.availability_zone == zone) {
            return Err(ApiError::Conflict {
                code: "DefaultSubnetAlreadyExistsInAvailabilityZone",
                message: format!("Default subnet already exists in availability zone {zone}"),
            });
        }
        let taken: Vec<Ipv4Cidr> = subnets.iter().filter_map(|s| Ipv4Cidr::parse(&s.cidr, false)).collect();
        let cidr = (0..16u32)
            .map(|i| format!("172.31.{}.0/20", i * 16))
            .find(|c| Ipv4Cidr::parse(c, true).is_some_and(|b| !taken.iter().any(|t| t.overlaps(&b))))
            .ok_or_else(|| ApiError::InvalidSubnetConflict("The default VPC has no free /20 left".into()))?;
        let s = Subnet {
            id: SubnetId::generate(),
            owner: caller.account_id.clone(),
            vpc_id: vpc.id.clone(),
            cidr,
            availability_zone_id: self.region.zone_id(&zone).unwrap_or_default(),
            availability_zone: zone,
            is_default: true,
            map_public_ip: true,
            tags: vec![],
        };
        store::insert_subnet(tx.conn(), &s).await?;
        tx.commit().await?;
        self.agent_wake.notify_one();
        Ok(s)
    }

    pub async fn describe_vpcs(
        &self,
        caller: &Caller,
        ids: &[String],
        filters: &[Filter],
        max: Option<usize>,
        token: Option<&str>,
    ) -> ApiResult<(Vec<Vpc>, Option<String>)> {
        for id in ids {
            VpcId::parse(id)?;
        }
        filter::check_filters::<Vpc>(filters)?;
        let mut c = self.store().read().await?;
        let vpcs = self.load_vpcs(&mut c, &caller.account_id).await?;
        filter::select_filter_page(vpcs, ids, |v| v.id.as_str(), vpc_not_found, filters, max, token)
    }

    pub async fn delete_vpc(&self, caller: &Caller, id: &str) -> ApiResult<()> {
        let id = VpcId::parse(id)?;
        let mut tx = self.store().begin_write().await?;
        let vpcs = store::vpcs(tx.conn(), &caller.account_id).await?;
        if !vpcs.iter().any(|v| v.id == id) {
            return Err(vpc_not_found(id.as_str()));
        }
        let subnets = store::subnets(tx.conn(), &caller.account_id).await?;
        if subnets.iter().any(|s| s.vpc_id == id) {
            return Err(ApiError::DependencyViolation(format!(
                "The vpc '{id}' has dependencies and cannot be deleted."
            )));
        }
        let gateways = super::gateways::gateways_of(tx.conn(), &caller.account_id).await?;
        let groups = store::security_groups(tx.conn(), &caller.account_id).await?;
        if groups.iter().any(|g| g.vpc_id == id && g.name != "default")
            || gateways.iter().any(|g| g.vpc_id.as_deref() == Some(id.as_str()))
        {
            return Err(ApiError::DependencyViolation(format!(
                "The vpc '{id}' has dependencies and cannot be deleted."
            )));
        }
        for g in groups.iter().filter(|g| g.vpc_id == id) {
            store::delete_security_group(tx.conn(), &caller.account_id, &g.id).await?;
            store::delete_all_tags(tx.conn(), g.id.as_str()).await?;
        }
        store::delete_vpc(tx.conn(), &caller.account_id, &id).await?;
        store::delete_all_tags(tx.conn(), id.as_str()).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn create_subnet(
        &self,
        caller: &Caller,
        vpc_id: &str,
        cidr: &str,
        zone: Option<&str>,
        zone_id: Option<&str>,
        specs: &[TagSpec],
    ) -> ApiResult<Subnet> {
        let vpc_id = VpcId::parse(vpc_id)?;
        let block = Ipv4Cidr::parse(cidr, true).ok_or_else(|| {
            ApiError::invalid_value(format!(
                "Value ({cidr}) for parameter cidrBlock is invalid. This is not a valid CIDR block."
            ))
        })?;
        let zone = match (zone, zone_id) {
            (Some(_), Some(_)) => return Err(ApiError::InvalidParameterCombination("Only one of AvailabilityZone or AvailabilityZoneId may be given".into())),
            (Some(z), None) => self.region.zones.iter().find(|x| *x == z).cloned()
                .ok_or_else(|| ApiError::invalid_value(format!("Value ({z}) for parameter availabilityZone is invalid. Subnets can currently only be created in the following availability zones: {}.", self.region.zones.join(", "))))?,
            (None, Some(id)) => self.region.zones.iter().find(|z| self.region.zone_id(z).as_deref() == Some(id)).cloned()
                .ok_or_else(|| ApiError::invalid_value(format!("Value ({id}) for parameter availabilityZoneId is invalid.")))?,
            (None, None) => self.region.zones[rand::random::<usize>() % self.region.zones.len()].clone(),
        };
        let tags = tags_for(specs, "subnet")?;
        let mut tx = self.store().begin_write().await?;
        let vpcs = store::vpcs(tx.conn(), &caller.account_id).await?;
        let vpc = vpcs.iter().find(|v| v.id == vpc_id).ok_or_else(|| vpc_not_found(vpc_id.as_str()))?;
        let vpc_block = Ipv4Cidr::parse(&vpc.cidr, true)
            .ok_or_else(|| anyhow::anyhow!("stored VPC CIDR {} does not parse", vpc.cidr))?;
        if !(16..=28).contains(&block.prefix) || !vpc_block.contains(&block) {
            return Err(ApiError::InvalidSubnetRange(format!("The CIDR '{cidr}' is invalid.")));
        }
        let subnets = store::subnets(tx.conn(), &caller.account_id).await?;
        if subnets
            .iter()
            .filter(|s| s.vpc_id == vpc_id)
            .any(|s| Ipv4Cidr::parse(&s.cidr, false).is_some_and(|b| b.overlaps(&block)))
        {
            return Err(ApiError::InvalidSubnetConflict(format!("The CIDR '{cidr}' conflicts with another subnet")));
        }
        let subnet = Subnet {
            id: SubnetId::generate(),
            owner: caller.account_id.clone(),
            vpc_id,
            cidr: block.to_string(),
            availability_zone_id: self.region.zone_id(&zone).unwrap_or_default(),
            availability_zone: zone,
            is_default: false,
            map_public_ip: false,
            tags: tags.clone(),
        };
        store::insert_subnet(tx.conn(), &subnet).await?;
        put_tags(tx.conn(), &caller.account_id, subnet.id.as_str(), "subnet", &tags).await?;
        tx.commit().await?;
        Ok(subnet)
    }

    pub async fn describe_subnets(
        &self,
        caller: &Caller,
        ids: &[String],
        filters: &[Filter],
        max: Option<usize>,
        token: Option<&str>,
    ) -> ApiResult<(Vec<Subnet>, Option<String>)> {
        for id in ids {
            SubnetId::parse(id)?;
        }
        filter::check_filters::<Subnet>(filters)?;
        let mut c = self.store().read().await?;
        let subnets = self.load_subnets(&mut c, &caller.account_id).await?;
        filter::select_filter_page(subnets, ids, |s| s.id.as_str(), subnet_not_found, filters, max, token)
    }

    pub async fn delete_subnet(&self, caller: &Caller, id: &str) -> ApiResult<()> {
        let id = SubnetId::parse(id)?;
        let mut tx = self.store().begin_write().await?;
        let subnets = store::subnets(tx.conn(), &caller.account_id).await?;
        if !subnets.iter().any(|s| s.id == id) {
            return Err(subnet_not_found(id.as_str()));
        }
        let in_use = store::instances::of_account(tx.conn(), &caller.account_id)
            .await?
            .iter()
            .any(|i| i.subnet_id == id.as_str() && i.state != super::instance_state::InstanceState::Terminated);
        if in_use {
            return Err(ApiError::DependencyViolation(format!(
                "The subnet '{id}' has dependencies and cannot be deleted."
            )));
        }
        store::delete_subnet(tx.conn(), &caller.account_id, &id).await?;
        store::delete_all_tags(tx.conn(), id.as_str()).await?;
        tx.commit().await?;
        Ok(())
    }
}

impl Control {
    /// What the network of each VPC must look like on `host` for these instances (those
    /// with a VM on it, or about to have one): subnets, addresses, MACs, every group's rules,
    /// and, when the host has an underlay address, the tunnel to the VPC's instances on other
    /// hosts that have one.
    pub async fn network_views(
        &self,
        host: &crate::ids::HostId,
        instances: &[super::instances::Instance],
    ) -> anyhow::Result<Vec<VpcView>> {
        let mut c = self.store().read().await?;
        let with_gateway = super::gateways::vpcs_with_gateway(&mut c).await?;
        let mut by_vpc: std::collections::BTreeMap<String, VpcView> = Default::default();
        let accounts: std::collections::BTreeSet<&AccountId> = instances.iter().map(|i| &i.owner).collect();
        for account in accounts {
            let subnets = store::subnets(&mut c, account).await?;
            let groups = store::security_groups(&mut c, account).await?;
            let vpcs = store::vpcs(&mut c, account).await?;
            let dhcp_sets = store::dhcp_options::in_use(&mut c).await?;
            for i in instances.iter().filter(|i| &i.owner == account) {
                let Ok(private_ip) = i.private_ip.parse::<std::net::Ipv4Addr>() else { continue };
                let view = by_vpc.entry(i.vpc_id.clone()).or_insert_with(|| VpcView {
                    vpc_id: i.vpc_id.clone(),
                    dns_ip: vpcs
                        .iter()
                        .find(|v| v.id.as_str() == i.vpc_id)
                        .and_then(|v| Ipv4Cidr::parse(&v.cidr, false))
                        .map(|c| std::net::Ipv4Addr::from(c.first() + 2)),
                    domain: format!("{}.compute.internal", self.region.name),
                    subnets: subnets
                        .iter()
                        .filter(|s| s.vpc_id.as_str() == i.vpc_id)
                        .filter_map(|s| Ipv4Cidr::parse(&s.cidr, false))
                        .collect(),
                    dhcp_options: vpcs
                        .iter()
                        .find(|v| v.id.as_str() == i.vpc_id)
                        .and_then(|v| v.dhcp_options_id.as_deref())
                        .and_then(|id| dhcp_sets.iter().find(|(d, _)| d == id))
                        .and_then(|(_, config)| serde_json::from_str(config).ok())
                        .unwrap_or_default(),
                    ..Default::default()
                });
                for (gid, _) in &i.security_groups {
                    if let Some(g) = groups.iter().find(|g| g.id.as_str() == gid) {
                        view.rules.insert(gid.clone(), g.rules.clone());
                    }
                }
                // A public address is reachable only through the VPC's internet gateway.
                let public_ip = i
                    .public_ip
                    .as_deref()
                    .filter(|_| with_gateway.contains(&i.vpc_id))
                    .and_then(|p| p.parse::<std::net::Ipv4Addr>().ok());
                view.instances.push(NetInstance {
                    id: i.id.to_string(),
                    tap: crate::net::tap_name(i.id.as_str()),
                    mac: crate::agent::mac_of(i.id.as_str()),
                    private_ip,
                    transit_ip: public_ip.map(crate::net::transit_of),
                    public_ip,
                    groups: i.security_groups.iter().map(|g| g.0.clone()).collect(),
                    hostname: format!("ip-{}", i.private_ip.replace('.', "-")),
                });
            }
        }
        let underlay: Option<std::net::Ipv4Addr> =
            sqlx::query_scalar::<_, Option<String>>("SELECT underlay FROM hosts WHERE id = $1")
                .bind(host.as_str())
                .fetch_optional(&mut *c)
                .await?
                .flatten()
                .and_then(|u| u.parse().ok());
        for view in by_vpc.values_mut() {
            view.router_mac = router_mac(host.as_str(), &view.vpc_id);
            if let Some(local) = underlay {
                view.vxlan = vxlan_of(&mut c, host.as_str(), local, &view.vpc_id).await?;
            }
        }
        Ok(by_vpc.into_values().collect())
    }
}

/// A host's router (bridge) MAC in a VPC.
pub fn router_mac(host: &str, vpc_id: &str) -> String {
    crate::agent::mac_of(&format!("router/{host}/{vpc_id}"))
}

/// The tunnel of a VPC from a host whose underlay address is `local`: the VPC's instances
/// with a VM (or about to have one) on other hosts that have an underlay address.
async fn vxlan_of(
    c: &mut AnyConnection,
    host: &str,
    local: std::net::Ipv4Addr,
    vpc_id: &str,
) -> anyhow::Result<Option<crate::net::rules::Vxlan>> {
    use crate::net::rules::{RemoteInstance, Vxlan, VxlanPeer};
    use sqlx::Row;
    let vni: Option<Option<i64>> =
        sqlx::query_scalar("SELECT vni FROM vpcs WHERE id = $1").bind(vpc_id).fetch_optional(&mut *c).await?;
    let Some(vni) = vni.flatten().and_then(|v| u32::try_from(v).ok()).filter(|v| (1..1 << 24).contains(v)) else {
        tracing::warn!(vpc_id, "the VPC has no usable VXLAN network identifier: it reaches no other host");
        return Ok(None);
    };
    let rows = sqlx::query(
        "SELECT i.id, i.private_ip, i.security_groups, i.host_id, h.underlay FROM instances i
         JOIN hosts h ON h.id = i.host_id
         WHERE i.vpc_id = $1 AND i.host_id != $2 AND h.underlay IS NOT NULL
           AND i.state IN ('pending', 'running', 'stopping', 'shutting-down')
         ORDER BY i.id",
    )
    .bind(vpc_id)
    .bind(host)
    .fetch_all(&mut *c)
    .await?;
    let mut peers = std::collections::BTreeSet::new();
    let mut remote = Vec::new();
    for r in rows {
        let id: String = r.try_get("id")?;
        let private_ip: String = r.try_get("private_ip")?;
        let groups: String = r.try_get("security_groups")?;
        let peer_host: String = r.try_get("host_id")?;
        let underlay: String = r.try_get("underlay")?;
        let (Ok(private_ip), Ok(underlay)) =
            (private_ip.parse::<std::net::Ipv4Addr>(), underlay.parse::<std::net::Ipv4Addr>())
        else {
            continue;
        };
        if underlay == local {
            tracing::warn!(host_id = peer_host, %underlay, "another host has this host's underlay address");
            continue;
        }
        let groups: Vec<(String, String)> = serde_json::from_str(&groups).unwrap_or_default();
        peers.insert(VxlanPeer { underlay, router_mac: router_mac(&peer_host, vpc_id) });
        remote.push(RemoteInstance {
            mac: crate::agent::mac_of(&id),
            hostname: format!("ip-{}", private_ip.to_string().replace('.', "-")),
            id,
            private_ip,
            groups: groups.into_iter().map(|g| g.0).collect(),
            underlay,
        });
    }
    Ok(Some(Vxlan { vni, local, peers: peers.into_iter().collect(), remote }))
}
