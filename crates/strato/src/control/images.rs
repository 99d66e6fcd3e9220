//! Machine images (AMIs): the catalogue, who may see and launch what, and registration.
//!
//! An image is visible to its owner, to everyone when public, and to the accounts given
//! launch permission. Images Strato builds are owned by Strato (`STRATO_OWNER_ID`, alias
//! `strato`) and public. Files live in `DATA_DIR/images/<image id>/`, hard-linked from the
//! build cache (or another image) when they share a filesystem: image files are never
//! written after registration, instances write to their own overlays.

use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::{DateTime, Utc};

use super::filter::{self, Filterable};
use super::model::{Caller, Image, Tags};
use super::tags::{put_tags, tags_for};
use super::Control;
use crate::api::error::{ApiError, ApiResult};
use crate::api::query::{Filter, TagSpec};
use crate::ids::{AccountId, ImageId, SnapshotId};
use crate::image::{Built, GUEST_KERNEL_CMDLINE, KERNEL_CMDLINE};
use crate::store;

/// The owner id of the images Strato builds (no account can have it: account ids never
/// start with 0).
pub const STRATO_OWNER_ID: &str = "000000000000";
pub const STRATO_ALIAS: &str = "strato";
pub const ROOT_DEVICE: &str = "/dev/xvda";

impl Filterable for Image {
    const FILTERS: &'static [&'static str] = &[
        "architecture",
        "block-device-mapping.device-name",
        "block-device-mapping.snapshot-id",
        "block-device-mapping.volume-size",
        "block-device-mapping.volume-type",
        "description",
        "hypervisor",
        "image-id",
        "image-type",
        "is-public",
        "name",
        "owner-alias",
        "owner-id",
        "root-device-name",
        "root-device-type",
        "state",
        "virtualization-type",
    ];
    fn filter_values(&self, name: &str) -> Vec<String> {
        match name {
            "architecture" => vec![self.architecture.clone()],
            "block-device-mapping.device-name" | "root-device-name" => vec![self.root_device_name.clone()],
            "block-device-mapping.snapshot-id" => vec![self.root_snapshot_id.to_string()],
            "block-device-mapping.volume-size" => vec![self.root_size_gb.to_string()],
            "block-device-mapping.volume-type" => vec!["gp3".into()],
            "description" => vec![self.description.clone()],
            "hypervisor" => vec!["xen".into()],
            "image-id" => vec![self.id.to_string()],
            "image-type" => vec!["machine".into()],
            "is-public" => vec![self.public.to_string()],
            "name" => vec![self.name.clone()],
            "owner-alias" => self.owner_alias.clone().into_iter().collect(),
            "owner-id" => vec![self.owner.to_string()],
            "root-device-type" => vec!["ebs".into()],
            "state" => vec![self.state.clone()],
            "virtualization-type" => vec!["hvm".into()],
            _ => vec![],
        }
    }
    fn tags(&self) -> &Tags {
        &self.tags
    }
    fn sort_key(&self) -> &str {
        self.id.as_str()
    }
}

impl Image {
    pub fn visible_to(&self, caller: &AccountId) -> bool {
        &self.owner == caller || self.public || self.launch_permissions.contains(caller)
    }
}

pub fn image_not_found(id: &str) -> ApiError {
    ApiError::not_found("InvalidAMIID.NotFound", format!("The image id '[{id}]' does not exist"))
}

fn check_name(name: &str) -> ApiResult<()> {
    let ok = (3..=128).contains(&name.chars().count())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "()[] ./-'@_".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_value(format!(
            "Invalid AMI name '{name}': 3 to 128 of letters, numbers, ( ) [ ] space . / - ' @ _"
        )))
    }
}

/// Puts `src` at `dst`: a hard link when possible, else a sparse copy; either way private
/// (0600: a link shares the cache file's mode, which it then loses for every user but root).
fn link_or_copy(src: &Path, dst: &Path) -> anyhow::Result<()> {
    if std::fs::hard_link(src, dst).is_err() {
        let out = Command::new("cp").arg("--sparse=always").arg("--reflink=auto").arg(src).arg(dst).output()?;
        anyhow::ensure!(
            out.status.success(),
            "copying {}: {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// What `qemu-img info` says of a disk file: (format, virtual size in bytes).
fn disk_info(path: &Path) -> ApiResult<(String, u64)> {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(path)
        .output()
        .map_err(|e| anyhow::anyhow!("running qemu-img: {e}"))?;
    if !out.status.success() {
        return Err(ApiError::invalid_value(format!("ImageLocation {} is not a readable disk image", path.display())));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| anyhow::anyhow!("qemu-img info: {e}"))?;
    let format = v["format"].as_str().unwrap_or_default().to_owned();
    if format != "raw" && format != "qcow2" {
        return Err(ApiError::invalid_value(format!("Disk format '{format}' is not supported: raw or qcow2")));
    }
    // A qcow2 backing file would let an image read any file of the host.
    if v.get("backing-filename").is_some() {
        return Err(ApiError::invalid_value("Disk images with a backing file are not accepted"));
    }
    Ok((format, v["virtual-size"].as_u64().unwrap_or(0)))
}

/// A `file://` URL or absolute path to a host file.
fn host_path(param: &str, v: &str) -> ApiResult<PathBuf> {
    let p = PathBuf::from(v.strip_prefix("file://").unwrap_or(v));
    if !p.is_absolute() || !p.is_file() {
        return Err(ApiError::invalid_value(format!(
            "{param} must name an existing file on the host, as an absolute path or file:// URL"
        )));
    }
    Ok(p)
}

/// RegisterImage from files on the host.
pub struct RegisterFromHost {
    pub name: String,
    pub description: String,
    pub architecture: String,
    pub root_device_name: Option<String>,
    pub disk: String,
    pub kernel: String,
    pub initrd: Option<String>,
    pub tags: Vec<TagSpec>,
}

/// What ModifyImageAttribute changes.
#[derive(Debug, Default)]
pub struct ImageChanges {
    pub add_users: Vec<String>,
    pub remove_users: Vec<String>,
    pub add_all: bool,
    pub remove_all: bool,
    pub description: Option<String>,
}

/// One attribute's value for DescribeImageAttribute.
pub enum ImageAttribute {
    Description(String),
    Kernel,
    Ramdisk,
    LaunchPermission { public: bool, users: Vec<AccountId> },
    BlockDeviceMapping(Box<Image>),
    BootMode,
    ImdsSupport,
}

/// Puts an image's files in `dir` (the disk as `disk_name`, `vmlinux`, `initrd.img`); on
/// failure nothing stays behind.
/// The AMI name of the minimal image booted by Strato's guest kernel.
pub const FAST_IMAGE_NAME: &str = "strato-minimal-fast-x86_64";
const FAST_IMAGE_DESCRIPTION: &str =
    "Strato minimal on Strato's guest kernel (no initramfs): the fastest cold boot, and launches from a pre-booted snapshot";

/// What boots a built image's disk, and the key that says which build it is.
struct Boot<'a> {
    kernel: &'a Path,
    initrd: Option<&'a Path>,
    build_key: String,
    /// The kernel command line (`root=` comes from the launcher).
    cmdline: String,
}

fn stage_files(dir: &Path, disk: &Path, disk_name: &str, kernel: &Path, initrd: Option<&Path>) -> ApiResult<()> {
    let r = (|| -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        link_or_copy(disk, &dir.join(disk_name))?;
        link_or_copy(kernel, &dir.join("vmlinux"))?;
        if let Some(i) = initrd {
            link_or_copy(i, &dir.join("initrd.img"))?;
        }
        Ok(())
    })();
    if let Err(e) = r {
        let _ = std::fs::remove_dir_all(dir);
        return Err(e.into());
    }
    Ok(())
}

impl Control {
    fn image_dir(&self, id: &ImageId) -> PathBuf {
        self.images_dir().join(id.as_str())
    }

    /// Records an image (with its tags, replacing `replaces`) in one transaction; if that
    /// fails, its staged files go too.
    async fn insert_image(&self, image: &Image, replaces: Option<&ImageId>, dir: &Path) -> ApiResult<()> {
        let result: ApiResult<()> = async {
            let mut tx = self.store().begin_write().await?;
            if let Some(old) = replaces {
                store::delete_image(tx.conn(), old).await?;
            }
            store::insert_image(tx.conn(), image).await?;
            put_tags(tx.conn(), &image.owner, image.id.as_str(), "image", &image.tags).await?;
            tx.commit().await?;
            Ok(())
        }
        .await;
        if result.is_err() {
            let _ = std::fs::remove_dir_all(dir);
        }
        result
    }

    async fn load_images(&self, c: &mut sqlx::AnyConnection, caller: &AccountId) -> ApiResult<Vec<Image>> {
        let mut images = store::images(c).await?;
        // Tags are the tagging account's own: an image's tags show to whoever tagged it.
        let mut tags = store::tags_by_type(c, caller, "image").await?;
        for i in &mut images {
            i.tags = tags.remove(i.id.as_str()).unwrap_or_default();
        }
        Ok(images)
    }

    /// An image the caller may see (and so launch), by id.
    pub async fn visible_image(&self, caller: &Caller, id: &str) -> ApiResult<Image> {
        let id = ImageId::parse(id)?;
        let mut c = self.store().read().await?;
        self.load_images(&mut c, &caller.account_id)
            .await?
            .into_iter()
            .find(|i| i.id == id && i.visible_to(&caller.account_id))
            .ok_or_else(|| image_not_found(id.as_str()))
    }

    /// The public parameters naming Strato's own images, as SSM serves them: (name, image
    /// id, when it was registered). Each image Strato builds is under
    /// `/aws/service/strato/ami/IMAGE_NAME`; the Debian 12 one also where Debian publishes its
    /// AMIs (`/aws/service/debian/release/12/latest/amd64`, and `bookworm`). The newest
    /// available image of a name wins.
    pub async fn public_image_parameters(&self) -> ApiResult<Vec<(String, String, DateTime<Utc>)>> {
        let mut c = self.store().read().await?;
        let mut images: Vec<Image> = store::images(&mut c)
            .await?
            .into_iter()
            .filter(|i| i.owner.as_str() == STRATO_OWNER_ID && i.public && i.state == "available")
            .collect();
        images.sort_by_key(|i| i.created_at);
        let mut out: std::collections::BTreeMap<String, (String, DateTime<Utc>)> = Default::default();
        for i in images {
            let mut names = vec![format!("/aws/service/strato/ami/{}", i.name)];
            if i.name.contains("debian-12") {
                names.push("/aws/service/debian/release/12/latest/amd64".into());
                names.push("/aws/service/debian/release/bookworm/latest/amd64".into());
            }
            for n in names {
                out.insert(n, (i.id.to_string(), i.created_at));
            }
        }
        Ok(out.into_iter().map(|(n, (v, t))| (n, v, t)).collect())
    }

    /// An image by id, whoever owns it (for the agent: the launch was already authorised).
    /// Every registered image's id.
    pub async fn image_ids(&self) -> ApiResult<Vec<String>> {
        let mut c = self.store().read().await?;
        Ok(store::images(&mut c).await?.into_iter().map(|i| i.id.to_string()).collect())
    }

    pub async fn image_for_launch(&self, id: &str) -> ApiResult<Option<Image>> {
        let mut c = self.store().read().await?;
        Ok(store::images(&mut c).await?.into_iter().find(|i| i.id.as_str() == id))
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn describe_images(
        &self,
        caller: &Caller,
        ids: &[String],
        owners: &[String],
        executable_by: &[String],
        filters: &[Filter],
        max: Option<usize>,
        token: Option<&str>,
    ) -> ApiResult<(Vec<Image>, Option<String>)> {
        for id in ids {
            ImageId::parse(id)?;
        }
        for o in owners {
            if !matches!(o.as_str(), "self" | "amazon" | "aws-marketplace" | "aws-backup-vault" | STRATO_ALIAS)
                && AccountId::parse(o).is_none()
                && o != STRATO_OWNER_ID
            {
                return Err(ApiError::invalid_value(format!("Invalid owner: '{o}'")));
            }
        }
        for e in executable_by {
            if !matches!(e.as_str(), "self" | "all") && AccountId::parse(e).is_none() {
                return Err(ApiError::invalid_value(format!("Invalid user id: '{e}'")));
            }
        }
        filter::check_filters::<Image>(filters)?;
        let me = &caller.account_id;
        let mut c = self.store().read().await?;
        let images: Vec<Image> = self.load_images(&mut c, me).await?.into_iter().filter(|i| i.visible_to(me)).collect();
        for id in ids {
            if !images.iter().any(|i| i.id.as_str() == id) {
                return Err(image_not_found(id));
            }
        }
        let images = images
            .into_iter()
            .filter(|i| ids.is_empty() || ids.iter().any(|id| id == i.id.as_str()))
            .filter(|i| {
                owners.is_empty()
                    || owners.iter().any(|o| match o.as_str() {
                        "self" => &i.owner == me,
                        STRATO_ALIAS => i.owner_alias.as_deref() == Some(STRATO_ALIAS),
                        "amazon" | "aws-marketplace" | "aws-backup-vault" => false,
                        id => i.owner.as_str() == id,
                    })
            })
            .filter(|i| {
                executable_by.is_empty()
                    || executable_by.iter().any(|e| match e.as_str() {
                        "all" => i.public,
                        "self" => i.launch_permissions.contains(me) || (&i.owner == me),
                        id => i.launch_permissions.iter().any(|a| a.as_str() == id),
                    })
            })
            .filter(|i| filter::matches(i, filters))
            .collect();
        filter::paginate(images, max, token)
    }

    /// Registers an image built by `strato image build` as Strato's own, public. A no-op when
    /// the same build is already registered; a new build replaces the old registration.
    pub async fn register_built(&self, built: &Built) -> ApiResult<(ImageId, bool)> {
        let boot = Boot {
            kernel: &built.kernel,
            initrd: Some(&built.initrd),
            build_key: built.manifest.build_key.clone(),
            cmdline: KERNEL_CMDLINE.into(),
        };
        self.register_cached(built, built.kind.image_name(), built.kind.description(), boot).await
    }

    /// The minimal image's disk booted by Strato's guest kernel (everything built in, no
    /// initramfs): `strato-minimal-fast-x86_64`, the image instances launch fastest from.
    /// (The kernel's path names its build: a new kernel, a new registration.)
    pub async fn register_fast(&self, built: &Built, guest_kernel: &Path) -> ApiResult<(ImageId, bool)> {
        let cmdline = format!("{KERNEL_CMDLINE} {GUEST_KERNEL_CMDLINE}");
        let build_key =
            format!("{} guest-kernel={} cmdline={cmdline}", built.manifest.build_key, guest_kernel.display());
        let boot = Boot { kernel: guest_kernel, initrd: None, build_key, cmdline };
        self.register_cached(built, FAST_IMAGE_NAME, FAST_IMAGE_DESCRIPTION, boot).await
    }

    /// Registers a built image from the cache as a public AMI owned by `strato`, replacing
    /// the one of that name unless it is the same build.
    async fn register_cached(
        &self,
        built: &Built,
        name: &str,
        description: &str,
        boot: Boot<'_>,
    ) -> ApiResult<(ImageId, bool)> {
        let mut c = self.store().read().await?;
        let existing =
            store::images(&mut c).await?.into_iter().find(|i| i.owner.as_str() == STRATO_OWNER_ID && i.name == name);
        drop(c);
        if let Some(old) = &existing {
            if old.build_key.as_deref() == Some(boot.build_key.as_str()) && Path::new(&old.disk_path).exists() {
                return Ok((old.id.clone(), false));
            }
        }
        let id = ImageId::generate();
        let dir = self.image_dir(&id);
        stage_files(&dir, &built.rootfs, "disk.raw", boot.kernel, boot.initrd)?;
        let image = Image {
            id: id.clone(),
            owner: AccountId::from_db(STRATO_OWNER_ID.into()),
            owner_alias: Some(STRATO_ALIAS.into()),
            name: name.into(),
            description: description.into(),
            architecture: "x86_64".into(),
            root_device_name: ROOT_DEVICE.into(),
            root_snapshot_id: SnapshotId::generate(),
            root_size_gb: (built.manifest.disk_bytes.div_ceil(1 << 30)).max(1) as i64,
            disk_path: dir.join("disk.raw").display().to_string(),
            disk_format: "raw".into(),
            kernel_path: dir.join("vmlinux").display().to_string(),
            initrd_path: boot.initrd.map(|_| dir.join("initrd.img").display().to_string()),
            cmdline: boot.cmdline,
            public: true,
            state: "available".into(),
            source_image_id: None,
            build_key: Some(boot.build_key),
            client_token: None,
            created_at: Utc::now(),
            launch_permissions: vec![],
            tags: vec![],
        };
        self.insert_image(&image, existing.as_ref().map(|o| &o.id), &dir).await?;
        if let Some(old) = existing {
            let _ = std::fs::remove_dir_all(self.image_dir(&old.id));
        }
        tracing::info!(image_id = %id, name, "image registered");
        Ok((id, true))
    }

    /// RegisterImage from a disk file and kernel on the host (the admin account only: it
    /// reads host files).
    pub async fn register_from_host(&self, caller: &Caller, r: RegisterFromHost) -> ApiResult<ImageId> {
        if !caller.admin {
            return Err(ApiError::UnauthorizedOperation);
        }
        check_name(&r.name)?;
        if r.architecture != "x86_64" {
            return Err(ApiError::invalid_value(format!(
                "Architecture '{}' is not supported: x86_64 only",
                r.architecture
            )));
        }
        if r.description.chars().count() > 255 {
            return Err(ApiError::invalid_value("Description is longer than 255 characters"));
        }
        let tags = tags_for(&r.tags, "image")?;
        let disk = host_path("ImageLocation", &r.disk)?;
        let kernel = host_path("KernelId", &r.kernel)?;
        let initrd = r.initrd.as_deref().map(|i| host_path("RamdiskId", i)).transpose()?;
        let (format, size) = disk_info(&disk)?;
        {
            let mut c = self.store().read().await?;
            if store::images(&mut c).await?.iter().any(|i| i.owner == caller.account_id && i.name == r.name) {
                return Err(ApiError::duplicate(
                    "InvalidAMIName.Duplicate",
                    format!("AMI name {} is already in use by AMI", r.name),
                ));
            }
        }
        let id = ImageId::generate();
        let dir = self.image_dir(&id);
        let disk_dst = dir.join(format!("disk.{format}"));
        stage_files(&dir, &disk, &format!("disk.{format}"), &kernel, initrd.as_deref())?;
        let image = Image {
            id: id.clone(),
            owner: caller.account_id.clone(),
            owner_alias: None,
            name: r.name,
            description: r.description,
            architecture: r.architecture,
            root_device_name: r.root_device_name.unwrap_or_else(|| ROOT_DEVICE.into()),
            root_snapshot_id: SnapshotId::generate(),
            root_size_gb: size.div_ceil(1 << 30).max(1) as i64,
            disk_path: disk_dst.display().to_string(),
            disk_format: format,
            kernel_path: dir.join("vmlinux").display().to_string(),
            initrd_path: initrd.map(|_| dir.join("initrd.img").display().to_string()),
            cmdline: KERNEL_CMDLINE.into(),
            public: false,
            state: "available".into(),
            source_image_id: None,
            build_key: None,
            client_token: None,
            created_at: Utc::now(),
            launch_permissions: vec![],
            tags: tags.clone(),
        };
        self.insert_image(&image, None, &dir).await?;
        Ok(id)
    }

    /// An image the caller owns (or, for Strato's images, the admin), for changes.
    async fn owned_image(&self, caller: &Caller, id: &str) -> ApiResult<Image> {
        let image = self.visible_image(caller, id).await?;
        let may_change = image.owner == caller.account_id || (caller.admin && image.owner.as_str() == STRATO_OWNER_ID);
        if !may_change {
            return Err(ApiError::UnauthorizedOperation);
        }
        Ok(image)
    }

    pub async fn deregister_image(&self, caller: &Caller, id: &str) -> ApiResult<()> {
        let image = self.owned_image(caller, id).await?;
        let mut tx = self.store().begin_write().await?;
        store::delete_image(tx.conn(), &image.id).await?;
        store::delete_all_tags(tx.conn(), image.id.as_str()).await?;
        tx.commit().await?;
        let _ = std::fs::remove_dir_all(self.image_dir(&image.id));
        Ok(())
    }

    pub async fn describe_image_attribute(
        &self,
        caller: &Caller,
        id: &str,
        attribute: &str,
    ) -> ApiResult<(ImageId, ImageAttribute)> {
        let image = self.visible_image(caller, id).await?;
        let attr = match attribute {
            "description" => ImageAttribute::Description(image.description.clone()),
            "kernel" => ImageAttribute::Kernel,
            "ramdisk" => ImageAttribute::Ramdisk,
            "launchPermission" => {
                if image.owner != caller.account_id && !(caller.admin && image.owner.as_str() == STRATO_OWNER_ID) {
                    return Err(ApiError::UnauthorizedOperation);
                }
                ImageAttribute::LaunchPermission { public: image.public, users: image.launch_permissions.clone() }
            }
            "blockDeviceMapping" => ImageAttribute::BlockDeviceMapping(Box::new(image.clone())),
            "bootMode" => ImageAttribute::BootMode,
            "imdsSupport" => ImageAttribute::ImdsSupport,
            other => {
                return Err(ApiError::invalid_value(format!(
                    "Value ({other}) for parameter attribute is invalid. Supported: description, kernel, ramdisk, launchPermission, blockDeviceMapping, bootMode, imdsSupport"
                )))
            }
        };
        Ok((image.id, attr))
    }

    pub async fn modify_image_attribute(&self, caller: &Caller, id: &str, changes: ImageChanges) -> ApiResult<()> {
        let image = self.owned_image(caller, id).await?;
        for u in changes.add_users.iter().chain(&changes.remove_users) {
            if AccountId::parse(u).is_none() {
                return Err(ApiError::invalid_value(format!("Invalid user id: '{u}'")));
            }
        }
        if let Some(d) = &changes.description {
            if d.chars().count() > 255 {
                return Err(ApiError::invalid_value("Description is longer than 255 characters"));
            }
        }
        let mut tx = self.store().begin_write().await?;
        for u in &changes.add_users {
            store::add_launch_permission(tx.conn(), &image.id, u).await?;
        }
        for u in &changes.remove_users {
            store::remove_launch_permission(tx.conn(), &image.id, u).await?;
        }
        if changes.add_all {
            store::set_image_public(tx.conn(), &image.id, true).await?;
        }
        if changes.remove_all {
            store::set_image_public(tx.conn(), &image.id, false).await?;
        }
        if let Some(d) = &changes.description {
            store::set_image_description(tx.conn(), &image.id, d).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// CopyImage within this region: a new private image of the caller's with the same disk.
    pub async fn copy_image(
        &self,
        caller: &Caller,
        source: &str,
        source_region: &str,
        name: &str,
        description: Option<&str>,
        client_token: Option<&str>,
    ) -> ApiResult<ImageId> {
        if source_region != self.region.name {
            return Err(ApiError::invalid_value(format!(
                "Invalid source region '{source_region}': this cloud has only {}",
                self.region.name
            )));
        }
        check_name(name)?;
        let src = self.visible_image(caller, source).await?;
        {
            let mut c = self.store().read().await?;
            let all = store::images(&mut c).await?;
            if let Some(token) = client_token {
                if let Some(prev) =
                    all.iter().find(|i| i.owner == caller.account_id && i.client_token.as_deref() == Some(token))
                {
                    if prev.source_image_id.as_deref() == Some(src.id.as_str()) && prev.name == name {
                        return Ok(prev.id.clone());
                    }
                    return Err(ApiError::duplicate(
                        "IdempotentParameterMismatch",
                        "The client token was already used with different parameters",
                    ));
                }
            }
            if all.iter().any(|i| i.owner == caller.account_id && i.name == name) {
                return Err(ApiError::duplicate(
                    "InvalidAMIName.Duplicate",
                    format!("AMI name {name} is already in use by AMI"),
                ));
            }
        }
        let id = ImageId::generate();
        let dir = self.image_dir(&id);
        let disk_dst = dir.join(format!("disk.{}", src.disk_format));
        stage_files(
            &dir,
            Path::new(&src.disk_path),
            &format!("disk.{}", src.disk_format),
            Path::new(&src.kernel_path),
            src.initrd_path.as_deref().map(Path::new),
        )?;
        let image = Image {
            id: id.clone(),
            owner: caller.account_id.clone(),
            owner_alias: None,
            name: name.into(),
            description: description.map(str::to_owned).unwrap_or_else(|| src.description.clone()),
            root_snapshot_id: SnapshotId::generate(),
            disk_path: disk_dst.display().to_string(),
            kernel_path: dir.join("vmlinux").display().to_string(),
            initrd_path: src.initrd_path.as_ref().map(|_| dir.join("initrd.img").display().to_string()),
            public: false,
            source_image_id: Some(src.id.to_string()),
            build_key: None,
            client_token: client_token.map(str::to_owned),
            created_at: Utc::now(),
            launch_permissions: vec![],
            tags: vec![],
            ..src
        };
        self.insert_image(&image, None, &dir).await?;
        Ok(id)
    }

    /// CreateImage: a new private AMI whose root disk is a copy of the instance's, taken by
    /// the agent as the image's root snapshot (`pending` until then). A stopped instance's
    /// disk is copied as it is; a running one's is copied by QEMU's backup job, with the VM
    /// paused for the copy unless NoReboot (Strato does not reboot the guest, so the copy is
    /// crash-consistent: what the guest had written to disk, not its unwritten cache).
    pub async fn create_image(
        &self,
        caller: &Caller,
        instance_id: &str,
        name: &str,
        description: Option<&str>,
        no_reboot: bool,
        specs: &[TagSpec],
    ) -> ApiResult<ImageId> {
        check_name(name)?;
        let tags = tags_for(specs, "image")?;
        let i = self.instance(caller, instance_id).await?;
        if !matches!(
            i.state,
            super::instance_state::InstanceState::Running | super::instance_state::InstanceState::Stopped
        ) {
            return Err(ApiError::IncorrectInstanceState(format!(
                "The instance '{}' is not in the 'running' or 'stopped' state.",
                i.id
            )));
        }
        if !i.block_devices.iter().any(|b| b.device == ROOT_DEVICE && b.volume_id == i.root_volume_id) {
            return Err(ApiError::IncorrectInstanceState(format!(
                "The instance '{}' does not have a volume attached at root ({ROOT_DEVICE})",
                i.id
            )));
        }
        let src = self
            .image_for_launch(&i.image_id)
            .await?
            .ok_or_else(|| ApiError::invalid_value(format!("The image {} of the instance is gone", i.image_id)))?;
        {
            let mut c = self.store().read().await?;
            if store::images(&mut c).await?.iter().any(|x| x.owner == caller.account_id && x.name == name) {
                return Err(ApiError::duplicate(
                    "InvalidAMIName.Duplicate",
                    format!("AMI name {name} is already in use by AMI"),
                ));
            }
        }
        let id = ImageId::generate();
        let dir = self.image_dir(&id);
        // The kernel and initramfs are the source image's; the disk comes from the snapshot.
        let r = (|| -> anyhow::Result<()> {
            std::fs::create_dir_all(&dir)?;
            link_or_copy(Path::new(&src.kernel_path), &dir.join("vmlinux"))?;
            if let Some(initrd) = &src.initrd_path {
                link_or_copy(Path::new(initrd), &dir.join("initrd.img"))?;
            }
            Ok(())
        })();
        if let Err(e) = r {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e.into());
        }
        let snapshot = super::snapshots::Snapshot {
            id: SnapshotId::generate(),
            owner: caller.account_id.clone(),
            volume_id: i.root_volume_id.clone(),
            source_snapshot: None,
            volume_size_gb: i.root_size_gb,
            description: format!("Created by CreateImage({}) for {id}", i.id),
            state: "pending".into(),
            started_at: Utc::now(),
            instance_id: Some(i.id.to_string()),
            pause_vm: !no_reboot,
            permissions: Vec::new(),
            tags: Vec::new(),
        };
        let image = Image {
            id: id.clone(),
            owner: caller.account_id.clone(),
            owner_alias: None,
            name: name.into(),
            description: description.map(str::to_owned).unwrap_or_default(),
            root_snapshot_id: snapshot.id.clone(),
            root_size_gb: i.root_size_gb,
            disk_path: dir.join("disk.qcow2").display().to_string(),
            disk_format: "qcow2".into(),
            kernel_path: dir.join("vmlinux").display().to_string(),
            initrd_path: src.initrd_path.as_ref().map(|_| dir.join("initrd.img").display().to_string()),
            public: false,
            state: "pending".into(),
            source_image_id: Some(src.id.to_string()),
            build_key: None,
            client_token: None,
            created_at: Utc::now(),
            launch_permissions: vec![],
            tags,
            ..src
        };
        let result: ApiResult<()> = async {
            let mut tx = self.store().begin_write().await?;
            super::snapshots::insert(tx.conn(), &snapshot).await?;
            store::insert_image(tx.conn(), &image).await?;
            put_tags(tx.conn(), &image.owner, image.id.as_str(), "image", &image.tags).await?;
            tx.commit().await?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        self.agent_wake.notify_one();
        Ok(id)
    }

    /// The agent finished (or failed) an image's root snapshot: the image gets the disk and
    /// becomes available (or failed).
    pub async fn image_snapshot_done(&self, snapshot: &SnapshotId, file: Option<&Path>) -> anyhow::Result<()> {
        let mut c = self.store().read().await?;
        let pending: Vec<Image> = store::images(&mut c)
            .await?
            .into_iter()
            .filter(|i| i.state == "pending" && &i.root_snapshot_id == snapshot)
            .collect();
        drop(c);
        for image in pending {
            let state = match file {
                Some(f) => match link_or_copy(f, Path::new(&image.disk_path)) {
                    Ok(()) => "available",
                    Err(e) => {
                        tracing::error!(image_id = %image.id, error = format!("{e:#}"), "image disk");
                        "failed"
                    }
                },
                None => "failed",
            };
            let mut tx = self.store().begin_write().await?;
            sqlx::query("UPDATE images SET state = $1 WHERE id = $2")
                .bind(state)
                .bind(image.id.as_str())
                .execute(tx.conn())
                .await?;
            tx.commit().await?;
            tracing::info!(image_id = %image.id, state, "image from instance");
        }
        Ok(())
    }
}
