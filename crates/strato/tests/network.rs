//! Instance networking with real VMs and real packets: SSH with a created key pair to the
//! public address, ports opened and closed by security-group rules (from the host and from
//! another instance), the metadata service answering only the instance that asks, user data
//! that ran, frames a guest forges (another address, an 802.1Q tag) that leave no tap, and two
//! accounts with the same CIDR that cannot reach each other.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{key_file, ssh, Cloud};
use serde_json::Value;

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

fn minimal_ami(cloud: &Cloud) -> String {
    let d =
        cloud.aws(&["ec2", "describe-images", "--owners", "strato", "--filters", "Name=name,Values=strato-minimal-*"]);
    s(&d["Images"][0]["ImageId"])
}

fn instance_as(cloud: &Cloud, profile: &str, id: &str) -> Value {
    let d = cloud.aws_json_as(profile, &["ec2", "describe-instances", "--instance-ids", id]);
    d["Reservations"][0]["Instances"][0].clone()
}

/// Waits for the guest's ready marker; returns the instance as DescribeInstances shows it.
fn wait_ready(cloud: &Cloud, profile: &str, id: &str) -> Value {
    let start = Instant::now();
    loop {
        let c = cloud.aws_json_as(profile, &["ec2", "get-console-output", "--instance-id", id]);
        let out = s(&c["Output"]);
        if out.contains("STRATO-BOOT: ready") {
            return instance_as(cloud, profile, id);
        }
        assert!(start.elapsed() < Duration::from_secs(120), "{id} never got ready:\n{out}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Whether a TCP connection to ip:22 from the host gets the SSH banner.
fn port22_open(ip: &str) -> bool {
    let addr: SocketAddr = format!("{ip}:22").parse().unwrap();
    let Ok(mut c) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else { return false };
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 7];
    c.read_exact(&mut buf).is_ok() && &buf == b"SSH-2.0"
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(20), "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// From inside a guest: does `ip:22` answer with the SSH banner?
fn banner_from(key: &Path, via: &str, ip: &str) -> bool {
    let out = ssh(key, via, &format!("echo | nc -w 3 {ip} 22 | head -c 7")).unwrap_or_default();
    out.starts_with("SSH-2.0")
}

fn run(cloud: &Cloud, profile: &str, args: &[&str]) -> String {
    let mut a = vec!["ec2", "run-instances", "--instance-type", "t3.nano"];
    a.extend_from_slice(args);
    let r = cloud.aws_json_as(profile, &a);
    s(&r["Instances"][0]["InstanceId"])
}

#[test]
fn ssh_security_groups_metadata_and_user_data() {
    let cloud = Cloud::start();
    let ami = minimal_ami(&cloud);
    let key = key_file(&cloud, "strato", "net");
    let web = cloud.aws(&["ec2", "create-security-group", "--group-name", "web", "--description", "web servers"]);
    let web = s(&web["GroupId"]);
    let groups = cloud.aws(&["ec2", "describe-security-groups", "--group-names", "default"]);
    let default = s(&groups["SecurityGroups"][0]["GroupId"]);

    let user_data = "#!/bin/sh\necho hello-from-user-data > /root/user-data.txt\n";
    let a = run(&cloud, "strato", &["--image-id", &ami, "--key-name", "net", "--user-data", user_data]);
    let b = run(&cloud, "strato", &["--image-id", &ami, "--key-name", "net", "--security-group-ids", &web]);
    let ia = wait_ready(&cloud, "strato", &a);
    let ib = wait_ready(&cloud, "strato", &b);
    vms_run_as_users_of_their_own(&cloud, &ia, &ib);
    let (pa, pb) = (s(&ia["PublicIpAddress"]), s(&ib["PublicIpAddress"]));
    let (ra, rb) = (s(&ia["PrivateIpAddress"]), s(&ib["PrivateIpAddress"]));
    assert!(pa.starts_with("127.") && pb.starts_with("127.") && pa != pb, "public addresses {pa} {pb}");

    // The default group admits only its members: the host cannot reach port 22.
    assert!(!port22_open(&pa), "port 22 of {pa} is open before any rule allows it");
    cloud.aws(&[
        "ec2",
        "authorize-security-group-ingress",
        "--group-id",
        &default,
        "--protocol",
        "tcp",
        "--port",
        "22",
        "--cidr",
        "127.0.0.1/32",
    ]);
    eventually("port 22 opens", || port22_open(&pa));
    let out = ssh(&key, &pa, "cat /root/user-data.txt; ip -4 -o addr show eth0").expect("ssh to A");
    assert!(out.contains("hello-from-user-data"), "user data did not run: {out}");
    assert!(out.contains(&format!("inet {ra}/20")), "the guest's DHCP address is not {ra}: {out}");
    // The metadata service answers A with A's identity and addresses.
    let md = ssh(
        &key,
        &pa,
        "for p in instance-id local-ipv4 public-ipv4; do printf 'GET /latest/meta-data/%s HTTP/1.0\\r\\n\\r\\n' $p | nc -w 3 169.254.169.254 80 | tail -n 1; echo; done",
    )
    .expect("metadata from A");
    assert!(md.contains(&a) && md.contains(&ra) && md.contains(&pa), "metadata of A: {md}");
    // HttpTokens=required: IMDSv1 gets 401 from then on; a token still works.
    cloud.aws(&["ec2", "modify-instance-metadata-options", "--instance-id", &a, "--http-tokens", "required"]);
    let v1 = "printf 'GET /latest/meta-data/instance-id HTTP/1.0\\r\\n\\r\\n' | nc -w 3 169.254.169.254 80 | head -n 1";
    eventually("IMDSv1 is refused", || ssh(&key, &pa, v1).unwrap_or_default().contains(" 401 "));
    let v2 = ssh(
        &key,
        &pa,
        "T=$(printf 'PUT /latest/api/token HTTP/1.0\\r\\nX-aws-ec2-metadata-token-ttl-seconds: 60\\r\\n\\r\\n' | nc -w 3 169.254.169.254 80 | tail -n 1); \
         printf \"GET /latest/meta-data/instance-id HTTP/1.0\\r\\nX-aws-ec2-metadata-token: $T\\r\\n\\r\\n\" | nc -w 3 169.254.169.254 80 | tail -n 1",
    )
    .unwrap_or_default();
    assert_eq!(v2.trim(), a, "IMDSv2 with a token");
    cloud.aws(&["ec2", "modify-instance-metadata-options", "--instance-id", &a, "--http-tokens", "optional"]);

    // B's group has no rules: closed to the host and to A.
    assert!(!port22_open(&pb));
    assert!(!banner_from(&key, &pa, &rb), "A reached B:22 without a rule");
    // Allow the default group (A's) into B on 22.
    cloud.aws(&[
        "ec2",
        "authorize-security-group-ingress",
        "--group-id",
        &web,
        "--protocol",
        "tcp",
        "--port",
        "22",
        "--source-group",
        &default,
    ]);
    eventually("A reaches B:22", || banner_from(&key, &pa, &rb));
    // The VPC's DNS server knows B's private name (and nothing outside the VPC).
    let name = s(&ib["PrivateDnsName"]);
    let dns = ssh(&key, &pa, &format!("cat /etc/resolv.conf; nslookup {name}; nslookup example.com; true"))
        .unwrap_or_default();
    assert!(dns.contains("nameserver 172.31.0.2"), "{dns}");
    assert!(dns.matches(&rb).count() >= 1, "{name} does not resolve to {rb}: {dns}");
    assert!(!port22_open(&pb), "a group rule must not open B to the host");

    // A DHCP options set on the VPC: an instance launched afterwards is handed its DNS server.
    let set = cloud.aws(&[
        "ec2",
        "create-dhcp-options",
        "--dhcp-configurations",
        "Key=domain-name-servers,Values=172.31.0.53,AmazonProvidedDNS",
    ]);
    let set = s(&set["DhcpOptions"]["DhcpOptionsId"]);
    let vpc = s(&ia["VpcId"]);
    cloud.aws(&["ec2", "associate-dhcp-options", "--dhcp-options-id", &set, "--vpc-id", &vpc]);
    let c = run(&cloud, "strato", &["--image-id", &ami, "--key-name", "net"]);
    let ic = wait_ready(&cloud, "strato", &c);
    let pc = s(&ic["PublicIpAddress"]);
    eventually("port 22 of C opens", || port22_open(&pc));
    let resolv = ssh(&key, &pc, "cat /etc/resolv.conf").unwrap_or_default();
    assert!(resolv.contains("nameserver 172.31.0.53"), "C's DNS server is its VPC's DHCP options': {resolv}");
    cloud.aws(&["ec2", "associate-dhcp-options", "--dhcp-options-id", "default", "--vpc-id", &vpc]);
    cloud.aws(&["ec2", "terminate-instances", "--instance-ids", &c]);

    // A cannot pass for B: it takes B's address, claims it by gratuitous ARP and asks the
    // metadata service from it. Without the tap's anti-spoofing rules this returns B's id
    // (checked by hand); with them, neither the ARP nor the packets leave A's tap.
    let spoof = ssh(
        &key,
        &pa,
        &format!(
            "GW=$(ip route | awk '/default/ {{print $3}}'); ip addr add {rb}/32 dev eth0; \
             ip route replace 169.254.169.254/32 via $GW src {rb}; arping -U -c 2 -I eth0 -s {rb} $GW >/dev/null 2>&1; \
             printf 'GET /latest/meta-data/instance-id HTTP/1.0\\r\\n\\r\\n' | nc -w 3 169.254.169.254 80; echo; \
             ip route del 169.254.169.254/32; ip addr del {rb}/32 dev eth0; echo done"
        ),
    )
    .expect("ssh to A for the spoofing attempt");
    assert!(spoof.contains("done") && !spoof.contains(&b), "A read B's metadata: {spoof}");
    raw_frames_from_a_guest_pass_for_no_one(&cloud, &key, &ia, &ib);
    a_metadata_flood_is_throttled(&cloud, &key, &ia);

    // Revoking the rule closes the port again.
    cloud.aws(&[
        "ec2",
        "revoke-security-group-ingress",
        "--group-id",
        &default,
        "--protocol",
        "tcp",
        "--port",
        "22",
        "--cidr",
        "127.0.0.1/32",
    ]);
    eventually("port 22 closes", || !port22_open(&pa));

    // A stopped instance has no public address; started again it gets one.
    cloud.aws(&["ec2", "stop-instances", "--instance-ids", &a]);
    let start = Instant::now();
    loop {
        let i = instance_as(&cloud, "strato", &a);
        if s(&i["State"]["Name"]) == "stopped" {
            assert!(i.get("PublicIpAddress").is_none(), "a stopped instance keeps {i}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(90), "A did not stop");
        std::thread::sleep(Duration::from_millis(500));
    }
    // Its tap is gone from the VPC's namespace (B still runs there).
    let ns = strato::net::Site::new(cloud.dir.path()).netns(&s(&ia["VpcId"]));
    let tap = strato::net::tap_name(&a);
    eventually("A's tap is removed", || {
        !Command::new("ip").args(["-n", &ns, "link", "show", &tap]).output().unwrap().status.success()
    });
    cloud.aws(&["ec2", "start-instances", "--instance-ids", &a]);
    let i = instance_as(&cloud, "strato", &a);
    assert!(s(&i["PublicIpAddress"]).starts_with("127."), "no public address after start: {i}");

    // An elastic IP: SSH reaches the instance at it, and no longer at the pool address.
    wait_ready(&cloud, "strato", &a);
    let pool = s(&instance_as(&cloud, "strato", &a)["PublicIpAddress"]);
    cloud.aws(&[
        "ec2",
        "authorize-security-group-ingress",
        "--group-id",
        &default,
        "--protocol",
        "tcp",
        "--port",
        "22",
        "--cidr",
        "127.0.0.0/8",
    ]);
    eventually("port 22 opens at the pool address", || port22_open(&pool));
    let e = cloud.aws(&["ec2", "allocate-address"]);
    let eip = s(&e["PublicIp"]);
    cloud.aws(&["ec2", "associate-address", "--allocation-id", &s(&e["AllocationId"]), "--instance-id", &a]);
    eventually("the elastic IP answers", || port22_open(&eip));
    let id = ssh(
        &key,
        &eip,
        "printf 'GET /latest/meta-data/public-ipv4 HTTP/1.0\\r\\n\\r\\n' | nc -w 3 169.254.169.254 80 | tail -n 1",
    )
    .expect("ssh at the elastic IP");
    assert_eq!(id.trim(), eip, "the metadata's public-ipv4 is the elastic IP");
    eventually("the pool address is gone", || !port22_open(&pool));
    // `strato ssh` finds the address itself.
    let out = common::strato(cloud.dir.path())
        .args(["ssh", "-i"])
        .arg(&key)
        .args([a.as_str(), "echo", "via-strato-ssh"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("via-strato-ssh"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Each VM's QEMU runs as a user of its own, with no capability, and cannot open another
/// VM's disk (nor its own: every disk is root's, opened before QEMU dropped root).
fn vms_run_as_users_of_their_own(cloud: &Cloud, a: &Value, b: &Value) {
    let user = |i: &Value| -> (u32, String) {
        let pid =
            std::fs::read_to_string(cloud.dir.path().join("instances").join(s(&i["InstanceId"])).join("qemu.pid"))
                .expect("qemu.pid");
        let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).expect("QEMU's status");
        let field = |k: &str| status.lines().find_map(|l| l.strip_prefix(k)).unwrap_or_default().trim().to_owned();
        let uid = field("Uid:").split_whitespace().next().and_then(|u| u.parse().ok()).expect("a uid");
        (uid, field("CapEff:"))
    };
    let ((ua, capa), (ub, capb)) = (user(a), user(b));
    assert!(ua != 0 && ub != 0 && ua != ub, "QEMU users: {ua} and {ub}");
    assert_eq!((capa.as_str(), capb.as_str()), ("0000000000000000", "0000000000000000"), "effective capabilities");
    let disk = |i: &Value| {
        let vol = s(&i["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]);
        cloud.dir.path().join("volumes").join(format!("{vol}.qcow2"))
    };
    for (uid, path) in [(ua, disk(b)), (ua, disk(a))] {
        let read_as = |who: Option<u32>| {
            let mut cmd = match who {
                Some(u) => {
                    let mut c = Command::new("setpriv");
                    c.args([format!("--reuid={u}"), format!("--regid={u}"), "--clear-groups".into(), "head".into()]);
                    c
                }
                None => Command::new("head"),
            };
            cmd.args(["-c", "1"]).arg(&path).output().expect("head")
        };
        assert!(read_as(None).status.success(), "root reads {}", path.display());
        let out = read_as(Some(uid));
        assert!(
            !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "user {uid} opened {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The same attack with raw frames, as a program in the guest writes them (tests/spoof/spoof.c,
/// built static here and copied in): ARP requests "from" B's address that would point the
/// VPC router's neighbour entry for B at A's MAC, then a TCP handshake with the metadata
/// service from B's address, plain and behind an 802.1Q tag with VLAN id 0 (which a Linux
/// bridge takes as untagged). Only plain IPv4 and ARP frames with A's own MAC and address
/// leave A's tap: the service answers A's own untagged SYN and nothing else.
fn raw_frames_from_a_guest_pass_for_no_one(cloud: &Cloud, key: &Path, a: &Value, b: &Value) {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("spoof");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/spoof/spoof.c");
    let cc = Command::new("gcc").args(["-static", "-O2", "-o"]).arg(&bin).arg(&src).output().expect("gcc");
    assert!(cc.status.success(), "gcc: {}", String::from_utf8_lossy(&cc.stderr));
    let (pa, ra, rb) = (s(&a["PublicIpAddress"]), s(&a["PrivateIpAddress"]), s(&b["PrivateIpAddress"]));
    let copy = Command::new("ssh")
        .arg("-i")
        .arg(key)
        .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"])
        .args(["-o", "LogLevel=ERROR", &format!("root@{pa}"), "cat > /root/spoof && chmod 700 /root/spoof"])
        .stdin(std::fs::File::open(&bin).unwrap())
        .output()
        .unwrap();
    assert!(copy.status.success(), "copying spoof in: {}", String::from_utf8_lossy(&copy.stderr));
    let attempt = |tag: &str, ip: &str| {
        let cmd = format!(
            "GW=$(ip route | awk '/default/ {{print $3}}'); ping -c 1 -W 1 $GW >/dev/null; \
             /root/spoof eth0 {tag} {ip} $GW; echo exit=$?"
        );
        ssh(key, &pa, &cmd).expect("ssh to A for spoof")
    };
    // The program works: A's own address, untagged, gets the service's SYN-ACK.
    let own = attempt("none", &ra);
    assert!(own.contains("synack"), "A's own untagged handshake was not answered: {own}");
    let ns = strato::net::Site::new(cloud.dir.path()).netns(&s(&a["VpcId"]));
    let mac_a = s(&a["NetworkInterfaces"][0]["MacAddress"]).to_lowercase();
    for (tag, ip) in [("vlan0", &rb), ("none", &rb), ("vlan0", &ra)] {
        let out = attempt(tag, ip);
        assert!(
            out.contains("exit=1") && !out.contains("synack") && !out.contains(&s(&b["InstanceId"])),
            "A's {tag} frames from {ip} were answered: {out}"
        );
        let neigh = Command::new("ip").args(["-n", &ns, "neigh", "show", &rb]).output().unwrap();
        let neigh = String::from_utf8_lossy(&neigh.stdout).to_lowercase();
        assert!(!neigh.contains(&mac_a), "the router's entry for B ({rb}) points at A after {tag} ARP: {neigh}");
    }
}

/// One guest floods the metadata service: connections beyond its cap, and requests beyond its
/// budget, are answered 429 at once; the EC2 API answers meanwhile; the service answers the
/// guest again once it stops.
fn a_metadata_flood_is_throttled(cloud: &Cloud, key: &Path, a: &Value) {
    let (pa, id) = (s(&a["PublicIpAddress"]), s(&a["InstanceId"]));
    let get = "printf 'GET /latest/meta-data/instance-id HTTP/1.0\\r\\n\\r\\n' | nc -w 3 169.254.169.254 80";
    let held = strato::net::imds::PER_INSTANCE_CONNECTIONS + 4;
    let flood = format!(
        "for i in $(seq 1 {held}); do (sleep 4 | nc 169.254.169.254 80 > /tmp/held.$i 2>&1) & done; sleep 1; \
         echo \"probe: $({get} | head -n 1)\"; wait; echo \"refused: $(cat /tmp/held.* | grep -c ' 429 ')\"; rm -f /tmp/held.*"
    );
    let (k, ip) = (key.to_owned(), pa.clone());
    let flooding = std::thread::spawn(move || ssh(&k, &ip, &flood).expect("ssh to A for the flood"));
    std::thread::sleep(Duration::from_secs(2));
    cloud.aws(&["ec2", "describe-regions"]);
    let out = flooding.join().expect("the flood thread");
    assert!(out.contains("probe: HTTP/1.1 429"), "a connection beyond the cap was served: {out}");
    assert!(!out.contains("refused: 0"), "no held connection was refused: {out}");
    eventually("the metadata service answers A again", || ssh(key, &pa, get).unwrap_or_default().contains(&id));

    // Requests beyond the budget: 6 connections of 99 requests each, sent without waiting.
    let burst = "R=; for i in $(seq 1 99); do R=\"${R}GET /latest/meta-data/instance-id HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n\"; done; \
         printf \"$R\" > /tmp/req; for c in 1 2 3 4 5 6; do nc -w 2 169.254.169.254 80 < /tmp/req; done > /tmp/answers; \
         echo \"ok: $(grep -c ' 200 ' /tmp/answers) throttled: $(grep -c ' 429 ' /tmp/answers)\"";
    let out = ssh(key, &pa, burst).expect("ssh to A for the burst");
    assert!(!out.contains("throttled: 0") && !out.contains("ok: 0 "), "requests beyond the budget: {out}");
    let refill = Duration::from_secs_f64(strato::net::imds::BURST / strato::net::imds::RATE);
    std::thread::sleep(refill);
    eventually("the budget refills", || ssh(key, &pa, get).unwrap_or_default().contains(&id));
}

#[test]
fn accounts_with_the_same_cidr_cannot_reach_each_other() {
    let cloud = Cloud::start();
    cloud.create_account("other", false);
    let ami = minimal_ami(&cloud);
    let key = key_file(&cloud, "strato", "mine");
    key_file(&cloud, "other", "theirs");
    let zone = ["--placement", "AvailabilityZone=local-1a"];
    for profile in ["strato", "other"] {
        cloud.aws_json_as(
            profile,
            &[
                "ec2",
                "authorize-security-group-ingress",
                "--group-name",
                "default",
                "--protocol",
                "tcp",
                "--port",
                "22",
                "--cidr",
                "0.0.0.0/0",
            ],
        );
    }
    let mut args = vec!["--image-id", ami.as_str(), "--key-name", "mine"];
    args.extend_from_slice(&zone);
    let mine = run(&cloud, "strato", &args);
    let mut args = vec!["--image-id", ami.as_str(), "--key-name", "theirs", "--count", "2"];
    args.extend_from_slice(&zone);
    let r = cloud.aws_json_as("other", &[&["ec2", "run-instances", "--instance-type", "t3.nano"], &args[..]].concat());
    let theirs: Vec<String> = r["Instances"].as_array().unwrap().iter().map(|i| s(&i["InstanceId"])).collect();
    let im = wait_ready(&cloud, "strato", &mine);
    let it: Vec<Value> = theirs.iter().map(|id| wait_ready(&cloud, "other", id)).collect();

    // Both default VPCs are 172.31.0.0/16: the first instance of each has the same address.
    assert_eq!(s(&im["PrivateIpAddress"]), s(&it[0]["PrivateIpAddress"]));
    let pm = s(&im["PublicIpAddress"]);
    eventually("my instance answers SSH", || ssh(&key, &pm, "true").is_some());
    // Their second instance is open to the world on 22, yet unreachable from my VPC, by its
    // private address and by the transit address behind its public one.
    let other_private = s(&it[1]["PrivateIpAddress"]);
    assert!(port22_open(&s(&it[1]["PublicIpAddress"])), "their instance is reachable from the host");
    assert!(!banner_from(&key, &pm, &other_private), "my instance reached theirs at {other_private}");
    let transit = strato::net::transit_of(s(&it[1]["PublicIpAddress"]).parse().unwrap()).to_string();
    assert!(!banner_from(&key, &pm, &transit), "my instance reached theirs at {transit}");
    // My own address from inside my VPC is me.
    let me = ssh(&key, &pm, "ip -4 -o addr show eth0").unwrap_or_default();
    assert!(me.contains(&s(&im["PrivateIpAddress"])));

    // A server crash leaves VMs and namespaces; the restarted server takes them over and
    // serves the metadata again from its new process.
    let mut cloud = cloud;
    cloud.crash();
    cloud.restart();
    let md = "printf 'GET /latest/meta-data/instance-id HTTP/1.0\\r\\n\\r\\n' | nc -w 3 169.254.169.254 80 | tail -n 1";
    eventually("metadata answers after the restart", || ssh(&key, &pm, md).unwrap_or_default().trim() == mine);
}
