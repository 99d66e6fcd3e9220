//! Ansible's amazon.aws collection (from the `ansible` package on PyPI, in the test
//! virtualenv), unmodified, against a real `strato serve` with real VMs: the playbook
//! `tests/ansible/instance.yml` makes a key pair, a security group and an instance (waiting
//! for it to run), reads it back, attaches a volume, stops, resizes (with the AWS CLI:
//! amazon.aws has no module for it), marks it EBS-optimized, starts it, terminates it and
//! removes what it made. Its modules call STS GetCallerIdentity and filter VPCs with
//! `isDefault` on the way.

mod common;

use std::path::Path;
use std::process::Command;

use common::Cloud;

#[test]
fn playbook_with_key_group_instance_volume_stop_resize_start_terminate() {
    let venv = common::venv();
    assert!(
        venv.join("bin/ansible-playbook").exists(),
        "ANSIBLE TESTS CANNOT RUN: ansible-playbook is not in {} (scripts/test installs it)",
        venv.display()
    );
    let cloud = Cloud::start();
    let ami = cloud.minimal_ami();
    let (key, secret) = cloud.admin_keys();
    let home = cloud.dir.path().join("ansible-home");
    std::fs::create_dir_all(&home).expect("ansible home");
    let playbook = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ansible/instance.yml");
    let path = format!("{}:{}", venv.join("bin").display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new(venv.join("bin/ansible-playbook"))
        .arg(&playbook)
        .env("PATH", path)
        .env("ANSIBLE_HOME", &home)
        .env("ANSIBLE_LOCAL_TEMP", home.join("tmp"))
        .env("ANSIBLE_PYTHON_INTERPRETER", venv.join("bin/python"))
        .env("ANSIBLE_LOCALHOST_WARNING", "False")
        .env("ANSIBLE_INVENTORY_UNPARSED_WARNING", "False")
        .env("ANSIBLE_NOCOLOR", "1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("STRATO_ENDPOINT", &cloud.endpoint)
        .env("STRATO_KEY", &key)
        .env("STRATO_SECRET", &secret)
        .env("STRATO_AMI", &ami)
        .output()
        .expect("running ansible-playbook");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the playbook failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("failed=0"), "{text}");
    // It left nothing running behind.
    let left =
        cloud.aws(&["ec2", "describe-instances", "--filters", "Name=instance-state-name,Values=running,stopped"]);
    assert_eq!(left["Reservations"].as_array().map(Vec::len), Some(0), "{left}");
    let groups = cloud.aws(&["ec2", "describe-security-groups", "--filters", "Name=group-name,Values=ans-web"]);
    assert_eq!(groups["SecurityGroups"].as_array().map(Vec::len), Some(0), "{groups}");
}
