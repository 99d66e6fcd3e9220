//! Instances on real QEMU virtual machines (TCG here), through the AWS CLI: the lifecycle,
//! the console, idempotency, errors, guest-initiated shutdown, and a server crash that
//! leaves the VMs running.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::Cloud;
use serde_json::Value;

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

fn minimal_ami(cloud: &Cloud) -> String {
    let d =
        cloud.aws(&["ec2", "describe-images", "--owners", "strato", "--filters", "Name=name,Values=strato-minimal-*"]);
    s(&d["Images"][0]["ImageId"]).to_owned()
}

fn instance(cloud: &Cloud, id: &str) -> Value {
    let d = cloud.aws(&["ec2", "describe-instances", "--instance-ids", id]);
    d["Reservations"][0]["Instances"][0].clone()
}

fn console(cloud: &Cloud, id: &str) -> String {
    let c = cloud.aws(&["ec2", "get-console-output", "--instance-id", id]);
    // The AWS CLI decodes the base64 itself.
    s(&c["Output"]).to_owned()
}

fn wait_console(cloud: &Cloud, id: &str, marker: &str, count: usize) -> String {
    let start = Instant::now();
    loop {
        let out = console(cloud, id);
        // Generous: under TCG with every test's VMs booting at once on two cores, a boot can
        // take many times its usual 3-4 s.
        if out.matches(marker).count() >= count {
            return out;
        }
        if start.elapsed() > Duration::from_secs(180) {
            let i = instance(cloud, id);
            eprintln!("{id}: no {marker:?} on the console after 180 s; the instance: {i}");
            eprintln!("{}", common::vm_interrupt_state(cloud, id));
            return out;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Seconds from an instance's launch to its stop request, from what DescribeInstances says
/// (LaunchTime and "User initiated (DATE GMT)").
fn ran_until_stop(i: &Value) -> f64 {
    let launch = chrono::DateTime::parse_from_rfc3339(&s(&i["LaunchTime"]).replace("+00:00", "Z"))
        .unwrap()
        .with_timezone(&chrono::Utc);
    let reason = s(&i["StateTransitionReason"]);
    let stopped = chrono::NaiveDateTime::parse_from_str(
        reason.trim_start_matches("User initiated (").trim_end_matches(" GMT)"),
        "%Y-%m-%d %H:%M:%S",
    )
    .unwrap()
    .and_utc();
    (stopped - launch).num_milliseconds() as f64 / 1000.0
}

/// Waits until the root volume is gone: from the API and its file from the data dir.
fn wait_root_deleted(cloud: &Cloud, volume: &str) {
    assert!(volume.starts_with("vol-"), "{volume}");
    let start = Instant::now();
    while cloud.aws_as("strato", &["ec2", "describe-volumes", "--volume-ids", volume]).status.success() {
        assert!(start.elapsed() < Duration::from_secs(30), "the root volume {volume} was not deleted");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!cloud.dir.path().join("volumes").join(format!("{volume}.qcow2")).exists(), "{volume}'s file is left");
}

fn wait_state(cloud: &Cloud, id: &str, state: &str) -> Value {
    let start = Instant::now();
    loop {
        let i = instance(cloud, id);
        if i["State"]["Name"] == state || start.elapsed() > Duration::from_secs(90) {
            return i;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn lifecycle_console_and_status() {
    let cloud = Cloud::start();
    let ami = minimal_ami(&cloud);
    cloud.aws(&["ec2", "create-key-pair", "--key-name", "k", "--key-type", "ed25519"]);
    let run = cloud.aws(&[
        "ec2",
        "run-instances",
        "--image-id",
        &ami,
        "--instance-type",
        "t3.micro",
        "--key-name",
        "k",
        "--placement",
        "AvailabilityZone=local-1b",
        "--user-data",
        "#!/bin/sh\necho USER-DATA-SAYS-HI > /dev/console\n",
        "--tag-specifications",
        "ResourceType=instance,Tags=[{Key=Name,Value=web}]",
        "--client-token",
        "token-1",
    ]);
    let i0 = &run["Instances"][0];
    let id = s(&i0["InstanceId"]).to_owned();
    assert!(id.starts_with("i-") && id.len() == 19);
    assert_eq!(i0["State"]["Name"], "pending", "RunInstances answers at once");
    assert_eq!(i0["State"]["Code"], 0);
    assert!(s(&run["ReservationId"]).starts_with("r-"));

    // The same ClientToken gives the same reservation; other parameters with it fail.
    let again = cloud.aws(&[
        "ec2",
        "run-instances",
        "--image-id",
        &ami,
        "--instance-type",
        "t3.micro",
        "--key-name",
        "k",
        "--placement",
        "AvailabilityZone=local-1b",
        "--user-data",
        "#!/bin/sh\necho USER-DATA-SAYS-HI > /dev/console\n",
        "--tag-specifications",
        "ResourceType=instance,Tags=[{Key=Name,Value=web}]",
        "--client-token",
        "token-1",
    ]);
    assert_eq!(again["Instances"][0]["InstanceId"], id.as_str());
    assert_eq!(
        cloud.aws_err(&[
            "ec2",
            "run-instances",
            "--image-id",
            &ami,
            "--instance-type",
            "t3.nano",
            "--client-token",
            "token-1"
        ]),
        "IdempotentParameterMismatch"
    );

    cloud.aws(&["ec2", "wait", "instance-running", "--instance-ids", &id]);
    let i = instance(&cloud, &id);
    assert_eq!(i["State"]["Code"], 16);
    assert_eq!(i["InstanceType"], "t3.micro");
    assert_eq!(i["Placement"]["AvailabilityZone"], "local-1b");
    assert_eq!(i["KeyName"], "k");
    assert_eq!(i["ImageId"], ami.as_str());
    assert!(
        s(&i["PrivateIpAddress"]).starts_with("172.31.1"),
        "in the local-1b default subnet: {}",
        i["PrivateIpAddress"]
    );
    assert_eq!(i["SecurityGroups"][0]["GroupName"], "default");
    assert_eq!(i["Tags"][0]["Value"], "web");
    assert_eq!(i["RootDeviceName"], "/dev/xvda");
    assert!(s(&i["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]).starts_with("vol-"));
    assert_eq!(i["CpuOptions"]["CoreCount"], 1);
    let f = cloud.aws(&[
        "ec2",
        "describe-instances",
        "--filters",
        "Name=tag:Name,Values=web",
        "Name=instance-state-name,Values=running",
    ]);
    assert_eq!(f["Reservations"].as_array().unwrap().len(), 1);

    // The real serial console: the image's boot lines, user data run, metadata read (IMDSv2).
    let out = wait_console(&cloud, &id, "STRATO-BOOT: ready", 1);
    assert!(out.contains(&format!("STRATO-BOOT: metadata instance-id={id} imds=v2")), "{out}");
    assert!(out.contains("STRATO-BOOT: ssh key installed"), "{out}");
    let out = wait_console(&cloud, &id, "USER-DATA-SAYS-HI", 1);
    assert!(out.contains("USER-DATA-SAYS-HI"), "{out}");
    cloud.aws(&["ec2", "wait", "instance-status-ok", "--instance-ids", &id]);
    let st = cloud.aws(&["ec2", "describe-instance-status", "--instance-ids", &id]);
    assert_eq!(st["InstanceStatuses"][0]["InstanceStatus"]["Status"], "ok");

    // Reboot: the same VM boots again.
    cloud.aws(&["ec2", "reboot-instances", "--instance-ids", &id]);
    let out = wait_console(&cloud, &id, "STRATO-BOOT: ready", 2);
    assert_eq!(out.matches("STRATO-BOOT: init").count(), 2, "{out}");

    // Stop (ACPI power button), start, terminate.
    let stop = cloud.aws(&["ec2", "stop-instances", "--instance-ids", &id]);
    assert_eq!(stop["StoppingInstances"][0]["PreviousState"]["Name"], "running");
    assert_eq!(stop["StoppingInstances"][0]["CurrentState"]["Name"], "stopping");
    cloud.aws(&["ec2", "wait", "instance-stopped", "--instance-ids", &id]);
    let i = instance(&cloud, &id);
    assert_eq!(i["StateReason"]["Code"], "Client.UserInitiatedShutdown");
    assert!(s(&i["StateTransitionReason"]).starts_with("User initiated ("));
    assert!(console(&cloud, &id).contains("STRATO-BOOT: power button"), "a graceful stop");
    assert_eq!(cloud.aws_err(&["ec2", "reboot-instances", "--instance-ids", &id]), "IncorrectInstanceState");

    // The bill agrees with what DescribeInstances says: billed from launch to the stop
    // request (at least a minute), at t3.micro's price.
    let ran = ran_until_stop(&i);
    let bill = cloud.bill("admin");
    let line =
        bill["lines"].as_array().unwrap().iter().find(|l| l["resource_id"] == id.as_str()).expect("billed").clone();
    let billed = line["quantity"].as_f64().unwrap() * 3600.0;
    assert!((billed - ran.max(60.0)).abs() < 2.0, "billed {billed:.1} s, ran {ran:.1} s");
    assert!((line["cost"].as_f64().unwrap() - line["quantity"].as_f64().unwrap() * 0.0104).abs() < 1e-9);
    assert_eq!(i["PrivateIpAddress"], instance(&cloud, &id)["PrivateIpAddress"]);

    cloud.aws(&["ec2", "start-instances", "--instance-ids", &id]);
    cloud.aws(&["ec2", "wait", "instance-running", "--instance-ids", &id]);
    let out = wait_console(&cloud, &id, "STRATO-BOOT: ready", 1);
    assert!(out.contains("STRATO-BOOT: ready"), "{out}");

    let root = s(&instance(&cloud, &id)["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]).to_owned();
    assert!(cloud.dir.path().join("volumes").join(format!("{root}.qcow2")).exists(), "the root volume's file");
    let t = cloud.aws(&["ec2", "terminate-instances", "--instance-ids", &id]);
    assert_eq!(t["TerminatingInstances"][0]["CurrentState"]["Name"], "shutting-down");
    cloud.aws(&["ec2", "wait", "instance-terminated", "--instance-ids", &id]);
    assert_eq!(instance(&cloud, &id)["State"]["Code"], 48, "terminated instances stay visible");
    assert!(strato::hypervisor::Vm::adopt(&cloud.dir.path().join("instances").join(&id)).is_none(), "no VM left");
    wait_root_deleted(&cloud, &root);
    assert_eq!(cloud.aws_err(&["ec2", "start-instances", "--instance-ids", &id]), "IncorrectInstanceState");
}

#[test]
fn launch_errors_quota_and_isolation() {
    let cloud = Cloud::start();
    let ami = minimal_ami(&cloud);
    let e = |args: &[&str]| cloud.aws_err(args);
    assert_eq!(
        e(&["ec2", "run-instances", "--image-id", "ami-0123456789abcdef0", "--instance-type", "t3.micro"]),
        "InvalidAMIID.NotFound"
    );
    assert_eq!(
        e(&["ec2", "run-instances", "--image-id", "ami-zz", "--instance-type", "t3.micro"]),
        "InvalidAMIID.Malformed"
    );
    assert_eq!(e(&["ec2", "run-instances", "--image-id", &ami, "--instance-type", "x9.huge"]), "InvalidParameterValue");
    assert_eq!(
        e(&["ec2", "run-instances", "--image-id", &ami, "--instance-type", "t3.micro", "--key-name", "nope"]),
        "InvalidKeyPair.NotFound"
    );
    assert_eq!(
        e(&[
            "ec2",
            "run-instances",
            "--image-id",
            &ami,
            "--instance-type",
            "t3.micro",
            "--security-group-ids",
            "sg-0123456789abcdef0"
        ]),
        "InvalidGroup.NotFound"
    );
    assert_eq!(
        e(&[
            "ec2",
            "run-instances",
            "--image-id",
            &ami,
            "--instance-type",
            "t3.micro",
            "--subnet-id",
            "subnet-0123456789abcdef0"
        ]),
        "InvalidSubnetID.NotFound"
    );
    // 17 x 2 vCPUs is past the 32-vCPU quota.
    assert_eq!(
        e(&["ec2", "run-instances", "--image-id", &ami, "--instance-type", "t3.micro", "--count", "17"]),
        "VcpuLimitExceeded"
    );
    assert_eq!(
        e(&[
            "ec2",
            "run-instances",
            "--image-id",
            &ami,
            "--instance-type",
            "t3.micro",
            "--block-device-mappings",
            "DeviceName=/dev/xvda,Ebs={VolumeSize=0}"
        ]),
        "InvalidBlockDeviceMapping"
    );
    assert_eq!(
        e(&["ec2", "describe-instances", "--instance-ids", "i-0123456789abcdef0"]),
        "InvalidInstanceID.NotFound"
    );
    assert_eq!(e(&["ec2", "describe-instances", "--instance-ids", "i-xyz"]), "InvalidInstanceID.Malformed");
    assert_eq!(
        cloud.aws(&["ec2", "describe-instances"])["Reservations"].as_array().unwrap().len(),
        0,
        "failed launches leave nothing"
    );

    // A protected instance cannot be terminated until the protection goes; another account
    // cannot see it at all.
    let run = cloud.aws(&[
        "ec2",
        "run-instances",
        "--image-id",
        &ami,
        "--instance-type",
        "t3.nano",
        "--disable-api-termination",
    ]);
    let id = s(&run["Instances"][0]["InstanceId"]).to_owned();
    assert_eq!(e(&["ec2", "terminate-instances", "--instance-ids", &id]), "OperationNotPermitted");
    let tenant = cloud.create_account("tenant", false);
    assert_eq!(
        cloud.aws_err_as(&tenant, &["ec2", "describe-instances", "--instance-ids", &id]),
        "InvalidInstanceID.NotFound"
    );
    assert_eq!(
        cloud.aws_err_as(&tenant, &["ec2", "stop-instances", "--instance-ids", &id]),
        "InvalidInstanceID.NotFound"
    );
    assert_eq!(
        cloud.aws_err_as(&tenant, &["ec2", "get-console-output", "--instance-id", &id]),
        "InvalidInstanceID.NotFound"
    );
    cloud.aws(&["ec2", "stop-instances", "--instance-ids", &id, "--force"]);
    cloud.aws(&["ec2", "wait", "instance-stopped", "--instance-ids", &id]);

    // A VM that cannot start (its image's kernel is not a kernel): the launch undoes itself,
    // the instance ends terminated with a server error as its state reason, and leaves no VM
    // and no disk behind.
    let work = tempfile::tempdir().unwrap();
    let disk = work.path().join("disk.qcow2");
    let out = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg("1G")
        .output()
        .unwrap();
    assert!(out.status.success());
    let kernel = work.path().join("vmlinux");
    std::fs::write(&kernel, b"not a kernel").unwrap();
    let r = cloud.aws(&[
        "ec2",
        "register-image",
        "--name",
        "broken",
        "--image-location",
        &disk.display().to_string(),
        "--kernel-id",
        &kernel.display().to_string(),
    ]);
    let broken = s(&r["ImageId"]).to_owned();
    let run = cloud.aws(&["ec2", "run-instances", "--image-id", &broken, "--instance-type", "t3.nano"]);
    let bad = s(&run["Instances"][0]["InstanceId"]).to_owned();
    let i = wait_state(&cloud, &bad, "terminated");
    assert_eq!(i["State"]["Name"], "terminated", "{i}");
    assert_eq!(i["StateReason"]["Code"], "Server.InternalError");
    assert!(strato::hypervisor::Vm::adopt(&cloud.dir.path().join("instances").join(&bad)).is_none());
    wait_root_deleted(&cloud, s(&run["Instances"][0]["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]));

    // The step before, making the root disk, failing (the image's disk file is gone): the same.
    let r = cloud.aws(&[
        "ec2",
        "register-image",
        "--name",
        "diskless",
        "--image-location",
        &disk.display().to_string(),
        "--kernel-id",
        &kernel.display().to_string(),
    ]);
    let diskless = s(&r["ImageId"]).to_owned();
    std::fs::remove_file(cloud.dir.path().join("images").join(&diskless).join("disk.qcow2")).unwrap();
    let run = cloud.aws(&["ec2", "run-instances", "--image-id", &diskless, "--instance-type", "t3.nano"]);
    let bad = s(&run["Instances"][0]["InstanceId"]).to_owned();
    let i = wait_state(&cloud, &bad, "terminated");
    assert_eq!(i["StateReason"]["Code"], "Server.InternalError", "{i}");
    wait_root_deleted(&cloud, s(&run["Instances"][0]["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]));
}

#[test]
fn guest_shutdown_follows_the_shutdown_behaviour_and_vms_survive_a_server_crash() {
    let mut cloud = Cloud::start();
    let ami = minimal_ami(&cloud);
    let run = cloud.aws(&[
        "ec2",
        "run-instances",
        "--image-id",
        &ami,
        "--instance-type",
        "t3.nano",
        "--instance-initiated-shutdown-behavior",
        "terminate",
        "--user-data",
        "#!/bin/sh\nsleep 1\npoweroff\n",
    ]);
    let ephemeral = s(&run["Instances"][0]["InstanceId"]).to_owned();
    let run = cloud.aws(&["ec2", "run-instances", "--image-id", &ami, "--instance-type", "t3.nano"]);
    let lasting = s(&run["Instances"][0]["InstanceId"]).to_owned();

    let i = wait_state(&cloud, &ephemeral, "terminated");
    assert_eq!(i["State"]["Name"], "terminated", "the guest powered itself off: {i}");
    assert_eq!(i["StateReason"]["Code"], "Client.InstanceInitiatedShutdown");

    cloud.aws(&["ec2", "wait", "instance-running", "--instance-ids", &lasting]);
    wait_console(&cloud, &lasting, "STRATO-BOOT: ready", 1);
    let run_dir = cloud.dir.path().join("instances").join(&lasting);
    let pid = strato::hypervisor::Vm::adopt(&run_dir).expect("VM").pid;
    cloud.crash();
    assert!(strato::hypervisor::Vm::adopt(&run_dir).is_some_and(|v| v.pid == pid), "the VM outlives the server");
    cloud.restart();
    assert_eq!(instance(&cloud, &lasting)["State"]["Name"], "running");
    cloud.aws(&["ec2", "stop-instances", "--instance-ids", &lasting]);
    cloud.aws(&["ec2", "wait", "instance-stopped", "--instance-ids", &lasting]);
    assert!(strato::hypervisor::Vm::adopt(&run_dir).is_none(), "the adopted VM was stopped");

    // The crash neither lost nor double counted running time: one interval, from launch to
    // the stop, the crash included.
    let ran = ran_until_stop(&instance(&cloud, &lasting));
    let bill = cloud.bill("admin");
    let billed =
        bill["lines"].as_array().unwrap().iter().find(|l| l["resource_id"] == lasting.as_str()).expect("billed")
            ["quantity"]
            .as_f64()
            .unwrap()
            * 3600.0;
    assert!((billed - ran.max(60.0)).abs() < 2.0, "billed {billed:.1} s, ran {ran:.1} s");
}

#[test]
fn resize_and_attributes() {
    let cloud = Cloud::start();
    let ami = minimal_ami(&cloud);
    let run = cloud.aws(&["ec2", "run-instances", "--image-id", &ami, "--instance-type", "t2.micro"]);
    let id = s(&run["Instances"][0]["InstanceId"]).to_owned();
    cloud.aws(&["ec2", "wait", "instance-running", "--instance-ids", &id]);
    let out = wait_console(&cloud, &id, "STRATO-BOOT: ready", 1);
    assert!(out.contains("cpus=1 "), "t2.micro has 1 vCPU: {out}");

    // Type and user data change only while stopped.
    assert_eq!(
        cloud.aws_err(&["ec2", "modify-instance-attribute", "--instance-id", &id, "--instance-type", "Value=t3.small"]),
        "IncorrectInstanceState"
    );
    // IMDSv2 required applies to the running guest: v1 answers 401 from now on (checked in
    // the metadata unit tests); the option reads back.
    let m = cloud.aws(&["ec2", "modify-instance-metadata-options", "--instance-id", &id, "--http-tokens", "required"]);
    assert_eq!(m["InstanceMetadataOptions"]["HttpTokens"], "required");
    assert_eq!(instance(&cloud, &id)["MetadataOptions"]["HttpTokens"], "required");

    cloud.aws(&["ec2", "stop-instances", "--instance-ids", &id]);
    cloud.aws(&["ec2", "wait", "instance-stopped", "--instance-ids", &id]);
    cloud.aws(&["ec2", "modify-instance-attribute", "--instance-id", &id, "--instance-type", "Value=t3.small"]);
    assert_eq!(
        cloud.aws_err(&["ec2", "modify-instance-attribute", "--instance-id", &id, "--instance-type", "Value=x9.huge"]),
        "InvalidParameterValue"
    );
    let a = cloud.aws(&["ec2", "describe-instance-attribute", "--instance-id", &id, "--attribute", "instanceType"]);
    assert_eq!(a["InstanceType"]["Value"], "t3.small");
    // Attribute/Value carries the user data base64-encoded, as on EC2.
    let ud = base64::engine::general_purpose::STANDARD.encode("#!/bin/sh\necho NEW-USER-DATA > /dev/console\n");
    cloud.aws(&["ec2", "modify-instance-attribute", "--instance-id", &id, "--attribute", "userData", "--value", &ud]);
    cloud.aws(&["ec2", "modify-instance-attribute", "--instance-id", &id, "--disable-api-termination"]);
    let a = cloud.aws(&[
        "ec2",
        "describe-instance-attribute",
        "--instance-id",
        &id,
        "--attribute",
        "disableApiTermination",
    ]);
    assert_eq!(a["DisableApiTermination"]["Value"], true);
    let a = cloud.aws(&[
        "ec2",
        "describe-instance-attribute",
        "--instance-id",
        &id,
        "--attribute",
        "instanceInitiatedShutdownBehavior",
    ]);
    assert_eq!(a["InstanceInitiatedShutdownBehavior"]["Value"], "stop");

    // Started again with the new type: the guest sees 2 vCPUs and 2 GiB; the new user data ran.
    cloud.aws(&["ec2", "start-instances", "--instance-ids", &id]);
    cloud.aws(&["ec2", "wait", "instance-running", "--instance-ids", &id]);
    let out = wait_console(&cloud, &id, "NEW-USER-DATA", 1);
    assert!(out.contains("cpus=2 "), "{out}");
    let mem_kb: u64 =
        out.split("mem=").nth(1).and_then(|r| r.split("kB").next()).and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(mem_kb > 1_800_000 && mem_kb <= 2_097_152, "about 2 GiB: {mem_kb} kB");
    assert!(out.contains("imds=v2"), "{out}");
    assert_eq!(instance(&cloud, &id)["InstanceType"], "t3.small");

    assert_eq!(cloud.aws_err(&["ec2", "terminate-instances", "--instance-ids", &id]), "OperationNotPermitted");
    cloud.aws(&["ec2", "modify-instance-attribute", "--instance-id", &id, "--no-disable-api-termination"]);
    cloud.aws(&["ec2", "terminate-instances", "--instance-ids", &id]);
    cloud.aws(&["ec2", "wait", "instance-terminated", "--instance-ids", &id]);
}
