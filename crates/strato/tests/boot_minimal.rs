//! Boots the minimal image with a bare qemu-system-x86_64 (TCG here, as on every machine
//! without working KVM) and checks what a user of it sees: a DHCP lease, the metadata read
//! over IMDSv2, user data run, SSH login with the key from the metadata, and a clean
//! power-off on the ACPI button. The metadata service is a test one (tests/py/imds_stdio.py)
//! behind QEMU's user-mode network in `restrict=on` mode: no packet leaves QEMU.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Vm(Child);

impl Drop for Vm {
    fn drop(&mut self) {
        // Our own QEMU, by PID.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(log: &Path, marker: &str, timeout: Duration) -> Option<String> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(marker)) {
            return Some(line.to_owned());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn qmp(sock: &Path, command: &str) {
    let s = std::os::unix::net::UnixStream::connect(sock).expect("QMP socket");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    for c in ["qmp_capabilities", command] {
        writeln!(w, "{{\"execute\": \"{c}\"}}").unwrap();
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            if line.contains("\"return\"") || line.contains("\"error\"") {
                assert!(line.contains("\"return\""), "{c}: {line}");
                break;
            }
        }
    }
}

#[test]
fn minimal_image_boots_reads_metadata_and_takes_ssh() {
    let cache = common::cache_dir();
    let progress = strato::image::StderrProgress(Instant::now());
    let built = strato::image::build(strato::image::Kind::Minimal, &cache, false, &progress).expect("minimal image");
    let work = tempfile::tempdir().unwrap();
    let overlay = work.path().join("root.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&built.rootfs)
        .arg(&overlay)
        .output()
        .expect("qemu-img");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let key = work.path().join("id_ed25519");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .output()
        .expect("ssh-keygen");
    assert!(out.status.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();

    let console = work.path().join("console.log");
    let qmp_sock = work.path().join("qmp.sock");
    let imds_log = work.path().join("imds.log");
    let ssh_port = free_port();
    let imds = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/imds_stdio.py");
    let netdev = format!(
        "user,id=n0,restrict=on,net=169.254.169.0/24,host=169.254.169.2,dhcpstart=169.254.169.15,\
         hostfwd=tcp:127.0.0.1:{ssh_port}-:22,guestfwd=tcp:169.254.169.254:80-cmd:python3 {}",
        imds.display()
    );
    let started = Instant::now();
    let _vm = Vm(Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "q35",
            "-accel",
            "tcg",
            "-m",
            "256",
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
        ])
        .args(["-monitor", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp_sock.display()))
        .arg("-kernel")
        .arg(&built.kernel)
        .arg("-initrd")
        .arg(&built.initrd)
        .arg("-append")
        .arg(format!("{} root=/dev/vda", strato::image::KERNEL_CMDLINE))
        .arg("-drive")
        .arg(format!("file={},format=qcow2,if=virtio", overlay.display()))
        .args(["-netdev", &netdev, "-device", "virtio-net-pci,netdev=n0"])
        .env("IMDS_LOG", &imds_log)
        .env("IMDS_INSTANCE_ID", "i-0123456789abcdef0")
        .env("IMDS_SSH_KEY", public.trim())
        .env("IMDS_USER_DATA", "#!/bin/sh\necho USER-DATA-RAN > /dev/console\n")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 (package qemu-system-x86)"));

    let ready = wait_for(&console, "STRATO-BOOT: ready", Duration::from_secs(90));
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    assert!(ready.is_some(), "the guest never got ready:\n{log}");
    let to_ready = started.elapsed();
    assert!(log.contains("STRATO-BOOT: network eth0 169.254.169.15/24"), "{log}");
    assert!(log.contains("STRATO-BOOT: metadata instance-id=i-0123456789abcdef0 imds=v2"), "{log}");
    assert!(log.contains("STRATO-BOOT: ssh key installed"), "{log}");
    assert!(wait_for(&console, "USER-DATA-RAN", Duration::from_secs(20)).is_some(), "user data ran:\n{log}");
    let imds = std::fs::read_to_string(&imds_log).unwrap_or_default();
    assert!(imds.starts_with("PUT /latest/api/token"), "IMDSv2 token first: {imds}");

    // SSH in with the key the metadata served.
    let mut ssh_ok = None;
    for _ in 0..40 {
        let out = Command::new("ssh")
            .args(["-i"])
            .arg(&key)
            .args(["-p", &ssh_port.to_string()])
            .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"])
            .args([
                "-o",
                "ConnectTimeout=5",
                "-o",
                "LogLevel=ERROR",
                "root@127.0.0.1",
                "cat /etc/strato-release; id -u",
            ])
            .output()
            .expect("ssh (openssh-client)");
        if out.status.success() {
            ssh_ok = Some(String::from_utf8_lossy(&out.stdout).into_owned());
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let to_ssh = started.elapsed();
    let ssh_out = ssh_ok.expect("ssh login with the key pair");
    assert_eq!(ssh_out, "Strato minimal image\n0\n");
    eprintln!(
        "minimal image under TCG: ready marker after {:.2}s, SSH command done after {:.2}s",
        to_ready.as_secs_f64(),
        to_ssh.as_secs_f64()
    );

    // The ACPI power button powers it off cleanly.
    let t = Instant::now();
    qmp(&qmp_sock, "system_powerdown");
    let mut vm = _vm;
    let mut exited = false;
    while t.elapsed() < Duration::from_secs(30) {
        if let Ok(Some(_)) = vm.0.try_wait() {
            exited = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    assert!(exited, "QEMU still running 30 s after the power button:\n{log}");
    assert!(log.contains("STRATO-BOOT: power button"), "{log}");
    eprintln!("power button to QEMU exit: {:.2}s", t.elapsed().as_secs_f64());
}
