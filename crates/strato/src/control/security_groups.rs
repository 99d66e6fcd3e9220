//! Security groups and their rules. A rule is one protocol and port range with exactly one
//! peer (a CIDR or another group); EC2's IpPermission, which bundles several peers for one
//! port range, is split into rules on the way in and regrouped on the way out.
//!
//! A new group allows all outbound traffic (the default egress rule); the default group of
//! a VPC also allows all inbound traffic from its own members, and cannot be deleted.
//! Enforcement on packets is the network's job (nftables); this module keeps the rules.

use sqlx::AnyConnection;

use super::cidr::{valid_ipv6_cidr, Ipv4Cidr};
use super::filter::{self, Filterable};
use super::model::{Caller, Peer, SecurityGroup, SgRule, Tags};
use super::network::select_ids;
use super::tags::{not_found_for, put_tags, tags_for};
use super::Control;
use crate::api::error::{ApiError, ApiResult};
use crate::api::query::{Filter, TagSpec};
use crate::ids::{AccountId, SecurityGroupId, SecurityGroupRuleId, VpcId};
use crate::store;

/// EC2's default quota of inbound (and, separately, outbound) rules per group.
pub const MAX_RULES_PER_DIRECTION: usize = 60;
const NAME_CHARS: &str = "._-:/()#,@[]+=&;{}!$* ";

/// One IpPermission as a request carries it.
#[derive(Debug, Clone, Default)]
pub struct IpPermission {
    pub protocol: String,
    pub from_port: Option<i64>,
    pub to_port: Option<i64>,
    pub ipv4: Vec<(String, Option<String>)>,
    pub ipv6: Vec<(String, Option<String>)>,
    pub groups: Vec<GroupPair>,
    pub prefix_lists: Vec<String>,
}

/// A group peer as a request names it.
#[derive(Debug, Clone, Default)]
pub struct GroupPair {
    pub group_id: Option<String>,
    pub group_name: Option<String>,
    pub user_id: Option<String>,
    pub description: Option<String>,
}

/// Which group a request is about: by id, or by name in the default VPC.
#[derive(Debug, Clone)]
pub enum GroupSelector {
    Id(String),
    Name(String),
}

/// The rules of one direction, regrouped as EC2 shows them.
#[derive(Debug, Clone)]
pub struct PermissionView {
    pub protocol: String,
    pub from_port: Option<i64>,
    pub to_port: Option<i64>,
    pub ipv4: Vec<(String, Option<String>)>,
    pub ipv6: Vec<(String, Option<String>)>,
    pub groups: Vec<(SecurityGroupId, AccountId, Option<String>)>,
}

pub async fn create_default_group(
    c: &mut AnyConnection,
    account: &AccountId,
    vpc: &VpcId,
) -> ApiResult<SecurityGroupId> {
    let g = SecurityGroup {
        id: SecurityGroupId::generate(),
        owner: account.clone(),
        vpc_id: vpc.clone(),
        name: "default".into(),
        description: "default VPC security group".into(),
        rules: vec![],
        tags: vec![],
    };
    store::insert_security_group(c, &g).await?;
    let ingress = SgRule {
        id: SecurityGroupRuleId::generate(),
        group_id: g.id.clone(),
        is_egress: false,
        protocol: "-1".into(),
        from_port: None,
        to_port: None,
        peer: Peer::Group { group_id: g.id.clone(), owner: account.clone() },
        description: None,
    };
    store::insert_rule(c, account, &ingress).await?;
    store::insert_rule(c, account, &default_egress(&g.id)).await?;
    Ok(g.id)
}

fn default_egress(group: &SecurityGroupId) -> SgRule {
    SgRule {
        id: SecurityGroupRuleId::generate(),
        group_id: group.clone(),
        is_egress: true,
        protocol: "-1".into(),
        from_port: None,
        to_port: None,
        peer: Peer::Ipv4("0.0.0.0/0".into()),
        description: None,
    }
}

/// Protocol names and numbers to EC2's canonical form.
fn normalise_protocol(p: &str) -> ApiResult<String> {
    let lower = p.to_ascii_lowercase();
    let canonical = match lower.as_str() {
        "-1" | "all" => "-1",
        "tcp" | "6" => "tcp",
        "udp" | "17" => "udp",
        "icmp" | "1" => "icmp",
        "icmpv6" | "58" => "icmpv6",
        other => match other.parse::<u8>() {
            Ok(_) => return Ok(other.to_owned()),
            Err(_) => {
                return Err(ApiError::invalid_value(format!("Invalid value '{p}' for IP protocol. Unknown protocol.")))
            }
        },
    };
    Ok(canonical.to_owned())
}

/// Checks ports for a protocol and returns them as stored (none for protocols without ports).
fn normalise_ports(protocol: &str, from: Option<i64>, to: Option<i64>) -> ApiResult<(Option<i64>, Option<i64>)> {
    match protocol {
        "tcp" | "udp" => {
            let (Some(f), Some(t)) = (from, to) else {
                return Err(ApiError::invalid_value(
                    "Invalid value 'Must specify both from and to ports with TCP/UDP.' for portRange",
                ));
            };
            if !(0..=65535).contains(&f) || !(0..=65535).contains(&t) {
                return Err(ApiError::invalid_value(format!(
                    "Invalid value '{f}-{t}' for portRange: ports are 0 to 65535"
                )));
            }
            if f > t {
                return Err(ApiError::invalid_value(format!(
                    "Invalid value '{f}-{t}' for portRange: the from port is above the to port"
                )));
            }
            Ok((Some(f), Some(t)))
        }
        "icmp" | "icmpv6" => {
            let f = from.unwrap_or(-1);
            let t = to.unwrap_or(-1);
            if !(-1..=255).contains(&f) || !(-1..=255).contains(&t) {
                return Err(ApiError::invalid_value(format!(
                    "Invalid value '{f}' for ICMP type or '{t}' for ICMP code"
                )));
            }
            Ok((Some(f), Some(t)))
        }
        _ => Ok((None, None)),
    }
}

fn check_description(d: &Option<String>) -> ApiResult<()> {
    if let Some(d) = d {
        if d.chars().count() > 255 || !d.chars().all(|c| c.is_ascii_alphanumeric() || NAME_CHARS.contains(c)) {
            return Err(ApiError::invalid_value(format!(
                "Invalid rule description '{d}': up to 255 of a-z, A-Z, 0-9, spaces and ._-:/()#,@[]+=&;{{}}!$*"
            )));
        }
    }
    Ok(())
}

impl Filterable for SecurityGroup {
    const FILTERS: &'static [&'static str] = &[
        "description",
        "group-id",
        "group-name",
        "owner-id",
        "vpc-id",
        "ip-permission.cidr",
        "ip-permission.from-port",
        "ip-permission.to-port",
        "ip-permission.protocol",
        "ip-permission.group-id",
        "ip-permission.group-name",
        "ip-permission.ipv6-cidr",
        "ip-permission.user-id",
        "egress.ip-permission.cidr",
        "egress.ip-permission.from-port",
        "egress.ip-permission.to-port",
        "egress.ip-permission.protocol",
        "egress.ip-permission.group-id",
        "egress.ip-permission.ipv6-cidr",
        "egress.ip-permission.user-id",
    ];
    fn filter_values(&self, name: &str) -> Vec<String> {
        let (egress, field) = match name.strip_prefix("egress.ip-permission.") {
            Some(f) => (true, f),
            None => match name.strip_prefix("ip-permission.") {
                Some(f) => (false, f),
                None => {
                    return match name {
                        "description" => vec![self.description.clone()],
                        "group-id" => vec![self.id.to_string()],
                        "group-name" => vec![self.name.clone()],
                        "owner-id" => vec![self.owner.to_string()],
                        "vpc-id" => vec![self.vpc_id.to_string()],
                        _ => vec![],
                    }
                }
            },
        };
        self.rules
            .iter()
            .filter(|r| r.is_egress == egress)
            .filter_map(|r| match (field, &r.peer) {
                ("cidr", Peer::Ipv4(c)) => Some(c.clone()),
                ("ipv6-cidr", Peer::Ipv6(c)) => Some(c.clone()),
                ("group-id", Peer::Group { group_id, .. }) => Some(group_id.to_string()),
                ("user-id", Peer::Group { owner, .. }) => Some(owner.to_string()),
                ("protocol", _) => Some(r.protocol.clone()),
                ("from-port", _) => r.from_port.map(|p| p.to_string()),
                ("to-port", _) => r.to_port.map(|p| p.to_string()),
                _ => None,
            })
            .collect()
    }
    fn tags(&self) -> &Tags {
        &self.tags
    }
    fn sort_key(&self) -> &str {
        self.id.as_str()
    }
}

/// A rule with its owner and tags, for DescribeSecurityGroupRules.
#[derive(Debug, Clone)]
pub struct RuleView {
    pub rule: SgRule,
    pub owner: AccountId,
    pub tags: Tags,
}

impl Filterable for RuleView {
    const FILTERS: &'static [&'static str] = &["group-id", "security-group-rule-id"];
    fn filter_values(&self, name: &str) -> Vec<String> {
        match name {
            "group-id" => vec![self.rule.group_id.to_string()],
            "security-group-rule-id" => vec![self.rule.id.to_string()],
            _ => vec![],
        }
    }
    fn tags(&self) -> &Tags {
        &self.tags
    }
    fn sort_key(&self) -> &str {
        self.rule.id.as_str()
    }
}

/// Regroups rules of one direction by protocol and ports, in first-seen order.
pub fn permissions(rules: &[SgRule], egress: bool) -> Vec<PermissionView> {
    let mut out: Vec<PermissionView> = Vec::new();
    for r in rules.iter().filter(|r| r.is_egress == egress) {
        let idx = match out
            .iter()
            .position(|p| p.protocol == r.protocol && p.from_port == r.from_port && p.to_port == r.to_port)
        {
            Some(i) => i,
            None => {
                out.push(PermissionView {
                    protocol: r.protocol.clone(),
                    from_port: r.from_port,
                    to_port: r.to_port,
                    ipv4: vec![],
                    ipv6: vec![],
                    groups: vec![],
                });
                out.len() - 1
            }
        };
        let p = &mut out[idx];
        match &r.peer {
            Peer::Ipv4(c) => p.ipv4.push((c.clone(), r.description.clone())),
            Peer::Ipv6(c) => p.ipv6.push((c.clone(), r.description.clone())),
            Peer::Group { group_id, owner } => p.groups.push((group_id.clone(), owner.clone(), r.description.clone())),
        }
    }
    out
}

fn group_not_found(id: &str) -> ApiError {
    ApiError::not_found("InvalidGroup.NotFound", format!("The security group '{id}' does not exist"))
}

/// Finds the group a request targets among the caller's groups.
fn select_group<'a>(
    groups: &'a [SecurityGroup],
    vpcs_default: Option<&VpcId>,
    sel: &GroupSelector,
) -> ApiResult<&'a SecurityGroup> {
    match sel {
        GroupSelector::Id(id) => {
            let id = SecurityGroupId::parse(id)?;
            groups.iter().find(|g| g.id == id).ok_or_else(|| group_not_found(id.as_str()))
        }
        GroupSelector::Name(name) => {
            groups.iter().find(|g| Some(&g.vpc_id) == vpcs_default && &g.name == name).ok_or_else(|| {
                ApiError::not_found(
                    "InvalidGroup.NotFound",
                    format!("The security group '{name}' does not exist in default VPC"),
                )
            })
        }
    }
}

impl Control {
    async fn load_groups(&self, c: &mut AnyConnection, account: &AccountId) -> ApiResult<Vec<SecurityGroup>> {
        let mut groups = store::security_groups(c, account).await?;
        let mut tags = store::tags_by_type(c, account, "security-group").await?;
        for g in &mut groups {
            g.tags = tags.remove(g.id.as_str()).unwrap_or_default();
        }
        Ok(groups)
    }

    async fn default_vpc(&self, c: &mut AnyConnection, account: &AccountId) -> ApiResult<Option<VpcId>> {
        Ok(store::vpcs(c, account).await?.into_iter().find(|v| v.is_default).map(|v| v.id))
    }

    pub async fn create_security_group(
        &self,
        caller: &Caller,
        name: &str,
        description: &str,
        vpc_id: Option<&str>,
        specs: &[TagSpec],
    ) -> ApiResult<(SecurityGroup, Tags)> {
        if name.is_empty() {
            return Err(ApiError::MissingParameter("GroupName".into()));
        }
        if description.is_empty() {
            return Err(ApiError::MissingParameter("GroupDescription".into()));
        }
        for (what, v) in [("GroupName", name), ("GroupDescription", description)] {
            if v.chars().count() > 255 || !v.chars().all(|c| c.is_ascii_alphanumeric() || NAME_CHARS.contains(c)) {
                return Err(ApiError::invalid_value(format!(
                    "Invalid value '{v}' for {what}: up to 255 of a-z, A-Z, 0-9, spaces and ._-:/()#,@[]+=&;{{}}!$*"
                )));
            }
        }
        if name.to_ascii_lowercase().starts_with("sg-") {
            return Err(ApiError::invalid_value("Group names may not be in the format sg-*"));
        }
        if name == "default" {
            return Err(ApiError::duplicate("InvalidGroup.Reserved", "The security group 'default' is reserved"));
        }
        let vpc_id = vpc_id.map(VpcId::parse).transpose()?;
        let tags = tags_for(specs, "security-group")?;
        let mut tx = self.store().begin_write().await?;
        let vpcs = store::vpcs(tx.conn(), &caller.account_id).await?;
        let vpc = match &vpc_id {
            Some(id) => vpcs.iter().find(|v| &v.id == id).ok_or_else(|| {
                ApiError::not_found("InvalidVpcID.NotFound", format!("The vpc ID '{id}' does not exist"))
            })?,
            None => vpcs
                .iter()
                .find(|v| v.is_default)
                .ok_or_else(|| ApiError::not_found("VPCIdNotSpecified", "No default VPC for this user"))?,
        };
        let groups = store::security_groups(tx.conn(), &caller.account_id).await?;
        if groups.iter().any(|g| g.vpc_id == vpc.id && g.name == name) {
            return Err(ApiError::duplicate(
                "InvalidGroup.Duplicate",
                format!("The security group '{name}' already exists for VPC '{}'", vpc.id),
            ));
        }
        let g = SecurityGroup {
            id: SecurityGroupId::generate(),
            owner: caller.account_id.clone(),
            vpc_id: vpc.id.clone(),
            name: name.to_owned(),
            description: description.to_owned(),
            rules: vec![],
            tags: tags.clone(),
        };
        store::insert_security_group(tx.conn(), &g).await?;
        store::insert_rule(tx.conn(), &caller.account_id, &default_egress(&g.id)).await?;
        put_tags(tx.conn(), &caller.account_id, g.id.as_str(), "security-group", &tags).await?;
        tx.commit().await?;
        Ok((g, tags))
    }

    pub async fn describe_security_groups(
        &self,
        caller: &Caller,
        ids: &[String],
        names: &[String],
        filters: &[Filter],
        max: Option<usize>,
        token: Option<&str>,
    ) -> ApiResult<(Vec<SecurityGroup>, Option<String>)> {
        for id in ids {
            SecurityGroupId::parse(id)?;
        }
        filter::check_filters::<SecurityGroup>(filters)?;
        let mut c = self.store().read().await?;
        let groups = self.load_groups(&mut c, &caller.account_id).await?;
        let groups = select_ids(groups, ids, |g| g.id.as_str(), group_not_found)?;
        let groups = if names.is_empty() {
            groups
        } else {
            let default_vpc = self.default_vpc(&mut c, &caller.account_id).await?;
            for n in names {
                if !groups.iter().any(|g| &g.name == n && Some(&g.vpc_id) == default_vpc.as_ref()) {
                    return Err(ApiError::not_found(
                        "InvalidGroup.NotFound",
                        format!("The security group '{n}' does not exist in default VPC"),
                    ));
                }
            }
            groups.into_iter().filter(|g| names.contains(&g.name) && Some(&g.vpc_id) == default_vpc.as_ref()).collect()
        };
        let groups = groups.into_iter().filter(|g| filter::matches(g, filters)).collect();
        filter::paginate(groups, max, token)
    }

    pub async fn delete_security_group(&self, caller: &Caller, sel: &GroupSelector) -> ApiResult<SecurityGroupId> {
        let mut tx = self.store().begin_write().await?;
        let groups = store::security_groups(tx.conn(), &caller.account_id).await?;
        let default_vpc = self.default_vpc(tx.conn(), &caller.account_id).await?;
        let g = select_group(&groups, default_vpc.as_ref(), sel)?;
        if g.name == "default" {
            return Err(ApiError::CannotDelete(format!(
                "the specified group: \"{}\" name: \"default\" cannot be deleted by a user",
                g.id
            )));
        }
        let users = store::groups_referencing(tx.conn(), &g.id).await?;
        if let Some(other) = users.first() {
            return Err(ApiError::DependencyViolation(format!("resource {} has a dependent object ({other})", g.id)));
        }
        let id = g.id.clone();
        for r in &g.rules {
            store::delete_all_tags(tx.conn(), r.id.as_str()).await?;
        }
        store::delete_security_group(tx.conn(), &caller.account_id, &id).await?;
        store::delete_all_tags(tx.conn(), id.as_str()).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Expands permissions into rules for `group`, resolving group peers among the caller's
    /// groups in the same VPC.
    fn expand(
        &self,
        group: &SecurityGroup,
        groups: &[SecurityGroup],
        caller: &Caller,
        perms: &[IpPermission],
        egress: bool,
    ) -> ApiResult<Vec<SgRule>> {
        if perms.is_empty() {
            return Err(ApiError::MissingParameter("IpPermissions".into()));
        }
        let mut rules = Vec::new();
        for p in perms {
            if p.protocol.is_empty() {
                return Err(ApiError::MissingParameter("IpProtocol".into()));
            }
            let protocol = normalise_protocol(&p.protocol)?;
            let (from_port, to_port) = normalise_ports(&protocol, p.from_port, p.to_port)?;
            if !p.prefix_lists.is_empty() {
                return Err(ApiError::invalid_value("Prefix lists are not supported by Strato yet"));
            }
            let mut peers: Vec<(Peer, Option<String>)> = Vec::new();
            for (cidr, d) in &p.ipv4 {
                Ipv4Cidr::parse(cidr, false)
                    .ok_or_else(|| ApiError::invalid_value(format!("CIDR block {cidr} is malformed")))?;
                check_description(d)?;
                peers.push((Peer::Ipv4(cidr.clone()), d.clone()));
            }
            for (cidr, d) in &p.ipv6 {
                if !valid_ipv6_cidr(cidr) {
                    return Err(ApiError::invalid_value(format!("CIDR block {cidr} is malformed")));
                }
                check_description(d)?;
                peers.push((Peer::Ipv6(cidr.clone()), d.clone()));
            }
            for pair in &p.groups {
                check_description(&pair.description)?;
                if let Some(user) = &pair.user_id {
                    if user != caller.account_id.as_str() {
                        return Err(ApiError::not_found("InvalidGroup.NotFound", format!("You have specified two resources that belong to different networks: the group of account {user} is not reachable without VPC peering, which Strato does not offer yet")));
                    }
                }
                let peer = match (&pair.group_id, &pair.group_name) {
                    (Some(id), _) => {
                        let id = SecurityGroupId::parse(id)?;
                        groups.iter().find(|g| g.id == id).ok_or_else(|| group_not_found(id.as_str()))?
                    }
                    (None, Some(name)) => {
                        groups.iter().find(|g| &g.name == name && g.vpc_id == group.vpc_id).ok_or_else(|| {
                            ApiError::not_found(
                                "InvalidGroup.NotFound",
                                format!("The security group '{name}' does not exist in VPC '{}'", group.vpc_id),
                            )
                        })?
                    }
                    (None, None) => return Err(ApiError::MissingParameter("GroupId".into())),
                };
                if peer.vpc_id != group.vpc_id {
                    return Err(ApiError::invalid_value(format!(
                        "You have specified two resources that belong to different networks: {} and {}",
                        group.id, peer.id
                    )));
                }
                peers.push((
                    Peer::Group { group_id: peer.id.clone(), owner: peer.owner.clone() },
                    pair.description.clone(),
                ));
            }
            if peers.is_empty() {
                return Err(ApiError::MissingParameter("IpRanges, Ipv6Ranges or UserIdGroupPairs".into()));
            }
            for (peer, description) in peers {
                rules.push(SgRule {
                    id: SecurityGroupRuleId::generate(),
                    group_id: group.id.clone(),
                    is_egress: egress,
                    protocol: protocol.clone(),
                    from_port,
                    to_port,
                    peer,
                    description,
                });
            }
        }
        Ok(rules)
    }

    /// AuthorizeSecurityGroupIngress / Egress: all rules are added, or none.
    pub async fn authorize(
        &self,
        caller: &Caller,
        sel: &GroupSelector,
        perms: &[IpPermission],
        egress: bool,
        specs: &[TagSpec],
    ) -> ApiResult<(Vec<SgRule>, AccountId, Tags)> {
        let tags = tags_for(specs, "security-group-rule")?;
        let mut tx = self.store().begin_write().await?;
        let groups = store::security_groups(tx.conn(), &caller.account_id).await?;
        let default_vpc = self.default_vpc(tx.conn(), &caller.account_id).await?;
        let group = select_group(&groups, default_vpc.as_ref(), sel)?;
        let new_rules = self.expand(group, &groups, caller, perms, egress)?;
        for (i, r) in new_rules.iter().enumerate() {
            if group.rules.iter().chain(&new_rules[..i]).any(|o| o.same_permission(r)) {
                return Err(ApiError::duplicate(
                    "InvalidPermission.Duplicate",
                    format!("the specified rule \"{}\" already exists", describe_rule(r)),
                ));
            }
        }
        let count = group.rules.iter().filter(|r| r.is_egress == egress).count() + new_rules.len();
        if count > MAX_RULES_PER_DIRECTION {
            return Err(ApiError::LimitExceeded {
                code: "RulesPerSecurityGroupLimitExceeded",
                message: "The maximum number of rules per security group has been reached.".into(),
            });
        }
        for r in &new_rules {
            store::insert_rule(tx.conn(), &caller.account_id, r).await?;
            put_tags(tx.conn(), &caller.account_id, r.id.as_str(), "security-group-rule", &tags).await?;
        }
        tx.commit().await?;
        Ok((new_rules, group.owner.clone(), tags))
    }

    /// RevokeSecurityGroupIngress / Egress, by rule ids or by permissions. Permissions that
    /// match no rule come back as unknown; if nothing matched at all, it is an error.
    pub async fn revoke(
        &self,
        caller: &Caller,
        sel: &GroupSelector,
        perms: &[IpPermission],
        rule_ids: &[String],
        egress: bool,
    ) -> ApiResult<(Vec<SgRule>, Vec<IpPermission>)> {
        if !perms.is_empty() && !rule_ids.is_empty() {
            return Err(ApiError::InvalidParameterCombination(
                "Specify either IpPermissions or SecurityGroupRuleIds, not both".into(),
            ));
        }
        let mut tx = self.store().begin_write().await?;
        let groups = store::security_groups(tx.conn(), &caller.account_id).await?;
        let default_vpc = self.default_vpc(tx.conn(), &caller.account_id).await?;
        let group = select_group(&groups, default_vpc.as_ref(), sel)?;
        let mut revoked = Vec::new();
        let mut unknown = Vec::new();
        if !rule_ids.is_empty() {
            for id in rule_ids {
                let id = SecurityGroupRuleId::parse(id)?;
                match group.rules.iter().find(|r| r.id == id && r.is_egress == egress) {
                    Some(r) => revoked.push(r.clone()),
                    None => {
                        return Err(ApiError::not_found(
                            "InvalidSecurityGroupRuleId.NotFound",
                            format!("The security group rule ID '{id}' does not exist"),
                        ))
                    }
                }
            }
        } else {
            for p in perms {
                let candidates = self.expand(group, &groups, caller, std::slice::from_ref(p), egress)?;
                let mut any = false;
                for c in candidates {
                    if let Some(r) = group.rules.iter().find(|r| r.same_permission(&c)) {
                        if !revoked.contains(r) {
                            revoked.push(r.clone());
                        }
                        any = true;
                    }
                }
                if !any {
                    unknown.push(p.clone());
                }
            }
            if revoked.is_empty() {
                return Err(ApiError::InvalidPermissionNotFound(
                    "The specified rule does not exist in this security group.".into(),
                ));
            }
        }
        for r in &revoked {
            store::delete_rule(tx.conn(), &r.id).await?;
            store::delete_all_tags(tx.conn(), r.id.as_str()).await?;
        }
        tx.commit().await?;
        Ok((revoked, unknown))
    }

    /// ModifySecurityGroupRules: each named rule of the group becomes the one given (its id
    /// and direction kept), all or none. A change that makes it equal to another rule of the
    /// group is a duplicate.
    pub async fn modify_security_group_rules(
        &self,
        caller: &Caller,
        group_id: &str,
        changes: &[(String, IpPermission)],
    ) -> ApiResult<()> {
        let gid = SecurityGroupId::parse(group_id)?;
        let mut tx = self.store().begin_write().await?;
        let groups = store::security_groups(tx.conn(), &caller.account_id).await?;
        let group = groups.iter().find(|g| g.id == gid).ok_or_else(|| not_found_for("security-group", group_id))?;
        let mut rules = group.rules.clone();
        for (rule_id, perm) in changes {
            let rid = SecurityGroupRuleId::parse(rule_id)?;
            let at = rules.iter().position(|r| r.id == rid).ok_or_else(|| {
                ApiError::not_found(
                    "InvalidSecurityGroupRuleId.NotFound",
                    format!("The security group rule ID '{rule_id}' does not exist"),
                )
            })?;
            let old = rules[at].clone();
            let mut new =
                match self.expand(group, &groups, caller, std::slice::from_ref(perm), old.is_egress)?.as_slice() {
                    [one] => one.clone(),
                    _ => {
                        return Err(ApiError::invalid_value(
                            "A security group rule has exactly one peer: CidrIpv4, CidrIpv6 or ReferencedGroupId",
                        ))
                    }
                };
            new.id = old.id.clone();
            if rules.iter().any(|r| r.id != new.id && r.same_permission(&new)) {
                return Err(ApiError::duplicate(
                    "InvalidPermission.Duplicate",
                    format!("the specified rule \"{}\" already exists", describe_rule(&new)),
                ));
            }
            rules[at] = new;
        }
        for r in rules.iter().filter(|r| !group.rules.contains(r)) {
            store::delete_rule(tx.conn(), &r.id).await?;
            store::insert_rule(tx.conn(), &caller.account_id, r).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn describe_security_group_rules(
        &self,
        caller: &Caller,
        ids: &[String],
        filters: &[Filter],
        max: Option<usize>,
        token: Option<&str>,
    ) -> ApiResult<(Vec<RuleView>, Option<String>)> {
        for id in ids {
            SecurityGroupRuleId::parse(id)?;
        }
        filter::check_filters::<RuleView>(filters)?;
        let mut c = self.store().read().await?;
        let groups = store::security_groups(&mut c, &caller.account_id).await?;
        let mut tags = store::tags_by_type(&mut c, &caller.account_id, "security-group-rule").await?;
        let rules: Vec<RuleView> = groups
            .into_iter()
            .flat_map(|g| {
                let owner = g.owner.clone();
                g.rules.into_iter().map(move |rule| (rule, owner.clone()))
            })
            .map(|(rule, owner)| RuleView { tags: tags.remove(rule.id.as_str()).unwrap_or_default(), rule, owner })
            .collect();
        filter::select_filter_page(
            rules,
            ids,
            |r| r.rule.id.as_str(),
            |id| {
                ApiError::not_found(
                    "InvalidSecurityGroupRuleId.NotFound",
                    format!("The security group rule ID '{id}' does not exist"),
                )
            },
            filters,
            max,
            token,
        )
    }
}

fn describe_rule(r: &SgRule) -> String {
    let peer = match &r.peer {
        Peer::Ipv4(c) | Peer::Ipv6(c) => c.clone(),
        Peer::Group { group_id, .. } => group_id.to_string(),
    };
    let proto = if r.protocol == "-1" { "ALL".to_owned() } else { r.protocol.to_uppercase() };
    match (r.from_port, r.to_port) {
        (Some(f), Some(t)) => format!("peer: {peer}, {proto}, from port: {f}, to port: {t}, ALLOW"),
        _ => format!("peer: {peer}, {proto}, ALLOW"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_and_ports() {
        assert_eq!(normalise_protocol("6").unwrap(), "tcp");
        assert_eq!(normalise_protocol("ALL").unwrap(), "-1");
        assert_eq!(normalise_protocol("47").unwrap(), "47");
        assert!(normalise_protocol("bogus").is_err());
        assert!(normalise_ports("tcp", Some(22), None).is_err());
        assert!(normalise_ports("tcp", Some(80), Some(22)).is_err());
        assert!(normalise_ports("udp", Some(0), Some(70000)).is_err());
        assert_eq!(normalise_ports("-1", Some(5), Some(6)).unwrap(), (None, None));
        assert_eq!(normalise_ports("icmp", None, None).unwrap(), (Some(-1), Some(-1)));
    }
}
