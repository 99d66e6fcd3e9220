//! The resources of the control plane, as the database holds them and the API shows them.

use chrono::{DateTime, Utc};

use crate::ids::*;

pub type Tags = Vec<(String, String)>;

#[derive(Debug, Clone)]
pub struct Account {
    pub id: AccountId,
    pub name: String,
    /// A read-only account may call Describe* and Get* actions only.
    pub read_only: bool,
    /// vCPUs its pending, running and stopping instances may use at once.
    pub vcpu_quota: u32,
    pub created_at: DateTime<Utc>,
}

/// Who is calling: the account the request's access key belongs to.
#[derive(Debug, Clone)]
pub struct Caller {
    pub account_id: AccountId,
    pub read_only: bool,
    /// The admin account (made by `strato serve`) may register images from host files.
    pub admin: bool,
}

#[derive(Debug, Clone)]
pub struct KeyPair {
    pub id: KeyPairId,
    pub name: String,
    /// `rsa` or `ed25519`.
    pub key_type: String,
    pub fingerprint: String,
    /// The public key in OpenSSH form (`ssh-ed25519 AAAA...`).
    pub public_key: String,
    pub created_at: DateTime<Utc>,
    pub tags: Tags,
}

#[derive(Debug, Clone)]
pub struct Vpc {
    pub id: VpcId,
    pub owner: AccountId,
    pub cidr: String,
    pub is_default: bool,
    pub instance_tenancy: String,
    pub enable_dns_support: bool,
    pub enable_dns_hostnames: bool,
    /// Its DHCP options set; `None` is EC2's `default`.
    pub dhcp_options_id: Option<String>,
    pub tags: Tags,
}

#[derive(Debug, Clone)]
pub struct Subnet {
    pub id: SubnetId,
    pub owner: AccountId,
    pub vpc_id: VpcId,
    pub cidr: String,
    pub availability_zone: String,
    /// Derived from the zone and the region, not stored.
    pub availability_zone_id: String,
    pub is_default: bool,
    pub map_public_ip: bool,
    pub tags: Tags,
}

#[derive(Debug, Clone)]
pub struct SecurityGroup {
    pub id: SecurityGroupId,
    pub owner: AccountId,
    pub vpc_id: VpcId,
    pub name: String,
    pub description: String,
    pub rules: Vec<SgRule>,
    pub tags: Tags,
}

/// One rule of a security group: one protocol and port range, and exactly one peer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SgRule {
    pub id: SecurityGroupRuleId,
    pub group_id: SecurityGroupId,
    pub is_egress: bool,
    pub protocol: String,
    pub from_port: Option<i64>,
    pub to_port: Option<i64>,
    pub peer: Peer,
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Peer {
    Ipv4(String),
    Ipv6(String),
    Group { group_id: SecurityGroupId, owner: AccountId },
}

impl SgRule {
    /// Two rules are the same permission when all but id and description agree.
    pub fn same_permission(&self, other: &SgRule) -> bool {
        self.is_egress == other.is_egress
            && self.protocol == other.protocol
            && self.from_port == other.from_port
            && self.to_port == other.to_port
            && self.peer == other.peer
    }
}

/// A machine image (AMI): a root disk and the kernel that boots it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Image {
    pub id: ImageId,
    pub owner: AccountId,
    /// `strato` for the images Strato builds.
    pub owner_alias: Option<String>,
    pub name: String,
    pub description: String,
    pub architecture: String,
    pub root_device_name: String,
    pub root_snapshot_id: SnapshotId,
    pub root_size_gb: i64,
    /// The root disk file (in the data dir).
    pub disk_path: String,
    /// `raw` or `qcow2`.
    pub disk_format: String,
    pub kernel_path: String,
    pub initrd_path: Option<String>,
    /// Kernel command line (without `root=`).
    pub cmdline: String,
    pub public: bool,
    pub state: String,
    pub source_image_id: Option<String>,
    /// For images Strato builds: what they were built from.
    pub build_key: Option<String>,
    /// The ClientToken of the CopyImage that made it.
    pub client_token: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Accounts given launch permission explicitly.
    pub launch_permissions: Vec<AccountId>,
    pub tags: Tags,
}
