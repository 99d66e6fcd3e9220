//! Terraform's AWS provider (5.100.0, from the machine's local plugin mirror), unmodified,
//! against a real `strato serve` with real VMs: apply, then a plan that must show no
//! changes (every Describe returns exactly what was set), then destroy.
//!
//! Terraform and the mirror must be on the machine: the test fails loudly without them
//! (`STRATO_TERRAFORM_PLUGINS` names the mirror's root when it is not `/opt/tf-plugins`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::Cloud;

const PROVIDER: &str = "registry.terraform.io/hashicorp/aws/5.100.0";

fn plugin_dir() -> PathBuf {
    let root = std::env::var_os("STRATO_TERRAFORM_PLUGINS").map(PathBuf::from).unwrap_or("/opt/tf-plugins".into());
    assert!(
        root.join(PROVIDER).is_dir(),
        "TERRAFORM TESTS CANNOT RUN: the AWS provider 5.100.0 is not in the plugin mirror {} \
         (set STRATO_TERRAFORM_PLUGINS to the mirror's root)",
        root.display()
    );
    assert!(
        Command::new("terraform").arg("version").output().is_ok_and(|o| o.status.success()),
        "TERRAFORM TESTS CANNOT RUN: `terraform` is not on PATH"
    );
    root
}

struct Tf<'a> {
    dir: &'a Path,
    vars: Vec<String>,
}

impl Tf<'_> {
    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("terraform");
        cmd.current_dir(self.dir)
            .args(args)
            .env("TF_CLI_CONFIG_FILE", "/dev/null")
            .env("TF_IN_AUTOMATION", "1")
            .env("CHECKPOINT_DISABLE", "1")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_CONFIG_FILE");
        if args[0] != "init" && args[0] != "output" {
            cmd.args(["-input=false", "-no-color"]).args(self.vars.iter().flat_map(|v| ["-var", v.as_str()]));
        }
        cmd.output().expect("running terraform")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "terraform {} failed:\n{}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[test]
fn vpc_instance_volume_and_address_apply_plan_clean_and_destroy() {
    let plugins = plugin_dir();
    let cloud = Cloud::start();
    let ami = cloud.minimal_ami();
    let (key, secret) = cloud.admin_keys();
    let work = cloud.dir.path().join("tf");
    std::fs::create_dir_all(&work).expect("tf dir");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/terraform/basic.tf");
    std::fs::copy(config, work.join("main.tf")).expect("copy the config");
    let tf = Tf {
        dir: &work,
        vars: vec![
            format!("endpoint={}", cloud.endpoint),
            format!("ami={ami}"),
            format!("access_key={key}"),
            format!("secret_key={secret}"),
        ],
    };
    tf.ok(&["init", "-input=false", "-no-color", &format!("-plugin-dir={}", plugins.display())]);

    let applied = tf.run(&["apply", "-auto-approve"]);
    let plan = applied.status.success().then(|| tf.run(&["plan", "-detailed-exitcode"]));
    let outputs = applied.status.success().then(|| tf.ok(&["output", "-json"]));
    // What the user sees in EC2 afterwards, read before anything is destroyed.
    let seen = outputs.as_deref().map(|o| {
        let o: serde_json::Value = serde_json::from_str(o).expect("outputs");
        let id = o["instance_id"]["value"].as_str().unwrap_or_default().to_owned();
        let i = cloud.aws(&["ec2", "describe-instances", "--instance-ids", &id]);
        let credits = cloud.aws(&["ec2", "describe-instance-credit-specifications", "--instance-ids", &id]);
        let stop = cloud.aws_err(&["ec2", "stop-instances", "--instance-ids", &id]);
        let from = o["template_instance_id"]["value"].as_str().unwrap_or_default().to_owned();
        let t = cloud.aws(&["ec2", "describe-instances", "--instance-ids", &from]);
        let tags = cloud.aws(&["ec2", "describe-tags", "--filters", &format!("Name=resource-id,Values={from}")]);
        (o, i, credits, stop, t, tags)
    });
    let destroyed = tf.run(&["destroy", "-auto-approve"]);

    assert!(
        applied.status.success(),
        "terraform apply failed:\n{}\n{}",
        String::from_utf8_lossy(&applied.stdout),
        String::from_utf8_lossy(&applied.stderr)
    );
    let plan = plan.expect("planned");
    assert_eq!(
        plan.status.code(),
        Some(0),
        "terraform plan after apply must show no changes:\n{}\n{}",
        String::from_utf8_lossy(&plan.stdout),
        String::from_utf8_lossy(&plan.stderr)
    );
    let (o, i, credits, stop, from_template, tags) = seen.expect("read");
    let t = &from_template["Reservations"][0]["Instances"][0];
    assert_eq!(t["InstanceType"], "t3.nano", "launched from the template: {t}");
    assert_eq!(t["State"]["Name"], "running", "{t}");
    let template = o["template_id"]["value"].as_str().unwrap_or_default();
    let lt_tag = tags["Tags"].as_array().and_then(|a| a.iter().find(|t| t["Key"] == "aws:ec2launchtemplate:id"));
    assert_eq!(lt_tag.map(|t| t["Value"].clone()), Some(serde_json::Value::from(template)), "{tags}");
    let inst = &i["Reservations"][0]["Instances"][0];
    assert_eq!(inst["State"]["Name"], "running", "{inst}");
    assert_eq!(inst["InstanceType"], "t3.micro");
    assert_eq!(credits["InstanceCreditSpecifications"][0]["CpuCredits"], "standard", "{credits}");
    assert_eq!(stop, "OperationNotPermitted", "disable_api_stop is honoured");
    let dns = o["public_dns"]["value"].as_str().unwrap_or_default();
    assert_eq!(inst["PublicDnsName"].as_str(), Some(dns), "{inst}");
    assert!(dns.starts_with("ec2-127-") && dns.ends_with(".local-1.compute.amazonaws.com"), "{dns}");
    assert!(
        destroyed.status.success(),
        "terraform destroy failed:\n{}\n{}",
        String::from_utf8_lossy(&destroyed.stdout),
        String::from_utf8_lossy(&destroyed.stderr)
    );
    let left = cloud.aws(&["ec2", "describe-vpcs", "--filters", "Name=cidr,Values=10.20.0.0/16"]);
    assert_eq!(left["Vpcs"].as_array().map(Vec::len), Some(0), "destroy removed the VPC: {left}");
}
