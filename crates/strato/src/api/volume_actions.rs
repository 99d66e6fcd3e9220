//! EBS volume actions: CreateVolume, DescribeVolumes, DeleteVolume, AttachVolume,
//! DetachVolume.

use super::actions::{write_next_token, Action, Page};
use super::error::{ApiError, ApiResult};
use super::query::{Filter, Params};
use super::xml::Xml;
use super::Ctx;
use crate::control::volumes::{CreateVolumeRequest, Volume};

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
