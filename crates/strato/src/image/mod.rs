//! The image builder: AMIs made from Debian's packages on the machine that runs Strato.
//!
//! Everything comes from the host's apt sources (`apt-get download`, `debootstrap`, and
//! `apt-get source` for dropbear's source package); nothing
//! is fetched from anywhere else. Downloads and built artifacts live in a cache dir outside
//! any data dir (default `/var/cache/strato`), so data dirs, tests and hosts share them:
//!
//! ```text
//! CACHE/debs/*.deb                         downloaded packages
//! CACHE/kernel/VERSION/vmlinux             the uncompressed kernel (PVH entry)
//! CACHE/kernel/VERSION/initrd.img          busybox + virtio/ext4/button modules
//! CACHE/kernel/VERSION/root/lib/modules/   the kernel's whole modules tree
//! CACHE/images/NAME/{rootfs.raw,manifest.json}
//! CACHE/dropbear/VERSION-KEY/              the minimal image's static dropbear programs
//! CACHE/guest-kernel/VERSION-KEY/vmlinux   Strato's cloud-guest kernel
//! ```
//!
//! A build writes into `NAME.tmp` and renames it into place only when every step worked, so a
//! failed build leaves nothing that looks finished; the error names the step. Building again
//! is a no-op while the manifest's build key (builder version, kernel and package versions)
//! still matches, unless forced.
//!
//! Images: `minimal` (busybox, dropbear SSH built static from Debian's source (`dropbear.rs`),
//! an init that does DHCP, metadata, key, user data,
//! and powers off on the ACPI button; a 1 GiB sparse ext4 disk with a few MiB used) and
//! `debian-12` (debootstrap minbase + systemd, openssh-server, cloud-init; 2 GiB).
//! Both boot the Debian kernel directly (QEMU `-kernel vmlinux -initrd initrd.img`).

pub mod bare;
pub mod cpio;
mod dropbear;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use sha2::Digest;

/// Bump when what a build produces changes, so caches rebuild.
const BUILDER_VERSION: u32 = 5;

/// Kernel modules the initramfs loads, in order (paths under the kernel's `kernel/` dir).
const INITRAMFS_MODULES: &[&str] = &[
    "drivers/virtio/virtio_ring",
    "drivers/virtio/virtio",
    "drivers/virtio/virtio_pci_legacy_dev",
    "drivers/virtio/virtio_pci_modern_dev",
    "drivers/virtio/virtio_pci",
    "drivers/block/virtio_blk",
    "net/core/failover",
    "drivers/net/net_failover",
    "drivers/net/virtio_net",
    "lib/crc16",
    "fs/mbcache",
    "crypto/crc32c_generic",
    "arch/x86/crypto/crc32c-intel",
    "fs/jbd2/jbd2",
    "fs/ext4/ext4",
    "drivers/acpi/button",
    "drivers/input/evdev",
    // Entropy from the host (QEMU's virtio-rng): under emulation the kernel's own sources
    // take tens of seconds to seed, and SSH host keys and Python's start wait for them.
    "drivers/char/hw_random/virtio-rng",
];

/// The moment every file of a built image is dated (2024-01-01T00:00:00Z).
const SOURCE_DATE_EPOCH: u64 = 1_704_067_200;

/// mkfs copies each file's change time, which no tool can set in the staging tree: set it
/// in the filesystem afterwards (debugfs), so the disk's bytes depend on the inputs only.
fn fix_ctimes(tree: &Path, disk: &Path) -> anyhow::Result<()> {
    fn walk(dir: &Path, rel: &str, out: &mut String) -> anyhow::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = format!("{rel}/{name}");
            if path.contains('"') || path.contains('\n') {
                anyhow::bail!("fixing file times: unexpected file name {path:?}");
            }
            out.push_str(&format!("sif \"{path}\" ctime @{SOURCE_DATE_EPOCH}\n"));
            if e.file_type()?.is_dir() {
                walk(&e.path(), &path, out)?;
            }
        }
        Ok(())
    }
    let mut script = format!("sif / ctime @{SOURCE_DATE_EPOCH}\nsif /lost+found ctime @{SOURCE_DATE_EPOCH}\n");
    walk(tree, "", &mut script)?;
    let script_path = disk.with_extension("debugfs");
    std::fs::write(&script_path, script)?;
    let r = run(
        "fixing file times",
        Command::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(&script_path)
            .arg(disk)
            .env("E2FSPROGS_FAKE_TIME", SOURCE_DATE_EPOCH.to_string()),
    );
    let _ = std::fs::remove_file(&script_path);
    r.map(drop)
}

/// A UUID derived from a build key (for reproducible filesystems).
fn build_uuid(key: &str) -> String {
    use sha2::Digest;
    let h = hex::encode(sha2::Sha256::digest(key.as_bytes()));
    format!("{}-{}-4{}-8{}-{}", &h[0..8], &h[8..12], &h[13..16], &h[17..20], &h[20..32])
}

/// The kernel command line every image boots with (plus `root=` from the launcher).
/// `no_timer_check`: no test of the IO-APIC's timer routing (QEMU's works; KVM guests skip
/// it always), which waits for timer ticks: 40-60 ms of a TCG guest's boot.
pub const KERNEL_CMDLINE: &str = "console=ttyS0 quiet panic=-1 net.ifnames=0 no_timer_check";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Minimal,
    Debian12,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "minimal" => Some(Kind::Minimal),
            "debian-12" => Some(Kind::Debian12),
            _ => None,
        }
    }

    pub fn slug(self) -> &'static str {
        match self {
            Kind::Minimal => "minimal",
            Kind::Debian12 => "debian-12",
        }
    }

    /// The AMI name it is registered under.
    pub fn image_name(self) -> &'static str {
        match self {
            Kind::Minimal => "strato-minimal-x86_64",
            Kind::Debian12 => "strato-debian-12-x86_64",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Kind::Minimal => "Strato minimal: busybox, dropbear SSH, DHCP, instance metadata and user data",
            Kind::Debian12 => "Debian 12 (bookworm) with systemd, OpenSSH and cloud-init (EC2 datasource)",
        }
    }

    fn disk_size(self) -> &'static str {
        match self {
            Kind::Minimal => "1G",
            Kind::Debian12 => "2G",
        }
    }
}

/// What a build produced, as recorded in `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub build_key: String,
    pub kernel_version: String,
    /// Root disk size in bytes (the ext4 image, sparse).
    pub disk_bytes: u64,
    /// Bytes the disk really uses.
    pub disk_used_bytes: u64,
    pub build_seconds: f64,
}

/// A built image in the cache.
#[derive(Debug, Clone)]
pub struct Built {
    pub kind: Kind,
    pub rootfs: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub manifest: Manifest,
    /// False when the cache already held it.
    pub fresh: bool,
}

/// Reports progress of a long build.
pub trait Progress {
    fn step(&self, what: &str);
}

/// Progress lines on stderr with the time since the build started.
pub struct StderrProgress(pub Instant);

impl Progress for StderrProgress {
    fn step(&self, what: &str) {
        eprintln!("[{:6.1}s] {what}", self.0.elapsed().as_secs_f64());
    }
}

/// Runs a program (argument vector, never a shell) and fails with its stderr and the step.
fn run(step: &str, cmd: &mut Command) -> anyhow::Result<Vec<u8>> {
    let out =
        cmd.stdin(Stdio::null()).output().with_context(|| format!("{step}: cannot run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{step}: {:?} failed ({}): {}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

fn apt_env(cmd: &mut Command) -> &mut Command {
    cmd.env("DEBIAN_FRONTEND", "noninteractive").env("LC_ALL", "C")
}

/// The package `linux-image-amd64` depends on, e.g. `linux-image-6.1.0-56-amd64`.
fn kernel_package() -> anyhow::Result<String> {
    for attempt in 0..2 {
        let out = run(
            "resolving the kernel package",
            apt_env(Command::new("apt-cache").args(["depends", "linux-image-amd64"])),
        );
        if let Ok(out) = out {
            let text = String::from_utf8_lossy(&out);
            if let Some(p) =
                text.lines().find_map(|l| l.trim().strip_prefix("Depends: ")).filter(|p| p.starts_with("linux-image-"))
            {
                return Ok(p.trim().to_owned());
            }
        }
        if attempt == 0 {
            run("updating apt lists", apt_env(Command::new("apt-get").args(["update", "-q"])))?;
        }
    }
    bail!("resolving the kernel package: apt knows no linux-image-amd64")
}

/// The candidate version of a package (part of the build key).
fn package_version(pkg: &str) -> anyhow::Result<String> {
    let out = run("reading package versions", apt_env(Command::new("apt-cache").args(["policy", pkg])))?;
    String::from_utf8_lossy(&out)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate: ").map(str::to_owned))
        .filter(|v| v != "(none)")
        .with_context(|| format!("reading package versions: apt has no candidate for {pkg}"))
}

/// A package and everything it depends on (not recommends), as apt resolves them.
fn with_dependencies(pkgs: &[&str]) -> anyhow::Result<Vec<String>> {
    let mut cmd = Command::new("apt-cache");
    cmd.args([
        "depends",
        "--recurse",
        "--no-recommends",
        "--no-suggests",
        "--no-conflicts",
        "--no-breaks",
        "--no-replaces",
        "--no-enhances",
    ]);
    cmd.args(pkgs);
    let out = run("resolving dependencies", apt_env(&mut cmd))?;
    let mut names: Vec<String> = String::from_utf8_lossy(&out)
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with('<') && !l.is_empty())
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Downloads packages into `CACHE/debs` (skipping ones already there) and returns the files.
fn download(cache: &Path, pkgs: &[String]) -> anyhow::Result<Vec<PathBuf>> {
    let debs = cache.join("debs");
    std::fs::create_dir_all(&debs)?;
    let mut files = Vec::new();
    let mut missing = Vec::new();
    for p in pkgs {
        let version = package_version(p)?;
        // Debian file names escape the epoch colon as %3a.
        let file = debs.join(format!("{p}_{}_{}.deb", version.replace(':', "%3a"), deb_arch(p)?));
        if !file.exists() {
            missing.push(format!("{p}={version}"));
        }
        files.push(file);
    }
    if !missing.is_empty() {
        run(
            "downloading packages",
            apt_env(Command::new("apt-get").arg("download").args(&missing).current_dir(&debs)),
        )?;
    }
    for f in &files {
        if !f.exists() {
            bail!("downloading packages: {} is missing after apt-get download", f.display());
        }
    }
    Ok(files)
}

fn deb_arch(pkg: &str) -> anyhow::Result<String> {
    let out = run(
        "reading package architectures",
        apt_env(Command::new("apt-cache").args(["show", "--no-all-versions", pkg])),
    )?;
    Ok(String::from_utf8_lossy(&out)
        .lines()
        .find_map(|l| l.strip_prefix("Architecture: ").map(str::to_owned))
        .unwrap_or_else(|| "amd64".into()))
}

fn extract(deb: &Path, into: &Path) -> anyhow::Result<()> {
    run(&format!("unpacking {}", deb.display()), Command::new("dpkg-deb").arg("-x").arg(deb).arg(into))?;
    Ok(())
}

/// The uncompressed vmlinux inside a bzImage: the XZ stream that starts at its magic.
fn extract_vmlinux(vmlinuz: &Path, out: &Path) -> anyhow::Result<()> {
    let data = std::fs::read(vmlinuz).with_context(|| format!("reading {}", vmlinuz.display()))?;
    let magic = b"\xfd7zXZ\x00";
    let at = data
        .windows(magic.len())
        .position(|w| w == magic)
        .context("extracting vmlinux: no XZ stream in the kernel image")?;
    let mut child = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("extracting vmlinux: cannot run xz")?;
    let mut stdin = child.stdin.take().context("xz stdin")?;
    let payload = data[at..].to_vec();
    // xz stops reading after the stream; a write error on its closed stdin is expected then.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&payload);
    });
    let mut vmlinux = Vec::new();
    child.stdout.take().context("xz stdout")?.read_to_end(&mut vmlinux)?;
    let _ = writer.join();
    child.wait()?;
    if !vmlinux.starts_with(b"\x7fELF") {
        bail!("extracting vmlinux: the XZ stream is not an ELF kernel");
    }
    std::fs::write(out, vmlinux)?;
    Ok(())
}

/// The kernel, its modules and the initramfs, cached per kernel package.
pub struct Kernel {
    pub package: String,
    pub version: String,
    pub dir: PathBuf,
}

impl Kernel {
    pub fn vmlinux(&self) -> PathBuf {
        self.dir.join("vmlinux")
    }
    pub fn initrd(&self) -> PathBuf {
        self.dir.join("initrd.img")
    }
    pub fn modules(&self) -> PathBuf {
        self.dir.join("root/lib/modules").join(&self.version)
    }
}

pub fn kernel(cache: &Path, progress: &dyn Progress) -> anyhow::Result<Kernel> {
    let package = kernel_package()?;
    let version = package.trim_start_matches("linux-image-").to_owned();
    let dir = cache.join("kernel").join(&version);
    let k = Kernel { package: package.clone(), version: version.clone(), dir: dir.clone() };
    if std::fs::read_to_string(dir.join(".complete")).is_ok_and(|c| c == format!("{package} v{BUILDER_VERSION}")) {
        return Ok(k);
    }
    progress.step(&format!("kernel: downloading {package}"));
    let busybox = "busybox-static".to_owned();
    let debs = download(cache, &[package.clone(), busybox])?;
    let tmp = cache.join("kernel").join(format!("{version}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(tmp.join("root"))?;
    progress.step("kernel: unpacking");
    extract(&debs[0], &tmp.join("root"))?;
    let vmlinuz = tmp.join("root/boot").join(format!("vmlinuz-{version}"));
    extract_vmlinux(&vmlinuz, &tmp.join("vmlinux"))?;
    let bb = tmp.join("busybox");
    extract(&debs[1], &bb)?;

    progress.step("kernel: building the initramfs");
    let mods = tmp.join("root/lib/modules").join(&version).join("kernel");
    let mut archive = cpio::Archive::default();
    archive.dir("bin").dir("lib").dir("lib/modules").dir("dev").dir("proc").dir("sys").dir("newroot");
    archive.file(
        "bin/busybox",
        &std::fs::read(bb.join("bin/busybox")).context("busybox-static has no bin/busybox")?,
        0o755,
    );
    archive.file("init", include_bytes!("initramfs-init"), 0o755);
    let mut order = String::new();
    for m in INITRAMFS_MODULES {
        let src = mods.join(format!("{m}.ko"));
        let name = Path::new(m).file_name().and_then(|n| n.to_str()).unwrap_or(m);
        let bytes = std::fs::read(&src)
            .with_context(|| format!("building the initramfs: module {} is missing", src.display()))?;
        archive.file(&format!("lib/modules/{name}.ko"), &bytes, 0o644);
        order.push_str(name);
        order.push('\n');
    }
    archive.file("modules.order", order.as_bytes(), 0o644);
    std::fs::write(tmp.join("initrd.img"), archive.finish())?;
    // Only the modules tree and the kernel stay; boot/ and the rest of the package go.
    let _ = std::fs::remove_dir_all(tmp.join("root/boot"));
    let _ = std::fs::remove_dir_all(tmp.join("root/usr"));
    let _ = std::fs::remove_dir_all(&bb);
    std::fs::write(tmp.join(".complete"), format!("{package} v{BUILDER_VERSION}"))?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir)?;
    Ok(k)
}

fn write(root: &Path, rel: &str, data: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&p, data).with_context(|| format!("writing {}", p.display()))?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn dir_size(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|m| m.blocks() * 512).unwrap_or(0)
}

/// Marks a change to one kind's recipe in its build key, so that only that kind is rebuilt
/// (a new `BUILDER_VERSION` rebuilds everything, the guest kernel included).
fn recipe_tag(kind: Kind) -> String {
    match kind {
        // The minimal image's init and configuration files count in its key too: a change
        // to one rebuilds it.
        Kind::Minimal => {
            let mut h = sha2::Sha256::new();
            for f in MINIMAL_FILES {
                h.update(f);
            }
            format!("{} files={}", recipe_number(kind), &hex::encode(h.finalize())[..12])
        }
        Kind::Debian12 => recipe_number(kind).to_owned(),
    }
}

/// The minimal image's own files: its init script, inittab and DHCP hook.
const MINIMAL_FILES: [&[u8]; 3] =
    [include_bytes!("minimal/rcS"), include_bytes!("minimal/inittab"), include_bytes!("minimal/udhcpc.script")];

fn recipe_number(kind: Kind) -> &'static str {
    match kind {
        // 3: waits at the launch-snapshot point for an Ethernet NIC; the clock from the
        // metadata's Date header. 4: uptime on every console line; the ed25519 host key
        // made while the network comes up. 6: a launch snapshot's guest takes its identity
        // from ttyS1 (MAC, address), not from a hot-plugged NIC and DHCP. 7: dropbear built
        // static from Debian's source, with libsodium's curve25519 (`dropbear.rs`). 8: the
        // ext4 inode tables zeroed at build (no lazyinit in the guest); resolv.conf in /run.
        Kind::Minimal => " recipe=8",
        // 2: no resolv.conf from the build host. 3: the ext4 inode tables zeroed at build.
        Kind::Debian12 => " recipe=3",
    }
}

/// The cached build of an image, if there is one (no apt queries: cheap).
pub fn cached(kind: Kind, cache: &Path) -> Option<Built> {
    let dir = cache.join("images").join(kind.slug());
    let m: Manifest = serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).ok()?).ok()?;
    // A build by another version of the builder is not current.
    if !m.build_key.starts_with(&format!("v{BUILDER_VERSION} ")) || !m.build_key.ends_with(&recipe_tag(kind)) {
        return None;
    }
    let kdir = cache.join("kernel").join(&m.kernel_version);
    let built = Built {
        kind,
        rootfs: dir.join("rootfs.raw"),
        kernel: kdir.join("vmlinux"),
        initrd: kdir.join("initrd.img"),
        manifest: m,
        fresh: false,
    };
    (built.rootfs.exists() && built.kernel.exists() && built.initrd.exists() && kdir.join(".complete").exists())
        .then_some(built)
}

/// Holds the cache's build lock: one build at a time per cache, across processes.
struct CacheLock(#[allow(dead_code)] std::fs::File);

fn lock_cache(cache: &Path) -> anyhow::Result<CacheLock> {
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(cache.join(".build.lock"))?;
    f.lock().context("locking the image cache")?;
    Ok(CacheLock(f))
}

/// Builds an image, or finds it in the cache: building again is a no-op unless `force`.
pub fn build(kind: Kind, cache: &Path, force: bool, progress: &dyn Progress) -> anyhow::Result<Built> {
    let started = Instant::now();
    std::fs::create_dir_all(cache).with_context(|| format!("creating the cache dir {}", cache.display()))?;
    if !force {
        if let Some(b) = cached(kind, cache) {
            return Ok(b);
        }
    }
    let _lock = lock_cache(cache)?;
    // Another process may have built it while we waited for the lock.
    if !force {
        if let Some(b) = cached(kind, cache) {
            return Ok(b);
        }
    }
    let kernel = kernel(cache, progress)?;
    let packages: Vec<String> = match kind {
        Kind::Minimal => with_dependencies(&["busybox-static", "dropbear-bin"])?,
        Kind::Debian12 => vec!["debootstrap".into()],
    };
    let mut key = format!("v{BUILDER_VERSION} {} {}", kind.slug(), kernel.package);
    for p in &packages {
        key.push_str(&format!(" {p}={}", package_version(p)?));
    }
    // The minimal image's SSH programs are built from source (`dropbear.rs`).
    let ssh_programs = match kind {
        Kind::Minimal => {
            let recipe = dropbear::Recipe::current()?;
            key.push_str(&format!(" ({})", recipe.key));
            Some(dropbear::build(cache, &recipe, progress)?)
        }
        Kind::Debian12 => None,
    };
    key.push_str(&recipe_tag(kind));
    let dir = cache.join("images").join(kind.slug());
    let tmp = cache.join("images").join(format!("{}.tmp", kind.slug()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let result = (|| -> anyhow::Result<()> {
        let rootfs = tmp.join("rootfs");
        match kind {
            Kind::Minimal => minimal_rootfs(cache, &packages, ssh_programs.as_deref(), &rootfs, progress)?,
            Kind::Debian12 => debian_rootfs(&kernel, &rootfs, progress)?,
        }
        progress.step(&format!("{}: making the ext4 disk ({})", kind.slug(), kind.disk_size()));
        // Same inputs, same bytes: every file time set to one fixed moment, and the
        // filesystem's UUID, hash seed and clock derived from the build key.
        run(
            "fixing file times",
            Command::new("find").arg(&rootfs).args([
                "-exec",
                "touch",
                "-h",
                "-d",
                &format!("@{SOURCE_DATE_EPOCH}"),
                "{}",
                "+",
            ]),
        )?;
        let uuid = build_uuid(&key);
        run(
            "making the ext4 disk",
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-L", "root", "-U", &uuid, "-E"])
                .arg(format!("root_owner=0:0,hash_seed={uuid},lazy_itable_init=0,lazy_journal_init=0"))
                .arg("-d")
                .arg(&rootfs)
                .arg(tmp.join("rootfs.raw"))
                .arg(kind.disk_size())
                .env("E2FSPROGS_FAKE_TIME", SOURCE_DATE_EPOCH.to_string()),
        )?;
        fix_ctimes(&rootfs, &tmp.join("rootfs.raw"))?;
        // The inode tables and journal zeroed now (`lazy_*_init=0`), so that no instance's
        // kernel zeroes them after its first mount (ext4's lazyinit thread: CPU and 16 MiB of
        // writes into each instance's root volume, a restored one's too). mkfs leaves its
        // zeros allocated (written or fallocated): a sparse copy keeps only the data.
        let sparse = tmp.join("rootfs.sparse");
        run(
            "making the disk sparse",
            Command::new("cp").arg("--sparse=always").arg(tmp.join("rootfs.raw")).arg(&sparse),
        )?;
        std::fs::rename(&sparse, tmp.join("rootfs.raw"))?;
        run("removing the staging tree", Command::new("rm").arg("-rf").arg(&rootfs))?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = Command::new("rm").arg("-rf").arg(&tmp).status();
        return Err(e.context(format!("building image {}", kind.slug())));
    }
    let raw = tmp.join("rootfs.raw");
    let manifest = Manifest {
        name: kind.image_name().into(),
        build_key: key,
        kernel_version: kernel.version.clone(),
        disk_bytes: std::fs::metadata(&raw)?.len(),
        disk_used_bytes: dir_size(&raw),
        build_seconds: started.elapsed().as_secs_f64(),
    };
    std::fs::write(tmp.join("manifest.json"), serde_json::to_vec_pretty(&manifest)?)?;
    let _ = Command::new("rm").arg("-rf").arg(&dir).status();
    std::fs::rename(&tmp, &dir)?;
    progress.step(&format!(
        "{}: done in {:.1}s, disk {} MiB ({} MiB used)",
        kind.slug(),
        manifest.build_seconds,
        manifest.disk_bytes >> 20,
        manifest.disk_used_bytes >> 20
    ));
    Ok(Built {
        kind,
        rootfs: dir.join("rootfs.raw"),
        kernel: kernel.vmlinux(),
        initrd: kernel.initrd(),
        manifest,
        fresh: true,
    })
}

fn minimal_rootfs(
    cache: &Path,
    packages: &[String],
    ssh_programs: Option<&Path>,
    root: &Path,
    progress: &dyn Progress,
) -> anyhow::Result<()> {
    progress.step(&format!("minimal: downloading {} packages", packages.len()));
    let debs = download(cache, packages)?;
    progress.step("minimal: unpacking");
    std::fs::create_dir_all(root)?;
    for d in &debs {
        extract(d, root)?;
    }
    // Debian's dropbear, dbclient and dropbearkey replaced by the static builds of the same
    // source (`dropbear.rs`); the package's libraries stay.
    if let Some(dir) = ssh_programs {
        for (program, at) in dropbear::PROGRAMS {
            let to = root.join(at);
            let _ = std::fs::remove_file(&to);
            std::fs::copy(dir.join(program), &to).with_context(|| format!("installing {program}"))?;
            std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        }
    }
    for junk in
        ["usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian", "usr/share/bug"]
    {
        let _ = std::fs::remove_dir_all(root.join(junk));
    }
    for d in ["dev", "proc", "sys", "tmp", "run", "root", "var/log", "etc/dropbear", "mnt", "home"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::create_dir_all(root.join("root/.ssh"))?;
    // Where a launch snapshot's guest keeps its identity (see the rcS).
    std::fs::create_dir_all(root.join("var/lib/strato"))?;
    std::fs::set_permissions(root.join("root/.ssh"), std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    // busybox applets as symlinks, where a package did not put a real program.
    let list = run("listing busybox applets", Command::new(root.join("bin/busybox")).arg("--list-full"))?;
    for applet in String::from_utf8_lossy(&list).lines() {
        let p = root.join(applet);
        if p.symlink_metadata().is_err() {
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::os::unix::fs::symlink("/bin/busybox", &p)?;
        }
    }
    progress.step("minimal: writing the init and configuration");
    let [rcs, inittab, udhcpc] = MINIMAL_FILES;
    write(root, "etc/init.d/rcS", rcs, 0o755)?;
    write(root, "etc/inittab", inittab, 0o644)?;
    write(root, "etc/udhcpc.script", udhcpc, 0o755)?;
    write(
        root,
        "etc/acpi/PWRF/00000080",
        b"#!/bin/sh\necho 'STRATO-BOOT: power button' > /dev/console\npoweroff\n",
        0o755,
    )?;
    write(
        root,
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        0o644,
    )?;
    write(root, "etc/group", b"root:x:0:\nnogroup:x:65534:\n", 0o644)?;
    // No password: root logs in with the key pair only.
    write(root, "etc/shadow", b"root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n", 0o600)?;
    write(root, "etc/shells", b"/bin/sh\n", 0o644)?;
    write(root, "etc/hostname", b"strato\n", 0o644)?;
    write(root, "etc/hosts", b"127.0.0.1 localhost\n", 0o644)?;
    // Written at every boot (the identity's or DHCP's DNS server): kept in /run, so that no
    // boot truncates and reallocates a file on the root filesystem for it (a restored TCG
    // guest's first ext4 truncate translates ~1500 blocks of the kernel).
    let _ = std::fs::remove_file(root.join("etc/resolv.conf"));
    std::os::unix::fs::symlink("../run/resolv.conf", root.join("etc/resolv.conf"))?;
    // The init mounts the rest with one `mount -a -t ...` (its rcS).
    write(
        root,
        "etc/fstab",
        b"/dev/vda / ext4 rw 0 1\nproc /proc proc defaults 0 0\nsysfs /sys sysfs defaults 0 0\n\
          devpts /dev/pts devpts defaults 0 0\ntmpfs /run tmpfs defaults 0 0\n",
        0o644,
    )?;
    write(root, "etc/profile", b"export PATH=/usr/sbin:/usr/bin:/sbin:/bin\nexport PS1='\\h:\\w\\$ '\n", 0o644)?;
    write(root, "etc/strato-release", b"Strato minimal image\n", 0o644)?;
    std::os::unix::fs::symlink("/bin/busybox", root.join("sbin/init")).or_else(|e| {
        if root.join("sbin/init").symlink_metadata().is_ok() {
            Ok(())
        } else {
            Err(e)
        }
    })?;
    // The SSH server must run with the libraries we unpacked.
    run("checking dropbear runs", Command::new("chroot").arg(root).args(["/usr/sbin/dropbear", "-V"]))?;
    Ok(())
}

/// Where the host's apt keeps its Debian sources: one-line and deb822 form.
const HOST_DEBIAN_SOURCES: [&str; 2] = ["/etc/apt/sources.list", "/etc/apt/sources.list.d/debian.sources"];

/// The host's Debian mirror, from its apt sources (debootstrap needs one).
fn host_mirror() -> anyhow::Result<String> {
    let mut texts = Vec::new();
    for f in HOST_DEBIAN_SOURCES {
        if let Ok(t) = std::fs::read_to_string(f) {
            texts.push(t);
        }
    }
    for t in &texts {
        for line in t.lines() {
            let line = line.trim();
            // one-line form: deb URL bookworm main
            if let Some(rest) = line.strip_prefix("deb ") {
                if let Some(url) = rest.split_whitespace().find(|w| w.starts_with("http")) {
                    if !url.contains("security") {
                        return Ok(url.to_owned());
                    }
                }
            }
            // deb822 form: URIs: URL
            if let Some(url) = line.strip_prefix("URIs:") {
                let url = url.trim();
                if url.starts_with("http") && !url.contains("security") {
                    return Ok(url.to_owned());
                }
            }
        }
    }
    bail!("finding a Debian mirror: no http(s) source in the host's apt sources")
}

fn debian_rootfs(kernel: &Kernel, root: &Path, progress: &dyn Progress) -> anyhow::Result<()> {
    if Command::new("debootstrap").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
        run("installing debootstrap", apt_env(Command::new("apt-get").args(["install", "-y", "-q", "debootstrap"])))?;
    }
    let mirror = host_mirror()?;
    progress.step("debian-12: debootstrap (about 75 s)");
    run(
        "debootstrap",
        apt_env(Command::new("debootstrap").args([
            "--variant=minbase",
            "--include=systemd-sysv,openssh-server,cloud-init,udev,dbus,iproute2,ifupdown,isc-dhcp-client,netbase,python3-cffi-backend,kmod,ca-certificates",
            "bookworm",
        ]))
        .arg(root)
        .arg(&mirror),
    )?;
    progress.step("debian-12: kernel modules and configuration");
    let modules_dst = root.join("lib/modules").join(&kernel.version);
    std::fs::create_dir_all(root.join("lib/modules"))?;
    run("copying kernel modules", Command::new("cp").arg("-a").arg(kernel.modules()).arg(&modules_dst))?;
    run("depmod", Command::new("chroot").arg(root).args(["depmod", &kernel.version]))?;
    write(root, "etc/fstab", b"LABEL=root / ext4 rw,discard,errors=remount-ro 0 1\n", 0o644)?;
    write(root, "etc/hostname", b"localhost\n", 0o644)?;
    write(root, "etc/machine-id", b"", 0o444)?;
    // Not the build host's: the VPC's DNS server comes by DHCP at boot.
    let _ = std::fs::remove_file(root.join("etc/resolv.conf"));
    write(root, "etc/resolv.conf", b"# Written at boot from DHCP: the VPC's DNS server.\n", 0o644)?;
    write(
        root,
        "etc/network/interfaces",
        b"# Written by cloud-init from the instance's network metadata.\nsource /etc/network/interfaces.d/*\nauto lo\niface lo inet loopback\n",
        0o644,
    )?;
    write(
        root,
        "etc/cloud/cloud.cfg.d/90-strato.cfg",
        b"# Strato serves the EC2 metadata API at 169.254.169.254.\ndatasource_list: [Ec2]\ndatasource:\n  Ec2:\n    strict_id: false\n    metadata_urls: ['http://169.254.169.254']\n    max_wait: 30\n    timeout: 5\ndisable_root: false\nssh_pwauth: false\n# The image has no locales package: C.UTF-8 is built in.\nlocale: C.UTF-8\n",
        0o644,
    )?;
    // Host keys are made per instance by cloud-init, never baked into the image.
    for e in std::fs::read_dir(root.join("etc/ssh"))? {
        let e = e?;
        if e.file_name().to_string_lossy().starts_with("ssh_host_") {
            std::fs::remove_file(e.path())?;
        }
    }
    run("cleaning apt caches", Command::new("chroot").arg(root).args(["apt-get", "clean"]))?;
    Ok(())
}

/// The options the guest kernel must end up with (checked after `olddefconfig`).
const GUEST_KERNEL_REQUIRED: &[&str] = &[
    "PVH",
    "SERIAL_8250_CONSOLE",
    "FW_CFG_SYSFS",
    "DEVTMPFS_MOUNT",
    "PCI_MSI",
    "HOTPLUG_PCI_PCIE",
    "ACPI_BUTTON",
    "INPUT_EVDEV",
    "VIRTIO_PCI",
    "VIRTIO_BLK",
    "VIRTIO_NET",
    "HW_RANDOM_VIRTIO",
    "EXT4_FS",
    "INET",
    "UNIX",
    "BINFMT_SCRIPT",
];

/// The guest kernel's changes to Debian's source: `lapic_timer_hz=` on the command line
/// sets the local APIC timer's frequency (QEMU's and KVM's is 1 GHz) in place of its
/// calibration against the PIT, a wait of 100 ms (~125 ms under TCG) in every cold boot;
/// the init memory is freed without being poisoned (under TCG, writing over each page of
/// init code drops the translations made of it: ~70 ms); QEMU's PCIe-to-PCI bridge is a
/// hot-plug bridge, given room for hot-plugged disks by the kernel when the firmware gave it
/// none (qboot assigns no PCI resources: `QBOOT_CMDLINE`).
const GUEST_KERNEL_PATCH: &str = include_str!("guest-kernel.patch");

/// What the guest kernel is given on its command line beyond `KERNEL_CMDLINE`: its APIC
/// timer's frequency (`GUEST_KERNEL_PATCH`), the root mounted writable (it mounts it
/// itself, with no initramfs: the image's init need not remount it), and that it boots on
/// qboot (`QBOOT_CMDLINE`).
pub const GUEST_KERNEL_CMDLINE: &str = "lapic_timer_hz=1000000000 rw strato.firmware=qboot";

/// In an image's kernel command line: its kernel boots on qboot, QEMU's minimal firmware,
/// which starts a TCG guest's kernel ~70 ms sooner than SeaBIOS but assigns no PCI
/// resources (the guest kernel's patch lets it give the hot-plug bridge room itself) and
/// does not run the ACPI table loader's WRITE_POINTER (no `vmgenid` device, which a VM
/// restored from a launch snapshot needs: cold boots only). The kernel ignores the word.
pub const QBOOT_CMDLINE: &str = "strato.firmware=qboot";

/// Whether an image's kernel boots on qboot (`QBOOT_CMDLINE`).
pub fn boots_on_qboot(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|w| w == QBOOT_CMDLINE)
}

/// Strato's cloud-guest kernel: Debian's `linux-source-6.1` with `guest-kernel.patch`, built
/// with `guest-kernel.config` on top of `tinyconfig`, everything built in (about 4.5 minutes
/// with two cores). Cached as `CACHE/guest-kernel/<source version>-<build key>/vmlinux` (a
/// new config or patch, a new path: the images staged from the old one are registered
/// anew); returns its path.
pub fn guest_kernel(cache: &Path, progress: &dyn Progress) -> anyhow::Result<PathBuf> {
    let pkg = "linux-source-6.1".to_owned();
    let version = package_version(&pkg)?;
    let fragment = include_str!("guest-kernel.config");
    let key = format!(
        "v{BUILDER_VERSION} {version} {}",
        hex::encode(sha2::Sha256::digest(format!("{fragment}\n{GUEST_KERNEL_PATCH}").as_bytes()))
    );
    let short = hex::encode(&sha2::Sha256::digest(key.as_bytes())[..4]);
    let dir = cache.join("guest-kernel").join(format!("{version}-{short}"));
    if is_complete(&dir, &key) {
        return Ok(dir.join("vmlinux"));
    }
    std::fs::create_dir_all(cache)?;
    let _lock = lock_cache(cache)?;
    if is_complete(&dir, &key) {
        return Ok(dir.join("vmlinux"));
    }
    progress.step(&format!("guest kernel: downloading {pkg} {version}"));
    let debs = download(cache, std::slice::from_ref(&pkg))?;
    let tmp = cache.join("guest-kernel").join(format!("{version}.tmp"));
    // (Older builds go once it is done: registered images hold copies of their kernels.)
    build_into(&tmp, &dir, &key, "building the guest kernel", || {
        progress.step("guest kernel: unpacking the source");
        extract(&debs[0], &tmp.join("deb"))?;
        let tarball = std::fs::read_dir(tmp.join("deb/usr/src"))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with(".tar.xz"))
            .context("unpacking the source: no .tar.xz in the package")?;
        run("unpacking the source", Command::new("tar").arg("-xJf").arg(&tarball).arg("-C").arg(&tmp))?;
        let src = tmp.join("linux-source-6.1");
        progress.step("guest kernel: patching (guest-kernel.patch)");
        let patch = tmp.join("guest-kernel.patch");
        std::fs::write(&patch, GUEST_KERNEL_PATCH)?;
        run(
            "patching",
            Command::new("patch").arg("-p1").arg("--forward").arg("-s").arg("-d").arg(&src).arg("-i").arg(&patch),
        )?;
        progress.step("guest kernel: configuring (tinyconfig + guest-kernel.config)");
        run("configuring", Command::new("make").arg("-C").arg(&src).args(["-s", "tinyconfig"]))?;
        let mut config = std::fs::read_to_string(src.join(".config"))?;
        config.push_str(fragment);
        std::fs::write(src.join(".config"), config)?;
        run("configuring", Command::new("make").arg("-C").arg(&src).args(["-s", "olddefconfig"]))?;
        let done = std::fs::read_to_string(src.join(".config"))?;
        for o in GUEST_KERNEL_REQUIRED {
            anyhow::ensure!(
                done.lines().any(|l| l == format!("CONFIG_{o}=y")),
                "configuring: CONFIG_{o} did not end up built in"
            );
        }
        let jobs = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        progress.step(&format!("guest kernel: compiling with {jobs} jobs (about 4.5 minutes on two cores)"));
        let started = Instant::now();
        run("compiling", Command::new("make").arg("-C").arg(&src).arg(format!("-j{jobs}")).arg("vmlinux"))?;
        progress.step(&format!("guest kernel: compiled in {:.0}s", started.elapsed().as_secs_f64()));
        std::fs::copy(src.join("vmlinux"), tmp.join("vmlinux"))?;
        std::fs::copy(src.join(".config"), tmp.join("config"))?;
        run("removing the build tree", Command::new("rm").arg("-rf").arg(&src).arg(tmp.join("deb")))?;
        Ok(())
    })?;
    Ok(dir.join("vmlinux"))
}

/// Whether `dir` holds a finished build of `key` (its `.complete` file says so).
fn is_complete(dir: &Path, key: &str) -> bool {
    std::fs::read_to_string(dir.join(".complete")).is_ok_and(|c| c == key)
}

/// A cached build: `make` fills `tmp` (made empty first); then `.complete` gets `key`, `tmp`
/// becomes `dir`, and the other finished builds beside `dir` are removed. On an error `tmp`
/// goes and the error says `what`.
fn build_into(
    tmp: &Path,
    dir: &Path,
    key: &str,
    what: &str,
    make: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let _ = Command::new("rm").arg("-rf").arg(tmp).status();
    std::fs::create_dir_all(tmp)?;
    let result = make().and_then(|()| Ok(std::fs::write(tmp.join(".complete"), key)?));
    if let Err(e) = result {
        let _ = Command::new("rm").arg("-rf").arg(tmp).status();
        return Err(e.context(what.to_owned()));
    }
    let _ = Command::new("rm").arg("-rf").arg(dir).status();
    std::fs::rename(tmp, dir)?;
    if let Some(parent) = dir.parent() {
        for old in std::fs::read_dir(parent)?.filter_map(Result::ok).map(|e| e.path()) {
            if old != dir && old.join(".complete").exists() {
                let _ = Command::new("rm").arg("-rf").arg(&old).status();
            }
        }
    }
    Ok(())
}
