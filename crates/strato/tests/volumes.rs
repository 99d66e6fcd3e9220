//! EBS volumes: the API rules with the simulated agent, and with real VMs a volume
//! hot-plugged into a running guest, written, kept across stop/start, detached, attached to
//! a second instance and read there.

mod common;

use std::time::{Duration, Instant};

use common::{key_file, open_ssh, ssh_retry, Cloud};
use serde_json::Value;

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

fn ami(cloud: &Cloud) -> String {
    let d =
        cloud.aws(&["ec2", "describe-images", "--owners", "strato", "--filters", "Name=name,Values=strato-minimal-*"]);
    s(&d["Images"][0]["ImageId"])
}

fn volume(cloud: &Cloud, id: &str) -> Value {
    cloud.aws(&["ec2", "describe-volumes", "--volume-ids", id])["Volumes"][0].clone()
}

fn wait_volume(cloud: &Cloud, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let v = volume(cloud, id);
        if ok(&v) {
            return v;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{id} never {what}: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn instance(cloud: &Cloud, id: &str) -> Value {
    cloud.aws(&["ec2", "describe-instances", "--instance-ids", id])["Reservations"][0]["Instances"][0].clone()
}

fn wait_state(cloud: &Cloud, id: &str, state: &str) -> Value {
    let start = Instant::now();
    loop {
        let i = instance(cloud, id);
        if s(&i["State"]["Name"]) == state {
            return i;
        }
        assert!(start.elapsed() < Duration::from_secs(90), "{id} never {state}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn volume_api_rules() {
    let cloud = Cloud::start_simulated();
    cloud.create_account("other", false);
    let create = |args: &[&str]| {
        let mut a = vec!["ec2", "create-volume"];
        a.extend_from_slice(args);
        cloud.aws_err(&a)
    };
    assert_eq!(create(&["--size", "1"]), "MissingParameter");
    assert_eq!(create(&["--size", "1", "--availability-zone", "mars-1a"]), "InvalidParameterValue");
    assert_eq!(create(&["--size", "20000", "--availability-zone", "local-1a"]), "InvalidParameterValue");
    assert_eq!(
        create(&["--size", "10", "--availability-zone", "local-1a", "--volume-type", "io1"]),
        "MissingParameter"
    );
    assert_eq!(
        create(&["--size", "10", "--availability-zone", "local-1a", "--volume-type", "gp2", "--iops", "3000"]),
        "InvalidParameterCombination"
    );
    assert_eq!(
        create(&["--availability-zone", "local-1a", "--snapshot-id", "snap-0123456789abcdef0"]),
        "InvalidSnapshot.NotFound"
    );

    let v = cloud.aws(&[
        "ec2",
        "create-volume",
        "--availability-zone",
        "local-1a",
        "--size",
        "8",
        "--volume-type",
        "gp3",
        "--tag-specifications",
        "ResourceType=volume,Tags=[{Key=Name,Value=data}]",
    ]);
    let id = s(&v["VolumeId"]);
    assert_eq!(s(&v["State"]), "creating");
    assert_eq!(v["Iops"], 3000);
    assert_eq!(v["Throughput"], 125);
    wait_volume(&cloud, &id, "available", |v| v["State"] == "available");
    let d = cloud.aws(&["ec2", "describe-volumes", "--filters", "Name=tag:Name,Values=data", "Name=size,Values=8"]);
    assert_eq!(s(&d["Volumes"][0]["VolumeId"]), id);
    assert_eq!(cloud.aws_err_as("other", &["ec2", "describe-volumes", "--volume-ids", &id]), "InvalidVolume.NotFound");
    assert_eq!(cloud.aws_err(&["ec2", "describe-volumes", "--volume-ids", "vol-nope"]), "InvalidVolumeID.Malformed");

    let ami = ami(&cloud);
    let run = |zone: &str| {
        let r = cloud.aws(&[
            "ec2",
            "run-instances",
            "--image-id",
            &ami,
            "--instance-type",
            "t3.nano",
            "--placement",
            &format!("AvailabilityZone={zone}"),
        ]);
        s(&r["Instances"][0]["InstanceId"])
    };
    let (a, b, far) = (run("local-1a"), run("local-1a"), run("local-1b"));
    let attach = |vol: &str, inst: &str, dev: &str| {
        cloud.aws_err(&["ec2", "attach-volume", "--volume-id", vol, "--instance-id", inst, "--device", dev])
    };
    assert_eq!(attach(&id, &far, "/dev/sdf"), "InvalidVolume.ZoneMismatch");
    assert_eq!(attach(&id, &a, "/dev/hda"), "InvalidParameterValue");
    let att = cloud.aws(&["ec2", "attach-volume", "--volume-id", &id, "--instance-id", &a, "--device", "/dev/sdf"]);
    assert_eq!(s(&att["State"]), "attaching");
    let v = wait_volume(&cloud, &id, "attached", |v| v["Attachments"][0]["State"] == "attached");
    assert_eq!(s(&v["State"]), "in-use");
    assert_eq!(s(&v["Attachments"][0]["Device"]), "/dev/sdf");
    // The data volume and the root volume.
    let f = cloud.aws(&["ec2", "describe-volumes", "--filters", &format!("Name=attachment.instance-id,Values={a}")]);
    let mut on_a: Vec<String> =
        f["Volumes"].as_array().into_iter().flatten().map(|v| s(&v["Attachments"][0]["Device"])).collect();
    on_a.sort();
    assert_eq!(on_a, ["/dev/sdf", "/dev/xvda"]);
    let f = cloud.aws(&[
        "ec2",
        "describe-volumes",
        "--filters",
        &format!("Name=attachment.instance-id,Values={a}"),
        "Name=attachment.device,Values=/dev/sdf",
    ]);
    assert_eq!(s(&f["Volumes"][0]["VolumeId"]), id);
    assert_eq!(attach(&id, &b, "/dev/sdg"), "VolumeInUse");
    let v2 = s(&cloud.aws(&["ec2", "create-volume", "--availability-zone", "local-1a", "--size", "1"])["VolumeId"]);
    wait_volume(&cloud, &v2, "available", |v| v["State"] == "available");
    assert_eq!(s(&volume(&cloud, &v2)["VolumeType"]), "gp2");
    assert_eq!(attach(&v2, &a, "/dev/xvdf"), "InvalidParameterValue", "the same slot as /dev/sdf");
    assert_eq!(cloud.aws_err(&["ec2", "delete-volume", "--volume-id", &id]), "VolumeInUse");
    assert_eq!(
        cloud.aws_err(&["ec2", "detach-volume", "--volume-id", &id, "--instance-id", &b]),
        "InvalidAttachment.NotFound"
    );
    assert_eq!(cloud.aws_err(&["ec2", "detach-volume", "--volume-id", &v2]), "IncorrectState");
    cloud.aws(&["ec2", "detach-volume", "--volume-id", &id]);
    wait_volume(&cloud, &id, "detached", |v| v["State"] == "available");

    // Grow only.
    assert_eq!(cloud.aws_err(&["ec2", "modify-volume", "--volume-id", &id, "--size", "4"]), "InvalidParameterValue");
    let m = cloud.aws(&["ec2", "modify-volume", "--volume-id", &id, "--size", "10", "--iops", "4000"]);
    assert_eq!(m["VolumeModification"]["OriginalSize"], 8);
    assert_eq!(m["VolumeModification"]["TargetSize"], 10);
    let start = Instant::now();
    loop {
        let d = cloud.aws(&[
            "ec2",
            "describe-volumes-modifications",
            "--filters",
            "Name=modification-state,Values=completed",
        ]);
        if d["VolumesModifications"].as_array().is_some_and(|l| !l.is_empty()) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(100));
    }
    let v = volume(&cloud, &id);
    assert_eq!(v["Size"], 10);
    assert_eq!(v["Iops"], 4000);
    assert_eq!(
        cloud.aws_err(&["ec2", "describe-volumes-modifications", "--volume-ids", &v2]),
        "InvalidVolumeModification.NotFound"
    );

    // Terminating an instance detaches its volumes (DeleteOnTermination is false for
    // attached volumes).
    cloud.aws(&["ec2", "attach-volume", "--volume-id", &v2, "--instance-id", &b, "--device", "/dev/sdh"]);
    wait_volume(&cloud, &v2, "attached", |v| v["Attachments"][0]["State"] == "attached");
    cloud.aws(&["ec2", "terminate-instances", "--instance-ids", &b]);
    wait_volume(&cloud, &v2, "detached by the termination", |v| v["State"] == "available");

    // Deleting: gone, and billed for the GB-months it held.
    cloud.aws(&["ec2", "delete-volume", "--volume-id", &id]);
    let start = Instant::now();
    while cloud.aws_as("strato", &["ec2", "describe-volumes", "--volume-ids", &id]).status.success() {
        assert!(start.elapsed() < Duration::from_secs(20), "the volume was not deleted");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(cloud.aws_err(&["ec2", "describe-volumes", "--volume-ids", &id]), "InvalidVolume.NotFound");
    let bill = cloud.bill("admin");
    let line = bill["lines"].as_array().unwrap().iter().find(|l| l["resource_id"] == id.as_str()).unwrap().clone();
    assert_eq!(line["usage_type"], "EBS:VolumeUsage.gp3");
    assert_eq!(line["unit"], "GB-Mo");
    assert!(line["quantity"].as_f64().unwrap() > 0.0);
}

#[test]
fn the_root_volume_is_a_volume() {
    let cloud = Cloud::start_simulated();
    let ami = ami(&cloud);
    let image = cloud.aws(&["ec2", "describe-images", "--image-ids", &ami])["Images"][0].clone();
    let run = |extra: &[&str]| {
        let mut a = vec!["ec2", "run-instances", "--image-id", &ami, "--instance-type", "t3.nano"];
        a.extend_from_slice(&["--placement", "AvailabilityZone=local-1a"]);
        a.extend_from_slice(extra);
        let r = cloud.aws(&a);
        s(&r["Instances"][0]["InstanceId"])
    };
    let a = run(&[]);
    let i = wait_state(&cloud, &a, "running");
    let root = s(&i["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]);
    assert_eq!(s(&i["BlockDeviceMappings"][0]["DeviceName"]), "/dev/xvda");
    let v = volume(&cloud, &root);
    assert_eq!(s(&v["State"]), "in-use");
    assert_eq!(v["Size"], image["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"]);
    assert_eq!(v["SnapshotId"], image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]);
    assert_eq!(s(&v["Attachments"][0]["InstanceId"]), a);
    assert_eq!(s(&v["Attachments"][0]["Device"]), "/dev/xvda");
    assert_eq!(v["Attachments"][0]["DeleteOnTermination"], true);
    let f = cloud.aws(&["ec2", "describe-volumes", "--filters", "Name=attachment.device,Values=/dev/xvda"]);
    assert_eq!(f["Volumes"].as_array().map(Vec::len), Some(1));

    // Not while it runs; a stopped instance lets it go, and cannot start without one.
    assert_eq!(cloud.aws_err(&["ec2", "detach-volume", "--volume-id", &root]), "IncorrectState");
    assert_eq!(cloud.aws_err(&["ec2", "delete-volume", "--volume-id", &root]), "VolumeInUse");
    let spare = s(&cloud.aws(&["ec2", "create-volume", "--availability-zone", "local-1a", "--size", "2"])["VolumeId"]);
    wait_volume(&cloud, &spare, "available", |v| v["State"] == "available");
    let attach = |vol: &str, inst: &str, dev: &str| {
        cloud.aws_err(&["ec2", "attach-volume", "--volume-id", vol, "--instance-id", inst, "--device", dev])
    };
    assert_eq!(attach(&spare, &a, "/dev/xvda"), "InvalidParameterValue", "in use by the root volume");
    cloud.aws(&["ec2", "stop-instances", "--instance-ids", &a]);
    wait_state(&cloud, &a, "stopped");
    cloud.aws(&["ec2", "detach-volume", "--volume-id", &root]);
    wait_volume(&cloud, &root, "detached", |v| v["State"] == "available");
    assert_eq!(instance(&cloud, &a)["BlockDeviceMappings"].as_array().map(Vec::len), Some(0));
    assert_eq!(cloud.aws_err(&["ec2", "start-instances", "--instance-ids", &a]), "IncorrectInstanceState");
    assert_eq!(
        cloud.aws_err(&["ec2", "create-image", "--instance-id", &a, "--name", "no-root"]),
        "IncorrectInstanceState"
    );

    // Another volume becomes its root; the old root is a data volume elsewhere.
    let b = run(&[]);
    wait_state(&cloud, &b, "running");
    assert_eq!(attach(&spare, &b, "/dev/xvda"), "InvalidParameterValue", "b has its root");
    cloud.aws(&["ec2", "attach-volume", "--volume-id", &spare, "--instance-id", &a, "--device", "/dev/xvda"]);
    wait_volume(&cloud, &spare, "attached", |v| v["Attachments"][0]["State"] == "attached");
    cloud.aws(&["ec2", "start-instances", "--instance-ids", &a]);
    let i = wait_state(&cloud, &a, "running");
    assert_eq!(s(&i["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]), spare);
    cloud.aws(&["ec2", "attach-volume", "--volume-id", &root, "--instance-id", &b, "--device", "/dev/sdf"]);
    let i = wait_state(&cloud, &b, "running");
    let devices: Vec<String> =
        i["BlockDeviceMappings"].as_array().into_iter().flatten().map(|m| s(&m["DeviceName"])).collect();
    assert_eq!(devices, ["/dev/xvda", "/dev/sdf"]);

    // Terminate: a DeleteOnTermination root goes; one without it stays, available.
    let b_root = s(&i["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]);
    // DeleteOnTermination of an attached volume, changed on the instance.
    let dot = |device: &str, on: bool| {
        cloud.aws_err(&[
            "ec2",
            "modify-instance-attribute",
            "--instance-id",
            &b,
            "--block-device-mappings",
            &format!("DeviceName={device},Ebs={{DeleteOnTermination={on}}}"),
        ])
    };
    assert_eq!(dot("/dev/sdz", true), "InvalidParameterValue");
    cloud.aws(&[
        "ec2",
        "modify-instance-attribute",
        "--instance-id",
        &b,
        "--block-device-mappings",
        "DeviceName=/dev/sdf,Ebs={DeleteOnTermination=true}",
    ]);
    assert_eq!(volume(&cloud, &root)["Attachments"][0]["DeleteOnTermination"], true);
    let kept = run(&["--block-device-mappings", "DeviceName=/dev/xvda,Ebs={DeleteOnTermination=false}"]);
    let k = wait_state(&cloud, &kept, "running");
    let kept_root = s(&k["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]);
    assert_eq!(k["BlockDeviceMappings"][0]["Ebs"]["DeleteOnTermination"], false);
    cloud.aws(&["ec2", "terminate-instances", "--instance-ids", &b, &kept]);
    wait_state(&cloud, &b, "terminated");
    wait_state(&cloud, &kept, "terminated");
    wait_volume(&cloud, &kept_root, "kept", |v| v["State"] == "available");
    let start = Instant::now();
    for gone in [&b_root, &root] {
        while cloud.aws_as("strato", &["ec2", "describe-volumes", "--volume-ids", gone]).status.success() {
            assert!(start.elapsed() < Duration::from_secs(20), "{gone} was not deleted with b");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Billed as a volume, from launch to deletion.
    let bill = cloud.bill("admin");
    let line = bill["lines"].as_array().unwrap().iter().find(|l| l["resource_id"] == b_root.as_str()).unwrap().clone();
    assert_eq!(line["usage_type"], "EBS:VolumeUsage.gp3");
    assert!(line["quantity"].as_f64().unwrap() > 0.0);
}

#[test]
fn snapshots_are_shared_copied_and_restored() {
    let cloud = Cloud::start_simulated();
    cloud.create_account("other", false);
    let other_id = s(&cloud.aws_json_as("other", &["ec2", "describe-vpcs"])["Vpcs"][0]["OwnerId"]);
    let vol = s(&cloud.aws(&["ec2", "create-volume", "--availability-zone", "local-1a", "--size", "4"])["VolumeId"]);
    wait_volume(&cloud, &vol, "available", |v| v["State"] == "available");
    let snap = cloud.aws(&[
        "ec2",
        "create-snapshot",
        "--volume-id",
        &vol,
        "--description",
        "nightly",
        "--tag-specifications",
        "ResourceType=snapshot,Tags=[{Key=k,Value=v}]",
    ]);
    let id = s(&snap["SnapshotId"]);
    assert_eq!(snap["VolumeSize"], 4);
    let wait_done = |id: &str| {
        let start = Instant::now();
        loop {
            let d = cloud.aws(&["ec2", "describe-snapshots", "--snapshot-ids", id]);
            if d["Snapshots"][0]["State"] == "completed" {
                return d["Snapshots"][0].clone();
            }
            assert!(start.elapsed() < Duration::from_secs(20));
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let done = wait_done(&id);
    assert_eq!(s(&done["Description"]), "nightly");
    let mine = cloud.aws(&["ec2", "describe-snapshots", "--owner-ids", "self", "--filters", "Name=tag:k,Values=v"]);
    assert_eq!(s(&mine["Snapshots"][0]["SnapshotId"]), id);

    // Not visible to another account until shared; then it can restore but not delete.
    assert_eq!(
        cloud.aws_err_as("other", &["ec2", "describe-snapshots", "--snapshot-ids", &id]),
        "InvalidSnapshot.NotFound"
    );
    cloud.aws(&[
        "ec2",
        "modify-snapshot-attribute",
        "--snapshot-id",
        &id,
        "--attribute",
        "createVolumePermission",
        "--operation-type",
        "add",
        "--user-ids",
        &other_id,
    ]);
    let attr = cloud.aws(&[
        "ec2",
        "describe-snapshot-attribute",
        "--snapshot-id",
        &id,
        "--attribute",
        "createVolumePermission",
    ]);
    assert_eq!(s(&attr["CreateVolumePermissions"][0]["UserId"]), other_id);
    let theirs = cloud.aws_json_as("other", &["ec2", "describe-snapshots", "--restorable-by-user-ids", "self"]);
    assert_eq!(s(&theirs["Snapshots"][0]["SnapshotId"]), id);
    let restored =
        cloud.aws_json_as("other", &["ec2", "create-volume", "--availability-zone", "local-1b", "--snapshot-id", &id]);
    assert_eq!(restored["Size"], 4, "the snapshot's size by default");
    assert_eq!(
        cloud.aws_err_as("other", &["ec2", "delete-snapshot", "--snapshot-id", &id]),
        "InvalidSnapshot.NotFound"
    );
    assert_eq!(
        cloud.aws_err(&[
            "ec2",
            "create-volume",
            "--availability-zone",
            "local-1a",
            "--snapshot-id",
            &id,
            "--size",
            "2"
        ]),
        "InvalidParameterValue"
    );

    // A copy is independent of its source.
    let copy =
        s(&cloud.aws(&["ec2", "copy-snapshot", "--source-snapshot-id", &id, "--source-region", "local-1"])
            ["SnapshotId"]);
    wait_done(&copy);
    assert_eq!(
        cloud.aws_err(&["ec2", "copy-snapshot", "--source-snapshot-id", &id, "--source-region", "us-east-1"]),
        "InvalidParameterValue"
    );
    cloud.aws(&["ec2", "delete-snapshot", "--snapshot-id", &id]);
    assert_eq!(cloud.aws_err(&["ec2", "describe-snapshots", "--snapshot-ids", &id]), "InvalidSnapshot.NotFound");
    let d = cloud.aws(&["ec2", "describe-snapshots", "--snapshot-ids", &copy]);
    assert_eq!(d["Snapshots"][0]["State"], "completed");
    // Snapshots are billed per GB-month.
    let bill = cloud.bill("admin");
    let line = bill["lines"].as_array().unwrap().iter().find(|l| l["resource_id"] == id.as_str()).unwrap().clone();
    assert_eq!(line["usage_type"], "EBS:SnapshotUsage");
    assert_eq!(line["unit"], "GB-Mo");
}

/// Runs a command over SSH at the instance's public address, retrying while the guest boots.
#[track_caller]
#[test]
fn a_volume_is_hot_plugged_kept_and_moved() {
    let cloud = Cloud::start();
    let ami = ami(&cloud);
    let key = key_file(&cloud, "strato", "vol");
    open_ssh(&cloud);
    let r = cloud.aws(&[
        "ec2",
        "run-instances",
        "--image-id",
        &ami,
        "--instance-type",
        "t3.nano",
        "--key-name",
        "vol",
        "--count",
        "2",
        "--placement",
        "AvailabilityZone=local-1a",
    ]);
    let a = s(&r["Instances"][0]["InstanceId"]);
    let b = s(&r["Instances"][1]["InstanceId"]);
    let v =
        cloud.aws(&["ec2", "create-volume", "--availability-zone", "local-1a", "--size", "1", "--volume-type", "gp3"]);
    let vol = s(&v["VolumeId"]);
    let serial = vol.replace('-', "");
    wait_volume(&cloud, &vol, "available", |v| v["State"] == "available");
    assert_eq!(ssh_retry(&cloud, &key, &a, "ls /sys/block").split_whitespace().collect::<Vec<_>>(), ["vda"]);

    // Hot-plugged into the running guest: it appears as a new disk with the volume's serial.
    cloud.aws(&["ec2", "attach-volume", "--volume-id", &vol, "--instance-id", &a, "--device", "/dev/sdf"]);
    wait_volume(&cloud, &vol, "attached", |v| v["Attachments"][0]["State"] == "attached");
    let probe =
        "for d in /sys/block/vd*; do [ \"$(cat $d/serial 2>/dev/null)\" = SERIAL ] && echo ${d##*/}; done; true"
            .replace("SERIAL", &serial);
    let start = Instant::now();
    let dev = loop {
        let d = ssh_retry(&cloud, &key, &a, &probe).trim().to_owned();
        if !d.is_empty() {
            break d;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "the guest never saw the volume");
        std::thread::sleep(Duration::from_millis(300));
    };
    let size = ssh_retry(&cloud, &key, &a, &format!("cat /sys/block/{dev}/size"));
    assert_eq!(size.trim(), (1u64 << 30 >> 9).to_string(), "1 GiB in 512-byte sectors");
    ssh_retry(
        &cloud,
        &key,
        &a,
        &format!("echo strato-volume-bytes | dd of=/dev/{dev} bs=512 conv=sync count=1 2>/dev/null; sync"),
    );

    // A snapshot while it is attached to the running guest (QEMU's backup job).
    let snap = s(&cloud.aws(&["ec2", "create-snapshot", "--volume-id", &vol, "--description", "hot"])["SnapshotId"]);
    let start = Instant::now();
    loop {
        let d = cloud.aws(&["ec2", "describe-snapshots", "--snapshot-ids", &snap]);
        if d["Snapshots"][0]["State"] == "completed" {
            assert_eq!(d["Snapshots"][0]["Progress"], "100%");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the snapshot never completed: {d}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Stop and start: still attached (now from the VM's start), the bytes are there.
    cloud.aws(&["ec2", "stop-instances", "--instance-ids", &a]);
    wait_state(&cloud, &a, "stopped");
    assert_eq!(s(&volume(&cloud, &vol)["Attachments"][0]["State"]), "attached");
    cloud.aws(&["ec2", "start-instances", "--instance-ids", &a]);
    wait_state(&cloud, &a, "running");
    let read = format!("for d in /sys/block/vd*; do [ \"$(cat $d/serial 2>/dev/null)\" = {serial} ] && dd if=/dev/${{d##*/}} bs=512 count=1 2>/dev/null | head -c 19; done; true");
    assert_eq!(ssh_retry(&cloud, &key, &a, &read), "strato-volume-bytes");

    // Detached: gone from the guest; attached to B: the bytes are there.
    cloud.aws(&["ec2", "detach-volume", "--volume-id", &vol]);
    wait_volume(&cloud, &vol, "detached", |v| v["State"] == "available");
    assert!(ssh_retry(&cloud, &key, &a, &probe).trim().is_empty(), "the guest still has the volume");
    cloud.aws(&["ec2", "attach-volume", "--volume-id", &vol, "--instance-id", &b, "--device", "/dev/sdg"]);
    wait_volume(&cloud, &vol, "attached to B", |v| v["Attachments"][0]["State"] == "attached");
    let start = Instant::now();
    loop {
        if ssh_retry(&cloud, &key, &b, &read) == "strato-volume-bytes" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "B never read the volume");
        std::thread::sleep(Duration::from_millis(300));
    }

    // A new volume from the snapshot (bigger), in A: the bytes written before it was taken.
    let from_snap =
        cloud.aws(&["ec2", "create-volume", "--availability-zone", "local-1a", "--snapshot-id", &snap, "--size", "2"]);
    let copy = s(&from_snap["VolumeId"]);
    assert_eq!(s(&from_snap["SnapshotId"]), snap);
    wait_volume(&cloud, &copy, "available", |v| v["State"] == "available");
    cloud.aws(&["ec2", "attach-volume", "--volume-id", &copy, "--instance-id", &a, "--device", "/dev/sdh"]);
    wait_volume(&cloud, &copy, "attached", |v| v["Attachments"][0]["State"] == "attached");
    let read_copy = read.replace(&serial, &copy.replace('-', ""));
    let start = Instant::now();
    loop {
        if ssh_retry(&cloud, &key, &a, &read_copy) == "strato-volume-bytes" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "the volume from the snapshot lacks the bytes");
        std::thread::sleep(Duration::from_millis(300));
    }
    let size = ssh_retry(&cloud, &key, &a, &probe.replace(&serial, &copy.replace('-', "")));
    let size = ssh_retry(&cloud, &key, &a, &format!("cat /sys/block/{}/size", size.trim()));
    assert_eq!(size.trim(), (2u64 << 30 >> 9).to_string(), "grown to 2 GiB");

    // ModifyVolume grows it in the running guest, no reboot, no rescan by hand.
    cloud.aws(&["ec2", "modify-volume", "--volume-id", &copy, "--size", "3"]);
    let start = Instant::now();
    loop {
        let m = cloud.aws(&["ec2", "describe-volumes-modifications", "--volume-ids", &copy]);
        if m["VolumesModifications"][0]["ModificationState"] == "completed" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the modification never completed: {m}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let dev = ssh_retry(&cloud, &key, &a, &probe.replace(&serial, &copy.replace('-', "")));
    let start = Instant::now();
    loop {
        let size = ssh_retry(&cloud, &key, &a, &format!("cat /sys/block/{}/size", dev.trim()));
        if size.trim() == (3u64 << 30 >> 9).to_string() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "the guest still sees {size}");
        std::thread::sleep(Duration::from_millis(300));
    }

    // CreateImage from the running instance: a new instance of that image has what the first
    // one had written.
    ssh_retry(&cloud, &key, &a, "echo written-before-the-image > /root/marker; sync");
    let image =
        s(&cloud.aws(&["ec2", "create-image", "--instance-id", &a, "--name", "from-a", "--no-reboot"])["ImageId"]);
    let start = Instant::now();
    let described = loop {
        let d = cloud.aws(&["ec2", "describe-images", "--image-ids", &image]);
        if d["Images"][0]["State"] == "available" {
            break d["Images"][0].clone();
        }
        assert!(start.elapsed() < Duration::from_secs(120), "the image never became available: {d}");
        std::thread::sleep(Duration::from_millis(300));
    };
    let root_snap = s(&described["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]);
    let snap = cloud.aws(&["ec2", "describe-snapshots", "--snapshot-ids", &root_snap]);
    assert_eq!(snap["Snapshots"][0]["State"], "completed");
    assert_eq!(cloud.aws_err(&["ec2", "delete-snapshot", "--snapshot-id", &root_snap]), "InvalidSnapshot.InUse");
    let r = cloud.aws(&[
        "ec2",
        "run-instances",
        "--image-id",
        &image,
        "--instance-type",
        "t3.nano",
        "--key-name",
        "vol",
        "--placement",
        "AvailabilityZone=local-1a",
    ]);
    let c = s(&r["Instances"][0]["InstanceId"]);
    assert_eq!(ssh_retry(&cloud, &key, &c, "cat /root/marker").trim(), "written-before-the-image");
    // But not A's SSH host key: each instance has its own.
    let host_key = "dropbearkey -y -f /etc/dropbear/dropbear_ed25519_host_key | grep Fingerprint";
    let (key_a, key_c) = (ssh_retry(&cloud, &key, &a, host_key), ssh_retry(&cloud, &key, &c, host_key));
    assert!(key_a.contains("Fingerprint") && key_a != key_c, "A: {key_a}, C: {key_c}");

    // Without NoReboot the VM is paused for the copy and runs on afterwards.
    let paused = s(&cloud.aws(&["ec2", "create-image", "--instance-id", &c, "--name", "from-c"])["ImageId"]);
    let start = Instant::now();
    while cloud.aws(&["ec2", "describe-images", "--image-ids", &paused])["Images"][0]["State"] != "available" {
        assert!(start.elapsed() < Duration::from_secs(120), "the paused copy never finished");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(ssh_retry(&cloud, &key, &c, "cat /root/marker").trim(), "written-before-the-image");

    // C's root volume is a volume: grown while it runs (the guest's vda grows at once), and
    // snapshotted while it runs; a volume made from that snapshot, in B, holds C's files.
    let i = instance(&cloud, &c);
    let root = s(&i["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]);
    assert_eq!(volume(&cloud, &root)["Size"], 1);
    cloud.aws(&["ec2", "modify-volume", "--volume-id", &root, "--size", "2"]);
    let start = Instant::now();
    loop {
        let size = ssh_retry(&cloud, &key, &c, "cat /sys/block/vda/size");
        if size.trim() == (2u64 << 30 >> 9).to_string() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the guest's root disk is still {size}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let snap = s(&cloud.aws(&["ec2", "create-snapshot", "--volume-id", &root])["SnapshotId"]);
    let start = Instant::now();
    while cloud.aws(&["ec2", "describe-snapshots", "--snapshot-ids", &snap])["Snapshots"][0]["State"] != "completed" {
        assert!(start.elapsed() < Duration::from_secs(60), "the root snapshot never completed");
        std::thread::sleep(Duration::from_millis(200));
    }
    let copy =
        s(&cloud.aws(&["ec2", "create-volume", "--availability-zone", "local-1a", "--snapshot-id", &snap])["VolumeId"]);
    wait_volume(&cloud, &copy, "available", |v| v["State"] == "available");
    cloud.aws(&["ec2", "attach-volume", "--volume-id", &copy, "--instance-id", &b, "--device", "/dev/sdi"]);
    wait_volume(&cloud, &copy, "attached", |v| v["Attachments"][0]["State"] == "attached");
    let mount = "for d in /sys/block/vd*; do [ \"$(cat $d/serial 2>/dev/null)\" = SERIAL ] && mkdir -p /mnt/c && mount -o ro /dev/${d##*/} /mnt/c && cat /mnt/c/root/marker; done 2>&1; true"
        .replace("SERIAL", &copy.replace('-', ""));
    let start = Instant::now();
    loop {
        let out = ssh_retry(&cloud, &key, &b, &mount);
        if out.trim() == "written-before-the-image" {
            break;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let disks = ssh_retry(&cloud, &key, &b, "for d in /sys/block/vd*; do echo $d $(cat $d/serial); done");
            panic!("B never read C's root volume {copy}: {out}; B has {disks}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }

    // Terminated with DeleteOnTermination: the root volume goes with the instance.
    cloud.aws(&["ec2", "terminate-instances", "--instance-ids", &c]);
    let start = Instant::now();
    while cloud.aws_as("strato", &["ec2", "describe-volumes", "--volume-ids", &root]).status.success() {
        assert!(start.elapsed() < Duration::from_secs(60), "C's root volume was not deleted");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_instance_store_is_lost_on_stop() {
    let cloud = Cloud::start();
    let ami = ami(&cloud);
    let key = key_file(&cloud, "strato", "vol");
    let t = cloud.aws(&["ec2", "describe-instance-types", "--instance-types", "c5d.large"]);
    assert_eq!(t["InstanceTypes"][0]["InstanceStorageInfo"]["TotalSizeInGB"], 50);
    open_ssh(&cloud);
    let r =
        cloud.aws(&["ec2", "run-instances", "--image-id", &ami, "--instance-type", "c5d.large", "--key-name", "vol"]);
    let id = s(&r["Instances"][0]["InstanceId"]);
    let find =
        "for d in /sys/block/vd*; do [ \"$(cat $d/serial 2>/dev/null)\" = ephemeral0 ] && echo ${d##*/}; done; true";
    let dev = ssh_retry(&cloud, &key, &id, find).trim().to_owned();
    assert!(!dev.is_empty(), "no instance-store disk");
    let size = ssh_retry(&cloud, &key, &id, &format!("cat /sys/block/{dev}/size"));
    assert_eq!(size.trim(), (50u64 << 30 >> 9).to_string());
    let md = ssh_retry(
        &cloud,
        &key,
        &id,
        "printf 'GET /latest/meta-data/block-device-mapping/ephemeral0 HTTP/1.0\\r\\n\\r\\n' | nc -w 3 169.254.169.254 80 | tail -n 1",
    );
    assert_eq!(md.trim(), "sdb", "the metadata lists the instance store");
    ssh_retry(
        &cloud,
        &key,
        &id,
        &format!("echo scratch-bytes | dd of=/dev/{dev} bs=512 conv=sync count=1 2>/dev/null; sync"),
    );
    let read = format!("dd if=/dev/{dev} bs=512 count=1 2>/dev/null | head -c 13 | od -An -c | tr -d ' \\n'");
    assert_eq!(ssh_retry(&cloud, &key, &id, &read), "scratch-bytes");
    cloud.aws(&["ec2", "stop-instances", "--instance-ids", &id]);
    wait_state(&cloud, &id, "stopped");
    cloud.aws(&["ec2", "start-instances", "--instance-ids", &id]);
    wait_state(&cloud, &id, "running");
    let dev = ssh_retry(&cloud, &key, &id, find).trim().to_owned();
    let read = format!("dd if=/dev/{dev} bs=512 count=1 2>/dev/null | head -c 13 | od -An -c | tr -d ' \\n'");
    let after = ssh_retry(&cloud, &key, &id, &read);
    assert!(!after.contains("scratch"), "the instance store kept its data across stop/start: {after}");
}
