//! One type per EC2 action: its request, decoded from the Query form in `decode`, and `run`,
//! which calls one control-plane function and writes the answer's XML. Element names are
//! botocore's (`tools/ec2-shape.py ACTION` prints them). Adding an action is adding a type
//! here and its name to the list in `api::dispatch`.

use std::future::Future;

use base64::Engine;

use super::error::{ApiError, ApiResult};
pub use super::net_actions::*;
use super::query::{Filter, Params, TagSpec};
pub use super::template_actions::*;
pub use super::volume_actions::*;
use super::xml::Xml;
use super::Ctx;
use crate::control::filter::check_max_results;
use crate::control::images::{ImageAttribute, ImageChanges, RegisterFromHost};
use crate::control::instance_state::InstanceState;
use crate::control::instances::{AttributeChange, AttributeValue, BlockDevice, Instance, RunRequest, StateChange};
use crate::control::model::{Image, KeyPair, Peer, SecurityGroup, SgRule, Subnet, Vpc};
use crate::control::security_groups::{permissions, GroupPair, GroupSelector, IpPermission};

pub trait Action: Sized + Send {
    const NAME: &'static str;
    fn decode(p: &mut Params) -> ApiResult<Self>;
    fn run(self, ctx: &Ctx, x: &mut Xml) -> impl Future<Output = ApiResult<()>> + Send;
}

/// `MaxResults` + `NextToken`, with the action's bounds.
pub(super) struct Page {
    pub(super) max: Option<usize>,
    pub(super) token: Option<String>,
}

impl Page {
    /// Where the model gives `MaxResults` a range, the model check has refused values outside
    /// it already. Otherwise EC2 documents a page size (e.g. 5-500 for DescribeVolumes) and
    /// answers a larger request with a full page rather than an error (the AWS CLI asks
    /// DescribeVolumes for 1000): so below `lo` is refused, above `hi` means `hi`.
    pub(super) fn decode(p: &mut Params, lo: i64, hi: i64) -> ApiResult<Page> {
        let max = check_max_results(p.int("MaxResults")?.map(|n| n.min(hi)), lo, hi)?;
        Ok(Page { max, token: p.str("NextToken").filter(|t| !t.is_empty()) })
    }
}

pub(super) fn write_next_token(x: &mut Xml, token: Option<String>) {
    x.opt_field("nextToken", token);
}

fn arn(ctx: &Ctx, owner: &str, kind: &str, id: &str) -> String {
    format!("arn:aws:ec2:{}:{owner}:{kind}/{id}", ctx.control.region.name)
}

// ---------------------------------------------------------------- regions, zones, types

pub struct DescribeRegions {
    names: Vec<String>,
    filters: Vec<Filter>,
}

impl Action for DescribeRegions {
    const NAME: &'static str = "DescribeRegions";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        p.bool("AllRegions")?;
        Ok(DescribeRegions { names: p.list("RegionName")?, filters: p.filters()? })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let regions = ctx.control.describe_regions(&self.names, &self.filters, &ctx.endpoint_host)?;
        x.list("regionInfo", regions, |x, r| {
            x.field("regionName", &r.name)
                .field("regionEndpoint", &r.endpoint)
                .field("optInStatus", "opt-in-not-required");
        });
        Ok(())
    }
}

pub struct DescribeAvailabilityZones {
    names: Vec<String>,
    ids: Vec<String>,
    filters: Vec<Filter>,
}

impl Action for DescribeAvailabilityZones {
    const NAME: &'static str = "DescribeAvailabilityZones";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        p.bool("AllAvailabilityZones")?;
        Ok(DescribeAvailabilityZones { names: p.list("ZoneName")?, ids: p.list("ZoneId")?, filters: p.filters()? })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let zones = ctx.control.describe_zones(&self.names, &self.ids, &self.filters).await?;
        x.list("availabilityZoneInfo", zones, |x, z| {
            x.field("zoneName", &z.name)
                .field("zoneId", &z.id)
                .field("zoneState", &z.state)
                .field("regionName", &z.region)
                .field("groupName", &z.region)
                .field("networkBorderGroup", &z.region)
                .field("optInStatus", "opt-in-not-required")
                .field("zoneType", "availability-zone")
                .list("messageSet", z.message.iter(), |x, m| {
                    x.field("message", m);
                });
        });
        Ok(())
    }
}

/// Where each instance type is offered: the region, or each zone (by name or id).
pub struct DescribeInstanceTypeOfferings {
    location_type: String,
    filters: Vec<Filter>,
    page: Page,
}

impl Action for DescribeInstanceTypeOfferings {
    const NAME: &'static str = "DescribeInstanceTypeOfferings";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        let filters = p.filters()?;
        for f in &filters {
            if !matches!(f.name.as_str(), "instance-type" | "location") {
                return Err(ApiError::InvalidFilter(format!("The filter '{}' is invalid", f.name)));
            }
        }
        Ok(DescribeInstanceTypeOfferings {
            location_type: p.str("LocationType").unwrap_or_else(|| "region".into()),
            filters,
            page: Page::decode(p, 5, 1000)?,
        })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let (types, _) = ctx.control.describe_instance_types(&[], &[], None, None)?;
        let locations: Vec<String> = match self.location_type.as_str() {
            "region" => vec![ctx.control.region.name.clone()],
            "availability-zone" => {
                ctx.control.describe_zones(&[], &[], &[]).await?.into_iter().map(|z| z.name).collect()
            }
            "availability-zone-id" => {
                ctx.control.describe_zones(&[], &[], &[]).await?.into_iter().map(|z| z.id).collect()
            }
            other => {
                return Err(ApiError::invalid_value(format!(
                    "Invalid value '{other}' for LocationType: region, availability-zone or availability-zone-id"
                )))
            }
        };
        let wanted = |name: &str, value: &str| {
            self.filters
                .iter()
                .filter(|f| f.name == name)
                .all(|f| f.values.iter().any(|p| crate::control::filter::wildcard(p, value)))
        };
        let mut offers: Vec<(String, String)> = Vec::new();
        for t in &types {
            for l in &locations {
                if wanted("instance-type", &t.name) && wanted("location", l) {
                    offers.push((format!("{}/{l}", t.name), l.clone()));
                }
            }
        }
        offers.sort();
        // Pages by position: the token is the key of the page's last offer.
        let start = match self.page.token.as_deref() {
            None => 0,
            Some(tok) => {
                let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(tok)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| ApiError::InvalidPaginationToken(tok.to_owned()))?;
                offers.partition_point(|o| o.0 <= key)
            }
        };
        let max = self.page.max.unwrap_or(1000);
        let page: Vec<&(String, String)> = offers.iter().skip(start).take(max).collect();
        let next = (start + page.len() < offers.len())
            .then(|| page.last().map(|o| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&o.0)))
            .flatten();
        x.list("instanceTypeOfferingSet", page, |x, (key, location)| {
            let name = key.split('/').next().unwrap_or_default();
            x.field("instanceType", name).field("locationType", &self.location_type).field("location", location);
        });
        write_next_token(x, next);
        Ok(())
    }
}

pub struct DescribeAccountAttributes {
    names: Vec<String>,
}

impl Action for DescribeAccountAttributes {
    const NAME: &'static str = "DescribeAccountAttributes";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(DescribeAccountAttributes { names: p.list("AttributeName")? })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let attrs = ctx.control.account_attributes(&ctx.caller, &self.names).await?;
        x.list("accountAttributeSet", attrs, |x, (name, values)| {
            x.field("attributeName", name).list("attributeValueSet", values, |x, v| {
                x.field("attributeValue", v);
            });
        });
        Ok(())
    }
}

pub struct DescribeInstanceTypes {
    types: Vec<String>,
    filters: Vec<Filter>,
    page: Page,
}

impl Action for DescribeInstanceTypes {
    const NAME: &'static str = "DescribeInstanceTypes";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(DescribeInstanceTypes {
            types: p.list("InstanceType")?,
            filters: p.filters()?,
            page: Page::decode(p, 5, 100)?,
        })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let (types, next) = ctx.control.describe_instance_types(
            &self.types,
            &self.filters,
            self.page.max,
            self.page.token.as_deref(),
        )?;
        x.list("instanceTypeSet", types, |x, t| {
            x.field("instanceType", &t.name)
                .field("currentGeneration", !t.previous_generation)
                .field("freeTierEligible", t.free_tier)
                .list("supportedUsageClasses", ["on-demand"], |x, v| {
                    x.text(v);
                })
                .list("supportedRootDeviceTypes", ["ebs"], |x, v| {
                    x.text(v);
                })
                .list("supportedVirtualizationTypes", ["hvm"], |x, v| {
                    x.text(v);
                })
                .field("bareMetal", false)
                .field("hypervisor", "kvm");
            x.open("processorInfo")
                .list("supportedArchitectures", ["x86_64"], |x, v| {
                    x.text(v);
                })
                .close("processorInfo");
            x.open("vCpuInfo")
                .field("defaultVCpus", t.vcpus)
                .field("defaultCores", t.vcpus.div_ceil(2).max(1))
                .field("defaultThreadsPerCore", if t.vcpus > 1 { 2 } else { 1 })
                .close("vCpuInfo");
            x.open("memoryInfo").field("sizeInMiB", t.memory_mib).close("memoryInfo");
            x.field("instanceStorageSupported", t.instance_storage_gb.is_some());
            if let Some(gb) = t.instance_storage_gb {
                x.open("instanceStorageInfo").field("totalSizeInGB", gb);
                x.list("disks", [gb], |x, gb| {
                    x.field("sizeInGB", gb).field("count", 1).field("type", "ssd");
                });
                x.field("nvmeSupport", "required").close("instanceStorageInfo");
            }
            x.open("ebsInfo")
                .field("ebsOptimizedSupport", "default")
                .field("encryptionSupport", "unsupported")
                .field("nvmeSupport", "unsupported")
                .close("ebsInfo");
            x.open("networkInfo")
                .field("networkPerformance", t.network_performance.as_deref().unwrap_or("Up to 5 Gigabit"))
                .field("maximumNetworkInterfaces", 1)
                .field("ipv4AddressesPerInterface", 1)
                .field("ipv6AddressesPerInterface", 0)
                .field("ipv6Supported", false)
                .field("enaSupport", "unsupported")
                .close("networkInfo");
            x.field("hibernationSupported", false)
                .field("burstablePerformanceSupported", t.burstable)
                .field("dedicatedHostsSupported", false)
                .field("autoRecoverySupported", false);
        });
        write_next_token(x, next);
        Ok(())
    }
}

// ---------------------------------------------------------------- key pairs

pub struct CreateKeyPair {
    name: String,
    key_type: String,
    format: String,
    tags: Vec<TagSpec>,
}

impl Action for CreateKeyPair {
    const NAME: &'static str = "CreateKeyPair";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(CreateKeyPair {
            name: p.required("KeyName")?,
            key_type: p.str("KeyType").unwrap_or_else(|| "rsa".into()),
            format: p.str("KeyFormat").unwrap_or_else(|| "pem".into()),
            tags: p.tag_specs()?,
        })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let (k, material) =
            ctx.control.create_key_pair(&ctx.caller, &self.name, &self.key_type, &self.format, &self.tags).await?;
        x.field("keyPairId", &k.id)
            .field("keyName", &k.name)
            .field("keyFingerprint", &k.fingerprint)
            .field("keyMaterial", material)
            .tags(&k.tags);
        Ok(())
    }
}

pub struct ImportKeyPair {
    name: String,
    material: Vec<u8>,
    tags: Vec<TagSpec>,
}

impl Action for ImportKeyPair {
    const NAME: &'static str = "ImportKeyPair";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        let name = p.required("KeyName")?;
        let b64 = p.required("PublicKeyMaterial")?;
        // A blob travels base64-encoded in the Query protocol.
        let material = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| ApiError::invalid_value("Value for parameter PublicKeyMaterial is not valid base64"))?;
        Ok(ImportKeyPair { name, material, tags: p.tag_specs()? })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let k = ctx.control.import_key_pair(&ctx.caller, &self.name, &self.material, &self.tags).await?;
        x.field("keyPairId", &k.id).field("keyName", &k.name).field("keyFingerprint", &k.fingerprint).tags(&k.tags);
        Ok(())
    }
}

pub struct DescribeKeyPairs {
    names: Vec<String>,
    ids: Vec<String>,
    filters: Vec<Filter>,
    include_public_key: bool,
}

impl Action for DescribeKeyPairs {
    const NAME: &'static str = "DescribeKeyPairs";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(DescribeKeyPairs {
            names: p.list("KeyName")?,
            ids: p.list("KeyPairId")?,
            filters: p.filters()?,
            include_public_key: p.bool("IncludePublicKey")?.unwrap_or(false),
        })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let keys = ctx.control.describe_key_pairs(&ctx.caller, &self.names, &self.ids, &self.filters).await?;
        x.list("keySet", keys, |x, k: KeyPair| {
            x.field("keyPairId", &k.id)
                .field("keyName", &k.name)
                .field("keyFingerprint", &k.fingerprint)
                .field("keyType", &k.key_type)
                .field("createTime", super::timestamp(&k.created_at));
            if self.include_public_key {
                x.field("publicKey", &k.public_key);
            }
            x.tags(&k.tags);
        });
        Ok(())
    }
}

pub struct DeleteKeyPair {
    name: Option<String>,
    id: Option<String>,
}

impl Action for DeleteKeyPair {
    const NAME: &'static str = "DeleteKeyPair";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(DeleteKeyPair { name: p.str("KeyName"), id: p.str("KeyPairId") })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let id = ctx.control.delete_key_pair(&ctx.caller, self.name.as_deref(), self.id.as_deref()).await?;
        x.field("return", true).opt_field("keyPairId", id);
        Ok(())
    }
}

// ---------------------------------------------------------------- VPCs and subnets

fn write_vpc(x: &mut Xml, v: &Vpc) {
    x.field("vpcId", &v.id)
        .field("ownerId", &v.owner)
        .field("state", "available")
        .field("cidrBlock", &v.cidr)
        .list("cidrBlockAssociationSet", [&v.cidr], |x, c| {
            x.field("associationId", format!("vpc-cidr-assoc-{}", &v.id.as_str()[4..]))
                .field("cidrBlock", c)
                .open("cidrBlockState")
                .field("state", "associated")
                .close("cidrBlockState");
        })
        .field("dhcpOptionsId", v.dhcp_options_id.as_deref().unwrap_or("default"))
        .field("instanceTenancy", &v.instance_tenancy)
        .field("isDefault", v.is_default)
        .tags(&v.tags);
}

fn write_subnet(ctx: &Ctx, x: &mut Xml, s: &Subnet) {
    x.field("subnetId", &s.id)
        .field("subnetArn", arn(ctx, s.owner.as_str(), "subnet", s.id.as_str()))
        .field("state", "available")
        .field("ownerId", &s.owner)
        .field("vpcId", &s.vpc_id)
        .field("cidrBlock", &s.cidr)
        .field("availableIpAddressCount", s.available_ips())
        .field("availabilityZone", &s.availability_zone)
        .field("availabilityZoneId", &s.availability_zone_id)
        .field("defaultForAz", s.is_default)
        .field("mapPublicIpOnLaunch", s.map_public_ip)
        .field("assignIpv6AddressOnCreation", false)
        .field("ipv6Native", false)
        .list("ipv6CidrBlockAssociationSet", Vec::<()>::new(), |_, _| {})
        .tags(&s.tags);
}

pub struct CreateVpc {
    cidr: String,
    tenancy: Option<String>,
    tags: Vec<TagSpec>,
}

pub struct CreateDefaultVpc;

impl Action for CreateDefaultVpc {
    const NAME: &'static str = "CreateDefaultVpc";
    fn decode(_p: &mut Params) -> ApiResult<Self> {
        Ok(CreateDefaultVpc)
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let v = ctx.control.create_default_vpc(&ctx.caller).await?;
        x.open("vpc");
        write_vpc(x, &v);
        x.close("vpc");
        Ok(())
    }
}

pub struct CreateDefaultSubnet {
    zone: Option<String>,
    zone_id: Option<String>,
}

impl Action for CreateDefaultSubnet {
    const NAME: &'static str = "CreateDefaultSubnet";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        if p.bool("Ipv6Native")? == Some(true) {
            return Err(ApiError::UnsupportedOperation("Strato has no IPv6 subnets yet (Ipv6Native=true)".into()));
        }
        Ok(CreateDefaultSubnet { zone: p.str("AvailabilityZone"), zone_id: p.str("AvailabilityZoneId") })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let s = ctx.control.create_default_subnet(&ctx.caller, self.zone.as_deref(), self.zone_id.as_deref()).await?;
        x.open("subnet");
        write_subnet(ctx, x, &s);
        x.close("subnet");
        Ok(())
    }
}

impl Action for CreateVpc {
    const NAME: &'static str = "CreateVpc";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        if p.bool("AmazonProvidedIpv6CidrBlock")? == Some(true) {
            return Err(ApiError::invalid_value("IPv6 CIDR blocks are not supported by Strato yet"));
        }
        Ok(CreateVpc { cidr: p.required("CidrBlock")?, tenancy: p.str("InstanceTenancy"), tags: p.tag_specs()? })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let v = ctx.control.create_vpc(&ctx.caller, &self.cidr, self.tenancy.as_deref(), &self.tags).await?;
        x.open("vpc");
        write_vpc(x, &v);
        x.close("vpc");
        Ok(())
    }
}

pub struct DescribeVpcs {
    ids: Vec<String>,
    filters: Vec<Filter>,
    page: Page,
}

impl Action for DescribeVpcs {
    const NAME: &'static str = "DescribeVpcs";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(DescribeVpcs { ids: p.list("VpcId")?, filters: p.filters()?, page: Page::decode(p, 5, 1000)? })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let (vpcs, next) = ctx
            .control
            .describe_vpcs(&ctx.caller, &self.ids, &self.filters, self.page.max, self.page.token.as_deref())
            .await?;
        x.list("vpcSet", vpcs, |x, v| write_vpc(x, &v));
        write_next_token(x, next);
        Ok(())
    }
}

pub struct DeleteVpc {
    id: String,
}

impl Action for DeleteVpc {
    const NAME: &'static str = "DeleteVpc";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(DeleteVpc { id: p.required("VpcId")? })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        ctx.control.delete_vpc(&ctx.caller, &self.id).await?;
        x.field("return", true);
        Ok(())
    }
}

pub struct CreateSubnet {
    vpc_id: String,
    cidr: String,
    zone: Option<String>,
    zone_id: Option<String>,
    tags: Vec<TagSpec>,
}

impl Action for CreateSubnet {
    const NAME: &'static str = "CreateSubnet";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        if p.str("Ipv6CidrBlock").is_some() || p.bool("Ipv6Native")? == Some(true) {
            return Err(ApiError::invalid_value("IPv6 subnets are not supported by Strato yet"));
        }
        Ok(CreateSubnet {
            vpc_id: p.required("VpcId")?,
            cidr: p.required("CidrBlock")?,
            zone: p.str("AvailabilityZone"),
            zone_id: p.str("AvailabilityZoneId"),
            tags: p.tag_specs()?,
        })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let s = ctx
            .control
            .create_subnet(
                &ctx.caller,
                &self.vpc_id,
                &self.cidr,
                self.zone.as_deref(),
                self.zone_id.as_deref(),
                &self.tags,
            )
            .await?;
        x.open("subnet");
        write_subnet(ctx, x, &s);
        x.close("subnet");
        Ok(())
    }
}

pub struct DescribeSubnets {
    ids: Vec<String>,
    filters: Vec<Filter>,
    page: Page,
}

impl Action for DescribeSubnets {
    const NAME: &'static str = "DescribeSubnets";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(DescribeSubnets { ids: p.list("SubnetId")?, filters: p.filters()?, page: Page::decode(p, 5, 1000)? })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let (subnets, next) = ctx
            .control
            .describe_subnets(&ctx.caller, &self.ids, &self.filters, self.page.max, self.page.token.as_deref())
            .await?;
        x.list("subnetSet", subnets, |x, s| write_subnet(ctx, x, &s));
        write_next_token(x, next);
        Ok(())
    }
}

pub struct DeleteSubnet {
    id: String,
}

impl Action for DeleteSubnet {
    const NAME: &'static str = "DeleteSubnet";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(DeleteSubnet { id: p.required("SubnetId")? })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        ctx.control.delete_subnet(&ctx.caller, &self.id).await?;
        x.field("return", true);
        Ok(())
    }
}

// ---------------------------------------------------------------- security groups

fn write_permissions(x: &mut Xml, tag: &str, rules: &[SgRule], egress: bool) {
    x.list(tag, permissions(rules, egress), |x, p| {
        x.field("ipProtocol", &p.protocol).opt_field("fromPort", p.from_port).opt_field("toPort", p.to_port);
        x.list("groups", &p.groups, |x, (g, owner, d)| {
            x.field("userId", owner).field("groupId", g).opt_field("description", d.as_ref());
        });
        x.list("ipRanges", &p.ipv4, |x, (c, d)| {
            x.field("cidrIp", c).opt_field("description", d.as_ref());
        });
        x.list("ipv6Ranges", &p.ipv6, |x, (c, d)| {
            x.field("cidrIpv6", c).opt_field("description", d.as_ref());
        });
        x.list("prefixListIds", Vec::<()>::new(), |_, _| {});
    });
}

fn write_group(ctx: &Ctx, x: &mut Xml, g: &SecurityGroup) {
    x.field("ownerId", &g.owner)
        .field("groupId", &g.id)
        .field("groupName", &g.name)
        .field("groupDescription", &g.description)
        .field("vpcId", &g.vpc_id)
        .field("securityGroupArn", arn(ctx, g.owner.as_str(), "security-group", g.id.as_str()));
    write_permissions(x, "ipPermissions", &g.rules, false);
    write_permissions(x, "ipPermissionsEgress", &g.rules, true);
    x.tags(&g.tags);
}

fn write_rule(ctx: &Ctx, x: &mut Xml, r: &SgRule, owner: &str, tags: &[(String, String)]) {
    x.field("securityGroupRuleId", &r.id)
        .field("groupId", &r.group_id)
        .field("groupOwnerId", owner)
        .field("isEgress", r.is_egress)
        .field("ipProtocol", &r.protocol)
        .field("fromPort", r.from_port.unwrap_or(-1))
        .field("toPort", r.to_port.unwrap_or(-1));
    match &r.peer {
        Peer::Ipv4(c) => {
            x.field("cidrIpv4", c);
        }
        Peer::Ipv6(c) => {
            x.field("cidrIpv6", c);
        }
        Peer::Group { group_id, owner } => {
            x.open("referencedGroupInfo")
                .field("groupId", group_id)
                .field("userId", owner)
                .close("referencedGroupInfo");
        }
    }
    x.opt_field("description", r.description.as_ref())
        .field("securityGroupRuleArn", arn(ctx, owner, "security-group-rule", r.id.as_str()))
        .tags(tags);
}

pub struct CreateSecurityGroup {
    name: String,
    description: String,
    vpc_id: Option<String>,
    tags: Vec<TagSpec>,
}

impl Action for CreateSecurityGroup {
    const NAME: &'static str = "CreateSecurityGroup";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(CreateSecurityGroup {
            name: p.required("GroupName")?,
            description: p.required("GroupDescription")?,
            vpc_id: p.str("VpcId"),
            tags: p.tag_specs()?,
        })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let (g, tags) = ctx
            .control
            .create_security_group(&ctx.caller, &self.name, &self.description, self.vpc_id.as_deref(), &self.tags)
            .await?;
        x.field("return", true)
            .field("groupId", &g.id)
            .field("securityGroupArn", arn(ctx, g.owner.as_str(), "security-group", g.id.as_str()))
            .tags(&tags);
        Ok(())
    }
}

pub struct DescribeSecurityGroups {
    ids: Vec<String>,
    names: Vec<String>,
    filters: Vec<Filter>,
    page: Page,
}

impl Action for DescribeSecurityGroups {
    const NAME: &'static str = "DescribeSecurityGroups";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        let r = DescribeSecurityGroups {
            ids: p.list("GroupId")?,
            names: p.list("GroupName")?,
            filters: p.filters()?,
            page: Page::decode(p, 5, 1000)?,
        };
        if r.page.max.is_some() && !r.ids.is_empty() {
            return Err(ApiError::InvalidParameterCombination(
                "The parameter groupIdSet cannot be used with the parameter maxResults".into(),
            ));
        }
        Ok(r)
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let (groups, next) = ctx
            .control
            .describe_security_groups(
                &ctx.caller,
                &self.ids,
                &self.names,
                &self.filters,
                self.page.max,
                self.page.token.as_deref(),
            )
            .await?;
        x.list("securityGroupInfo", groups, |x, g| write_group(ctx, x, &g));
        write_next_token(x, next);
        Ok(())
    }
}

fn group_selector(p: &mut Params) -> ApiResult<GroupSelector> {
    match (p.str("GroupId"), p.str("GroupName")) {
        (Some(id), None) => Ok(GroupSelector::Id(id)),
        (None, Some(name)) => Ok(GroupSelector::Name(name)),
        (Some(_), Some(_)) => {
            Err(ApiError::InvalidParameterCombination("Specify GroupId or GroupName, not both".into()))
        }
        (None, None) => Err(ApiError::MissingParameter("GroupId".into())),
    }
}

pub struct DeleteSecurityGroup {
    group: GroupSelector,
}

impl Action for DeleteSecurityGroup {
    const NAME: &'static str = "DeleteSecurityGroup";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(DeleteSecurityGroup { group: group_selector(p)? })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let id = ctx.control.delete_security_group(&ctx.caller, &self.group).await?;
        x.field("return", true).field("groupId", id);
        Ok(())
    }
}

/// `IpPermissions.N.*`, plus the older top-level form (`IpProtocol`, `CidrIp`, ...).
fn decode_permissions(p: &mut Params) -> ApiResult<Vec<IpPermission>> {
    let mut out = Vec::new();
    for n in p.indices("IpPermissions")? {
        let b = format!("IpPermissions.{n}");
        let mut perm = IpPermission {
            protocol: p.str(&format!("{b}.IpProtocol")).unwrap_or_default(),
            from_port: p.int(&format!("{b}.FromPort"))?,
            to_port: p.int(&format!("{b}.ToPort"))?,
            ..Default::default()
        };
        for m in p.indices(&format!("{b}.IpRanges"))? {
            let cidr = p.required(&format!("{b}.IpRanges.{m}.CidrIp"))?;
            perm.ipv4.push((cidr, p.str(&format!("{b}.IpRanges.{m}.Description"))));
        }
        for m in p.indices(&format!("{b}.Ipv6Ranges"))? {
            let cidr = p.required(&format!("{b}.Ipv6Ranges.{m}.CidrIpv6"))?;
            perm.ipv6.push((cidr, p.str(&format!("{b}.Ipv6Ranges.{m}.Description"))));
        }
        for m in p.indices(&format!("{b}.Groups"))? {
            let g = format!("{b}.Groups.{m}");
            for ignored in ["VpcId", "VpcPeeringConnectionId", "PeeringStatus"] {
                p.str(&format!("{g}.{ignored}"));
            }
            perm.groups.push(GroupPair {
                group_id: p.str(&format!("{g}.GroupId")),
                group_name: p.str(&format!("{g}.GroupName")),
                user_id: p.str(&format!("{g}.UserId")),
                description: p.str(&format!("{g}.Description")),
            });
        }
        for m in p.indices(&format!("{b}.PrefixListIds"))? {
            p.str(&format!("{b}.PrefixListIds.{m}.Description"));
            perm.prefix_lists.push(p.required(&format!("{b}.PrefixListIds.{m}.PrefixListId"))?);
        }
        out.push(perm);
    }
    let protocol = p.str("IpProtocol");
    let cidr = p.str("CidrIp");
    let source_name = p.str("SourceSecurityGroupName");
    let source_owner = p.str("SourceSecurityGroupOwnerId");
    let from_port = p.int("FromPort")?;
    let to_port = p.int("ToPort")?;
    if protocol.is_some() || cidr.is_some() || source_name.is_some() || from_port.is_some() || to_port.is_some() {
        if !out.is_empty() {
            return Err(ApiError::InvalidParameterCombination(
                "The parameter IpPermissions cannot be used with IpProtocol, CidrIp or SourceSecurityGroupName".into(),
            ));
        }
        let mut perm = IpPermission {
            protocol: protocol.unwrap_or_else(|| "-1".into()),
            from_port,
            to_port,
            ..Default::default()
        };
        if let Some(c) = cidr {
            perm.ipv4.push((c, None));
        }
        if let Some(name) = source_name {
            perm.groups.push(GroupPair { group_name: Some(name), user_id: source_owner, ..Default::default() });
        }
        out.push(perm);
    }
    Ok(out)
}

macro_rules! authorize_action {
    ($name:ident, $egress:expr) => {
        pub struct $name {
            group: GroupSelector,
            perms: Vec<IpPermission>,
            tags: Vec<TagSpec>,
        }

        impl Action for $name {
            const NAME: &'static str = stringify!($name);
            fn decode(p: &mut Params) -> ApiResult<Self> {
                Ok($name { group: group_selector(p)?, perms: decode_permissions(p)?, tags: p.tag_specs()? })
            }
            async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
                let (rules, owner, tags) =
                    ctx.control.authorize(&ctx.caller, &self.group, &self.perms, $egress, &self.tags).await?;
                x.field("return", true);
                x.list("securityGroupRuleSet", rules, |x, r| write_rule(ctx, x, &r, owner.as_str(), &tags));
                Ok(())
            }
        }
    };
}

authorize_action!(AuthorizeSecurityGroupIngress, false);
authorize_action!(AuthorizeSecurityGroupEgress, true);

fn write_unknown_permissions(x: &mut Xml, perms: &[IpPermission]) {
    x.list("unknownIpPermissionSet", perms, |x, p| {
        x.field("ipProtocol", &p.protocol).opt_field("fromPort", p.from_port).opt_field("toPort", p.to_port);
        x.list("groups", &p.groups, |x, g| {
            x.opt_field("groupId", g.group_id.as_ref())
                .opt_field("groupName", g.group_name.as_ref())
                .opt_field("userId", g.user_id.as_ref());
        });
        x.list("ipRanges", &p.ipv4, |x, (c, _)| {
            x.field("cidrIp", c);
        });
        x.list("ipv6Ranges", &p.ipv6, |x, (c, _)| {
            x.field("cidrIpv6", c);
        });
    });
}

macro_rules! revoke_action {
    ($name:ident, $egress:expr) => {
        pub struct $name {
            group: GroupSelector,
            perms: Vec<IpPermission>,
            rule_ids: Vec<String>,
        }

        impl Action for $name {
            const NAME: &'static str = stringify!($name);
            fn decode(p: &mut Params) -> ApiResult<Self> {
                let group = group_selector(p)?;
                let perms = decode_permissions(p)?;
                let rule_ids = p.list("SecurityGroupRuleId")?;
                if perms.is_empty() && rule_ids.is_empty() {
                    return Err(ApiError::MissingParameter("IpPermissions or SecurityGroupRuleIds".into()));
                }
                Ok($name { group, perms, rule_ids })
            }
            async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
                let (revoked, unknown) =
                    ctx.control.revoke(&ctx.caller, &self.group, &self.perms, &self.rule_ids, $egress).await?;
                x.field("return", true);
                if !unknown.is_empty() {
                    write_unknown_permissions(x, &unknown);
                }
                x.list("revokedSecurityGroupRuleSet", revoked, |x, r| {
                    x.field("securityGroupRuleId", &r.id)
                        .field("groupId", &r.group_id)
                        .field("isEgress", r.is_egress)
                        .field("ipProtocol", &r.protocol)
                        .field("fromPort", r.from_port.unwrap_or(-1))
                        .field("toPort", r.to_port.unwrap_or(-1));
                    match &r.peer {
                        Peer::Ipv4(c) => x.field("cidrIpv4", c),
                        Peer::Ipv6(c) => x.field("cidrIpv6", c),
                        Peer::Group { group_id, .. } => x.field("referencedGroupId", group_id),
                    };
                    x.opt_field("description", r.description.as_ref());
                });
                Ok(())
            }
        }
    };
}

revoke_action!(RevokeSecurityGroupIngress, false);
revoke_action!(RevokeSecurityGroupEgress, true);

/// ModifySecurityGroupRules: rules replaced in place, by id.
pub struct ModifySecurityGroupRules {
    group_id: String,
    changes: Vec<(String, IpPermission)>,
}

impl Action for ModifySecurityGroupRules {
    const NAME: &'static str = "ModifySecurityGroupRules";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        let group_id = p.required("GroupId")?;
        let mut changes = Vec::new();
        for n in p.indices("SecurityGroupRule")? {
            let b = format!("SecurityGroupRule.{n}");
            let id = p.required(&format!("{b}.SecurityGroupRuleId"))?;
            let r = format!("{b}.SecurityGroupRule");
            let description = p.str_max(&format!("{r}.Description"), 255)?;
            let mut perm = IpPermission {
                protocol: p
                    .str(&format!("{r}.IpProtocol"))
                    .ok_or_else(|| ApiError::MissingParameter(format!("{r}.IpProtocol")))?,
                from_port: p.int(&format!("{r}.FromPort"))?,
                to_port: p.int(&format!("{r}.ToPort"))?,
                ..Default::default()
            };
            if let Some(c) = p.str(&format!("{r}.CidrIpv4")) {
                perm.ipv4.push((c, description.clone()));
            }
            if let Some(c) = p.str(&format!("{r}.CidrIpv6")) {
                perm.ipv6.push((c, description.clone()));
            }
            if let Some(g) = p.str(&format!("{r}.ReferencedGroupId")) {
                perm.groups.push(GroupPair {
                    group_id: Some(g),
                    description: description.clone(),
                    ..Default::default()
                });
            }
            if let Some(pl) = p.str(&format!("{r}.PrefixListId")) {
                perm.prefix_lists.push(pl);
            }
            changes.push((id, perm));
        }
        if changes.is_empty() {
            return Err(ApiError::MissingParameter("SecurityGroupRule".into()));
        }
        Ok(ModifySecurityGroupRules { group_id, changes })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        ctx.control.modify_security_group_rules(&ctx.caller, &self.group_id, &self.changes).await?;
        x.field("return", true);
        Ok(())
    }
}

pub struct DescribeSecurityGroupRules {
    ids: Vec<String>,
    filters: Vec<Filter>,
    page: Page,
}

impl Action for DescribeSecurityGroupRules {
    const NAME: &'static str = "DescribeSecurityGroupRules";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(DescribeSecurityGroupRules {
            ids: p.list("SecurityGroupRuleId")?,
            filters: p.filters()?,
            page: Page::decode(p, 5, 1000)?,
        })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let (rules, next) = ctx
            .control
            .describe_security_group_rules(
                &ctx.caller,
                &self.ids,
                &self.filters,
                self.page.max,
                self.page.token.as_deref(),
            )
            .await?;
        x.list("securityGroupRuleSet", rules, |x, r| write_rule(ctx, x, &r.rule, r.owner.as_str(), &r.tags));
        write_next_token(x, next);
        Ok(())
    }
}

// ---------------------------------------------------------------- tags

pub struct CreateTags {
    ids: Vec<String>,
    tags: Vec<(String, String)>,
}

impl Action for CreateTags {
    const NAME: &'static str = "CreateTags";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(CreateTags { ids: p.list("ResourceId")?, tags: p.tags("Tag")? })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        ctx.control.create_tags(&ctx.caller, &self.ids, &self.tags).await?;
        x.field("return", true);
        Ok(())
    }
}

pub struct DeleteTags {
    ids: Vec<String>,
    tags: Vec<(String, Option<String>)>,
}

impl Action for DeleteTags {
    const NAME: &'static str = "DeleteTags";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        let ids = p.list("ResourceId")?;
        let mut tags = Vec::new();
        for n in p.indices("Tag")? {
            tags.push((p.required(&format!("Tag.{n}.Key"))?, p.str(&format!("Tag.{n}.Value"))));
        }
        Ok(DeleteTags { ids, tags })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        ctx.control.delete_tags(&ctx.caller, &self.ids, &self.tags).await?;
        x.field("return", true);
        Ok(())
    }
}

pub struct DescribeTags {
    filters: Vec<Filter>,
    page: Page,
}

impl Action for DescribeTags {
    const NAME: &'static str = "DescribeTags";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(DescribeTags { filters: p.filters()?, page: Page::decode(p, 5, 1000)? })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let (rows, next) =
            ctx.control.describe_tags(&ctx.caller, &self.filters, self.page.max, self.page.token.as_deref()).await?;
        x.list("tagSet", rows, |x, r| {
            x.field("resourceId", &r.resource_id)
                .field("resourceType", &r.resource_type)
                .field("key", &r.key)
                .field("value", &r.value);
        });
        write_next_token(x, next);
        Ok(())
    }
}

// ---------------------------------------------------------------- images

/// An image's root device, as DescribeImages and DescribeImageAttribute show it.
fn write_image_root(x: &mut Xml, i: &Image) {
    x.field("deviceName", &i.root_device_name)
        .open("ebs")
        .field("snapshotId", &i.root_snapshot_id)
        .field("volumeSize", i.root_size_gb)
        .field("deleteOnTermination", true)
        .field("volumeType", "gp3")
        .field("encrypted", false)
        .close("ebs");
}

/// An instance's EBS volume, as DescribeInstances and DescribeInstanceAttribute show it.
fn write_block_device(x: &mut Xml, b: &BlockDevice) {
    x.field("deviceName", &b.device)
        .open("ebs")
        .field("volumeId", &b.volume_id)
        .field("status", &b.status)
        .field("attachTime", super::timestamp(&b.attach_time))
        .field("deleteOnTermination", b.delete_on_termination)
        .close("ebs");
}

fn write_image(x: &mut Xml, i: &Image) {
    x.field("imageId", &i.id)
        .field("imageLocation", format!("{}/{}", i.owner_alias.as_deref().unwrap_or(i.owner.as_str()), i.name))
        .field("imageState", &i.state)
        .field("imageOwnerId", &i.owner)
        .field("creationDate", super::timestamp(&i.created_at))
        .field("isPublic", i.public)
        .field("architecture", &i.architecture)
        .field("imageType", "machine")
        .field("platformDetails", "Linux/UNIX")
        .field("usageOperation", "RunInstances")
        .opt_field("imageOwnerAlias", i.owner_alias.as_ref())
        .field("name", &i.name)
        .field("description", &i.description)
        .field("rootDeviceType", "ebs")
        .field("rootDeviceName", &i.root_device_name)
        .list("blockDeviceMapping", [i], write_image_root)
        .field("virtualizationType", "hvm")
        .field("hypervisor", "xen")
        .field("enaSupport", false)
        .field("bootMode", "legacy-bios")
        .field("imdsSupport", "v2.0")
        .opt_field("sourceImageId", i.source_image_id.as_ref())
        .tags(&i.tags);
}

pub struct DescribeImages {
    ids: Vec<String>,
    owners: Vec<String>,
    executable_by: Vec<String>,
    filters: Vec<Filter>,
    page: Page,
}

impl Action for DescribeImages {
    const NAME: &'static str = "DescribeImages";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        p.bool("IncludeDeprecated")?;
        p.bool("IncludeDisabled")?;
        Ok(DescribeImages {
            ids: p.list("ImageId")?,
            owners: p.list("Owner")?,
            executable_by: p.list("ExecutableBy")?,
            filters: p.filters()?,
            page: Page::decode(p, 5, 1000)?,
        })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let (images, next) = ctx
            .control
            .describe_images(
                &ctx.caller,
                &self.ids,
                &self.owners,
                &self.executable_by,
                &self.filters,
                self.page.max,
                self.page.token.as_deref(),
            )
            .await?;
        x.list("imagesSet", images, |x, i| write_image(x, &i));
        write_next_token(x, next);
        Ok(())
    }
}

pub struct RegisterImage {
    req: RegisterFromHost,
}

impl Action for RegisterImage {
    const NAME: &'static str = "RegisterImage";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        let name = p.required("Name")?;
        if !p.indices("BlockDeviceMapping")?.is_empty() {
            return Err(ApiError::invalid_value(
                "Registering an image from a snapshot (BlockDeviceMapping) is not supported yet: give ImageLocation (a raw or qcow2 disk file on the host) and KernelId (its kernel file)",
            ));
        }
        if let Some(v) = p.str("VirtualizationType") {
            if v != "hvm" {
                return Err(ApiError::invalid_value(format!("VirtualizationType '{v}' is not supported: hvm only")));
            }
        }
        if let Some(b) = p.str("BootMode") {
            if b != "legacy-bios" {
                return Err(ApiError::invalid_value(format!(
                    "BootMode '{b}' is not supported: images boot their kernel directly"
                )));
            }
        }
        p.bool("EnaSupport")?;
        p.str("SriovNetSupport");
        let disk = p.str("ImageLocation").ok_or_else(|| ApiError::MissingParameter("ImageLocation".into()))?;
        let kernel = p.str("KernelId").ok_or_else(|| ApiError::MissingParameter("KernelId".into()))?;
        Ok(RegisterImage {
            req: RegisterFromHost {
                name,
                description: p.str("Description").unwrap_or_default(),
                architecture: p.str("Architecture").unwrap_or_else(|| "x86_64".into()),
                root_device_name: p.str("RootDeviceName"),
                disk,
                kernel,
                initrd: p.str("RamdiskId"),
                tags: p.tag_specs()?,
            },
        })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let id = ctx.control.register_from_host(&ctx.caller, self.req).await?;
        x.field("imageId", id);
        Ok(())
    }
}

pub struct DeregisterImage {
    id: String,
}

impl Action for DeregisterImage {
    const NAME: &'static str = "DeregisterImage";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        if p.bool("DeleteAssociatedSnapshots")? == Some(true) {
            return Err(ApiError::invalid_value(
                "DeleteAssociatedSnapshots is not supported yet: snapshots come with volumes",
            ));
        }
        Ok(DeregisterImage { id: p.required("ImageId")? })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        ctx.control.deregister_image(&ctx.caller, &self.id).await?;
        x.field("return", true);
        Ok(())
    }
}

pub struct DescribeImageAttribute {
    id: String,
    attribute: String,
}

impl Action for DescribeImageAttribute {
    const NAME: &'static str = "DescribeImageAttribute";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(DescribeImageAttribute { id: p.required("ImageId")?, attribute: p.required("Attribute")? })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let (id, attr) = ctx.control.describe_image_attribute(&ctx.caller, &self.id, &self.attribute).await?;
        x.field("imageId", id);
        match attr {
            ImageAttribute::Description(d) => {
                x.open("description").field("value", d).close("description");
            }
            ImageAttribute::Kernel => {
                x.open("kernel").close("kernel");
            }
            ImageAttribute::Ramdisk => {
                x.open("ramdisk").close("ramdisk");
            }
            ImageAttribute::LaunchPermission { public, users } => {
                let mut items: Vec<(bool, String)> = users.into_iter().map(|u| (false, u.to_string())).collect();
                if public {
                    items.insert(0, (true, "all".into()));
                }
                x.list("launchPermission", items, |x, (group, v)| {
                    x.field(if group { "group" } else { "userId" }, v);
                });
            }
            ImageAttribute::BlockDeviceMapping(i) => {
                x.list("blockDeviceMapping", [&*i], write_image_root);
            }
            ImageAttribute::BootMode => {
                x.open("bootMode").field("value", "legacy-bios").close("bootMode");
            }
            ImageAttribute::ImdsSupport => {
                x.open("imdsSupport").field("value", "v2.0").close("imdsSupport");
            }
        }
        Ok(())
    }
}

pub struct ModifyImageAttribute {
    id: String,
    changes: ImageChanges,
}

fn launch_permission_list(p: &mut Params, prefix: &str, users: &mut Vec<String>, all: &mut bool) -> ApiResult<()> {
    for n in p.indices(prefix)? {
        let b = format!("{prefix}.{n}");
        if p.str(&format!("{b}.OrganizationArn")).is_some() || p.str(&format!("{b}.OrganizationalUnitArn")).is_some() {
            return Err(ApiError::invalid_value(
                "Organizations are not supported: share with account ids or the group all",
            ));
        }
        match (p.str(&format!("{b}.UserId")), p.str(&format!("{b}.Group"))) {
            (Some(u), None) => users.push(u),
            (None, Some(g)) if g == "all" => *all = true,
            (None, Some(g)) => return Err(ApiError::invalid_value(format!("Invalid group '{g}': only 'all'"))),
            _ => return Err(ApiError::invalid_value(format!("{b} needs exactly one of UserId or Group"))),
        }
    }
    Ok(())
}

impl Action for ModifyImageAttribute {
    const NAME: &'static str = "ModifyImageAttribute";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        let id = p.required("ImageId")?;
        let mut c = ImageChanges::default();
        launch_permission_list(p, "LaunchPermission.Add", &mut c.add_users, &mut c.add_all)?;
        launch_permission_list(p, "LaunchPermission.Remove", &mut c.remove_users, &mut c.remove_all)?;
        c.description = p.str("Description.Value");
        let attribute = p.str("Attribute");
        let operation = p.str("OperationType");
        let users = p.list("UserId")?;
        let groups = p.list("UserGroup")?;
        let value = p.str("Value");
        if !p.list("ProductCode")?.is_empty()
            || !p.list("OrganizationArn")?.is_empty()
            || !p.list("OrganizationalUnitArn")?.is_empty()
        {
            return Err(ApiError::invalid_value("Product codes and organizations are not supported"));
        }
        if p.str("ImdsSupport.Value").is_some() {
            return Err(ApiError::invalid_value("ImdsSupport cannot be changed: Strato images support IMDSv2"));
        }
        match attribute.as_deref() {
            None => {}
            Some("launchPermission") => {
                let all = groups.iter().any(|g| g == "all");
                if let Some(g) = groups.iter().find(|g| *g != "all") {
                    return Err(ApiError::invalid_value(format!("Invalid group '{g}': only 'all'")));
                }
                match operation.as_deref() {
                    Some("add") => {
                        c.add_users.extend(users);
                        c.add_all |= all;
                    }
                    Some("remove") => {
                        c.remove_users.extend(users);
                        c.remove_all |= all;
                    }
                    _ => return Err(ApiError::MissingParameter("OperationType".into())),
                }
            }
            Some("description") => c.description = value.or(c.description),
            Some(other) => {
                return Err(ApiError::invalid_value(format!(
                    "Attribute '{other}' cannot be modified: launchPermission or description"
                )))
            }
        }
        if c.add_users.is_empty() && c.remove_users.is_empty() && !c.add_all && !c.remove_all && c.description.is_none()
        {
            return Err(ApiError::MissingParameter("LaunchPermission or Description".into()));
        }
        Ok(ModifyImageAttribute { id, changes: c })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        ctx.control.modify_image_attribute(&ctx.caller, &self.id, self.changes).await?;
        x.field("return", true);
        Ok(())
    }
}

pub struct CopyImage {
    source: String,
    region: String,
    name: String,
    description: Option<String>,
    token: Option<String>,
}

impl Action for CopyImage {
    const NAME: &'static str = "CopyImage";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        if p.bool("Encrypted")? == Some(true) || p.str("KmsKeyId").is_some() {
            return Err(ApiError::invalid_value("Encrypted images are not supported yet"));
        }
        if p.str("DestinationOutpostArn").is_some() {
            return Err(ApiError::invalid_value("Outposts are not supported"));
        }
        p.bool("CopyImageTags")?;
        p.int("SnapshotCopyCompletionDurationMinutes")?;
        if let Some(z) = p.str("DestinationAvailabilityZone") {
            return Err(ApiError::invalid_value(format!(
                "DestinationAvailabilityZone '{z}' is not supported: images are regional"
            )));
        }
        Ok(CopyImage {
            source: p.required("SourceImageId")?,
            region: p.required("SourceRegion")?,
            name: p.required("Name")?,
            description: p.str("Description"),
            token: p.str("ClientToken").filter(|t| !t.is_empty()),
        })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let id = ctx
            .control
            .copy_image(
                &ctx.caller,
                &self.source,
                &self.region,
                &self.name,
                self.description.as_deref(),
                self.token.as_deref(),
            )
            .await?;
        x.field("imageId", id);
        Ok(())
    }
}

// ---------------------------------------------------------------- instances

fn write_state(x: &mut Xml, tag: &str, s: InstanceState) {
    x.open(tag).field("code", s.code()).field("name", s.name()).close(tag);
}

fn write_instance(ctx: &Ctx, x: &mut Xml, i: &Instance) {
    let itype = ctx.control.catalogue.get(&i.instance_type);
    let dns = format!("ip-{}.{}.compute.internal", i.private_ip.replace('.', "-"), ctx.control.region.name);
    x.field("instanceId", &i.id).field("imageId", &i.image_id);
    write_state(x, "instanceState", i.state);
    // EC2's public DNS name form; it resolves nowhere outside AWS either.
    let public_dns = i.public_ip.as_ref().map_or(String::new(), |ip| {
        format!("ec2-{}.{}.compute.amazonaws.com", ip.replace('.', "-"), ctx.control.region.name)
    });
    x.field("privateDnsName", &dns)
        .field("dnsName", &public_dns)
        .field("reason", &i.transition_reason)
        .opt_field("keyName", i.key_name.as_ref())
        .field("amiLaunchIndex", i.launch_index)
        .field("instanceType", &i.instance_type)
        .field("launchTime", super::timestamp(&i.launch_time))
        .open("placement")
        .field("availabilityZone", &i.availability_zone)
        .field("groupName", "")
        .field("tenancy", "default")
        .close("placement")
        .open("monitoring")
        .field("state", "disabled")
        .close("monitoring")
        .field("subnetId", &i.subnet_id)
        .field("vpcId", &i.vpc_id)
        .field("privateIpAddress", &i.private_ip)
        .opt_field("ipAddress", i.public_ip.as_ref())
        .field("sourceDestCheck", true)
        .list("groupSet", &i.security_groups, |x, (id, name)| {
            x.field("groupId", id).field("groupName", name);
        });
    if i.state != InstanceState::Terminated {
        let eni = crate::control::gateways::NetworkInterface {
            id: crate::control::gateways::eni_of(i.id.as_str()),
            instance: i.clone(),
            ip_owner: None,
            allocation_id: None,
            association_id: None,
            mac: crate::agent::mac_of(i.id.as_str()),
            tags: Vec::new(),
        };
        x.list("networkInterfaceSet", [&eni], |x, n| write_interface(ctx, x, n, false));
    }
    if let (Some(code), Some(msg)) = (&i.state_reason_code, &i.state_reason) {
        x.open("stateReason").field("code", code).field("message", msg).close("stateReason");
    }
    x.field("architecture", "x86_64")
        .field("rootDeviceType", "ebs")
        .field("rootDeviceName", "/dev/xvda")
        .list("blockDeviceMapping", &i.block_devices, write_block_device)
        .field("virtualizationType", "hvm")
        .field("clientToken", i.client_token.as_deref().unwrap_or(""))
        .tags(&i.tags)
        .field("hypervisor", "xen")
        .field("ebsOptimized", i.ebs_optimized)
        .field("enaSupport", false)
        .open("hibernationOptions")
        .field("configured", false)
        .close("hibernationOptions")
        .open("enclaveOptions")
        .field("enabled", false)
        .close("enclaveOptions");
    if let Some(t) = itype {
        x.open("cpuOptions")
            .field("coreCount", t.vcpus.div_ceil(2).max(1))
            .field("threadsPerCore", if t.vcpus > 1 { 2 } else { 1 })
            .close("cpuOptions");
    }
    x.open("metadataOptions")
        .field("state", "applied")
        .field("httpTokens", if i.tokens_required { "required" } else { "optional" })
        .field("httpPutResponseHopLimit", 1)
        .field("httpEndpoint", "enabled")
        .field("httpProtocolIpv6", "disabled")
        .field("instanceMetadataTags", "disabled")
        .close("metadataOptions")
        .open("maintenanceOptions")
        .field("autoRecovery", if i.auto_recovery { "default" } else { "disabled" })
        .close("maintenanceOptions")
        .field("platformDetails", "Linux/UNIX")
        .field("usageOperation", "RunInstances");
}

fn write_reservation(ctx: &Ctx, x: &mut Xml, group: &[Instance]) {
    let Some(first) = group.first() else { return };
    x.field("reservationId", &first.reservation_id).field("ownerId", &first.owner);
    x.list("groupSet", Vec::<()>::new(), |_, _| {});
    x.list("instancesSet", group, |x, i| write_instance(ctx, x, i));
}

pub struct RunInstances {
    req: RunRequest,
    from_template: Option<FromTemplate>,
}

/// RunInstances' own parameters, from the request or from the request merged with a launch
/// template.
fn decode_run(p: &mut Params) -> ApiResult<RunRequest> {
    let mut r = RunRequest {
        image_id: p.required("ImageId")?,
        instance_type: p.str("InstanceType").unwrap_or_else(|| "m1.small".into()),
        min_count: p.int("MinCount")?.ok_or_else(|| ApiError::MissingParameter("MinCount".into()))?,
        max_count: p.int("MaxCount")?.ok_or_else(|| ApiError::MissingParameter("MaxCount".into()))?,
        key_name: p.str("KeyName"),
        security_group_ids: p.list("SecurityGroupId")?,
        security_group_names: p.list("SecurityGroup")?,
        subnet_id: p.str("SubnetId"),
        // Terraform sends `Placement.AvailabilityZone=` when a subnet decides the zone.
        availability_zone: p.str("Placement.AvailabilityZone").filter(|z| !z.is_empty()),
        user_data: p.str("UserData"),
        disable_api_termination: p.bool("DisableApiTermination")?.unwrap_or(false),
        shutdown_behavior: p.str("InstanceInitiatedShutdownBehavior"),
        client_token: p.str("ClientToken").filter(|t| !t.is_empty()),
        tags: p.tag_specs()?,
        ..Default::default()
    };
    if let Some(g) = p.str("Placement.GroupName").filter(|g| !g.is_empty()) {
        return Err(ApiError::UnsupportedOperation(format!(
            "Strato does not offer placement groups (Placement.GroupName={g})"
        )));
    }
    if let Some(t) = p.str("Placement.Tenancy") {
        if t != "default" && !t.is_empty() {
            return Err(ApiError::invalid_value(format!("Tenancy '{t}' is not offered: default only")));
        }
    }
    if p.bool("Monitoring.Enabled")? == Some(true) {
        return Err(ApiError::UnsupportedOperation(
            "Strato does not offer detailed monitoring (Monitoring.Enabled=true): it has no CloudWatch".into(),
        ));
    }
    r.ebs_optimized = p.bool("EbsOptimized")?.unwrap_or(false);
    r.disable_api_stop = p.bool("DisableApiStop")?.unwrap_or(false);
    r.credit_spec = p.str("CreditSpecification.CpuCredits");
    if p.bool("HibernationOptions.Configured")? == Some(true) {
        return Err(ApiError::UnsupportedOperation(
            "Strato does not offer hibernation (HibernationOptions.Configured=true)".into(),
        ));
    }
    if p.bool("EnclaveOptions.Enabled")? == Some(true) {
        return Err(ApiError::UnsupportedOperation(
            "Strato does not offer Nitro Enclaves (EnclaveOptions.Enabled=true)".into(),
        ));
    }
    r.auto_recovery_disabled = auto_recovery(p, "MaintenanceOptions.AutoRecovery")? == Some(false);
    match p.str("MetadataOptions.HttpTokens").as_deref() {
        None | Some("optional") => {}
        Some("required") => r.tokens_required = true,
        Some(o) => return Err(ApiError::invalid_value(format!("Invalid HttpTokens '{o}': optional or required"))),
    }
    for n in p.indices("BlockDeviceMapping")? {
        let b = format!("BlockDeviceMapping.{n}");
        let dev = p.required(&format!("{b}.DeviceName"))?;
        if !matches!(dev.as_str(), "/dev/xvda" | "/dev/sda1" | "/dev/sda" | "/dev/vda") {
            return Err(ApiError::invalid_value(format!(
                "Block device {dev}: only the root device (/dev/xvda) can be set until volumes arrive"
            )));
        }
        r.root_size_gb = p.int(&format!("{b}.Ebs.VolumeSize"))?;
        r.delete_on_termination = p.bool(&format!("{b}.Ebs.DeleteOnTermination"))?;
        if let Some(t) = p.str(&format!("{b}.Ebs.VolumeType")) {
            if !matches!(t.as_str(), "gp2" | "gp3" | "standard" | "io1" | "io2") {
                return Err(ApiError::invalid_value(format!("Invalid volume type '{t}'")));
            }
        }
        p.int(&format!("{b}.Ebs.Iops"))?;
        p.int(&format!("{b}.Ebs.Throughput"))?;
        if p.bool(&format!("{b}.Ebs.Encrypted"))? == Some(true) {
            return Err(ApiError::invalid_value("Encrypted volumes are not supported yet"));
        }
    }
    r.private_ip = p.str("PrivateIpAddress");
    let nics = p.indices("NetworkInterface")?;
    if nics.len() > 1 {
        return Err(ApiError::invalid_value("Only one network interface (DeviceIndex 0) is offered per instance"));
    }
    if let Some(n) = nics.first() {
        let ni = format!("NetworkInterface.{n}");
        if p.int(&format!("{ni}.DeviceIndex"))?.unwrap_or(0) != 0 {
            return Err(ApiError::invalid_value("The network interface must have DeviceIndex 0"));
        }
        if p.str(&format!("{ni}.NetworkInterfaceId")).is_some() {
            return Err(ApiError::invalid_value("Attaching an existing network interface is not offered"));
        }
        r.associate_public_ip = p.bool(&format!("{ni}.AssociatePublicIpAddress"))?;
        p.bool(&format!("{ni}.DeleteOnTermination"))?;
        p.str(&format!("{ni}.Description"));
        let subnet = p.str(&format!("{ni}.SubnetId"));
        let groups = p.list(&format!("{ni}.SecurityGroupId"))?;
        let mut private = p.str(&format!("{ni}.PrivateIpAddress"));
        for k in p.indices(&format!("{ni}.PrivateIpAddresses"))? {
            let entry = format!("{ni}.PrivateIpAddresses.{k}");
            let addr = p.required(&format!("{entry}.PrivateIpAddress"))?;
            if p.bool(&format!("{entry}.Primary"))? == Some(false) || private.is_some() {
                return Err(ApiError::invalid_value("Secondary private addresses are not offered"));
            }
            private = Some(addr);
        }
        if p.int(&format!("{ni}.SecondaryPrivateIpAddressCount"))?.unwrap_or(0) > 0 {
            return Err(ApiError::invalid_value("Secondary private addresses are not offered"));
        }
        if (subnet.is_some() && r.subnet_id.is_some())
            || (!groups.is_empty() && (!r.security_group_ids.is_empty() || !r.security_group_names.is_empty()))
            || (private.is_some() && r.private_ip.is_some())
        {
            return Err(ApiError::InvalidParameterCombination(
                    "Network interfaces and an instance-level subnet ID, security groups or private IP address may not be specified on the same request".into(),
                ));
        }
        r.subnet_id = r.subnet_id.or(subnet);
        r.security_group_ids.extend(groups);
        r.private_ip = r.private_ip.or(private);
    }
    Ok(r)
}

/// A launch from a launch template: which one, and the request's own parameters, merged
/// with the template's once it is read.
pub struct FromTemplate {
    id: Option<String>,
    name: Option<String>,
    version: Option<String>,
    pairs: Vec<(String, String)>,
}

impl FromTemplate {
    /// The request's parameters over the template's: a top-level member the request gives
    /// replaces the template's (as on EC2), the rest comes from the template.
    fn merge(&self, data: &serde_json::Value) -> ApiResult<Params> {
        let op = super::model::operation("RunInstances")
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("the model has no RunInstances")))?;
        let shape = op.input().ok_or_else(|| ApiError::Internal(anyhow::anyhow!("RunInstances has no input")))?;
        let mut from_template = Vec::new();
        super::model::from_tree(shape, data, "", &mut from_template).map_err(|member| {
            ApiError::UnsupportedOperation(format!(
                "The launch template's {member} has no counterpart in RunInstances, which Strato launches with"
            ))
        })?;
        let top = |k: &str| k.split('.').next().unwrap_or(k).to_owned();
        let given: std::collections::HashSet<String> = self.pairs.iter().map(|(k, _)| top(k)).collect();
        let mut merged: Vec<(&str, &str)> = self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        merged.extend(
            from_template.iter().filter(|(k, _)| !given.contains(&top(k))).map(|(k, v)| (k.as_str(), v.as_str())),
        );
        let p = Params::from_pairs(merged);
        super::model::check(op, p.unread())?;
        Ok(p)
    }
}

impl Action for RunInstances {
    const NAME: &'static str = "RunInstances";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        let template = p.take_prefixed("LaunchTemplate.");
        if template.is_empty() {
            return Ok(RunInstances { req: decode_run(p)?, from_template: None });
        }
        // The request is decoded once merged with the template, when it has been read.
        let get =
            |name: &str| template.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).filter(|v| !v.is_empty());
        let pairs: Vec<(String, String)> = p.unread().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        for (k, _) in &pairs {
            p.mark_used(k);
        }
        let from = FromTemplate {
            id: get("LaunchTemplateId"),
            name: get("LaunchTemplateName"),
            version: get("Version"),
            pairs,
        };
        if from.id.is_none() && from.name.is_none() {
            return Err(ApiError::MissingParameter(
                "LaunchTemplate.LaunchTemplateId or LaunchTemplate.LaunchTemplateName".into(),
            ));
        }
        Ok(RunInstances { req: RunRequest::default(), from_template: Some(from) })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let req = match self.from_template {
            None => self.req,
            Some(from) => {
                let (id, version, data) = ctx
                    .control
                    .resolve_launch_template(
                        &ctx.caller,
                        from.id.as_deref(),
                        from.name.as_deref(),
                        from.version.as_deref(),
                    )
                    .await?;
                let mut p = from.merge(&data)?;
                let mut r = decode_run(&mut p)?;
                p.finish(Self::NAME)?;
                r.launch_template = Some((id.to_string(), version));
                r
            }
        };
        let mut req = req;
        if let Some(name) = req.image_id.strip_prefix("resolve:ssm:") {
            req.image_id = super::ssm::resolve(&ctx.control, name).await?.ok_or_else(|| {
                ApiError::invalid_value(format!("The parameter {name} in ImageId resolve:ssm:{name} does not exist"))
            })?;
        }
        let list = ctx.control.run_instances(&ctx.caller, req).await?;
        write_reservation(ctx, x, &list);
        Ok(())
    }
}

/// `InstanceId.N`, filters and a page, for the Describe actions where instance ids and
/// MaxResults exclude each other (as on EC2).
fn instance_ids_filters_page(p: &mut Params) -> ApiResult<(Vec<String>, Vec<Filter>, Page)> {
    let (ids, filters, page) = (p.list("InstanceId")?, p.filters()?, Page::decode(p, 5, 1000)?);
    if page.max.is_some() && !ids.is_empty() {
        return Err(ApiError::InvalidParameterCombination(
            "The parameter instancesSet cannot be used with the parameter maxResults".into(),
        ));
    }
    Ok((ids, filters, page))
}

pub struct DescribeInstances {
    ids: Vec<String>,
    filters: Vec<Filter>,
    page: Page,
}

impl Action for DescribeInstances {
    const NAME: &'static str = "DescribeInstances";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        let (ids, filters, page) = instance_ids_filters_page(p)?;
        Ok(DescribeInstances { ids, filters, page })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let (list, next) = ctx
            .control
            .describe_instances(&ctx.caller, &self.ids, &self.filters, self.page.max, self.page.token.as_deref())
            .await?;
        let mut groups: Vec<Vec<Instance>> = Vec::new();
        for i in list {
            match groups.iter_mut().find(|g| g[0].reservation_id == i.reservation_id) {
                Some(g) => g.push(i),
                None => groups.push(vec![i]),
            }
        }
        x.list("reservationSet", groups, |x, g| write_reservation(ctx, x, &g));
        write_next_token(x, next);
        Ok(())
    }
}

fn write_changes(x: &mut Xml, changes: Vec<StateChange>) {
    x.list("instancesSet", changes, |x, c| {
        x.field("instanceId", &c.id);
        write_state(x, "currentState", c.current);
        write_state(x, "previousState", c.previous);
    });
}

pub struct StartInstances {
    ids: Vec<String>,
}

impl Action for StartInstances {
    const NAME: &'static str = "StartInstances";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        p.str("AdditionalInfo");
        Ok(StartInstances { ids: p.list("InstanceId")? })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let changes = ctx.control.start_instances(&ctx.caller, &self.ids).await?;
        write_changes(x, changes);
        Ok(())
    }
}

pub struct StopInstances {
    ids: Vec<String>,
    force: bool,
}

impl Action for StopInstances {
    const NAME: &'static str = "StopInstances";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        if p.bool("Hibernate")? == Some(true) {
            return Err(ApiError::invalid_value("Hibernation is not supported"));
        }
        let skip = p.bool("SkipOsShutdown")?.unwrap_or(false);
        Ok(StopInstances { ids: p.list("InstanceId")?, force: p.bool("Force")?.unwrap_or(false) || skip })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let changes = ctx.control.stop_instances(&ctx.caller, &self.ids, self.force).await?;
        write_changes(x, changes);
        Ok(())
    }
}

pub struct TerminateInstances {
    ids: Vec<String>,
}

impl Action for TerminateInstances {
    const NAME: &'static str = "TerminateInstances";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        p.bool("Force")?;
        p.bool("SkipOsShutdown")?;
        Ok(TerminateInstances { ids: p.list("InstanceId")? })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let changes = ctx.control.terminate_instances(&ctx.caller, &self.ids).await?;
        write_changes(x, changes);
        Ok(())
    }
}

pub struct RebootInstances {
    ids: Vec<String>,
}

impl Action for RebootInstances {
    const NAME: &'static str = "RebootInstances";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(RebootInstances { ids: p.list("InstanceId")? })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        ctx.control.reboot_instances(&ctx.caller, &self.ids).await?;
        x.field("return", true);
        Ok(())
    }
}

/// The serial console is kept to its latest 64 KiB, as EC2 returns.
const CONSOLE_BYTES: usize = 64 * 1024;

pub struct GetConsoleOutput {
    id: String,
}

impl Action for GetConsoleOutput {
    const NAME: &'static str = "GetConsoleOutput";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        p.bool("Latest")?;
        Ok(GetConsoleOutput { id: p.required("InstanceId")? })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let i = ctx.control.instance(&ctx.caller, &self.id).await?;
        // Instances launched before consoles moved to the storage dir have theirs in the run
        // directory.
        let bytes = std::fs::read(ctx.control.console_file(i.id.as_str()))
            .or_else(|_| std::fs::read(ctx.control.instances_dir().join(i.id.as_str()).join("console.log")))
            .unwrap_or_default();
        let tail = &bytes[bytes.len().saturating_sub(CONSOLE_BYTES)..];
        x.field("instanceId", &i.id).field("timestamp", super::timestamp(&chrono::Utc::now()));
        if !tail.is_empty() {
            x.field("output", base64::engine::general_purpose::STANDARD.encode(tail));
        }
        Ok(())
    }
}

pub struct DescribeInstanceStatus {
    ids: Vec<String>,
    filters: Vec<Filter>,
    all: bool,
    page: Page,
}

impl Action for DescribeInstanceStatus {
    const NAME: &'static str = "DescribeInstanceStatus";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(DescribeInstanceStatus {
            ids: p.list("InstanceId")?,
            filters: p.filters()?,
            all: p.bool("IncludeAllInstances")?.unwrap_or(false),
            page: Page::decode(p, 5, 1000)?,
        })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        // Status filters are on the checks, which DescribeInstances does not know.
        let mut state_filters = Vec::new();
        let mut status_filters = Vec::new();
        for f in self.filters {
            match f.name.as_str() {
                "instance-status.status" | "system-status.status" => status_filters.push(f),
                "instance-state-name" | "instance-state-code" | "availability-zone" => state_filters.push(f),
                other => return Err(ApiError::InvalidFilter(format!("The filter '{other}' is invalid"))),
            }
        }
        let (list, next) = ctx
            .control
            .describe_instances(&ctx.caller, &self.ids, &state_filters, self.page.max, self.page.token.as_deref())
            .await?;
        // A running instance whose host stopped heartbeating: the system check fails, and
        // nothing is known of the guest.
        let down: std::collections::HashSet<String> = ctx
            .control
            .hosts()
            .await?
            .into_iter()
            .filter(|h| !ctx.control.host_live(h))
            .map(|h| h.id.to_string())
            .collect();
        let checks = |i: &Instance| -> (&'static str, &'static str) {
            match i.state {
                InstanceState::Running if i.host_id.as_ref().is_some_and(|h| down.contains(h)) => {
                    ("insufficient-data", "impaired")
                }
                InstanceState::Running if i.status_ok => ("ok", "ok"),
                InstanceState::Running => ("initializing", "ok"),
                _ => ("not-applicable", "not-applicable"),
            }
        };
        let list: Vec<Instance> = list
            .into_iter()
            .filter(|i| self.all || i.state == InstanceState::Running)
            .filter(|i| {
                let (inst, sys) = checks(i);
                status_filters.iter().all(|f| {
                    let v = if f.name == "instance-status.status" { inst } else { sys };
                    f.values.iter().any(|p| crate::control::filter::wildcard(p, v))
                })
            })
            .collect();
        x.list("instanceStatusSet", list, |x, i| {
            let (inst, sys) = checks(&i);
            x.field("instanceId", &i.id).field("availabilityZone", &i.availability_zone);
            write_state(x, "instanceState", i.state);
            for (tag, status) in [("systemStatus", sys), ("instanceStatus", inst)] {
                x.open(tag).field("status", status).list("details", [status], |x, s| {
                    let detail = match s {
                        "ok" => "passed",
                        "initializing" => "initializing",
                        "impaired" => "failed",
                        "insufficient-data" => "insufficient-data",
                        _ => "not-applicable",
                    };
                    x.field("name", "reachability").field("status", detail);
                });
                x.close(tag);
            }
        });
        write_next_token(x, next);
        Ok(())
    }
}

pub struct ModifyInstanceAttribute {
    id: String,
    change: AttributeChange,
}

impl Action for ModifyInstanceAttribute {
    const NAME: &'static str = "ModifyInstanceAttribute";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        let id = p.required("InstanceId")?;
        let mut changes = Vec::new();
        if let Some(t) = p.str("InstanceType.Value") {
            changes.push(AttributeChange::InstanceType(t));
        }
        if let Some(u) = p.str("UserData.Value") {
            changes.push(AttributeChange::UserData(u));
        }
        if let Some(v) = p.bool("DisableApiTermination.Value")? {
            changes.push(AttributeChange::DisableApiTermination(v));
        }
        if let Some(v) = p.bool("DisableApiStop.Value")? {
            changes.push(AttributeChange::DisableApiStop(v));
        }
        if let Some(v) = p.bool("EbsOptimized.Value")? {
            changes.push(AttributeChange::EbsOptimized(v));
        }
        // Strato keeps source/destination checking on (anti-spoofing at every tap) and its
        // NICs are virtio, not ENA: asking for what is already so is fine.
        if p.bool("SourceDestCheck.Value")? == Some(false) {
            return Err(ApiError::UnsupportedOperation(
                "Strato does not turn source/destination checking off (SourceDestCheck.Value=false)".into(),
            ));
        }
        if p.bool("EnaSupport.Value")? == Some(true) {
            return Err(ApiError::UnsupportedOperation(
                "Strato's network interfaces are virtio, not ENA (EnaSupport.Value=true)".into(),
            ));
        }
        if let Some(b) = p.str("InstanceInitiatedShutdownBehavior.Value") {
            changes.push(AttributeChange::ShutdownBehavior(b));
        }
        let groups = p.list("GroupId")?;
        if !groups.is_empty() {
            changes.push(AttributeChange::Groups(groups));
        }
        match (p.str("Attribute"), p.str("Value")) {
            (Some(a), Some(v)) => changes.push(match a.as_str() {
                "instanceType" => AttributeChange::InstanceType(v),
                "userData" => AttributeChange::UserData(v),
                "disableApiTermination" => AttributeChange::DisableApiTermination(v.eq_ignore_ascii_case("true")),
                "disableApiStop" => AttributeChange::DisableApiStop(v.eq_ignore_ascii_case("true")),
                "ebsOptimized" => AttributeChange::EbsOptimized(v.eq_ignore_ascii_case("true")),
                "instanceInitiatedShutdownBehavior" => AttributeChange::ShutdownBehavior(v),
                other => {
                    return Err(ApiError::invalid_value(format!("The attribute '{other}' cannot be modified here")))
                }
            }),
            (Some(_), None) => return Err(ApiError::MissingParameter("Value".into())),
            (None, Some(_)) => return Err(ApiError::MissingParameter("Attribute".into())),
            (None, None) => {}
        }
        for unsupported in ["SriovNetSupport.Value", "Kernel.Value", "Ramdisk.Value"] {
            if p.str(unsupported).is_some() {
                return Err(ApiError::invalid_value(format!(
                    "{} cannot be modified on Strato instances",
                    unsupported.trim_end_matches(".Value")
                )));
            }
        }
        let mut devices = Vec::new();
        for n in p.indices("BlockDeviceMapping")? {
            let b = format!("BlockDeviceMapping.{n}");
            let device = p
                .str(&format!("{b}.DeviceName"))
                .ok_or_else(|| ApiError::MissingParameter(format!("{b}.DeviceName")))?;
            let delete = p
                .bool(&format!("{b}.Ebs.DeleteOnTermination"))?
                .ok_or_else(|| ApiError::MissingParameter(format!("{b}.Ebs.DeleteOnTermination")))?;
            for other in ["Ebs.VolumeId", "NoDevice", "VirtualName"] {
                if p.str(&format!("{b}.{other}")).is_some() {
                    return Err(ApiError::InvalidParameterCombination(format!(
                        "{other} cannot be modified: only Ebs.DeleteOnTermination of an attached volume"
                    )));
                }
            }
            devices.push((device, delete));
        }
        if !devices.is_empty() {
            changes.push(AttributeChange::DeleteOnTermination(devices));
        }
        match changes.len() {
            0 => Err(ApiError::MissingParameter("Attribute".into())),
            1 => Ok(ModifyInstanceAttribute { id, change: changes.remove(0) }),
            _ => Err(ApiError::InvalidParameterCombination("Only one attribute can be modified at a time".into())),
        }
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        ctx.control.modify_instance_attribute(&ctx.caller, &self.id, self.change).await?;
        x.field("return", true);
        Ok(())
    }
}

pub struct DescribeInstanceCreditSpecifications {
    ids: Vec<String>,
    filters: Vec<Filter>,
    page: Page,
}

impl Action for DescribeInstanceCreditSpecifications {
    const NAME: &'static str = "DescribeInstanceCreditSpecifications";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        let (ids, filters, page) = instance_ids_filters_page(p)?;
        Ok(DescribeInstanceCreditSpecifications { ids, filters, page })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let (list, next) = ctx
            .control
            .describe_credit_specs(&ctx.caller, &self.ids, &self.filters, self.page.max, self.page.token.as_deref())
            .await?;
        x.list("instanceCreditSpecificationSet", list, |x, c| {
            x.field("instanceId", &c.instance_id).field("cpuCredits", &c.cpu_credits);
        });
        write_next_token(x, next);
        Ok(())
    }
}

pub struct ModifyInstanceCreditSpecification {
    changes: Vec<(String, String)>,
}

impl Action for ModifyInstanceCreditSpecification {
    const NAME: &'static str = "ModifyInstanceCreditSpecification";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        // Idempotent by nature (it sets a value): the token needs no record.
        p.str("ClientToken");
        let mut changes = Vec::new();
        for n in p.indices("InstanceCreditSpecification")? {
            let id = p.required(&format!("InstanceCreditSpecification.{n}.InstanceId"))?;
            let credits = p.required(&format!("InstanceCreditSpecification.{n}.CpuCredits"))?;
            changes.push((id, credits));
        }
        if changes.is_empty() {
            return Err(ApiError::MissingParameter("InstanceCreditSpecification".into()));
        }
        Ok(ModifyInstanceCreditSpecification { changes })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let results = ctx.control.modify_credit_specs(&ctx.caller, &self.changes).await?;
        x.list("successfulInstanceCreditSpecificationSet", results.iter().filter(|r| r.1.is_none()), |x, r| {
            x.field("instanceId", &r.0);
        });
        x.list("unsuccessfulInstanceCreditSpecificationSet", results.iter().filter(|r| r.1.is_some()), |x, r| {
            x.field("instanceId", &r.0);
            if let Some((code, message)) = &r.1 {
                x.open("error").field("code", code).field("message", message).close("error");
            }
        });
        Ok(())
    }
}

pub struct DescribeInstanceAttribute {
    id: String,
    attribute: String,
}

impl Action for DescribeInstanceAttribute {
    const NAME: &'static str = "DescribeInstanceAttribute";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(DescribeInstanceAttribute { id: p.required("InstanceId")?, attribute: p.required("Attribute")? })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let (id, v) = ctx.control.describe_instance_attribute(&ctx.caller, &self.id, &self.attribute).await?;
        x.field("instanceId", id);
        let value = |x: &mut Xml, tag: &str, v: String| {
            x.open(tag).field("value", v).close(tag);
        };
        match v {
            AttributeValue::InstanceType(t) => value(x, "instanceType", t),
            AttributeValue::UserData(Some(u)) => value(x, "userData", u),
            AttributeValue::UserData(None) => {
                x.open("userData").close("userData");
            }
            AttributeValue::DisableApiTermination(b) => value(x, "disableApiTermination", b.to_string()),
            AttributeValue::ShutdownBehavior(b) => value(x, "instanceInitiatedShutdownBehavior", b),
            AttributeValue::RootDeviceName => value(x, "rootDeviceName", "/dev/xvda".into()),
            AttributeValue::BlockDeviceMapping(i) => {
                x.list("blockDeviceMapping", &i.block_devices, write_block_device);
            }
            AttributeValue::Groups(g) => {
                x.list("groupSet", g, |x, (id, _)| {
                    x.field("groupId", id);
                });
            }
            AttributeValue::Kernel => {
                x.open("kernel").close("kernel");
            }
            AttributeValue::Ramdisk => {
                x.open("ramdisk").close("ramdisk");
            }
            AttributeValue::SourceDestCheck => value(x, "sourceDestCheck", "true".into()),
            AttributeValue::EbsOptimized(v) => value(x, "ebsOptimized", v.to_string()),
            AttributeValue::EnaSupport => value(x, "enaSupport", "false".into()),
            AttributeValue::DisableApiStop(v) => value(x, "disableApiStop", v.to_string()),
            // Strato's instances carry no product codes and no SR-IOV NIC; no enclaves.
            AttributeValue::ProductCodes => {
                x.list("productCodes", Vec::<()>::new(), |_, _| {});
            }
            AttributeValue::SriovNetSupport => {
                x.open("sriovNetSupport").close("sriovNetSupport");
            }
            AttributeValue::EnclaveOptions => {
                x.open("enclaveOptions").field("enabled", false).close("enclaveOptions");
            }
        }
        Ok(())
    }
}

/// `default` (recovery on) or `disabled`.
fn auto_recovery(p: &mut Params, name: &str) -> ApiResult<Option<bool>> {
    match p.str(name).as_deref() {
        None => Ok(None),
        Some("default") => Ok(Some(true)),
        Some("disabled") => Ok(Some(false)),
        Some(o) => Err(ApiError::invalid_value(format!("Invalid value '{o}' for {name}: default or disabled"))),
    }
}

pub struct ModifyInstanceMaintenanceOptions {
    id: String,
    auto_recovery: Option<bool>,
}

impl Action for ModifyInstanceMaintenanceOptions {
    const NAME: &'static str = "ModifyInstanceMaintenanceOptions";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        let id = p.required("InstanceId")?;
        let auto_recovery = auto_recovery(p, "AutoRecovery")?;
        if p.str("RebootMigration").is_some_and(|v| v != "disabled") {
            return Err(ApiError::invalid_value("RebootMigration is not supported: Strato does not migrate at reboot"));
        }
        Ok(ModifyInstanceMaintenanceOptions { id, auto_recovery })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let i = ctx.control.modify_maintenance_options(&ctx.caller, &self.id, self.auto_recovery).await?;
        x.field("instanceId", &i.id).field("autoRecovery", if i.auto_recovery { "default" } else { "disabled" });
        Ok(())
    }
}

pub struct ModifyInstanceMetadataOptions {
    id: String,
    tokens_required: Option<bool>,
}

impl Action for ModifyInstanceMetadataOptions {
    const NAME: &'static str = "ModifyInstanceMetadataOptions";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        let id = p.required("InstanceId")?;
        let tokens_required = match p.str("HttpTokens").as_deref() {
            None => None,
            Some("required") => Some(true),
            Some("optional") => Some(false),
            Some(o) => return Err(ApiError::invalid_value(format!("Invalid HttpTokens '{o}': optional or required"))),
        };
        if let Some(e) = p.str("HttpEndpoint") {
            if e != "enabled" {
                return Err(ApiError::invalid_value(
                    "The metadata endpoint cannot be disabled on Strato instances yet",
                ));
            }
        }
        if let Some(h) = p.int("HttpPutResponseHopLimit")? {
            if h != 1 {
                return Err(ApiError::invalid_value("HttpPutResponseHopLimit is 1 on Strato instances"));
            }
        }
        for unsupported in ["HttpProtocolIpv6", "InstanceMetadataTags"] {
            if p.str(unsupported).is_some_and(|v| v != "disabled") {
                return Err(ApiError::invalid_value(format!("{unsupported} is not supported yet")));
            }
        }
        Ok(ModifyInstanceMetadataOptions { id, tokens_required })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let i = ctx.control.modify_metadata_options(&ctx.caller, &self.id, self.tokens_required).await?;
        x.field("instanceId", &i.id)
            .open("instanceMetadataOptions")
            .field("state", "applied")
            .field("httpTokens", if i.tokens_required { "required" } else { "optional" })
            .field("httpPutResponseHopLimit", 1)
            .field("httpEndpoint", "enabled")
            .field("httpProtocolIpv6", "disabled")
            .field("instanceMetadataTags", "disabled")
            .close("instanceMetadataOptions");
        Ok(())
    }
}
