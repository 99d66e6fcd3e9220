//! The network actions beyond VPCs, subnets and security groups: elastic IPs, internet
//! gateways, route tables, network ACLs, network interfaces, and VPC/subnet attributes.

use super::actions::{write_next_token, Action, Page};
use super::error::{ApiError, ApiResult};
use super::query::{Filter, Params, TagSpec};
use super::xml::Xml;
use super::Ctx;
use crate::control::addresses::{Address, AddressRef};
use crate::control::gateways::{attachment_of, InternetGateway, NetworkInterface};
use crate::control::instances::Instance;

fn address_ref(p: &mut Params, id_param: &str) -> ApiResult<AddressRef> {
    match (p.str(id_param), p.str("PublicIp")) {
        (Some(id), None) => Ok(AddressRef::Allocation(id)),
        (None, Some(ip)) => Ok(AddressRef::PublicIp(ip)),
        (Some(_), Some(_)) => {
            Err(ApiError::InvalidParameterCombination(format!("Only one of {id_param} and PublicIp may be given")))
        }
        (None, None) => Err(ApiError::MissingParameter(id_param.into())),
    }
}

fn write_address(ctx: &Ctx, x: &mut Xml, a: &Address) {
    x.field("publicIp", &a.public_ip)
        .field("allocationId", &a.id)
        .field("domain", "vpc")
        .opt_field("instanceId", a.instance_id.as_ref())
        .opt_field("associationId", a.association_id.as_ref())
        .opt_field("networkInterfaceId", a.network_interface_id.as_ref())
        .opt_field("networkInterfaceOwnerId", a.instance_id.as_ref().map(|_| &a.owner))
        .opt_field("privateIpAddress", a.private_ip.as_ref())
        .field("publicIpv4Pool", "amazon")
        .field("networkBorderGroup", &ctx.control.region.name)
        .tags(&a.tags);
}

pub struct AllocateAddress {
    domain: Option<String>,
    tags: Vec<TagSpec>,
}

impl Action for AllocateAddress {
    const NAME: &'static str = "AllocateAddress";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        if p.str("Address").is_some() || p.str("CustomerOwnedIpv4Pool").is_some() {
            return Err(ApiError::invalid_value("Bringing your own addresses is not offered"));
        }
        if let Some(pool) = p.str("PublicIpv4Pool").filter(|p| p != "amazon") {
            return Err(ApiError::invalid_value(format!("Unknown address pool '{pool}': amazon only")));
        }
        p.str("NetworkBorderGroup");
        Ok(AllocateAddress { domain: p.str("Domain"), tags: p.tag_specs()? })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let a = ctx.control.allocate_address(&ctx.caller, self.domain.as_deref(), &self.tags).await?;
        x.field("publicIp", &a.public_ip)
            .field("allocationId", &a.id)
            .field("domain", "vpc")
            .field("publicIpv4Pool", "amazon")
            .field("networkBorderGroup", &ctx.control.region.name);
        Ok(())
    }
}

pub struct DescribeAddresses {
    public_ips: Vec<String>,
    allocation_ids: Vec<String>,
    filters: Vec<Filter>,
}

impl Action for DescribeAddresses {
    const NAME: &'static str = "DescribeAddresses";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(DescribeAddresses {
            public_ips: p.list("PublicIp")?,
            allocation_ids: p.list("AllocationId")?,
            filters: p.filters()?,
        })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let list =
            ctx.control.describe_addresses(&ctx.caller, &self.public_ips, &self.allocation_ids, &self.filters).await?;
        x.list("addressesSet", list, |x, a| write_address(ctx, x, &a));
        Ok(())
    }
}

/// DescribeAddressesAttribute: the reverse DNS (PTR) records of elastic IPs. Strato sets
/// none (ModifyAddressAttribute is not offered), so each address answers without one.
pub struct DescribeAddressesAttribute {
    allocation_ids: Vec<String>,
    page: Page,
}

impl Action for DescribeAddressesAttribute {
    const NAME: &'static str = "DescribeAddressesAttribute";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        if let Some(a) = p.str("Attribute") {
            if a != "domain-name" {
                return Err(ApiError::invalid_value(format!("Invalid value '{a}' for Attribute: domain-name")));
            }
        }
        Ok(DescribeAddressesAttribute { allocation_ids: p.list("AllocationId")?, page: Page::decode(p, 1, 1000)? })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let list = ctx.control.describe_addresses(&ctx.caller, &[], &self.allocation_ids, &[]).await?;
        let (list, next) = crate::control::filter::paginate(list, self.page.max, self.page.token.as_deref())?;
        x.list("addressSet", list, |x, a| {
            x.field("publicIp", &a.public_ip).field("allocationId", &a.id);
        });
        write_next_token(x, next);
        Ok(())
    }
}

pub struct AssociateAddress {
    address: AddressRef,
    instance_id: String,
    allow_reassociation: bool,
}

impl Action for AssociateAddress {
    const NAME: &'static str = "AssociateAddress";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        let address = address_ref(p, "AllocationId")?;
        if p.str("NetworkInterfaceId").is_some() {
            return Err(ApiError::invalid_value(
                "Associating with a network interface is not offered: give InstanceId",
            ));
        }
        p.str("PrivateIpAddress");
        Ok(AssociateAddress {
            address,
            instance_id: p.required("InstanceId")?,
            allow_reassociation: p.bool("AllowReassociation")?.unwrap_or(false),
        })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let assoc = ctx
            .control
            .associate_address(&ctx.caller, &self.address, &self.instance_id, self.allow_reassociation)
            .await?;
        x.field("return", true).field("associationId", assoc);
        Ok(())
    }
}

pub struct DisassociateAddress {
    address: AddressRef,
}

impl Action for DisassociateAddress {
    const NAME: &'static str = "DisassociateAddress";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(DisassociateAddress { address: address_ref(p, "AssociationId")? })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        ctx.control.disassociate_address(&ctx.caller, &self.address).await?;
        x.field("return", true);
        Ok(())
    }
}

pub struct ReleaseAddress {
    address: AddressRef,
}

impl Action for ReleaseAddress {
    const NAME: &'static str = "ReleaseAddress";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        p.str("NetworkBorderGroup");
        Ok(ReleaseAddress { address: address_ref(p, "AllocationId")? })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        ctx.control.release_address(&ctx.caller, &self.address).await?;
        x.field("return", true);
        Ok(())
    }
}

// ---------------------------------------------------------------- internet gateways

fn write_gateway(x: &mut Xml, g: &InternetGateway) {
    x.field("internetGatewayId", &g.id).field("ownerId", &g.owner).list("attachmentSet", g.vpc_id.iter(), |x, v| {
        x.field("vpcId", v).field("state", "available");
    });
    x.tags(&g.tags);
}

pub struct CreateInternetGateway {
    tags: Vec<TagSpec>,
}

impl Action for CreateInternetGateway {
    const NAME: &'static str = "CreateInternetGateway";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(CreateInternetGateway { tags: p.tag_specs()? })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let g = ctx.control.create_internet_gateway(&ctx.caller, &self.tags).await?;
        x.open("internetGateway");
        write_gateway(x, &g);
        x.close("internetGateway");
        Ok(())
    }
}

pub struct DescribeInternetGateways {
    ids: Vec<String>,
    filters: Vec<Filter>,
    page: Page,
}

impl Action for DescribeInternetGateways {
    const NAME: &'static str = "DescribeInternetGateways";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(DescribeInternetGateways {
            ids: p.list("InternetGatewayId")?,
            filters: p.filters()?,
            page: Page::decode(p, 5, 1000)?,
        })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let (list, next) = ctx
            .control
            .describe_internet_gateways(
                &ctx.caller,
                &self.ids,
                &self.filters,
                self.page.max,
                self.page.token.as_deref(),
            )
            .await?;
        x.list("internetGatewaySet", list, |x, g| write_gateway(x, &g));
        write_next_token(x, next);
        Ok(())
    }
}

/// Attach and detach take the same two ids.
pub struct GatewayVpc {
    igw: String,
    vpc: String,
}

fn gateway_vpc(p: &mut Params) -> ApiResult<GatewayVpc> {
    Ok(GatewayVpc { igw: p.required("InternetGatewayId")?, vpc: p.required("VpcId")? })
}

pub struct AttachInternetGateway(GatewayVpc);

impl Action for AttachInternetGateway {
    const NAME: &'static str = "AttachInternetGateway";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(AttachInternetGateway(gateway_vpc(p)?))
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        ctx.control.attach_internet_gateway(&ctx.caller, &self.0.igw, &self.0.vpc).await?;
        x.field("return", true);
        Ok(())
    }
}

pub struct DetachInternetGateway(GatewayVpc);

impl Action for DetachInternetGateway {
    const NAME: &'static str = "DetachInternetGateway";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(DetachInternetGateway(gateway_vpc(p)?))
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        ctx.control.detach_internet_gateway(&ctx.caller, &self.0.igw, &self.0.vpc).await?;
        x.field("return", true);
        Ok(())
    }
}

pub struct DeleteInternetGateway {
    igw: String,
}

impl Action for DeleteInternetGateway {
    const NAME: &'static str = "DeleteInternetGateway";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(DeleteInternetGateway { igw: p.required("InternetGatewayId")? })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        ctx.control.delete_internet_gateway(&ctx.caller, &self.igw).await?;
        x.field("return", true);
        Ok(())
    }
}

// ---------------------------------------------------------------- derived: routes, ACLs, ENIs

pub struct DescribeRouteTables {
    ids: Vec<String>,
    filters: Vec<Filter>,
    page: Page,
}

impl Action for DescribeRouteTables {
    const NAME: &'static str = "DescribeRouteTables";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(DescribeRouteTables { ids: p.list("RouteTableId")?, filters: p.filters()?, page: Page::decode(p, 5, 100)? })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let (list, next) = ctx
            .control
            .describe_route_tables(&ctx.caller, &self.ids, &self.filters, self.page.max, self.page.token.as_deref())
            .await?;
        x.list("routeTableSet", list, |x, r| {
            x.field("routeTableId", &r.id).field("vpcId", &r.vpc_id).field("ownerId", &r.owner);
            x.list("routeSet", &r.routes, |x, (dest, gw)| {
                x.field("destinationCidrBlock", dest)
                    .field("gatewayId", gw)
                    .field("state", "active")
                    .field("origin", if gw == "local" { "CreateRouteTable" } else { "CreateRoute" });
            });
            x.list("associationSet", [&r], |x, r| {
                x.field("routeTableAssociationId", &r.association_id)
                    .field("routeTableId", &r.id)
                    .field("main", true)
                    .open("associationState")
                    .field("state", "associated")
                    .close("associationState");
            });
            x.list("propagatingVgwSet", Vec::<()>::new(), |_, _| {});
            x.tags(&r.tags);
        });
        write_next_token(x, next);
        Ok(())
    }
}

pub struct DescribeNetworkAcls {
    ids: Vec<String>,
    filters: Vec<Filter>,
    page: Page,
}

impl Action for DescribeNetworkAcls {
    const NAME: &'static str = "DescribeNetworkAcls";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(DescribeNetworkAcls { ids: p.list("NetworkAclId")?, filters: p.filters()?, page: Page::decode(p, 5, 100)? })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let (list, next) = ctx
            .control
            .describe_network_acls(&ctx.caller, &self.ids, &self.filters, self.page.max, self.page.token.as_deref())
            .await?;
        // The default ACL: everything allowed (rule 100), then the implicit deny (32767).
        let entries = [(100, "allow", false), (32767, "deny", false), (100, "allow", true), (32767, "deny", true)];
        x.list("networkAclSet", list, |x, a| {
            x.field("networkAclId", &a.id).field("vpcId", &a.vpc_id).field("default", true).field("ownerId", &a.owner);
            x.list("entrySet", entries, |x, (n, action, egress)| {
                x.field("ruleNumber", n)
                    .field("protocol", "-1")
                    .field("ruleAction", action)
                    .field("egress", egress)
                    .field("cidrBlock", "0.0.0.0/0");
            });
            x.list("associationSet", &a.associations, |x, (assoc, subnet)| {
                x.field("networkAclAssociationId", assoc).field("networkAclId", &a.id).field("subnetId", subnet);
            });
            x.tags(&a.tags);
        });
        write_next_token(x, next);
        Ok(())
    }
}

fn private_dns(ctx: &Ctx, i: &Instance) -> String {
    format!("ip-{}.{}.compute.internal", i.private_ip.replace('.', "-"), ctx.control.region.name)
}

/// The fields DescribeInstances and DescribeNetworkInterfaces share for an interface.
pub fn write_interface(ctx: &Ctx, x: &mut Xml, n: &NetworkInterface, full: bool) {
    let i = &n.instance;
    x.field("networkInterfaceId", &n.id).field("subnetId", &i.subnet_id).field("vpcId", &i.vpc_id);
    if full {
        x.field("availabilityZone", &i.availability_zone).field("requesterManaged", false);
    }
    x.field("description", "")
        .field("ownerId", &i.owner)
        .field("status", "in-use")
        .field("macAddress", &n.mac)
        .field("privateIpAddress", &i.private_ip)
        .field("privateDnsName", private_dns(ctx, i))
        .field("sourceDestCheck", true)
        .list("groupSet", &i.security_groups, |x, (id, name)| {
            x.field("groupId", id).field("groupName", name);
        });
    x.open("attachment")
        .field("attachmentId", attachment_of(&n.id))
        .opt_field("instanceId", full.then_some(&i.id))
        .opt_field("instanceOwnerId", full.then_some(&i.owner))
        .field("deviceIndex", 0)
        .field("networkCardIndex", 0)
        .field("status", "attached")
        .field("attachTime", super::timestamp(&i.launch_time))
        .field("deleteOnTermination", true)
        .close("attachment");
    let association = |x: &mut Xml| {
        if let Some(ip) = &i.public_ip {
            x.open("association")
                .field("publicIp", ip)
                .field("publicDnsName", "")
                .field("ipOwnerId", n.ip_owner.as_deref().unwrap_or("amazon"))
                .opt_field("allocationId", n.allocation_id.as_ref())
                .opt_field("associationId", n.association_id.as_ref())
                .close("association");
        }
    };
    association(x);
    x.list("privateIpAddressesSet", [i], |x, i| {
        x.field("privateIpAddress", &i.private_ip).field("privateDnsName", private_dns(ctx, i)).field("primary", true);
        association(x);
    });
    x.list("ipv6AddressesSet", Vec::<()>::new(), |_, _| {});
    x.field("interfaceType", "interface");
    if full {
        x.tags(&n.tags);
    }
}

pub struct DescribeNetworkInterfaces {
    ids: Vec<String>,
    filters: Vec<Filter>,
    page: Page,
}

impl Action for DescribeNetworkInterfaces {
    const NAME: &'static str = "DescribeNetworkInterfaces";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(DescribeNetworkInterfaces {
            ids: p.list("NetworkInterfaceId")?,
            filters: p.filters()?,
            page: Page::decode(p, 5, 1000)?,
        })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let (list, next) = ctx
            .control
            .describe_network_interfaces(
                &ctx.caller,
                &self.ids,
                &self.filters,
                self.page.max,
                self.page.token.as_deref(),
            )
            .await?;
        x.list("networkInterfaceSet", list, |x, n| write_interface(ctx, x, &n, true));
        write_next_token(x, next);
        Ok(())
    }
}

// ---------------------------------------------------------------- attributes

pub struct ModifySubnetAttribute {
    subnet: String,
    map_public_ip: bool,
}

impl Action for ModifySubnetAttribute {
    const NAME: &'static str = "ModifySubnetAttribute";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        let subnet = p.required("SubnetId")?;
        for unsupported in [
            "AssignIpv6AddressOnCreation.Value",
            "MapCustomerOwnedIpOnLaunch.Value",
            "EnableDns64.Value",
            "EnableResourceNameDnsARecordOnLaunch.Value",
            "EnableResourceNameDnsAAAARecordOnLaunch.Value",
            "PrivateDnsHostnameTypeOnLaunch",
            "EnableLniAtDeviceIndex",
            "DisableLniAtDeviceIndex.Value",
        ] {
            if p.str(unsupported).is_some() {
                return Err(ApiError::invalid_value(format!(
                    "{}: only MapPublicIpOnLaunch can be changed here",
                    unsupported.trim_end_matches(".Value")
                )));
            }
        }
        let map_public_ip = p
            .bool("MapPublicIpOnLaunch.Value")?
            .ok_or_else(|| ApiError::MissingParameter("MapPublicIpOnLaunch".into()))?;
        Ok(ModifySubnetAttribute { subnet, map_public_ip })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        ctx.control.modify_subnet_map_public_ip(&ctx.caller, &self.subnet, self.map_public_ip).await?;
        x.field("return", true);
        Ok(())
    }
}

pub struct DescribeVpcAttribute {
    vpc: String,
    attribute: String,
}

impl Action for DescribeVpcAttribute {
    const NAME: &'static str = "DescribeVpcAttribute";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(DescribeVpcAttribute { vpc: p.required("VpcId")?, attribute: p.required("Attribute")? })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let value = ctx.control.vpc_attribute(&ctx.caller, &self.vpc, &self.attribute).await?;
        x.field("vpcId", &self.vpc).open(&self.attribute).field("value", value).close(&self.attribute);
        Ok(())
    }
}

pub struct ModifyVpcAttribute {
    vpc: String,
    attribute: &'static str,
    value: bool,
}

impl Action for ModifyVpcAttribute {
    const NAME: &'static str = "ModifyVpcAttribute";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        let vpc = p.required("VpcId")?;
        let support = p.bool("EnableDnsSupport.Value")?;
        let hostnames = p.bool("EnableDnsHostnames.Value")?;
        if p.bool("EnableNetworkAddressUsageMetrics.Value")?.is_some() {
            return Err(ApiError::invalid_value("EnableNetworkAddressUsageMetrics cannot be changed here"));
        }
        let (attribute, value) = match (support, hostnames) {
            (Some(v), None) => ("enableDnsSupport", v),
            (None, Some(v)) => ("enableDnsHostnames", v),
            (Some(_), Some(_)) => {
                return Err(ApiError::InvalidParameterCombination(
                    "Fields for multiple attribute types specified: enableDnsSupport, enableDnsHostnames".into(),
                ))
            }
            (None, None) => return Err(ApiError::MissingParameter("EnableDnsSupport or EnableDnsHostnames".into())),
        };
        Ok(ModifyVpcAttribute { vpc, attribute, value })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        ctx.control.modify_vpc_attribute(&ctx.caller, &self.vpc, self.attribute, self.value).await?;
        x.field("return", true);
        Ok(())
    }
}

/// Checks filter names against a list of those EC2 documents for the action.
fn check_filter_names(filters: &[Filter], known: &[&str]) -> ApiResult<()> {
    for f in filters {
        let tag = f.name.starts_with("tag:") || f.name == "tag-key" || f.name == "tag-value";
        if !tag && !known.contains(&f.name.as_str()) {
            return Err(ApiError::InvalidFilter(format!("The filter '{}' is invalid", f.name)));
        }
    }
    Ok(())
}

/// DescribeVpcEndpoints: Strato offers no VPC endpoints (no AWS services live behind them
/// here), so the answer is an empty set, and an endpoint id is one that does not exist.
pub struct DescribeVpcEndpoints {
    ids: Vec<String>,
}

impl Action for DescribeVpcEndpoints {
    const NAME: &'static str = "DescribeVpcEndpoints";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        let filters = p.filters()?;
        check_filter_names(
            &filters,
            &[
                "ip-address-type",
                "service-name",
                "service-region",
                "vpc-id",
                "vpc-endpoint-id",
                "vpc-endpoint-state",
                "vpc-endpoint-type",
            ],
        )?;
        Page::decode(p, 1, 1000)?;
        Ok(DescribeVpcEndpoints { ids: p.list("VpcEndpointId")? })
    }
    async fn run(self, _ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        if let Some(id) = self.ids.first() {
            return Err(ApiError::not_found(
                "InvalidVpcEndpointId.NotFound",
                format!("The Vpc Endpoint Id '{id}' does not exist"),
            ));
        }
        x.list("vpcEndpointSet", Vec::<()>::new(), |_, _| {});
        Ok(())
    }
}

/// DescribePrefixLists: the AWS-managed prefix lists name AWS services' address ranges;
/// Strato has none, so the answer is an empty set.
pub struct DescribePrefixLists {
    ids: Vec<String>,
}

impl Action for DescribePrefixLists {
    const NAME: &'static str = "DescribePrefixLists";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        check_filter_names(&p.filters()?, &["prefix-list-id", "prefix-list-name"])?;
        Page::decode(p, 5, 1000)?;
        Ok(DescribePrefixLists { ids: p.list("PrefixListId")? })
    }
    async fn run(self, _ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        if let Some(id) = self.ids.first() {
            return Err(ApiError::not_found(
                "InvalidPrefixListID.NotFound",
                format!("The prefix list ID '{id}' does not exist"),
            ));
        }
        x.list("prefixListSet", Vec::<()>::new(), |_, _| {});
        Ok(())
    }
}

fn write_dhcp_options(x: &mut Xml, d: &crate::control::dhcp::DhcpOptions) {
    x.field("dhcpOptionsId", &d.id).field("ownerId", &d.owner);
    x.list("dhcpConfigurationSet", &d.config, |x, (k, values)| {
        x.field("key", k).list("valueSet", values, |x, v| {
            x.field("value", v);
        });
    });
    x.tags(&d.tags);
}

pub struct CreateDhcpOptions {
    config: crate::control::dhcp::DhcpConfig,
    tags: Vec<TagSpec>,
}

impl Action for CreateDhcpOptions {
    const NAME: &'static str = "CreateDhcpOptions";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        let mut config = Vec::new();
        for n in p.indices("DhcpConfiguration")? {
            let key = p.required(&format!("DhcpConfiguration.{n}.Key"))?;
            let values = p.list(&format!("DhcpConfiguration.{n}.Value"))?;
            config.push((key, values));
        }
        Ok(CreateDhcpOptions { config, tags: p.tag_specs()? })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let tags = crate::control::tags::tags_for(&self.tags, "dhcp-options")?;
        let d = ctx.control.create_dhcp_options(&ctx.caller, self.config, tags).await?;
        x.open("dhcpOptions");
        write_dhcp_options(x, &d);
        x.close("dhcpOptions");
        Ok(())
    }
}

pub struct DescribeDhcpOptions {
    ids: Vec<String>,
    filters: Vec<Filter>,
    page: Page,
}

impl Action for DescribeDhcpOptions {
    const NAME: &'static str = "DescribeDhcpOptions";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(DescribeDhcpOptions {
            ids: p.list("DhcpOptionsId")?,
            filters: p.filters()?,
            page: Page::decode(p, 5, 1000)?,
        })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let (list, next) = ctx
            .control
            .describe_dhcp_options(&ctx.caller, &self.ids, &self.filters, self.page.max, self.page.token.as_deref())
            .await?;
        x.list("dhcpOptionsSet", list, |x, d| write_dhcp_options(x, &d));
        write_next_token(x, next);
        Ok(())
    }
}

pub struct DeleteDhcpOptions {
    id: String,
}

impl Action for DeleteDhcpOptions {
    const NAME: &'static str = "DeleteDhcpOptions";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(DeleteDhcpOptions { id: p.required("DhcpOptionsId")? })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        ctx.control.delete_dhcp_options(&ctx.caller, &self.id).await?;
        x.field("return", true);
        Ok(())
    }
}

pub struct AssociateDhcpOptions {
    id: String,
    vpc_id: String,
}

impl Action for AssociateDhcpOptions {
    const NAME: &'static str = "AssociateDhcpOptions";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(AssociateDhcpOptions { id: p.required("DhcpOptionsId")?, vpc_id: p.required("VpcId")? })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        ctx.control.associate_dhcp_options(&ctx.caller, &self.id, &self.vpc_id).await?;
        x.field("return", true);
        Ok(())
    }
}
