//! Boots the images with a bare qemu-system-x86_64 (TCG here, as on every machine without
//! working KVM) and checks what a user of them sees: a DHCP lease, the metadata read (IMDSv2
//! for the minimal image), user data run, SSH login with the key from the metadata, and a
//! clean power-off on the ACPI button. The metadata comes from Strato's own metadata code
//! (`strato metadata serve-stdio`) behind QEMU's user network in `restrict=on` mode: no
//! packet leaves QEMU.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use strato::image::bare::{sample_metadata, BareVm, Options};
use strato::image::Kind;

fn keypair(dir: &Path) -> (std::path::PathBuf, String) {
    let key = dir.join("id_ed25519");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .output()
        .expect("ssh-keygen");
    assert!(out.status.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap().trim().to_owned();
    (key, public)
}

fn ssh(key: &Path, port: u16, command: &str, tries: u32) -> Option<String> {
    for _ in 0..tries {
        let out = Command::new("ssh")
            .arg("-i")
            .arg(key)
            .args(["-p", &port.to_string()])
            .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"])
            .args(["-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", "root@127.0.0.1", command])
            .output()
            .expect("ssh (openssh-client)");
        if out.status.success() {
            return Some(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    None
}

fn build(kind: Kind) -> strato::image::Built {
    let progress = strato::image::StderrProgress(Instant::now());
    strato::image::build(kind, &common::cache_dir(), false, &progress).expect("image build")
}

#[test]
fn minimal_image_boots_reads_metadata_and_takes_ssh() {
    let built = build(Kind::Minimal);
    let work = tempfile::tempdir().unwrap();
    let (key, public) = keypair(work.path());
    let opts = Options {
        memory_mib: 256,
        kernel: None,
        metadata: sample_metadata(Some(public), Some(b"#!/bin/sh\necho USER-DATA-RAN > /dev/console\n".to_vec())),
        strato_bin: common::strato_bin().into(),
    };
    let mut vm = BareVm::start(&built, &work.path().join("vm"), &opts).expect("boot");
    let ready = vm.wait_console("STRATO-BOOT: ready", Duration::from_secs(90));
    let log = vm.console_text();
    assert!(ready.is_some(), "the guest never got ready:\n{log}");
    assert!(log.contains("STRATO-BOOT: network eth0 169.254.169.15/24"), "{log}");
    assert!(log.contains("STRATO-BOOT: metadata instance-id=i-0123456789abcdef0 imds=v2"), "{log}");
    assert!(log.contains("STRATO-BOOT: ssh key installed"), "{log}");
    assert!(vm.wait_console("USER-DATA-RAN", Duration::from_secs(20)).is_some(), "user data ran:\n{log}");
    let requests = std::fs::read_to_string(&vm.metadata_log).unwrap_or_default();
    assert!(requests.starts_with("PUT /latest/api/token"), "IMDSv2 token first: {requests}");
    assert!(requests.lines().skip(1).all(|l| l.contains("token=true") && l.ends_with("200")), "{requests}");

    let out =
        ssh(&key, vm.ssh_port, "cat /etc/strato-release; id -u; hostname", 40).expect("ssh login with the key pair");
    assert_eq!(out, "Strato minimal image\n0\nip-169-254-169-15\n");
    eprintln!(
        "minimal: ready after {:.2}s, SSH command done after {:.2}s",
        ready.unwrap().as_secs_f64(),
        vm.started.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    vm.powerdown().expect("QMP system_powerdown");
    assert!(
        vm.wait_exit(Duration::from_secs(30)),
        "QEMU still running 30 s after the power button:\n{}",
        vm.console_text()
    );
    assert!(vm.console_text().contains("STRATO-BOOT: power button"));
    eprintln!("minimal: power button to QEMU exit {:.2}s", t.elapsed().as_secs_f64());
}

#[test]
fn debian_12_boots_with_cloud_init_and_takes_ssh() {
    let built = build(Kind::Debian12);
    let work = tempfile::tempdir().unwrap();
    let (key, public) = keypair(work.path());
    let opts = Options {
        memory_mib: 512,
        kernel: None,
        metadata: sample_metadata(
            Some(public),
            Some(b"#!/bin/sh\necho from-user-data > /root/user-data.txt\n".to_vec()),
        ),
        strato_bin: common::strato_bin().into(),
    };
    let mut vm = BareVm::start(&built, &work.path().join("vm"), &opts).expect("boot");
    let login = vm.wait_console("login:", Duration::from_secs(300));
    assert!(login.is_some(), "no login prompt:\n{}", vm.console_text());
    let out = ssh(&key, vm.ssh_port, "cloud-init status --wait >/dev/null; cloud-init status; cat /etc/debian_version; cat /root/user-data.txt; cloud-init query v1.cloud_name", 120)
        .unwrap_or_else(|| panic!("ssh login with the key pair:\n{}", vm.console_text()));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "status: done", "{out}");
    assert!(lines[1].starts_with("12."), "{out}");
    assert_eq!(lines[2], "from-user-data", "{out}");
    assert_eq!(lines[3], "aws", "{out}");
    let requests = std::fs::read_to_string(&vm.metadata_log).unwrap_or_default();
    assert!(requests.contains("PUT /latest/api/token"), "cloud-init asked for an IMDSv2 token: {requests}");
    eprintln!(
        "debian-12: login prompt after {:.1}s, SSH done after {:.1}s",
        login.unwrap().as_secs_f64(),
        vm.started.elapsed().as_secs_f64()
    );
    vm.powerdown().expect("QMP system_powerdown");
    assert!(
        vm.wait_exit(Duration::from_secs(120)),
        "QEMU still running after the power button:\n{}",
        vm.console_text()
    );
}

#[test]
fn minimal_image_boots_with_the_guest_kernel() {
    let built = build(Kind::Minimal);
    let progress = strato::image::StderrProgress(Instant::now());
    let kernel = strato::image::guest_kernel(&common::cache_dir(), &progress).expect("guest kernel");
    let work = tempfile::tempdir().unwrap();
    let (key, public) = keypair(work.path());
    let opts = Options {
        memory_mib: 256,
        kernel: Some(kernel),
        metadata: sample_metadata(Some(public), None),
        strato_bin: common::strato_bin().into(),
    };
    let mut vm = BareVm::start(&built, &work.path().join("vm"), &opts).expect("boot");
    let ready = vm.wait_console("STRATO-BOOT: ready", Duration::from_secs(60));
    let log = vm.console_text();
    assert!(ready.is_some(), "the guest never got ready:\n{log}");
    assert!(log.contains("imds=v2") && log.contains("STRATO-BOOT: network eth0"), "{log}");
    let out = ssh(&key, vm.ssh_port, "uname -r; cat /proc/cmdline", 40).expect("ssh login");
    // The guest kernel mounts the root writable itself and is told its APIC timer's rate.
    let words: Vec<&str> = out.split_whitespace().collect();
    for w in ["root=/dev/vda", "rw", "lapic_timer_hz=1000000000"] {
        assert!(words.contains(&w), "{w} missing: {out}");
    }
    eprintln!("guest kernel: ready after {:.2}s", ready.unwrap().as_secs_f64());
    vm.powerdown().expect("QMP system_powerdown");
    assert!(vm.wait_exit(Duration::from_secs(30)), "power button:\n{}", vm.console_text());
}
