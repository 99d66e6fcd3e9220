//! Internet gateways, and the parts of a VPC that Strato derives rather than stores: the
//! main route table, the default network ACL and each instance's primary network interface.
//!
//! - An internet gateway attached to a VPC is what makes its instances' public addresses
//!   reachable (the network part maps public addresses only for such VPCs). The default VPC
//!   has one from the start, as on EC2.
//! - Route tables: every VPC has its main table, with the `local` route for its CIDR and,
//!   while a gateway is attached, `0.0.0.0/0` to it (Strato adds that route itself, since
//!   custom route tables and CreateRoute are not offered yet).
//! - Network ACLs: every VPC has its default ACL, allowing everything both ways (what EC2's
//!   default ACL does); custom ACLs are not offered yet, so nothing else is enforced.
//! - Network interfaces: one per instance (its primary, device index 0), with an id derived
//!   from the instance's; attaching more interfaces is not offered yet.
//!
//! Derived ids are stable: the prefix and 17 hex digits of a hash of what they belong to.

use sha2::Digest;
use sqlx::{AnyConnection, Row};

use super::filter::{self, Filterable};
use super::instance_state::InstanceState;
use super::instances::Instance;
use super::model::{Caller, Subnet, Tags, Vpc};
use super::tags::{not_found_for, put_tags, tags_for};
use super::Control;
use crate::api::error::{ApiError, ApiResult};
use crate::api::query::{Filter, TagSpec};
use crate::ids::{AccountId, InternetGatewayId, SubnetId, VpcId};
use crate::store::{self, instances as db, ts};

/// A stable id: `prefix-` and 17 hex digits of the seed's hash.
pub fn derived_id(prefix: &str, seed: &str) -> String {
    let h = hex::encode(sha2::Sha256::digest(format!("{prefix}/{seed}").as_bytes()));
    format!("{prefix}-{}", &h[..17])
}

/// The primary network interface of an instance.
pub fn eni_of(instance_id: &str) -> String {
    derived_id("eni", instance_id)
}

#[derive(Debug, Clone)]
pub struct InternetGateway {
    pub id: InternetGatewayId,
    pub owner: AccountId,
    pub vpc_id: Option<String>,
    pub tags: Tags,
}

impl Filterable for InternetGateway {
    const FILTERS: &'static [&'static str] =
        &["attachment.state", "attachment.vpc-id", "internet-gateway-id", "owner-id"];
    fn filter_values(&self, name: &str) -> Vec<String> {
        match name {
            "attachment.state" => self.vpc_id.as_ref().map(|_| "available".to_owned()).into_iter().collect(),
            "attachment.vpc-id" => self.vpc_id.clone().into_iter().collect(),
            "internet-gateway-id" => vec![self.id.to_string()],
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

pub async fn gateways_of(c: &mut AnyConnection, account: &AccountId) -> sqlx::Result<Vec<InternetGateway>> {
    let rows = sqlx::query("SELECT * FROM internet_gateways WHERE account_id = $1 ORDER BY created_at, id")
        .bind(account.as_str())
        .fetch_all(c)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(InternetGateway {
                id: InternetGatewayId::from_db(r.try_get("id")?),
                owner: AccountId::from_db(r.try_get("account_id")?),
                vpc_id: r.try_get("vpc_id")?,
                tags: Vec::new(),
            })
        })
        .collect()
}

/// Creates a gateway, attached to `vpc` when given (the default VPC's).
pub async fn insert_gateway(
    c: &mut AnyConnection,
    account: &AccountId,
    vpc: Option<&VpcId>,
) -> sqlx::Result<InternetGatewayId> {
    let id = InternetGatewayId::generate();
    sqlx::query("INSERT INTO internet_gateways (id, account_id, vpc_id, created_at) VALUES ($1, $2, $3, $4)")
        .bind(id.as_str())
        .bind(account.as_str())
        .bind(vpc.map(|v| v.as_str()))
        .bind(ts(&chrono::Utc::now()))
        .execute(c)
        .await?;
    Ok(id)
}

/// VPCs (of any account) with an attached gateway.
pub async fn vpcs_with_gateway(c: &mut AnyConnection) -> sqlx::Result<std::collections::HashSet<String>> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT vpc_id FROM internet_gateways WHERE vpc_id IS NOT NULL").fetch_all(c).await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// The main route table of a VPC, derived.
#[derive(Debug, Clone)]
pub struct RouteTable {
    pub id: String,
    pub owner: AccountId,
    pub vpc_id: String,
    pub association_id: String,
    /// (destination, gateway id or `local`)
    pub routes: Vec<(String, String)>,
    pub tags: Tags,
}

impl Filterable for RouteTable {
    const FILTERS: &'static [&'static str] = &[
        "association.main",
        "association.route-table-association-id",
        "association.route-table-id",
        "owner-id",
        "route-table-id",
        "route.destination-cidr-block",
        "route.gateway-id",
        "route.origin",
        "route.state",
        "vpc-id",
    ];
    fn filter_values(&self, name: &str) -> Vec<String> {
        match name {
            "association.main" => vec!["true".into()],
            "association.route-table-association-id" => vec![self.association_id.clone()],
            "association.route-table-id" | "route-table-id" => vec![self.id.clone()],
            "owner-id" => vec![self.owner.to_string()],
            "route.destination-cidr-block" => self.routes.iter().map(|r| r.0.clone()).collect(),
            "route.gateway-id" => self.routes.iter().map(|r| r.1.clone()).collect(),
            "route.origin" => vec!["CreateRouteTable".into(), "CreateRoute".into()],
            "route.state" => vec!["active".into()],
            "vpc-id" => vec![self.vpc_id.clone()],
            _ => vec![],
        }
    }
    fn tags(&self) -> &Tags {
        &self.tags
    }
    fn sort_key(&self) -> &str {
        &self.id
    }
}

/// The default network ACL of a VPC, derived.
#[derive(Debug, Clone)]
pub struct NetworkAcl {
    pub id: String,
    pub owner: AccountId,
    pub vpc_id: String,
    /// (association id, subnet id)
    pub associations: Vec<(String, String)>,
    pub tags: Tags,
}

impl Filterable for NetworkAcl {
    const FILTERS: &'static [&'static str] = &[
        "association.association-id",
        "association.network-acl-id",
        "association.subnet-id",
        "default",
        "network-acl-id",
        "owner-id",
        "vpc-id",
    ];
    fn filter_values(&self, name: &str) -> Vec<String> {
        match name {
            "association.association-id" => self.associations.iter().map(|a| a.0.clone()).collect(),
            "association.network-acl-id" | "network-acl-id" => vec![self.id.clone()],
            "association.subnet-id" => self.associations.iter().map(|a| a.1.clone()).collect(),
            "default" => vec!["true".into()],
            "owner-id" => vec![self.owner.to_string()],
            "vpc-id" => vec![self.vpc_id.clone()],
            _ => vec![],
        }
    }
    fn tags(&self) -> &Tags {
        &self.tags
    }
    fn sort_key(&self) -> &str {
        &self.id
    }
}

/// An instance's primary network interface, derived.
#[derive(Debug, Clone)]
pub struct NetworkInterface {
    pub id: String,
    pub instance: Instance,
    /// The public address's owner: `amazon` for a pool address, the account for an elastic IP.
    pub ip_owner: Option<String>,
    pub allocation_id: Option<String>,
    pub association_id: Option<String>,
    pub mac: String,
    pub tags: Tags,
}

impl Filterable for NetworkInterface {
    const FILTERS: &'static [&'static str] = &[
        "addresses.private-ip-address",
        "association.allocation-id",
        "association.association-id",
        "association.public-ip",
        "attachment.attachment-id",
        "attachment.device-index",
        "attachment.instance-id",
        "attachment.instance-owner-id",
        "attachment.status",
        "availability-zone",
        "group-id",
        "group-name",
        "interface-type",
        "mac-address",
        "network-interface-id",
        "owner-id",
        "private-ip-address",
        "status",
        "subnet-id",
        "vpc-id",
    ];
    fn filter_values(&self, name: &str) -> Vec<String> {
        let i = &self.instance;
        match name {
            "addresses.private-ip-address" | "private-ip-address" => vec![i.private_ip.clone()],
            "association.allocation-id" => self.allocation_id.clone().into_iter().collect(),
            "association.association-id" => self.association_id.clone().into_iter().collect(),
            "association.public-ip" => i.public_ip.clone().into_iter().collect(),
            "attachment.attachment-id" => vec![attachment_of(&self.id)],
            "attachment.device-index" => vec!["0".into()],
            "attachment.instance-id" => vec![i.id.to_string()],
            "attachment.instance-owner-id" | "owner-id" => vec![i.owner.to_string()],
            "attachment.status" => vec!["attached".into()],
            "availability-zone" => vec![i.availability_zone.clone()],
            "group-id" => i.security_groups.iter().map(|g| g.0.clone()).collect(),
            "group-name" => i.security_groups.iter().map(|g| g.1.clone()).collect(),
            "interface-type" => vec!["interface".into()],
            "mac-address" => vec![self.mac.clone()],
            "network-interface-id" => vec![self.id.clone()],
            "status" => vec!["in-use".into()],
            "subnet-id" => vec![i.subnet_id.clone()],
            "vpc-id" => vec![i.vpc_id.clone()],
            _ => vec![],
        }
    }
    fn tags(&self) -> &Tags {
        &self.tags
    }
    fn sort_key(&self) -> &str {
        &self.id
    }
}

pub fn attachment_of(eni: &str) -> String {
    derived_id("eni-attach", eni)
}

fn gateway_not_attached(igw: &str, vpc: &str) -> ApiError {
    ApiError::Conflict {
        code: "Gateway.NotAttached",
        message: format!("resource {igw} is not attached to network {vpc}"),
    }
}

impl Control {
    pub async fn create_internet_gateway(&self, caller: &Caller, specs: &[TagSpec]) -> ApiResult<InternetGateway> {
        let tags = tags_for(specs, "internet-gateway")?;
        let mut tx = self.store().begin_write().await?;
        let id = insert_gateway(tx.conn(), &caller.account_id, None).await?;
        put_tags(tx.conn(), &caller.account_id, id.as_str(), "internet-gateway", &tags).await?;
        tx.commit().await?;
        Ok(InternetGateway { id, owner: caller.account_id.clone(), vpc_id: None, tags })
    }

    pub async fn describe_internet_gateways(
        &self,
        caller: &Caller,
        ids: &[String],
        filters: &[Filter],
        max: Option<usize>,
        token: Option<&str>,
    ) -> ApiResult<(Vec<InternetGateway>, Option<String>)> {
        for id in ids {
            InternetGatewayId::parse(id)?;
        }
        filter::check_filters::<InternetGateway>(filters)?;
        let mut c = self.store().read().await?;
        let mut list = gateways_of(&mut c, &caller.account_id).await?;
        let mut tags = store::tags_by_type(&mut c, &caller.account_id, "internet-gateway").await?;
        for g in &mut list {
            g.tags = tags.remove(g.id.as_str()).unwrap_or_default();
        }
        filter::select_filter_page(
            list,
            ids,
            |g| g.id.as_str(),
            |id| not_found_for("internet-gateway", id),
            filters,
            max,
            token,
        )
    }

    async fn gateway_and_vpc(
        &self,
        c: &mut AnyConnection,
        caller: &Caller,
        igw: &str,
        vpc: &str,
    ) -> ApiResult<(InternetGateway, Vpc)> {
        let igw = InternetGatewayId::parse(igw)?;
        let vpc = VpcId::parse(vpc)?;
        let g = gateways_of(c, &caller.account_id)
            .await?
            .into_iter()
            .find(|g| g.id == igw)
            .ok_or_else(|| not_found_for("internet-gateway", igw.as_str()))?;
        let v = store::vpcs(c, &caller.account_id)
            .await?
            .into_iter()
            .find(|v| v.id == vpc)
            .ok_or_else(|| not_found_for("vpc", vpc.as_str()))?;
        Ok((g, v))
    }

    pub async fn attach_internet_gateway(&self, caller: &Caller, igw: &str, vpc: &str) -> ApiResult<()> {
        let mut tx = self.store().begin_write().await?;
        let c = tx.conn();
        let (g, v) = self.gateway_and_vpc(c, caller, igw, vpc).await?;
        if let Some(other) = &g.vpc_id {
            return Err(ApiError::Conflict {
                code: "Resource.AlreadyAssociated",
                message: format!("resource {} is already attached to network {other}", g.id),
            });
        }
        if gateways_of(c, &caller.account_id).await?.iter().any(|x| x.vpc_id.as_deref() == Some(v.id.as_str())) {
            return Err(ApiError::Conflict {
                code: "Resource.AlreadyAssociated",
                message: format!("network {} already has an internet gateway attached", v.id),
            });
        }
        sqlx::query("UPDATE internet_gateways SET vpc_id = $1 WHERE id = $2")
            .bind(v.id.as_str())
            .bind(g.id.as_str())
            .execute(&mut *c)
            .await?;
        tx.commit().await?;
        self.agent_wake.notify_one();
        Ok(())
    }

    pub async fn detach_internet_gateway(&self, caller: &Caller, igw: &str, vpc: &str) -> ApiResult<()> {
        let mut tx = self.store().begin_write().await?;
        let c = tx.conn();
        let (g, v) = self.gateway_and_vpc(c, caller, igw, vpc).await?;
        if g.vpc_id.as_deref() != Some(v.id.as_str()) {
            return Err(gateway_not_attached(g.id.as_str(), v.id.as_str()));
        }
        // EC2 refuses while the VPC's instances hold public addresses.
        let public = db::of_account(c, &caller.account_id)
            .await?
            .into_iter()
            .any(|i| i.vpc_id == v.id.as_str() && i.public_ip.is_some() && i.state != InstanceState::Terminated);
        if public {
            return Err(ApiError::DependencyViolation(format!(
                "Network {} has some mapped public address(es). Please unmap those public address(es) before detaching the gateway.",
                v.id
            )));
        }
        sqlx::query("UPDATE internet_gateways SET vpc_id = NULL WHERE id = $1")
            .bind(g.id.as_str())
            .execute(&mut *c)
            .await?;
        tx.commit().await?;
        self.agent_wake.notify_one();
        Ok(())
    }

    pub async fn delete_internet_gateway(&self, caller: &Caller, igw: &str) -> ApiResult<()> {
        let igw = InternetGatewayId::parse(igw)?;
        let mut tx = self.store().begin_write().await?;
        let c = tx.conn();
        let g = gateways_of(c, &caller.account_id)
            .await?
            .into_iter()
            .find(|g| g.id == igw)
            .ok_or_else(|| not_found_for("internet-gateway", igw.as_str()))?;
        if g.vpc_id.is_some() {
            return Err(ApiError::DependencyViolation(format!(
                "The internetGateway '{igw}' has dependencies and cannot be deleted."
            )));
        }
        sqlx::query("DELETE FROM internet_gateways WHERE id = $1").bind(igw.as_str()).execute(&mut *c).await?;
        store::delete_all_tags(c, igw.as_str()).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn describe_route_tables(
        &self,
        caller: &Caller,
        ids: &[String],
        filters: &[Filter],
        max: Option<usize>,
        token: Option<&str>,
    ) -> ApiResult<(Vec<RouteTable>, Option<String>)> {
        for id in ids {
            crate::ids::RouteTableId::parse(id)?;
        }
        filter::check_filters::<RouteTable>(filters)?;
        let mut c = self.store().read().await?;
        let gateways = gateways_of(&mut c, &caller.account_id).await?;
        let list: Vec<RouteTable> = store::vpcs(&mut c, &caller.account_id)
            .await?
            .into_iter()
            .map(|v| {
                let id = derived_id("rtb", v.id.as_str());
                let mut routes = vec![(v.cidr.clone(), "local".to_owned())];
                if let Some(g) = gateways.iter().find(|g| g.vpc_id.as_deref() == Some(v.id.as_str())) {
                    routes.push(("0.0.0.0/0".into(), g.id.to_string()));
                }
                RouteTable {
                    association_id: derived_id("rtbassoc", &id),
                    id,
                    owner: v.owner,
                    vpc_id: v.id.to_string(),
                    routes,
                    tags: Vec::new(),
                }
            })
            .collect();
        filter::select_filter_page(list, ids, |r| &r.id, |id| not_found_for("route-table", id), filters, max, token)
    }

    pub async fn describe_network_acls(
        &self,
        caller: &Caller,
        ids: &[String],
        filters: &[Filter],
        max: Option<usize>,
        token: Option<&str>,
    ) -> ApiResult<(Vec<NetworkAcl>, Option<String>)> {
        for id in ids {
            crate::ids::NetworkAclId::parse(id)?;
        }
        filter::check_filters::<NetworkAcl>(filters)?;
        let mut c = self.store().read().await?;
        let subnets = store::subnets(&mut c, &caller.account_id).await?;
        let list: Vec<NetworkAcl> = store::vpcs(&mut c, &caller.account_id)
            .await?
            .into_iter()
            .map(|v| {
                let id = derived_id("acl", v.id.as_str());
                let associations = subnets
                    .iter()
                    .filter(|s| s.vpc_id == v.id)
                    .map(|s| (derived_id("aclassoc", &format!("{id}/{}", s.id)), s.id.to_string()))
                    .collect();
                NetworkAcl { id, owner: v.owner, vpc_id: v.id.to_string(), associations, tags: Vec::new() }
            })
            .collect();
        filter::select_filter_page(list, ids, |a| &a.id, |id| not_found_for("network-acl", id), filters, max, token)
    }

    /// The primary interfaces of the account's instances (terminated ones have none).
    pub async fn network_interfaces(
        &self,
        c: &mut AnyConnection,
        account: &AccountId,
    ) -> ApiResult<Vec<NetworkInterface>> {
        let addresses = super::addresses::of_account(c, account).await?;
        let mut tags = store::tags_by_type(c, account, "network-interface").await?;
        Ok(db::of_account(c, account)
            .await?
            .into_iter()
            .filter(|i| i.state != InstanceState::Terminated)
            .map(|i| {
                let eip = addresses.iter().find(|a| a.instance_id.as_deref() == Some(i.id.as_str()));
                NetworkInterface {
                    id: eni_of(i.id.as_str()),
                    ip_owner: i.public_ip.as_ref().map(|_| match eip {
                        Some(_) => i.owner.to_string(),
                        None => "amazon".to_owned(),
                    }),
                    allocation_id: eip.map(|a| a.id.to_string()),
                    association_id: eip.and_then(|a| a.association_id.clone()),
                    mac: crate::agent::mac_of(i.id.as_str()),
                    tags: tags.remove(&eni_of(i.id.as_str())).unwrap_or_default(),
                    instance: i,
                }
            })
            .collect())
    }

    pub async fn describe_network_interfaces(
        &self,
        caller: &Caller,
        ids: &[String],
        filters: &[Filter],
        max: Option<usize>,
        token: Option<&str>,
    ) -> ApiResult<(Vec<NetworkInterface>, Option<String>)> {
        for id in ids {
            crate::ids::NetworkInterfaceId::parse(id)?;
        }
        filter::check_filters::<NetworkInterface>(filters)?;
        let mut c = self.store().read().await?;
        let list = self.network_interfaces(&mut c, &caller.account_id).await?;
        filter::select_filter_page(
            list,
            ids,
            |n| &n.id,
            |id| not_found_for("network-interface", id),
            filters,
            max,
            token,
        )
    }

    pub async fn modify_subnet_map_public_ip(&self, caller: &Caller, id: &str, value: bool) -> ApiResult<()> {
        let id = SubnetId::parse(id)?;
        let mut tx = self.store().begin_write().await?;
        let subnets: Vec<Subnet> = store::subnets(tx.conn(), &caller.account_id).await?;
        if !subnets.iter().any(|s| s.id == id) {
            return Err(not_found_for("subnet", id.as_str()));
        }
        sqlx::query("UPDATE subnets SET map_public_ip = $1 WHERE id = $2")
            .bind(value as i64)
            .bind(id.as_str())
            .execute(tx.conn())
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// DescribeVpcAttribute: `enableDnsSupport` or `enableDnsHostnames`.
    pub async fn vpc_attribute(&self, caller: &Caller, id: &str, attribute: &str) -> ApiResult<bool> {
        let id = VpcId::parse(id)?;
        let mut c = self.store().read().await?;
        let v = store::vpcs(&mut c, &caller.account_id)
            .await?
            .into_iter()
            .find(|v| v.id == id)
            .ok_or_else(|| not_found_for("vpc", id.as_str()))?;
        match attribute {
            "enableDnsSupport" => Ok(v.enable_dns_support),
            "enableDnsHostnames" => Ok(v.enable_dns_hostnames),
            "enableNetworkAddressUsageMetrics" => Ok(false),
            other => Err(ApiError::invalid_value(format!(
                "Value ({other}) for parameter attribute is invalid. Valid values: enableDnsSupport, enableDnsHostnames, enableNetworkAddressUsageMetrics"
            ))),
        }
    }

    pub async fn modify_vpc_attribute(&self, caller: &Caller, id: &str, attribute: &str, value: bool) -> ApiResult<()> {
        let id = VpcId::parse(id)?;
        let mut tx = self.store().begin_write().await?;
        let v = store::vpcs(tx.conn(), &caller.account_id)
            .await?
            .into_iter()
            .find(|v| v.id == id)
            .ok_or_else(|| not_found_for("vpc", id.as_str()))?;
        // The column comes from this fixed list, never from the request.
        let column = match attribute {
            "enableDnsSupport" => "enable_dns_support",
            "enableDnsHostnames" => {
                if value && !v.enable_dns_support {
                    return Err(ApiError::InvalidParameterCombination(
                        "enableDnsHostnames requires enableDnsSupport".into(),
                    ));
                }
                "enable_dns_hostnames"
            }
            other => return Err(ApiError::invalid_value(format!("Unknown VPC attribute {other}"))),
        };
        sqlx::query(&format!("UPDATE vpcs SET {column} = $1 WHERE id = $2"))
            .bind(value as i64)
            .bind(id.as_str())
            .execute(tx.conn())
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
