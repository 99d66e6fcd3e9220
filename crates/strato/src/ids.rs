//! Typed resource ids, printed and parsed in their EC2 form (`sg-0123456789abcdef0`).
//!
//! New ids are the prefix and 17 lowercase hex digits, as EC2 makes them today; parsing also
//! accepts the old 8-digit form so that ids pasted from older tools are not called malformed.
//! Each kind knows the error code EC2 gives when a string is not an id of that kind.

use std::fmt;

use rand::Rng;

/// A string that was not an id of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid id: \"{value}\" (expecting \"{prefix}-...\")")]
pub struct MalformedId {
    /// The EC2 error code for this kind, e.g. `InvalidGroupId.Malformed`.
    pub code: &'static str,
    pub prefix: &'static str,
    pub value: String,
}

fn random_hex17() -> String {
    let mut rng = rand::thread_rng();
    (0..17).map(|_| char::from_digit(rng.gen_range(0..16), 16).unwrap_or('0')).collect()
}

fn is_valid(prefix: &str, s: &str) -> bool {
    match s.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) {
        Some(hex) => {
            (hex.len() == 8 || hex.len() == 17) && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        }
        None => false,
    }
}

macro_rules! resource_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $malformed:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;
            pub const MALFORMED: &'static str = $malformed;

            /// A fresh random id.
            pub fn generate() -> Self {
                Self(format!("{}-{}", $prefix, random_hex17()))
            }

            pub fn parse(s: &str) -> Result<Self, MalformedId> {
                if is_valid($prefix, s) {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(MalformedId { code: $malformed, prefix: $prefix, value: s.to_owned() })
                }
            }

            /// Wraps a value read back from our own database, where only valid ids are written.
            pub fn from_db(s: String) -> Self {
                Self(s)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = MalformedId;
            fn from_str(s: &str) -> Result<Self, MalformedId> {
                Self::parse(s)
            }
        }
    };
}

resource_id!(
    /// `i-...`
    InstanceId, "i", "InvalidInstanceID.Malformed");
resource_id!(
    /// `r-...`, the reservation of one RunInstances call.
    ReservationId, "r", "InvalidReservationID.Malformed");
resource_id!(
    /// `vol-...`
    VolumeId, "vol", "InvalidVolumeID.Malformed");
resource_id!(
    /// `snap-...`
    SnapshotId, "snap", "InvalidSnapshotID.Malformed");
resource_id!(
    /// `ami-...`
    ImageId, "ami", "InvalidAMIID.Malformed");
resource_id!(
    /// `sg-...`
    SecurityGroupId, "sg", "InvalidGroupId.Malformed");
resource_id!(
    /// `sgr-...`, one rule of a security group.
    SecurityGroupRuleId, "sgr", "InvalidSecurityGroupRuleId.Malformed");
resource_id!(
    /// `vpc-...`
    VpcId, "vpc", "InvalidVpcID.Malformed");
resource_id!(
    /// `subnet-...`
    SubnetId, "subnet", "InvalidSubnetID.Malformed");
resource_id!(
    /// `eni-...`
    NetworkInterfaceId, "eni", "InvalidNetworkInterfaceID.Malformed");
resource_id!(
    /// `eipalloc-...`
    AllocationId, "eipalloc", "InvalidAllocationID.Malformed");
resource_id!(
    /// `eipassoc-...`, an elastic IP's association with an instance.
    AssociationId, "eipassoc", "InvalidAssociationID.Malformed");
resource_id!(
    /// `lt-...`
    LaunchTemplateId, "lt", "InvalidLaunchTemplateId.Malformed");
resource_id!(
    /// `key-...`
    KeyPairId, "key", "InvalidKeyPair.Malformed");
resource_id!(
    /// `rtb-...`
    RouteTableId, "rtb", "InvalidRouteTableID.Malformed");
resource_id!(
    /// `acl-...`
    NetworkAclId, "acl", "InvalidNetworkAclID.Malformed");
resource_id!(
    /// `igw-...`
    InternetGatewayId, "igw", "InvalidInternetGatewayID.Malformed");
resource_id!(
    /// `h-...`, a host that runs instances (EC2 uses the prefix for Dedicated Hosts).
    HostId, "h", "InvalidHostID.Malformed");
resource_id!(
    /// `dopt-...`
    DhcpOptionsId, "dopt", "InvalidDhcpOptionID.Malformed");

/// A 12-digit AWS account id, as it appears in `OwnerId`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct AccountId(String);

impl AccountId {
    pub fn generate() -> Self {
        let mut rng = rand::thread_rng();
        // The first digit is never 0, so the id keeps its 12 digits wherever it is parsed as a number.
        let first = rng.gen_range(1..10u8);
        let rest: String = (0..11).map(|_| char::from_digit(rng.gen_range(0..10), 10).unwrap_or('0')).collect();
        Self(format!("{first}{rest}"))
    }

    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())).then(|| Self(s.to_owned()))
    }

    pub fn from_db(s: String) -> Self {
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What kind of resource an id names, from its prefix alone (for CreateTags and DescribeTags).
pub fn resource_type_of(id: &str) -> Option<&'static str> {
    let (prefix, _) = id.split_once('-')?;
    let kind = match prefix {
        "i" => "instance",
        "vol" => "volume",
        "snap" => "snapshot",
        "ami" => "image",
        "sg" => "security-group",
        "sgr" => "security-group-rule",
        "vpc" => "vpc",
        "subnet" => "subnet",
        "eni" => "network-interface",
        "eipalloc" => "elastic-ip",
        "key" => "key-pair",
        "rtb" => "route-table",
        "acl" => "network-acl",
        "igw" => "internet-gateway",
        "dopt" => "dhcp-options",
        "lt" => "launch-template",
        _ => return None,
    };
    is_valid(prefix, id).then_some(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_back() {
        let id = SecurityGroupId::generate();
        assert_eq!(id.as_str().len(), 3 + 17);
        assert_eq!(SecurityGroupId::parse(id.as_str()), Ok(id));
    }

    #[test]
    fn malformed_ids_are_rejected_with_their_code() {
        for bad in ["sg-", "sg-xyz", "vpc-0123456789abcdef0", "sg-0123456789ABCDEF0", "sg-123", ""] {
            let err = SecurityGroupId::parse(bad).unwrap_err();
            assert_eq!(err.code, "InvalidGroupId.Malformed");
        }
        assert!(SecurityGroupId::parse("sg-1a2b3c4d").is_ok());
    }

    #[test]
    fn account_ids_have_twelve_digits() {
        let a = AccountId::generate();
        assert!(AccountId::parse(a.as_str()).is_some());
        assert!(AccountId::parse("12345").is_none());
    }

    #[test]
    fn resource_types_come_from_prefixes() {
        assert_eq!(resource_type_of("vpc-0123456789abcdef0"), Some("vpc"));
        assert_eq!(resource_type_of("vpc-zz"), None);
        assert_eq!(resource_type_of("nope-0123456789abcdef0"), None);
    }
}
