//! Hosts, zones and placement, with simulated hosts (no VMs) on one control plane: which
//! zones are available, where RunInstances has room, an account's instances spread over a
//! zone's hosts, a host that dies (its instances impaired, its zone no longer available) and
//! StartInstances moving a stopped instance off a dead host.

mod common;

use std::time::{Duration, Instant};

use common::{Cloud, SimHost};
use serde_json::Value;

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

fn ids(run: &Value) -> Vec<String> {
    run["Instances"].as_array().unwrap().iter().map(|i| s(&i["InstanceId"])).collect()
}

fn ami(cloud: &Cloud) -> String {
    let d =
        cloud.aws(&["ec2", "describe-images", "--owners", "strato", "--filters", "Name=name,Values=strato-minimal-*"]);
    s(&d["Images"][0]["ImageId"])
}

fn zone_states(cloud: &Cloud) -> Vec<(String, String, String)> {
    let d = cloud.aws(&["ec2", "describe-availability-zones"]);
    d["AvailabilityZones"]
        .as_array()
        .unwrap()
        .iter()
        .map(|z| (s(&z["ZoneName"]), s(&z["State"]), s(&z["Messages"][0]["Message"])))
        .collect()
}

fn subnet_in(cloud: &Cloud, zone: &str) -> String {
    let d = cloud.aws(&[
        "ec2",
        "describe-subnets",
        "--filters",
        &format!("Name=availability-zone,Values={zone}"),
        "Name=default-for-az,Values=true",
    ]);
    s(&d["Subnets"][0]["SubnetId"])
}

fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn states(cloud: &Cloud, ids: &[String]) -> Vec<String> {
    let mut args = vec!["ec2", "describe-instances", "--instance-ids"];
    args.extend(ids.iter().map(String::as_str));
    let d = cloud.aws(&args);
    d["Reservations"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["Instances"].as_array().unwrap().clone())
        .map(|i| s(&i["State"]["Name"]))
        .collect()
}

/// (instance id, system status) of these instances.
fn system_status(cloud: &Cloud, ids: &[String]) -> Vec<(String, String)> {
    let mut args = vec!["ec2", "describe-instance-status", "--instance-ids"];
    args.extend(ids.iter().map(String::as_str));
    let d = cloud.aws(&args);
    let mut out: Vec<(String, String)> = d["InstanceStatuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (s(&x["InstanceId"]), s(&x["SystemStatus"]["Status"])))
        .collect();
    out.sort();
    out
}

fn instance(cloud: &Cloud, id: &str) -> Value {
    cloud.aws(&["ec2", "describe-instances", "--instance-ids", id])["Reservations"][0]["Instances"][0].clone()
}

fn run(cloud: &Cloud, ami: &str, subnet: &str, count: &str) -> Result<Vec<String>, String> {
    run_with(cloud, ami, subnet, count, &[])
}

fn run_with(cloud: &Cloud, ami: &str, subnet: &str, count: &str, extra: &[&str]) -> Result<Vec<String>, String> {
    let mut args = vec![
        "ec2",
        "run-instances",
        "--image-id",
        ami,
        "--instance-type",
        "t2.nano",
        "--subnet-id",
        subnet,
        "--count",
        count,
    ];
    args.extend(extra);
    let out = cloud.aws_as("strato", &[&args[..], &["--output", "json"]].concat());
    if out.status.success() {
        Ok(ids(&serde_json::from_slice(&out.stdout).expect("JSON")))
    } else {
        Err(cloud.aws_err(&args))
    }
}

#[test]
fn instances_are_placed_on_live_hosts_of_their_zone() {
    // Two hosts in local-1a, two in local-1b, none in local-1c; each has room for two
    // t2.nano (1 vCPU, 512 MiB) and no more.
    let host = |zone| SimHost { zone: Some(zone), vcpus: 2, memory_mib: 1024 };
    let cloud = Cloud::start_simulated_hosts(
        &[host("local-1a"), host("local-1a"), host("local-1b"), host("local-1b")],
        Duration::from_secs(2),
    );
    let ami = ami(&cloud);
    let zones = zone_states(&cloud);
    assert_eq!(
        zones.iter().map(|(z, st, _)| (z.as_str(), st.as_str())).collect::<Vec<_>>(),
        [("local-1a", "available"), ("local-1b", "available"), ("local-1c", "unavailable")]
    );
    assert_eq!(zones[2].2, "No host serves this zone.");
    let (a, b, c) = (subnet_in(&cloud, "local-1a"), subnet_in(&cloud, "local-1b"), subnet_in(&cloud, "local-1c"));

    // No host in c; MinCount beyond a zone's room is refused whole; MinCount:MaxCount gets
    // what fits.
    assert_eq!(run(&cloud, &ami, &c, "1"), Err("InsufficientInstanceCapacity".into()));
    assert_eq!(run(&cloud, &ami, &b, "5"), Err("InsufficientInstanceCapacity".into()));
    // (Recovery off: a dead host's instances stay impaired.)
    let in_b =
        run_with(&cloud, &ami, &b, "2", &["--maintenance-options", "AutoRecovery=disabled"]).expect("room in local-1b");
    let in_a = run(&cloud, &ami, &a, "2:5").expect("room in local-1a");
    assert_eq!(in_a.len(), 4, "two hosts of two each");
    for id in &in_a[2..] {
        cloud.aws(&["ec2", "terminate-instances", "--instance-ids", id]);
    }
    let in_a = in_a[..2].to_vec();
    let all: Vec<String> = in_a.iter().chain(&in_b).cloned().collect();
    eventually("all running", || states(&cloud, &all).iter().all(|s| s == "running"));
    eventually("status ok", || system_status(&cloud, &all).iter().all(|(_, st)| st == "ok"));

    // a's instances are stopped; then one host of each zone dies.
    let mut stop = vec!["ec2", "stop-instances", "--instance-ids"];
    stop.extend(in_a.iter().map(String::as_str));
    cloud.aws(&stop);
    eventually("a's instances stopped", || states(&cloud, &in_a).iter().all(|s| s == "stopped"));
    let died = Instant::now();
    cloud.stop_host(0);
    cloud.stop_host(2);
    // The account's two instances in b were spread over b's two hosts: one is impaired.
    eventually("one of b's instances impaired", || {
        system_status(&cloud, &in_b).iter().filter(|(_, st)| st == "impaired").count() == 1
    });
    println!("host death to impaired: {:.1} s (host timeout 2 s)", died.elapsed().as_secs_f64());
    let ok: Vec<String> = system_status(&cloud, &in_b).into_iter().map(|(_, st)| st).collect();
    assert!(ok.contains(&"ok".to_owned()), "the other is fine: {ok:?}");
    let impaired = system_status(&cloud, &in_b).into_iter().find(|(_, st)| st == "impaired").unwrap().0;
    eventually("the state reason says why it was not recovered", || {
        let i = instance(&cloud, &impaired);
        s(&i["StateReason"]["Code"]) == "Server.InternalError"
            && s(&i["StateReason"]["Message"]).contains("failed and automatic recovery is disabled")
    });
    let d = cloud.aws(&["ec2", "describe-instance-status", "--filters", "Name=system-status.status,Values=impaired"]);
    assert_eq!(d["InstanceStatuses"].as_array().unwrap().len(), 1);
    assert_eq!(states(&cloud, &in_b), ["running", "running"], "EC2 keeps the state; the status check fails");
    let zones = zone_states(&cloud);
    assert_eq!((zones[0].1.as_str(), zones[1].1.as_str()), ("available", "available"), "each has a live host");

    // Started again, a's instances both run on a's live host (one moved off the dead one):
    // that host is then full.
    let mut start = vec!["ec2", "start-instances", "--instance-ids"];
    start.extend(in_a.iter().map(String::as_str));
    cloud.aws(&start);
    eventually("a's instances running", || states(&cloud, &in_a).iter().all(|s| s == "running"));
    eventually("a's instances ok", || system_status(&cloud, &in_a).iter().all(|(_, st)| st == "ok"));
    assert_eq!(run(&cloud, &ami, &a, "1"), Err("InsufficientInstanceCapacity".into()));

    // b's last host dies: the zone is impaired, both its instances too, and it takes none.
    cloud.stop_host(3);
    eventually("b impaired", || system_status(&cloud, &in_b).iter().all(|(_, st)| st == "impaired"));
    let zones = zone_states(&cloud);
    assert_eq!((zones[1].1.as_str(), zones[1].2.as_str()), ("impaired", "All 2 hosts of this zone are down."));
    assert_eq!(run(&cloud, &ami, &b, "1"), Err("InsufficientInstanceCapacity".into()));
}

#[test]
fn a_dead_hosts_instances_are_recovered_on_another_host_of_their_zone() {
    let host = |zone, n: u32| SimHost { zone: Some(zone), vcpus: n, memory_mib: 512 * n as u64 };
    let cloud = Cloud::start_simulated_hosts(&[host("local-1a", 2), host("local-1b", 1)], Duration::from_secs(2));
    let ami = ami(&cloud);
    let (a, b) = (subnet_in(&cloud, "local-1a"), subnet_in(&cloud, "local-1b"));
    let x = run(&cloud, &ami, &a, "1").expect("x")[0].clone();
    let y = run_with(&cloud, &ami, &a, "1", &["--maintenance-options", "AutoRecovery=disabled"]).expect("y")[0].clone();
    let z = run(&cloud, &ami, &b, "1").expect("z")[0].clone();
    assert_eq!(s(&instance(&cloud, &x)["MaintenanceOptions"]["AutoRecovery"]), "default");
    assert_eq!(s(&instance(&cloud, &y)["MaintenanceOptions"]["AutoRecovery"]), "disabled");
    let m =
        cloud.aws(&["ec2", "modify-instance-maintenance-options", "--instance-id", &z, "--auto-recovery", "disabled"]);
    assert_eq!(s(&m["AutoRecovery"]), "disabled");
    let m =
        cloud.aws(&["ec2", "modify-instance-maintenance-options", "--instance-id", &z, "--auto-recovery", "default"]);
    assert_eq!(s(&m["AutoRecovery"]), "default");
    assert_eq!(
        cloud.aws_err(&[
            "ec2",
            "modify-instance-maintenance-options",
            "--instance-id",
            &z,
            "--auto-recovery",
            "always"
        ]),
        "InvalidParameterValue"
    );
    let all = [x.clone(), y.clone(), z.clone()];
    eventually("all running", || states(&cloud, &all).iter().all(|s| s == "running"));
    let x_ip = s(&instance(&cloud, &x)["PrivateIpAddress"]);

    // A second host joins local-1a; then the first dies.
    cloud.add_host(host("local-1a", 2));
    let died = Instant::now();
    cloud.stop_host(0);
    // x is started again on the new host: same id and private address.
    eventually("x recovered", || {
        let i = instance(&cloud, &x);
        s(&i["StateTransitionReason"]).starts_with("Instance recovered after its host failed")
            && s(&i["State"]["Name"]) == "running"
    });
    println!("host death to recovered and running: {:.1} s (host timeout 2 s)", died.elapsed().as_secs_f64());
    assert_eq!(s(&instance(&cloud, &x)["PrivateIpAddress"]), x_ip);
    eventually("x ok", || system_status(&cloud, std::slice::from_ref(&x)) == [(x.clone(), "ok".to_owned())]);
    // y is not recovered: running, impaired, with the reason.
    eventually("y's reason", || {
        s(&instance(&cloud, &y)["StateReason"]["Message"]).contains("automatic recovery is disabled")
    });
    assert_eq!(states(&cloud, std::slice::from_ref(&y)), ["running"]);
    assert_eq!(system_status(&cloud, std::slice::from_ref(&y)), [(y.clone(), "impaired".to_owned())]);
    // Stopping it ends at once (its VM went with the host); started, it runs on the new host.
    cloud.aws(&["ec2", "stop-instances", "--instance-ids", &y]);
    eventually("y stopped", || states(&cloud, std::slice::from_ref(&y)) == ["stopped"]);
    cloud.aws(&["ec2", "start-instances", "--instance-ids", &y]);
    eventually("y running", || states(&cloud, std::slice::from_ref(&y)) == ["running"]);
    eventually("y ok", || system_status(&cloud, std::slice::from_ref(&y)) == [(y.clone(), "ok".to_owned())]);

    // z's zone has no other host: z stays impaired with the reason; terminating it ends.
    cloud.stop_host(1);
    eventually("z's reason", || {
        s(&instance(&cloud, &z)["StateReason"]["Message"]).contains("no other host of local-1b has room for it")
    });
    assert_eq!(system_status(&cloud, std::slice::from_ref(&z)), [(z.clone(), "impaired".to_owned())]);
    cloud.aws(&["ec2", "terminate-instances", "--instance-ids", &z]);
    eventually("z terminated", || states(&cloud, std::slice::from_ref(&z)) == ["terminated"]);

    // The dead hosts are decommissioned (`strato host remove`): the live one cannot be;
    // zone b then has no host at all.
    let hosts = host_list(&cloud);
    assert_eq!(hosts.len(), 3, "{hosts:?}");
    for (id, state) in &hosts {
        let out = common::strato(cloud.dir.path()).args(["host", "remove", id]).output().expect("strato host remove");
        let err = String::from_utf8_lossy(&out.stderr);
        match state.as_str() {
            "down" => assert!(out.status.success(), "{id}: {err}"),
            _ => assert!(!out.status.success() && err.contains("is up"), "{id}: {err}"),
        }
    }
    assert_eq!(host_list(&cloud).len(), 1);
    let zones = zone_states(&cloud);
    assert_eq!((zones[0].1.as_str(), zones[1].1.as_str()), ("available", "unavailable"));
}

/// `strato host list`: (host id, up or down).
fn host_list(cloud: &Cloud) -> Vec<(String, String)> {
    let out = common::strato(cloud.dir.path()).args(["host", "list"]).output().expect("strato host list");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_owned(), f[6].to_owned())
        })
        .collect()
}
