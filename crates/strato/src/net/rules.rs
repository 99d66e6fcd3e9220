//! The nftables rulesets of a VPC namespace and of the host, as `nft -j` JSON, computed from
//! what the control plane says (pure functions: no system is touched here).
//!
//! In a VPC namespace:
//! - `bridge strato`: anti-spoofing on every tap, an allowlist. A frame from a tap leaves
//!   only if it is untagged IPv4 or ARP with the instance's MAC and the instance's address
//!   as its sender (DHCP discovery from 0.0.0.0 and ARP probes excepted); everything else
//!   (802.1Q-tagged frames, VLAN 0 included; IPv6, none here; other ethertypes) is dropped.
//!   This is what makes "the packet's source address" a trustworthy name for an instance.
//! - `inet strato`: security groups, stateful. Bridged traffic goes through the `inet`
//!   hooks with conntrack because the namespace sets `bridge-nf-call-iptables` (nftables
//!   `inet` rules cannot see which tap a bridged packet uses, measured, so instances are
//!   named by their verified addresses). `forward`: established/related pass; a new flow
//!   from instance A to instance B passes A's egress chain (a matching rule returns, else
//!   drop) and B's ingress chain (a matching rule accepts, else drop). New flows coming in
//!   from the host uplink were checked by the host table and pass. `input` (the namespace
//!   itself) admits only DHCP, the metadata service and ICMP from instances.
//! - With instances of the VPC on other hosts (`Vxlan`), the bridge has a port `vx0`, a
//!   VXLAN tunnel to those hosts. A flow between hosts is checked against the sender's
//!   egress rules on its host and the receiver's ingress rules on the receiver's (group
//!   peers expand to the members on every host). Each host's bridge holds the same router
//!   and DNS addresses, so ARP for them, DHCP and IPv6 do not cross the tunnel.
//! - `ip strato_nat`: public (transit) address -> private address, per public instance.
//!
//! On the host, table `ip strato_<site>`: the loopback public address is rewritten to its
//! transit address (nat `output`), the instance's ingress rules are checked against the
//! client's real address (filter `output`, before the source is rewritten), and the loopback
//! source is masqueraded on the uplinks (nat `postrouting`). Group peers cannot match there:
//! a host client is in no group.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde_json::{json, Value};

use crate::control::cidr::Ipv4Cidr;
use crate::control::model::{Peer, SgRule};

/// The name of the bridge in every VPC namespace.
pub const BRIDGE: &str = "br0";
/// The namespace's end of the link to the host.
pub const UPLINK: &str = "up0";
/// The metadata service address, on the namespace's loopback.
pub const METADATA_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// One instance as the network sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetInstance {
    pub id: String,
    pub tap: String,
    pub mac: String,
    pub private_ip: Ipv4Addr,
    /// The transit address its public address maps to, when it has one.
    pub transit_ip: Option<Ipv4Addr>,
    /// The loopback public address, when it has one.
    pub public_ip: Option<Ipv4Addr>,
    pub groups: Vec<String>,
    pub hostname: String,
}

/// An instance of the VPC whose VM is on another host, reached through the VXLAN tunnel.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RemoteInstance {
    pub id: String,
    pub mac: String,
    pub private_ip: Ipv4Addr,
    pub groups: Vec<String>,
    pub hostname: String,
    /// Its host's underlay address.
    pub underlay: Ipv4Addr,
}

/// Another host with instances of the VPC: the far end of a tunnel, and the MAC of its
/// router (its bridge) in this VPC.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct VxlanPeer {
    pub underlay: Ipv4Addr,
    pub router_mac: String,
}

/// The VPC's layer 2 across hosts: a VXLAN device `vx0` on the bridge, its VNI, this host's
/// underlay address, a flooding entry per peer host and a forwarding entry per remote MAC
/// (no learning: the control plane says where every MAC is).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Vxlan {
    pub vni: u32,
    pub local: Ipv4Addr,
    pub peers: Vec<VxlanPeer>,
    pub remote: Vec<RemoteInstance>,
}

/// The name of the VXLAN device in a VPC namespace.
pub const VXLAN: &str = "vx0";

/// One VPC as the network sees it: its subnets, its instances with a VM on this host, and the
/// rules of every group they use.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct VpcView {
    pub vpc_id: String,
    /// The VPC's DNS server (its base address + 2, as EC2's AmazonProvidedDNS).
    pub dns_ip: Option<Ipv4Addr>,
    /// The private DNS domain (`REGION.compute.internal`).
    pub domain: String,
    pub subnets: Vec<Ipv4Cidr>,
    pub instances: Vec<NetInstance>,
    pub rules: BTreeMap<String, Vec<SgRule>>,
    /// This host's router (bridge) MAC in this VPC: each host's differs, so that routed
    /// traffic to another host's instances finds its way back.
    #[serde(default)]
    pub router_mac: String,
    /// Set when the VPC reaches other hosts.
    #[serde(default)]
    pub vxlan: Option<Vxlan>,
    /// Its DHCP options set (empty: the default, the VPC's own DNS and domain).
    #[serde(default)]
    pub dhcp_options: super::DhcpConfig,
}

impl VpcView {
    /// The DNS servers the VPC's DHCP hands out: its options set's (`AmazonProvidedDNS`
    /// being the VPC's own), else the VPC's own.
    pub fn dns_servers(&self) -> Vec<Ipv4Addr> {
        match self.dhcp_options.iter().find(|(k, _)| k == "domain-name-servers") {
            Some((_, values)) => values
                .iter()
                .filter_map(|v| if v == "AmazonProvidedDNS" { self.dns_ip } else { v.parse().ok() })
                .collect(),
            None => self.dns_ip.into_iter().collect(),
        }
    }

    /// Addresses of the instances in a group (the peers of a group rule), on this host and
    /// on others.
    fn members(&self, group: &str) -> BTreeSet<Ipv4Addr> {
        let local = self.instances.iter().filter(|i| i.groups.iter().any(|g| g == group)).map(|i| i.private_ip);
        let remote = self.remote().iter().filter(|i| i.groups.iter().any(|g| g == group)).map(|i| i.private_ip);
        local.chain(remote).collect()
    }

    pub fn remote(&self) -> &[RemoteInstance] {
        self.vxlan.as_ref().map(|v| v.remote.as_slice()).unwrap_or_default()
    }

    /// The addresses this host's namespace answers for on every host: routers and DNS.
    pub fn router_addrs(&self) -> Vec<String> {
        let mut out: Vec<String> = self.subnets.iter().map(|s| Ipv4Addr::from(s.first() + 1).to_string()).collect();
        out.extend(self.dns_ip.map(|d| d.to_string()));
        out
    }
}

fn m(op: &str, left: Value, right: Value) -> Value {
    json!({"match": {"op": op, "left": left, "right": right}})
}

fn payload(protocol: &str, field: &str) -> Value {
    json!({"payload": {"protocol": protocol, "field": field}})
}

fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}

fn cidr_value(c: &Ipv4Cidr) -> Value {
    if c.prefix == 32 {
        json!(Ipv4Addr::from(c.addr).to_string())
    } else {
        json!({"prefix": {"addr": Ipv4Addr::from(c.first()).to_string(), "len": c.prefix}})
    }
}

fn verdict(v: &str) -> Value {
    json!({ v: null })
}

fn jump(chain: &str) -> Value {
    json!({"jump": {"target": chain}})
}

struct Batch {
    family: &'static str,
    table: String,
    cmds: Vec<Value>,
}

impl Batch {
    /// Replaces the table in one transaction: add (so that delete cannot fail), delete, add.
    fn new(family: &'static str, table: &str) -> Batch {
        let t = json!({"table": {"family": family, "name": table}});
        Batch {
            family,
            table: table.to_owned(),
            cmds: vec![json!({"add": t.clone()}), json!({"delete": t.clone()}), json!({"add": t})],
        }
    }

    fn base_chain(&mut self, name: &str, kind: &str, hook: &str, prio: i32, policy: &str) {
        self.cmds.push(json!({"add": {"chain": {
            "family": self.family, "table": self.table, "name": name,
            "type": kind, "hook": hook, "prio": prio, "policy": policy
        }}}));
    }

    fn chain(&mut self, name: &str) {
        self.cmds.push(json!({"add": {"chain": {"family": self.family, "table": self.table, "name": name}}}));
    }

    fn rule(&mut self, chain: &str, expr: Vec<Value>) {
        self.cmds.push(json!({"add": {"rule": {
            "family": self.family, "table": self.table, "chain": chain, "expr": expr
        }}}));
    }

    fn into_cmds(self) -> Vec<Value> {
        self.cmds
    }
}

/// The protocol and port matches of a rule; `None` when the rule can never match an IPv4
/// packet (an ICMPv6 rule).
fn proto_matches(r: &SgRule) -> Option<Vec<Value>> {
    let mut out = Vec::new();
    match r.protocol.as_str() {
        "-1" => {}
        "tcp" | "udp" => {
            out.push(m("==", meta("l4proto"), json!(r.protocol)));
            if let (Some(f), Some(t)) = (r.from_port, r.to_port) {
                if !(f == 0 && t == 65535) {
                    let right = if f == t { json!(f) } else { json!({"range": [f, t]}) };
                    out.push(m("==", payload("th", "dport"), right));
                }
            }
        }
        "icmp" => {
            out.push(m("==", meta("l4proto"), json!("icmp")));
            // For ICMP, FromPort is the type and ToPort the code; -1 is any.
            if let Some(t) = r.from_port.filter(|t| *t >= 0) {
                out.push(m("==", payload("icmp", "type"), json!(t)));
                if let Some(c) = r.to_port.filter(|c| *c >= 0) {
                    out.push(m("==", payload("icmp", "code"), json!(c)));
                }
            }
        }
        "icmpv6" => return None,
        other => {
            let n: u8 = other.parse().ok()?;
            out.push(m("==", meta("l4proto"), json!(n)));
        }
    }
    Some(out)
}

/// The peer match of a rule (`field` is `saddr` for ingress, `daddr` for egress); `None`
/// when it matches nothing (an IPv6 peer, or a group with no member here).
fn peer_match(r: &SgRule, field: &str, members: impl Fn(&str) -> BTreeSet<Ipv4Addr>) -> Option<Value> {
    match &r.peer {
        Peer::Ipv4(c) => {
            let c = Ipv4Cidr::parse(c, false)?;
            if c.prefix == 0 {
                Some(Value::Null)
            } else {
                Some(m("==", payload("ip", field), cidr_value(&c)))
            }
        }
        Peer::Group { group_id, .. } => {
            let set = members(group_id.as_str());
            if set.is_empty() {
                None
            } else {
                let items: Vec<String> = set.iter().map(|a| a.to_string()).collect();
                Some(m("==", payload("ip", field), json!({"set": items})))
            }
        }
        Peer::Ipv6(_) => None,
    }
}

/// The rules of a set of groups for one direction, as nft matches ending in `action`.
fn group_rules(view: &VpcView, groups: &[String], egress: bool, field: &str, action: &Value) -> Vec<Vec<Value>> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for g in groups {
        for r in view.rules.get(g).into_iter().flatten().filter(|r| r.is_egress == egress) {
            let (Some(mut expr), Some(peer)) = (proto_matches(r), peer_match(r, field, |g| view.members(g))) else {
                continue;
            };
            if !peer.is_null() {
                expr.insert(0, peer);
            }
            expr.push(action.clone());
            let key = serde_json::to_string(&expr).unwrap_or_default();
            if seen.insert(key) {
                out.push(expr);
            }
        }
    }
    out
}

fn chain_suffix(i: &NetInstance) -> &str {
    i.tap.trim_start_matches("tap")
}

/// The whole ruleset of one VPC namespace.
pub fn vpc_ruleset(view: &VpcView) -> Value {
    let mut cmds = Vec::new();

    // Anti-spoofing at the taps.
    let mut br = Batch::new("bridge", "strato");
    br.base_chain("forward", "filter", "forward", -200, "accept");
    br.base_chain("input", "filter", "input", -200, "accept");
    for i in &view.instances {
        let chain = format!("spoof_{}", chain_suffix(i));
        br.chain(&chain);
        for hook in ["forward", "input"] {
            br.rule(hook, vec![m("==", meta("iifname"), json!(i.tap)), jump(&chain)]);
        }
        let ip = i.private_ip.to_string();
        // An allowlist: plain (untagged) IPv4 from the instance's address, DHCP discovery
        // from 0.0.0.0, and ARP whose sender is the instance (or a probe from 0.0.0.0), each
        // with the instance's MAC; every other frame is dropped: 802.1Q-tagged ones (a
        // bridge takes VLAN 0 as untagged, and its ethertype is 0x8100, so a rule matching
        // `ether type ip` alone lets it by), IPv6 (none here), other ethertypes.
        br.rule(&chain, vec![m("!=", payload("ether", "saddr"), json!(i.mac)), verdict("drop")]);
        br.rule(
            &chain,
            vec![
                m("==", payload("ether", "type"), json!("ip")),
                m("==", payload("ip", "saddr"), json!("0.0.0.0")),
                m("==", payload("udp", "dport"), json!(67)),
                verdict("return"),
            ],
        );
        br.rule(
            &chain,
            vec![
                m("==", payload("ether", "type"), json!("ip")),
                m("==", payload("ip", "saddr"), json!(ip)),
                verdict("return"),
            ],
        );
        br.rule(
            &chain,
            vec![
                m("==", payload("ether", "type"), json!("arp")),
                m("==", payload("arp", "saddr ether"), json!(i.mac)),
                m("==", payload("arp", "saddr ip"), json!({"set": [ip, "0.0.0.0"]})),
                verdict("return"),
            ],
        );
        br.rule(&chain, vec![verdict("drop")]);
    }
    if view.vxlan.is_some() {
        // The tunnel carries instance traffic only: each host's router, DNS and DHCP serve
        // its own instances (the same addresses exist on every host's bridge), so ARP
        // requests for them, their ARP answers, DHCP and IPv6 neither enter nor leave
        // through it. (Answers *to* a router, which asked for a remote instance, do.)
        br.base_chain("output", "filter", "output", -200, "accept");
        for (chain, dir) in [("from_vxlan", "iifname"), ("to_vxlan", "oifname")] {
            br.chain(chain);
            let hooks: &[&str] = if dir == "iifname" { &["forward", "input"] } else { &["forward", "output"] };
            for hook in hooks {
                br.rule(hook, vec![m("==", meta(dir), json!(VXLAN)), jump(chain)]);
            }
            br.rule(chain, vec![m("==", payload("ether", "type"), json!("ip6")), verdict("drop")]);
            br.rule(
                chain,
                vec![
                    m("==", payload("ether", "type"), json!("ip")),
                    m("==", payload("udp", "dport"), json!({"set": [67, 68]})),
                    verdict("drop"),
                ],
            );
            let routers = view.router_addrs();
            if !routers.is_empty() {
                br.rule(
                    chain,
                    vec![
                        m("==", payload("ether", "type"), json!("arp")),
                        m("==", payload("arp", "operation"), json!("request")),
                        m("==", payload("arp", "daddr ip"), json!({ "set": routers.clone() })),
                        verdict("drop"),
                    ],
                );
                br.rule(
                    chain,
                    vec![
                        m("==", payload("ether", "type"), json!("arp")),
                        m("==", payload("arp", "operation"), json!("reply")),
                        m("==", payload("arp", "saddr ip"), json!({ "set": routers })),
                        verdict("drop"),
                    ],
                );
            }
        }
    }
    cmds.extend(br.into_cmds());

    // Security groups.
    let mut sg = Batch::new("inet", "strato");
    sg.base_chain("input", "filter", "input", 0, "accept");
    sg.base_chain("forward", "filter", "forward", 0, "drop");
    let from_bridge = m("==", meta("iifname"), json!(BRIDGE));
    sg.rule(
        "input",
        vec![m("in", json!({"ct": {"key": "state"}}), json!(["established", "related"])), verdict("accept")],
    );
    sg.rule("input", vec![from_bridge.clone(), m("==", payload("udp", "dport"), json!(67)), verdict("accept")]);
    sg.rule(
        "input",
        vec![
            from_bridge.clone(),
            m("==", meta("l4proto"), json!({"set": ["udp", "tcp"]})),
            m("==", payload("th", "dport"), json!(53)),
            verdict("accept"),
        ],
    );
    sg.rule(
        "input",
        vec![
            from_bridge.clone(),
            m("==", payload("ip", "daddr"), json!(METADATA_ADDR.to_string())),
            m("==", payload("tcp", "dport"), json!(80)),
            verdict("accept"),
        ],
    );
    sg.rule("input", vec![from_bridge.clone(), m("==", meta("l4proto"), json!("icmp")), verdict("accept")]);
    sg.rule("input", vec![from_bridge, verdict("drop")]);
    sg.rule(
        "forward",
        vec![m("in", json!({"ct": {"key": "state"}}), json!(["established", "related"])), verdict("accept")],
    );
    sg.rule("forward", vec![m("==", json!({"ct": {"key": "state"}}), json!("invalid")), verdict("drop")]);
    let public: Vec<String> =
        view.instances.iter().filter(|i| i.transit_ip.is_some()).map(|i| i.private_ip.to_string()).collect();
    if !public.is_empty() {
        sg.rule(
            "forward",
            vec![
                m("==", meta("iifname"), json!(UPLINK)),
                m("==", payload("ip", "daddr"), json!({"set": public})),
                verdict("accept"),
            ],
        );
    }
    for i in &view.instances {
        let s = chain_suffix(i);
        let (eg, ing) = (format!("egress_{s}"), format!("ingress_{s}"));
        sg.chain(&eg);
        sg.chain(&ing);
        for expr in group_rules(view, &i.groups, true, "daddr", &verdict("return")) {
            sg.rule(&eg, expr);
        }
        sg.rule(&eg, vec![verdict("drop")]);
        for expr in group_rules(view, &i.groups, false, "saddr", &verdict("accept")) {
            sg.rule(&ing, expr);
        }
        sg.rule(&ing, vec![verdict("drop")]);
        let ip = i.private_ip.to_string();
        sg.rule("forward", vec![m("==", payload("ip", "saddr"), json!(ip)), jump(&eg)]);
    }
    for i in &view.instances {
        let ip = i.private_ip.to_string();
        sg.rule(
            "forward",
            vec![m("==", payload("ip", "daddr"), json!(ip)), jump(&format!("ingress_{}", chain_suffix(i)))],
        );
    }
    // To an instance on another host: its host checks its ingress rules.
    let remote: Vec<String> = view.remote().iter().map(|r| r.private_ip.to_string()).collect();
    if !remote.is_empty() {
        sg.rule("forward", vec![m("==", payload("ip", "daddr"), json!({ "set": remote })), verdict("accept")]);
    }
    cmds.extend(sg.into_cmds());

    // Public (transit) address -> private address.
    let mut nat = Batch::new("ip", "strato_nat");
    nat.base_chain("prerouting", "nat", "prerouting", -100, "accept");
    for i in &view.instances {
        if let Some(t) = i.transit_ip {
            nat.rule(
                "prerouting",
                vec![
                    m("==", meta("iifname"), json!(UPLINK)),
                    m("==", payload("ip", "daddr"), json!(t.to_string())),
                    json!({"dnat": {"addr": i.private_ip.to_string()}}),
                ],
            );
        }
    }
    cmds.extend(nat.into_cmds());
    json!({ "nftables": cmds })
}

/// One public instance as the host table sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPublic {
    pub public_ip: Ipv4Addr,
    pub transit_ip: Ipv4Addr,
    pub chain: String,
    /// The instance's ingress rules with CIDR peers.
    pub rules: Vec<SgRule>,
}

/// The host table: loopback public addresses to transit addresses, the ingress rules
/// checked against the client's own address, and masquerading on the uplinks.
pub fn host_ruleset(table: &str, uplinks: &[String], publics: &[HostPublic]) -> Value {
    let mut b = Batch::new("ip", table);
    b.base_chain("nat_output", "nat", "output", -100, "accept");
    b.base_chain("filter_output", "filter", "output", 0, "accept");
    b.base_chain("nat_postrouting", "nat", "postrouting", 100, "accept");
    for p in publics {
        b.rule(
            "nat_output",
            vec![
                m("==", payload("ip", "daddr"), json!(p.public_ip.to_string())),
                json!({"dnat": {"addr": p.transit_ip.to_string()}}),
            ],
        );
        b.chain(&p.chain);
        b.rule(
            "filter_output",
            vec![
                m("==", payload("ip", "daddr"), json!(p.transit_ip.to_string())),
                m("in", json!({"ct": {"key": "state"}}), json!(["new"])),
                jump(&p.chain),
            ],
        );
        let mut seen = BTreeSet::new();
        for r in p.rules.iter().filter(|r| !r.is_egress) {
            let (Some(mut expr), Some(peer)) = (proto_matches(r), peer_match(r, "saddr", |_| BTreeSet::new())) else {
                continue;
            };
            if !peer.is_null() {
                expr.insert(0, peer);
            }
            expr.push(verdict("accept"));
            if seen.insert(serde_json::to_string(&expr).unwrap_or_default()) {
                b.rule(&p.chain, expr);
            }
        }
        b.rule(&p.chain, vec![verdict("drop")]);
    }
    if !uplinks.is_empty() {
        b.rule(
            "nat_postrouting",
            vec![
                m("==", meta("oifname"), json!({"set": uplinks})),
                m("==", payload("ip", "saddr"), json!({"prefix": {"addr": "127.0.0.0", "len": 8}})),
                json!({"masquerade": null}),
            ],
        );
    }
    json!({ "nftables": b.into_cmds() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{AccountId, SecurityGroupId, SecurityGroupRuleId};

    fn rule(group: &str, egress: bool, proto: &str, ports: Option<(i64, i64)>, peer: Peer) -> SgRule {
        SgRule {
            id: SecurityGroupRuleId::generate(),
            group_id: SecurityGroupId::from_db(group.to_owned()),
            is_egress: egress,
            protocol: proto.into(),
            from_port: ports.map(|p| p.0),
            to_port: ports.map(|p| p.1),
            peer,
            description: None,
        }
    }

    fn inst(n: u8, groups: &[&str]) -> NetInstance {
        NetInstance {
            id: format!("i-{n}"),
            tap: format!("tap{n:011x}"),
            mac: format!("02:00:00:00:00:{n:02x}"),
            private_ip: Ipv4Addr::new(172, 31, 0, 10 + n),
            transit_ip: None,
            public_ip: None,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            hostname: format!("ip-{n}"),
        }
    }

    #[test]
    fn group_peers_expand_to_member_addresses() {
        let mut rules = BTreeMap::new();
        rules.insert(
            "sg-a".to_owned(),
            vec![
                rule(
                    "sg-a",
                    false,
                    "-1",
                    None,
                    Peer::Group {
                        group_id: SecurityGroupId::from_db("sg-a".into()),
                        owner: AccountId::from_db("1".into()),
                    },
                ),
                rule("sg-a", false, "tcp", Some((22, 22)), Peer::Ipv4("10.0.0.0/8".into())),
                rule("sg-a", true, "-1", None, Peer::Ipv4("0.0.0.0/0".into())),
                rule("sg-a", false, "icmpv6", None, Peer::Ipv4("0.0.0.0/0".into())),
            ],
        );
        let view = VpcView {
            vpc_id: "vpc-1".into(),
            dns_ip: None,
            domain: "local-1.compute.internal".into(),
            subnets: vec![],
            instances: vec![inst(1, &["sg-a"]), inst(2, &["sg-a"]), inst(3, &["sg-b"])],
            rules,
            ..Default::default()
        };
        let text = vpc_ruleset(&view).to_string();
        assert!(text.contains(r#"{"set":["172.31.0.11","172.31.0.12"]}"#), "{text}");
        assert!(text.contains(r#""right":22"#));
        assert!(!text.contains("icmpv6"));
        // sg-b has no rules: its member's chains end in drop only.
        assert!(text.contains("ingress_00000000003"));
    }

    #[test]
    fn remote_members_count_as_group_peers_and_the_tunnel_carries_no_router_traffic() {
        let mut rules = BTreeMap::new();
        let by_group = Peer::Group {
            group_id: SecurityGroupId::from_db("sg-client".into()),
            owner: AccountId::from_db("1".into()),
        };
        rules.insert("sg-web".to_owned(), vec![rule("sg-web", false, "tcp", Some((80, 80)), by_group)]);
        let remote = |n: u8, group: &str| RemoteInstance {
            id: format!("i-r{n}"),
            mac: format!("02:00:00:00:01:{n:02x}"),
            private_ip: Ipv4Addr::new(172, 31, 16, n),
            groups: vec![group.to_owned()],
            hostname: format!("ip-r{n}"),
            underlay: Ipv4Addr::new(198, 18, 0, 2),
        };
        let view = VpcView {
            vpc_id: "vpc-1".into(),
            dns_ip: Some(Ipv4Addr::new(172, 31, 0, 2)),
            domain: "local-1.compute.internal".into(),
            subnets: vec![Ipv4Cidr { addr: 0xac1f_0000, prefix: 20 }],
            instances: vec![inst(1, &["sg-web"])],
            rules,
            router_mac: "02:00:00:00:00:ff".into(),
            vxlan: Some(Vxlan {
                vni: 7,
                local: Ipv4Addr::new(198, 18, 0, 1),
                peers: vec![],
                remote: vec![remote(5, "sg-client"), remote(6, "sg-other")],
            }),
            dhcp_options: Vec::new(),
        };
        let text = vpc_ruleset(&view).to_string();
        // The web server's ingress admits the client on the other host, not the other one.
        assert!(text.contains(r#"{"set":["172.31.16.5"]}"#), "{text}");
        // Traffic to instances on other hosts leaves after the sender's egress check.
        assert!(text.contains(r#""right":{"set":["172.31.16.5","172.31.16.6"]}}},{"accept":null}"#), "{text}");
        assert!(text.contains(r#""name":"from_vxlan""#) && text.contains(r#""name":"to_vxlan""#));
        assert!(text.contains(r#"{"set":["172.31.0.1","172.31.0.2"]}"#), "the routers' addresses: {text}");
        let plain = vpc_ruleset(&VpcView { vxlan: None, ..view }).to_string();
        assert!(!plain.contains("vxlan"));
    }

    #[test]
    fn host_table_checks_the_client_address() {
        let p = HostPublic {
            public_ip: Ipv4Addr::new(127, 100, 0, 5),
            transit_ip: Ipv4Addr::new(100, 100, 0, 5),
            chain: "public_1".into(),
            rules: vec![
                rule("sg-a", false, "tcp", Some((22, 22)), Peer::Ipv4("127.0.0.1/32".into())),
                rule(
                    "sg-a",
                    false,
                    "-1",
                    None,
                    Peer::Group {
                        group_id: SecurityGroupId::from_db("sg-a".into()),
                        owner: AccountId::from_db("1".into()),
                    },
                ),
            ],
        };
        let text = host_ruleset("strato_x", &["sv1".into()], &[p]).to_string();
        assert!(text.contains(r#""dnat":{"addr":"100.100.0.5"}"#));
        assert!(text.contains(r#""right":"127.0.0.1""#), "{text}");
        assert!(!text.contains("sg-a"), "group peers cannot match a host client");
    }
}
