//! One VM's life on a host: QEMU started from a `VmSpec`, driven over QMP, found again after
//! the agent restarts.
//!
//! Each VM has a run directory holding its QMP socket, serial console log and pid file.
//! QEMU runs daemonized (`-daemonize`: its own session, not our child), so restarting or
//! killing Strato never stops a VM; `Vm::adopt` finds it again from the run directory,
//! checking that the pid still belongs to that QEMU.
//!
//! Accelerator: KVM only where it really works. A `/dev/kvm` that exists is not enough: on
//! the nested PVM machines Strato is developed on, it cannot boot a stock kernel (see
//! FACTS.md), so KVM also needs the host CPU's `vmx` or `svm` flag; `STRATO_ACCEL=kvm|tcg`
//! overrides the choice.
//!
//! A VM on a VPC runs inside the VPC's network namespace (setns(2) before exec), on a tap the
//! network part made there. Not here yet: hot-plugged volumes.

pub mod qmp;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// As the agent's log and the benchmarks print it: `Kvm`, or `Tcg` with its thread mode
    /// (the numbers of one mode are not those of the other).
    pub fn label(self) -> String {
        match self {
            Accel::Kvm => "Kvm".into(),
            Accel::Tcg => format!("Tcg (thread={})", tcg_thread()),
        }
    }

    pub fn qemu_args(self) -> Vec<String> {
        match self {
            Accel::Kvm => ["-accel", "kvm", "-cpu", "host"].iter().map(|s| s.to_string()).collect(),
            Accel::Tcg => {
                let mut o = "tcg".to_string();
                if let Some(mib) = tcg_tb_mib() {
                    o.push_str(&format!(",tb-size={mib}"));
                }
                o.push_str(&format!(",thread={}", tcg_thread()));
                vec!["-accel".into(), o]
            }
        }
    }
}

/// TCG's translation cache per VM in MiB (`STRATO_TCG_TB_MIB`); QEMU's default otherwise.
pub fn tcg_tb_mib() -> Option<u32> {
    std::env::var("STRATO_TCG_TB_MIB").ok().and_then(|v| v.parse().ok()).filter(|m| *m >= 1)
}

/// How TCG runs a VM's vCPUs (`STRATO_TCG_THREAD`): `single` (Strato's default) runs them
/// all in one host thread, in turn; `multi` (QEMU's default on x86 hosts) gives each vCPU a
/// host thread of its own.
///
/// Single by default for two reasons.
/// - Many 2-vCPU VMs busy at once on few host cores use less CPU each.
/// - A fault seen with multi-threaded TCG (QEMU 7.2): a 2-vCPU guest's boot hung before
///   its init, after RebootInstances under host load. vCPU 0's local APIC held the timer
///   vector in service with no EOI to come (ISR 0xec; its LVT timer periodic with a one-shot
///   count), so nothing reached vCPU 0 again.
///   - Multi: once in CI and once in ~1250 looped reboots.
///   - Single: no hang in 1302.
///   - That does not prove single immune.
///
/// What it costs and gives, measured with `strato bench fast-launch` (t3.nano, 2 cores):
/// one restored alone 0.80 -> 1.08 s (its two vCPUs no longer run side by side while TCG
/// translates the guest's paths afresh), one from the warm pool 0.38 -> 0.35 s, one cold
/// 1.40 -> 1.48 s; 20 from the warm pool at once, the last login 5.64 -> 5.31 s (QEMU CPU
/// per VM 0.49 -> 0.44 s; 5.41 -> 4.00 s on another day); and a guest's vCPUs never use
/// more than one host core. Any other value: single. KVM is not concerned.
pub fn tcg_thread() -> &'static str {
    match std::env::var("STRATO_TCG_THREAD").as_deref() {
        Ok("multi") => "multi",
        _ => "single",
    }
}

/// Picks the accelerator and says why.
pub fn detect_accel() -> (Accel, String) {
    match std::env::var("STRATO_ACCEL").as_deref() {
        Ok("kvm") => return (Accel::Kvm, "STRATO_ACCEL=kvm".into()),
        Ok("tcg") => return (Accel::Tcg, "STRATO_ACCEL=tcg".into()),
        _ => {}
    }
    let dev = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo.lines().find(|l| l.starts_with("flags")).unwrap_or("");
    let vt = flags.split_whitespace().any(|f| f == "vmx" || f == "svm");
    match (dev, vt) {
        (true, true) => (Accel::Kvm, "/dev/kvm and hardware virtualisation (vmx/svm)".into()),
        (true, false) => {
            (Accel::Tcg, "/dev/kvm exists but the CPU has no vmx/svm flag (nested PVM): software emulation".into())
        }
        (false, _) => (Accel::Tcg, "no usable /dev/kvm: software emulation".into()),
    }
}

/// The timer frequency (`CONFIG_HZ`) of the kernels Strato's images boot: Debian's and
/// Strato's guest kernel.
const GUEST_HZ: u64 = 250;

/// The guest's TSC rate as the kernels of Strato's images are told it: the host's (the
/// guest's TSC runs at the host's rate under TCG and KVM alike), measured once against the
/// monotonic clock over 20 ms and rounded up to 10 MHz (the same value at every start of the
/// agent, so launch snapshots keep their command line; within the 1% the guest kernel's own
/// refinement of it, a second after its boot, accepts). `None` on a host without an x86 TSC
/// of constant rate. Measured by `guest_clock_args`, once.
fn guest_tsc_hz() -> Option<u64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let flags = cpuinfo.lines().find(|l| l.starts_with("flags"))?;
    if !flags.split_whitespace().any(|f| f == "constant_tsc") {
        return None;
    }
    let step = 10_000_000;
    Some(tsc_hz()?.div_ceil(step) * step)
}

/// Whether the host's kernel keeps its own time by the TSC: it found the TSCs of its CPUs
/// in step, which the guest's vCPUs (host threads reading it) then are too.
fn host_clock_is_tsc() -> bool {
    std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
        .is_ok_and(|c| c.trim() == "tsc")
}

/// What the command line of a Strato image's kernel says of its clocks, to append (or
/// nothing): `lpj=`, the loops per jiffy of the delay loop, which counts TSC cycles (each
/// vCPU after the first calibrates it otherwise, and under TCG that fails and falls back to
/// a slow loop: ~150 ms of a 2-vCPU guest's boot; rounded up with the rate, a udelay is
/// slightly long, never short), and the TSC's rate (`tsc_early_khz=`), which the kernel
/// otherwise measures against the HPET or the PIT; on a host whose own clock is the TSC,
/// `tsc=reliable` and no ACPI PM timer (`pmtmr=0`). Each of these is a wait on a timer that
/// a TCG guest spends in full: the TSC's calibration (~70 ms), the PM timer's check against
/// the PIT (~35 ms), and with 2 vCPUs the TSCs' sync check, which under TCG finds them out
/// of step and leaves the guest on the HPET, every clock read an emulated device access
/// (bare QEMU A/B, 2 vCPUs: the init's first line 1.11 -> 1.02 s, medians of 8).
/// Made once (the host's clocks do not change while it runs), not at every launch.
pub fn guest_clock_args() -> String {
    static ARGS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ARGS.get_or_init(|| {
        let Some(hz) = guest_tsc_hz() else {
            return String::new();
        };
        let mut args = format!(" lpj={} tsc_early_khz={}", hz / GUEST_HZ, hz / 1000);
        if host_clock_is_tsc() {
            args.push_str(" tsc=reliable pmtmr=0");
        }
        args
    })
    .clone()
}

#[cfg(target_arch = "x86_64")]
fn tsc_hz() -> Option<u64> {
    // SAFETY: RDTSC has no preconditions on x86_64.
    let tsc = || unsafe { core::arch::x86_64::_rdtsc() };
    let (t0, c0) = (Instant::now(), tsc());
    std::thread::sleep(Duration::from_millis(20));
    let (c1, t1) = (tsc(), Instant::now());
    let ns = t1.duration_since(t0).as_nanos();
    let hz = u128::from(c1.checked_sub(c0)?) * 1_000_000_000 / ns.max(1);
    u64::try_from(hz).ok().filter(|h| *h > 0)
}

#[cfg(not(target_arch = "x86_64"))]
fn tsc_hz() -> Option<u64> {
    None
}

/// The SMBIOS system UUID (and serial) of an instance: starting with `ec2` and equal to the
/// serial, it tells cloud-init that it runs on EC2 (so it uses the EC2 datasource with
/// IMDSv2 tokens). Derived from the instance id, so it stays the same across boots.
pub fn ec2_uuid(instance_id: &str) -> String {
    use sha2::Digest;
    let h = hex::encode(sha2::Sha256::digest(instance_id.as_bytes()));
    let x = format!("ec2{}", &h[..29]);
    format!("{}-{}-{}-{}-{}", &x[0..8], &x[8..12], &x[12..16], &x[16..20], &x[20..32])
}

/// The `-netdev` of a guest whose only network is the metadata link: QEMU's user network in
/// `restrict=on` mode (no packet leaves QEMU), laid out on 169.254.169.0/24 so that
/// 169.254.169.254:80 is inside it and forwarded to `strato metadata serve-stdio`, one
/// process per connection. `ssh_port` forwards a loopback port of the host to the guest's 22.
pub fn metadata_netdev(strato_bin: &Path, config: &Path, ssh_port: Option<u16>) -> anyhow::Result<String> {
    // QEMU runs the guestfwd command through a shell: only plain paths may go in it.
    let plain = |p: &Path| -> anyhow::Result<String> {
        let s = p.display().to_string();
        if s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b)) {
            Ok(s)
        } else {
            bail!("{s}: QEMU runs the metadata command through a shell, so its path must be plain")
        }
    };
    let fwd = ssh_port.map(|p| format!("hostfwd=tcp:127.0.0.1:{p}-:22,")).unwrap_or_default();
    Ok(format!(
        "user,id=n0,restrict=on,net=169.254.169.0/24,host=169.254.169.2,dhcpstart=169.254.169.15,{fwd}\
         guestfwd=tcp:169.254.169.254:80-cmd:{} metadata serve-stdio --config {}",
        plain(strato_bin)?,
        plain(config)?
    ))
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// The run directory (socket, console, pid file).
    pub run_dir: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    /// The root disk, a qcow2 file (an overlay on the image).
    pub root_disk: PathBuf,
    /// SMBIOS system UUID and serial.
    pub uuid: String,
    /// One NIC: a `-netdev` value (id `n0`) and its MAC.
    pub netdev: Option<(String, String)>,
    /// The network namespace QEMU runs in (its tap lives there).
    pub netns: Option<String>,
    /// Hot-plug slots for volumes: with any, a PCIe-to-PCI bridge (`HOTPLUG_BUS`) whose
    /// slots 1..=N take them (ACPI hot-plug, which both guest kernels have built in).
    pub hotplug_ports: u32,
    /// Volumes present from the start, each in the next free slot.
    pub volumes: Vec<VolumeDisk>,
    /// The instance store: a scratch disk (serial `ephemeral0`) made fresh for each start.
    pub ephemeral: Option<PathBuf>,
    /// Part of a launch snapshot (see `agent::snapshot`), or not.
    pub snapshot: LaunchSnapshot,
    /// A cold boot's identity line (`agent::snapshot::identity`), handed to the guest as the
    /// firmware file `opt/strato/identity` (fw_cfg): a file QEMU reads at its start.
    pub identity: Option<PathBuf>,
    /// A cold boot that starts paused (`-S`), for the caller to set its NIC's link before
    /// it runs (`cont`).
    pub paused: bool,
    /// Boots on qboot (`QBOOT_ROM`) rather than SeaBIOS, with no `vmgenid` device: for cold
    /// boots of kernels that can (`image::boots_on_qboot`).
    pub qboot: bool,
}

/// QEMU's minimal firmware (Debian's `qemu-system-data`).
pub const QBOOT_ROM: &str = "/usr/share/qemu/qboot.rom";

/// Whether this host has qboot.
pub fn have_qboot() -> bool {
    Path::new(QBOOT_ROM).is_file()
}

/// How a VM takes part in a launch snapshot. The template VM and the VMs restored from it
/// have the same devices (the migration stream needs that): guest RAM in a file, a NIC with
/// the template's MAC (`TEMPLATE_MAC`: the guest sets its own before the link goes up), and
/// a second serial port (the guest's ttyS1) on a socket, `identity.sock` in the run dir, by
/// which the agent hands a restored guest its identity (see `agent::snapshot`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LaunchSnapshot {
    #[default]
    None,
    /// Boots to the snapshot point; its RAM is a shared mapping of `ram`, so that saving
    /// with `x-ignore-shared` leaves the RAM in the file rather than in the stream. Its NIC
    /// is connected to nothing.
    Template { ram: PathBuf },
    /// Starts paused for `migrate-incoming`, its RAM a private (copy-on-write) mapping of
    /// the template's file: clones share the pages they do not write. Its NIC is on the
    /// instance's tap.
    Restore { ram: PathBuf, tap: String },
}

/// The bus of a VM's hot-plug slots: a `pcie-pci-bridge` on the root complex (slot 0 is
/// left empty).
pub const HOTPLUG_BUS: &str = "hpb";

/// The fw_cfg name of a cold boot's identity (the guest reads
/// /sys/firmware/qemu_fw_cfg/by_name/opt/strato/identity/raw).
pub const IDENTITY_FW_CFG: &str = "opt/strato/identity";

/// The MAC of a launch snapshot's NIC as QEMU knows it (locally administered). A restored
/// guest sets the instance's MAC (virtio-net's control queue: QEMU follows) before its link
/// goes up, so no frame ever carries this one; after a reset QEMU shows it again and the
/// guest sets its MAC again.
pub const TEMPLATE_MAC: &str = "02:00:00:00:00:01";

/// An EBS volume as a VM sees it.
#[derive(Debug, Clone)]
pub struct VolumeDisk {
    pub path: PathBuf,
    /// The volume id (`vol-...`): names the block node, the device and its serial.
    pub volume_id: String,
}

impl VolumeDisk {
    fn hex(&self) -> &str {
        self.volume_id.trim_start_matches("vol-")
    }

    /// The block node's name.
    pub fn node(&self) -> String {
        format!("bd{}", self.hex())
    }

    /// The PCI device's id.
    pub fn device_id(&self) -> String {
        format!("vd-{}", self.hex())
    }

    /// The disk serial the guest sees (`vol0123...`, as EC2's NVMe volumes show it).
    pub fn serial(&self) -> String {
        format!("vol{}", self.hex())
    }

    /// The block node, its file opened by QEMU at `filename` (the volume's path, or
    /// `/dev/fdset/N` for a descriptor handed over: a VM running as its own user opens no
    /// volume file itself).
    pub fn blockdev_at(&self, filename: &str) -> serde_json::Value {
        serde_json::json!({
            "driver": "qcow2",
            "node-name": self.node(),
            "discard": "unmap",
            "file": {"driver": "file", "filename": filename}
        })
    }

    /// The device in hot-plug slot `slot` (0-based) of the VM's bridge.
    pub fn device(&self, slot: u32) -> serde_json::Value {
        self.device_on(HOTPLUG_BUS, &format!("{:x}", slot + 1))
    }

    /// The device in empty PCIe root port `hp<port>`, as VMs started by Strato before the
    /// bridge had them (a root port's bus has one slot the guest scans: address 0).
    pub fn legacy_device(&self, port: u32) -> serde_json::Value {
        self.device_on(&format!("hp{port}"), "0")
    }

    fn device_on(&self, bus: &str, addr: &str) -> serde_json::Value {
        serde_json::json!({
            "driver": "virtio-blk-pci",
            "id": self.device_id(),
            "drive": self.node(),
            "bus": bus,
            "addr": addr,
            "serial": self.serial()
        })
    }
}

impl VmSpec {
    pub fn qmp_path(&self) -> PathBuf {
        self.run_dir.join("qmp.sock")
    }

    pub fn console_path(&self) -> PathBuf {
        self.run_dir.join("console.log")
    }

    pub fn pid_path(&self) -> PathBuf {
        self.run_dir.join("qemu.pid")
    }

    /// A launch snapshot VM's identity channel (its second serial port).
    pub fn identity_path(&self) -> PathBuf {
        self.run_dir.join("identity.sock")
    }

    /// QEMU's argument vector (no shell ever sees it). No PS/2 controller (`i8042=off`):
    /// probing it cost the guest kernel 0.6 s of a 1.7 s boot under TCG, and a cloud guest
    /// has only a serial console; no SATA controller and no SMBus either (virtio disks
    /// only): the firmware and the guest kernel probe them for nothing (20-50 ms of a TCG
    /// boot, bare A/B).
    pub fn argv(&self, accel: Accel) -> Vec<String> {
        let mut a: Vec<String> = [
            "-M",
            "q35,i8042=off,sata=off,smbus=off",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-monitor",
            "none",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(accel.qemu_args());
        a.extend([
            "-smp".into(),
            self.vcpus.to_string(),
            "-m".into(),
            self.memory_mib.to_string(),
            "-uuid".into(),
            self.uuid.clone(),
            "-smbios".into(),
            format!("type=1,serial={}", self.uuid),
            "-kernel".into(),
            self.kernel.display().to_string(),
            "-append".into(),
            self.cmdline.clone(),
            "-drive".into(),
            format!("file={},format=qcow2,if=virtio,cache=writeback,discard=unmap", self.root_disk.display()),
            // Entropy for the guest from the host's.
            "-device".into(),
            "virtio-rng-pci".into(),
            // Appending: a restored VM's console continues the template's boot.
            "-chardev".into(),
            format!("file,id=ser0,path={},append=on", self.console_path().display()),
            "-serial".into(),
            "chardev:ser0".into(),
        ]);
        if self.qboot {
            a.extend(["-bios".into(), QBOOT_ROM.into()]);
        } else {
            // A new generation id after a restore: the guest kernel reseeds its RNG.
            a.extend(["-device".into(), "vmgenid,id=vmgenid0,guid=auto".into()]);
        }
        a.extend([
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", self.qmp_path().display()),
            "-pidfile".into(),
            self.pid_path().display().to_string(),
            // seccomp; `spawn=deny` and `elevateprivileges=deny` break -daemonize (QEMU 7.2).
            "-sandbox".into(),
            "on,obsolete=deny,resourcecontrol=deny".into(),
            "-daemonize".into(),
        ]);
        if let Some(i) = &self.initrd {
            a.extend(["-initrd".into(), i.display().to_string()]);
        }
        if let Some(f) = &self.identity {
            a.extend(["-fw_cfg".into(), format!("name={IDENTITY_FW_CFG},file={}", f.display())]);
        }
        if self.paused && self.snapshot == LaunchSnapshot::None {
            a.push("-S".into());
        }
        // Behind its own root port, so that it enumerates after the root disk (vda).
        if let Some(e) = &self.ephemeral {
            a.extend([
                "-drive".into(),
                format!("file={},format=qcow2,if=none,id=eph0,cache=writeback,discard=unmap", e.display()),
                "-device".into(),
                "pcie-root-port,id=ephp,chassis=64".into(),
                "-device".into(),
                "virtio-blk-pci,drive=eph0,serial=ephemeral0,bus=ephp".into(),
            ]);
        }
        // One bridge for every hot-plug slot: eight empty PCIe root ports (one device each)
        // cost a TCG guest's kernel ~0.15 s of its boot to enumerate and set up.
        if self.hotplug_ports > 0 {
            a.extend(["-device".into(), format!("pcie-pci-bridge,id={HOTPLUG_BUS}")]);
        }
        for (n, v) in self.volumes.iter().enumerate() {
            a.extend(["-blockdev".into(), v.blockdev_at(&v.path.display().to_string()).to_string()]);
            a.extend([
                "-device".into(),
                format!(
                    "virtio-blk-pci,id={},drive={},bus={HOTPLUG_BUS},addr={:x},serial={}",
                    v.device_id(),
                    v.node(),
                    n + 1,
                    v.serial()
                ),
            ]);
        }
        match &self.snapshot {
            LaunchSnapshot::None => {}
            LaunchSnapshot::Template { ram } | LaunchSnapshot::Restore { ram, .. } => {
                let share = if matches!(self.snapshot, LaunchSnapshot::Template { .. }) { "on" } else { "off" };
                a.extend([
                    "-object".into(),
                    format!(
                        "memory-backend-file,id=ram0,size={}M,mem-path={},share={share}",
                        self.memory_mib,
                        ram.display()
                    ),
                    "-machine".into(),
                    "memory-backend=ram0".into(),
                    "-chardev".into(),
                    format!("socket,id=idc,path={},server=on,wait=off", self.identity_path().display()),
                    "-serial".into(),
                    "chardev:idc".into(),
                ]);
                match &self.snapshot {
                    LaunchSnapshot::Restore { tap, .. } => a.extend([
                        "-netdev".into(),
                        format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
                        "-device".into(),
                        format!("virtio-net-pci,id=nic0,netdev=n0,mac={TEMPLATE_MAC}"),
                        // Paused after the load, until it has its identity (`cont`).
                        "-incoming".into(),
                        "defer".into(),
                        "-S".into(),
                    ]),
                    _ => a.extend(["-device".into(), format!("virtio-net-pci,id=nic0,mac={TEMPLATE_MAC}")]),
                }
            }
        }
        if let Some((netdev, mac)) = &self.netdev {
            a.extend([
                "-netdev".into(),
                netdev.clone(),
                "-device".into(),
                format!("virtio-net-pci,netdev=n0,mac={mac}"),
            ]);
        }
        a
    }
}

/// Whether VMs may use transparent huge pages (`STRATO_VM_HUGEPAGES=on`). Off by default:
/// QEMU asks for huge pages on TCG's translation buffer (1 GiB reserved), so every bit of
/// guest code it translates costs the host a whole 2 MiB page: about 30 MiB of an idle
/// minimal VM's ~90 MiB (measured with /proc/PID/smaps: `AnonHugePages`).
pub fn huge_pages() -> bool {
    std::env::var("STRATO_VM_HUGEPAGES").is_ok_and(|v| v == "on")
}

/// In a run directory that QEMU was not started in: the one it was (its command line names
/// that one's socket).
pub const HOME_FILE: &str = "started-in";

/// A running QEMU, by pid and run directory.
#[derive(Debug, Clone)]
pub struct Vm {
    pub pid: u32,
    pub run_dir: PathBuf,
}

impl Vm {
    /// Starts QEMU; returns once it has daemonized (the guest boots on).
    pub fn launch(spec: &VmSpec, accel: Accel) -> anyhow::Result<Vm> {
        std::fs::create_dir_all(&spec.run_dir).with_context(|| format!("creating {}", spec.run_dir.display()))?;
        // A warm-pool VM's `HOME_FILE` (its run dir became this instance's) is not this one's.
        for p in [spec.qmp_path(), spec.pid_path(), spec.run_dir.join(HOME_FILE)] {
            let _ = std::fs::remove_file(p);
        }
        // In the VPC's network namespace by setns(2) between fork and exec, as `ip netns exec`
        // would (QEMU needs none of the mount namespace that also makes), without its
        // process: 5-10 ms of every launch.
        let netns = match &spec.netns {
            Some(ns) => Some(
                std::fs::File::open(Path::new("/run/netns").join(ns))
                    .with_context(|| format!("opening the network namespace {ns}"))?,
            ),
            None => None,
        };
        let netns_fd = netns.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
        let no_thp = !huge_pages();
        let mut cmd = Command::new("qemu-system-x86_64");
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: between fork and exec only setns(2) and prctl(2) run, which are
            // async-signal-safe; the namespace's file stays open until QEMU has started. The
            // THP setting is inherited through QEMU's daemonizing fork.
            unsafe {
                cmd.pre_exec(move || {
                    if let Some(fd) = netns_fd {
                        if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    if no_thp {
                        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
                    }
                    Ok(())
                });
            }
        }
        let mut argv = spec.argv(accel);
        // Launch snapshots' templates and restored VMs stay root's for now: saving a template
        // inactivates its disk and a restore activates it, and QEMU then reopens the disk by
        // path, which a QEMU running as its own user may not (the data dir is 0700, every
        // disk root's). Handing QEMU both a read-only and a read-write descriptor of each disk
        // in an fd set (as libvirt does) would lift this; not done yet.
        let snapshotted = spec.snapshot != LaunchSnapshot::None;
        if let Some(uid) = pick_vm_user(&spec.run_dir).filter(|_| !snapshotted) {
            argv.extend(["-runas".into(), format!("{uid}:{uid}")]);
        }
        let out = cmd.args(argv).output().context("running qemu-system-x86_64")?;
        drop(netns);
        if !out.status.success() {
            bail!(
                "qemu-system-x86_64 failed to start ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        // `-daemonize` sets QEMU's umask to 027: its sockets and pid file lose the group bits
        // here (the run directory is 0700 already).
        crate::secrets::make_private(&spec.run_dir)?;
        Vm::adopt(&spec.run_dir).context("QEMU started but wrote no usable pid file")
    }

    /// Finds a VM again from its run directory: the pid file must name a live QEMU whose
    /// command line points at this directory, or at the one it was started in (`HOME_FILE`:
    /// a warm-pool VM's directory is renamed to its instance's).
    pub fn adopt(run_dir: &Path) -> Option<Vm> {
        let pid: u32 = std::fs::read_to_string(run_dir.join("qemu.pid")).ok()?.trim().parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let home = match std::fs::read_to_string(run_dir.join(HOME_FILE)) {
            Ok(h) => PathBuf::from(h.trim_end()),
            Err(_) => run_dir.to_owned(),
        };
        let marker = home.join("qmp.sock").display().to_string();
        let ours = cmdline.split(|b| *b == 0).any(|arg| String::from_utf8_lossy(arg).contains(&marker));
        ours.then(|| Vm { pid, run_dir: run_dir.to_owned() })
    }

    /// The user its QEMU runs as (from `/proc`), if it is running.
    pub fn user(&self) -> Option<u32> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.parse().ok()
    }

    pub fn alive(&self) -> bool {
        Vm::adopt(&self.run_dir).is_some_and(|v| v.pid == self.pid)
    }

    pub async fn qmp(&self) -> Result<qmp::Qmp, qmp::QmpError> {
        qmp::Qmp::connect(&self.run_dir.join("qmp.sock")).await
    }

    pub fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.run_dir.join("console.log")).unwrap_or_default()).into_owned()
    }

    /// Waits until the process is gone.
    pub async fn wait_gone(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.alive() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        !self.alive()
    }

    /// Ends QEMU now: QMP `quit`, and SIGKILL (by its pid, which is ours) if that fails.
    pub async fn kill(&self) {
        if let Ok(mut q) = self.qmp().await {
            let _ = q.quit().await;
        }
        if !self.wait_gone(Duration::from_secs(5)).await && self.alive() {
            let _ = Command::new("kill").arg("-KILL").arg(self.pid.to_string()).status();
            self.wait_gone(Duration::from_secs(5)).await;
        }
    }
}

/// The users VMs run as: each QEMU drops root (`-runas UID:GID`, after it opened its disks,
/// tap, kernel and sockets, before the guest runs) to a user and group of its own from this
/// range, so that a guest that escapes QEMU holds no capability and can open none of the
/// host's or other VMs' files (all root's, 0600). `None`: VMs run as root.
static VM_USERS: std::sync::OnceLock<Option<(u32, u32)>> = std::sync::OnceLock::new();

/// The default range of VM users: `DEFAULT_VM_USERS.0` and the next `.1 - 1` ids.
pub const DEFAULT_VM_USERS: (u32, u32) = (2_900_000_000, 65_536);

/// Sets the range of VM users (`serve --vm-users`), once, before any VM starts.
pub fn set_vm_users(range: Option<(u32, u32)>) {
    let _ = VM_USERS.set(range);
}

fn vm_users() -> Option<(u32, u32)> {
    *VM_USERS.get_or_init(|| Some(DEFAULT_VM_USERS))
}

/// A user for a new VM: from the range, one no running QEMU of this host uses (probing from
/// a hash of its run directory).
fn pick_vm_user(run_dir: &Path) -> Option<u32> {
    let (base, count) = vm_users()?;
    let taken: std::collections::HashSet<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let runas = args.windows(2).find(|w| w[0] == b"-runas")?[1];
            std::str::from_utf8(runas).ok()?.split(':').next()?.parse().ok()
        })
        .collect();
    let start = u64::from_str_radix(&crate::net::short_hash(&run_dir.display().to_string(), 8), 16).unwrap_or(0);
    (0..u64::from(count)).map(|n| base + ((start + n) % u64::from(count)) as u32).find(|uid| !taken.contains(uid))
}

/// The pids of the QEMUs started from `data_dir`: those whose QMP socket (on their command
/// line) is under it.
pub fn qemus_of(data_dir: &Path) -> Vec<u32> {
    let prefix = format!("unix:{}/", data_dir.display());
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let qemu = args.first().is_some_and(|a| a.ends_with(b"qemu-system-x86_64"));
            let ours = args.windows(2).any(|w| w[0] == b"-qmp" && w[1].starts_with(prefix.as_bytes()));
            (qemu && ours).then_some(pid)
        })
        .collect()
}

/// Ends the QEMUs of `data_dir` that no run directory names any more (an instance's, a
/// launch snapshot's, a warm-pool VM's): no VM may outlive the record of it. Returns how
/// many it ended.
pub async fn end_orphans(data_dir: &Path) -> usize {
    let mut known = std::collections::HashSet::new();
    for sub in ["instances", "launch-snapshots", "warm-pool"] {
        for e in std::fs::read_dir(data_dir.join(sub)).into_iter().flatten().flatten() {
            if let Some(vm) = Vm::adopt(&e.path()) {
                known.insert(vm.pid);
            }
        }
    }
    let mut ended = 0;
    for pid in qemus_of(data_dir).into_iter().filter(|p| !known.contains(p)) {
        tracing::warn!(pid, data_dir = %data_dir.display(), "ending a QEMU no run directory names");
        let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
        ended += 1;
    }
    ended
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_has_the_pieces() {
        let spec = VmSpec {
            run_dir: "/run/strato/i-1".into(),
            vcpus: 2,
            memory_mib: 512,
            kernel: "/k".into(),
            initrd: Some("/i".into()),
            cmdline: "console=ttyS0".into(),
            root_disk: "/d.qcow2".into(),
            uuid: "ec2aaaaa-0000-4000-8000-000000000000".into(),
            netdev: None,
            netns: None,
            hotplug_ports: 0,
            volumes: Vec::new(),
            ephemeral: None,
            snapshot: LaunchSnapshot::None,
            identity: Some("/run/strato/i-1/identity".into()),
            paused: false,
            qboot: false,
        };
        let a = spec.argv(Accel::Tcg);
        let joined = a.join(" ");
        assert!(joined.contains("-accel tcg"));
        assert!(joined.contains("-smp 2 -m 512"));
        assert!(joined.contains("-daemonize"));
        assert!(joined.contains("file=/d.qcow2,format=qcow2,if=virtio"));
        assert!(joined.contains("-initrd /i"));
        assert!(joined.contains("-fw_cfg name=opt/strato/identity,file=/run/strato/i-1/identity"));
        assert!(!a.contains(&"-S".to_owned()));
        let paused = VmSpec { paused: true, ..spec.clone() };
        assert!(paused.argv(Accel::Tcg).contains(&"-S".to_owned()));
        assert!(Vm::adopt(Path::new("/nonexistent")).is_none());
    }

    #[test]
    fn volumes_go_into_the_hot_plug_bridge() {
        let disk = |id: &str| VolumeDisk { path: format!("/v/{id}.qcow2").into(), volume_id: id.into() };
        let spec = VmSpec {
            run_dir: "/run/strato/i-1".into(),
            vcpus: 1,
            memory_mib: 256,
            kernel: "/k".into(),
            initrd: None,
            cmdline: "console=ttyS0".into(),
            root_disk: "/d.qcow2".into(),
            uuid: "ec2aaaaa-0000-4000-8000-000000000000".into(),
            netdev: None,
            netns: None,
            hotplug_ports: 8,
            volumes: vec![disk("vol-0a"), disk("vol-0b")],
            ephemeral: None,
            snapshot: LaunchSnapshot::None,
            identity: None,
            paused: false,
            qboot: false,
        };
        let a = spec.argv(Accel::Tcg);
        assert_eq!(a.iter().filter(|x| x.starts_with("pcie-pci-bridge")).count(), 1, "{a:?}");
        assert!(!a.iter().any(|x| x.starts_with("pcie-root-port")), "{a:?}");
        assert!(a.contains(&"virtio-blk-pci,id=vd-0a,drive=bd0a,bus=hpb,addr=1,serial=vol0a".to_owned()), "{a:?}");
        assert!(a.contains(&"virtio-blk-pci,id=vd-0b,drive=bd0b,bus=hpb,addr=2,serial=vol0b".to_owned()), "{a:?}");
        // Slot 9 is address 0xa; a VM started before the bridge has root ports.
        assert_eq!(disk("vol-0c").device(9)["addr"], "a");
        assert_eq!(disk("vol-0c").device(0)["bus"], HOTPLUG_BUS);
        assert_eq!(disk("vol-0c").legacy_device(3)["bus"], "hp3");
        assert_eq!(disk("vol-0c").legacy_device(3)["addr"], "0");
        let none = VmSpec { hotplug_ports: 0, volumes: Vec::new(), ..spec };
        assert!(!none.argv(Accel::Tcg).iter().any(|x| x.contains("bridge")));
    }
}
