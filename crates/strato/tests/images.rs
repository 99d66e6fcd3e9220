//! The image catalogue through the AWS CLI and boto3: Strato's own images, sharing,
//! copying, registering from host files, and the errors of each.

mod common;

use common::Cloud;
use serde_json::Value;

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

fn minimal(cloud: &Cloud) -> Value {
    let d =
        cloud.aws(&["ec2", "describe-images", "--owners", "strato", "--filters", "Name=name,Values=strato-minimal-*"]);
    let images = d["Images"].as_array().expect("Images");
    assert_eq!(images.len(), 1, "the minimal image is registered at start: {d}");
    images[0].clone()
}

#[test]
fn strato_images_are_public_and_described_as_ec2_does() {
    let cloud = Cloud::start();
    let img = minimal(&cloud);
    let id = s(&img["ImageId"]).to_owned();
    assert!(id.starts_with("ami-"));
    assert_eq!(img["ImageOwnerAlias"], "strato");
    assert_eq!(img["OwnerId"], "000000000000");
    assert_eq!(img["Public"], true);
    assert_eq!(img["State"], "available");
    assert_eq!(img["Architecture"], "x86_64");
    assert_eq!(img["VirtualizationType"], "hvm");
    assert_eq!(img["RootDeviceType"], "ebs");
    assert_eq!(img["RootDeviceName"], "/dev/xvda");
    assert_eq!(img["BlockDeviceMappings"][0]["DeviceName"], "/dev/xvda");
    assert!(s(&img["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]).starts_with("snap-"));
    assert_eq!(img["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"], 1);
    assert!(s(&img["CreationDate"]).ends_with('Z'));

    // Filters and owners.
    for f in [
        "Name=owner-alias,Values=strato",
        "Name=architecture,Values=x86_64",
        "Name=state,Values=available",
        "Name=is-public,Values=true",
    ] {
        let d = cloud.aws(&["ec2", "describe-images", "--filters", f]);
        assert!(d["Images"].as_array().unwrap().iter().any(|i| i["ImageId"] == id.as_str()), "{f}");
    }
    let d = cloud.aws(&["ec2", "describe-images", "--filters", &format!("Name=image-id,Values={id}")]);
    assert_eq!(d["Images"].as_array().unwrap().len(), 1);
    let d = cloud.aws(&["ec2", "describe-images", "--owners", "self"]);
    assert_eq!(d["Images"].as_array().unwrap().len(), 0, "the admin owns no image");
    let d =
        cloud.aws(&["ec2", "describe-images", "--executable-users", "all", "--filters", "Name=name,Values=strato-*"]);
    assert!(!d["Images"].as_array().unwrap().is_empty());
    let d = cloud.aws(&["ec2", "describe-images", "--owners", "amazon"]);
    assert_eq!(d["Images"].as_array().unwrap().len(), 0);

    assert_eq!(cloud.aws_err(&["ec2", "describe-images", "--image-ids", "ami-nothex"]), "InvalidAMIID.Malformed");
    assert_eq!(
        cloud.aws_err(&["ec2", "describe-images", "--image-ids", "ami-0123456789abcdef0"]),
        "InvalidAMIID.NotFound"
    );
    assert_eq!(cloud.aws_err(&["ec2", "describe-images", "--owners", "nobody"]), "InvalidParameterValue");

    // Only Strato (through the admin) changes Strato's images; a tenant cannot.
    let tenant = cloud.create_account("tenant", false);
    assert_eq!(cloud.aws_err_as(&tenant, &["ec2", "deregister-image", "--image-id", &id]), "UnauthorizedOperation");
    let t = cloud.aws_json_as(&tenant, &["ec2", "describe-images", "--image-ids", &id]);
    assert_eq!(t["Images"][0]["ImageId"], id.as_str(), "a public image is visible to every account");
}

#[test]
fn register_share_copy_and_deregister() {
    let cloud = Cloud::start();
    let work = tempfile::tempdir().unwrap();
    let disk = work.path().join("disk.qcow2");
    let out = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg("2G")
        .output()
        .unwrap();
    assert!(out.status.success());
    let kernel = work.path().join("vmlinux");
    std::fs::write(&kernel, b"\x7fELF not really a kernel, the catalogue does not boot it").unwrap();

    let r = cloud.aws(&[
        "ec2",
        "register-image",
        "--name",
        "my-image",
        "--description",
        "mine",
        "--image-location",
        &disk.display().to_string(),
        "--kernel-id",
        &kernel.display().to_string(),
    ]);
    let mine = s(&r["ImageId"]).to_owned();
    let d = cloud.aws(&["ec2", "describe-images", "--owners", "self"]);
    assert_eq!(d["Images"][0]["ImageId"], mine.as_str());
    assert_eq!(d["Images"][0]["Public"], false);
    assert_eq!(d["Images"][0]["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"], 2);
    assert_eq!(
        cloud.aws_err(&[
            "ec2",
            "register-image",
            "--name",
            "my-image",
            "--image-location",
            &disk.display().to_string(),
            "--kernel-id",
            &kernel.display().to_string()
        ]),
        "InvalidAMIName.Duplicate"
    );
    assert_eq!(
        cloud.aws_err(&[
            "ec2",
            "register-image",
            "--name",
            "xx1",
            "--image-location",
            "/nonexistent",
            "--kernel-id",
            &kernel.display().to_string()
        ]),
        "InvalidParameterValue"
    );
    // A qcow2 with a backing file could read any host file: refused.
    let sneaky = work.path().join("sneaky.qcow2");
    let out = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/etc/hostname"])
        .arg(&sneaky)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        cloud.aws_err(&[
            "ec2",
            "register-image",
            "--name",
            "sneaky",
            "--image-location",
            &sneaky.display().to_string(),
            "--kernel-id",
            &kernel.display().to_string()
        ]),
        "InvalidParameterValue"
    );

    // A tenant can neither register from host files nor see a private image.
    let tenant = cloud.create_account("tenant", false);
    let tenant_id =
        s(&cloud.aws_json_as(&tenant, &["ec2", "describe-security-groups"])["SecurityGroups"][0]["OwnerId"]).to_owned();
    assert_eq!(
        cloud.aws_err_as(
            &tenant,
            &[
                "ec2",
                "register-image",
                "--name",
                "t-img",
                "--image-location",
                &disk.display().to_string(),
                "--kernel-id",
                &kernel.display().to_string()
            ]
        ),
        "UnauthorizedOperation"
    );
    assert_eq!(cloud.aws_err_as(&tenant, &["ec2", "describe-images", "--image-ids", &mine]), "InvalidAMIID.NotFound");

    // Share it with the tenant.
    cloud.aws(&[
        "ec2",
        "modify-image-attribute",
        "--image-id",
        &mine,
        "--launch-permission",
        &format!("Add=[{{UserId={tenant_id}}}]"),
    ]);
    let a = cloud.aws(&["ec2", "describe-image-attribute", "--image-id", &mine, "--attribute", "launchPermission"]);
    assert_eq!(a["LaunchPermissions"][0]["UserId"], tenant_id.as_str());
    let t = cloud.aws_json_as(&tenant, &["ec2", "describe-images", "--executable-users", "self"]);
    assert!(t["Images"].as_array().unwrap().iter().any(|i| i["ImageId"] == mine.as_str()));
    assert_eq!(
        cloud.aws_err_as(
            &tenant,
            &["ec2", "describe-image-attribute", "--image-id", &mine, "--attribute", "launchPermission"]
        ),
        "UnauthorizedOperation"
    );
    assert_eq!(cloud.aws_err_as(&tenant, &["ec2", "deregister-image", "--image-id", &mine]), "UnauthorizedOperation");

    // The tenant copies it: its own private image, with the same disk.
    let c = cloud.aws_json_as(
        &tenant,
        &["ec2", "copy-image", "--source-image-id", &mine, "--source-region", "local-1", "--name", "tenant-copy"],
    );
    let copy = s(&c["ImageId"]).to_owned();
    let t = cloud.aws_json_as(&tenant, &["ec2", "describe-images", "--owners", "self"]);
    assert_eq!(t["Images"][0]["ImageId"], copy.as_str());
    assert_eq!(t["Images"][0]["SourceImageId"], mine.as_str());
    assert_eq!(
        cloud.aws_err_as(
            &tenant,
            &["ec2", "copy-image", "--source-image-id", &mine, "--source-region", "us-east-1", "--name", "x-copy"]
        ),
        "InvalidParameterValue"
    );
    assert_eq!(
        cloud.aws_err(&["ec2", "describe-images", "--image-ids", &copy]),
        "InvalidAMIID.NotFound",
        "the copy is the tenant's"
    );

    // Unshare; make public; describe and modify the description.
    cloud.aws(&[
        "ec2",
        "modify-image-attribute",
        "--image-id",
        &mine,
        "--launch-permission",
        &format!("Remove=[{{UserId={tenant_id}}}]"),
    ]);
    assert_eq!(cloud.aws_err_as(&tenant, &["ec2", "describe-images", "--image-ids", &mine]), "InvalidAMIID.NotFound");
    cloud.aws(&["ec2", "modify-image-attribute", "--image-id", &mine, "--launch-permission", "Add=[{Group=all}]"]);
    assert_eq!(
        cloud.aws_json_as(&tenant, &["ec2", "describe-images", "--image-ids", &mine])["Images"][0]["Public"],
        true
    );
    cloud.aws(&["ec2", "modify-image-attribute", "--image-id", &mine, "--description", "Value=renamed"]);
    let a = cloud.aws(&["ec2", "describe-image-attribute", "--image-id", &mine, "--attribute", "description"]);
    assert_eq!(a["Description"]["Value"], "renamed");

    // Deregister: gone for everyone, files removed.
    cloud.aws(&["ec2", "deregister-image", "--image-id", &mine]);
    assert_eq!(cloud.aws_err(&["ec2", "describe-images", "--image-ids", &mine]), "InvalidAMIID.NotFound");
    assert!(!cloud.dir.path().join("images").join(&mine).exists());
    // The copy keeps its own disk.
    assert!(cloud.dir.path().join("images").join(&copy).join("disk.qcow2").exists());
}
