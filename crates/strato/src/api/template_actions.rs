//! Launch template actions: Create/Describe/Modify/Delete LaunchTemplate(s),
//! Create/Describe/DeleteLaunchTemplateVersion(s) and GetLaunchTemplateData. The launch
//! data travels as a tree named by the model's members (`api::model::to_tree`) and is
//! answered in `ResponseLaunchTemplateData`'s XML by the model (`api::model::write_tree`).

use serde_json::{json, Value};

use super::actions::{write_next_token, Action, Page};
use super::error::{ApiError, ApiResult};
use super::model;
use super::query::{Filter, Params};
use super::xml::Xml;
use super::Ctx;
use crate::control::launch_templates::{LaunchTemplate, TemplateVersion};
use crate::control::tags::tags_for;

/// The `LaunchTemplateData.*` of a request as a tree.
fn launch_data(p: &mut Params) -> ApiResult<Value> {
    // A top-level member given empty (Terraform sends `UserData=` for none) is not set.
    let pairs: Vec<(String, String)> =
        p.take_prefixed("LaunchTemplateData.").into_iter().filter(|(k, v)| k.contains('.') || !v.is_empty()).collect();
    let shape = model::shape_named("RequestLaunchTemplateData")
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("the model has no RequestLaunchTemplateData")))?;
    model::to_tree(shape, "LaunchTemplateData.", pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

fn response_data_shape() -> ApiResult<&'static model::Shape> {
    model::shape_named("ResponseLaunchTemplateData")
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("the model has no ResponseLaunchTemplateData")))
}

fn created_by(owner: &impl std::fmt::Display) -> String {
    format!("arn:aws:iam::{owner}:root")
}

fn write_template(x: &mut Xml, t: &LaunchTemplate) {
    x.field("launchTemplateId", &t.id)
        .field("launchTemplateName", &t.name)
        .field("createTime", super::timestamp(&t.created_at))
        .field("createdBy", created_by(&t.owner))
        .field("defaultVersionNumber", t.default_version)
        .field("latestVersionNumber", t.latest_version);
    x.tags(&t.tags);
}

fn write_version(x: &mut Xml, v: &TemplateVersion) -> ApiResult<()> {
    x.field("launchTemplateId", &v.template_id)
        .field("launchTemplateName", &v.template_name)
        .field("versionNumber", v.version)
        .opt_field("versionDescription", v.description.as_ref())
        .field("createTime", super::timestamp(&v.created_at))
        .field("createdBy", created_by(&v.owner))
        .field("defaultVersion", v.default)
        .open("launchTemplateData");
    model::write_tree(x, response_data_shape()?, &v.data);
    x.close("launchTemplateData");
    Ok(())
}

/// `LaunchTemplateId` or `LaunchTemplateName`.
struct TemplateRef {
    id: Option<String>,
    name: Option<String>,
}

impl TemplateRef {
    fn decode(p: &mut Params) -> TemplateRef {
        TemplateRef {
            id: p.str("LaunchTemplateId").filter(|s| !s.is_empty()),
            name: p.str("LaunchTemplateName").filter(|s| !s.is_empty()),
        }
    }
}

pub struct CreateLaunchTemplate {
    name: String,
    description: Option<String>,
    data: Value,
    tags: crate::control::model::Tags,
}

impl Action for CreateLaunchTemplate {
    const NAME: &'static str = "CreateLaunchTemplate";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        // The name is unique per account, so a retried request cannot make a second one.
        p.str("ClientToken");
        Ok(CreateLaunchTemplate {
            name: p.required("LaunchTemplateName")?,
            description: p.str_max("VersionDescription", 255)?,
            data: launch_data(p)?,
            tags: tags_for(&p.tag_specs()?, "launch-template")?,
        })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let t =
            ctx.control.create_launch_template(&ctx.caller, &self.name, self.description, self.data, self.tags).await?;
        x.open("launchTemplate");
        write_template(x, &t);
        x.close("launchTemplate");
        Ok(())
    }
}

pub struct CreateLaunchTemplateVersion {
    template: TemplateRef,
    source: Option<String>,
    description: Option<String>,
    data: Value,
}

impl Action for CreateLaunchTemplateVersion {
    const NAME: &'static str = "CreateLaunchTemplateVersion";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        p.str("ClientToken");
        if p.bool("ResolveAlias")? == Some(true) {
            return Err(ApiError::UnsupportedOperation(
                "Strato has no SSM parameters to resolve (ResolveAlias=true)".into(),
            ));
        }
        Ok(CreateLaunchTemplateVersion {
            template: TemplateRef::decode(p),
            source: p.str("SourceVersion"),
            description: p.str_max("VersionDescription", 255)?,
            data: launch_data(p)?,
        })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let v = ctx
            .control
            .create_launch_template_version(
                &ctx.caller,
                self.template.id.as_deref(),
                self.template.name.as_deref(),
                self.source.as_deref(),
                self.description,
                self.data,
            )
            .await?;
        x.open("launchTemplateVersion");
        write_version(x, &v)?;
        x.close("launchTemplateVersion");
        Ok(())
    }
}

pub struct DescribeLaunchTemplates {
    ids: Vec<String>,
    names: Vec<String>,
    filters: Vec<Filter>,
    page: Page,
}

impl Action for DescribeLaunchTemplates {
    const NAME: &'static str = "DescribeLaunchTemplates";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(DescribeLaunchTemplates {
            ids: p.list("LaunchTemplateId")?,
            names: p.list("LaunchTemplateName")?,
            filters: p.filters()?,
            page: Page::decode(p, 1, 200)?,
        })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let (list, next) = ctx
            .control
            .describe_launch_templates(
                &ctx.caller,
                &self.ids,
                &self.names,
                &self.filters,
                self.page.max,
                self.page.token.as_deref(),
            )
            .await?;
        x.list("launchTemplates", list, |x, t| write_template(x, &t));
        write_next_token(x, next);
        Ok(())
    }
}

pub struct DescribeLaunchTemplateVersions {
    template: TemplateRef,
    versions: Vec<String>,
    min: Option<i64>,
    max: Option<i64>,
    page: Page,
}

impl Action for DescribeLaunchTemplateVersions {
    const NAME: &'static str = "DescribeLaunchTemplateVersions";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        if !p.filters()?.is_empty() {
            return Err(ApiError::UnsupportedOperation(
                "Strato does not filter launch template versions (Filter); name the versions instead".into(),
            ));
        }
        if p.bool("ResolveAlias")? == Some(true) {
            return Err(ApiError::UnsupportedOperation(
                "Strato has no SSM parameters to resolve (ResolveAlias=true)".into(),
            ));
        }
        let parse = |v: Option<String>, name: &str| -> ApiResult<Option<i64>> {
            v.map(|s| s.parse::<i64>().map_err(|_| ApiError::invalid_value(format!("Invalid value '{s}' for {name}"))))
                .transpose()
        };
        Ok(DescribeLaunchTemplateVersions {
            template: TemplateRef::decode(p),
            versions: p.list("LaunchTemplateVersion")?,
            min: parse(p.str("MinVersion"), "MinVersion")?,
            max: parse(p.str("MaxVersion"), "MaxVersion")?,
            page: Page::decode(p, 1, 200)?,
        })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let list = ctx
            .control
            .describe_launch_template_versions(
                &ctx.caller,
                self.template.id.as_deref(),
                self.template.name.as_deref(),
                &self.versions,
                self.min,
                self.max,
            )
            .await?;
        // Pages by position in (template, version) order: the token is the next position.
        let start = match self.page.token.as_deref() {
            None => 0,
            Some(t) => t.parse::<usize>().map_err(|_| ApiError::InvalidPaginationToken(t.to_owned()))?,
        };
        let max = self.page.max.unwrap_or(usize::MAX);
        let page: Vec<&TemplateVersion> = list.iter().skip(start).take(max).collect();
        let next = (start + page.len() < list.len()).then(|| (start + page.len()).to_string());
        x.open("launchTemplateVersionSet");
        for v in page {
            x.open("item");
            write_version(x, v)?;
            x.close("item");
        }
        x.close("launchTemplateVersionSet");
        write_next_token(x, next);
        Ok(())
    }
}

pub struct ModifyLaunchTemplate {
    template: TemplateRef,
    default_version: Option<String>,
}

impl Action for ModifyLaunchTemplate {
    const NAME: &'static str = "ModifyLaunchTemplate";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        p.str("ClientToken");
        Ok(ModifyLaunchTemplate { template: TemplateRef::decode(p), default_version: p.str("SetDefaultVersion") })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let t = ctx
            .control
            .modify_launch_template(
                &ctx.caller,
                self.template.id.as_deref(),
                self.template.name.as_deref(),
                self.default_version.as_deref(),
            )
            .await?;
        x.open("launchTemplate");
        write_template(x, &t);
        x.close("launchTemplate");
        Ok(())
    }
}

pub struct DeleteLaunchTemplate {
    template: TemplateRef,
}

impl Action for DeleteLaunchTemplate {
    const NAME: &'static str = "DeleteLaunchTemplate";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(DeleteLaunchTemplate { template: TemplateRef::decode(p) })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let t = ctx
            .control
            .delete_launch_template(&ctx.caller, self.template.id.as_deref(), self.template.name.as_deref())
            .await?;
        x.open("launchTemplate");
        write_template(x, &t);
        x.close("launchTemplate");
        Ok(())
    }
}

pub struct DeleteLaunchTemplateVersions {
    template: TemplateRef,
    versions: Vec<String>,
}

impl Action for DeleteLaunchTemplateVersions {
    const NAME: &'static str = "DeleteLaunchTemplateVersions";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(DeleteLaunchTemplateVersions {
            template: TemplateRef::decode(p),
            versions: p.list("LaunchTemplateVersion")?,
        })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let (t, results) = ctx
            .control
            .delete_launch_template_versions(
                &ctx.caller,
                self.template.id.as_deref(),
                self.template.name.as_deref(),
                &self.versions,
            )
            .await?;
        let head = |x: &mut Xml, v: &str| {
            x.field("launchTemplateId", &t.id).field("launchTemplateName", &t.name).field("versionNumber", v);
        };
        x.list("successfullyDeletedLaunchTemplateVersionSet", results.iter().filter(|r| r.1.is_none()), |x, r| {
            head(x, &r.0)
        });
        x.list("unsuccessfullyDeletedLaunchTemplateVersionSet", results.iter().filter(|r| r.1.is_some()), |x, r| {
            head(x, &r.0);
            if let Some((code, message)) = &r.1 {
                x.open("responseError").field("code", code).field("message", message).close("responseError");
            }
        });
        Ok(())
    }
}

/// GetLaunchTemplateData: an instance's launch parameters, as launch data.
pub struct GetLaunchTemplateData {
    id: String,
}

impl Action for GetLaunchTemplateData {
    const NAME: &'static str = "GetLaunchTemplateData";
    fn decode(p: &mut Params) -> ApiResult<Self> {
        Ok(GetLaunchTemplateData { id: p.required("InstanceId")? })
    }
    async fn run(self, ctx: &Ctx, x: &mut Xml) -> ApiResult<()> {
        let i = ctx.control.instance(&ctx.caller, &self.id).await?;
        let mut data = json!({
            "ImageId": i.image_id,
            "InstanceType": i.instance_type,
            "Placement": { "AvailabilityZone": i.availability_zone, "Tenancy": "default" },
            "DisableApiTermination": i.disable_api_termination.to_string(),
            "DisableApiStop": i.disable_api_stop.to_string(),
            "EbsOptimized": i.ebs_optimized.to_string(),
            "InstanceInitiatedShutdownBehavior": i.shutdown_behavior,
            "Monitoring": { "Enabled": "false" },
            "MetadataOptions": { "HttpTokens": if i.tokens_required { "required" } else { "optional" } },
            "MaintenanceOptions": { "AutoRecovery": if i.auto_recovery { "default" } else { "disabled" } },
            "NetworkInterfaces": [{
                "DeviceIndex": "0",
                "SubnetId": i.subnet_id,
                "Groups": i.security_groups.iter().map(|g| g.0.clone()).collect::<Vec<_>>(),
                "PrivateIpAddress": i.private_ip,
            }],
        });
        if let Value::Object(m) = &mut data {
            if let Some(k) = &i.key_name {
                m.insert("KeyName".into(), k.clone().into());
            }
            if let Some(u) = &i.user_data {
                m.insert("UserData".into(), u.clone().into());
            }
            if let Some(c) = &i.credit_spec {
                m.insert("CreditSpecification".into(), json!({ "CpuCredits": c }));
            }
            let tags: Vec<Value> = i
                .tags
                .iter()
                .filter(|(k, _)| !k.starts_with("aws:"))
                .map(|(k, v)| json!({ "Key": k, "Value": v }))
                .collect();
            if !tags.is_empty() {
                m.insert("TagSpecifications".into(), json!([{ "ResourceType": "instance", "Tags": tags }]));
            }
        }
        x.open("launchTemplateData");
        model::write_tree(x, response_data_shape()?, &data);
        x.close("launchTemplateData");
        Ok(())
    }
}
