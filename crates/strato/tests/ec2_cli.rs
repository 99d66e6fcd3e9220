//! The EC2 front door through the real AWS CLI: what a user types and reads.

mod common;

use common::Cloud;
use serde_json::Value;

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

#[test]
fn region_zones_attributes_and_instance_types() {
    let cloud = Cloud::start();
    let r = cloud.aws(&["ec2", "describe-regions"]);
    assert_eq!(s(&r["Regions"][0]["RegionName"]), "local-1");
    let z = cloud.aws(&["ec2", "describe-availability-zones"]);
    let names: Vec<&str> = z["AvailabilityZones"].as_array().unwrap().iter().map(|z| s(&z["ZoneName"])).collect();
    assert_eq!(names, ["local-1a", "local-1b", "local-1c"]);
    assert!(z["AvailabilityZones"].as_array().unwrap().iter().all(|z| z["State"] == "available"));
    // They are available because this machine is a host serving them all.
    let out = common::strato(cloud.dir.path()).args(["host", "list"]).output().expect("strato host list");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let hosts: Vec<Vec<&str>> = text.lines().skip(1).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(hosts.len(), 1, "{text}");
    assert!(hosts[0][0].starts_with("h-") && hosts[0][2] == "all" && hosts[0][6] == "up", "{text}");
    let id = std::fs::read_to_string(cloud.dir.path().join("host-id")).expect("host-id");
    assert_eq!(id.trim(), hosts[0][0]);
    let z = cloud.aws(&["ec2", "describe-availability-zones", "--filters", "Name=zone-name,Values=*b"]);
    assert_eq!(z["AvailabilityZones"].as_array().unwrap().len(), 1);
    assert_eq!(
        cloud.aws_err(&["ec2", "describe-availability-zones", "--zone-names", "mars-1a"]),
        "InvalidParameterValue"
    );

    let a = cloud.aws(&["ec2", "describe-account-attributes", "--attribute-names", "default-vpc"]);
    let vpcs = cloud.aws(&["ec2", "describe-vpcs", "--filters", "Name=is-default,Values=true"]);
    assert_eq!(a["AccountAttributes"][0]["AttributeValues"][0]["AttributeValue"], vpcs["Vpcs"][0]["VpcId"]);

    let t = cloud.aws(&["ec2", "describe-instance-types", "--instance-types", "t3.micro", "m5d.large"]);
    let types = t["InstanceTypes"].as_array().unwrap();
    assert_eq!(types.len(), 2);
    let micro = types.iter().find(|t| t["InstanceType"] == "t3.micro").unwrap();
    assert_eq!(micro["VCpuInfo"]["DefaultVCpus"], 2);
    assert_eq!(micro["MemoryInfo"]["SizeInMiB"], 1024);
    let m5d = types.iter().find(|t| t["InstanceType"] == "m5d.large").unwrap();
    assert_eq!(m5d["InstanceStorageSupported"], true);
    assert_eq!(m5d["InstanceStorageInfo"]["TotalSizeInGB"], 75);
    let two_vcpu = cloud.aws(&["ec2", "describe-instance-types", "--filters", "Name=vcpu-info.default-vcpus,Values=4"]);
    assert!(two_vcpu["InstanceTypes"].as_array().unwrap().iter().all(|t| t["VCpuInfo"]["DefaultVCpus"] == 4));
    assert_eq!(
        cloud.aws_err(&["ec2", "describe-instance-types", "--instance-types", "x9.huge"]),
        "InvalidParameterValue"
    );
    // The CLI paginates DescribeInstanceTypes by itself; a small page size forces several pages.
    let all = cloud.aws(&["ec2", "describe-instance-types", "--page-size", "5"]);
    let n = all["InstanceTypes"].as_array().unwrap().len();
    assert!(n >= 15, "all pages were joined: {n}");

    // The CLI's own defaults: it asks DescribeVolumes for pages of 1000 (EC2 answers with at
    // most 500), and its list parameters may be empty.
    let v = cloud.aws(&["ec2", "describe-volumes"]);
    assert!(v["Volumes"].is_array(), "{v}");
    let v = cloud.aws(&["ec2", "describe-snapshots", "--owner-ids", "self"]);
    assert!(v["Snapshots"].is_array(), "{v}");
}

#[test]
fn key_pairs() {
    let cloud = Cloud::start();
    let k = cloud.aws(&["ec2", "create-key-pair", "--key-name", "mykey"]);
    assert!(s(&k["KeyMaterial"]).starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    assert!(s(&k["KeyPairId"]).starts_with("key-"));
    assert_eq!(s(&k["KeyFingerprint"]).len(), 59, "SHA-1 in colon hex");

    let e = cloud.aws(&[
        "ec2",
        "create-key-pair",
        "--key-name",
        "ed",
        "--key-type",
        "ed25519",
        "--tag-specifications",
        "ResourceType=key-pair,Tags=[{Key=team,Value=blue}]",
    ]);
    assert!(s(&e["KeyMaterial"]).starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
    assert_eq!(e["Tags"][0]["Value"], "blue");

    // The private key we got back really is the key: ssh-keygen derives the same public key.
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("ed.pem");
    std::fs::write(&pem, s(&e["KeyMaterial"])).unwrap();
    let pub_path = dir.path().join("ed.pub");
    std::fs::write(
        &pub_path,
        format!("{}\n", {
            let d = cloud.aws(&["ec2", "describe-key-pairs", "--key-names", "ed", "--include-public-key"]);
            s(&d["KeyPairs"][0]["PublicKey"]).to_owned()
        }),
    )
    .unwrap();
    std::fs::set_permissions(&pem, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = std::process::Command::new("ssh-keygen")
        .arg("-y")
        .arg("-f")
        .arg(&pem)
        .output()
        .expect("ssh-keygen (openssh-client) is needed by this test");
    assert!(out.status.success(), "ssh-keygen read the key: {}", String::from_utf8_lossy(&out.stderr));
    let derived = String::from_utf8_lossy(&out.stdout);
    let stored = std::fs::read_to_string(&pub_path).unwrap();
    assert_eq!(derived.split_whitespace().nth(1), stored.split_whitespace().nth(1));

    // Import: an ed25519 public key keeps the fingerprint AWS would compute.
    let imported = cloud.aws(&[
        "ec2",
        "import-key-pair",
        "--key-name",
        "imported",
        "--public-key-material",
        &format!("fileb://{}", pub_path.display()),
    ]);
    assert_eq!(imported["KeyFingerprint"], e["KeyFingerprint"]);

    let d = cloud.aws(&["ec2", "describe-key-pairs"]);
    let names: Vec<&str> = d["KeyPairs"].as_array().unwrap().iter().map(|k| s(&k["KeyName"])).collect();
    assert_eq!(names, ["ed", "imported", "mykey"]);
    let d = cloud.aws(&["ec2", "describe-key-pairs", "--filters", "Name=tag:team,Values=blue"]);
    assert_eq!(d["KeyPairs"].as_array().unwrap().len(), 1);
    assert_eq!(d["KeyPairs"][0]["KeyType"], "ed25519");

    assert_eq!(cloud.aws_err(&["ec2", "create-key-pair", "--key-name", "mykey"]), "InvalidKeyPair.Duplicate");
    assert_eq!(cloud.aws_err(&["ec2", "describe-key-pairs", "--key-names", "nope"]), "InvalidKeyPair.NotFound");
    let bad = dir.path().join("bad.pub");
    std::fs::write(&bad, "ssh-rsa notakey").unwrap();
    assert_eq!(
        cloud.aws_err(&[
            "ec2",
            "import-key-pair",
            "--key-name",
            "bad",
            "--public-key-material",
            &format!("fileb://{}", bad.display())
        ]),
        "InvalidKeyPair.Format"
    );
    assert_eq!(
        cloud.aws_err(&["ec2", "create-key-pair", "--key-name", "x", "--key-type", "dsa"]),
        "InvalidParameterValue"
    );

    cloud.aws(&["ec2", "delete-key-pair", "--key-name", "mykey"]);
    cloud.aws(&["ec2", "delete-key-pair", "--key-name", "mykey"]); // idempotent, as on EC2
    let d = cloud.aws(&["ec2", "describe-key-pairs"]);
    assert_eq!(d["KeyPairs"].as_array().unwrap().len(), 2);
}

#[test]
fn security_groups_and_rules() {
    let cloud = Cloud::start();
    let sg = cloud.aws(&[
        "ec2",
        "create-security-group",
        "--group-name",
        "web",
        "--description",
        "web servers",
        "--tag-specifications",
        "ResourceType=security-group,Tags=[{Key=Name,Value=web}]",
    ]);
    let web = s(&sg["GroupId"]).to_owned();
    assert!(web.starts_with("sg-"));
    assert_eq!(
        cloud.aws_err(&["ec2", "create-security-group", "--group-name", "web", "--description", "again"]),
        "InvalidGroup.Duplicate"
    );
    let db =
        s(&cloud.aws(&["ec2", "create-security-group", "--group-name", "db", "--description", "databases"])["GroupId"])
            .to_owned();

    let r = cloud.aws(&[
        "ec2",
        "authorize-security-group-ingress",
        "--group-id",
        &web,
        "--protocol",
        "tcp",
        "--port",
        "22",
        "--cidr",
        "203.0.113.0/24",
    ]);
    assert_eq!(r["Return"], true);
    assert_eq!(r["SecurityGroupRules"][0]["FromPort"], 22);
    cloud.aws(&[
        "ec2",
        "authorize-security-group-ingress",
        "--group-id",
        &web,
        "--ip-permissions",
        "IpProtocol=tcp,FromPort=80,ToPort=80,IpRanges=[{CidrIp=0.0.0.0/0,Description=http}]",
        "IpProtocol=tcp,FromPort=443,ToPort=443,IpRanges=[{CidrIp=0.0.0.0/0}],Ipv6Ranges=[{CidrIpv6=::/0}]",
    ]);
    // A group reference: db accepts 5432 from members of web.
    cloud.aws(&[
        "ec2",
        "authorize-security-group-ingress",
        "--group-id",
        &db,
        "--protocol",
        "tcp",
        "--port",
        "5432",
        "--source-group",
        &web,
    ]);
    assert_eq!(
        cloud.aws_err(&[
            "ec2",
            "authorize-security-group-ingress",
            "--group-id",
            &web,
            "--protocol",
            "tcp",
            "--port",
            "22",
            "--cidr",
            "203.0.113.0/24"
        ]),
        "InvalidPermission.Duplicate"
    );
    assert_eq!(
        cloud.aws_err(&[
            "ec2",
            "authorize-security-group-ingress",
            "--group-id",
            &web,
            "--protocol",
            "tcp",
            "--port",
            "99999",
            "--cidr",
            "0.0.0.0/0"
        ]),
        "InvalidParameterValue"
    );
    assert_eq!(
        cloud.aws_err(&[
            "ec2",
            "authorize-security-group-ingress",
            "--group-id",
            &web,
            "--protocol",
            "tcp",
            "--port",
            "25",
            "--cidr",
            "300.0.0.0/8"
        ]),
        "InvalidParameterValue"
    );

    let g = cloud.aws(&["ec2", "describe-security-groups", "--group-ids", &web]);
    let perms = g["SecurityGroups"][0]["IpPermissions"].as_array().unwrap();
    assert_eq!(perms.len(), 3);
    let https = perms.iter().find(|p| p["FromPort"] == 443).unwrap();
    assert_eq!(https["Ipv6Ranges"][0]["CidrIpv6"], "::/0");
    let http = perms.iter().find(|p| p["FromPort"] == 80).unwrap();
    assert_eq!(http["IpRanges"][0]["Description"], "http");
    assert_eq!(g["SecurityGroups"][0]["IpPermissionsEgress"][0]["IpProtocol"], "-1");
    assert_eq!(g["SecurityGroups"][0]["Tags"][0]["Value"], "web");

    // Filters, including on rules and tags.
    let f = cloud.aws(&["ec2", "describe-security-groups", "--filters", "Name=ip-permission.from-port,Values=5432"]);
    assert_eq!(f["SecurityGroups"][0]["GroupId"], db.as_str());
    let f = cloud.aws(&["ec2", "describe-security-groups", "--filters", "Name=tag-key,Values=Name"]);
    assert_eq!(f["SecurityGroups"].as_array().unwrap().len(), 1);
    let f = cloud.aws(&["ec2", "describe-security-groups", "--filters", "Name=group-name,Values=d*"]);
    let names: Vec<&str> = f["SecurityGroups"].as_array().unwrap().iter().map(|g| s(&g["GroupName"])).collect();
    assert_eq!(names.len(), 2, "db and default: {names:?}");
    assert_eq!(
        cloud.aws_err(&["ec2", "describe-security-groups", "--filters", "Name=bogus,Values=x"]),
        "InvalidParameterValue"
    );

    // Rules by id.
    let rules =
        cloud.aws(&["ec2", "describe-security-group-rules", "--filters", &format!("Name=group-id,Values={web}")]);
    assert_eq!(rules["SecurityGroupRules"].as_array().unwrap().len(), 5, "4 ingress + default egress");

    // In use: web is referenced by db.
    assert_eq!(cloud.aws_err(&["ec2", "delete-security-group", "--group-id", &web]), "DependencyViolation");
    let r = cloud.aws(&[
        "ec2",
        "revoke-security-group-ingress",
        "--group-id",
        &db,
        "--protocol",
        "tcp",
        "--port",
        "5432",
        "--source-group",
        &web,
    ]);
    assert_eq!(r["Return"], true);
    assert_eq!(
        cloud.aws_err(&[
            "ec2",
            "revoke-security-group-ingress",
            "--group-id",
            &db,
            "--protocol",
            "tcp",
            "--port",
            "5432",
            "--source-group",
            &web
        ]),
        "InvalidPermission.NotFound"
    );
    // Egress: remove the default rule, add a narrower one.
    cloud.aws(&[
        "ec2",
        "revoke-security-group-egress",
        "--group-id",
        &web,
        "--ip-permissions",
        "IpProtocol=-1,IpRanges=[{CidrIp=0.0.0.0/0}]",
    ]);
    cloud.aws(&[
        "ec2",
        "authorize-security-group-egress",
        "--group-id",
        &web,
        "--ip-permissions",
        "IpProtocol=udp,FromPort=53,ToPort=53,IpRanges=[{CidrIp=10.0.0.2/32}]",
    ]);
    let g = cloud.aws(&["ec2", "describe-security-groups", "--group-ids", &web]);
    let egress = &g["SecurityGroups"][0]["IpPermissionsEgress"];
    assert_eq!(egress.as_array().unwrap().len(), 1);
    assert_eq!(egress[0]["IpProtocol"], "udp");

    cloud.aws(&["ec2", "delete-security-group", "--group-id", &web]);
    assert_eq!(cloud.aws_err(&["ec2", "describe-security-groups", "--group-ids", &web]), "InvalidGroup.NotFound");
    assert_eq!(
        cloud.aws_err(&["ec2", "describe-security-groups", "--group-ids", "sg-nothex"]),
        "InvalidGroupId.Malformed"
    );
    let default = cloud.aws(&["ec2", "describe-security-groups", "--group-names", "default"]);
    let default_id = s(&default["SecurityGroups"][0]["GroupId"]).to_owned();
    assert_eq!(cloud.aws_err(&["ec2", "delete-security-group", "--group-id", &default_id]), "CannotDelete");
    // By name, in the default VPC.
    cloud.aws(&["ec2", "delete-security-group", "--group-name", "db"]);
}

#[test]
fn vpcs_subnets_and_tags() {
    let cloud = Cloud::start();
    let subnets = cloud.aws(&["ec2", "describe-subnets", "--filters", "Name=default-for-az,Values=true"]);
    assert_eq!(subnets["Subnets"].as_array().unwrap().len(), 3);
    assert!(subnets["Subnets"].as_array().unwrap().iter().all(|s| s["MapPublicIpOnLaunch"] == true));

    let v = cloud.aws(&[
        "ec2",
        "create-vpc",
        "--cidr-block",
        "10.1.0.0/16",
        "--tag-specifications",
        "ResourceType=vpc,Tags=[{Key=Name,Value=prod}]",
    ]);
    let vpc = s(&v["Vpc"]["VpcId"]).to_owned();
    assert_eq!(v["Vpc"]["IsDefault"], false);
    // A new VPC comes with its own default security group.
    let g = cloud.aws(&["ec2", "describe-security-groups", "--filters", &format!("Name=vpc-id,Values={vpc}")]);
    assert_eq!(g["SecurityGroups"][0]["GroupName"], "default");

    assert_eq!(cloud.aws_err(&["ec2", "create-vpc", "--cidr-block", "10.0.0.0/8"]), "InvalidVpc.Range");
    // Host bits are cleared, as EC2 does (moto's AWS-verified tests check it).
    let n = cloud.aws(&["ec2", "create-vpc", "--cidr-block", "10.9.0.1/16"]);
    assert_eq!(n["Vpc"]["CidrBlock"], "10.9.0.0/16");
    cloud.aws(&["ec2", "delete-vpc", "--vpc-id", n["Vpc"]["VpcId"].as_str().unwrap_or_default()]);

    let sn = cloud.aws(&[
        "ec2",
        "create-subnet",
        "--vpc-id",
        &vpc,
        "--cidr-block",
        "10.1.1.0/24",
        "--availability-zone",
        "local-1b",
    ]);
    let subnet = s(&sn["Subnet"]["SubnetId"]).to_owned();
    assert_eq!(sn["Subnet"]["AvailableIpAddressCount"], 251);
    assert_eq!(sn["Subnet"]["AvailabilityZone"], "local-1b");
    assert_eq!(
        cloud.aws_err(&["ec2", "create-subnet", "--vpc-id", &vpc, "--cidr-block", "10.1.1.128/25"]),
        "InvalidSubnet.Conflict"
    );
    assert_eq!(
        cloud.aws_err(&["ec2", "create-subnet", "--vpc-id", &vpc, "--cidr-block", "10.2.0.0/24"]),
        "InvalidSubnet.Range"
    );
    assert_eq!(
        cloud.aws_err(&[
            "ec2",
            "create-subnet",
            "--vpc-id",
            &vpc,
            "--cidr-block",
            "10.1.2.0/24",
            "--availability-zone",
            "mars-1a"
        ]),
        "InvalidParameterValue"
    );
    assert_eq!(cloud.aws_err(&["ec2", "delete-vpc", "--vpc-id", &vpc]), "DependencyViolation");

    // Tags: create, filter, describe, delete.
    cloud.aws(&[
        "ec2",
        "create-tags",
        "--resources",
        &vpc,
        &subnet,
        "--tags",
        "Key=env,Value=prod",
        "Key=owner,Value=",
    ]);
    let t = cloud.aws(&["ec2", "describe-tags", "--filters", "Name=key,Values=env"]);
    let ids: Vec<&str> = t["Tags"].as_array().unwrap().iter().map(|t| s(&t["ResourceId"])).collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&vpc.as_str()) && ids.contains(&subnet.as_str()));
    let t = cloud.aws(&["ec2", "describe-tags", "--filters", &format!("Name=resource-id,Values={subnet}")]);
    assert_eq!(t["Tags"].as_array().unwrap().len(), 2);
    assert_eq!(t["Tags"][0]["ResourceType"], "subnet");
    let f = cloud.aws(&["ec2", "describe-vpcs", "--filters", "Name=tag:Name,Values=pr?d"]);
    assert_eq!(f["Vpcs"][0]["VpcId"], vpc.as_str());
    cloud.aws(&["ec2", "delete-tags", "--resources", &subnet, "--tags", "Key=env,Value=other"]);
    let t = cloud.aws(&["ec2", "describe-tags", "--filters", &format!("Name=resource-id,Values={subnet}")]);
    assert_eq!(t["Tags"].as_array().unwrap().len(), 2, "a value that does not match deletes nothing");
    cloud.aws(&["ec2", "delete-tags", "--resources", &subnet, "--tags", "Key=env"]);
    let t = cloud.aws(&["ec2", "describe-tags", "--filters", &format!("Name=resource-id,Values={subnet}")]);
    assert_eq!(t["Tags"].as_array().unwrap().len(), 1);
    assert_eq!(
        cloud.aws_err(&["ec2", "create-tags", "--resources", "vpc-0123456789abcdef0", "--tags", "Key=a,Value=b"]),
        "InvalidVpcID.NotFound"
    );
    assert_eq!(
        cloud.aws_err(&["ec2", "create-tags", "--resources", &vpc, "--tags", "Key=aws:x,Value=b"]),
        "InvalidParameterValue"
    );

    cloud.aws(&["ec2", "delete-subnet", "--subnet-id", &subnet]);
    cloud.aws(&["ec2", "delete-vpc", "--vpc-id", &vpc]);
    assert_eq!(cloud.aws_err(&["ec2", "describe-vpcs", "--vpc-ids", &vpc]), "InvalidVpcID.NotFound");
    let t = cloud.aws(&["ec2", "describe-tags", "--filters", &format!("Name=resource-id,Values={vpc}")]);
    assert_eq!(t["Tags"].as_array().unwrap().len(), 0, "tags go with their resource");
}

#[test]
fn pagination_and_dry_run() {
    let cloud = Cloud::start();
    for i in 0..7 {
        cloud.aws(&["ec2", "create-security-group", "--group-name", &format!("g{i}"), "--description", "d"]);
    }
    let page = cloud.aws(&["ec2", "describe-security-groups", "--max-items", "5", "--page-size", "5"]);
    assert_eq!(page["SecurityGroups"].as_array().unwrap().len(), 5);
    let token = s(&page["NextToken"]).to_owned();
    assert!(!token.is_empty());
    let rest = cloud.aws(&["ec2", "describe-security-groups", "--starting-token", &token, "--page-size", "5"]);
    assert_eq!(rest["SecurityGroups"].as_array().unwrap().len(), 3, "8 groups in all with the default");
    let all = cloud.aws(&["ec2", "describe-security-groups", "--page-size", "5"]);
    assert_eq!(all["SecurityGroups"].as_array().unwrap().len(), 8);

    assert_eq!(
        cloud.aws_err(&["ec2", "create-security-group", "--group-name", "x", "--description", "d", "--dry-run"]),
        "DryRunOperation"
    );
    let all = cloud.aws(&["ec2", "describe-security-groups"]);
    assert_eq!(all["SecurityGroups"].as_array().unwrap().len(), 8, "a dry run changes nothing");
}

#[test]
fn accounts_are_isolated_and_restarts_keep_everything() {
    let cloud = Cloud::start();
    let tenant = cloud.create_account("tenant", false);
    let reader = cloud.create_account("auditor", true);
    let admin_sg =
        s(&cloud.aws(&["ec2", "create-security-group", "--group-name", "mine", "--description", "d"])["GroupId"])
            .to_owned();
    cloud.aws(&["ec2", "create-key-pair", "--key-name", "adminkey"]);

    // The tenant sees its own default VPC, not the admin's resources; another account's id is
    // answered exactly like an id that does not exist.
    let t_groups = cloud.aws_json_as(&tenant, &["ec2", "describe-security-groups"]);
    assert_eq!(t_groups["SecurityGroups"].as_array().unwrap().len(), 1);
    assert_ne!(
        t_groups["SecurityGroups"][0]["OwnerId"],
        cloud.aws(&["ec2", "describe-security-groups"])["SecurityGroups"][0]["OwnerId"]
    );
    assert_eq!(
        cloud.aws_err_as(&tenant, &["ec2", "describe-security-groups", "--group-ids", &admin_sg]),
        "InvalidGroup.NotFound"
    );
    assert_eq!(
        cloud.aws_err_as(&tenant, &["ec2", "delete-security-group", "--group-id", &admin_sg]),
        "InvalidGroup.NotFound"
    );
    assert_eq!(
        cloud.aws_err_as(&tenant, &["ec2", "create-tags", "--resources", &admin_sg, "--tags", "Key=a,Value=b"]),
        "InvalidGroup.NotFound"
    );
    assert_eq!(cloud.aws_json_as(&tenant, &["ec2", "describe-key-pairs"])["KeyPairs"].as_array().unwrap().len(), 0);
    // The same CIDRs in two accounts do not collide.
    assert_eq!(cloud.aws_json_as(&tenant, &["ec2", "describe-vpcs"])["Vpcs"][0]["CidrBlock"], "172.31.0.0/16");

    // A read-only account reads but cannot change anything, dry run or not.
    cloud.aws_json_as(&reader, &["ec2", "describe-vpcs"]);
    assert_eq!(
        cloud.aws_err_as(&reader, &["ec2", "create-security-group", "--group-name", "x", "--description", "d"]),
        "UnauthorizedOperation"
    );
    assert_eq!(
        cloud.aws_err_as(
            &reader,
            &["ec2", "create-security-group", "--group-name", "x", "--description", "d", "--dry-run"]
        ),
        "UnauthorizedOperation"
    );

    // Restart on the same data dir: every resource and every key is still there.
    let dir = cloud.stop();
    let cloud = Cloud::start_in(dir);
    let g = cloud.aws(&["ec2", "describe-security-groups", "--group-ids", &admin_sg]);
    assert_eq!(g["SecurityGroups"][0]["GroupName"], "mine");
    assert_eq!(cloud.aws(&["ec2", "describe-key-pairs"])["KeyPairs"][0]["KeyName"], "adminkey");
    assert_eq!(
        cloud.aws_json_as(&tenant, &["ec2", "describe-security-groups"])["SecurityGroups"].as_array().unwrap().len(),
        1
    );
}
