//! Instances: RunInstances and the lifecycle requests. The control plane writes the desired
//! state (a state of `instance_state`) and returns at once, as EC2 does; the agent makes it
//! true on the host and reports back through `apply`, which moves the state machine.
//!
//! Not yet here: networking (instances get a private IP from their subnet on record, but
//! their only NIC today is the metadata link), EBS volumes (the root disk is a per-instance
//! qcow2 overlay on the image, kept across stop/start, deleted on terminate when
//! DeleteOnTermination), resizing and instance attributes.

use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use sha2::Digest;

use super::billing;
use super::filter::{self, Filterable};
use super::images::{image_not_found, ROOT_DEVICE};
use super::instance_state::{Event, InstanceState};
use super::model::{Caller, Tags};
use super::tags::{not_found_for, put_tags, tags_for_types};
use super::Control;
use crate::api::error::{ApiError, ApiResult};
use crate::api::query::{Filter, TagSpec};
use crate::ids::{AccountId, InstanceId, ReservationId, SecurityGroupId, SubnetId, VolumeId};
use crate::store::{self, instances as db};

/// vCPUs a new account may run at once (EC2's default on-demand quota for standard types);
/// `strato account set-quota` changes it per account.
pub const DEFAULT_VCPU_QUOTA: u32 = 32;
/// How much guest memory the host promises by default, relative to its RAM (TCG guests
/// touch little); `serve --memory-overcommit` changes it.
pub const MEMORY_OVERCOMMIT: f64 = 1.5;
/// Largest user data, decoded, as on EC2.
pub const MAX_USER_DATA: usize = 16 * 1024;
/// How long terminated instances stay visible.
pub const TERMINATED_VISIBLE_HOURS: i64 = 1;

/// An EBS volume attached to an instance, as its `blockDeviceMapping` shows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BlockDevice {
    pub device: String,
    pub volume_id: String,
    /// attaching | attached | detaching
    pub status: String,
    pub attach_time: DateTime<Utc>,
    pub delete_on_termination: bool,
}

impl BlockDevice {
    pub fn of(v: &super::volumes::Volume) -> Option<BlockDevice> {
        Some(BlockDevice {
            device: v.device.clone()?,
            volume_id: v.id.to_string(),
            status: v.attach_state.clone()?,
            attach_time: v.attach_time?,
            delete_on_termination: v.delete_on_termination,
        })
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Instance {
    pub id: InstanceId,
    pub owner: AccountId,
    pub reservation_id: String,
    pub launch_index: i64,
    pub image_id: String,
    pub instance_type: String,
    pub state: InstanceState,
    pub state_reason_code: Option<String>,
    pub state_reason: Option<String>,
    pub transition_reason: String,
    pub key_name: Option<String>,
    pub public_key: Option<String>,
    pub subnet_id: String,
    pub vpc_id: String,
    pub availability_zone: String,
    pub private_ip: String,
    /// (id, name)
    pub security_groups: Vec<(String, String)>,
    /// Base64, as given.
    pub user_data: Option<String>,
    pub root_volume_id: String,
    pub root_size_gb: i64,
    pub delete_on_termination: bool,
    pub disable_api_termination: bool,
    pub shutdown_behavior: String,
    pub tokens_required: bool,
    pub force_stop: bool,
    pub reboot_requested: bool,
    /// The guest has shown it is alive (it read its metadata).
    pub status_ok: bool,
    pub client_token: Option<String>,
    pub request_hash: Option<String>,
    pub launch_time: DateTime<Utc>,
    pub state_changed_at: DateTime<Utc>,
    pub generation: i64,
    pub tags: Tags,
    /// The public address it has now: from the pool while it runs, or an elastic IP.
    pub public_ip: Option<String>,
    /// Its EBS volumes (the root volume first), from the volumes' records.
    pub block_devices: Vec<BlockDevice>,
    /// It gets a public address from the pool at each start (AssociatePublicIpAddress, or
    /// the subnet's MapPublicIpOnLaunch at launch).
    pub wants_public_ip: bool,
    /// The host the scheduler placed it on (`None` only for instances from before hosts).
    pub host_id: Option<String>,
    /// MaintenanceOptions.AutoRecovery `default`: started again on another host of its zone
    /// when its host dies.
    pub auto_recovery: bool,
    /// The CPU credit option of a burstable type (`standard` or `unlimited`); `None` for
    /// other types.
    pub credit_spec: Option<String>,
    /// StopInstances is refused (DisableApiStop).
    pub disable_api_stop: bool,
    pub ebs_optimized: bool,
}

impl Filterable for Instance {
    const FILTERS: &'static [&'static str] = &[
        "instance-id",
        "instance-state-name",
        "instance-state-code",
        "instance-type",
        "image-id",
        "key-name",
        "availability-zone",
        "subnet-id",
        "vpc-id",
        "private-ip-address",
        "ip-address",
        "network-interface.network-interface-id",
        "reservation-id",
        "owner-id",
        "instance.group-id",
        "instance.group-name",
        "group-id",
        "group-name",
        "architecture",
        "root-device-type",
        "launch-index",
        "virtualization-type",
    ];
    fn filter_values(&self, name: &str) -> Vec<String> {
        match name {
            "instance-id" => vec![self.id.to_string()],
            "instance-state-name" => vec![self.state.name().into()],
            "instance-state-code" => vec![self.state.code().to_string()],
            "instance-type" => vec![self.instance_type.clone()],
            "image-id" => vec![self.image_id.clone()],
            "key-name" => self.key_name.clone().into_iter().collect(),
            "availability-zone" => vec![self.availability_zone.clone()],
            "subnet-id" => vec![self.subnet_id.clone()],
            "vpc-id" => vec![self.vpc_id.clone()],
            "network-interface.network-interface-id" => vec![super::gateways::eni_of(self.id.as_str())],
            "ip-address" => self.public_ip.clone().into_iter().collect(),
            "private-ip-address" => vec![self.private_ip.clone()],
            "reservation-id" => vec![self.reservation_id.clone()],
            "owner-id" => vec![self.owner.to_string()],
            "instance.group-id" | "group-id" => self.security_groups.iter().map(|g| g.0.clone()).collect(),
            "instance.group-name" | "group-name" => self.security_groups.iter().map(|g| g.1.clone()).collect(),
            "architecture" => vec!["x86_64".into()],
            "root-device-type" => vec!["ebs".into()],
            "launch-index" => vec![self.launch_index.to_string()],
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

/// One instance's CPU credit option (DescribeInstanceCreditSpecifications).
#[derive(Debug, Clone)]
pub struct CreditSpec {
    pub instance_id: String,
    pub cpu_credits: String,
    tags: Tags,
}

impl Filterable for CreditSpec {
    const FILTERS: &'static [&'static str] = &["instance-id"];
    fn filter_values(&self, name: &str) -> Vec<String> {
        match name {
            "instance-id" => vec![self.instance_id.clone()],
            _ => vec![],
        }
    }
    fn tags(&self) -> &Tags {
        &self.tags
    }
    fn sort_key(&self) -> &str {
        &self.instance_id
    }
}

/// RunInstances, decoded.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    pub image_id: String,
    pub instance_type: String,
    pub min_count: i64,
    pub max_count: i64,
    pub key_name: Option<String>,
    pub security_group_ids: Vec<String>,
    pub security_group_names: Vec<String>,
    pub subnet_id: Option<String>,
    pub availability_zone: Option<String>,
    pub user_data: Option<String>,
    pub root_size_gb: Option<i64>,
    pub delete_on_termination: Option<bool>,
    pub disable_api_termination: bool,
    pub shutdown_behavior: Option<String>,
    pub tokens_required: bool,
    /// MaintenanceOptions.AutoRecovery=disabled.
    pub auto_recovery_disabled: bool,
    pub client_token: Option<String>,
    pub tags: Vec<TagSpec>,
    /// NetworkInterface.1.AssociatePublicIpAddress: overrides the subnet's default.
    pub associate_public_ip: Option<bool>,
    /// The primary private address asked for.
    pub private_ip: Option<String>,
    /// CreditSpecification.CpuCredits.
    pub credit_spec: Option<String>,
    pub disable_api_stop: bool,
    pub ebs_optimized: bool,
    /// The launch template and version it came from: tagged on its instances as EC2 does
    /// (`aws:ec2launchtemplate:id`, `aws:ec2launchtemplate:version`).
    pub launch_template: Option<(String, i64)>,
}

impl RunRequest {
    /// What makes two requests with one ClientToken "the same request".
    fn fingerprint(&self) -> String {
        let text = format!("{:?}", RunRequest { client_token: None, ..self.clone() });
        hex::encode(sha2::Sha256::digest(text.as_bytes()))
    }
}

/// One change of ModifyInstanceAttribute (EC2 takes one attribute per call).
#[derive(Debug, Clone)]
pub enum AttributeChange {
    InstanceType(String),
    /// Base64 of the new user data.
    UserData(String),
    DisableApiTermination(bool),
    DisableApiStop(bool),
    EbsOptimized(bool),
    ShutdownBehavior(String),
    Groups(Vec<String>),
    /// DeleteOnTermination of the volumes attached at these devices.
    DeleteOnTermination(Vec<(String, bool)>),
}

/// What DescribeInstanceAttribute returns.
#[derive(Debug, Clone)]
pub enum AttributeValue {
    InstanceType(String),
    UserData(Option<String>),
    DisableApiTermination(bool),
    ShutdownBehavior(String),
    RootDeviceName,
    BlockDeviceMapping(Box<Instance>),
    Groups(Vec<(String, String)>),
    Kernel,
    Ramdisk,
    SourceDestCheck,
    EbsOptimized(bool),
    EnaSupport,
    DisableApiStop(bool),
    ProductCodes,
    SriovNetSupport,
    EnclaveOptions,
}

/// The state change a Start/Stop/Terminate answers with.
pub struct StateChange {
    pub id: InstanceId,
    pub previous: InstanceState,
    pub current: InstanceState,
}

fn incorrect_state(i: &Instance, what: &str) -> ApiError {
    ApiError::IncorrectInstanceState(format!("The instance '{}' is not in a state from which it can be {what}.", i.id))
}

/// The lowest free address of the public pool (its first and last are never handed out).
pub fn allocate_public_ip(
    pool: &super::cidr::Ipv4Cidr,
    taken: &mut std::collections::HashSet<String>,
) -> ApiResult<String> {
    let ip = (pool.first() + 1..pool.last())
        .map(|a| std::net::Ipv4Addr::from(a).to_string())
        .find(|a| !taken.contains(a))
        .ok_or_else(|| {
            ApiError::InsufficientAddressCapacity("There are no free public addresses in the pool".into())
        })?;
    taken.insert(ip.clone());
    Ok(ip)
}

impl Control {
    fn visible_instances(&self, all: Vec<Instance>, now: DateTime<Utc>) -> Vec<Instance> {
        all.into_iter()
            .filter(|i| {
                i.state != InstanceState::Terminated
                    || now - i.state_changed_at < Duration::hours(TERMINATED_VISIBLE_HOURS)
            })
            .collect()
    }

    async fn load_instances(&self, c: &mut sqlx::AnyConnection, account: &AccountId) -> ApiResult<Vec<Instance>> {
        let mut list = db::of_account(c, account).await?;
        let mut tags = store::tags_by_type(c, account, "instance").await?;
        let volumes = super::volumes::of_account(c, account).await?;
        for i in &mut list {
            i.tags = tags.remove(i.id.as_str()).unwrap_or_default();
            i.block_devices = volumes
                .iter()
                .filter(|v| v.instance_id.as_deref() == Some(i.id.as_str()))
                .filter_map(BlockDevice::of)
                .collect();
            i.block_devices
                .sort_by(|a, b| (a.device != ROOT_DEVICE, &a.device).cmp(&(b.device != ROOT_DEVICE, &b.device)));
        }
        Ok(self.visible_instances(list, Utc::now()))
    }

    pub async fn run_instances(&self, caller: &Caller, r: RunRequest) -> ApiResult<Vec<Instance>> {
        if r.min_count < 1 || r.max_count < r.min_count {
            return Err(ApiError::invalid_value(format!(
                "Invalid MinCount {} / MaxCount {}: 1 <= MinCount <= MaxCount",
                r.min_count, r.max_count
            )));
        }
        let itype = self
            .catalogue
            .get(&r.instance_type)
            .ok_or_else(|| {
                ApiError::invalid_value(format!(
                    "The instance type '{}' is not offered here (see DescribeInstanceTypes)",
                    r.instance_type
                ))
            })?
            .clone();
        let credit_spec = credit_spec_for(&itype, r.credit_spec.as_deref())?;
        let image = self.visible_image(caller, &r.image_id).await.map_err(|e| match e {
            ApiError::NotFound { .. } => image_not_found(&r.image_id),
            e => e,
        })?;
        if image.state != "available" {
            return Err(ApiError::Conflict {
                code: "InvalidAMIID.Unavailable",
                message: format!("The image {} is {}, not available", image.id, image.state),
            });
        }
        let user_data = match &r.user_data {
            Some(u) => {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(u.trim())
                    .map_err(|_| ApiError::invalid_value("Invalid BASE64 encoding of user data."))?;
                if decoded.len() > MAX_USER_DATA {
                    return Err(ApiError::invalid_value(format!("User data is limited to {MAX_USER_DATA} bytes")));
                }
                Some(u.trim().to_owned())
            }
            None => None,
        };
        let root_size = match r.root_size_gb {
            Some(s) if s < image.root_size_gb => {
                return Err(ApiError::InvalidBlockDeviceMapping(format!(
                    "Volume of size {s}GB is smaller than snapshot '{}', expect size >= {}GB",
                    image.root_snapshot_id, image.root_size_gb
                )))
            }
            Some(s) if s > 16384 => return Err(ApiError::invalid_value("Volume size is at most 16384 GiB")),
            Some(s) => s,
            None => image.root_size_gb,
        };
        let behavior = r.shutdown_behavior.clone().unwrap_or_else(|| "stop".into());
        if behavior != "stop" && behavior != "terminate" {
            return Err(ApiError::invalid_value(format!(
                "Invalid InstanceInitiatedShutdownBehavior '{behavior}': stop or terminate"
            )));
        }
        let [tags, volume_tags, eni_tags]: [Tags; 3] =
            tags_for_types(&r.tags, &["instance", "volume", "network-interface"])?
                .try_into()
                .map_err(|_| ApiError::Internal(anyhow::anyhow!("three tag sets asked for")))?;
        let request_hash = r.fingerprint();
        let quota = self.vcpu_quota(&caller.account_id).await?;
        let mut tx = self.store().begin_write().await?;
        let c = tx.conn();

        if let Some(token) = &r.client_token {
            let mine = db::of_account(c, &caller.account_id).await?;
            let same: Vec<Instance> =
                mine.into_iter().filter(|i| i.client_token.as_deref() == Some(token.as_str())).collect();
            if let Some(first) = same.first() {
                if first.request_hash.as_deref() != Some(request_hash.as_str()) {
                    return Err(ApiError::duplicate("IdempotentParameterMismatch", "The client token you have provided is associated with a resource that is already deleted or was used with different parameters."));
                }
                let mut same = same;
                let mut all_tags = store::tags_by_type(c, &caller.account_id, "instance").await?;
                for i in &mut same {
                    i.tags = all_tags.remove(i.id.as_str()).unwrap_or_default();
                }
                return Ok(same);
            }
        }

        let key = match &r.key_name {
            Some(name) => {
                let keys = store::key_pairs(c, &caller.account_id).await?;
                let k = keys.into_iter().find(|k| &k.name == name).ok_or_else(|| {
                    ApiError::not_found("InvalidKeyPair.NotFound", format!("The key pair '{name}' does not exist"))
                })?;
                Some((k.name, k.public_key))
            }
            None => None,
        };
        let subnets = store::subnets(c, &caller.account_id).await?;
        let subnet = match (&r.subnet_id, &r.availability_zone) {
            (Some(id), _) => {
                let id = SubnetId::parse(id)?;
                let s = subnets.iter().find(|s| s.id == id).ok_or_else(|| not_found_for("subnet", id.as_str()))?;
                if let Some(z) = &r.availability_zone {
                    if z != &s.availability_zone {
                        return Err(ApiError::InvalidParameterCombination(format!(
                            "The subnet {id} is in {}, not {z}",
                            s.availability_zone
                        )));
                    }
                }
                s.clone()
            }
            (None, Some(z)) => {
                if !self.region.zones.contains(z) {
                    return Err(ApiError::invalid_value(format!("Invalid availability zone: [{z}]")));
                }
                subnets.iter().find(|s| s.is_default && &s.availability_zone == z).cloned().ok_or_else(|| {
                    ApiError::not_found("VPCIdNotSpecified", "No default subnet for this availability zone")
                })?
            }
            (None, None) => {
                // Spread over the default subnets: the zone with the fewest of the account's instances.
                let live = db::of_account(c, &caller.account_id).await?;
                subnets
                    .iter()
                    .filter(|s| s.is_default)
                    .min_by_key(|s| {
                        (
                            live.iter()
                                .filter(|i| i.subnet_id == s.id.as_str() && i.state != InstanceState::Terminated)
                                .count(),
                            s.availability_zone.clone(),
                        )
                    })
                    .cloned()
                    .ok_or_else(|| ApiError::not_found("VPCIdNotSpecified", "No default VPC for this user"))?
            }
        };
        let groups = store::security_groups(c, &caller.account_id).await?;
        let mut chosen: Vec<(String, String)> = Vec::new();
        for id in &r.security_group_ids {
            let gid = SecurityGroupId::parse(id)?;
            let g = groups.iter().find(|g| g.id == gid).ok_or_else(|| not_found_for("security-group", id))?;
            if g.vpc_id != subnet.vpc_id {
                return Err(ApiError::InvalidParameter(format!(
                    "Security group {id} and subnet {} belong to different networks.",
                    subnet.id
                )));
            }
            chosen.push((g.id.to_string(), g.name.clone()));
        }
        for name in &r.security_group_names {
            let g = groups.iter().find(|g| &g.name == name && g.vpc_id == subnet.vpc_id).ok_or_else(|| {
                ApiError::not_found(
                    "InvalidGroup.NotFound",
                    format!("The security group '{name}' does not exist in VPC '{}'", subnet.vpc_id),
                )
            })?;
            chosen.push((g.id.to_string(), g.name.clone()));
        }
        if chosen.is_empty() {
            let g = groups
                .iter()
                .find(|g| g.name == "default" && g.vpc_id == subnet.vpc_id)
                .ok_or_else(|| ApiError::not_found("InvalidGroup.NotFound", "The VPC has no default security group"))?;
            chosen.push((g.id.to_string(), g.name.clone()));
        }
        chosen.dedup();

        // Quotas and capacity.
        let live = db::live(c).await?;
        let vcpus_of = |i: &Instance| self.catalogue.get(&i.instance_type).map(|t| t.vcpus).unwrap_or(0);
        let used_vcpus: u32 = live
            .iter()
            .filter(|i| i.owner == caller.account_id && i.state != InstanceState::Stopped)
            .map(vcpus_of)
            .sum();
        let room_vcpus = quota.saturating_sub(used_vcpus) / itype.vcpus;
        let hosts = super::hosts::all(c).await?;
        let placements = super::hosts::place(
            &hosts,
            &live,
            &self.catalogue,
            Utc::now(),
            self.host_timeout,
            &super::hosts::Demand {
                zone: &subnet.availability_zone,
                account: &caller.account_id,
                itype: &itype,
                count: r.max_count.min(room_vcpus as i64).max(0) as usize,
            },
        );
        let room_mem = placements.len();
        if (room_vcpus as i64) < r.min_count {
            return Err(ApiError::LimitExceeded {
                code: "VcpuLimitExceeded",
                message: format!("You have requested more vCPU capacity than your current vCPU limit of {quota} allows for the instance bucket that the specified instance type belongs to."),
            });
        }
        if (room_mem as i64) < r.min_count {
            return Err(ApiError::InsufficientInstanceCapacity(format!(
                "We currently do not have sufficient {} capacity in the Availability Zone you requested ({}).",
                r.instance_type, subnet.availability_zone
            )));
        }
        let count = r.max_count.min(room_vcpus as i64).min(room_mem as i64);

        // Private addresses: the subnet's, skipping EC2's reserved ones and those in use.
        let block = super::cidr::Ipv4Cidr::parse(&subnet.cidr, false)
            .ok_or_else(|| anyhow::anyhow!("stored subnet CIDR {} does not parse", subnet.cidr))?;
        let mut taken: std::collections::HashSet<String> =
            live.iter().filter(|i| i.subnet_id == subnet.id.as_str()).map(|i| i.private_ip.clone()).collect();
        if let Some(want) = &r.private_ip {
            let addr: std::net::Ipv4Addr = want
                .parse()
                .map_err(|_| ApiError::invalid_value(format!("Invalid value '{want}' for PrivateIpAddress")))?;
            let a = u32::from(addr);
            if a < block.first() + 4 || a >= block.last() {
                return Err(ApiError::InvalidParameterValue(format!(
                    "Address {want} does not fall within the subnet's address range"
                )));
            }
            if count > 1 {
                return Err(ApiError::InvalidParameterCombination(
                    "A private IP address can only be given for a single instance".into(),
                ));
            }
            if taken.contains(want) {
                return Err(ApiError::InvalidIpAddressInUse(format!("Address {want} is in use.")));
            }
        }
        let wants_public = r.associate_public_ip.unwrap_or(subnet.map_public_ip);
        let mut public_taken = db::public_ips_in_use(c).await?;
        let reservation = ReservationId::generate();
        let now = Utc::now();
        let mut out = Vec::new();
        for n in 0..count {
            let ip = r
                .private_ip
                .clone()
                .into_iter()
                .chain((block.first() + 4..block.last()).map(|a| std::net::Ipv4Addr::from(a).to_string()))
                .find(|a| !taken.contains(a))
                .ok_or_else(|| {
                    ApiError::InsufficientFreeAddressesInSubnet(format!(
                        "The subnet {} has no free addresses",
                        subnet.id
                    ))
                })?;
            taken.insert(ip.clone());
            let public_ip =
                if wants_public { Some(allocate_public_ip(&self.public_pool, &mut public_taken)?) } else { None };
            let i = Instance {
                id: InstanceId::generate(),
                owner: caller.account_id.clone(),
                reservation_id: reservation.to_string(),
                launch_index: n,
                image_id: image.id.to_string(),
                instance_type: itype.name.clone(),
                state: InstanceState::Pending,
                state_reason_code: None,
                state_reason: None,
                transition_reason: String::new(),
                key_name: key.as_ref().map(|k| k.0.clone()),
                public_key: key.as_ref().map(|k| k.1.clone()),
                subnet_id: subnet.id.to_string(),
                vpc_id: subnet.vpc_id.to_string(),
                availability_zone: subnet.availability_zone.clone(),
                private_ip: ip,
                security_groups: chosen.clone(),
                user_data: user_data.clone(),
                root_volume_id: VolumeId::generate().to_string(),
                root_size_gb: root_size,
                delete_on_termination: r.delete_on_termination.unwrap_or(true),
                disable_api_termination: r.disable_api_termination,
                shutdown_behavior: behavior.clone(),
                tokens_required: r.tokens_required,
                force_stop: false,
                reboot_requested: false,
                status_ok: false,
                client_token: r.client_token.clone(),
                request_hash: Some(request_hash.clone()),
                launch_time: now,
                state_changed_at: now,
                generation: 0,
                tags: tags.clone(),
                public_ip,
                wants_public_ip: wants_public,
                host_id: placements.get(n as usize).map(|h| h.to_string()),
                auto_recovery: !r.auto_recovery_disabled,
                block_devices: Vec::new(),
                credit_spec: credit_spec.clone(),
                disable_api_stop: r.disable_api_stop,
                ebs_optimized: r.ebs_optimized,
            };
            db::insert(c, &i).await?;
            super::volumes::insert_root(c, &i, image.root_snapshot_id.as_str()).await?;
            let mut i = i;
            i.block_devices.push(BlockDevice {
                device: ROOT_DEVICE.into(),
                volume_id: i.root_volume_id.clone(),
                status: "attached".into(),
                attach_time: now,
                delete_on_termination: i.delete_on_termination,
            });
            put_tags(c, &caller.account_id, i.id.as_str(), "instance", &tags).await?;
            if let Some((template, version)) = &r.launch_template {
                // EC2's own tags (the `aws:` prefix users may not write).
                let system = vec![
                    ("aws:ec2launchtemplate:id".to_owned(), template.clone()),
                    ("aws:ec2launchtemplate:version".to_owned(), version.to_string()),
                ];
                put_tags(c, &caller.account_id, i.id.as_str(), "instance", &system).await?;
            }
            put_tags(c, &caller.account_id, &i.root_volume_id, "volume", &volume_tags).await?;
            put_tags(c, &caller.account_id, &super::gateways::eni_of(i.id.as_str()), "network-interface", &eni_tags)
                .await?;
            out.push(i);
        }
        tx.commit().await?;
        self.agent_wake.notify_one();
        for i in &out {
            tracing::info!(instance_id = %i.id, instance_type = %i.instance_type, image_id = %i.image_id, "instance launched");
        }
        Ok(out)
    }

    /// DescribeInstanceCreditSpecifications: the CPU credit option of the account's
    /// burstable instances (terminated ones aside).
    pub async fn describe_credit_specs(
        &self,
        caller: &Caller,
        ids: &[String],
        filters: &[Filter],
        max: Option<usize>,
        token: Option<&str>,
    ) -> ApiResult<(Vec<CreditSpec>, Option<String>)> {
        for id in ids {
            InstanceId::parse(id)?;
        }
        filter::check_filters::<CreditSpec>(filters)?;
        let mut c = self.store().read().await?;
        let list = self.load_instances(&mut c, &caller.account_id).await?;
        let list = super::network::select_ids(list, ids, |i| i.id.as_str(), |id| not_found_for("instance", id))?;
        let specs = list
            .into_iter()
            .filter(|i| i.state != InstanceState::Terminated)
            .filter_map(|i| {
                let cpu_credits = i.credit_spec?;
                Some(CreditSpec { instance_id: i.id.to_string(), cpu_credits, tags: Vec::new() })
            })
            .collect();
        filter::select_filter_page(
            specs,
            &[],
            |s| s.instance_id.as_str(),
            |id| not_found_for("instance", id),
            filters,
            max,
            token,
        )
    }

    /// ModifyInstanceCreditSpecification: each instance is changed or gets its own error, as
    /// EC2 answers (successful and unsuccessful sets).
    pub async fn modify_credit_specs(
        &self,
        caller: &Caller,
        changes: &[(String, String)],
    ) -> ApiResult<Vec<(String, Option<(&'static str, String)>)>> {
        let mut tx = self.store().begin_write().await?;
        let list = self.load_instances(tx.conn(), &caller.account_id).await?;
        let mut out = Vec::new();
        for (id, credits) in changes {
            let Some(i) = list.iter().find(|i| i.id.as_str() == id.as_str()) else {
                out.push((
                    id.clone(),
                    Some(("InvalidInstanceID.NotFound", format!("The instance ID '{id}' does not exist"))),
                ));
                continue;
            };
            let Some(itype) = self.catalogue.get(&i.instance_type) else {
                out.push((
                    id.clone(),
                    Some(("InvalidInstanceType", format!("The instance type {} is unknown", i.instance_type))),
                ));
                continue;
            };
            if i.state == InstanceState::Terminated {
                out.push((id.clone(), Some(("IncorrectInstanceState", format!("The instance '{id}' is terminated")))));
                continue;
            }
            match credit_spec_for(itype, Some(credits)) {
                Ok(spec) => {
                    let mut changed = i.clone();
                    changed.credit_spec = spec;
                    db::update_attributes(tx.conn(), &changed).await?;
                    out.push((id.clone(), None));
                }
                Err(e) => out.push((id.clone(), Some(("InvalidParameterValue", e.to_string())))),
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    pub async fn describe_instances(
        &self,
        caller: &Caller,
        ids: &[String],
        filters: &[Filter],
        max: Option<usize>,
        token: Option<&str>,
    ) -> ApiResult<(Vec<Instance>, Option<String>)> {
        for id in ids {
            InstanceId::parse(id)?;
        }
        filter::check_filters::<Instance>(filters)?;
        let mut c = self.store().read().await?;
        let list = self.load_instances(&mut c, &caller.account_id).await?;
        filter::select_filter_page(
            list,
            ids,
            |i| i.id.as_str(),
            |id| not_found_for("instance", id),
            filters,
            max,
            token,
        )
    }

    async fn mine(&self, c: &mut sqlx::AnyConnection, caller: &Caller, ids: &[String]) -> ApiResult<Vec<Instance>> {
        if ids.is_empty() {
            return Err(ApiError::MissingParameter("InstanceId".into()));
        }
        for id in ids {
            InstanceId::parse(id)?;
        }
        let list = self.load_instances(c, &caller.account_id).await?;
        // Every missing id named in one error; the rest in the request's order.
        let found = super::network::select_ids(list, ids, |i| i.id.as_str(), |id| not_found_for("instance", id))?;
        Ok(ids.iter().filter_map(|id| found.iter().find(|i| i.id.as_str() == id.as_str()).cloned()).collect())
    }

    /// Start/Stop/Terminate: checks every instance first, then changes all or none.
    async fn change(
        &self,
        caller: &Caller,
        ids: &[String],
        event: Event,
        what: &str,
        reason: &str,
    ) -> ApiResult<Vec<StateChange>> {
        let mut tx = self.store().begin_write().await?;
        let list = self.mine(tx.conn(), caller, ids).await?;
        let mut plan = Vec::new();
        for i in &list {
            if event == Event::Stop && i.disable_api_stop {
                return Err(ApiError::OperationNotPermitted(format!("The instance '{}' may not be stopped. Modify its 'disableApiStop' instance attribute and try again.", i.id)));
            }
            if event == Event::Terminate && i.disable_api_termination {
                return Err(ApiError::OperationNotPermitted(format!("The instance '{}' may not be terminated. Modify its 'disableApiTermination' instance attribute and try again.", i.id)));
            }
            let next = i.state.transition(event).map_err(|_| incorrect_state(i, what))?;
            if event == Event::Start && next != i.state && !i.block_devices.iter().any(|b| b.device == ROOT_DEVICE) {
                return Err(ApiError::IncorrectInstanceState(format!(
                    "The instance '{}' does not have a volume attached at root ({ROOT_DEVICE})",
                    i.id
                )));
            }
            plan.push((i, next));
        }
        let now = Utc::now();
        let mut out = Vec::new();
        for (i, next) in plan {
            if next != i.state {
                if next == InstanceState::Pending && i.wants_public_ip && i.public_ip.is_none() {
                    let mut taken = db::public_ips_in_use(tx.conn()).await?;
                    let ip = allocate_public_ip(&self.public_pool, &mut taken)?;
                    db::set_public_ip(tx.conn(), &i.id, Some(&ip)).await?;
                }
                let transition = format!("{reason} ({})", now.format("%Y-%m-%d %H:%M:%S GMT"));
                billing::meter_transition(tx.conn(), i, next, &self.catalogue, now).await?;
                db::set_state(tx.conn(), &i.id, next, None, &transition, now).await?;
            }
            out.push(StateChange { id: i.id.clone(), previous: i.state, current: next });
        }
        tx.commit().await?;
        self.agent_wake.notify_one();
        Ok(out)
    }

    pub async fn start_instances(&self, caller: &Caller, ids: &[String]) -> ApiResult<Vec<StateChange>> {
        // The vCPU quota applies to starting as to launching.
        let quota = self.vcpu_quota(&caller.account_id).await?;
        let mut c = self.store().read().await?;
        let list = self.mine(&mut c, caller, ids).await?;
        let live = db::live(&mut c).await?;
        drop(c);
        let vcpus_of = |t: &str| self.catalogue.get(t).map(|t| t.vcpus).unwrap_or(0);
        let used: u32 = live
            .iter()
            .filter(|i| i.owner == caller.account_id && i.state != InstanceState::Stopped)
            .map(|i| vcpus_of(&i.instance_type))
            .sum();
        let adding: u32 =
            list.iter().filter(|i| i.state == InstanceState::Stopped).map(|i| vcpus_of(&i.instance_type)).sum();
        if used + adding > quota {
            return Err(ApiError::LimitExceeded {
                code: "VcpuLimitExceeded",
                message: format!("Starting these instances would exceed your vCPU limit of {quota}."),
            });
        }
        self.place_for_start(&list).await?;
        self.change(caller, ids, Event::Start, "started", "User initiated").await
    }

    /// Each stopped instance of `list` stays on its host when that host is live and has room
    /// for it, and moves to another of its zone otherwise; `InsufficientInstanceCapacity`
    /// (nothing changed) when one fits nowhere.
    async fn place_for_start(&self, list: &[Instance]) -> ApiResult<()> {
        use super::hosts::{place, Demand};
        let mut tx = self.store().begin_write().await?;
        let hosts = super::hosts::all(tx.conn()).await?;
        let mut live = db::live(tx.conn()).await?;
        let now = Utc::now();
        for i in list.iter().filter(|i| i.state == InstanceState::Stopped) {
            let Some(itype) = self.catalogue.get(&i.instance_type) else { continue };
            let demand = Demand { zone: &i.availability_zone, account: &i.owner, itype, count: 1 };
            let own: Vec<super::hosts::Host> =
                hosts.iter().filter(|h| i.host_id.as_deref() == Some(h.id.as_str())).cloned().collect();
            let mut chosen = place(&own, &live, &self.catalogue, now, self.host_timeout, &demand);
            if chosen.is_empty() {
                chosen = place(&hosts, &live, &self.catalogue, now, self.host_timeout, &demand);
            }
            let Some(host) = chosen.pop() else {
                return Err(ApiError::InsufficientInstanceCapacity(format!(
                    "We currently do not have sufficient {} capacity in the Availability Zone you requested ({}).",
                    i.instance_type, i.availability_zone
                )));
            };
            if i.host_id.as_deref() != Some(host.as_str()) {
                db::set_host(tx.conn(), &i.id, host.as_str()).await?;
            }
            // Counted where it goes, for the next ones.
            if let Some(x) = live.iter_mut().find(|x| x.id == i.id) {
                x.host_id = Some(host.to_string());
                x.state = InstanceState::Pending;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn stop_instances(&self, caller: &Caller, ids: &[String], force: bool) -> ApiResult<Vec<StateChange>> {
        let changes = self.change(caller, ids, Event::Stop, "stopped", "User initiated").await?;
        if force {
            let mut tx = self.store().begin_write().await?;
            for ch in &changes {
                if ch.current == InstanceState::Stopping {
                    db::set_flag(tx.conn(), &ch.id, "force_stop", true).await?;
                }
            }
            tx.commit().await?;
            self.agent_wake.notify_one();
        }
        Ok(changes)
    }

    pub async fn terminate_instances(&self, caller: &Caller, ids: &[String]) -> ApiResult<Vec<StateChange>> {
        self.change(caller, ids, Event::Terminate, "terminated", "User initiated").await
    }

    pub async fn reboot_instances(&self, caller: &Caller, ids: &[String]) -> ApiResult<()> {
        let mut tx = self.store().begin_write().await?;
        let list = self.mine(tx.conn(), caller, ids).await?;
        for i in &list {
            i.state.transition(Event::Reboot).map_err(|_| incorrect_state(i, "rebooted"))?;
        }
        for i in &list {
            db::set_flag(tx.conn(), &i.id, "reboot_requested", true).await?;
        }
        tx.commit().await?;
        self.agent_wake.notify_one();
        Ok(())
    }

    pub async fn instance(&self, caller: &Caller, id: &str) -> ApiResult<Instance> {
        let mut c = self.store().read().await?;
        Ok(self.mine(&mut c, caller, &[id.to_owned()]).await?.remove(0))
    }

    pub async fn modify_instance_attribute(&self, caller: &Caller, id: &str, change: AttributeChange) -> ApiResult<()> {
        let mut tx = self.store().begin_write().await?;
        let mut i = self.mine(tx.conn(), caller, &[id.to_owned()]).await?.remove(0);
        if i.state == InstanceState::Terminated {
            return Err(incorrect_state(&i, "modified"));
        }
        match change {
            AttributeChange::InstanceType(t) => {
                if i.state != InstanceState::Stopped {
                    return Err(ApiError::IncorrectInstanceState(format!(
                        "The instance '{}' is not in the 'stopped' state.",
                        i.id
                    )));
                }
                let Some(new_type) = self.catalogue.get(&t) else {
                    return Err(ApiError::invalid_value(format!(
                        "The instance type '{t}' is not offered here (see DescribeInstanceTypes)"
                    )));
                };
                // A burstable instance keeps its credit option within the T families; one
                // that becomes burstable gets the type's default.
                i.credit_spec = match (&i.credit_spec, new_type.burstable) {
                    (Some(c), true) => Some(c.clone()),
                    (_, b) => credit_spec_for(new_type, None).ok().flatten().filter(|_| b),
                };
                i.instance_type = t;
            }
            AttributeChange::UserData(u) => {
                if i.state != InstanceState::Stopped {
                    return Err(ApiError::IncorrectInstanceState(format!(
                        "The instance '{}' is not in the 'stopped' state.",
                        i.id
                    )));
                }
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(u.trim())
                    .map_err(|_| ApiError::invalid_value("Invalid BASE64 encoding of user data."))?;
                if decoded.len() > MAX_USER_DATA {
                    return Err(ApiError::invalid_value(format!("User data is limited to {MAX_USER_DATA} bytes")));
                }
                i.user_data = (!decoded.is_empty()).then(|| u.trim().to_owned());
            }
            AttributeChange::DisableApiTermination(v) => i.disable_api_termination = v,
            AttributeChange::DisableApiStop(v) => i.disable_api_stop = v,
            AttributeChange::EbsOptimized(v) => {
                if i.state != InstanceState::Stopped && v != i.ebs_optimized {
                    return Err(ApiError::IncorrectInstanceState(format!(
                        "The instance '{}' is not in the 'stopped' state.",
                        i.id
                    )));
                }
                i.ebs_optimized = v;
            }
            AttributeChange::ShutdownBehavior(b) => {
                if b != "stop" && b != "terminate" {
                    return Err(ApiError::invalid_value(format!(
                        "Invalid InstanceInitiatedShutdownBehavior '{b}': stop or terminate"
                    )));
                }
                i.shutdown_behavior = b;
            }
            AttributeChange::Groups(ids) => {
                if ids.is_empty() {
                    return Err(ApiError::MissingParameter("GroupId".into()));
                }
                let groups = store::security_groups(tx.conn(), &caller.account_id).await?;
                let mut chosen = Vec::new();
                for id in &ids {
                    let gid = SecurityGroupId::parse(id)?;
                    let g = groups.iter().find(|g| g.id == gid).ok_or_else(|| not_found_for("security-group", id))?;
                    if g.vpc_id.as_str() != i.vpc_id {
                        return Err(ApiError::InvalidParameter(format!(
                            "Security group {id} and instance {} belong to different networks.",
                            i.id
                        )));
                    }
                    chosen.push((g.id.to_string(), g.name.clone()));
                }
                chosen.dedup();
                i.security_groups = chosen;
            }
            AttributeChange::DeleteOnTermination(devices) => {
                for (device, _) in &devices {
                    if !i.block_devices.iter().any(|b| &b.device == device) {
                        return Err(ApiError::invalid_value(format!(
                            "No device is currently mapped at {device} on instance {}",
                            i.id
                        )));
                    }
                }
                for (device, delete) in &devices {
                    sqlx::query("UPDATE volumes SET delete_on_termination = $1 WHERE instance_id = $2 AND device = $3")
                        .bind(*delete as i64)
                        .bind(i.id.as_str())
                        .bind(device)
                        .execute(tx.conn())
                        .await?;
                    if device == ROOT_DEVICE {
                        sqlx::query("UPDATE instances SET delete_on_termination = $1 WHERE id = $2")
                            .bind(*delete as i64)
                            .bind(i.id.as_str())
                            .execute(tx.conn())
                            .await?;
                    }
                }
                tx.commit().await?;
                return Ok(());
            }
        }
        db::update_attributes(tx.conn(), &i).await?;
        tx.commit().await?;
        self.agent_wake.notify_one();
        Ok(())
    }

    pub async fn describe_instance_attribute(
        &self,
        caller: &Caller,
        id: &str,
        attribute: &str,
    ) -> ApiResult<(InstanceId, AttributeValue)> {
        let i = self.instance(caller, id).await?;
        let v = match attribute {
            "instanceType" => AttributeValue::InstanceType(i.instance_type.clone()),
            "userData" => AttributeValue::UserData(i.user_data.clone()),
            "disableApiTermination" => AttributeValue::DisableApiTermination(i.disable_api_termination),
            "instanceInitiatedShutdownBehavior" => AttributeValue::ShutdownBehavior(i.shutdown_behavior.clone()),
            "rootDeviceName" => AttributeValue::RootDeviceName,
            "blockDeviceMapping" => AttributeValue::BlockDeviceMapping(Box::new(i.clone())),
            "groupSet" => AttributeValue::Groups(i.security_groups.clone()),
            "kernel" => AttributeValue::Kernel,
            "ramdisk" => AttributeValue::Ramdisk,
            "sourceDestCheck" => AttributeValue::SourceDestCheck,
            "ebsOptimized" => AttributeValue::EbsOptimized(i.ebs_optimized),
            "enaSupport" => AttributeValue::EnaSupport,
            "disableApiStop" => AttributeValue::DisableApiStop(i.disable_api_stop),
            "productCodes" => AttributeValue::ProductCodes,
            "sriovNetSupport" => AttributeValue::SriovNetSupport,
            "enclaveOptions" => AttributeValue::EnclaveOptions,
            other => {
                return Err(ApiError::invalid_value(format!(
                    "Value ({other}) for parameter attribute is invalid. Unknown attribute."
                )))
            }
        };
        Ok((i.id, v))
    }

    /// ModifyInstanceMetadataOptions: IMDSv2 required or optional (applies to a running
    /// guest at once).
    pub async fn modify_metadata_options(
        &self,
        caller: &Caller,
        id: &str,
        tokens_required: Option<bool>,
    ) -> ApiResult<Instance> {
        let mut tx = self.store().begin_write().await?;
        let mut i = self.mine(tx.conn(), caller, &[id.to_owned()]).await?.remove(0);
        if i.state == InstanceState::Terminated {
            return Err(incorrect_state(&i, "modified"));
        }
        if let Some(t) = tokens_required {
            i.tokens_required = t;
        }
        db::update_attributes(tx.conn(), &i).await?;
        tx.commit().await?;
        self.agent_wake.notify_one();
        Ok(i)
    }

    /// ModifyInstanceMaintenanceOptions: AutoRecovery.
    pub async fn modify_maintenance_options(
        &self,
        caller: &Caller,
        id: &str,
        auto_recovery: Option<bool>,
    ) -> ApiResult<Instance> {
        let mut tx = self.store().begin_write().await?;
        let mut i = self.mine(tx.conn(), caller, &[id.to_owned()]).await?.remove(0);
        if matches!(i.state, InstanceState::Terminated | InstanceState::ShuttingDown) {
            return Err(incorrect_state(&i, "modified"));
        }
        if let Some(a) = auto_recovery {
            i.auto_recovery = a;
        }
        db::update_attributes(tx.conn(), &i).await?;
        tx.commit().await?;
        Ok(i)
    }

    /// The usage intervals of one account (or all) that overlap `[from, to)`, as of `now`.
    pub async fn usage_intervals(
        &self,
        account: Option<&AccountId>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> ApiResult<Vec<billing::Interval>> {
        let mut c = self.store().read().await?;
        let mut intervals = billing::recorded(&mut c, account, from, to).await?;
        let live: Vec<Instance> =
            db::live(&mut c).await?.into_iter().filter(|i| account.is_none_or(|a| &i.owner == a)).collect();
        intervals.extend(billing::open_intervals(&live, &self.catalogue, now));
        intervals.extend(billing::open_address_intervals(&mut c, account, &self.catalogue, now).await?);
        for s in super::snapshots::all(&mut c).await? {
            if account.is_none_or(|a| &s.owner == a) {
                intervals.push(super::snapshots::interval(&s, &self.catalogue, now));
            }
        }
        for v in super::volumes::all(&mut c).await? {
            if account.is_none_or(|a| &v.owner == a) {
                intervals.push(super::volumes::interval(&v, &self.catalogue, now));
            }
        }
        Ok(intervals)
    }

    /// The bill of one account (or all) over `[from, to)`, as of `now`.
    pub async fn bill(
        &self,
        account: Option<&AccountId>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> ApiResult<Vec<billing::BillLine>> {
        let intervals = self.usage_intervals(account, from, to, now).await?;
        Ok(billing::bill(&intervals, from, to))
    }

    // ---- what the agent reports

    /// Applies what the host saw to an instance's state. Reports for a generation older than
    /// the instance's are stale and ignored.
    pub async fn apply(
        &self,
        id: &InstanceId,
        generation: i64,
        event: Event,
        reason: Option<(&str, &str)>,
    ) -> anyhow::Result<Option<InstanceState>> {
        let mut tx = self.store().begin_write().await?;
        let Some(i) = db::by_id(tx.conn(), id).await? else { return Ok(None) };
        if i.generation != generation {
            return Ok(None);
        }
        let Ok(next) = i.state.transition(event) else { return Ok(None) };
        if next != i.state {
            // What the host saw becomes the transition reason only when nobody asked for it
            // (the guest powered off, or the VM failed); a user's request keeps its own.
            let transition = match (event, reason) {
                (Event::GuestShutdown { .. }, Some((_, msg))) => msg.to_owned(),
                (_, Some((code, msg))) if code.starts_with("Server.") => msg.to_owned(),
                _ => i.transition_reason.clone(),
            };
            // Without a new reason, the state keeps the one it had (set by the event that
            // started this stop or termination).
            let kept = i.state_reason_code.as_deref().zip(i.state_reason.as_deref());
            let now = Utc::now();
            billing::meter_transition(tx.conn(), &i, next, &self.catalogue, now).await?;
            db::set_state(tx.conn(), id, next, reason.or(kept), &transition, now).await?;
            tracing::info!(instance_id = %id, from = %i.state, to = %next, "instance state");
        }
        tx.commit().await?;
        Ok(Some(next))
    }

    pub async fn set_instance_flag(&self, id: &InstanceId, flag: &str, value: bool) -> anyhow::Result<()> {
        let mut tx = self.store().begin_write().await?;
        db::set_flag(tx.conn(), id, flag, value).await?;
        tx.commit().await?;
        Ok(())
    }

    /// One instance of any account (host-side tools such as `strato ssh`).
    pub async fn instance_by_id(&self, id: &InstanceId) -> anyhow::Result<Option<Instance>> {
        let mut c = self.store().read().await?;
        Ok(db::by_id(&mut c, id).await?)
    }

    /// Every instance the agent must look after (all but terminated).
    pub async fn live_instances(&self) -> anyhow::Result<Vec<Instance>> {
        let mut c = self.store().read().await?;
        Ok(db::live(&mut c).await?)
    }
}

/// The CPU credit option an instance of `itype` gets: what was asked for (burstable types
/// only), else EC2's default (`standard` for T2, `unlimited` for the later T families).
pub fn credit_spec_for(itype: &crate::catalog::InstanceType, asked: Option<&str>) -> ApiResult<Option<String>> {
    match asked {
        Some(c) if c != "standard" && c != "unlimited" => Err(ApiError::invalid_value(format!(
            "Value ({c}) for parameter CpuCredits is invalid. Expecting standard or unlimited."
        ))),
        Some(_) if !itype.burstable => Err(ApiError::InvalidParameterCombination(format!(
            "CPU credits (CreditSpecification) apply to burstable performance instances (T family) only, not to {}",
            itype.name
        ))),
        Some(c) => Ok(Some(c.to_owned())),
        None if !itype.burstable => Ok(None),
        None if itype.name.starts_with("t2.") => Ok(Some("standard".into())),
        None => Ok(Some("unlimited".into())),
    }
}
