//! Control-plane tests of instances: the real API, database and AWS CLI, with the simulated
//! agent (no VMs), so that quotas, state rules, placement, filters and pagination can be
//! checked over many instances in seconds. What VMs do is tested in instances.rs.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::Cloud;
use serde_json::Value;

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

fn ids(run: &Value) -> Vec<String> {
    run["Instances"].as_array().unwrap().iter().map(|i| s(&i["InstanceId"])).collect()
}

fn all_instances(cloud: &Cloud, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["ec2", "describe-instances"];
    args.extend(extra);
    let d = cloud.aws(&args);
    d["Reservations"].as_array().unwrap().iter().flat_map(|r| r["Instances"].as_array().unwrap().clone()).collect()
}

fn wait_all(cloud: &Cloud, ids: &[String], state: &str) {
    let start = Instant::now();
    loop {
        let mut args = vec!["ec2", "describe-instances", "--instance-ids"];
        args.extend(ids.iter().map(String::as_str));
        let d = cloud.aws(&args);
        let states: Vec<String> = d["Reservations"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["Instances"].as_array().unwrap().clone())
            .map(|i| s(&i["State"]["Name"]))
            .collect();
        if states.iter().all(|st| st == state) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "not all {state}: {states:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ami(cloud: &Cloud) -> String {
    let d =
        cloud.aws(&["ec2", "describe-images", "--owners", "strato", "--filters", "Name=name,Values=strato-minimal-*"]);
    s(&d["Images"][0]["ImageId"])
}

#[test]
fn vcpu_quota_counts_running_not_stopped() {
    let cloud = Cloud::start_simulated();
    let ami = ami(&cloud);
    let run = cloud.aws(&["ec2", "run-instances", "--image-id", &ami, "--instance-type", "t3.micro", "--count", "15"]);
    let first = ids(&run);
    assert_eq!(first.len(), 15, "30 of 32 vCPUs");
    // MinCount 1, MaxCount 3: only one more fits.
    let more =
        cloud.aws(&["ec2", "run-instances", "--image-id", &ami, "--instance-type", "t3.micro", "--count", "1:3"]);
    assert_eq!(ids(&more).len(), 1);
    assert_eq!(
        cloud.aws_err(&["ec2", "run-instances", "--image-id", &ami, "--instance-type", "t3.micro"]),
        "VcpuLimitExceeded"
    );
    wait_all(&cloud, &first, "running");

    // A stopped instance frees its vCPUs; starting it again needs them back.
    cloud.aws(&["ec2", "stop-instances", "--instance-ids", &first[0]]);
    wait_all(&cloud, &first[..1], "stopped");
    let extra = ids(&cloud.aws(&["ec2", "run-instances", "--image-id", &ami, "--instance-type", "t3.micro"]));
    assert_eq!(cloud.aws_err(&["ec2", "start-instances", "--instance-ids", &first[0]]), "VcpuLimitExceeded");
    cloud.aws(&["ec2", "terminate-instances", "--instance-ids", &extra[0]]);
    wait_all(&cloud, &extra, "terminated");
    let st = cloud.aws(&["ec2", "start-instances", "--instance-ids", &first[0]]);
    assert_eq!(st["StartingInstances"][0]["PreviousState"]["Name"], "stopped");
    assert_eq!(st["StartingInstances"][0]["CurrentState"]["Name"], "pending");

    // Another account has its own quota and sees none of these.
    let tenant = cloud.create_account("tenant", false);
    let t = cloud.aws_json_as(
        &tenant,
        &["ec2", "run-instances", "--image-id", &ami, "--instance-type", "t3.micro", "--count", "2"],
    );
    assert_eq!(t["Instances"].as_array().unwrap().len(), 2);
    assert_eq!(cloud.aws_json_as(&tenant, &["ec2", "describe-instances"])["Reservations"].as_array().unwrap().len(), 1);
    assert_eq!(
        cloud.aws_err_as(&tenant, &["ec2", "terminate-instances", "--instance-ids", &first[1]]),
        "InvalidInstanceID.NotFound"
    );
}

#[test]
fn placement_addresses_filters_and_pages() {
    let cloud = Cloud::start_simulated();
    let ami = ami(&cloud);
    let run = cloud.aws(&[
        "ec2",
        "run-instances",
        "--image-id",
        &ami,
        "--instance-type",
        "t3.nano",
        "--count",
        "6",
        "--tag-specifications",
        "ResourceType=instance,Tags=[{Key=tier,Value=web}]",
    ]);
    let launched = ids(&run);
    assert_eq!(launched.len(), 6);
    // One reservation, launch indexes 0..6, one subnet (all from one call), distinct addresses.
    let addrs: HashSet<String> =
        run["Instances"].as_array().unwrap().iter().map(|i| s(&i["PrivateIpAddress"])).collect();
    assert_eq!(addrs.len(), 6);
    let idx: Vec<i64> =
        run["Instances"].as_array().unwrap().iter().map(|i| i["AmiLaunchIndex"].as_i64().unwrap()).collect();
    assert_eq!(idx, vec![0, 1, 2, 3, 4, 5]);
    // Launches without a subnet spread over the zones.
    let mut zones = HashSet::new();
    for _ in 0..3 {
        let one = cloud.aws(&["ec2", "run-instances", "--image-id", &ami, "--instance-type", "t3.nano"]);
        zones.insert(s(&one["Instances"][0]["Placement"]["AvailabilityZone"]));
    }
    assert!(zones.len() >= 2, "spread over zones: {zones:?}");
    wait_all(&cloud, &launched, "running");

    let web =
        all_instances(&cloud, &["--filters", "Name=tag:tier,Values=web", "Name=instance-state-name,Values=running"]);
    assert_eq!(web.len(), 6);
    let by_type = all_instances(&cloud, &["--filters", "Name=instance-type,Values=t3.nano"]);
    assert_eq!(by_type.len(), 9);
    assert_eq!(
        cloud.aws_err(&["ec2", "describe-instances", "--filters", "Name=nonsense,Values=x"]),
        "InvalidParameterValue"
    );

    // Pages of 5 over 9 instances; the CLI follows NextToken.
    // MaxResults counts instances (the CLI's --max-items would count reservations).
    let page = cloud.aws(&["ec2", "describe-instances", "--max-results", "5", "--no-paginate"]);
    let n: usize =
        page["Reservations"].as_array().unwrap().iter().map(|r| r["Instances"].as_array().unwrap().len()).sum();
    assert_eq!(n, 5);
    assert!(page["NextToken"].is_string());
    assert_eq!(all_instances(&cloud, &["--page-size", "5"]).len(), 9);

    // Status checks: running instances only, unless asked for all.
    cloud.aws(&["ec2", "stop-instances", "--instance-ids", &launched[0]]);
    wait_all(&cloud, &launched[..1], "stopped");
    let st = cloud.aws(&["ec2", "describe-instance-status"]);
    assert_eq!(st["InstanceStatuses"].as_array().unwrap().len(), 8);
    let st = cloud.aws(&["ec2", "describe-instance-status", "--include-all-instances", "--instance-ids", &launched[0]]);
    assert_eq!(st["InstanceStatuses"][0]["InstanceStatus"]["Status"], "not-applicable");

    // State rules: stopping what is stopped is a no-op; rebooting it is not allowed.
    let again = cloud.aws(&["ec2", "stop-instances", "--instance-ids", &launched[0]]);
    assert_eq!(again["StoppingInstances"][0]["CurrentState"]["Name"], "stopped");
    assert_eq!(cloud.aws_err(&["ec2", "reboot-instances", "--instance-ids", &launched[0]]), "IncorrectInstanceState");
    // All-or-nothing: one bad id and nothing is terminated.
    assert_eq!(
        cloud.aws_err(&["ec2", "terminate-instances", "--instance-ids", &launched[1], "i-0123456789abcdef0"]),
        "InvalidInstanceID.NotFound"
    );
    assert_eq!(all_instances(&cloud, &["--instance-ids", &launched[1]])[0]["State"]["Name"], "running");
    let mut args = vec!["ec2", "terminate-instances", "--instance-ids"];
    args.extend(launched.iter().map(String::as_str));
    cloud.aws(&args);
    wait_all(&cloud, &launched, "terminated");
    // Terminated instances stay visible, and their addresses are free again.
    assert_eq!(all_instances(&cloud, &["--filters", "Name=instance-state-name,Values=terminated"]).len(), 6);
}

#[test]
fn running_time_is_billed_per_start_with_a_minimum() {
    let cloud = Cloud::start_simulated();
    let ami = ami(&cloud);
    let id = ids(&cloud.aws(&["ec2", "run-instances", "--image-id", &ami, "--instance-type", "t3.micro"]))[0].clone();
    wait_all(&cloud, std::slice::from_ref(&id), "running");
    cloud.aws(&["ec2", "stop-instances", "--instance-ids", &id]);
    wait_all(&cloud, std::slice::from_ref(&id), "stopped");
    let b = cloud.bill("admin");
    let lines = b["lines"].as_array().unwrap();
    let compute = lines.iter().find(|l| l["resource_id"] == id.as_str()).expect("the instance is billed");
    assert_eq!(compute["usage_type"], "BoxUsage:t3.micro");
    assert_eq!(compute["unit"], "Hrs");
    let hours = compute["quantity"].as_f64().unwrap();
    assert!((hours - 60.0 / 3600.0).abs() < 1e-6, "a short run bills the one-minute minimum: {hours}");
    assert!((compute["cost"].as_f64().unwrap() - hours * 0.0104).abs() < 1e-9);
    let volume = lines.iter().find(|l| l["resource_type"] == "volume").expect("the root volume is billed");
    assert_eq!(volume["unit"], "GB-Mo");

    // Stopped time costs nothing: the compute line does not grow while stopped.
    std::thread::sleep(Duration::from_millis(1500));
    let b2 = cloud.bill("admin");
    let again = b2["lines"].as_array().unwrap().iter().find(|l| l["resource_id"] == id.as_str()).unwrap().clone();
    assert_eq!(again["quantity"], compute["quantity"]);

    // A second start is a second minimum.
    cloud.aws(&["ec2", "start-instances", "--instance-ids", &id]);
    wait_all(&cloud, std::slice::from_ref(&id), "running");
    cloud.aws(&["ec2", "terminate-instances", "--instance-ids", &id]);
    wait_all(&cloud, std::slice::from_ref(&id), "terminated");
    let b3 = cloud.bill("admin");
    let after = b3["lines"].as_array().unwrap().iter().find(|l| l["resource_id"] == id.as_str()).unwrap().clone();
    assert!((after["quantity"].as_f64().unwrap() - 120.0 / 3600.0).abs() < 1e-6, "{after}");
    // Another account's bill does not show it.
    let tenant = cloud.create_account("tenant", false);
    assert_eq!(cloud.bill("tenant")["lines"].as_array().unwrap().len(), 0);

    // Cost Explorer through the AWS CLI: the same costs, per service, for this account only.
    let today = chrono::Utc::now().date_naive();
    let period =
        format!("Start={},End={}", today.format("%Y-%m-01"), (today + chrono::Duration::days(1)).format("%Y-%m-%d"));
    let ce = cloud.aws(&[
        "ce",
        "get-cost-and-usage",
        "--time-period",
        &period,
        "--granularity",
        "MONTHLY",
        "--metrics",
        "UnblendedCost",
        "UsageQuantity",
        "--group-by",
        "Type=DIMENSION,Key=SERVICE",
    ]);
    let groups = ce["ResultsByTime"][0]["Groups"].as_array().unwrap();
    let compute = groups.iter().find(|g| g["Keys"][0] == "Amazon Elastic Compute Cloud - Compute").expect("compute");
    let cost: f64 = compute["Metrics"]["UnblendedCost"]["Amount"].as_str().unwrap().parse().unwrap();
    assert!((cost - after["cost"].as_f64().unwrap()).abs() < 1e-6, "{ce}");
    let t = cloud.aws_json_as(
        &tenant,
        &["ce", "get-cost-and-usage", "--time-period", &period, "--granularity", "DAILY", "--metrics", "UnblendedCost"],
    );
    let tenant_total: f64 = t["ResultsByTime"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["Total"]["UnblendedCost"]["Amount"].as_str().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(tenant_total, 0.0, "a tenant sees only its own costs");
    assert_eq!(
        cloud.aws_err(&[
            "ce",
            "get-cost-and-usage",
            "--time-period",
            &period,
            "--granularity",
            "WEEKLY",
            "--metrics",
            "UnblendedCost"
        ]),
        "ValidationException"
    );
    cloud.python("ce_costs.py", &[&id]);
}
