//! Boots an image with a bare `qemu-system-x86_64`, outside any instance machinery: for the
//! image tests and `strato bench boot`. The guest gets QEMU's user-mode network in
//! `restrict=on` mode (no packet leaves QEMU) laid out on 169.254.169.0/24 so that the
//! metadata address is inside it; 169.254.169.254:80 is forwarded to
//! `strato metadata serve-stdio`, one process per connection, and the guest's port 22 to a
//! loopback port of the host.
//!
//! TCG always: on these machines /dev/kvm cannot boot a stock kernel (see FACTS.md); the
//! instance hypervisor part chooses KVM where it really works.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::{Built, GUEST_KERNEL_CMDLINE, KERNEL_CMDLINE};
use crate::hypervisor::{ec2_uuid, guest_clock_args, metadata_netdev};
use crate::metadata::{InstanceMetadata, StdioConfig};

pub struct Options {
    pub memory_mib: u32,
    /// Boot this kernel instead of the image's (Strato's guest kernel: everything built in,
    /// so no initramfs).
    pub kernel: Option<PathBuf>,
    pub metadata: InstanceMetadata,
    /// The `strato` binary that serves the metadata.
    pub strato_bin: PathBuf,
}

pub struct BareVm {
    child: Child,
    pub console: PathBuf,
    pub qmp: PathBuf,
    pub ssh_port: u16,
    pub metadata_log: PathBuf,
    pub started: Instant,
}

impl BareVm {
    /// Starts the image on a fresh qcow2 overlay in `work`.
    pub fn start(built: &Built, work: &Path, opts: &Options) -> anyhow::Result<BareVm> {
        std::fs::create_dir_all(work)?;
        let overlay = work.join("root.qcow2");
        let out = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&built.rootfs)
            .arg(&overlay)
            .output()
            .context("running qemu-img")?;
        if !out.status.success() {
            bail!("qemu-img create: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let metadata_log = work.join("metadata.log");
        let cfg = StdioConfig {
            metadata: opts.metadata.clone(),
            token_key: hex::encode(rand::random::<[u8; 32]>()),
            log: Some(metadata_log.clone()),
        };
        let cfg_path = work.join("metadata.json");
        std::fs::write(&cfg_path, serde_json::to_vec(&cfg)?)?;
        let ssh_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let netdev = metadata_netdev(&opts.strato_bin, &cfg_path, Some(ssh_port))?;
        let uuid = ec2_uuid(&opts.metadata.instance_id);
        let console = work.join("console.log");
        let qmp = work.join("qmp.sock");
        let started = Instant::now();
        let child = Command::new("qemu-system-x86_64")
            .args([
                "-M",
                "q35,i8042=off",
                "-accel",
                "tcg",
                "-smp",
                "1",
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
            ])
            .args(["-monitor", "none", "-no-reboot", "-m", &opts.memory_mib.to_string()])
            .args(["-uuid", &uuid, "-smbios", &format!("type=1,serial={uuid}")])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .args(kernel_args(built, opts))
            .arg("-drive")
            .arg(format!("file={},format=qcow2,if=virtio", overlay.display()))
            .args(["-netdev", &netdev, "-device", "virtio-net-pci,netdev=n0", "-device", "virtio-rng-pci"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting qemu-system-x86_64 (package qemu-system-x86)")?;
        Ok(BareVm { child, console, qmp, ssh_port, metadata_log, started })
    }

    pub fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// Time from QEMU's start until a console line contains `marker`.
    pub fn wait_console(&self, marker: &str, timeout: Duration) -> Option<Duration> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.console_text().contains(marker) {
                return Some(self.started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Time from QEMU's start until the guest's sshd sends its banner.
    pub fn wait_ssh_banner(&self, timeout: Duration) -> Option<Duration> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.ssh_port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 8];
                if s.read_exact(&mut buf).is_ok() && &buf == b"SSH-2.0-" {
                    return Some(self.started.elapsed());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Presses the ACPI power button (QMP `system_powerdown`).
    pub fn powerdown(&self) -> anyhow::Result<()> {
        let s = std::os::unix::net::UnixStream::connect(&self.qmp).context("connecting to QMP")?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut r = BufReader::new(s.try_clone()?);
        let mut w = s;
        let mut line = String::new();
        r.read_line(&mut line)?;
        for c in ["qmp_capabilities", "system_powerdown"] {
            writeln!(w, "{{\"execute\": \"{c}\"}}")?;
            loop {
                line.clear();
                if r.read_line(&mut line)? == 0 {
                    bail!("QMP closed");
                }
                if line.contains("\"return\"") {
                    break;
                }
                if line.contains("\"error\"") {
                    bail!("QMP {c}: {line}");
                }
            }
        }
        Ok(())
    }

    /// Waits for QEMU to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

/// `-kernel`, `-initrd` and `-append` for the image's own kernel or a built-in one.
fn kernel_args(built: &Built, opts: &Options) -> Vec<String> {
    match &opts.kernel {
        Some(k) => vec![
            "-kernel".into(),
            k.display().to_string(),
            "-append".into(),
            format!("{KERNEL_CMDLINE} {GUEST_KERNEL_CMDLINE} root=/dev/vda{}", guest_clock_args()),
        ],
        None => vec![
            "-kernel".into(),
            built.kernel.display().to_string(),
            "-initrd".into(),
            built.initrd.display().to_string(),
            "-append".into(),
            format!("{KERNEL_CMDLINE} root=/dev/vda{}", guest_clock_args()),
        ],
    }
}

impl Drop for BareVm {
    fn drop(&mut self) {
        // Our own QEMU child, by PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A metadata document for a test or benchmark guest.
pub fn sample_metadata(ssh_key: Option<String>, user_data: Option<Vec<u8>>) -> InstanceMetadata {
    InstanceMetadata {
        instance_id: "i-0123456789abcdef0".into(),
        ami_id: "ami-0123456789abcdef0".into(),
        instance_type: "t3.micro".into(),
        account_id: "123456789012".into(),
        region: "local-1".into(),
        availability_zone: "local-1a".into(),
        local_ipv4: "169.254.169.15".into(),
        mac: "52:54:00:12:34:56".into(),
        security_groups: vec!["default".into()],
        public_key: ssh_key.map(|k| ("test-key".to_owned(), k)),
        user_data,
        ..Default::default()
    }
}
