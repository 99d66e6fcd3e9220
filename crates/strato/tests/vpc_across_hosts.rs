//! One VPC on two hosts, joined by VXLAN, with security groups enforced across them, and a
//! second VPC with the same addresses kept apart.
//!
//! Two hosts on one machine: a `strato serve` in the machine's own network namespace
//! (local-1a) and a `strato agent` in a network namespace of its own (local-1b), each with an
//! address on a test underlay (a bridge in a third namespace; 198.18.N.0/24, so nothing
//! leaves the namespaces this test makes). The agent reaches the control plane over that
//! underlay with TLS (`--agent-listen`, the certificate pinned by the join token), and the
//! VPCs' tunnels run between the two underlay addresses. Five real VMs:
//! - B, a web server on the agent's host, in group `web` (HTTP from group `client`, ICMP
//!   from anywhere);
//! - A (group `client`) and C (group `other`) on the serve's host probe B's private
//!   address: A gets the page, C gets ping but not HTTP (B's ingress rules, checked on B's
//!   host, know A's group membership from the other host);
//! - a second VPC with the same CIDR has D on the serve's host and E on the agent's host at
//!   B's very address: D's probes reach E, never B.

mod common;

use common::eventually_within as eventually;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// The test underlay: namespace `ul` with a bridge, the machine's end `root_if`
/// (198.18.N.1) and the agent's namespace `hb` (198.18.N.2), removed on drop.
struct Underlay {
    ul: String,
    hb: String,
    root_if: String,
    net: u32,
}

impl Underlay {
    fn create() -> Underlay {
        let pid = std::process::id();
        let u = Underlay {
            ul: format!("stt-{pid}-ul"),
            hb: format!("stt-{pid}-hb"),
            root_if: format!("stu{}", pid % 10_000_000),
            net: pid % 250,
        };
        ip(&["netns", "add", &u.ul]);
        ip(&["netns", "add", &u.hb]);
        ip(&["-n", &u.ul, "link", "add", "ul0", "type", "bridge"]);
        ip(&["-n", &u.ul, "link", "set", "ul0", "up"]);
        ip(&["link", "add", &u.root_if, "type", "veth", "peer", "name", "p0", "netns", &u.ul]);
        ip(&["-n", &u.hb, "link", "add", "eth0", "type", "veth", "peer", "name", "p1", "netns", &u.ul]);
        for p in ["p0", "p1"] {
            ip(&["-n", &u.ul, "link", "set", p, "master", "ul0", "up"]);
        }
        ip(&["addr", "add", &format!("{}/24", u.addr(1)), "dev", &u.root_if]);
        ip(&["link", "set", &u.root_if, "up"]);
        ip(&["-n", &u.hb, "addr", "add", &format!("{}/24", u.addr(2)), "dev", "eth0"]);
        ip(&["-n", &u.hb, "link", "set", "eth0", "up"]);
        ip(&["-n", &u.hb, "link", "set", "lo", "up"]);
        u
    }

    fn addr(&self, host: u8) -> String {
        format!("198.18.{}.{host}", self.net)
    }
}

impl Drop for Underlay {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.hb]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.ul]).status();
        let _ = Command::new("ip").args(["link", "del", &self.root_if]).stderr(Stdio::null()).status();
    }
}

/// User data that probes `target` every second (ping, then HTTP) and writes the outcome to
/// the console as `PROBE ping=ok|fail http=BODY|fail`. (Not `wget -T`: Debian's static
/// busybox 1.35 crashes with it.)
fn prober(target: &str) -> String {
    format!(
        "#!/bin/sh\nwhile true; do\n  if busybox ping -c 1 -W 1 {target} >/dev/null 2>&1; then p=ok; else p=fail; fi\n  \
         w=$(busybox timeout 3 busybox wget -q -O - http://{target}/ 2>/dev/null | head -n 1)\n  \
         echo \"PROBE ping=$p http=${{w:-fail}}\" > /dev/console\n  sleep 1\ndone\n"
    )
}

fn probes(console: &Value) -> Vec<String> {
    s(&console["Output"]).lines().filter(|l| l.starts_with("PROBE ")).map(str::to_owned).collect()
}

#[test]
fn a_vpc_spans_two_hosts_with_its_security_groups_and_stays_apart_from_another() {
    let underlay = Underlay::create();
    let dirs: Vec<tempfile::TempDir> =
        (0..2).map(|_| tempfile::Builder::new().prefix("strato-test-").tempdir().expect("temp dir")).collect();
    let (d1, d2): (PathBuf, PathBuf) = (dirs[0].path().to_owned(), dirs[1].path().to_owned());
    let mut cmd = common::strato(&d1);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--az", "local-1a", "--underlay", &underlay.addr(1)])
        .args(["--agent-listen", &format!("{}:0", underlay.addr(1))])
        .env("STRATO_PUBLIC_POOL", common::public_pool(&d1))
        .env("STRATO_LAUNCH_SNAPSHOTS", "off");
    let (serve, endpoint, agent_api) = common::spawn_serve_with_agent_api(cmd);
    let mut cleanup = common::ServeAndAgent { serve, agent: None, dirs, agent_netns: Some(underlay.hb.clone()) };
    let agent_api = agent_api.expect("the serve's agent API");
    let config = d1.join("aws-config");
    let aws = |args: &[&str]| common::aws_at(&endpoint, &config, args);

    // The second host joins over the underlay, with TLS.
    let token = common::strato(&d1).args(["host", "token"]).output().expect("strato host token");
    let token = String::from_utf8_lossy(&token.stdout).trim().to_owned();
    let mut agent = common::strato_in_netns(&underlay.hb, &d2);
    agent.args(["--storage-dir"]).arg(&d1).args([
        "agent",
        "--control-plane",
        &agent_api,
        "--token",
        &token,
        "--az",
        "local-1b",
        "--underlay",
        &underlay.addr(2),
    ]);
    let mut child = agent.stdout(Stdio::piped()).spawn().expect("strato agent");
    let stdout = child.stdout.take().expect("stdout");
    cleanup.agent = Some(child);
    let mut lines = BufReader::new(stdout).lines();
    let joined = lines.next().expect("a line").expect("utf-8");
    assert!(joined.starts_with("This machine is host h-"), "{joined}");
    std::thread::spawn(move || for _ in lines {});
    let list = common::strato(&d1).args(["host", "list"]).output().expect("strato host list");
    let list = String::from_utf8_lossy(&list.stdout);
    for (zone, addr) in [("local-1a", underlay.addr(1)), ("local-1b", underlay.addr(2))] {
        assert!(list.lines().any(|l| l.contains(zone) && l.ends_with(&format!("  {addr}"))), "{list}");
    }

    let images =
        aws(&["ec2", "describe-images", "--owners", "strato", "--filters", "Name=name,Values=strato-minimal-x86_64"]);
    let ami = s(&images["Images"][0]["ImageId"]);
    let vpc = s(&aws(&["ec2", "describe-vpcs", "--filters", "Name=is-default,Values=true"])["Vpcs"][0]["VpcId"]);
    let subnet_of = |vpc: &str, zone: &str| {
        let d = aws(&[
            "ec2",
            "describe-subnets",
            "--filters",
            &format!("Name=vpc-id,Values={vpc}"),
            &format!("Name=availability-zone,Values={zone}"),
        ]);
        s(&d["Subnets"][0]["SubnetId"])
    };
    let group = |name: &str, vpc: &str| {
        s(&aws(&["ec2", "create-security-group", "--group-name", name, "--description", name, "--vpc-id", vpc])
            ["GroupId"])
    };
    let (web, client, other) = (group("web", &vpc), group("client", &vpc), group("other", &vpc));
    let from_client = format!(
        r#"[{{"IpProtocol":"tcp","FromPort":80,"ToPort":80,"UserIdGroupPairs":[{{"GroupId":"{client}"}}]}},{{"IpProtocol":"icmp","FromPort":-1,"ToPort":-1,"IpRanges":[{{"CidrIp":"0.0.0.0/0"}}]}}]"#
    );
    aws(&["ec2", "authorize-security-group-ingress", "--group-id", &web, "--ip-permissions", &from_client]);
    let run = |subnet: &str, group: &str, user_data: &str, ip: Option<&str>| {
        let mut args = vec![
            "ec2",
            "run-instances",
            "--image-id",
            &ami,
            "--instance-type",
            "t2.nano",
            "--subnet-id",
            subnet,
            "--security-group-ids",
            group,
            "--user-data",
            user_data,
        ];
        if let Some(ip) = ip {
            args.extend(["--private-ip-address", ip]);
        }
        let r = aws(&args);
        (s(&r["Instances"][0]["InstanceId"]), s(&r["Instances"][0]["PrivateIpAddress"]))
    };

    let (b, b_ip) = run(&subnet_of(&vpc, "local-1b"), &web, common::WEB_USER_DATA, None);
    let (a, _) = run(&subnet_of(&vpc, "local-1a"), &client, &prober(&b_ip), None);
    let (c, _) = run(&subnet_of(&vpc, "local-1a"), &other, &prober(&b_ip), None);

    // A second VPC with the same addresses, on the same two hosts.
    let vpc2 = s(&aws(&["ec2", "create-vpc", "--cidr-block", "172.31.0.0/16"])["Vpc"]["VpcId"]);
    let b_subnet = aws(&["ec2", "describe-subnets", "--subnet-ids", &subnet_of(&vpc, "local-1b")]);
    let b_cidr = s(&b_subnet["Subnets"][0]["CidrBlock"]);
    let subnet2 = |zone: &str, cidr: &str| {
        let r = aws(&["ec2", "create-subnet", "--vpc-id", &vpc2, "--cidr-block", cidr, "--availability-zone", zone]);
        s(&r["Subnet"]["SubnetId"])
    };
    let default2 = aws(&[
        "ec2",
        "describe-security-groups",
        "--filters",
        &format!("Name=vpc-id,Values={vpc2}"),
        "Name=group-name,Values=default",
    ]);
    let default2 = s(&default2["SecurityGroups"][0]["GroupId"]);
    let other_web =
        "#!/bin/sh\nmkdir -p /www\necho \"vpc2 $(hostname)\" > /www/index.html\nbusybox httpd -p 80 -h /www\n";
    let (e, _) = run(&subnet2("local-1b", &b_cidr), &default2, other_web, Some(&b_ip));
    let (d, _) = run(&subnet2("local-1a", "172.31.128.0/20"), &default2, &prober(&b_ip), None);

    let describe =
        |id: &str| aws(&["ec2", "describe-instances", "--instance-ids", id])["Reservations"][0]["Instances"][0].clone();
    let hosts: Vec<String> =
        [&a, &b, &c, &d, &e].iter().map(|id| s(&describe(id)["Placement"]["AvailabilityZone"])).collect();
    assert_eq!(hosts, ["local-1a", "local-1b", "local-1a", "local-1a", "local-1b"]);
    let console = |id: &str| probes(&aws(&["ec2", "get-console-output", "--instance-id", id]));

    eventually("A (group client) reaches B's web server on the other host", Duration::from_secs(240), || {
        console(&a).iter().any(|l| l.contains(&format!("http=web ip-{}", b_ip.replace('.', "-"))))
    });
    let start = std::time::Instant::now();
    while !console(&d).iter().any(|l| l.contains("http=vpc2 ")) {
        let out = |id: &str| s(&aws(&["ec2", "get-console-output", "--instance-id", id])["Output"]);
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "timed out waiting for D reaches E, its own VPC's instance at B's address; D:\n{}\nE:\n{}",
            out(&d),
            out(&e)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    eventually("C (group other) pings B but is refused HTTP", Duration::from_secs(120), || {
        console(&c).iter().any(|l| l == "PROBE ping=ok http=fail")
    });
    // Some more rounds of probes, then: C never got the page, D never reached B.
    let seen = console(&c).len();
    eventually("three more probes from C", Duration::from_secs(60), || console(&c).len() >= seen + 3);
    let c_probes = console(&c);
    assert!(c_probes.iter().all(|l| !l.contains("http=web")), "C got through B's ingress rules: {c_probes:?}");
    let d_probes = console(&d);
    assert!(d_probes.iter().all(|l| !l.contains("http=web")), "D reached the other VPC: {d_probes:?}");
    let a_probes = console(&a);
    assert!(a_probes.iter().all(|l| !l.contains("http=vpc2")), "A reached the other VPC: {a_probes:?}");
}
