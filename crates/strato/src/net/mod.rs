//! Instance networking on one host: a network namespace per VPC, a bridge in it, a tap per
//! instance, DHCP from dnsmasq, the metadata service, security groups in nftables, and
//! public addresses on the host's loopback.
//!
//! Layout (names carry a short tag of the data dir, so several Strato data dirs can share a
//! host without meeting):
//! - namespace `strato-<tag>-<vpc-id>`: bridge `br0` holding each subnet's router address
//!   (`.1`), the metadata address 169.254.169.254 on `lo`, one tap per instance
//!   (`tap<hash of the instance id>`, persistent, opened by QEMU, which runs in the
//!   namespace), dnsmasq serving static leases (MAC -> private IP, from the control plane)
//!   and DNS at the VPC's base address + 2 for the instances' private names
//!   (`ip-172-31-0-4.REGION.compute.internal`) with no upstream server (other names are
//!   refused at once), and the uplink `up0` to the host (169.254.254.2).
//! - host: the uplink's other end `sv<hash>` (169.254.254.1, `route_localnet` so that
//!   loopback-sourced packets may leave through it, then masqueraded), a route per public
//!   address's transit address (100.64.0.0/10, the low 22 bits of the public address) via
//!   the namespace, and the table `ip strato_<tag>` (see `rules`).
//!
//! - with `--underlay`, a VXLAN device `vx0` on the bridge (the VPC's own VNI), tunnelled
//!   to the other hosts that have instances of the VPC (see `sync_vxlan` and `rules`).
//!
//! A VPC's namespace exists while one of its instances has a VM on this host. Nothing in a
//! namespace routes anywhere but to its own instances and back to the host through the
//! uplink, so instance traffic never reaches another network. `Network::sync` makes the
//! system match a desired state and is idempotent: it runs on every agent pass and rebuilds
//! everything after a restart.

pub mod imds;
pub mod rules;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use sha2::Digest;

use crate::control::cidr::Ipv4Cidr;
use rules::{HostPublic, VpcView, BRIDGE, METADATA_ADDR, UPLINK, VXLAN};

/// The default loopback pool of public addresses.
pub const DEFAULT_PUBLIC_POOL: &str = "127.100.0.0/16";
/// The host's and the namespace's ends of every uplink.
pub const HOST_LINK_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 254, 1);
pub const NS_LINK_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 254, 2);

/// Checks a public pool: a block inside 127.0.0.0/8, from /16 to /30.
pub fn parse_public_pool(s: &str) -> anyhow::Result<Ipv4Cidr> {
    let c = Ipv4Cidr::parse(s, true).with_context(|| format!("{s}: not a CIDR block (a.b.c.d/n, no host bits)"))?;
    let lo = Ipv4Cidr { addr: 0x7f00_0000, prefix: 8 };
    if !lo.contains(&c) || !(16..=30).contains(&c.prefix) {
        bail!("{s}: the public pool must be a /16 to /30 inside 127.0.0.0/8");
    }
    Ok(c)
}

/// The first `n` hex digits of SHA-256(s).
pub fn short_hash(s: &str, n: usize) -> String {
    hex::encode(sha2::Sha256::digest(s.as_bytes()))[..n].to_owned()
}

/// The tap of an instance (inside its VPC's namespace).
pub fn tap_name(instance_id: &str) -> String {
    format!("tap{}", short_hash(instance_id, 11))
}

/// The transit address of a loopback public address: 100.64.0.0/10 plus its low 22 bits.
pub fn transit_of(public: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from(0x6440_0000 | (u32::from(public) & 0x003f_ffff))
}

/// The names this data dir uses on the host.
#[derive(Debug, Clone)]
pub struct Site {
    pub tag: String,
    /// `DATA_DIR/net`: per-VPC dnsmasq files.
    pub dir: PathBuf,
}

impl Site {
    pub fn new(data_dir: &Path) -> Site {
        let canonical = data_dir.canonicalize().unwrap_or_else(|_| data_dir.to_owned());
        Site { tag: short_hash(&canonical.display().to_string(), 6), dir: data_dir.join("net") }
    }

    fn ns_prefix(&self) -> String {
        format!("strato-{}-", self.tag)
    }

    pub fn netns(&self, vpc_id: &str) -> String {
        format!("{}{vpc_id}", self.ns_prefix())
    }

    pub fn host_uplink(&self, vpc_id: &str) -> String {
        format!("sv{}", short_hash(&format!("{}/{vpc_id}", self.tag), 10))
    }

    /// A VXLAN device's name while it is made in the host's namespace, before it moves into
    /// its VPC's (where it is `vx0`).
    pub fn host_vxlan(&self, vpc_id: &str) -> String {
        format!("vx{}", short_hash(&format!("{}/vx/{vpc_id}", self.tag), 10))
    }

    /// The prefix of this data dir's warm-pool taps (`agent::pool`), which wait, down and
    /// on no bridge, in the agent's own namespace until a launch takes their VM.
    pub fn pool_tap_prefix(&self) -> String {
        format!("sp{}", self.tag)
    }

    /// Makes a warm-pool tap (left down: whatever its guest sends goes nowhere).
    pub async fn add_pool_tap(&self, tap: &str) -> anyhow::Result<()> {
        anyhow::ensure!(tap.starts_with(&self.pool_tap_prefix()), "{tap} is not a warm-pool tap");
        run("ip", &["tuntap", "add", "dev", tap, "mode", "tap"]).await?;
        Ok(())
    }

    /// Removes a warm-pool tap, or every one of this data dir (`None`).
    pub async fn remove_pool_taps(&self, only: Option<&str>) {
        let prefix = self.pool_tap_prefix();
        let names: Vec<String> = match only {
            Some(t) => vec![t.to_owned()],
            None => links(&[]).await.unwrap_or_default(),
        };
        for n in names.iter().filter(|n| n.starts_with(&prefix)) {
            let _ = run("ip", &["link", "del", n]).await;
        }
    }

    pub fn host_table(&self) -> String {
        format!("strato_{}", self.tag)
    }

    fn vpc_dir(&self, vpc_id: &str) -> PathBuf {
        self.dir.join(vpc_id)
    }

    /// The VPCs that have a namespace now.
    pub fn namespaces(&self) -> Vec<String> {
        let prefix = self.ns_prefix();
        let mut out: Vec<String> = std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_prefix(&prefix)).map(str::to_owned))
            .collect();
        out.sort();
        out
    }

    /// Removes everything of this data dir from the host: dnsmasqs, namespaces (with their
    /// uplinks and routes) and the host table. VMs must have been ended first.
    pub async fn teardown(&self) {
        for vpc in self.namespaces() {
            if let Err(e) = remove_vpc(self, &vpc).await {
                tracing::warn!(vpc_id = %vpc, error = format!("{e:#}"), "removing a VPC namespace");
            }
        }
        let _ = run("nft", &["delete", "table", "ip", &self.host_table()]).await;
        self.remove_pool_taps(None).await;
    }
}

/// Runs a program with an argument vector; its output, or an error with its stderr.
async fn run(prog: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(prog)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {prog}"))?;
    if !out.status.success() {
        bail!("{prog} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Applies an `nft -j` batch, in a namespace or on the host.
async fn nft_apply(netns: Option<&str>, batch: &serde_json::Value) -> anyhow::Result<()> {
    let text = batch.to_string();
    match netns {
        Some(ns) => run_with_input("ip", &["netns", "exec", ns, "nft", "-j", "-f", "-"], &text).await,
        None => run_with_input("nft", &["-j", "-f", "-"], &text).await,
    }
}

/// Runs a program with `input` on its stdin; fails, with its stderr, if it does.
async fn run_with_input(prog: &str, args: &[&str], input: &str) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(prog)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {prog}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).await?;
    }
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        bail!("{prog}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Whether the host (this process's network namespace) has a link of that name. Asked over
/// netlink (`ip`), not sysfs: /sys shows the namespace it was mounted in, which is not
/// this process's when it was started with `nsenter --net`.
async fn link_exists_on_host(name: &str) -> bool {
    tokio::process::Command::new("ip")
        .args(["link", "show", "dev", name])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// `ip ARGS -force -batch -` with `cmds` on its stdin (names Strato made, never user
/// strings); fails if any command did.
async fn ip_batch(args: &[&str], cmds: &str) -> anyhow::Result<()> {
    let mut argv = args.to_vec();
    argv.extend(["-force", "-batch", "-"]);
    run_with_input("ip", &argv, cmds).await
}

async fn ns_links(ns: &str) -> anyhow::Result<Vec<String>> {
    links(&["-n", ns]).await
}

/// The names of the links `ip ARGS -j link show` lists (no ARGS: the namespace this
/// process runs in, which /sys/class/net need not show: an agent started by
/// `nsenter --net` sees the host's sysfs).
async fn links(args: &[&str]) -> anyhow::Result<Vec<String>> {
    let mut argv = args.to_vec();
    argv.extend(["-j", "link", "show"]);
    let out = run("ip", &argv).await?;
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing ip -j link")?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l.get("ifname").and_then(|n| n.as_str()).map(str::to_owned))
        .collect())
}

/// Creates a VPC's namespace, bridge, metadata address and uplink (what exists is kept).
/// The namespace's settings go in one `ip -batch` and the host side's in another: each
/// `ip` run costs ~4 ms, and a VPC's first launch waits for all of them.
async fn ensure_vpc(site: &Site, vpc_id: &str) -> anyhow::Result<()> {
    let ns = site.netns(vpc_id);
    let links = ensure_bridge(&ns).await?;
    // Routing between subnets, bridged packets through the inet hooks (security groups
    // with conntrack), and no reverse-path check on the uplink (its peer is loopback-sourced
    // traffic, masqueraded): set before the uplink is made, which takes `default`'s.
    run(
        "ip",
        &[
            "netns",
            "exec",
            &ns,
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ip_forward=1",
            "net.bridge.bridge-nf-call-iptables=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ],
    )
    .await?;
    let host = site.host_uplink(vpc_id);
    if !links.iter().any(|l| l == UPLINK) {
        if link_exists_on_host(&host).await {
            run("ip", &["link", "del", &host]).await?;
        }
        run("ip", &["link", "add", &host, "type", "veth", "peer", "name", UPLINK, "netns", &ns]).await?;
    }
    let in_ns = format!(
        "link set lo up\n\
         link set {BRIDGE} up\n\
         addr replace {METADATA_ADDR}/32 dev lo\n\
         addr replace {NS_LINK_ADDR}/32 dev {UPLINK}\n\
         link set {UPLINK} up\n\
         route replace {HOST_LINK_ADDR}/32 dev {UPLINK}\n"
    );
    ip_batch(&["-n", &ns], &in_ns).await.context("setting up the VPC's namespace")?;
    let on_host = format!("addr replace {HOST_LINK_ADDR}/32 dev {host}\nlink set {host} up\n");
    ip_batch(&[], &on_host).await.context("setting up the VPC's uplink")?;
    run("sysctl", &["-q", "-w", &format!("net.ipv4.conf.{host}.route_localnet=1")]).await?;
    Ok(())
}

/// Ends a VPC's dnsmasq and deletes its namespace (its uplink and routes go with it).
async fn remove_vpc(site: &Site, vpc_id: &str) -> anyhow::Result<()> {
    let dir = site.vpc_dir(vpc_id);
    if let Some(pid) = dnsmasq_pid(&dir) {
        kill_pid(pid, libc::SIGTERM);
    }
    let ns = site.netns(vpc_id);
    if Path::new("/run/netns").join(&ns).exists() {
        run("ip", &["netns", "del", &ns]).await?;
    }
    let host = site.host_uplink(vpc_id);
    if link_exists_on_host(&host).await {
        let _ = run("ip", &["link", "del", &host]).await;
    }
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

fn kill_pid(pid: u32, sig: i32) {
    if let Ok(p) = i32::try_from(pid) {
        // SAFETY: kill(2) with a pid this data dir's dnsmasq wrote and we checked.
        unsafe {
            libc::kill(p, sig);
        }
    }
}

/// A VPC's namespace with its bridge (the taps' and the router's), made if missing; the
/// namespace's links.
async fn ensure_bridge(ns: &str) -> anyhow::Result<Vec<String>> {
    if !Path::new("/run/netns").join(ns).exists() {
        run("ip", &["netns", "add", ns]).await?;
    }
    let mut links = ns_links(ns).await?;
    if !links.iter().any(|l| l == BRIDGE) {
        run("ip", &["-n", ns, "link", "add", BRIDGE, "type", "bridge"]).await?;
        links.push(BRIDGE.into());
    }
    Ok(links)
}

/// A tap for an instance's QEMU, on the VPC's bridge.
async fn add_tap(ns: &str, tap: &str) -> anyhow::Result<()> {
    run("ip", &["-n", ns, "tuntap", "add", "dev", tap, "mode", "tap"]).await?;
    run("ip", &["-n", ns, "link", "set", tap, "master", BRIDGE, "up"]).await?;
    Ok(())
}

/// The pid of this VPC's dnsmasq, if the pid file names a live dnsmasq started for it.
fn dnsmasq_pid(dir: &Path) -> Option<u32> {
    let pid_file = dir.join("dnsmasq.pid");
    let pid: u32 = std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let marker = pid_file.display().to_string();
    cmdline.split(|b| *b == 0).any(|a| String::from_utf8_lossy(a).ends_with(&marker)).then_some(pid)
}

/// A DHCP options set: its options in the order given (`control::dhcp` checks them).
pub type DhcpConfig = Vec<(String, Vec<String>)>;

/// dnsmasq's options for a set, `AmazonProvidedDNS` being `dns_ip`; the values were
/// checked by `check_config` when the set was made.
pub fn dnsmasq_options(config: &DhcpConfig, dns_ip: Option<Ipv4Addr>) -> Vec<String> {
    let mut out = Vec::new();
    for (key, values) in config {
        let list = |vs: &[String]| -> String {
            vs.iter()
                .filter_map(|v| if v == "AmazonProvidedDNS" { dns_ip.map(|d| d.to_string()) } else { Some(v.clone()) })
                .collect::<Vec<_>>()
                .join(",")
        };
        match key.as_str() {
            "domain-name-servers" => out.push(format!("--dhcp-option=option:dns-server,{}", list(values))),
            "domain-name" => {
                let names: Vec<&str> = values.iter().flat_map(|v| v.split_whitespace()).collect();
                if let Some(first) = names.first() {
                    out.push(format!("--dhcp-option=option:domain-name,{first}"));
                }
                if names.len() > 1 {
                    out.push(format!("--dhcp-option=option:domain-search,{}", names.join(",")));
                }
            }
            "ntp-servers" => out.push(format!("--dhcp-option=option:ntp-server,{}", list(values))),
            "netbios-name-servers" => out.push(format!("--dhcp-option=option:netbios-ns,{}", list(values))),
            "netbios-node-type" => out.push(format!("--dhcp-option=option:netbios-nodetype,{}", list(values))),
            _ => {}
        }
    }
    out
}

fn dnsmasq_args(dir: &Path, view: &VpcView) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--conf-file=/dev/null".into(),
        // DNS for the VPC's own names only: no upstream, nothing leaves the namespace.
        "--no-resolv".into(),
        "--no-hosts".into(),
        "--no-poll".into(),
        "--domain-needed".into(),
        "--bogus-priv".into(),
        format!("--domain={}", view.domain),
        format!("--local=/{}/", view.domain),
        format!("--interface={BRIDGE}"),
        "--bind-interfaces".into(),
        "--dhcp-authoritative".into(),
        "--user=root".into(),
        "--group=root".into(),
        format!("--dhcp-hostsfile={}", dir.join("hosts").display()),
        format!("--dhcp-leasefile={}", dir.join("leases").display()),
        format!("--log-facility={}", dir.join("dnsmasq.log").display()),
        "--log-dhcp".into(),
    ];
    // The VPC's DHCP options set, else the default: its own DNS server.
    if !view.dhcp_options.iter().any(|(k, _)| k == "domain-name-servers") {
        if let Some(dns) = view.dns_ip {
            a.push(format!("--dhcp-option=option:dns-server,{dns}"));
        }
    }
    a.extend(dnsmasq_options(&view.dhcp_options, view.dns_ip));
    for s in &view.subnets {
        a.push(format!("--dhcp-range={},static,{},12h", Ipv4Addr::from(s.first()), Ipv4Addr::from(s.mask())));
    }
    a.push(format!("--pid-file={}", dir.join("dnsmasq.pid").display()));
    a
}

/// Keeps the VPC's dnsmasq running with these subnets and these leases.
async fn ensure_dnsmasq(site: &Site, view: &VpcView) -> anyhow::Result<()> {
    let dir = site.vpc_dir(&view.vpc_id);
    std::fs::create_dir_all(&dir)?;
    let mut hosts = String::new();
    for i in &view.instances {
        hosts.push_str(&format!("{},{},{}\n", i.mac, i.private_ip, i.hostname));
    }
    // The VPC's instances on other hosts, for their names (their DHCP never comes here).
    for i in view.remote() {
        hosts.push_str(&format!("{},{},{}\n", i.mac, i.private_ip, i.hostname));
    }
    let hosts_path = dir.join("hosts");
    let hosts_changed = std::fs::read_to_string(&hosts_path).ok().as_deref() != Some(hosts.as_str());
    if hosts_changed {
        let tmp = dir.join("hosts.tmp");
        std::fs::write(&tmp, &hosts)?;
        std::fs::rename(&tmp, &hosts_path)?;
    }
    let args = dnsmasq_args(&dir, view);
    let running = dnsmasq_pid(&dir);
    let same_args = running.is_some_and(|pid| {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let have: Vec<String> = cmdline
            .split(|b| *b == 0)
            .skip(1)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        have == args
    });
    match running {
        Some(pid) if same_args => {
            if hosts_changed {
                kill_pid(pid, libc::SIGHUP);
            }
        }
        _ => {
            if let Some(pid) = running {
                kill_pid(pid, libc::SIGTERM);
                for _ in 0..50 {
                    if !Path::new(&format!("/proc/{pid}")).exists() {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
            let ns = site.netns(&view.vpc_id);
            let mut argv: Vec<&str> = vec!["netns", "exec", &ns, "dnsmasq"];
            argv.extend(args.iter().map(String::as_str));
            run("ip", &argv).await.context("starting dnsmasq")?;
            // It made its lease, pid and log files with its own umask (022); it rewrites
            // them in place after.
            crate::secrets::make_private(&dir)?;
        }
    }
    Ok(())
}

/// The VNI and local address of the namespace's VXLAN device, if it has one.
async fn vxlan_params(ns: &str) -> anyhow::Result<Option<(u32, Ipv4Addr)>> {
    if !ns_links(ns).await?.iter().any(|l| l == VXLAN) {
        return Ok(None);
    }
    let out = run("ip", &["-n", ns, "-j", "-d", "link", "show", VXLAN]).await?;
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing ip -j -d link")?;
    let data = &v[0]["linkinfo"]["info_data"];
    let vni = data["id"].as_u64().and_then(|n| u32::try_from(n).ok());
    let local = data["local"].as_str().and_then(|a| a.parse().ok());
    // A device that is not what we make (or unreadable) counts as wrong: it is made anew.
    Ok(Some(vni.zip(local).unwrap_or((0, Ipv4Addr::UNSPECIFIED))))
}

/// The forwarding entries of the namespace's VXLAN device that name a far end.
async fn vxlan_fdb(ns: &str) -> anyhow::Result<BTreeSet<(String, Ipv4Addr)>> {
    let out = run("bridge", &["-n", ns, "-j", "fdb", "show", "dev", VXLAN]).await?;
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing bridge -j fdb")?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let mac = e.get("mac")?.as_str()?.to_owned();
            let dst = e.get("dst")?.as_str()?.parse().ok()?;
            Some((mac, dst))
        })
        .collect())
}

/// Keeps the VPC's tunnel to other hosts as the view says: a VXLAN device `vx0` on the
/// bridge (made in the host's namespace, where its UDP socket stays on the underlay, then
/// moved into the VPC's), no learning, a flooding entry (all-zero MAC) per peer host for
/// broadcasts such as ARP, and an entry per MAC on another host. No tunnel in the view: no
/// device.
async fn sync_vxlan(site: &Site, ns: &str, view: &VpcView, applied: &mut Applied) -> anyhow::Result<()> {
    let Some(vx) = &view.vxlan else {
        if applied.vxlan.is_some() || vxlan_params(ns).await?.is_some() {
            run("ip", &["-n", ns, "link", "del", VXLAN]).await?;
        }
        applied.vxlan = None;
        applied.fdb.clear();
        return Ok(());
    };
    let want = (vx.vni, vx.local);
    if applied.vxlan != Some(want) {
        let have = vxlan_params(ns).await?;
        if have != Some(want) {
            if have.is_some() {
                run("ip", &["-n", ns, "link", "del", VXLAN]).await?;
            }
            let tmp = site.host_vxlan(&view.vpc_id);
            if link_exists_on_host(&tmp).await {
                run("ip", &["link", "del", &tmp]).await?;
            }
            let (vni, local) = (vx.vni.to_string(), vx.local.to_string());
            run(
                "ip",
                &["link", "add", &tmp, "type", "vxlan", "id", &vni, "local", &local, "dstport", "4789", "nolearning"],
            )
            .await?;
            run("ip", &["link", "set", &tmp, "netns", ns]).await?;
            run("ip", &["-n", ns, "link", "set", &tmp, "name", VXLAN]).await?;
        }
        // The instances' MTU: a full frame is sent in a larger UDP packet (the underlay
        // fragments it if it must).
        run("ip", &["-n", ns, "link", "set", VXLAN, "mtu", "1500", "master", BRIDGE, "up"]).await?;
        applied.fdb = vxlan_fdb(ns).await?;
        applied.vxlan = Some(want);
    }
    const FLOOD: &str = "00:00:00:00:00:00";
    let mut fdb: BTreeSet<(String, Ipv4Addr)> = BTreeSet::new();
    for p in &vx.peers {
        fdb.insert((FLOOD.to_owned(), p.underlay));
        fdb.insert((p.router_mac.clone(), p.underlay));
    }
    for r in &vx.remote {
        fdb.insert((r.mac.clone(), r.underlay));
    }
    for (mac, dst) in applied.fdb.difference(&fdb) {
        let _ = run("bridge", &["-n", ns, "fdb", "del", mac, "dev", VXLAN, "dst", &dst.to_string()]).await;
    }
    for (mac, dst) in fdb.difference(&applied.fdb) {
        let verb = if mac == FLOOD { "append" } else { "replace" };
        run("bridge", &["-n", ns, "fdb", verb, mac, "dev", VXLAN, "dst", &dst.to_string(), "self", "permanent"])
            .await?;
    }
    applied.fdb = fdb;
    Ok(())
}

/// What one VPC looked like at the last sync, to skip work that is already done.
#[derive(Debug, Default)]
struct Applied {
    subnets: Vec<Ipv4Cidr>,
    taps: BTreeSet<String>,
    routes: BTreeSet<Ipv4Addr>,
    ruleset: String,
    /// The VXLAN device's VNI and local address, and its forwarding entries (MAC, far end).
    vxlan: Option<(u32, Ipv4Addr)>,
    fdb: BTreeSet<(String, Ipv4Addr)>,
    view: Option<VpcView>,
    /// When everything was last applied or checked.
    at: Option<std::time::Instant>,
}

/// How often a VPC whose desired state did not change is applied again anyway (rules or
/// links removed by hand come back).
pub const RECHECK: std::time::Duration = std::time::Duration::from_secs(60);

/// The host's networking, driven by the agent.
/// A warm-pool VM's tap to put in place of an instance's (`Network::adopt_pool_taps`).
#[derive(Debug, Clone)]
pub struct PoolTapMove {
    pub pool_tap: String,
    pub vpc_id: String,
    pub tap: String,
}

pub struct Network {
    pub site: Site,
    applied: BTreeMap<String, Applied>,
    host_ruleset: String,
    host_at: Option<std::time::Instant>,
    pub imds: imds::Imds,
    /// The VPCs whose namespace and bridge the last `make_taps` found or made.
    bridged: BTreeSet<String>,
}

impl Network {
    pub fn new(site: Site, imds: imds::Imds) -> Network {
        Network {
            site,
            applied: BTreeMap::new(),
            host_ruleset: String::new(),
            host_at: None,
            imds,
            bridged: BTreeSet::new(),
        }
    }

    /// Makes the missing taps of the VPCs whose namespace this network already made, and
    /// for a VPC new on this host its namespace, bridge and taps (the first steps of `sync`,
    /// which does the rest: uplink, addresses, rules, DHCP): a restore can start its QEMU
    /// on its tap while the rest is being done. Failures are left to `sync`. A VPC's missing
    /// taps are made by one `ip -batch` (two `ip` runs per tap made 20 of them take ~0.5 s),
    /// and those that are there after it count as made. The taps in `brought` are not made:
    /// their instances take a warm-pool VM, whose tap `adopt_pool_taps` moves in (making
    /// one to delete it then cost ~18 ms a tap).
    pub async fn make_taps(&mut self, views: &[VpcView], brought: &std::collections::HashSet<String>) {
        self.bridged.clear();
        for view in views {
            let ns = self.site.netns(&view.vpc_id);
            let exists = Path::new("/run/netns").join(&ns).exists();
            let applied = match self.applied.get_mut(&view.vpc_id) {
                // New on this host: its namespace and bridge first.
                None if !exists => {
                    if ensure_bridge(&ns).await.is_err() {
                        continue;
                    }
                    self.applied.entry(view.vpc_id.clone()).or_default()
                }
                Some(a) if exists && a.at.is_some() && a.subnets == view.subnets => a,
                _ => continue,
            };
            self.bridged.insert(view.vpc_id.clone());
            let missing: Vec<&str> = view
                .instances
                .iter()
                .map(|i| i.tap.as_str())
                .filter(|t| !applied.taps.contains(*t) && !brought.contains(*t))
                .collect();
            if missing.is_empty() {
                continue;
            }
            let cmds: String = missing
                .iter()
                .map(|t| format!("tuntap add dev {t} mode tap\nlink set {t} master {BRIDGE} up\n"))
                .collect();
            // What failed shows in the links read back.
            let _ = ip_batch(&["-n", &ns], &cmds).await;
            let there = ns_links(&ns).await.unwrap_or_default();
            for t in missing.iter().filter(|t| there.iter().any(|l| l == *t)) {
                applied.taps.insert((*t).to_owned());
            }
        }
    }

    /// Puts warm-pool taps, whose QEMUs run on, in place of instances' taps: each moved into
    /// its VPC's namespace (made or found by `make_taps`; a tap of the instance's name made
    /// by an earlier pass is deleted), renamed to the instance's tap and put on the bridge.
    /// The VPC's rules name taps, so they apply. All of a pass's take-overs in one
    /// `ip -batch` on the host and one per namespace (three `ip` runs per tap took 20
    /// take-overs 0.55-0.9 s); each result is read back from the links then there. The
    /// move into a namespace costs the kernel ~17 ms a tap. After a failure the caller
    /// calls `forget_tap`.
    pub async fn adopt_pool_taps(&mut self, moves: &[PoolTapMove]) -> Vec<anyhow::Result<()>> {
        let mut results: Vec<anyhow::Result<()>> = moves
            .iter()
            .map(|m| {
                anyhow::ensure!(self.bridged.contains(&m.vpc_id), "the VPC {} has no namespace yet", m.vpc_id);
                Ok(())
            })
            .collect();
        let go: Vec<usize> = (0..moves.len()).filter(|&n| results[n].is_ok()).collect();
        if go.is_empty() {
            return results;
        }
        let mut host = String::new();
        let mut by_ns: BTreeMap<String, String> = BTreeMap::new();
        for &n in &go {
            let m = &moves[n];
            let ns = self.site.netns(&m.vpc_id);
            host.push_str(&format!("link set dev {} netns {ns}\n", m.pool_tap));
            let cmds = by_ns.entry(ns).or_default();
            if self.has_tap(&m.vpc_id, &m.tap) {
                cmds.push_str(&format!("link del {}\n", m.tap));
            }
            cmds.push_str(&format!("link set dev {} name {} master {BRIDGE} up\n", m.pool_tap, m.tap));
        }
        // Failures show in the links read back below.
        let _ = ip_batch(&[], &host).await;
        for (ns, cmds) in &by_ns {
            let _ = ip_batch(&["-n", ns], cmds).await;
        }
        let on_host = links(&[]).await.unwrap_or_default();
        let mut in_ns: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for ns in by_ns.keys() {
            in_ns.insert(ns, ns_links(ns).await.unwrap_or_default());
        }
        for &n in &go {
            let m = &moves[n];
            let ns = self.site.netns(&m.vpc_id);
            let there = in_ns.get(ns.as_str()).map(Vec::as_slice).unwrap_or_default();
            let done = there.contains(&m.tap) && !there.contains(&m.pool_tap) && !on_host.contains(&m.pool_tap);
            if done {
                if let Some(a) = self.applied.get_mut(&m.vpc_id) {
                    a.taps.insert(m.tap.clone());
                }
            } else {
                if there.contains(&m.pool_tap) {
                    let _ = run("ip", &["-n", &ns, "link", "del", &m.pool_tap]).await;
                }
                results[n] = Err(anyhow::anyhow!("moving the pool tap {} to {} as {} failed", m.pool_tap, ns, m.tap));
            }
        }
        results
    }

    /// After a failed take-over of a warm-pool VM: the instance's tap, in whatever state
    /// the failure left it, goes, and the next pass makes it again.
    pub async fn forget_tap(&mut self, vpc_id: &str, tap: &str) {
        let ns = self.site.netns(vpc_id);
        if ns_links(&ns).await.is_ok_and(|l| l.iter().any(|n| n == tap)) {
            let _ = run("ip", &["-n", &ns, "link", "del", tap]).await;
        }
        if let Some(a) = self.applied.get_mut(vpc_id) {
            a.taps.remove(tap);
        }
    }

    /// Whether `sync` or `make_taps` made this tap in the VPC's namespace.
    pub fn has_tap(&self, vpc_id: &str, tap: &str) -> bool {
        self.applied.get(vpc_id).is_some_and(|a| a.taps.contains(tap))
    }

    /// Makes the host match `views` (every VPC with instances on this host); returns the
    /// VPCs that failed (logged), whose instances must not boot yet.
    pub async fn sync(&mut self, views: &[VpcView]) -> BTreeSet<String> {
        let wanted: BTreeSet<&str> = views.iter().map(|v| v.vpc_id.as_str()).collect();
        let mut failed = BTreeSet::new();
        for v in views {
            if let Err(e) = self.sync_vpc(v).await {
                tracing::warn!(vpc_id = %v.vpc_id, error = format!("{e:#}"), "VPC network sync failed");
                // Redo everything for it on the next pass.
                self.applied.remove(&v.vpc_id);
                failed.insert(v.vpc_id.clone());
            }
        }
        for vpc in self.site.namespaces() {
            if !wanted.contains(vpc.as_str()) {
                self.imds.stop(&vpc);
                match remove_vpc(&self.site, &vpc).await {
                    Ok(()) => tracing::info!(vpc_id = %vpc, "VPC namespace removed"),
                    Err(e) => tracing::warn!(vpc_id = %vpc, error = format!("{e:#}"), "removing a VPC namespace"),
                }
                self.applied.remove(&vpc);
            }
        }
        self.applied.retain(|k, _| wanted.contains(k.as_str()));
        if let Err(e) = self.sync_host(views).await {
            tracing::warn!(error = format!("{e:#}"), "host network sync failed");
            self.host_ruleset.clear();
        }
        failed
    }

    async fn sync_vpc(&mut self, view: &VpcView) -> anyhow::Result<()> {
        let site = self.site.clone();
        let ns = site.netns(&view.vpc_id);
        let fresh = !Path::new("/run/netns").join(&ns).exists();
        let applied = self.applied.entry(view.vpc_id.clone()).or_default();
        let recent = applied.at.is_some_and(|t| t.elapsed() < RECHECK);
        if applied.view.as_ref() == Some(view) && !fresh && recent {
            return Ok(());
        }
        if !recent {
            // Re-read the system: links, routes and rules are applied again.
            applied.subnets.clear();
            applied.ruleset.clear();
            applied.vxlan = None;
        }
        if fresh || applied.subnets != view.subnets {
            applied.vxlan = None;
            ensure_vpc(&site, &view.vpc_id).await?;
            if !view.router_mac.is_empty() {
                run("ip", &["-n", &ns, "link", "set", BRIDGE, "address", &view.router_mac]).await?;
            }
            for s in &view.subnets {
                let gw = format!("{}/{}", Ipv4Addr::from(s.first() + 1), s.prefix);
                run("ip", &["-n", &ns, "addr", "replace", &gw, "dev", BRIDGE]).await?;
            }
            if let Some(dns) = view.dns_ip {
                run("ip", &["-n", &ns, "addr", "replace", &format!("{dns}/32"), "dev", BRIDGE]).await?;
            }
            applied.subnets = view.subnets.clone();
            applied.taps = ns_links(&ns).await?.into_iter().filter(|l| l.starts_with("tap")).collect();
            let host = site.host_uplink(&view.vpc_id);
            let out = run("ip", &["-j", "route", "show", "dev", &host]).await.unwrap_or_default();
            let routes: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
            applied.routes = routes
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r.get("dst").and_then(|d| d.as_str()).and_then(|d| d.parse().ok()))
                .collect();
        }
        // Taps: one per instance, on the bridge.
        let want_taps: BTreeSet<String> = view.instances.iter().map(|i| i.tap.clone()).collect();
        for tap in want_taps.difference(&applied.taps.clone()) {
            add_tap(&ns, tap).await?;
            applied.taps.insert(tap.clone());
        }
        for tap in applied.taps.clone().difference(&want_taps) {
            run("ip", &["-n", &ns, "link", "del", tap]).await?;
            applied.taps.remove(tap);
        }
        sync_vxlan(&site, &ns, view, applied).await.context("the VPC's VXLAN tunnel")?;
        // Routes to the public instances' transit addresses.
        let host = site.host_uplink(&view.vpc_id);
        let want_routes: BTreeSet<Ipv4Addr> = view.instances.iter().filter_map(|i| i.transit_ip).collect();
        for r in want_routes.difference(&applied.routes.clone()) {
            run(
                "ip",
                &["route", "replace", &format!("{r}/32"), "via", &NS_LINK_ADDR.to_string(), "dev", &host, "onlink"],
            )
            .await?;
            applied.routes.insert(*r);
        }
        for r in applied.routes.clone().difference(&want_routes) {
            let _ = run("ip", &["route", "del", &format!("{r}/32"), "dev", &host]).await;
            applied.routes.remove(r);
        }
        let rs = rules::vpc_ruleset(view);
        let text = rs.to_string();
        if applied.ruleset != text {
            nft_apply(Some(&ns), &rs).await.context("applying the VPC ruleset")?;
            applied.ruleset = text;
        }
        ensure_dnsmasq(&site, view).await?;
        self.imds.ensure(&view.vpc_id, &ns)?;
        if let Some(a) = self.applied.get_mut(&view.vpc_id) {
            a.view = Some(view.clone());
            a.at = Some(std::time::Instant::now());
        }
        Ok(())
    }

    async fn sync_host(&mut self, views: &[VpcView]) -> anyhow::Result<()> {
        let uplinks: Vec<String> = views.iter().map(|v| self.site.host_uplink(&v.vpc_id)).collect();
        let mut publics = Vec::new();
        for v in views {
            for i in &v.instances {
                if let (Some(public_ip), Some(transit_ip)) = (i.public_ip, i.transit_ip) {
                    let rules = i.groups.iter().flat_map(|g| v.rules.get(g).cloned().unwrap_or_default()).collect();
                    publics.push(HostPublic {
                        public_ip,
                        transit_ip,
                        chain: format!("public_{}", i.tap.trim_start_matches("tap")),
                        rules,
                    });
                }
            }
        }
        if views.is_empty() {
            // Nothing on this host: no table at all.
            if self.host_at.is_some() {
                let _ = run("nft", &["delete", "table", "ip", &self.site.host_table()]).await;
                self.host_ruleset.clear();
                self.host_at = None;
            }
            return Ok(());
        }
        let rs = rules::host_ruleset(&self.site.host_table(), &uplinks, &publics);
        let text = rs.to_string();
        let recent = self.host_at.is_some_and(|t| t.elapsed() < RECHECK);
        if text != self.host_ruleset || !recent {
            nft_apply(None, &rs).await.context("applying the host ruleset")?;
            self.host_ruleset = text;
            self.host_at = Some(std::time::Instant::now());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel_limits() {
        let site = Site::new(Path::new("/var/lib/strato"));
        assert!(site.host_uplink("vpc-0123456789abcdef0").len() <= 15);
        assert!(tap_name("i-0123456789abcdef0").len() <= 15);
        assert_ne!(tap_name("i-0123456789abcdef0"), tap_name("i-0123456789abcdef1"));
        assert_eq!(transit_of(Ipv4Addr::new(127, 100, 0, 5)), Ipv4Addr::new(100, 100, 0, 5));
        assert_eq!(transit_of(Ipv4Addr::new(127, 1, 2, 3)), Ipv4Addr::new(100, 65, 2, 3));
    }
}
