//! EBS volume and snapshot actions: Create/Describe/Delete/Attach/DetachVolume,
//! Create/Describe/Delete/CopySnapshot, Modify/DescribeSnapshotAttribute.

use super::actions::{write_next_token, Action, Page};
use super::error::{ApiError, ApiResult};
use super::query::{Filter, Params, TagSpec};
use super::xml::Xml;
use super::Ctx;
use crate::control::snapshots::{progress, PermissionChange, Snapshot, SnapshotQuery};
use crate::control::volumes::{CreateVolumeRequest, Modification, ModifyVolumeRequest, Volume};

fn write_volume(x: &mut Xml, v: &Volume) {
    x.field("volumeId", &v.id)
        .field("size", v.size_gb)
        .field("snapshotId", v.snapshot_id.as_deref().unwrap_or(""))
        .field("availabilityZone", &v.availability_zone)
        .field("status", &v.state)
        .field("createTime", super::timestamp(&v.created_at))
        .field("volumeType", &v.volume_type)
        .opt_field("iops", v.iops)
        .opt_field("throughput", v.throughput)
        .field("encrypted", false)
        .field("multiAttachEnabled", false);
    x.list("attachmentSet", v.instance_id.iter(), |x, i| {
        write_attachment(x, v, i);
    });
    x.tags(&v.tags);
}

fn write_attachment(x: &mut Xml, v: &Volume, instance: &str) {
    x.field("volumeId", &v.id)
        .field("instanceId", instance)
        .opt_field("device", v.device.as_ref())
        .opt_field("status", v.attach_state.as_ref())
        .opt_field("attachTime", v.attach_time.as_ref().map(super::timestamp))
        .field("deleteOnTermination", v.delete_on_termination);
}

pub struct CreateVolume(CreateVolumeRequest);

impl Action for CreateVolume {
    const NAME: &'static str = "CreateVolume";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        if p.bool("Encrypted")? == Some(true) || p.str("KmsKeyId").is_some() {
            return Err(ApiError::invalid_value("Encrypted volumes are not offered yet"));
        }
        if p.bool("MultiAttachEnabled")? == Some(true) {
            return Err(ApiError::invalid_value("Multi-Attach is not offered"));
        }
        p.str("ClientToken");
        Ok(CreateVolume(CreateVolumeRequest {
            availability_zone: match p.str("AvailabilityZone") {
                Some(z) => z,
                None => return Err(ApiError::MissingParameter("AvailabilityZone".into())),
            },
            size_gb: p.int("Size")?,
            volume_type: p.str("VolumeType"),
            iops: p.int("Iops")?,
            throughput: p.int("Throughput")?,
            snapshot_id: p.str("SnapshotId"),
            tags: p.tag_specs()?,
        }))
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let v = ctx.control.create_volume(&ctx.caller, self.0).await?;
        write_volume(x, &v);
        Ok(())
    }
}

pub struct DescribeVolumes {
    ids: Vec<String>,
    filters: Vec<Filter>,
    page: Page,
}

impl Action for DescribeVolumes {
    const NAME: &'static str = "DescribeVolumes";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(DescribeVolumes { ids: p.list("VolumeId")?, filters: p.filters()?, page: Page::decode(p, 5, 500)? })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let (list, next) = ctx
            .control
            .describe_volumes(&ctx.caller, &self.ids, &self.filters, self.page.max, self.page.token.as_deref())
            .await?;
        x.list("volumeSet", list, |x, v| write_volume(x, &v));
        write_next_token(x, next);
        Ok(())
    }
}

pub struct DeleteVolume {
    id: String,
}

impl Action for DeleteVolume {
    const NAME: &'static str = "DeleteVolume";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(DeleteVolume { id: p.required("VolumeId")? })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        ctx.control.delete_volume(&ctx.caller, &self.id).await?;
        x.field("return", true);
        Ok(())
    }
}

pub struct AttachVolume {
    id: String,
    instance: String,
    device: String,
}

impl Action for AttachVolume {
    const NAME: &'static str = "AttachVolume";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(AttachVolume {
            id: p.required("VolumeId")?,
            instance: p.required("InstanceId")?,
            device: p.required("Device")?,
        })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let v = ctx.control.attach_volume(&ctx.caller, &self.id, &self.instance, &self.device).await?;
        write_attachment(x, &v, &self.instance);
        Ok(())
    }
}

pub struct DetachVolume {
    id: String,
    instance: Option<String>,
    force: bool,
}

impl Action for DetachVolume {
    const NAME: &'static str = "DetachVolume";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        let r = DetachVolume {
            id: p.required("VolumeId")?,
            instance: p.str("InstanceId"),
            force: p.bool("Force")?.unwrap_or(false),
        };
        p.str("Device");
        Ok(r)
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let v = ctx.control.detach_volume(&ctx.caller, &self.id, self.instance.as_deref(), self.force).await?;
        let instance = v.instance_id.clone().unwrap_or_default();
        write_attachment(x, &v, &instance);
        Ok(())
    }
}

// ---------------------------------------------------------------- snapshots

fn write_snapshot(x: &mut Xml, s: &Snapshot) {
    x.field("snapshotId", &s.id)
        .field("volumeId", &s.volume_id)
        .field("status", &s.state)
        .field("startTime", super::timestamp(&s.started_at))
        .field("progress", progress(&s.state))
        .field("ownerId", &s.owner)
        .field("volumeSize", s.volume_size_gb)
        .field("description", &s.description)
        .field("encrypted", false)
        .field("storageTier", "standard")
        .tags(&s.tags);
}

pub struct CreateSnapshot {
    volume: String,
    description: Option<String>,
    tags: Vec<TagSpec>,
}

impl Action for CreateSnapshot {
    const NAME: &'static str = "CreateSnapshot";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        if p.str("OutpostArn").is_some() {
            return Err(ApiError::invalid_value("Outposts are not offered"));
        }
        Ok(CreateSnapshot {
            volume: p.required("VolumeId")?,
            description: p.str_max("Description", 255)?,
            tags: p.tag_specs()?,
        })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let s = ctx.control.create_snapshot(&ctx.caller, &self.volume, self.description, &self.tags).await?;
        write_snapshot(x, &s);
        Ok(())
    }
}

pub struct DescribeSnapshots {
    query: SnapshotQuery,
    filters: Vec<Filter>,
    page: Page,
}

impl Action for DescribeSnapshots {
    const NAME: &'static str = "DescribeSnapshots";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(DescribeSnapshots {
            query: SnapshotQuery {
                ids: p.list("SnapshotId")?,
                owners: p.list("Owner")?,
                restorable_by: p.list("RestorableBy")?,
            },
            filters: p.filters()?,
            page: Page::decode(p, 5, 1000)?,
        })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let (list, next) = ctx
            .control
            .describe_snapshots(&ctx.caller, &self.query, &self.filters, self.page.max, self.page.token.as_deref())
            .await?;
        x.list("snapshotSet", list, |x, s| write_snapshot(x, &s));
        write_next_token(x, next);
        Ok(())
    }
}

pub struct DeleteSnapshot {
    id: String,
}

impl Action for DeleteSnapshot {
    const NAME: &'static str = "DeleteSnapshot";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(DeleteSnapshot { id: p.required("SnapshotId")? })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        ctx.control.delete_snapshot(&ctx.caller, &self.id).await?;
        x.field("return", true);
        Ok(())
    }
}

pub struct CopySnapshot {
    source: String,
    source_region: String,
    description: Option<String>,
    tags: Vec<TagSpec>,
}

impl Action for CopySnapshot {
    const NAME: &'static str = "CopySnapshot";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        if p.bool("Encrypted")? == Some(true) || p.str("KmsKeyId").is_some() {
            return Err(ApiError::invalid_value("Encrypted snapshots are not offered yet"));
        }
        p.str("PresignedUrl");
        p.str("DestinationRegion");
        Ok(CopySnapshot {
            source: p.required("SourceSnapshotId")?,
            source_region: p.required("SourceRegion")?,
            description: p.str_max("Description", 255)?,
            tags: p.tag_specs()?,
        })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let s = ctx
            .control
            .copy_snapshot(&ctx.caller, &self.source, &self.source_region, self.description, &self.tags)
            .await?;
        x.field("snapshotId", &s.id).tags(&s.tags);
        Ok(())
    }
}

fn check_attribute(a: &str) -> ApiResult<()> {
    match a {
        "createVolumePermission" => Ok(()),
        "productCodes" => Err(ApiError::invalid_value("productCodes cannot be changed here")),
        other => Err(ApiError::invalid_value(format!(
            "Value ({other}) for parameter attribute is invalid. Valid values: createVolumePermission, productCodes"
        ))),
    }
}

pub struct ModifySnapshotAttribute {
    id: String,
    change: PermissionChange,
}

impl Action for ModifySnapshotAttribute {
    const NAME: &'static str = "ModifySnapshotAttribute";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        let id = p.required("SnapshotId")?;
        if let Some(a) = p.str("Attribute") {
            check_attribute(&a)?;
        }
        let mut change = PermissionChange::default();
        let users = p.list("UserId")?;
        let groups = p.list("UserGroup")?;
        match p.str("OperationType").as_deref() {
            Some("add") => change.add.extend(users.into_iter().chain(groups)),
            Some("remove") => change.remove.extend(users.into_iter().chain(groups)),
            None if users.is_empty() && groups.is_empty() => {}
            None => return Err(ApiError::MissingParameter("OperationType".into())),
            Some(o) => return Err(ApiError::invalid_value(format!("Invalid OperationType '{o}': add or remove"))),
        }
        for (prefix, into) in
            [("CreateVolumePermission.Add", &mut change.add), ("CreateVolumePermission.Remove", &mut change.remove)]
        {
            for n in p.indices(prefix)? {
                if let Some(u) = p.str(&format!("{prefix}.{n}.UserId")) {
                    into.push(u);
                }
                if let Some(g) = p.str(&format!("{prefix}.{n}.Group")) {
                    into.push(g);
                }
            }
        }
        if change.add.is_empty() && change.remove.is_empty() {
            return Err(ApiError::MissingParameter("CreateVolumePermission".into()));
        }
        Ok(ModifySnapshotAttribute { id, change })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        ctx.control.modify_snapshot_permissions(&ctx.caller, &self.id, &self.change).await?;
        x.field("return", true);
        Ok(())
    }
}

pub struct DescribeSnapshotAttribute {
    id: String,
}

impl Action for DescribeSnapshotAttribute {
    const NAME: &'static str = "DescribeSnapshotAttribute";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        let id = p.required("SnapshotId")?;
        check_attribute(&p.required("Attribute")?)?;
        Ok(DescribeSnapshotAttribute { id })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let perms = ctx.control.snapshot_permissions(&ctx.caller, &self.id).await?;
        x.field("snapshotId", &self.id).list("createVolumePermission", perms, |x, p| {
            if p == "all" {
                x.field("group", "all");
            } else {
                x.field("userId", p);
            }
        });
        Ok(())
    }
}

// ---------------------------------------------------------------- modifications

fn write_modification(x: &mut Xml, m: &Modification) {
    x.field("volumeId", &m.volume_id)
        .field("modificationState", &m.state)
        .field("targetSize", m.target_size)
        .opt_field("targetIops", m.target_iops)
        .field("targetVolumeType", &m.target_type)
        .opt_field("targetThroughput", m.target_throughput)
        .field("originalSize", m.original_size)
        .opt_field("originalIops", m.original_iops)
        .field("originalVolumeType", &m.original_type)
        .opt_field("originalThroughput", m.original_throughput)
        .field("progress", if m.state == "modifying" { 0 } else { 100 })
        .field("startTime", super::timestamp(&m.start_time))
        .opt_field("endTime", m.end_time.as_ref().map(super::timestamp));
}

pub struct ModifyVolume {
    id: String,
    req: ModifyVolumeRequest,
}

impl Action for ModifyVolume {
    const NAME: &'static str = "ModifyVolume";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        if p.bool("MultiAttachEnabled")? == Some(true) {
            return Err(ApiError::invalid_value("Multi-Attach is not offered"));
        }
        Ok(ModifyVolume {
            id: p.required("VolumeId")?,
            req: ModifyVolumeRequest {
                size_gb: p.int("Size")?,
                volume_type: p.str("VolumeType"),
                iops: p.int("Iops")?,
                throughput: p.int("Throughput")?,
            },
        })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let m = ctx.control.modify_volume(&ctx.caller, &self.id, self.req).await?;
        x.open("volumeModification");
        write_modification(x, &m);
        x.close("volumeModification");
        Ok(())
    }
}

pub struct DescribeVolumesModifications {
    ids: Vec<String>,
    filters: Vec<Filter>,
}

impl Action for DescribeVolumesModifications {
    const NAME: &'static str = "DescribeVolumesModifications";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        p.int("MaxResults")?;
        p.str("NextToken");
        Ok(DescribeVolumesModifications { ids: p.list("VolumeId")?, filters: p.filters()? })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let list = ctx.control.describe_volume_modifications(&ctx.caller, &self.ids, &self.filters).await?;
        x.list("volumeModificationSet", list, |x, m| write_modification(x, &m));
        Ok(())
    }
}

// ---------------------------------------------------------------- images from instances

pub struct CreateImage {
    instance: String,
    name: String,
    description: Option<String>,
    no_reboot: bool,
    tags: Vec<TagSpec>,
}

impl Action for CreateImage {
    const NAME: &'static str = "CreateImage";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        if !p.indices("BlockDeviceMapping")?.is_empty() {
            return Err(ApiError::invalid_value(
                "BlockDeviceMappings are not offered on CreateImage yet: the image gets the root volume only",
            ));
        }
        Ok(CreateImage {
            instance: p.required("InstanceId")?,
            name: p.required("Name")?,
            description: p.str_max("Description", 255)?,
            no_reboot: p.bool("NoReboot")?.unwrap_or(false),
            tags: p.tag_specs()?,
        })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let id = ctx
            .control
            .create_image(
                &ctx.caller,
                &self.instance,
                &self.name,
                self.description.as_deref(),
                self.no_reboot,
                &self.tags,
            )
            .await?;
        x.field("imageId", id);
        Ok(())
    }
}
