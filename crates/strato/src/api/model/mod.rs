//! The EC2 service model, generated from botocore's `ec2/2016-11-15` model by
//! `tools/ec2-model.py` into `data.rs` (static tables, not a Rust type per shape).
//!
//! The Query decoder walks it before an action's own decoding: every parameter name of a
//! request must be a member of the action's input in the model (`UnknownParameter`
//! otherwise), with the EC2 wire rules (`Member.N` lists, `Struct.Field`, list indexes from
//! 0 or 1), and every value must have the member's type, one of its enum values and be within
//! its documented range (`InvalidParameterValue` naming the parameter and the value). Members
//! the model marks required must be there (`MissingParameter`). What an action then does with
//! each member is the action's business (`api::actions`); a member it does not honour is
//! refused by `Params::finish` with an error naming it and its value.

#[rustfmt::skip]
#[allow(clippy::all)]
mod data;

use std::collections::BTreeSet;

use super::error::{ApiError, ApiResult};
use super::query::MAX_LIST_INDEX;

pub use data::BOTOCORE_VERSION;

/// One operation: its name and its input and output shapes (indexes into `SHAPES`).
pub struct Operation {
    pub name: &'static str,
    input: u16,
    output: u16,
}

/// One shape of the model.
pub struct Shape {
    pub name: &'static str,
    pub kind: Kind,
}

/// What a shape is. Ranges index the flat `MEMBERS` and `ENUMS` tables.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Structure { start: u16, len: u16 },
    List { member: u16, item: &'static str },
    String { start: u16, len: u16, min: u32, max: u32 },
    Integer { min: i64, max: i64 },
    Boolean,
    Double,
    Timestamp,
    Blob,
}

/// One member of a structure.
pub struct Member {
    /// The Query name a request uses (`queryName`, else the capitalised `locationName`).
    pub wire: &'static str,
    /// The model's member name (`InstanceIds`).
    pub name: &'static str,
    /// The XML element name in an answer (`locationName`, else the member name).
    pub xml: &'static str,
    pub shape: u16,
    pub required: bool,
}

const NONE: u16 = u16::MAX;

const fn op(name: &'static str, input: u16, output: u16) -> Operation {
    Operation { name, input, output }
}
const fn st(start: u32, len: u32) -> Kind {
    Kind::Structure { start: start as u16, len: len as u16 }
}
const fn list(member: u16, item: &'static str) -> Kind {
    Kind::List { member, item }
}
const fn string(start: u32, len: u32, min: u32, max: u32) -> Kind {
    Kind::String { start: start as u16, len: len as u16, min, max }
}
const fn int(min: i64, max: i64) -> Kind {
    Kind::Integer { min, max }
}
const fn m(wire: &'static str, name: &'static str, xml: &'static str, shape: u16, required: bool) -> Member {
    Member { wire, name, xml, shape, required }
}

// The tables index with u16: the generator refuses a model that outgrows it, and this keeps
// the casts in `st` and `string` honest.
const _: () = assert!(data::MEMBERS.len() < u16::MAX as usize && data::ENUMS.len() < u16::MAX as usize);

/// Every operation of the model, sorted by name.
pub fn operations() -> &'static [Operation] {
    &data::OPERATIONS
}

/// The operation called `name`, if the model has it.
pub fn operation(name: &str) -> Option<&'static Operation> {
    data::OPERATIONS.binary_search_by(|o| o.name.cmp(name)).ok().map(|i| &data::OPERATIONS[i])
}

impl Operation {
    pub fn input(&self) -> Option<&'static Shape> {
        shape(self.input)
    }
    pub fn output(&self) -> Option<&'static Shape> {
        shape(self.output)
    }
}

fn shape(i: u16) -> Option<&'static Shape> {
    if i == NONE {
        None
    } else {
        data::SHAPES.get(usize::from(i))
    }
}

impl Shape {
    /// A structure's members, sorted by wire name (empty for other shapes).
    pub fn members(&self) -> &'static [Member] {
        match self.kind {
            Kind::Structure { start, len } => &data::MEMBERS[usize::from(start)..usize::from(start) + usize::from(len)],
            _ => &[],
        }
    }

    /// The member whose wire name is `wire`.
    pub fn member(&self, wire: &str) -> Option<&'static Member> {
        let ms = self.members();
        ms.binary_search_by(|m| m.wire.cmp(wire)).ok().map(|i| &ms[i])
    }

    /// A string shape's enum values (empty when any string goes).
    pub fn enum_values(&self) -> &'static [&'static str] {
        match self.kind {
            Kind::String { start, len, .. } => &data::ENUMS[usize::from(start)..usize::from(start) + usize::from(len)],
            _ => &[],
        }
    }

    /// A list's element shape.
    pub fn list_member(&self) -> Option<&'static Shape> {
        match self.kind {
            Kind::List { member, .. } => shape(member),
            _ => None,
        }
    }
}

impl Member {
    pub fn shape(&self) -> &'static Shape {
        // The generator writes only indexes of shapes it wrote.
        &data::SHAPES[usize::from(self.shape)]
    }
}

/// Parses a list index: `0`, or digits without a leading zero, at most `MAX_LIST_INDEX`.
/// `None` when the segment is not digits at all (so it is some other name).
pub fn list_index(seg: &str) -> Option<ApiResult<u32>> {
    if seg.is_empty() || !seg.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(match seg.parse::<u32>() {
        Ok(n) if n <= MAX_LIST_INDEX && (seg == "0" || !seg.starts_with('0')) => Ok(n),
        _ => Err(ApiError::invalid_value(format!("Invalid list index '{seg}'"))),
    })
}

/// Checks one request against the model: `pairs` are its parameters (protocol keys such as
/// `Action`, `Version` and the presigned `X-Amz-*` already taken out).
pub fn check<'a>(op: &Operation, pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> ApiResult<()> {
    let Some(input) = op.input() else {
        return match pairs.into_iter().next() {
            Some((k, _)) => Err(ApiError::UnknownParameter(k.to_owned())),
            None => Ok(()),
        };
    };
    // Every structure the request fills in, by its prefix: their required members are
    // checked once all keys are walked. The input itself is always there.
    let mut present: BTreeSet<(String, u16)> = BTreeSet::new();
    let mut keys: BTreeSet<&str> = BTreeSet::new();
    for (key, value) in pairs {
        keys.insert(key);
        walk(op.input, key, value, &mut present)?;
    }
    check_required(input, "", &keys)?;
    for (prefix, i) in &present {
        if let Some(s) = shape(*i) {
            check_required(s, prefix, &keys)?;
        }
    }
    Ok(())
}

fn check_required(s: &Shape, prefix: &str, keys: &BTreeSet<&str>) -> ApiResult<()> {
    for m in s.members().iter().filter(|m| m.required) {
        let name = if prefix.is_empty() { m.wire.to_owned() } else { format!("{prefix}.{}", m.wire) };
        let dotted = format!("{name}.");
        let there = keys.contains(name.as_str())
            || keys.range(dotted.as_str()..).next().is_some_and(|k| k.starts_with(&dotted));
        if !there {
            return Err(ApiError::MissingParameter(name));
        }
    }
    Ok(())
}

/// Follows `key` segment by segment from `input` and checks `value` at the leaf.
fn walk(input: u16, key: &str, value: &str, present: &mut BTreeSet<(String, u16)>) -> ApiResult<()> {
    let unknown = || ApiError::UnknownParameter(key.to_owned());
    let mut at = input;
    let mut consumed = 0usize; // bytes of `key` walked so far, with their dots
    let mut segs = key.split('.');
    loop {
        let s = shape(at).ok_or_else(unknown)?;
        match s.kind {
            Kind::Structure { .. } => {
                let Some(seg) = segs.next() else { return Err(unknown()) };
                let m = s.member(seg).ok_or_else(unknown)?;
                if consumed > 0 {
                    // A nested structure is filled in (the input itself always is).
                    present.insert((key[..consumed - 1].to_owned(), at));
                }
                consumed += seg.len() + 1;
                at = m.shape;
            }
            Kind::List { member, .. } => {
                let Some(seg) = segs.next() else {
                    // `Name=` with nothing: an empty list, as the Query protocol writes one.
                    return if value.is_empty() { Ok(()) } else { Err(unknown()) };
                };
                match list_index(seg) {
                    None => return Err(unknown()),
                    Some(Err(e)) => return Err(e),
                    Some(Ok(_)) => {}
                }
                consumed += seg.len() + 1;
                at = member;
            }
            _ => {
                if segs.next().is_some() {
                    return Err(unknown());
                }
                return check_value(s, key, value);
            }
        }
    }
}

/// Checks a scalar value against its shape: type, enum, range.
pub fn check_value(s: &Shape, key: &str, value: &str) -> ApiResult<()> {
    let bad = |why: &str| ApiError::invalid_value(format!("Invalid value '{value}' for {key}: {why}"));
    match s.kind {
        Kind::String { min, max, .. } => {
            let values = s.enum_values();
            if !values.is_empty() && !values.contains(&value) {
                return Err(bad(&format!("expected one of {}", enum_list(values))));
            }
            let n = value.chars().count();
            if n < min as usize || n > max as usize {
                return Err(bad(&format!("its length must be between {min} and {max}")));
            }
        }
        Kind::Integer { min, max } => match value.trim().parse::<i64>() {
            Ok(n) if n < min || n > max => return Err(bad(&format!("the value must be between {min} and {max}"))),
            Ok(_) => {}
            Err(_) => return Err(bad("not an integer")),
        },
        Kind::Boolean => {
            if !value.eq_ignore_ascii_case("true") && !value.eq_ignore_ascii_case("false") {
                return Err(bad("expected true or false"));
            }
        }
        Kind::Double => {
            if !value.trim().parse::<f64>().is_ok_and(f64::is_finite) {
                return Err(bad("not a number"));
            }
        }
        Kind::Timestamp => {
            if chrono::DateTime::parse_from_rfc3339(value).is_err() && value.parse::<i64>().is_err() {
                return Err(bad("not an ISO 8601 timestamp"));
            }
        }
        Kind::Blob => {
            use base64::Engine;
            if base64::engine::general_purpose::STANDARD.decode(value).is_err() {
                return Err(bad("not base64"));
            }
        }
        Kind::Structure { .. } | Kind::List { .. } => return Err(ApiError::UnknownParameter(key.to_owned())),
    }
    Ok(())
}

fn enum_list(values: &[&str]) -> String {
    const SHOWN: usize = 12;
    let mut s = values.iter().take(SHOWN).copied().collect::<Vec<_>>().join(", ");
    if values.len() > SHOWN {
        s.push_str(&format!(", ... ({} values)", values.len()));
    }
    s
}

/// The shape called `name`, if the model has it.
pub fn shape_named(name: &str) -> Option<&'static Shape> {
    data::SHAPES.binary_search_by(|s| s.name.cmp(name)).ok().map(|i| &data::SHAPES[i])
}

/// A request's parameters under one member, re-read as a tree named by the model's member
/// names: structures as JSON objects, lists as arrays (in index order), scalars as strings.
/// Launch templates keep their data this way, so that it can be written back in another
/// shape whose members have the same names (RunInstances' input, the XML of
/// `ResponseLaunchTemplateData`).
#[derive(Debug)]
enum Node {
    Leaf(String),
    Struct(std::collections::BTreeMap<&'static str, Node>),
    List(std::collections::BTreeMap<u32, Node>),
}

impl Node {
    fn into_json(self) -> serde_json::Value {
        match self {
            Node::Leaf(s) => serde_json::Value::String(s),
            Node::Struct(m) => {
                serde_json::Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v.into_json())).collect())
            }
            Node::List(m) => serde_json::Value::Array(m.into_values().map(Node::into_json).collect()),
        }
    }
}

/// Builds the tree of `shape` from `pairs`, whose keys are relative to it
/// (`SecurityGroupId.1`, `TagSpecification.1.Tag.1.Key`). `prefix` only names the keys in
/// errors. The pairs must have passed `check`.
pub fn to_tree<'a>(
    shape: &'static Shape,
    prefix: &str,
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> ApiResult<serde_json::Value> {
    let mut root = Node::Struct(Default::default());
    for (key, value) in pairs {
        let unknown = || ApiError::UnknownParameter(format!("{prefix}{key}"));
        let mut s = shape;
        let mut node = &mut root;
        let mut segs = key.split('.').peekable();
        while let Some(seg) = segs.next() {
            let last = segs.peek().is_none();
            match (&s.kind, node) {
                (Kind::Structure { .. }, Node::Struct(m)) => {
                    let member = s.member(seg).ok_or_else(unknown)?;
                    s = member.shape();
                    let fresh = || match s.kind {
                        Kind::Structure { .. } => Node::Struct(Default::default()),
                        Kind::List { .. } => Node::List(Default::default()),
                        _ => Node::Leaf(String::new()),
                    };
                    node = m.entry(member.name).or_insert_with(fresh);
                }
                (Kind::List { .. }, Node::List(m)) => {
                    let n = list_index(seg).ok_or_else(unknown)??;
                    s = s.list_member().ok_or_else(unknown)?;
                    let fresh = || match s.kind {
                        Kind::Structure { .. } => Node::Struct(Default::default()),
                        Kind::List { .. } => Node::List(Default::default()),
                        _ => Node::Leaf(String::new()),
                    };
                    node = m.entry(n).or_insert_with(fresh);
                }
                _ => return Err(unknown()),
            }
            if last {
                match node {
                    Node::Leaf(v) => *v = value.to_owned(),
                    // `Name=` for an empty list, or a structure given a value: nothing to keep.
                    _ if value.is_empty() => {}
                    _ => return Err(unknown()),
                }
            }
        }
    }
    Ok(root.into_json())
}

/// Writes `tree` (from `to_tree`) as Query pairs of `shape`, matching members by name:
/// `prefix` is put before every key. A member `shape` does not have is returned as the
/// error (its path in the tree), so the caller can say which part has no counterpart.
pub fn from_tree(
    shape: &'static Shape,
    tree: &serde_json::Value,
    prefix: &str,
    out: &mut Vec<(String, String)>,
) -> Result<(), String> {
    let join = |p: &str, w: &str| if p.is_empty() { w.to_owned() } else { format!("{p}.{w}") };
    match (&shape.kind, tree) {
        (Kind::Structure { .. }, serde_json::Value::Object(m)) => {
            for (name, v) in m {
                let member = shape.members().iter().find(|x| x.name == name).ok_or_else(|| join(prefix, name))?;
                from_tree(member.shape(), v, &join(prefix, member.wire), out)?;
            }
        }
        (Kind::List { .. }, serde_json::Value::Array(items)) => {
            let item = shape.list_member().ok_or_else(|| prefix.to_owned())?;
            for (i, v) in items.iter().enumerate() {
                from_tree(item, v, &format!("{prefix}.{}", i + 1), out)?;
            }
        }
        (_, serde_json::Value::String(s)) => out.push((prefix.to_owned(), s.clone())),
        _ => return Err(prefix.to_owned()),
    }
    Ok(())
}

/// Writes `tree` (from `to_tree`) as the XML of the output shape `shape`: members by name,
/// under their XML names, lists as `<name><item>...</item></name>`. Members the output
/// shape does not have are left out.
pub fn write_tree(x: &mut super::xml::Xml, shape: &'static Shape, tree: &serde_json::Value) {
    let serde_json::Value::Object(m) = tree else { return };
    for member in shape.members() {
        let Some(v) = m.get(member.name) else { continue };
        write_member(x, member.xml, member.shape(), v);
    }
}

fn write_member(x: &mut super::xml::Xml, tag: &str, shape: &'static Shape, v: &serde_json::Value) {
    match (&shape.kind, v) {
        (Kind::Structure { .. }, serde_json::Value::Object(_)) => {
            x.open(tag);
            write_tree(x, shape, v);
            x.close(tag);
        }
        (Kind::List { item, .. }, serde_json::Value::Array(items)) => {
            let Some(item_shape) = shape.list_member() else { return };
            x.open(tag);
            for i in items {
                write_member(x, item, item_shape, i);
            }
            x.close(tag);
        }
        (_, serde_json::Value::String(s)) => {
            x.field(tag, s);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::query::Params;

    /// One request per operation as botocore's EC2 serializer writes it, every member filled
    /// in (tools/ec2-corpus.py).
    const CORPUS: &str = include_str!("../../../tests/data/ec2-requests.txt");

    fn check_str(action: &str, form: &str) -> ApiResult<()> {
        let p = Params::parse(form.as_bytes())?;
        let op = operation(action).ok_or_else(|| ApiError::InvalidAction(action.into()))?;
        check(op, p.unread())
    }

    #[test]
    fn every_operation_botocore_serialises_passes_the_model() {
        let mut n = 0;
        for line in CORPUS.lines().filter(|l| !l.starts_with('#')) {
            let (action, form) = line.split_once(' ').unwrap_or((line, ""));
            if let Err(e) = check_str(action, form) {
                panic!("{action}: {}: {e}", e.code());
            }
            n += 1;
        }
        assert_eq!(n, operations().len(), "the corpus and the model have the same operations");
    }

    #[test]
    fn every_implemented_action_decodes_botocores_requests_without_panicking() {
        for line in CORPUS.lines().filter(|l| !l.starts_with('#')) {
            let (action, form) = line.split_once(' ').unwrap_or((line, ""));
            if !crate::api::SUPPORTED_ACTIONS.contains(&action) {
                continue;
            }
            let mut p = Params::parse(form.as_bytes()).expect("corpus lines parse");
            // Any answer will do (the values are placeholders): it must be an answer.
            let _ = crate::api::decode_request(action, &mut p);
        }
    }

    #[test]
    fn names_types_enums_ranges_and_required_members() {
        let code = |a: &str, f: &str| check_str(a, f).err().map(|e| e.code().to_owned());
        assert_eq!(code("DescribeVolumes", "MaxResults=1000&VolumeId.1=vol-1"), None);
        assert_eq!(code("DescribeVolumes", "Bogus=1"), Some("UnknownParameter".into()));
        assert_eq!(code("DescribeVolumes", "VolumeId.x=1"), Some("UnknownParameter".into()));
        assert_eq!(code("DescribeVolumes", "VolumeId.1.Extra=1"), Some("UnknownParameter".into()));
        assert_eq!(code("DescribeVolumes", "MaxResults=ten"), Some("InvalidParameterValue".into()));
        assert_eq!(code("DescribeInstanceTypes", "MaxResults=1000"), Some("InvalidParameterValue".into()));
        assert_eq!(code("DescribeInstanceTypes", "MaxResults=100"), None);
        assert_eq!(code("CreateVolume", "AvailabilityZone=a&VolumeType=fast"), Some("InvalidParameterValue".into()));
        assert_eq!(
            code("CreateVolume", "AvailabilityZone=a&VolumeType=gp3&Encrypted=yes"),
            Some("InvalidParameterValue".into())
        );
        assert_eq!(code("CreateTags", "ResourceId.1=vpc-1"), Some("MissingParameter".into()));
        assert_eq!(code("CreateTags", "ResourceId.0=vpc-1&Tag.0.Key=k"), None);
        // A nested structure's required member, only once the structure is there.
        assert_eq!(code("RunInstances", "MinCount=1&MaxCount=1"), None);
        assert_eq!(
            code("RunInstances", "MinCount=1&MaxCount=1&TagSpecification.1.Tag.1.Value=v"),
            None,
            "TagSpecification's members are all optional"
        );
        assert_eq!(code("RunInstances", "MinCount=1"), Some("MissingParameter".into()));
        assert_eq!(
            code("RunInstances", "MinCount=1&MaxCount=1&ElasticGpuSpecification.1.Foo=x"),
            Some("UnknownParameter".into())
        );
        assert_eq!(code("RunInstances", "MinCount=1&MaxCount=1&ElasticGpuSpecification.1.Type=x"), None);
        assert_eq!(code("RunInstances", "MinCount=1&MaxCount=1&InstanceType=m1.small"), None);
        assert_eq!(
            code("RunInstances", "MinCount=1&MaxCount=1&InstanceType=m1.huge"),
            Some("InvalidParameterValue".into())
        );
        // An empty list as the Query protocol writes one; a value on a list's own name is not.
        assert_eq!(code("DescribeVolumes", "VolumeId="), None);
        assert_eq!(code("DescribeVolumes", "VolumeId=vol-1"), Some("UnknownParameter".into()));
        assert_eq!(code("DescribeVolumes", "VolumeId.1001=vol-1"), Some("InvalidParameterValue".into()));
        assert_eq!(code("DescribeVolumes", "VolumeId.01=vol-1"), Some("InvalidParameterValue".into()));
    }

    #[test]
    fn trees_move_between_shapes_by_member_name() {
        let input = shape_named("RequestLaunchTemplateData").expect("shape");
        let pairs = [
            ("ImageId", "ami-1"),
            ("SecurityGroupId.1", "sg-1"),
            ("SecurityGroupId.2", "sg-2"),
            ("TagSpecification.1.ResourceType", "instance"),
            ("TagSpecification.1.Tag.1.Key", "k"),
            ("TagSpecification.1.Tag.1.Value", "v"),
            ("CreditSpecification.CpuCredits", "standard"),
        ];
        let tree = to_tree(input, "LaunchTemplateData.", pairs).expect("tree");
        assert_eq!(tree["SecurityGroupIds"], serde_json::json!(["sg-1", "sg-2"]));
        assert_eq!(tree["TagSpecifications"][0]["Tags"][0]["Key"], "k");
        let run = operation("RunInstances").and_then(Operation::input).expect("input");
        let mut out = Vec::new();
        from_tree(run, &tree, "", &mut out).expect("every member has a counterpart");
        out.sort();
        let mut want: Vec<(String, String)> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        want.sort();
        assert_eq!(out, want);
        // A member RunInstances does not have is named.
        let tree = to_tree(input, "", [("RamDiskId", "ari-1")]).expect("tree");
        assert_eq!(from_tree(run, &tree, "", &mut Vec::new()), Err("RamDiskId".to_owned()));
        // The XML of the output shape.
        let tree = to_tree(input, "", [("SecurityGroupId.1", "sg-1"), ("ImageId", "ami-1")]).expect("tree");
        let mut x = crate::api::xml::Xml::fragment();
        write_tree(&mut x, shape_named("ResponseLaunchTemplateData").expect("shape"), &tree);
        let xml = x.into_string();
        assert!(xml.contains("<imageId>ami-1</imageId>"), "{xml}");
        assert!(xml.contains("<securityGroupIdSet><item>sg-1</item></securityGroupIdSet>"), "{xml}");
    }

    /// A value of the right form for members whose placeholder (`x`) a decoder would stop at.
    fn plausible(key: &str) -> Option<&'static str> {
        let leaf = key.rsplit('.').find(|s| !s.bytes().all(|b| b.is_ascii_digit())).unwrap_or(key);
        Some(match leaf {
            "CidrBlock" | "CidrIp" | "CidrIpv4" | "DestinationCidrBlock" => "10.0.0.0/16",
            "VpcId" => "vpc-0123456789abcdef0",
            "SubnetId" => "subnet-0123456789abcdef0",
            "InstanceId" => "i-0123456789abcdef0",
            "VolumeId" => "vol-0123456789abcdef0",
            "SnapshotId" | "SourceSnapshotId" => "snap-0123456789abcdef0",
            "ImageId" | "SourceImageId" => "ami-0123456789abcdef0",
            "GroupId" | "SecurityGroupId" | "ReferencedGroupId" => "sg-0123456789abcdef0",
            "SecurityGroupRuleId" => "sgr-0123456789abcdef0",
            "AllocationId" => "eipalloc-0123456789abcdef0",
            "AssociationId" => "eipassoc-0123456789abcdef0",
            "InternetGatewayId" => "igw-0123456789abcdef0",
            "KeyPairId" => "key-0123456789abcdef0",
            "LaunchTemplateId" => "lt-0123456789abcdef0",
            "NetworkInterfaceId" => "eni-0123456789abcdef0",
            "RouteTableId" => "rtb-0123456789abcdef0",
            "NetworkAclId" => "acl-0123456789abcdef0",
            "AvailabilityZone" => "local-1a",
            "Device" => "/dev/sdf",
            "DeviceName" => "/dev/xvda",
            "IpProtocol" => "tcp",
            "PublicIp" => "127.100.0.1",
            "PrivateIpAddress" => "10.0.0.10",
            "Size" | "VolumeSize" => "8",
            "Iops" => "3000",
            "Throughput" => "125",
            "GroupName" | "KeyName" | "Name" | "LaunchTemplateName" => "name1",
            "PublicKeyMaterial" => {
                "c3NoLWVkMjU1MTkgQUFBQUMzTnphQzFsWkRJMU5URTVBQUFBSVBabUVtUmlTekNmVytsOE4xT1ZjLzJzUXNZKzhnV0d2NWhPS0xRbEdzaFo="
            }
            _ => return None,
        })
    }

    /// How each implemented action treats each top-level member of its input, found by
    /// decoding botocore's request with only the required members and that one: `honoured`
    /// when the action reads it, `refused` when it answers UnsupportedOperation naming it,
    /// `not reached` when the decoder stopped at a placeholder value before it.
    fn member_table() -> String {
        let mut out = String::from(
            "# EC2 members per implemented action\n\n\
             Generated by `cargo test -p strato --lib member_table` (`STRATO_BLESS=1` rewrites it) from the \
             EC2 model and botocore's own serialised request per action (`tests/data/ec2-requests.txt`): \
             each top-level member is sent alone beside the required ones. **honoured**: the action reads it \
             (its value is used or checked); **refused**: the action answers `UnsupportedOperation` naming \
             it, whatever the value (a value that asks for nothing, such as `false`, is accepted only where \
             the action reads the member); **not reached**: the decoder stopped at a placeholder value of \
             another member first (read the action's code). `DryRun` is honoured by every action.\n\n\
             | action | honoured | refused | not reached |\n| --- | --- | --- | --- |\n",
        );
        for line in CORPUS.lines().filter(|l| !l.starts_with('#')) {
            let (action, form) = line.split_once(' ').unwrap_or((line, ""));
            if !crate::api::SUPPORTED_ACTIONS.contains(&action) {
                continue;
            }
            let Some(input) = operation(action).and_then(Operation::input) else { continue };
            let all: Vec<(String, String)> = Params::parse(form.as_bytes())
                .expect("corpus lines parse")
                .pairs()
                .into_iter()
                .map(|(k, v)| {
                    let v = plausible(&k).map(str::to_owned).unwrap_or(v);
                    (k, v)
                })
                .collect();
            let top = |k: &str| k.split('.').next().unwrap_or(k).to_owned();
            let mut required: Vec<&str> = input.members().iter().filter(|m| m.required).map(|m| m.wire).collect();
            // Members the decoder itself demands (RunInstances' ImageId, which the model
            // leaves optional for launch templates) join the base, as it names them.
            for _ in 0..8 {
                let pairs = all.iter().filter(|(k, _)| required.contains(&top(k).as_str()));
                let mut p = Params::from_pairs(pairs.map(|(k, v)| (k.as_str(), v.as_str())));
                match crate::api::decode_request(action, &mut p) {
                    Err(ApiError::MissingParameter(name)) => match input.member(&top(&name)) {
                        Some(m) if !required.contains(&m.wire) => required.push(m.wire),
                        _ => break,
                    },
                    _ => break,
                }
            }
            let (mut honoured, mut refused, mut unknown) = (Vec::new(), Vec::new(), Vec::new());
            for m in input.members().iter().filter(|m| m.wire != "DryRun") {
                let pairs: Vec<(&str, &str)> = all
                    .iter()
                    .filter(|(k, _)| {
                        let t = top(k);
                        t == m.wire || required.contains(&t.as_str())
                    })
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let mine: Vec<&str> = pairs.iter().map(|(k, _)| *k).filter(|k| top(k) == m.wire).collect();
                let mut p = Params::from_pairs(pairs.iter().copied());
                let result = crate::api::decode_request(action, &mut p);
                let read = mine.iter().any(|k| p.was_read(k));
                let named = |msg: &str| mine.iter().any(|k| msg.contains(&format!("{k}=")));
                match &result {
                    Err(ApiError::UnsupportedOperation(msg)) if named(msg) && !read => refused.push(m.wire),
                    _ if read || m.required => honoured.push(m.wire),
                    Ok(()) => honoured.push(m.wire),
                    Err(_) => unknown.push(m.wire),
                }
            }
            out.push_str(&format!(
                "| {action} | {} | {} | {} |\n",
                honoured.join(", "),
                refused.join(", "),
                unknown.join(", ")
            ));
        }
        out
    }

    #[test]
    fn member_table_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/ec2-members.md");
        let table = member_table();
        if std::env::var_os("STRATO_BLESS").is_some() {
            std::fs::write(path, &table).expect("writing docs/ec2-members.md");
            return;
        }
        let current = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            current == table,
            "docs/ec2-members.md is not what the decoders do now: run STRATO_BLESS=1 cargo test -p strato --lib member_table"
        );
    }

    #[test]
    fn lookups() {
        let op = operation("RunInstances").expect("RunInstances is in the model");
        let input = op.input().expect("it has an input");
        let m = input.member("InstanceType").expect("a member");
        assert_eq!((m.name, m.xml), ("InstanceType", "InstanceType"));
        assert!(m.shape().enum_values().contains(&"t3.micro"));
        let ids = operation("DescribeInstances").and_then(Operation::input).and_then(|s| s.member("InstanceId"));
        assert_eq!(ids.map(|m| m.name), Some("InstanceIds"));
        let out = operation("DescribeInstances").and_then(Operation::output).expect("an output");
        assert!(out.members().iter().any(|m| m.xml == "reservationSet"));
        assert!(operation("NoSuchAction").is_none());
    }
}
