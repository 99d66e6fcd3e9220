//! Launch snapshots, with real VMs, for both minimal images (Strato's guest kernel and
//! Debian's): the first instance boots cold and has the agent make the launch snapshot; the next ones
//! are restored from it, and two restored at once have nothing of their identity in
//! common: address, MAC, hostname, SSH host key, random numbers, instance id. A restored
//! instance keeps its identity across a reboot, and what it writes across stop/start (a
//! cold boot from its root volume). A crash of the server right after restored launches
//! leaves every instance working.

mod common;

use std::time::{Duration, Instant};

use common::{key_file, open_ssh, ssh_retry, Cloud};
use serde_json::Value;

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

fn instance(cloud: &Cloud, id: &str) -> Value {
    cloud.aws(&["ec2", "describe-instances", "--instance-ids", id])["Reservations"][0]["Instances"][0].clone()
}

fn console(cloud: &Cloud, id: &str) -> String {
    std::fs::read_to_string(cloud.dir.path().join("instances").join(id).join("console.log")).unwrap_or_default()
}

fn wait_state(cloud: &Cloud, id: &str, state: &str) {
    let start = Instant::now();
    while s(&instance(cloud, id)["State"]["Name"]) != state {
        assert!(start.elapsed() < Duration::from_secs(90), "{id} never {state}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits (up to 2 minutes) until the agent has saved a launch snapshot.
fn wait_for_launch_snapshot(cloud: &Cloud) {
    let snapshots = cloud.dir.path().join("launch-snapshots");
    let start = Instant::now();
    while !std::fs::read_dir(&snapshots).into_iter().flatten().flatten().any(|e| e.path().join("state").exists()) {
        assert!(start.elapsed() < Duration::from_secs(120), "the launch snapshot was never made");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What identifies a guest, read inside it.
const IDENTITY: &str = "i=0; while [ ! -f /tmp/user-data-ran ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; hostname; cat /sys/class/net/eth0/address; ip -4 -o addr show eth0 | awk '{print $4}'; \
    for f in /etc/dropbear/*host_key; do dropbearkey -y -f $f | grep Fingerprint; done; \
    head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; date +%s; cat /tmp/user-data-ran";

#[test]
fn restored_instances_each_get_their_own_identity_guest_kernel() {
    restored_instances_each_get_their_own_identity("strato-minimal-fast-x86_64");
}

#[test]
fn restored_instances_each_get_their_own_identity_debian_kernel() {
    restored_instances_each_get_their_own_identity("strato-minimal-x86_64");
}

fn restored_instances_each_get_their_own_identity(image: &str) {
    let cloud = Cloud::start_with_launch_snapshots();
    if image == "strato-minimal-fast-x86_64" {
        let out = common::strato(cloud.dir.path())
            .args(["image", "build", "minimal-fast"])
            .output()
            .expect("strato image build");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let images =
        cloud.aws(&["ec2", "describe-images", "--owners", "strato", "--filters", &format!("Name=name,Values={image}")]);
    let ami = s(&images["Images"][0]["ImageId"]);
    let key = key_file(&cloud, "strato", "fast");
    open_ssh(&cloud);
    let run = |count: &str| -> Vec<String> {
        let r = cloud.aws(&[
            "ec2",
            "run-instances",
            "--image-id",
            &ami,
            "--instance-type",
            "t3.nano",
            "--key-name",
            "fast",
            "--count",
            count,
            "--user-data",
            "#!/bin/sh\necho yes > /tmp/user-data-ran\n",
        ]);
        r["Instances"].as_array().into_iter().flatten().map(|i| s(&i["InstanceId"])).collect()
    };

    // The first launch boots cold, and the snapshot is made meanwhile.
    let first = run("1").remove(0);
    assert!(ssh_retry(&cloud, &key, &first, "cat /tmp/user-data-ran").contains("yes"));
    assert!(!console(&cloud, &first).contains("STRATO-BOOT: restored"), "{}", console(&cloud, &first));
    // Strato's kernel reads its identity from QEMU's firmware file (no DHCP, no dropbearkey);
    // Debian's has no fw_cfg driver built in, and takes DHCP.
    let fw_cfg = image == "strato-minimal-fast-x86_64";
    assert_eq!(console(&cloud, &first).contains("(fw_cfg identity)"), fw_cfg, "{}", console(&cloud, &first));
    wait_for_launch_snapshot(&cloud);

    // The agent's warm pool (one VM by default) fills once the snapshot is there.
    let pool = cloud.dir.path().join("warm-pool");
    let start = Instant::now();
    let warm = |p: &std::path::Path| {
        std::fs::read_to_string(p.join("console.log")).unwrap_or_default().contains("warm: waiting for an instance")
    };
    while !std::fs::read_dir(&pool).into_iter().flatten().flatten().any(|e| warm(&e.path())) {
        assert!(start.elapsed() < Duration::from_secs(120), "the warm pool never filled");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Two at once, both restored from it: one takes the warm-pool VM, one is restored now.
    let pair = run("2");
    let ids: Vec<Vec<String>> = pair
        .iter()
        .map(|id| {
            let out = ssh_retry(&cloud, &key, id, IDENTITY);
            assert!(console(&cloud, id).contains("STRATO-BOOT: restored"), "{id} was not restored");
            // Its NIC came up (and so sshd could take a connection) only once the kernel had
            // reseeded its RNG on the restore.
            assert!(!console(&cloud, id).contains("no RNG reseed seen"), "{}", console(&cloud, id));
            out.lines().map(str::to_owned).collect()
        })
        .collect();
    for (id, lines) in pair.iter().zip(&ids) {
        let i = instance(&cloud, id);
        let private = s(&i["PrivateIpAddress"]);
        assert_eq!(lines[0], format!("ip-{}", private.replace('.', "-")), "{id}: {lines:?}");
        assert_eq!(lines[1], s(&i["NetworkInterfaces"][0]["MacAddress"]), "{id}: {lines:?}");
        assert!(lines[2].starts_with(&format!("{private}/")), "{id}: {lines:?}");
        assert!(lines.iter().any(|l| l.starts_with("Fingerprint")), "{id} has no host key: {lines:?}");
        let clock: i64 = lines[lines.len() - 2].parse().expect("date +%s");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
        assert!((clock - now).abs() < 120, "{id}'s clock is off by {} s", clock - now);
        assert_eq!(lines[lines.len() - 1], "yes", "{id} ran its user data");
        assert!(console(&cloud, id).contains(&format!("instance-id={id}")));
    }
    let pooled: Vec<&String> = pair.iter().filter(|id| console(&cloud, id).contains("warm: waiting")).collect();
    assert_eq!(pooled.len(), 1, "one of {pair:?} should come from the warm pool");
    // Its warm-up's throwaway keys are gone: root's only key is the key pair's, and the
    // host key is the one the agent made for the instance (a new one to the client).
    let ssh_dir = ssh_retry(&cloud, &key, pooled[0], "ls -a /root/.ssh; wc -l < /root/.ssh/authorized_keys; ls /run");
    assert_eq!(ssh_dir.split_whitespace().collect::<Vec<_>>()[..4], [".", "..", "authorized_keys", "1"], "{ssh_dir}");
    assert!(!ssh_dir.contains("warm-key"), "{ssh_dir}");
    let guest_key = ssh_retry(&cloud, &key, pooled[0], "dropbearkey -y -f /etc/dropbear/dropbear_ed25519_host_key");
    let guest_key = guest_key.lines().find(|l| l.starts_with("ssh-ed25519")).expect("the host key").to_owned();
    let ip = s(&instance(&cloud, pooled[0])["PublicIpAddress"]);
    let scan = std::process::Command::new("ssh-keyscan").args(["-t", "ed25519", &ip]).output().expect("ssh-keyscan");
    let served = String::from_utf8_lossy(&scan.stdout).into_owned();
    let key_words = guest_key.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    assert!(served.contains(&key_words), "sshd serves {served:?}, the instance's key is {guest_key:?}");
    // Nothing in common but the clock and the user data.
    for (a, b) in ids[0].iter().zip(&ids[1]).take(ids[0].len() - 2) {
        assert_ne!(a, b, "two restored instances share {a}");
    }

    // A volume hot-plugs into a restored instance as into any other.
    let c = &pair[1];
    hot_plug_a_volume(&cloud, &key, c, "/dev/sdf");

    // A reboot (QEMU resets the NIC to the template's MAC): the guest keeps its identity.
    let boots = |id: &str| console(&cloud, id).matches("STRATO-BOOT: init").count();
    let before = boots(c);
    cloud.aws(&["ec2", "reboot-instances", "--instance-ids", c]);
    let start = Instant::now();
    while boots(c) == before {
        assert!(start.elapsed() < Duration::from_secs(60), "{c} never rebooted");
        std::thread::sleep(Duration::from_millis(200));
    }
    let after: Vec<String> = ssh_retry(&cloud, &key, c, IDENTITY).lines().map(str::to_owned).collect();
    assert_eq!(after[..3], ids[1][..3], "{c} after a reboot");
    assert_eq!(console(&cloud, c).matches("(identity channel)").count(), 2, "{}", console(&cloud, c));

    // Stop and start: a cold boot from the root volume, with what the guest wrote.
    let b = &pair[0];
    ssh_retry(&cloud, &key, b, "echo kept > /root/kept; sync");
    cloud.aws(&["ec2", "stop-instances", "--instance-ids", b]);
    wait_state(&cloud, b, "stopped");
    cloud.aws(&["ec2", "start-instances", "--instance-ids", b]);
    assert_eq!(ssh_retry(&cloud, &key, b, "cat /root/kept").trim(), "kept");
    assert!(!console(&cloud, b).contains("snapshot point"), "a start boots cold");
    // Its host key is still the one it had (the firmware file's new one is for a first boot).
    let fingerprints =
        |lines: &[String]| lines.iter().filter(|l| l.starts_with("Fingerprint")).cloned().collect::<Vec<_>>();
    let b_now: Vec<String> = ssh_retry(&cloud, &key, b, IDENTITY).lines().map(str::to_owned).collect();
    assert_eq!(fingerprints(&b_now), fingerprints(&ids[0]), "{b}'s host key changed at its start");
    assert_eq!(console(&cloud, b).contains("(fw_cfg identity)"), fw_cfg, "{}", console(&cloud, b));
    // Strato's kernel boots cold on qboot (Debian's on SeaBIOS): a volume still hot-plugs
    // into it (the kernel gives the bridge its room), and it still stops on the power button.
    let pid = std::fs::read_to_string(cloud.dir.path().join("instances").join(b).join("qemu.pid")).expect("qemu.pid");
    let argv = std::fs::read(format!("/proc/{}/cmdline", pid.trim())).expect("QEMU's command line");
    assert_eq!(String::from_utf8_lossy(&argv).contains("qboot.rom"), fw_cfg, "{b}: {}", String::from_utf8_lossy(&argv));
    hot_plug_a_volume(&cloud, &key, b, "/dev/sdg");
    cloud.aws(&["ec2", "stop-instances", "--instance-ids", b]);
    wait_state(&cloud, b, "stopped");
    assert!(console(&cloud, b).contains("STRATO-BOOT: shutting down"), "{}", console(&cloud, b));
    // Everything the VMs made on the host (disks, launch snapshots, the warm pool's files,
    // QMP sockets, consoles, dnsmasq's files) is root's only.
    let open = common::readable_by_others(cloud.dir.path());
    assert!(open.is_empty(), "readable by other users: {open:#?}");
    cloud.aws(&["ec2", "terminate-instances", "--instance-ids", &first, &pair[0], &pair[1]]);
    // A terminated instance's run directory goes with it.
    for id in [&first, &pair[0], &pair[1]] {
        wait_state(&cloud, id, "terminated");
        let dir = cloud.dir.path().join("instances").join(id);
        common::eventually_within("the run directory is removed", Duration::from_secs(20), || !dir.exists());
    }
}

/// A new 1 GiB volume attached to the instance at `device`: the guest sees its disk (by the
/// serial, the volume id without its dash).
fn hot_plug_a_volume(cloud: &Cloud, key: &std::path::Path, id: &str, device: &str) {
    let zone = s(&instance(cloud, id)["Placement"]["AvailabilityZone"]);
    let v = s(&cloud.aws(&["ec2", "create-volume", "--availability-zone", &zone, "--size", "1"])["VolumeId"]);
    let start = Instant::now();
    while cloud.aws(&["ec2", "describe-volumes", "--volume-ids", &v])["Volumes"][0]["State"] != "available" {
        assert!(start.elapsed() < Duration::from_secs(30), "the volume was never made");
        std::thread::sleep(Duration::from_millis(200));
    }
    cloud.aws(&["ec2", "attach-volume", "--volume-id", &v, "--instance-id", id, "--device", device]);
    let serial = v.replace('-', "");
    let start = Instant::now();
    while !ssh_retry(cloud, key, id, "cat /sys/block/*/serial 2>/dev/null; true").contains(&serial) {
        assert!(start.elapsed() < Duration::from_secs(30), "{id}'s guest never saw the volume");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `kill -9` of the server right after RunInstances answered for a restored launch (the
/// guest may not have read its identity yet; QEMU drops an unread line when the server's end
/// closes), then a restart: every instance ends up working (SSH with its key pair, its user
/// data run), restored, recovered, or booted cold again.
#[test]
fn a_crash_right_after_restored_launches_leaves_every_instance_working() {
    let mut cloud = Cloud::start_with_launch_snapshots();
    let images = cloud.aws(&[
        "ec2",
        "describe-images",
        "--owners",
        "strato",
        "--filters",
        "Name=name,Values=strato-minimal-x86_64",
    ]);
    let ami = s(&images["Images"][0]["ImageId"]);
    let key = key_file(&cloud, "strato", "crash");
    open_ssh(&cloud);
    let run = |cloud: &Cloud| -> String {
        let r = cloud.aws(&[
            "ec2",
            "run-instances",
            "--image-id",
            &ami,
            "--instance-type",
            "t3.nano",
            "--key-name",
            "crash",
            "--user-data",
            "#!/bin/sh\necho yes > /tmp/user-data-ran\n",
        ]);
        s(&r["Instances"][0]["InstanceId"])
    };
    // The first launch boots cold and has the snapshot made.
    let first = run(&cloud);
    wait_for_launch_snapshot(&cloud);
    let mut launched = vec![first];
    for delay in [Duration::from_millis(50), Duration::from_millis(300), Duration::from_millis(1000)] {
        launched.push(run(&cloud));
        std::thread::sleep(delay);
        cloud.crash();
        cloud.restart();
    }
    for id in &launched {
        let out = ssh_retry(&cloud, &key, id, "i=0; while [ ! -f /tmp/user-data-ran ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; cat /tmp/user-data-ran");
        assert!(out.contains("yes"), "{id}'s user data did not run: {out}\n{}", console(&cloud, id));
    }
    cloud.aws(
        &[
            &["ec2", "terminate-instances", "--instance-ids"][..],
            &launched.iter().map(String::as_str).collect::<Vec<_>>(),
        ]
        .concat(),
    );
}
