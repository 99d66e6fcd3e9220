//! Several hosts, for real: three `strato serve` processes (each its own data dir, host, API
//! endpoint and public pool) sharing one PostgreSQL database and one storage dir (images and
//! volumes), in two zones, with real VMs. A web server in each zone; one host is killed (its
//! server with SIGKILL, its VMs and networks by `strato down`, as a machine dies): the other
//! zone's web server still answers, an instance without recovery is reported impaired with
//! a state reason, one with recovery comes back on the zone's other host with its id and
//! addresses and serves again. Then RunInstances with one ClientToken through two API
//! servers at once, and through one killed mid-request and retried on another: one instance.
//!
//! Needs `STRATO_TEST_POSTGRES` (scripts/test starts PostgreSQL).

mod common;

use common::eventually_within as eventually;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

struct Host {
    child: Option<Child>,
    dir: tempfile::TempDir,
    endpoint: String,
}

/// The hosts of one test, on one database and storage dir; everything is ended and removed
/// on drop, also when the test fails.
struct Cluster {
    database: String,
    storage: tempfile::TempDir,
    /// The key every server seals the database's secrets with (`--secrets-key-file`).
    secrets_key: tempfile::NamedTempFile,
    hosts: Vec<Host>,
}

impl Cluster {
    fn new() -> Cluster {
        Cluster {
            database: common::new_postgres_database(),
            storage: tempfile::Builder::new().prefix("strato-storage-").tempdir().expect("temp dir"),
            secrets_key: {
                // (NamedTempFile makes its file 0600.)
                let mut f = tempfile::NamedTempFile::new().expect("temp file");
                std::io::Write::write_all(&mut f, hex_key().as_bytes()).expect("writing the secrets key");
                f
            },
            hosts: Vec::new(),
        }
    }

    /// Starts a host serving `zone`; returns its index.
    fn start(&mut self, zone: &str) -> usize {
        let dir = tempfile::Builder::new().prefix("strato-test-").tempdir().expect("temp dir");
        let mut cmd = common::strato(dir.path());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--az", zone, "--host-timeout", "3", "--storage-dir"])
            .arg(self.storage.path())
            .env("STRATO_DATABASE", &self.database)
            .env("STRATO_SECRETS_KEY_FILE", self.secrets_key.path())
            .env("STRATO_PUBLIC_POOL", common::public_pool(dir.path()))
            .env("STRATO_LAUNCH_SNAPSHOTS", "off");
        let (child, endpoint) = common::spawn_serve(cmd);
        self.hosts.push(Host { child: Some(child), dir, endpoint });
        self.hosts.len() - 1
    }

    /// The host dies: its server at once (SIGKILL), then its VMs and networks.
    fn kill(&mut self, n: usize) {
        let h = &mut self.hosts[n];
        if let Some(mut c) = h.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        down(&self.database, h.dir.path());
    }

    /// `aws ... --output json` against host `n`'s endpoint, as the admin (the account and
    /// its keys are in the shared database: every host's aws-config has them).
    fn aws_out(&self, n: usize, args: &[&str]) -> std::process::Output {
        Command::new(common::venv().join("bin/aws"))
            .args(args)
            .args(["--output", "json", "--endpoint-url", &self.hosts[n].endpoint])
            .env("AWS_CONFIG_FILE", self.hosts[0].dir.path().join("aws-config"))
            .env("AWS_PROFILE", "strato")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_MAX_ATTEMPTS", "1")
            .env("AWS_PAGER", "")
            .output()
            .expect("running aws")
    }

    fn aws(&self, n: usize, args: &[&str]) -> Value {
        let out = self.aws_out(n, args);
        assert!(out.status.success(), "aws {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        if out.stdout.is_empty() {
            return Value::Null;
        }
        serde_json::from_slice(&out.stdout).expect("aws printed JSON")
    }

    fn instance(&self, n: usize, id: &str) -> Value {
        self.aws(n, &["ec2", "describe-instances", "--instance-ids", id])["Reservations"][0]["Instances"][0].clone()
    }
}

/// 32 random bytes in hex: a secrets key.
fn hex_key() -> String {
    let mut b = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").expect("/dev/urandom"), &mut b)
        .expect("reading /dev/urandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn down(database: &str, dir: &Path) {
    let _ = common::strato(dir).env("STRATO_DATABASE", database).arg("down").output();
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for h in &mut self.hosts {
            if let Some(mut c) = h.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            down(&self.database, h.dir.path());
        }
        common::drop_postgres_database(&self.database);
    }
}

#[test]
fn a_zone_survives_a_dead_host_and_its_instances_are_recovered() {
    let mut c = Cluster::new();
    let a = c.start("local-1a");
    let b = c.start("local-1b");
    let d = c.aws(
        a,
        &["ec2", "describe-images", "--owners", "strato", "--filters", "Name=name,Values=strato-minimal-x86_64"],
    );
    let ami = s(&d["Images"][0]["ImageId"]);
    let subnet = |zone: &str| {
        let d = c.aws(a, &["ec2", "describe-subnets", "--filters", &format!("Name=availability-zone,Values={zone}")]);
        s(&d["Subnets"][0]["SubnetId"])
    };
    let (sa, sb) = (subnet("local-1a"), subnet("local-1b"));
    let zones = c.aws(b, &["ec2", "describe-availability-zones"]);
    let states: Vec<String> = zones["AvailabilityZones"].as_array().unwrap().iter().map(|z| s(&z["State"])).collect();
    assert_eq!(states, ["available", "available", "unavailable"], "a host in a and b, none in c");

    // One security group for the web servers: port 80 from this machine.
    let g = common::web_group(|args| c.aws(a, args));
    let run = |n: usize, subnet: &str, extra: &[&str]| {
        let mut args =
            vec!["ec2", "run-instances", "--image-id", &ami, "--instance-type", "t2.nano", "--subnet-id", subnet];
        args.extend(["--security-group-ids", &g, "--user-data", common::WEB_USER_DATA]);
        args.extend(extra);
        s(&c.aws(n, &args)["Instances"][0]["InstanceId"])
    };
    // In a: one with automatic recovery (the default), one without; in b: one.
    let recovered = run(a, &sa, &[]);
    let lost = run(b, &sa, &["--maintenance-options", "AutoRecovery=disabled"]);
    let other = run(b, &sb, &[]);
    let public = |c: &Cluster, id: &str| s(&c.instance(b, id)["PublicIpAddress"]);
    for id in [&recovered, &lost, &other] {
        eventually("the web server answers", Duration::from_secs(120), || {
            common::http_get(&public(&c, id)).is_some_and(|body| body.starts_with("web "))
        });
    }
    let (ip, private) = (public(&c, &recovered), s(&c.instance(b, &recovered)["PrivateIpAddress"]));

    // A second host joins zone a; then the first one dies.
    let a2 = c.start("local-1a");
    c.kill(a);
    let died = Instant::now();
    // The other zone's web server still answers.
    assert!(common::http_get(&public(&c, &other)).is_some(), "the web server in local-1b answers");
    // The instance without recovery: running, its system check impaired, the reason given.
    eventually("the lost instance is reported impaired", Duration::from_secs(30), || {
        let st = c.aws(b, &["ec2", "describe-instance-status", "--instance-ids", &lost]);
        s(&st["InstanceStatuses"][0]["SystemStatus"]["Status"]) == "impaired"
    });
    let impaired_after = died.elapsed();
    eventually("its state reason", Duration::from_secs(10), || {
        s(&c.instance(b, &lost)["StateReason"]["Message"]).contains("failed and automatic recovery is disabled")
    });
    assert_eq!(s(&c.instance(b, &lost)["State"]["Name"]), "running");
    // The one with recovery runs again on the zone's other host: same id, addresses, and
    // its web server (user data runs at every boot) answers at the same public address.
    eventually("the recovered instance serves again", Duration::from_secs(120), || {
        common::http_get(&ip).is_some_and(|body| body.starts_with("web "))
    });
    let back_after = died.elapsed();
    let i = c.instance(a2, &recovered);
    assert_eq!(s(&i["State"]["Name"]), "running");
    assert!(s(&i["StateTransitionReason"]).starts_with("Instance recovered after its host failed"), "{i}");
    assert_eq!((s(&i["PublicIpAddress"]), s(&i["PrivateIpAddress"])), (ip.clone(), private));
    // Its console (written on a2) is read through another host's API server (storage dir).
    let console = c.aws(b, &["ec2", "get-console-output", "--instance-id", &recovered]);
    assert!(s(&console["Output"]).contains("STRATO-BOOT: ready"), "{console}");
    println!(
        "host death to impaired: {:.1} s; to recovered and serving: {:.1} s (host timeout 3 s)",
        impaired_after.as_secs_f64(),
        back_after.as_secs_f64()
    );

    // One ClientToken, two API servers at once: one instance.
    let token = "multi-host-token";
    let args = [
        "ec2",
        "run-instances",
        "--image-id",
        &ami,
        "--instance-type",
        "t2.nano",
        "--subnet-id",
        &sb,
        "--client-token",
        token,
    ];
    let (x, y) = std::thread::scope(|scope| {
        let x = scope.spawn(|| c.aws(a2, &args));
        let y = scope.spawn(|| c.aws(b, &args));
        (x.join().expect("a2"), y.join().expect("b"))
    });
    let id = s(&x["Instances"][0]["InstanceId"]);
    assert_eq!(s(&y["Instances"][0]["InstanceId"]), id, "both servers answer with the same instance");
    // The same request in flight when its server dies, retried on another: still one.
    let endpoint = c.hosts[a2].endpoint.clone();
    let config = c.hosts[0].dir.path().join("aws-config");
    let mut inflight = Command::new(common::venv().join("bin/aws"))
        .args(args)
        .args(["--endpoint-url", &endpoint])
        .env("AWS_CONFIG_FILE", &config)
        .env("AWS_PROFILE", "strato")
        .env("AWS_MAX_ATTEMPTS", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("aws");
    std::thread::sleep(Duration::from_millis(700));
    c.kill(a2);
    let _ = inflight.wait();
    let again = c.aws(b, &args);
    assert_eq!(s(&again["Instances"][0]["InstanceId"]), id);
    let d = c.aws(b, &["ec2", "describe-instances"]);
    let n = d["Reservations"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["Instances"].as_array().unwrap().iter())
        .filter(|i| i["ClientToken"] == token)
        .count();
    assert_eq!(n, 1, "one instance for the token");
}
