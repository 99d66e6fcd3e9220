//! A host that joins over the agent API (`strato agent --control-plane URL --token T`),
//! without the database: a `strato serve` serving local-1a, and a `strato agent` serving
//! local-1b from its own data dir (the serve's data dir as its storage). A wrong token is
//! refused; an instance in local-1b runs on the agent's host (a real VM: its web server
//! answers, its console is read through the API); the agent's credential cannot report on
//! another host's instance nor set a flag agents do not set.

mod common;

use common::eventually_within as eventually;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

/// A raw agent API call: (HTTP status, body).
fn agent_call(addr: &str, bearer: &str, method: &str, body: &str) -> (u16, String) {
    let mut c = TcpStream::connect(addr).expect("connect");
    write!(
        c,
        "POST /strato-agent/v1/{method} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {bearer}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut out = String::new();
    c.read_to_string(&mut out).expect("read");
    let status = out.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}

#[test]
fn a_host_joins_with_a_token_and_runs_instances_over_the_agent_api() {
    let dirs: Vec<tempfile::TempDir> =
        (0..2).map(|_| tempfile::Builder::new().prefix("strato-test-").tempdir().expect("temp dir")).collect();
    let (d1, d2) = (dirs[0].path().to_owned(), dirs[1].path().to_owned());
    let mut cmd = common::strato(&d1);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--az", "local-1a", "--host-timeout", "3"])
        .env("STRATO_PUBLIC_POOL", common::public_pool(&d1))
        .env("STRATO_LAUNCH_SNAPSHOTS", "off");
    let (serve, endpoint) = common::spawn_serve(cmd);
    let mut cleanup = common::ServeAndAgent { serve, agent: None, dirs, agent_netns: None };
    let config = d1.join("aws-config");
    let aws = |args: &[&str]| common::aws_at(&endpoint, &config, args);

    // A wrong token is refused; a good one works once.
    let agent = |token: &str| {
        let mut c = common::strato(&d2);
        c.args(["--storage-dir"]).arg(&d1).args([
            "agent",
            "--control-plane",
            &endpoint,
            "--az",
            "local-1b",
            "--token",
            token,
        ]);
        c
    };
    let out = agent("sjt-0123").output().expect("strato agent");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("the join token is unknown, used or expired"));
    let token = common::strato(&d1).args(["host", "token"]).output().expect("strato host token");
    let token = String::from_utf8_lossy(&token.stdout).trim().to_owned();
    assert!(token.starts_with("sjt-"), "{token}");
    let mut child = agent(&token).stdout(Stdio::piped()).spawn().expect("strato agent");
    let stdout = child.stdout.take().expect("stdout");
    cleanup.agent = Some(child);
    let mut lines = BufReader::new(stdout).lines();
    let joined = lines.next().expect("a line").expect("utf-8");
    assert!(joined.starts_with("This machine is host h-"), "{joined}");
    std::thread::spawn(move || for _ in lines {});
    let saved: Value = serde_json::from_slice(&std::fs::read(d2.join("agent.json")).expect("agent.json")).unwrap();
    let bearer = format!("{}:{}", s(&saved["host_id"]), s(&saved["credential"]));
    let zones = aws(&["ec2", "describe-availability-zones"]);
    let states: Vec<String> = zones["AvailabilityZones"].as_array().unwrap().iter().map(|z| s(&z["State"])).collect();
    assert_eq!(states, ["available", "available", "unavailable"]);

    // An instance in local-1b runs on the agent's host.
    let images =
        aws(&["ec2", "describe-images", "--owners", "strato", "--filters", "Name=name,Values=strato-minimal-x86_64"]);
    let ami = s(&images["Images"][0]["ImageId"]);
    let subnet = |zone: &str| {
        let d = aws(&["ec2", "describe-subnets", "--filters", &format!("Name=availability-zone,Values={zone}")]);
        s(&d["Subnets"][0]["SubnetId"])
    };
    let g = common::web_group(aws);
    let run = |zone: &str| {
        let r = aws(&[
            "ec2",
            "run-instances",
            "--image-id",
            &ami,
            "--instance-type",
            "t2.nano",
            "--subnet-id",
            &subnet(zone),
            "--security-group-ids",
            &g,
            "--user-data",
            common::WEB_USER_DATA,
        ]);
        s(&r["Instances"][0]["InstanceId"])
    };
    let remote = run("local-1b");
    let local = run("local-1a");
    let describe =
        |id: &str| aws(&["ec2", "describe-instances", "--instance-ids", id])["Reservations"][0]["Instances"][0].clone();
    eventually("the remote host's web server answers", Duration::from_secs(120), || {
        common::http_get(&s(&describe(&remote)["PublicIpAddress"])).is_some_and(|b| b.starts_with("web "))
    });
    let console = aws(&["ec2", "get-console-output", "--instance-id", &remote]);
    assert!(s(&console["Output"]).contains("STRATO-BOOT: ready"), "{console}");
    eventually("the local instance runs", Duration::from_secs(60), || {
        s(&describe(&local)["State"]["Name"]) == "running"
    });

    // The agent's credential speaks for its own host only.
    let addr = endpoint.trim_start_matches("http://");
    let (status, body) = agent_call(
        addr,
        &bearer,
        "apply",
        &format!(r#"{{"id":"{local}","generation":0,"event":"VmGone","reason":null}}"#),
    );
    assert_eq!(status, 403, "{body}");
    let (status, body) = agent_call(
        addr,
        &bearer,
        "set_instance_flag",
        &format!(r#"{{"id":"{remote}","flag":"force_stop","value":true}}"#),
    );
    assert_eq!(status, 403, "{body}");
    let (status, _) = agent_call(addr, "h-0123456789abcdef0:nope", "duties", "{}");
    assert_eq!(status, 401);
    // It reads the volumes that are its work: its instance's root volume, not the other's.
    let (status, body) = agent_call(addr, &bearer, "all_volumes", "{}");
    assert_eq!(status, 200, "{body}");
    let volumes: Value = serde_json::from_str(&body).expect("JSON");
    let attached: Vec<String> = volumes.as_array().unwrap().iter().map(|v| s(&v["instance_id"])).collect();
    assert_eq!(attached.as_slice(), std::slice::from_ref(&remote), "{body}");
    assert_eq!(s(&describe(&local)["State"]["Name"]), "running", "the forged report changed nothing");

    // The token was used up: another machine cannot join with it.
    let d3 = tempfile::Builder::new().prefix("strato-test-").tempdir().expect("temp dir");
    let out = common::strato(d3.path())
        .args(["agent", "--control-plane", &endpoint, "--token", &token])
        .output()
        .expect("strato agent");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("unknown, used or expired"));
}

/// Over TLS (`serve --agent-listen`): a token whose certificate fingerprint is not the
/// server's is refused in the handshake (before the token is sent, so it stays good), the
/// right one joins, and the host's record says so; plain HTTP to a non-loopback address is
/// refused by the agent itself.
#[test]
fn a_host_joins_over_tls_pinning_the_certificate_in_its_token() {
    let dirs: Vec<tempfile::TempDir> =
        (0..2).map(|_| tempfile::Builder::new().prefix("strato-test-").tempdir().expect("temp dir")).collect();
    let (d1, d2) = (dirs[0].path().to_owned(), dirs[1].path().to_owned());
    let mut cmd = common::strato(&d1);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--no-image-build", "--agent-listen", "127.0.0.1:0"])
        .env("STRATO_PUBLIC_POOL", common::public_pool(&d1));
    let (serve, _endpoint, agent_api) = common::spawn_serve_with_agent_api(cmd);
    let mut cleanup = common::ServeAndAgent { serve, agent: None, dirs, agent_netns: None };
    let agent_api = agent_api.expect("serve printed its agent API");
    assert!(agent_api.starts_with("https://127.0.0.1:"), "{agent_api}");
    let token = common::strato(&d1).args(["host", "token"]).output().expect("strato host token");
    let token = String::from_utf8_lossy(&token.stdout).trim().to_owned();
    let (secret, fingerprint) = token.split_once('.').expect("sjt-SECRET.FINGERPRINT");
    assert_eq!(fingerprint.len(), 64, "{token}");
    let agent = |url: &str, token: &str| {
        let mut c = common::strato(&d2);
        c.args(["--storage-dir"]).arg(&d1).args([
            "agent",
            "--control-plane",
            url,
            "--az",
            "local-1b",
            "--token",
            token,
        ]);
        c
    };

    let forged = format!("{secret}.{}", "0".repeat(64));
    let out = agent(&agent_api, &forged).output().expect("strato agent");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not the one in the join token"), "{err}");
    let out = agent("http://10.0.0.1:8787", &token).output().expect("strato agent");
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback only"), "{}", String::from_utf8_lossy(&out.stderr));

    let mut child = agent(&agent_api, &token).stdout(Stdio::piped()).spawn().expect("strato agent");
    let stdout = child.stdout.take().expect("stdout");
    cleanup.agent = Some(child);
    let joined = BufReader::new(stdout).lines().next().expect("a line").expect("utf-8");
    assert!(joined.starts_with("This machine is host h-") && joined.contains(&agent_api), "{joined}");
    let saved: Value = serde_json::from_slice(&std::fs::read(d2.join("agent.json")).expect("agent.json")).unwrap();
    assert_eq!(s(&saved["fingerprint"]), fingerprint);
    let list = common::strato(&d1).args(["host", "list"]).output().expect("strato host list");
    let list = String::from_utf8_lossy(&list.stdout);
    let host = s(&saved["host_id"]);
    assert!(list.lines().any(|l| l.starts_with(&host) && l.contains("local-1b") && l.contains(" up ")), "{list}");
}
