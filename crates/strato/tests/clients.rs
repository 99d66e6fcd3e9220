//! Unmodified clients as they come: the AWS CLI's defaults, STS's GetCallerIdentity (which
//! Ansible and Terraform call first), requests for services Strato does not serve, Signature
//! Version 2 (Apache Libcloud's default).

mod common;

use common::Cloud;
use serde_json::Value;

#[test]
fn sts_get_caller_identity_and_other_services() {
    let cloud = Cloud::start_simulated();
    let who = cloud.aws(&["sts", "get-caller-identity"]);
    let account = who["Account"].as_str().unwrap_or_default().to_owned();
    assert_eq!(account.len(), 12, "{who}");
    assert_eq!(who["Arn"], Value::from(format!("arn:aws:iam::{account}:root")));
    assert_eq!(who["UserId"], Value::from(account.clone()));
    // The account is the one that owns what EC2 shows.
    let vpcs = cloud.aws(&["ec2", "describe-vpcs"]);
    assert_eq!(vpcs["Vpcs"][0]["OwnerId"], Value::from(account.clone()));

    // Another account sees itself.
    let other = cloud.create_account("other", false);
    let who2 = cloud.aws_json_as(&other, &["sts", "get-caller-identity"]);
    assert_ne!(who2["Account"], who["Account"]);

    // boto3, and the JSON 1.0 form some SDKs use.
    cloud.python("sts_identity.py", &[&account]);

    // STS answers STS's error codes; a service Strato does not serve is named.
    assert_eq!(cloud.aws_err(&["sts", "get-session-token"]), "InvalidAction");
    assert_eq!(cloud.aws_err(&["iam", "list-users"]), "InvalidRequest");
    let out = cloud.aws_as("strato", &["iam", "list-users"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("'iam'"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cloud.aws_as("strato", &["dynamodb", "list-tables"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("DynamoDB"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Libcloud knows only AWS's region names: this cloud is `us-east-1`.
#[test]
fn libcloud_with_signature_versions_2_and_4() {
    let cloud = Cloud::start_simulated_in("us-east-1");
    let key = cloud.dir.path().join("lc.pub");
    // A public key only (its private half was thrown away): the node is never logged into.
    let public = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPZmEmRiSzCfW+l8N1OVc/2sQsY+8gWGv5hOKLQlGshZ libcloud-test";
    std::fs::write(&key, public).expect("public key");
    for version in ["2", "4"] {
        cloud.python_env("libcloud_flow.py", &["us-east-1", version], &[("PUBKEY", key.to_str().unwrap_or_default())]);
    }
}

/// What Terraform's aws_instance sets and reads back: credit options, stop protection,
/// hibernation and monitoring refused by name, EBS-optimized, elastic IPs' attribute.
#[test]
fn instance_options_terraform_sets_and_reads() {
    let cloud = Cloud::start_simulated();
    let ami = cloud.minimal_ami();
    let run = |extra: &[&str]| {
        let mut a = vec!["ec2", "run-instances", "--image-id", &ami, "--count", "1"];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let args = run(&["--instance-type", "t3.micro", "--disable-api-stop", "--ebs-optimized"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let t3 = cloud.aws(&args)["Instances"][0]["InstanceId"].as_str().unwrap_or_default().to_owned();
    let args = run(&["--instance-type", "t2.micro", "--credit-specification", "CpuCredits=unlimited"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let t2 = cloud.aws(&args)["Instances"][0]["InstanceId"].as_str().unwrap_or_default().to_owned();
    let args = run(&["--instance-type", "m5.large"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let m5 = cloud.aws(&args)["Instances"][0]["InstanceId"].as_str().unwrap_or_default().to_owned();
    // A type the catalogue has but no host can hold (64 GiB here) is a capacity answer.
    let args = run(&["--instance-type", "m5.4xlarge"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(cloud.aws_err(&args), "InsufficientInstanceCapacity");

    // Defaults per family, and what was asked for.
    let c = cloud.aws(&["ec2", "describe-instance-credit-specifications"]);
    let specs = c["InstanceCreditSpecifications"].as_array().cloned().unwrap_or_default();
    let of = |id: &str| specs.iter().find(|s| s["InstanceId"] == id).map(|s| s["CpuCredits"].clone());
    assert_eq!(of(&t3), Some(Value::from("unlimited")), "{c}");
    assert_eq!(of(&t2), Some(Value::from("unlimited")), "{c}");
    assert_eq!(of(&m5), None, "only burstable instances have credits: {c}");
    let m = cloud.aws(&[
        "ec2",
        "modify-instance-credit-specification",
        "--instance-credit-specifications",
        &format!("InstanceId={t3},CpuCredits=standard"),
        &format!("InstanceId={m5},CpuCredits=standard"),
    ]);
    assert_eq!(m["SuccessfulInstanceCreditSpecifications"][0]["InstanceId"], Value::from(t3.clone()), "{m}");
    assert_eq!(m["UnsuccessfulInstanceCreditSpecifications"][0]["InstanceId"], Value::from(m5.clone()), "{m}");
    let c = cloud.aws(&["ec2", "describe-instance-credit-specifications", "--instance-ids", &t3]);
    assert_eq!(c["InstanceCreditSpecifications"][0]["CpuCredits"], "standard", "{c}");

    // Stop protection is honoured; EBS-optimized is read back.
    let a = cloud.aws(&["ec2", "describe-instance-attribute", "--instance-id", &t3, "--attribute", "disableApiStop"]);
    assert_eq!(a["DisableApiStop"]["Value"], true, "{a}");
    let a = cloud.aws(&["ec2", "describe-instance-attribute", "--instance-id", &t3, "--attribute", "ebsOptimized"]);
    assert_eq!(a["EbsOptimized"]["Value"], true, "{a}");
    // Every attribute of the model's enum is answered.
    for attr in [
        "instanceType",
        "kernel",
        "ramdisk",
        "userData",
        "disableApiTermination",
        "instanceInitiatedShutdownBehavior",
        "rootDeviceName",
        "blockDeviceMapping",
        "productCodes",
        "sourceDestCheck",
        "groupSet",
        "ebsOptimized",
        "sriovNetSupport",
        "enaSupport",
        "enclaveOptions",
        "disableApiStop",
    ] {
        let a = cloud.aws(&["ec2", "describe-instance-attribute", "--instance-id", &t3, "--attribute", attr]);
        assert_eq!(a["InstanceId"], Value::from(t3.clone()), "{attr}: {a}");
    }
    assert_eq!(cloud.aws_err(&["ec2", "stop-instances", "--instance-ids", &t3]), "OperationNotPermitted");
    cloud.aws(&["ec2", "modify-instance-attribute", "--instance-id", &t3, "--no-disable-api-stop"]);
    cloud.aws(&["ec2", "stop-instances", "--instance-ids", &t3]);

    // What Strato does not have is refused by name; asking for its absence is fine.
    let refused = |extra: &[&str]| {
        let args = run(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cloud.aws_err(&args)
    };
    assert_eq!(
        refused(&["--instance-type", "m5.large", "--credit-specification", "CpuCredits=unlimited"]),
        "InvalidParameterCombination"
    );
    assert_eq!(
        refused(&["--instance-type", "m5.large", "--hibernation-options", "Configured=true"]),
        "UnsupportedOperation"
    );
    assert_eq!(refused(&["--instance-type", "m5.large", "--monitoring", "Enabled=true"]), "UnsupportedOperation");
    assert_eq!(
        refused(&["--instance-type", "m5.large", "--instance-market-options", "MarketType=spot"]),
        "UnsupportedOperation"
    );
    let args = run(&[
        "--instance-type",
        "m5.large",
        "--hibernation-options",
        "Configured=false",
        "--monitoring",
        "Enabled=false",
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    cloud.aws(&args);

    // Elastic IPs have no reverse DNS record here.
    let eip = cloud.aws(&["ec2", "allocate-address", "--domain", "vpc"]);
    let alloc = eip["AllocationId"].as_str().unwrap_or_default();
    let a =
        cloud.aws(&["ec2", "describe-addresses-attribute", "--allocation-ids", alloc, "--attribute", "domain-name"]);
    assert_eq!(a["Addresses"][0]["AllocationId"], Value::from(alloc), "{a}");
    assert!(a["Addresses"][0].get("PtrRecord").is_none(), "{a}");
}

/// What Ansible's amazon.aws and boto3 send by default: the `isDefault` filter, tags for the
/// launch's volumes and interfaces, no instance type (EC2's default, m1.small); the type
/// catalogue and where it is offered.
#[test]
fn defaults_of_ansible_and_boto3_and_the_type_catalogue() {
    let cloud = Cloud::start_simulated();
    let v = cloud.aws(&["ec2", "describe-vpcs", "--filters", "Name=isDefault,Values=true"]);
    assert_eq!(v["Vpcs"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["Vpcs"][0]["IsDefault"], true);

    let ami = cloud.minimal_ami();
    let r = cloud.aws(&[
        "ec2",
        "run-instances",
        "--image-id",
        &ami,
        "--count",
        "1",
        "--tag-specifications",
        "ResourceType=instance,Tags=[{Key=Name,Value=web}]",
        "ResourceType=volume,Tags=[{Key=disk,Value=root}]",
        "ResourceType=network-interface,Tags=[{Key=nic,Value=main}]",
    ]);
    let i = &r["Instances"][0];
    assert_eq!(i["InstanceType"], "m1.small", "EC2's default type: {i}");
    let id = i["InstanceId"].as_str().unwrap_or_default();
    let vols =
        cloud.aws(&["ec2", "describe-volumes", "--filters", &format!("Name=attachment.instance-id,Values={id}")]);
    assert_eq!(vols["Volumes"][0]["Tags"][0]["Key"], "disk", "{vols}");
    let enis = cloud.aws(&[
        "ec2",
        "describe-network-interfaces",
        "--filters",
        &format!("Name=attachment.instance-id,Values={id}"),
    ]);
    assert_eq!(enis["NetworkInterfaces"][0]["TagSet"][0]["Value"], "main", "{enis}");
    let args = [
        "ec2",
        "run-instances",
        "--image-id",
        &ami,
        "--count",
        "1",
        "--tag-specifications",
        "ResourceType=vpc,Tags=[{Key=a,Value=b}]",
    ];
    assert_eq!(cloud.aws_err(&args), "InvalidParameterValue");

    let t = cloud.aws(&["ec2", "describe-instance-types", "--instance-types", "m1.small", "t3.micro"]);
    let gen = |n: &str| {
        t["InstanceTypes"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["InstanceType"] == n))
            .map(|x| x["CurrentGeneration"].clone())
    };
    assert_eq!(gen("m1.small"), Some(Value::from(false)), "{t}");
    assert_eq!(gen("t3.micro"), Some(Value::from(true)), "{t}");
    let o = cloud.aws(&["ec2", "describe-instance-type-offerings", "--filters", "Name=instance-type,Values=t3.micro"]);
    assert_eq!(o["InstanceTypeOfferings"][0]["Location"], "local-1", "{o}");
    let o = cloud.aws(&[
        "ec2",
        "describe-instance-type-offerings",
        "--location-type",
        "availability-zone",
        "--filters",
        "Name=instance-type,Values=m1.small",
    ]);
    let zones: Vec<&str> = o["InstanceTypeOfferings"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x["Location"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(zones, ["local-1a", "local-1b", "local-1c"], "{o}");
    // Every offering, joined by the CLI over pages of 5.
    let all = cloud.aws(&["ec2", "describe-instance-type-offerings", "--page-size", "5"]);
    assert!(all["InstanceTypeOfferings"].as_array().map_or(0, Vec::len) > 40, "{all}");
}

/// Launch templates through the AWS CLI: versions, the default, RunInstances from one with
/// overrides, GetLaunchTemplateData, deletion.
#[test]
fn launch_templates() {
    let cloud = Cloud::start_simulated();
    let ami = cloud.minimal_ami();
    let sg = cloud.aws(&["ec2", "describe-security-groups", "--group-names", "default"])["SecurityGroups"][0]
        ["GroupId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let data = format!(
        r#"{{"ImageId":"{ami}","InstanceType":"t3.micro","SecurityGroupIds":["{sg}"],"CreditSpecification":{{"CpuCredits":"standard"}},"TagSpecifications":[{{"ResourceType":"instance","Tags":[{{"Key":"from","Value":"template"}}]}}]}}"#
    );
    let t = cloud.aws(&[
        "ec2",
        "create-launch-template",
        "--launch-template-name",
        "web",
        "--version-description",
        "first",
        "--launch-template-data",
        &data,
        "--tag-specifications",
        "ResourceType=launch-template,Tags=[{Key=team,Value=blue}]",
    ]);
    let lt = t["LaunchTemplate"]["LaunchTemplateId"].as_str().unwrap_or_default().to_owned();
    assert!(lt.starts_with("lt-"), "{t}");
    assert_eq!(t["LaunchTemplate"]["LatestVersionNumber"], 1);
    assert_eq!(
        cloud.aws_err(&[
            "ec2",
            "create-launch-template",
            "--launch-template-name",
            "web",
            "--launch-template-data",
            r#"{"InstanceType":"t3.micro"}"#
        ]),
        "InvalidLaunchTemplateName.AlreadyExistsException"
    );
    // Version 2 from version 1: a new type, the rest kept.
    let v2 = cloud.aws(&[
        "ec2",
        "create-launch-template-version",
        "--launch-template-id",
        &lt,
        "--source-version",
        "1",
        "--launch-template-data",
        r#"{"InstanceType":"t3.small"}"#,
    ]);
    assert_eq!(v2["LaunchTemplateVersion"]["VersionNumber"], 2, "{v2}");
    assert_eq!(v2["LaunchTemplateVersion"]["LaunchTemplateData"]["ImageId"], Value::from(ami.clone()), "{v2}");
    assert_eq!(v2["LaunchTemplateVersion"]["LaunchTemplateData"]["SecurityGroupIds"][0], Value::from(sg.clone()));

    let d = cloud.aws(&["ec2", "describe-launch-templates", "--launch-template-names", "web"]);
    assert_eq!(d["LaunchTemplates"][0]["DefaultVersionNumber"], 1, "{d}");
    assert_eq!(d["LaunchTemplates"][0]["LatestVersionNumber"], 2, "{d}");
    assert_eq!(d["LaunchTemplates"][0]["Tags"][0]["Key"], "team", "{d}");
    let vs = cloud.aws(&["ec2", "describe-launch-template-versions", "--launch-template-id", &lt]);
    assert_eq!(vs["LaunchTemplateVersions"].as_array().map(Vec::len), Some(2), "{vs}");
    let latest = cloud.aws(&["ec2", "describe-launch-template-versions", "--versions", "$Latest"]);
    assert_eq!(latest["LaunchTemplateVersions"][0]["VersionNumber"], 2, "{latest}");

    // From the default version (1), then from $Latest with an override.
    let r = cloud.aws(&["ec2", "run-instances", "--launch-template", "LaunchTemplateName=web", "--count", "1"]);
    let i = &r["Instances"][0];
    assert_eq!(i["InstanceType"], "t3.micro", "{i}");
    assert_eq!(i["SecurityGroups"][0]["GroupId"], Value::from(sg.clone()));
    let id1 = i["InstanceId"].as_str().unwrap_or_default().to_owned();
    let r = cloud.aws(&[
        "ec2",
        "run-instances",
        "--launch-template",
        &format!("LaunchTemplateId={lt},Version=$Latest"),
        "--instance-type",
        "t3.nano",
        "--count",
        "1",
    ]);
    let id2 = r["Instances"][0]["InstanceId"].as_str().unwrap_or_default().to_owned();
    assert_eq!(r["Instances"][0]["InstanceType"], "t3.nano", "the request overrides the template");
    let tags = cloud.aws(&["ec2", "describe-tags", "--filters", &format!("Name=resource-id,Values={id2}")]);
    let tag =
        |k: &str| tags["Tags"].as_array().and_then(|a| a.iter().find(|t| t["Key"] == k)).map(|t| t["Value"].clone());
    assert_eq!(tag("from"), Some(Value::from("template")), "{tags}");
    assert_eq!(tag("aws:ec2launchtemplate:id"), Some(Value::from(lt.clone())), "{tags}");
    assert_eq!(tag("aws:ec2launchtemplate:version"), Some(Value::from("2")), "{tags}");
    let c = cloud.aws(&["ec2", "describe-instance-credit-specifications", "--instance-ids", &id1]);
    assert_eq!(c["InstanceCreditSpecifications"][0]["CpuCredits"], "standard", "{c}");

    // An instance's own launch data.
    let g = cloud.aws(&["ec2", "get-launch-template-data", "--instance-id", &id1]);
    assert_eq!(g["LaunchTemplateData"]["ImageId"], Value::from(ami.clone()), "{g}");
    assert_eq!(g["LaunchTemplateData"]["InstanceType"], "t3.micro");
    assert_eq!(g["LaunchTemplateData"]["NetworkInterfaces"][0]["Groups"][0], Value::from(sg.clone()), "{g}");

    // The default moves; the default cannot be deleted; the template goes with its versions.
    let m = cloud.aws(&["ec2", "modify-launch-template", "--launch-template-id", &lt, "--default-version", "2"]);
    assert_eq!(m["LaunchTemplate"]["DefaultVersionNumber"], 2, "{m}");
    let del =
        cloud.aws(&["ec2", "delete-launch-template-versions", "--launch-template-id", &lt, "--versions", "1", "2"]);
    assert_eq!(del["SuccessfullyDeletedLaunchTemplateVersions"][0]["VersionNumber"], 1, "{del}");
    assert_eq!(del["UnsuccessfullyDeletedLaunchTemplateVersions"][0]["VersionNumber"], 2, "{del}");
    let args = ["ec2", "run-instances", "--launch-template", "LaunchTemplateName=web,Version=1", "--count", "1"];
    assert_eq!(cloud.aws_err(&args), "InvalidLaunchTemplateId.VersionNotFound");
    cloud.aws(&["ec2", "delete-launch-template", "--launch-template-name", "web"]);
    assert_eq!(
        cloud.aws_err(&["ec2", "describe-launch-templates", "--launch-template-ids", &lt]),
        "InvalidLaunchTemplateId.NotFound"
    );
    let args = ["ec2", "run-instances", "--launch-template", "LaunchTemplateName=web", "--count", "1"];
    assert_eq!(cloud.aws_err(&args), "InvalidLaunchTemplateName.NotFoundException");
    // Another account sees none of it.
    let other = cloud.create_account("other", false);
    let d = cloud.aws_json_as(&other, &["ec2", "describe-launch-templates"]);
    assert_eq!(d["LaunchTemplates"].as_array().map(Vec::len), Some(0), "{d}");
}

/// SSM's public parameters for Strato's images, and RunInstances' `resolve:ssm:`.
#[test]
fn ssm_public_image_parameters() {
    let cloud = Cloud::start_simulated();
    let ami = cloud.aws(&["ec2", "describe-images", "--filters", "Name=name,Values=strato-minimal-x86_64"])["Images"]
        [0]["ImageId"]
        .as_str()
        .expect("the minimal image")
        .to_owned();
    let name = "/aws/service/strato/ami/strato-minimal-x86_64";
    let p = cloud.aws(&["ssm", "get-parameter", "--name", name]);
    assert_eq!(p["Parameter"]["Value"], Value::from(ami.clone()), "{p}");
    assert_eq!(p["Parameter"]["DataType"], "aws:ec2:image");
    let all = cloud.aws(&["ssm", "get-parameters-by-path", "--path", "/aws/service/strato", "--recursive"]);
    let names: Vec<&str> =
        all["Parameters"].as_array().map(|a| a.iter().filter_map(|p| p["Name"].as_str()).collect()).unwrap_or_default();
    assert!(names.contains(&name), "{all}");
    let flat = cloud.aws(&["ssm", "get-parameters-by-path", "--path", "/aws/service/strato"]);
    assert_eq!(flat["Parameters"].as_array().map(Vec::len), Some(0), "not recursive: only direct children: {flat}");
    let some = cloud.aws(&["ssm", "get-parameters", "--names", name, "/aws/service/strato/ami/none"]);
    assert_eq!(some["Parameters"][0]["Value"], Value::from(ami.clone()), "{some}");
    assert_eq!(some["InvalidParameters"][0], "/aws/service/strato/ami/none", "{some}");
    assert_eq!(cloud.aws_err(&["ssm", "get-parameter", "--name", "/aws/service/strato/ami/none"]), "ParameterNotFound");
    // Another account reads the same public parameters.
    let other = cloud.create_account("other", false);
    let p2 = cloud.aws_json_as(&other, &["ssm", "get-parameter", "--name", name]);
    assert_eq!(p2["Parameter"]["Value"], Value::from(ami.clone()));

    let r = cloud.aws(&["ec2", "run-instances", "--image-id", &format!("resolve:ssm:{name}"), "--count", "1"]);
    assert_eq!(r["Instances"][0]["ImageId"], Value::from(ami), "{r}");
    let args = ["ec2", "run-instances", "--image-id", "resolve:ssm:/aws/service/strato/ami/none", "--count", "1"];
    assert_eq!(cloud.aws_err(&args), "InvalidParameterValue");
}

/// EC2's behaviour where moto's AWS-verified tests check it: CIDR blocks normalised, RFC 4716
/// public keys, empty tag sets left out, every missing id named.
#[test]
fn fidelity_seen_in_motos_tests() {
    let cloud = Cloud::start_simulated();
    let v = cloud.aws(&["ec2", "create-vpc", "--cidr-block", "10.250.1.0/16"]);
    assert_eq!(v["Vpc"]["CidrBlock"], "10.250.0.0/16", "{v}");
    assert!(v["Vpc"].get("Tags").is_none(), "an untagged VPC has no Tags: {v}");

    let rfc = "---- BEGIN SSH2 PUBLIC KEY ----\nComment: \"256-bit ED25519\"\nAAAAC3NzaC1lZDI1NTE5AAAAIPZmEmRiSzCfW+l8N1OVc/2sQsY+8gWGv5hOKLQlGshZ\n---- END SSH2 PUBLIC KEY ----\n";
    let path = cloud.dir.path().join("rfc4716.pub");
    std::fs::write(&path, rfc).expect("key file");
    let k = cloud.aws(&[
        "ec2",
        "import-key-pair",
        "--key-name",
        "rfc",
        "--public-key-material",
        &format!("fileb://{}", path.display()),
    ]);
    assert_eq!(k["KeyName"], "rfc", "{k}");
    std::fs::write(&path, "ssh-ed25519 AAAA-not-a-key").expect("key file");
    let args = [
        "ec2",
        "import-key-pair",
        "--key-name",
        "bad",
        "--public-key-material",
        &format!("fileb://{}", path.display()),
    ];
    assert_eq!(cloud.aws_err(&args), "InvalidKeyPair.Format");

    let out = cloud.aws_as(
        "strato",
        &["ec2", "describe-instances", "--instance-ids", "i-0123456789abcdef0", "i-0123456789abcdef1"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("InvalidInstanceID.NotFound") && err.contains("i-0123456789abcdef0, i-0123456789abcdef1"),
        "{err}"
    );
    let out = cloud
        .aws_as("strato", &["ec2", "describe-vpcs", "--vpc-ids", "vpc-0123456789abcdef0", "vpc-0123456789abcdef1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("InvalidVpcID.NotFound") && err.contains("vpc-0123456789abcdef0, vpc-0123456789abcdef1"),
        "{err}"
    );
}

/// The rest of what Terraform's resources read and write: security group rules changed in
/// place, VPC endpoints and prefix lists (none here), revoking a rule that is not there.
#[test]
fn rules_in_place_endpoints_and_prefix_lists() {
    let cloud = Cloud::start_simulated();
    let g = cloud.aws(&["ec2", "create-security-group", "--group-name", "tf", "--description", "tf"]);
    let gid = g["GroupId"].as_str().unwrap_or_default().to_owned();
    cloud.aws(&[
        "ec2",
        "authorize-security-group-ingress",
        "--group-id",
        &gid,
        "--protocol",
        "tcp",
        "--port",
        "22",
        "--cidr",
        "10.0.0.0/8",
    ]);
    let rules =
        cloud.aws(&["ec2", "describe-security-group-rules", "--filters", &format!("Name=group-id,Values={gid}")]);
    let rule = rules["SecurityGroupRules"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["IsEgress"] == false))
        .cloned()
        .expect("the ingress rule");
    let rid = rule["SecurityGroupRuleId"].as_str().unwrap_or_default().to_owned();
    cloud.aws(&[
        "ec2",
        "modify-security-group-rules",
        "--group-id",
        &gid,
        "--security-group-rules",
        &format!(
            "SecurityGroupRuleId={rid},SecurityGroupRule={{IpProtocol=tcp,FromPort=80,ToPort=80,CidrIpv4=10.1.0.0/16,Description=web}}"
        ),
    ]);
    let after = cloud.aws(&["ec2", "describe-security-group-rules", "--security-group-rule-ids", &rid]);
    let r = &after["SecurityGroupRules"][0];
    assert_eq!(
        (r["FromPort"].clone(), r["CidrIpv4"].clone()),
        (Value::from(80), Value::from("10.1.0.0/16")),
        "{after}"
    );
    assert_eq!(r["Description"], "web", "{after}");
    let args = [
        "ec2",
        "modify-security-group-rules",
        "--group-id",
        &gid,
        "--security-group-rules",
        "SecurityGroupRuleId=sgr-0123456789abcdef0,SecurityGroupRule={IpProtocol=tcp,FromPort=1,ToPort=1,CidrIpv4=10.0.0.0/8}",
    ];
    assert_eq!(cloud.aws_err(&args), "InvalidSecurityGroupRuleId.NotFound");
    let args = [
        "ec2",
        "revoke-security-group-egress",
        "--group-id",
        &gid,
        "--ip-permissions",
        "IpProtocol=tcp,FromPort=9,ToPort=9,IpRanges=[{CidrIp=10.9.9.9/32}]",
    ];
    assert_eq!(cloud.aws_err(&args), "InvalidPermission.NotFound");

    let e = cloud.aws(&["ec2", "describe-vpc-endpoints"]);
    assert_eq!(e["VpcEndpoints"].as_array().map(Vec::len), Some(0), "{e}");
    assert_eq!(
        cloud.aws_err(&["ec2", "describe-vpc-endpoints", "--vpc-endpoint-ids", "vpce-0123456789abcdef0"]),
        "InvalidVpcEndpointId.NotFound"
    );
    let p = cloud.aws(&["ec2", "describe-prefix-lists"]);
    assert_eq!(p["PrefixLists"].as_array().map(Vec::len), Some(0), "{p}");
}

/// CreateDefaultVpc and CreateDefaultSubnet bring back what was deleted, and only that.
#[test]
fn default_vpc_and_subnets_made_again() {
    let cloud = Cloud::start_simulated();
    assert_eq!(cloud.aws_err(&["ec2", "create-default-vpc"]), "DefaultVpcAlreadyExists");
    let vpc = cloud.aws(&["ec2", "describe-vpcs", "--filters", "Name=is-default,Values=true"])["Vpcs"][0]["VpcId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let subnets = cloud.aws(&["ec2", "describe-subnets", "--filters", &format!("Name=vpc-id,Values={vpc}")]);
    let mut b_subnet = String::new();
    for s in subnets["Subnets"].as_array().cloned().unwrap_or_default() {
        let id = s["SubnetId"].as_str().unwrap_or_default().to_owned();
        if s["AvailabilityZone"] == "local-1b" {
            b_subnet = id.clone();
        }
        cloud.aws(&["ec2", "delete-subnet", "--subnet-id", &id]);
    }
    let s = cloud.aws(&["ec2", "create-default-subnet", "--availability-zone", "local-1b"]);
    assert_eq!(s["Subnet"]["DefaultForAz"], true, "{s}");
    assert_eq!(s["Subnet"]["MapPublicIpOnLaunch"], true, "{s}");
    assert_ne!(s["Subnet"]["SubnetId"], Value::from(b_subnet));
    assert_eq!(
        cloud.aws_err(&["ec2", "create-default-subnet", "--availability-zone", "local-1b"]),
        "DefaultSubnetAlreadyExistsInAvailabilityZone"
    );
    cloud.aws(&["ec2", "delete-subnet", "--subnet-id", s["Subnet"]["SubnetId"].as_str().unwrap_or_default()]);
    let igw =
        cloud.aws(&["ec2", "describe-internet-gateways", "--filters", &format!("Name=attachment.vpc-id,Values={vpc}")]);
    let igw = igw["InternetGateways"][0]["InternetGatewayId"].as_str().unwrap_or_default().to_owned();
    cloud.aws(&["ec2", "detach-internet-gateway", "--internet-gateway-id", &igw, "--vpc-id", &vpc]);
    cloud.aws(&["ec2", "delete-internet-gateway", "--internet-gateway-id", &igw]);
    cloud.aws(&["ec2", "delete-vpc", "--vpc-id", &vpc]);
    assert_eq!(
        cloud.aws_err(&["ec2", "create-default-subnet", "--availability-zone", "local-1a"]),
        "DefaultVpcDoesNotExist"
    );

    let v = cloud.aws(&["ec2", "create-default-vpc"]);
    assert_eq!(v["Vpc"]["IsDefault"], true, "{v}");
    assert_eq!(v["Vpc"]["CidrBlock"], "172.31.0.0/16");
    let id = v["Vpc"]["VpcId"].as_str().unwrap_or_default();
    let subnets = cloud.aws(&["ec2", "describe-subnets", "--filters", &format!("Name=vpc-id,Values={id}")]);
    assert_eq!(subnets["Subnets"].as_array().map(Vec::len), Some(3), "{subnets}");
    let a = cloud.aws(&["ec2", "describe-account-attributes", "--attribute-names", "default-vpc"]);
    assert_eq!(a["AccountAttributes"][0]["AttributeValues"][0]["AttributeValue"], Value::from(id), "{a}");
}

/// DHCP options sets: made, described, associated with a VPC, kept while in use.
#[test]
fn dhcp_options_sets() {
    let cloud = Cloud::start_simulated();
    let d = cloud.aws(&[
        "ec2",
        "create-dhcp-options",
        "--dhcp-configurations",
        "Key=domain-name-servers,Values=AmazonProvidedDNS,10.0.0.53",
        "Key=domain-name,Values=corp.example",
    ]);
    let id = d["DhcpOptions"]["DhcpOptionsId"].as_str().unwrap_or_default().to_owned();
    assert!(id.starts_with("dopt-"), "{d}");
    let conf = &d["DhcpOptions"]["DhcpConfigurations"];
    assert_eq!(conf[0]["Key"], "domain-name-servers", "{d}");
    assert_eq!(conf[0]["Values"][1]["Value"], "10.0.0.53", "{d}");
    let f = cloud.aws(&["ec2", "describe-dhcp-options", "--filters", "Name=key,Values=domain-name"]);
    assert_eq!(f["DhcpOptions"].as_array().map(Vec::len), Some(1), "{f}");
    let args = ["ec2", "create-dhcp-options", "--dhcp-configurations", "Key=domain-name,Values=a.com;rm"];
    assert_eq!(cloud.aws_err(&args), "InvalidParameterValue");

    let vpc = cloud.aws(&["ec2", "create-vpc", "--cidr-block", "10.7.0.0/16"])["Vpc"]["VpcId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    cloud.aws(&["ec2", "associate-dhcp-options", "--dhcp-options-id", &id, "--vpc-id", &vpc]);
    let v = cloud.aws(&["ec2", "describe-vpcs", "--vpc-ids", &vpc]);
    assert_eq!(v["Vpcs"][0]["DhcpOptionsId"], Value::from(id.clone()), "{v}");
    let v = cloud.aws(&["ec2", "describe-vpcs", "--filters", &format!("Name=dhcp-options-id,Values={id}")]);
    assert_eq!(v["Vpcs"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(cloud.aws_err(&["ec2", "delete-dhcp-options", "--dhcp-options-id", &id]), "DependencyViolation");
    cloud.aws(&["ec2", "associate-dhcp-options", "--dhcp-options-id", "default", "--vpc-id", &vpc]);
    cloud.aws(&["ec2", "delete-dhcp-options", "--dhcp-options-id", &id]);
    assert_eq!(
        cloud.aws_err(&["ec2", "describe-dhcp-options", "--dhcp-options-ids", &id]),
        "InvalidDhcpOptionID.NotFound"
    );
    // Another account cannot use or see it.
    let other = cloud.create_account("other", false);
    let d = cloud.aws_json_as(&other, &["ec2", "describe-dhcp-options"]);
    assert_eq!(d["DhcpOptions"].as_array().map(Vec::len), Some(0), "{d}");
}
