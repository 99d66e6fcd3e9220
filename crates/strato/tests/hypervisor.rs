//! The hypervisor driver with a real QEMU: launch the minimal image daemonized, find it again
//! from its run directory (as after an agent restart), drive it over QMP, power it off.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use strato::hypervisor::{detect_accel, Vm, VmSpec};

/// Kills the VM (ours, by pid) if the test ends early.
struct Guard(Option<Vm>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(vm) = self.0.take() {
            if vm.alive() {
                let _ = Command::new("kill").arg("-KILL").arg(vm.pid.to_string()).status();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_adopt_and_power_off() {
    let cache = common::cache_dir();
    let built = tokio::task::spawn_blocking(move || {
        strato::image::build(
            strato::image::Kind::Minimal,
            &cache,
            false,
            &strato::image::StderrProgress(Instant::now()),
        )
    })
    .await
    .unwrap()
    .expect("minimal image");
    let work = tempfile::tempdir().unwrap();
    let disk = work.path().join("root.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&built.rootfs)
        .arg(&disk)
        .output()
        .unwrap();
    assert!(out.status.success());
    let (accel, why) = detect_accel();
    eprintln!("accelerator: {accel:?} ({why})");
    let spec = VmSpec {
        run_dir: work.path().join("run"),
        vcpus: 2,
        memory_mib: 320,
        kernel: built.kernel.clone(),
        initrd: Some(built.initrd.clone()),
        cmdline: format!("{} root=/dev/vda", strato::image::KERNEL_CMDLINE),
        root_disk: disk,
        uuid: strato::hypervisor::ec2_uuid("i-0123456789abcdef0"),
        netdev: None,
        netns: None,
        hotplug_ports: 0,
        volumes: Vec::new(),
        ephemeral: None,
        snapshot: Default::default(),
        identity: None,
        paused: false,
        qboot: false,
    };
    let vm = Vm::launch(&spec, accel).expect("launch");
    let mut guard = Guard(Some(vm.clone()));
    assert!(vm.alive());

    let start = Instant::now();
    while !vm.console().contains("STRATO-BOOT: ready") && start.elapsed() < Duration::from_secs(90) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(vm.console().contains("STRATO-BOOT: ready"), "{}", vm.console());
    assert!(vm.console().contains("STRATO-BOOT: network none"), "no NIC yet: {}", vm.console());

    // As after an agent restart: nothing but the run directory.
    let again = Vm::adopt(&spec.run_dir).expect("adopt the running VM");
    assert_eq!(again.pid, vm.pid);
    let mut q = again.qmp().await.expect("QMP");
    let st = q.query_status().await.unwrap();
    assert!(st.running && st.status == "running", "{st:?}");
    let cpus = q.execute("query-cpus-fast", None).await.unwrap();
    assert_eq!(cpus.as_array().map(Vec::len), Some(2), "the spec's vCPUs");
    let mem = q.execute("query-memory-size-summary", None).await.unwrap();
    assert_eq!(mem["base-memory"].as_u64(), Some(320 << 20));

    q.system_powerdown().await.unwrap();
    assert!(
        again.wait_gone(Duration::from_secs(30)).await,
        "still running after the power button:\n{}",
        again.console()
    );
    assert!(again.console().contains("STRATO-BOOT: power button"));
    assert!(Vm::adopt(&spec.run_dir).is_none(), "a gone VM is not adopted");
    guard.0 = None;
}
