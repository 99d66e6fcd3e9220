//! The wire protocol at its edges: SigV4 failures, malformed requests, big bodies. Every bad
//! request gets its EC2 error code in the EC2 error document, never a 500, and changes
//! nothing.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{error_code, Cloud};

fn post_with(cloud: &Cloud, auth: &str, date: &str, body: &str) -> (u16, String) {
    let req = format!(
        "POST / HTTP/1.1\r\nhost: {}\r\ncontent-type: application/x-www-form-urlencoded; charset=utf-8\r\nx-amz-date: {date}\r\nauthorization: {auth}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        cloud.addr,
        body.len()
    );
    cloud.raw(req.as_bytes())
}

fn sign(
    cloud: &Cloud,
    key: &str,
    secret: &str,
    region: &str,
    body: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> (String, String) {
    strato::api::sigv4::Signer { access_key: key, secret, region, service: "ec2" }.sign_form_post(
        &cloud.addr,
        body.as_bytes(),
        at,
    )
}

#[test]
fn signature_failures_have_their_codes() {
    let cloud = Cloud::start();
    let (key, secret) = cloud.admin_keys();
    let body = "Action=DescribeRegions&Version=2016-11-15";
    let now = chrono::Utc::now();

    let ok = cloud.signed_post(body);
    assert_eq!(ok.0, 200, "{}", ok.1);
    assert!(ok.1.contains("<requestId>") && ok.1.contains("xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\""));

    let req = format!(
        "POST / HTTP/1.1\r\nhost: {}\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        cloud.addr,
        body.len()
    );
    let (status, resp) = cloud.raw(req.as_bytes());
    assert_eq!((status, error_code(&resp)), (401, "MissingAuthenticationToken"));
    assert!(resp.contains("<RequestID>"));

    let (d, a) = sign(&cloud, &key, "wrong-secret", "local-1", body, now);
    assert_eq!(error_code(&post_with(&cloud, &a, &d, body).1), "AuthFailure");
    let (d, a) = sign(&cloud, "AKIAUNKNOWNUNKNOWN00", &secret, "local-1", body, now);
    assert_eq!(error_code(&post_with(&cloud, &a, &d, body).1), "AuthFailure");
    let (d, a) = sign(&cloud, &key, &secret, "us-east-1", body, now);
    assert_eq!(error_code(&post_with(&cloud, &a, &d, body).1), "AuthFailure");
    let (d, a) = sign(&cloud, &key, &secret, "local-1", body, now - chrono::Duration::minutes(20));
    let (status, resp) = post_with(&cloud, &a, &d, body);
    assert_eq!((status, error_code(&resp)), (400, "RequestExpired"));
    let (d, a) = sign(&cloud, &key, &secret, "local-1", body, now);
    let tampered = "Action=DescribeRegions&Version=2016-11-16";
    assert_eq!(error_code(&post_with(&cloud, &a, &d, tampered).1), "AuthFailure");
    let (status, resp) = post_with(&cloud, "AWS4-HMAC-SHA256 Credential=x", &d, body);
    assert_eq!((status, error_code(&resp)), (400, "IncompleteSignature"));
    let (_, resp) = post_with(&cloud, "Basic dXNlcjpwYXNz", &d, body);
    assert_eq!(error_code(&resp), "IncompleteSignature");

    // A session token, unsigned (added to a request signed without one) or in a presigned
    // URL: Strato issues no temporary credentials, so it is refused, never ignored.
    let (d, a) = sign(&cloud, &key, &secret, "local-1", body, now);
    let req = format!(
        "POST / HTTP/1.1\r\nhost: {}\r\ncontent-type: application/x-www-form-urlencoded; charset=utf-8\r\nx-amz-date: {d}\r\nx-amz-security-token: forged\r\nauthorization: {a}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        cloud.addr,
        body.len()
    );
    let (status, resp) = cloud.raw(req.as_bytes());
    assert_eq!((status, error_code(&resp)), (401, "AuthFailure"), "{resp}");
    assert!(resp.contains("security token"), "{resp}");
}

#[test]
fn malformed_requests_get_ec2_codes_and_change_nothing() {
    let cloud = Cloud::start();
    let corpus = include_str!("corpus/malformed.tsv");
    let mut failures = Vec::new();
    for line in corpus.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (want, body) = line.split_once('\t').expect("code<TAB>body");
        let (status, resp) = cloud.signed_post(body);
        let got = error_code(&resp);
        if got != want || status != 400 {
            failures.push(format!("{body}\n  want 400 {want}, got {status} {got}: {resp}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let (status, resp) = cloud.signed_post("Action=DescribeSecurityGroups&Version=2016-11-15");
    assert_eq!(status, 200);
    assert_eq!(resp.matches("<groupName>").count(), 1, "only the default group: {resp}");
    let (_, resp) = cloud.signed_post("Action=DescribeKeyPairs&Version=2016-11-15");
    assert!(!resp.contains("<keyName>"), "no key pair was made: {resp}");
    let (_, resp) = cloud.signed_post("Action=DescribeVpcs&Version=2016-11-15");
    assert_eq!(resp.matches("<vpcId>").count(), 1, "only the default VPC: {resp}");
}

#[test]
fn huge_bodies_and_odd_methods_are_refused() {
    let cloud = Cloud::start();
    let big = format!("Action=DescribeRegions&Version=2016-11-15&Pad={}", "x".repeat(2 * 1024 * 1024));
    let (status, resp) = cloud.signed_post(&big);
    assert_eq!((status, error_code(&resp)), (413, "InvalidRequest"), "{resp}");

    let req = format!("DELETE / HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n", cloud.addr);
    let (status, resp) = cloud.raw(req.as_bytes());
    assert_eq!((status, error_code(&resp)), (400, "InvalidRequest"));

    // Not HTTP at all: the server answers 400 or closes, and keeps serving.
    let _ = cloud.raw(b"\x16\x03\x01\x02\x00garbage\r\n\r\n");
    assert_eq!(cloud.signed_post("Action=DescribeRegions&Version=2016-11-15").0, 200);
}

/// A signed request on its own connection, answered within `wait`: (status, body), or None.
fn signed_post_waiting(cloud: &Cloud, body: &str, wait: Duration) -> Option<(u16, String)> {
    let (key, secret) = cloud.admin_keys();
    let signer = strato::api::sigv4::Signer { access_key: &key, secret: &secret, region: "local-1", service: "ec2" };
    let (date, auth) = signer.sign_form_post(&cloud.addr, body.as_bytes(), chrono::Utc::now());
    let req = format!(
        "POST / HTTP/1.1\r\nhost: {}\r\ncontent-type: application/x-www-form-urlencoded; charset=utf-8\r\nx-amz-date: {date}\r\nauthorization: {auth}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        cloud.addr,
        body.len()
    );
    let mut s = TcpStream::connect(&cloud.addr).expect("connect");
    s.write_all(req.as_bytes()).expect("write");
    s.set_read_timeout(Some(wait)).expect("timeout");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok())?;
    Some((status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()))
}

#[test]
fn slow_clients_are_cut_off_and_connections_capped() {
    let cloud = Cloud::start_with_env(&[("STRATO_MAX_CONNECTIONS", "3")]);
    let body = "Action=DescribeRegions&Version=2016-11-15";
    assert_eq!(signed_post_waiting(&cloud, body, Duration::from_secs(10)).map(|r| r.0), Some(200));
    // Three clients that never finish their request's head (slowloris) hold every
    // connection the server serves at once...
    let mut slow: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(&cloud.addr).expect("connect");
            s.write_all(b"POST / HTTP/1.1\r\nhost: x\r\nx-slow: ").expect("write");
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // ... so a fourth waits for one of them to end;
    assert_eq!(signed_post_waiting(&cloud, body, Duration::from_secs(2)), None, "a fourth connection was served");
    // they are cut off once their head is overdue (10 s), and it is served.
    let served = signed_post_waiting(&cloud, body, Duration::from_secs(30));
    assert_eq!(served.map(|r| r.0), Some(200));
    for s in &mut slow {
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut rest = Vec::new();
        assert!(s.read_to_end(&mut rest).is_ok(), "a slow client's connection is still open");
    }
}
