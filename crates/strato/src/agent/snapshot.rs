//! Launch snapshots: instances of Strato's minimal images restored from a pre-booted VM
//! instead of booting.
//!
//! For each (image, vCPUs, memory) the agent boots a template VM once (in the background,
//! the first time an instance of that kind launches cold): the image's kernel with
//! `strato.snapshot` on its command line, its RAM in a file mapped shared, a NIC with the
//! template's MAC connected to nothing, and a second serial port on a socket: the identity
//! channel. Its init stops at the snapshot point, before anything instance-specific (no
//! address, no key, no host keys, no hostname, its NIC down), and waits for a line on that
//! port. The agent then saves it: QMP `stop`, and `migrate` to a file with `x-ignore-shared`
//! (the RAM stays in its file, the stream holds the device state); QEMU exits and the
//! template's disk overlay is final.
//!
//! A launch from it: the instance's root volume is a copy of the template's overlay (a few
//! hundred KiB, backed by the image's disk like any root volume, never by the template), a
//! new QEMU with the same devices (the NIC now on the instance's tap) starts paused with
//! `-incoming defer` and the template's RAM file mapped private (copy-on-write: clones
//! share every page they do not write), loads the stream, is written the instance's
//! identity on the channel (`identity`: MAC, address, router, DNS server, a new SSH host
//! key, the key pair's public key) and runs on. Its sshd runs since the template (started
//! before the snapshot point with no host key: each connection reads the key file). Once
//! its kernel has reseeded its RNG on the new VM generation id that QEMU gives every restored
//! VM, the guest writes the two keys, gives its NIC the instance's MAC before the link goes
//! up, sets the address as DHCP would have, keeps the line for its reboots, and continues its
//! boot: clock from the metadata service, metadata, key (again), user data. (The first
//! format hot-plugged the instance's NIC after the restore and ran DHCP: 0.35 s more; sshd
//! after the metadata, as in a cold boot, was 0.3 s more.) The warm pool (`pool`) restores
//! such VMs ahead of their launch.
//!
//! Files: `DATA_DIR/launch-snapshots/<ami>-<vcpus>c-<MiB>m/` with `disk.qcow2`, `ram`,
//! `state`, `console.log`; made under `.tmp` and renamed when complete, so a crash leaves
//! either a whole snapshot or a `.tmp` that the next build replaces. A snapshot belongs to
//! one AMI id (a rebuilt image or kernel is a new AMI, so a new snapshot); the snapshots of
//! deregistered images are removed (VMs restored from one keep their private mapping of
//! its RAM file, which lives on until they end).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::control::model::Image;
use crate::hypervisor::{ec2_uuid, Accel, LaunchSnapshot, Vm, VmSpec};

/// The console line at which the template's init waits for its NIC.
pub const SNAPSHOT_POINT: &str = "STRATO-BOOT: snapshot point";
/// The devices of the snapshots made by this version (part of each snapshot's name). 3: one
/// hot-plug bridge in place of eight PCIe root ports, no SATA controller or SMBus; 2: the
/// NIC in the template and an identity channel (1 was a NIC hot-plugged after the restore).
const FORMAT: &str = "v3";
/// How long a template may take to reach the snapshot point.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// After a failed build, how long before another try.
const RETRY_AFTER: Duration = Duration::from_secs(300);

/// Whether an image's guest stops at the snapshot point when asked: Strato's minimal
/// images, whose init knows `strato.snapshot`, on Strato's guest kernel or on Debian's
/// (both reseed their RNG on a new VM generation id: `CONFIG_VMGENID=y`).
pub fn image_supports(image: &Image) -> bool {
    (image.name == crate::control::images::FAST_IMAGE_NAME || image.name == crate::image::Kind::Minimal.image_name())
        && image.owner.as_str() == crate::control::images::STRATO_OWNER_ID
}

/// A complete launch snapshot on disk.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub dir: PathBuf,
}

impl Snapshot {
    pub fn disk(&self) -> PathBuf {
        self.dir.join("disk.qcow2")
    }
    pub fn ram(&self) -> PathBuf {
        self.dir.join("ram")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }
    pub fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    /// Its name: image, size and format (`Snapshots::key`).
    pub fn key(&self) -> String {
        self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }
}

/// The kernel command line of an instance booted cold: the image's, its root, and for
/// Strato's images (whose kernels Strato knows: their `CONFIG_HZ`, their clocks) what the
/// host tells them of their clocks (`hypervisor::guest_clock_args`).
pub fn boot_cmdline(image: &Image) -> String {
    let clocks = if image.owner.as_str() == crate::control::images::STRATO_OWNER_ID {
        crate::hypervisor::guest_clock_args()
    } else {
        String::new()
    };
    format!("{} root=/dev/vda{clocks}", image.cmdline)
}

/// The kernel command line of a template and of every VM restored from it.
pub fn cmdline(image: &Image) -> String {
    format!("{} strato.snapshot", boot_cmdline(image))
}

/// The template's devices, which every restored VM repeats.
pub fn spec(
    image: &Image,
    run_dir: &Path,
    root_disk: PathBuf,
    vcpus: u32,
    memory_mib: u64,
    mode: LaunchSnapshot,
) -> VmSpec {
    VmSpec {
        run_dir: run_dir.to_owned(),
        vcpus,
        memory_mib,
        kernel: image.kernel_path.clone().into(),
        initrd: image.initrd_path.clone().map(Into::into),
        cmdline: cmdline(image),
        root_disk,
        uuid: ec2_uuid(run_dir.display().to_string().as_str()),
        netdev: None,
        netns: None,
        hotplug_ports: super::MAX_ATTACHED as u32,
        volumes: Vec::new(),
        ephemeral: None,
        snapshot: mode,
        identity: None,
        paused: false,
        qboot: false,
    }
}

/// The agent's launch snapshots: which are ready, which are being made.
pub struct Snapshots {
    dir: PathBuf,
    pub enabled: bool,
    building: HashMap<String, tokio::task::JoinHandle<()>>,
    /// When a build failed, per key (written by the build tasks).
    failed: Arc<Mutex<HashMap<String, Instant>>>,
}

impl Snapshots {
    pub fn new(data_dir: &Path, enabled: bool) -> Snapshots {
        Snapshots {
            dir: data_dir.join("launch-snapshots"),
            enabled,
            building: HashMap::new(),
            failed: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The snapshot's directory name. `FORMAT` marks the devices: a snapshot made by
    /// another version of Strato is never restored, and is pruned.
    fn key(image: &Image, vcpus: u32, memory_mib: u64) -> String {
        format!("{}-{vcpus}c-{memory_mib}m-{FORMAT}", image.id)
    }

    /// The complete snapshot for this image and size, if there is one.
    pub fn ready(&self, image: &Image, vcpus: u32, memory_mib: u64) -> Option<Snapshot> {
        let s = self.planned(image, vcpus, memory_mib);
        s.state().exists().then_some(s)
    }

    /// Where the snapshot for this image and size is (or will be, once made).
    pub fn planned(&self, image: &Image, vcpus: u32, memory_mib: u64) -> Snapshot {
        Snapshot { dir: self.dir.join(Self::key(image, vcpus, memory_mib)) }
    }

    /// Starts making the snapshot for this image and size in the background, unless it is
    /// there, being made, or failed a short while ago.
    pub fn ensure(&mut self, image: &Image, vcpus: u32, memory_mib: u64, accel: Accel) {
        let key = Self::key(image, vcpus, memory_mib);
        self.building.retain(|_, h| !h.is_finished());
        let failed_lately = self.failed.lock().map(|f| f.get(&key).is_some_and(|t| t.elapsed() < RETRY_AFTER));
        if !self.enabled
            || self.ready(image, vcpus, memory_mib).is_some()
            || self.building.contains_key(&key)
            || failed_lately.unwrap_or(true)
        {
            return;
        }
        let dir = self.dir.join(&key);
        let image = image.clone();
        let failed = self.failed.clone();
        tracing::info!(snapshot = %key, "making a launch snapshot");
        let name = key.clone();
        let task = tokio::spawn(async move {
            match build(&dir, &image, vcpus, memory_mib, accel).await {
                Ok(()) => tracing::info!(snapshot = %key, "launch snapshot ready"),
                Err(e) => {
                    tracing::warn!(snapshot = %key, error = format!("{e:#}"), "launch snapshot failed; instances boot cold");
                    if let Ok(mut f) = failed.lock() {
                        f.insert(key, Instant::now());
                    }
                }
            }
        });
        self.building.insert(name, task);
    }
}

impl Snapshots {
    /// Removes the snapshots (and leftover `.tmp` builds) of images that are not registered
    /// any more; never one being made.
    pub fn prune(&mut self, images: &[String]) {
        self.building.retain(|_, h| !h.is_finished());
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let key = name.trim_end_matches(".tmp");
            let image = key.split('-').take(2).collect::<Vec<_>>().join("-");
            let current = key.ends_with(&format!("-{FORMAT}"));
            if (current && images.contains(&image)) || self.building.contains_key(key) {
                continue;
            }
            if let Some(vm) = Vm::adopt(&e.path()) {
                // A template of a build that died with the server.
                let _ = std::process::Command::new("kill").arg("-KILL").arg(vm.pid.to_string()).status();
            }
            match std::fs::remove_dir_all(e.path()) {
                Ok(()) => tracing::info!(snapshot = %name, "launch snapshot of a deregistered image removed"),
                Err(err) => tracing::warn!(snapshot = %name, error = %err, "could not remove a launch snapshot"),
            }
        }
    }
}

/// Boots the template and saves it at the snapshot point into `dir`.
async fn build(dir: &Path, image: &Image, vcpus: u32, memory_mib: u64, accel: Accel) -> anyhow::Result<()> {
    let tmp = dir.with_extension("tmp");
    // A template left running by a crash of the server ends first.
    if let Some(vm) = Vm::adopt(&tmp) {
        vm.kill().await;
    }
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let result = async {
        let disk = tmp.join("disk.qcow2");
        super::qemu_img_create(&disk, image.root_size_gb, Some((&image.disk_format, Path::new(&image.disk_path))))
            .await?;
        let spec = spec(image, &tmp, disk, vcpus, memory_mib, LaunchSnapshot::Template { ram: tmp.join("ram") });
        let t0 = Instant::now();
        let vm = tokio::task::spawn_blocking(move || Vm::launch(&spec, accel)).await??;
        let saved = async {
            while !vm.console().contains(SNAPSHOT_POINT) {
                anyhow::ensure!(vm.alive(), "the template VM ended before the snapshot point");
                anyhow::ensure!(t0.elapsed() < BOOT_TIMEOUT, "the template VM never reached the snapshot point");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let booted = t0.elapsed();
            let mut q = vm.qmp().await?;
            q.execute(
                "migrate-set-capabilities",
                Some(serde_json::json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})),
            )
            .await?;
            q.execute("migrate-set-parameters", Some(serde_json::json!({"max-bandwidth": 10u64 << 30}))).await?;
            q.execute("stop", None).await?;
            migrate_file(&mut q, "migrate", std::fs::File::create(tmp.join("state"))?).await?;
            tracing::info!(
                boot_ms = booted.as_millis() as u64,
                save_ms = (t0.elapsed() - booted).as_millis() as u64,
                "template saved"
            );
            anyhow::Ok(())
        }
        .await;
        vm.kill().await;
        saved
    }
    .await;
    match result {
        Ok(()) => {
            for name in ["qmp.sock", "qemu.pid"] {
                let _ = std::fs::remove_file(tmp.join(name));
            }
            // QEMU made its files (the RAM file, the console) with its own umask (027).
            crate::secrets::make_private(&tmp)?;
            let _ = std::fs::remove_dir_all(dir);
            std::fs::rename(&tmp, dir)?;
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            let _ = std::fs::remove_dir_all(dir);
            Err(e)
        }
    }
}

/// What a restored guest is told through its identity channel (and a cold-booted one finds
/// in its firmware file, `hypervisor::IDENTITY_FW_CFG`), one line of `key=value` words
/// (read by the minimal image's init): the instance id, its MAC, its address with the subnet's prefix,
/// the subnet's router and the VPC's DNS server, as DHCP would have given them, its SSH
/// host key (`host_key`, in printf's escapes: the init writes it with the shell's `printf`,
/// no program to start), and the key pair's public key (`ssh_key`, an OpenSSH line; sent
/// as `TYPE,BASE64` without its comment, left out if it is not of that form) so that sshd
/// can start before the metadata is read. None when this host's view of the VPC does not
/// have the instance (its network is not there yet).
pub fn identity(
    view: &crate::net::rules::VpcView,
    instance_id: &str,
    host_key: &[u8],
    ssh_key: Option<&str>,
) -> Option<String> {
    let i = view.instances.iter().find(|i| i.id == instance_id)?;
    let ip = crate::control::cidr::Ipv4Cidr { addr: u32::from(i.private_ip), prefix: 32 };
    let subnet = view.subnets.iter().find(|s| s.contains(&ip))?;
    let mut line = format!(
        "id={instance_id} mac={} ip={}/{} gw={}",
        i.mac,
        i.private_ip,
        subnet.prefix,
        std::net::Ipv4Addr::from(subnet.first() + 1)
    );
    // The first DNS server of the VPC's DHCP options (the image's init takes one).
    if let Some(dns) = view.dns_servers().first() {
        line.push_str(&format!(" dns={dns}"));
    }
    line.push_str(" hostkey=");
    line.push_str(&printf_escaped(host_key));
    if let Some((kind, data)) = ssh_key.and_then(authorized_key_words) {
        line.push_str(&format!(" sshkey={kind},{data}"));
    }
    line.push('\n');
    Some(line)
}

/// Bytes as a printf format that prints exactly them: letters and digits as they are,
/// every other byte a three-digit octal escape (so no `%`, `\\`, space or glob character is
/// left, and no digit after an escape is read as part of it).
pub fn printf_escaped(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("\\{b:03o}") })
        .collect()
}

/// An OpenSSH public key line's type and base64 key, if both are plain words (the comment,
/// which may hold anything, is dropped).
fn authorized_key_words(line: &str) -> Option<(&str, &str)> {
    let mut words = line.split_whitespace();
    let (kind, data) = (words.next()?, words.next()?);
    let kind_ok = kind.bytes().all(|b| b.is_ascii_alphanumeric() || b"@.-".contains(&b));
    let data_ok = data.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
    (kind_ok && data_ok).then_some((kind, data))
}

/// A new ed25519 SSH host key in dropbear's file format (SSH wire format: the string
/// `ssh-ed25519`, then a string of the 32-byte seed and the 32-byte public key). The agent
/// makes one for each restored instance: generating it takes a TCG guest's dropbearkey a
/// few hundred milliseconds of its CPU, the host a few microseconds.
pub fn dropbear_host_key() -> anyhow::Result<Vec<u8>> {
    let key = ssh_key::PrivateKey::random(&mut rand::rngs::OsRng, ssh_key::Algorithm::Ed25519)
        .map_err(|e| anyhow::anyhow!("generating a host key: {e}"))?;
    let pair = key.key_data().ed25519().context("an ed25519 key")?;
    let mut out = Vec::with_capacity(83);
    for part in [&b"ssh-ed25519"[..], &[pair.private.to_bytes().as_slice(), pair.public.0.as_slice()].concat()] {
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part);
    }
    Ok(out)
}

/// The public half of a key made by `dropbear_host_key`, as the base64 of an OpenSSH
/// `ssh-ed25519` line.
pub fn dropbear_public_key(key: &[u8]) -> Option<String> {
    use base64::Engine;
    let public = key.get(51..83)?;
    let mut wire = Vec::with_capacity(51);
    for part in [&b"ssh-ed25519"[..], public] {
        wire.extend_from_slice(&(part.len() as u32).to_be_bytes());
        wire.extend_from_slice(part);
    }
    Some(base64::engine::general_purpose::STANDARD.encode(wire))
}

/// Loads the snapshot's device state into a QEMU started paused for it (`Restore`); its QMP
/// connection, to run it on.
pub async fn load(vm: &Vm, snapshot: &Snapshot) -> anyhow::Result<crate::hypervisor::qmp::Qmp> {
    let mut q = vm.qmp().await?;
    q.execute(
        "migrate-set-capabilities",
        Some(serde_json::json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})),
    )
    .await?;
    migrate_file(&mut q, "migrate-incoming", std::fs::File::open(snapshot.state())?).await?;
    Ok(q)
}

/// Runs a migration (`migrate`, the save, or `migrate-incoming`, the load) to or from
/// `file`, handed to QEMU (`getfd`): no shell and no helper process per save or restore.
async fn migrate_file(q: &mut crate::hypervisor::qmp::Qmp, command: &str, file: std::fs::File) -> anyhow::Result<()> {
    q.getfd("state", &file).await?;
    drop(file);
    q.execute(command, Some(serde_json::json!({"uri": "fd:state"}))).await?;
    wait_migration(q).await
}

/// Waits for the migration (save or load) to end.
async fn wait_migration(q: &mut crate::hypervisor::qmp::Qmp) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let m = q.execute("query-migrate", None).await?;
        match m["status"].as_str() {
            Some("completed") => return Ok(()),
            Some("failed" | "cancelled") => anyhow::bail!("migration {}: {}", m["status"], m["error-desc"]),
            _ => {}
        }
        anyhow::ensure!(Instant::now() < deadline, "the migration took too long");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_removes_only_the_snapshots_of_images_gone() {
        let data = tempfile::tempdir().expect("temp dir");
        let mut s = Snapshots::new(data.path(), true);
        let dir = data.path().join("launch-snapshots");
        // ami-0aaa-4c-512m: a snapshot of the first format, ami-0aaa-8c-512m-v2 of the
        // second (eight root ports), with other devices.
        for name in [
            "ami-0aaa-2c-512m-v3",
            "ami-0aaa-1c-512m-v3",
            "ami-0aaa-4c-512m",
            "ami-0aaa-8c-512m-v2",
            "ami-0bbb-2c-512m-v3",
            "ami-0bbb-1c-512m-v3.tmp",
        ] {
            std::fs::create_dir_all(dir.join(name)).expect("mkdir");
            std::fs::write(dir.join(name).join("state"), b"x").expect("write");
        }
        s.prune(&["ami-0aaa".to_owned()]);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .expect("read dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["ami-0aaa-1c-512m-v3", "ami-0aaa-2c-512m-v3"]);
    }

    #[test]
    fn identity_is_what_dhcp_would_give() {
        use crate::control::cidr::Ipv4Cidr;
        use crate::net::rules::{NetInstance, VpcView};
        let instance = |id: &str, ip: [u8; 4]| NetInstance {
            id: id.into(),
            tap: format!("t{id}"),
            mac: format!("02:00:0a:00:{:02x}:{:02x}", ip[2], ip[3]),
            private_ip: ip.into(),
            transit_ip: None,
            public_ip: None,
            groups: vec![],
            hostname: String::new(),
        };
        let view = VpcView {
            vpc_id: "vpc-1".into(),
            dns_ip: Some([10, 0, 0, 2].into()),
            subnets: vec![
                Ipv4Cidr::parse("10.0.0.0/24", true).expect("cidr"),
                Ipv4Cidr::parse("10.0.16.0/20", true).expect("cidr"),
            ],
            instances: vec![instance("i-a", [10, 0, 0, 9]), instance("i-b", [10, 0, 17, 4])],
            ..Default::default()
        };
        assert_eq!(
            identity(&view, "i-a", b"key", Some("ssh-ed25519 AAAAC3Nza+/= my key *")).as_deref(),
            Some("id=i-a mac=02:00:0a:00:00:09 ip=10.0.0.9/24 gw=10.0.0.1 dns=10.0.0.2 hostkey=key sshkey=ssh-ed25519,AAAAC3Nza+/=\n")
        );
        assert_eq!(
            identity(&view, "i-b", b"", None).as_deref(),
            Some("id=i-b mac=02:00:0a:00:11:04 ip=10.0.17.4/20 gw=10.0.16.1 dns=10.0.0.2 hostkey=\n")
        );
        assert_eq!(identity(&view, "i-c", b"", None), None);
        // A DHCP options set's first DNS server is the one the image's init uses.
        let with_set = VpcView {
            dhcp_options: vec![("domain-name-servers".into(), vec!["10.9.9.9".into(), "AmazonProvidedDNS".into()])],
            ..view.clone()
        };
        assert!(identity(&with_set, "i-b", b"", None).is_some_and(|l| l.contains(" dns=10.9.9.9 ")));
        assert_eq!(
            with_set.dns_servers(),
            [std::net::Ipv4Addr::new(10, 9, 9, 9), std::net::Ipv4Addr::new(10, 0, 0, 2)]
        );
        // A key line that is not two plain words is not sent (the metadata service gives it).
        assert!(identity(&view, "i-a", b"", Some("ssh-rsa AAAA$(x)")).is_some_and(|l| !l.contains("sshkey")));
        assert!(identity(&view, "i-a", b"", Some("ssh-rsa")).is_some_and(|l| !l.contains("sshkey")));
    }

    #[test]
    fn host_keys_travel_as_printf_escapes() {
        assert_eq!(printf_escaped(b"\0\x0bssh-ed25519%\\ 9"), "\\000\\013ssh\\055ed25519\\045\\134\\0409");
        // What busybox's printf makes of it is checked in a guest by the fast_launch test
        // (the SSH login verifies the host key the agent made).
    }

    #[test]
    fn host_keys_are_dropbear_files_and_each_new() {
        let a = dropbear_host_key().expect("key");
        let b = dropbear_host_key().expect("key");
        assert_eq!(a.len(), 4 + 11 + 4 + 64);
        assert_eq!(&a[..19], b"\0\0\0\x0bssh-ed25519\0\0\0\x40");
        assert_ne!(a, b);
        // The public half is the seed's.
        let seed: [u8; 32] = a[19..51].try_into().expect("seed");
        let public = ssh_key::private::Ed25519Keypair::from_seed(&seed).public;
        assert_eq!(&a[51..], public.0.as_slice());
    }

    #[test]
    fn the_public_half_is_an_openssh_key() {
        let key = dropbear_host_key().expect("key");
        let seed: [u8; 32] = key[19..51].try_into().expect("seed");
        let pair = ssh_key::private::Ed25519Keypair::from_seed(&seed);
        let openssh = ssh_key::PublicKey::from(pair.public).to_openssh().expect("openssh");
        assert_eq!(openssh, format!("ssh-ed25519 {}", dropbear_public_key(&key).expect("public")));
        assert_eq!(dropbear_public_key(&key[..60]), None);
    }
}
