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
