//! The instance metadata service's answers: what an instance reads at 169.254.169.254, as
//! EC2 serves it (the version list, `meta-data/` with directory listings, `user-data`,
//! `dynamic/instance-identity/document`), with IMDSv2 session tokens.
//!
//! Tokens are stateless: `expiry.hmac(key, instance-id, expiry)`, so any process holding the
//! key can check a token issued by another (QEMU's user network runs one process per
//! connection). Which instance asks is decided by the caller of `answer` from where the
//! packets come from, never from anything in the request.
//!
//! What serves it: instances reach the per-VPC listener on 169.254.169.254 (`net::imds`);
//! `strato metadata serve-stdio` answers one connection on stdin/stdout (used with QEMU's
//! user-mode network by the boot benchmark and the image tests).

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Longest IMDSv2 token lifetime, as on EC2.
pub const MAX_TOKEN_TTL: u64 = 21600;

/// What one instance's metadata says.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct InstanceMetadata {
    pub instance_id: String,
    pub ami_id: String,
    pub instance_type: String,
    pub account_id: String,
    pub region: String,
    pub availability_zone: String,
    pub local_ipv4: String,
    pub public_ipv4: Option<String>,
    pub mac: String,
    pub security_groups: Vec<String>,
    /// The key pair's name and OpenSSH public key.
    pub public_key: Option<(String, String)>,
    pub user_data: Option<Vec<u8>>,
    /// `HttpTokens=required`: IMDSv1 requests get 401.
    pub tokens_required: bool,
    /// `block-device-mapping/` entries besides `ami` and `root`: (`ephemeral0`, `sdb`),
    /// (`ebs1`, `sdf`), ...
    #[serde(default)]
    pub block_devices: Vec<(String, String)>,
}

/// An HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    pub content_type: &'static str,
}

impl Answer {
    fn text(status: u16, body: impl Into<Vec<u8>>) -> Answer {
        Answer { status, body: body.into(), content_type: "text/plain" }
    }

    pub fn reason(&self) -> &'static str {
        match self.status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            _ => "Error",
        }
    }
}

enum Node {
    Leaf(Vec<u8>),
    Dir(BTreeMap<String, Node>),
}

fn leaf(s: impl Into<Vec<u8>>) -> Node {
    Node::Leaf(s.into())
}

fn dir(entries: Vec<(&str, Node)>) -> Node {
    Node::Dir(entries.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

impl InstanceMetadata {
    fn hostname(&self) -> String {
        format!("ip-{}.{}.compute.internal", self.local_ipv4.replace('.', "-"), self.region)
    }

    fn meta_data(&self) -> Node {
        let mut m = vec![
            ("ami-id", leaf(self.ami_id.clone())),
            ("ami-launch-index", leaf("0")),
            ("hostname", leaf(self.hostname())),
            ("instance-id", leaf(self.instance_id.clone())),
            ("instance-type", leaf(self.instance_type.clone())),
            ("local-hostname", leaf(self.hostname())),
            ("local-ipv4", leaf(self.local_ipv4.clone())),
            ("mac", leaf(self.mac.clone())),
            ("security-groups", leaf(self.security_groups.join("\n"))),
            (
                "placement",
                dir(vec![
                    ("availability-zone", leaf(self.availability_zone.clone())),
                    ("region", leaf(self.region.clone())),
                ]),
            ),
            ("block-device-mapping", {
                let mut m = vec![("ami", leaf("/dev/xvda")), ("root", leaf("/dev/xvda"))];
                m.extend(self.block_devices.iter().map(|(k, v)| (k.as_str(), leaf(v.clone()))));
                dir(m)
            }),
            ("services", dir(vec![("domain", leaf("amazonaws.com")), ("partition", leaf("aws"))])),
        ];
        let mut iface = vec![
            ("device-number", leaf("0")),
            ("local-hostname", leaf(self.hostname())),
            ("local-ipv4s", leaf(self.local_ipv4.clone())),
            ("mac", leaf(self.mac.clone())),
            ("owner-id", leaf(self.account_id.clone())),
            ("security-groups", leaf(self.security_groups.join("\n"))),
        ];
        if let Some(ip) = &self.public_ipv4 {
            m.push(("public-ipv4", leaf(ip.clone())));
            m.push(("public-hostname", leaf(String::new())));
            iface.push(("public-ipv4s", leaf(ip.clone())));
        }
        m.push((
            "network",
            dir(vec![("interfaces", dir(vec![("macs", Node::Dir(BTreeMap::from([(self.mac.clone(), dir(iface))])))]))]),
        ));
        if let Some((name, key)) = &self.public_key {
            let _ = name;
            m.push(("public-keys", dir(vec![("0", dir(vec![("openssh-key", leaf(format!("{key}\n")))]))])));
        }
        dir(m)
    }

    fn identity_document(&self) -> String {
        serde_json::json!({
            "accountId": self.account_id,
            "architecture": "x86_64",
            "availabilityZone": self.availability_zone,
            "imageId": self.ami_id,
            "instanceId": self.instance_id,
            "instanceType": self.instance_type,
            "privateIp": self.local_ipv4,
            "region": self.region,
            "version": "2017-09-30",
        })
        .to_string()
    }

    fn tree(&self) -> Node {
        let mut top = vec![
            ("meta-data", self.meta_data()),
            ("dynamic", dir(vec![("instance-identity", dir(vec![("document", leaf(self.identity_document()))]))])),
        ];
        if let Some(u) = &self.user_data {
            top.push(("user-data", leaf(u.clone())));
        }
        dir(top)
    }
}

/// Versions listed at `/` (EC2 lists many; clients pick the newest they know).
const VERSIONS: &[&str] =
    &["1.0", "2007-01-19", "2009-04-04", "2011-01-01", "2016-09-02", "2018-09-24", "2021-03-23", "latest"];

fn lookup<'a>(node: &'a Node, path: &str) -> Option<&'a Node> {
    let mut n = node;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        match n {
            Node::Dir(m) => n = m.get(part)?,
            Node::Leaf(_) => return None,
        }
    }
    Some(n)
}

fn listing(path: &str, m: &BTreeMap<String, Node>, md: &InstanceMetadata) -> Vec<u8> {
    // EC2 lists public keys as `0=key-name`.
    if path.trim_end_matches('/').ends_with("meta-data/public-keys") {
        let name = md.public_key.as_ref().map(|(n, _)| n.as_str()).unwrap_or("key");
        return format!("0={name}").into_bytes();
    }
    m.iter()
        .map(|(k, v)| if matches!(v, Node::Dir(_)) { format!("{k}/") } else { k.clone() })
        .collect::<Vec<_>>()
        .join("\n")
        .into_bytes()
}

/// The key that signs IMDSv2 tokens.
pub struct TokenKey(pub Vec<u8>);

impl TokenKey {
    fn mac(&self, instance: &str, expiry: u64) -> String {
        // HMAC accepts keys of any length.
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        m.update(instance.as_bytes());
        m.update(&expiry.to_be_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(m.finalize().into_bytes())
    }

    pub fn issue(&self, instance: &str, now: u64, ttl: u64) -> String {
        let expiry = now + ttl;
        format!("{expiry}.{}", self.mac(instance, expiry))
    }

    pub fn valid(&self, instance: &str, token: &str, now: u64) -> bool {
        let Some((exp, mac)) = token.split_once('.') else { return false };
        let Ok(expiry) = exp.parse::<u64>() else { return false };
        let expected = self.mac(instance, expiry);
        expiry > now && subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), mac.as_bytes()).into()
    }
}

/// Answers one request for the instance `md`. `headers` are (lowercase name, value).
pub fn answer(
    md: &InstanceMetadata,
    key: &TokenKey,
    method: &str,
    raw_path: &str,
    headers: &[(String, String)],
    now: u64,
) -> Answer {
    let header = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    let path = raw_path.split('?').next().unwrap_or("/");
    if method == "PUT" {
        if path != "/latest/api/token" {
            return Answer::text(405, "");
        }
        // A proxied token request is refused, as on EC2.
        if header("x-forwarded-for").is_some() {
            return Answer::text(403, "");
        }
        return match header("x-aws-ec2-metadata-token-ttl-seconds").and_then(|v| v.trim().parse::<u64>().ok()) {
            Some(ttl) if (1..=MAX_TOKEN_TTL).contains(&ttl) => Answer::text(200, key.issue(&md.instance_id, now, ttl)),
            _ => Answer::text(400, ""),
        };
    }
    if method != "GET" && method != "HEAD" {
        return Answer::text(405, "");
    }
    match header("x-aws-ec2-metadata-token") {
        Some(t) if !key.valid(&md.instance_id, t, now) => return Answer::text(401, ""),
        None if md.tokens_required => return Answer::text(401, ""),
        _ => {}
    }
    if path == "/" {
        return Answer::text(200, VERSIONS.join("\n"));
    }
    let trimmed = path.trim_start_matches('/');
    let (version, rest) = trimmed.split_once('/').unwrap_or((trimmed, ""));
    if !VERSIONS.contains(&version) {
        return Answer::text(404, "");
    }
    let tree = md.tree();
    match lookup(&tree, rest) {
        Some(Node::Leaf(v)) => {
            let ct = if rest.ends_with("instance-identity/document") { "application/json" } else { "text/plain" };
            Answer { status: 200, body: v.clone(), content_type: ct }
        }
        Some(Node::Dir(m)) => Answer::text(200, listing(rest, m, md)),
        None => Answer::text(404, ""),
    }
}

/// The file `serve-stdio` reads: an instance's metadata and the token key.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StdioConfig {
    pub metadata: InstanceMetadata,
    /// Hex of the token-signing key.
    pub token_key: String,
    /// Where each request is logged (method, path, whether a token came, status).
    pub log: Option<std::path::PathBuf>,
}

/// How many requests one connection may make.
pub const MAX_REQUESTS: usize = 100;

/// Answers the HTTP/1.x requests read from `input` in turn, writing the answers to
/// `output`; used with QEMU's user-mode network (`guestfwd=...-cmd:strato metadata
/// serve-stdio ...`, one process per connection). As EC2's service does, a connection
/// stays open after an HTTP/1.1 request without `Connection: close` (requests sent one
/// after another without waiting, pipelined, are answered in order), up to `MAX_REQUESTS`.
pub fn serve_stdio(
    cfg: &StdioConfig,
    input: &mut impl std::io::BufRead,
    output: &mut impl std::io::Write,
) -> std::io::Result<()> {
    for n in 0..MAX_REQUESTS {
        if !serve_one(cfg, input, output, n == 0, n + 1 < MAX_REQUESTS)? {
            break;
        }
    }
    Ok(())
}

/// Answers one request read from `input`; whether the connection stays open for another
/// (`may_keep`, an HTTP/1.1 request without `Connection: close` and without a body: the
/// answer is HTTP/1.1 with its length; otherwise HTTP/1.0 with `Connection: close`). The
/// `first` request of a connection is answered 400 when nothing came; a later one ends the
/// connection quietly.
pub fn serve_one(
    cfg: &StdioConfig,
    input: &mut impl std::io::BufRead,
    output: &mut impl std::io::Write,
    first: bool,
    may_keep: bool,
) -> std::io::Result<bool> {
    const MAX_LINE: usize = 8192;
    let mut line = String::new();
    input.by_ref().take(MAX_LINE as u64).read_line(&mut line)?;
    if line.is_empty() && !first {
        return Ok(false);
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or("").to_owned(), parts.next().unwrap_or("/").to_owned());
    let version = parts.next().unwrap_or("");
    let mut headers = Vec::new();
    for _ in 0..100 {
        let mut h = String::new();
        input.by_ref().take(MAX_LINE as u64).read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let keep = may_keep
        && !method.is_empty()
        && version == "HTTP/1.1"
        && !header("connection").is_some_and(|c| c.eq_ignore_ascii_case("close"))
        && header("content-length").is_none_or(|l| l.trim() == "0")
        && header("transfer-encoding").is_none();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let key = TokenKey(hex::decode(&cfg.token_key).unwrap_or_default());
    let a = if method.is_empty() {
        Answer::text(400, "")
    } else {
        answer(&cfg.metadata, &key, &method, &path, &headers, now)
    };
    if let Some(log) = &cfg.log {
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
            let token = headers.iter().any(|(k, _)| k == "x-aws-ec2-metadata-token");
            let _ = writeln!(f, "{method} {path} token={token} -> {}", a.status);
        }
    }
    let (version, connection) = if keep { ("1.1", "keep-alive") } else { ("1.0", "close") };
    write!(
        output,
        "HTTP/{version} {} {}\r\nDate: {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n",
        a.status,
        a.reason(),
        chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT"),
        a.content_type,
        a.body.len()
    )?;
    if method != "HEAD" {
        output.write_all(&a.body)?;
    }
    output.flush()?;
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md() -> InstanceMetadata {
        InstanceMetadata {
            instance_id: "i-0123456789abcdef0".into(),
            ami_id: "ami-0123456789abcdef0".into(),
            instance_type: "t3.micro".into(),
            account_id: "123456789012".into(),
            region: "local-1".into(),
            availability_zone: "local-1a".into(),
            local_ipv4: "172.31.0.10".into(),
            mac: "02:00:00:00:00:01".into(),
            security_groups: vec!["default".into()],
            public_key: Some(("mykey".into(), "ssh-ed25519 AAAA test".into())),
            user_data: Some(b"#!/bin/sh\necho hi\n".to_vec()),
            ..Default::default()
        }
    }

    fn get(m: &InstanceMetadata, path: &str, token: Option<&str>) -> Answer {
        let h: Vec<(String, String)> =
            token.map(|t| ("x-aws-ec2-metadata-token".to_owned(), t.to_owned())).into_iter().collect();
        answer(m, &TokenKey(b"k".to_vec()), "GET", path, &h, 1000)
    }

    /// Pipelined HTTP/1.1 requests are answered in order on one connection, which the one
    /// with `Connection: close` ends; an HTTP/1.0 request is answered alone.
    #[test]
    fn keep_alive_and_pipelining() {
        let cfg = StdioConfig { metadata: md(), token_key: hex::encode(b"k"), log: None };
        let serve = |input: &str| {
            let mut out = Vec::new();
            serve_stdio(&cfg, &mut std::io::Cursor::new(input.as_bytes().to_vec()), &mut out).unwrap();
            String::from_utf8(out).unwrap()
        };
        let out = serve(
            "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\n\r\n\
             GET /latest/meta-data/public-keys/0/openssh-key HTTP/1.1\r\nHost: x\r\n\r\n\
             GET /latest/user-data HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n\
             GET /latest/meta-data/instance-id HTTP/1.1\r\n\r\n",
        );
        let answers: Vec<&str> = out.split("HTTP/1.").skip(1).collect();
        assert_eq!(answers.len(), 3, "{out}");
        assert!(answers[0].starts_with("1 200 ") && answers[0].contains("Connection: keep-alive"), "{out}");
        assert!(answers[0].ends_with("\r\n\r\ni-0123456789abcdef0"), "{out}");
        assert!(
            answers[1].contains("Content-Length: 22\r\n") && answers[1].ends_with("ssh-ed25519 AAAA test\n"),
            "{out}"
        );
        assert!(answers[2].starts_with("0 200 ") && answers[2].contains("Connection: close"), "{out}");
        assert!(answers[2].ends_with("echo hi\n"), "{out}");
        // HTTP/1.0: one answer, the connection closed.
        let out = serve("GET /latest/meta-data/instance-id HTTP/1.0\r\n\r\nGET /latest/user-data HTTP/1.0\r\n\r\n");
        assert_eq!(out.matches("HTTP/1.").count(), 1, "{out}");
        assert!(out.contains("Connection: close"), "{out}");
        // A keep-alive connection the client ends after its answers: no 400 for nothing.
        let out = serve("GET /latest/meta-data/instance-id HTTP/1.1\r\n\r\n");
        assert_eq!(out.matches("HTTP/1.").count(), 1, "{out}");
        // Nothing at all is a bad request.
        assert!(serve("").starts_with("HTTP/1.0 400 "));
    }

    #[test]
    fn tree_and_listings() {
        let m = md();
        assert_eq!(get(&m, "/latest/meta-data/instance-id", None).body, b"i-0123456789abcdef0");
        let l = String::from_utf8(get(&m, "/latest/meta-data/", None).body).unwrap();
        assert!(l.contains("placement/") && l.contains("instance-id"));
        assert_eq!(get(&m, "/latest/meta-data/public-keys/", None).body, b"0=mykey");
        assert_eq!(get(&m, "/2009-04-04/meta-data/public-keys/0/openssh-key", None).body, b"ssh-ed25519 AAAA test\n");
        assert_eq!(get(&m, "/latest/user-data", None).body, b"#!/bin/sh\necho hi\n");
        assert_eq!(get(&m, "/latest/meta-data/nope", None).status, 404);
        let mut with_disks = md();
        with_disks.block_devices = vec![("ephemeral0".into(), "sdb".into()), ("ebs1".into(), "sdf".into())];
        let l = String::from_utf8(get(&with_disks, "/latest/meta-data/block-device-mapping/", None).body).unwrap();
        assert_eq!(l, "ami\nebs1\nephemeral0\nroot");
        assert_eq!(get(&with_disks, "/latest/meta-data/block-device-mapping/ebs1", None).body, b"sdf");
        assert_eq!(get(&m, "/1999/meta-data/", None).status, 404);
        let doc: serde_json::Value =
            serde_json::from_slice(&get(&m, "/latest/dynamic/instance-identity/document", None).body).unwrap();
        assert_eq!(doc["instanceId"], "i-0123456789abcdef0");
    }

    #[test]
    fn tokens() {
        let mut m = md();
        let key = TokenKey(b"k".to_vec());
        let ttl = vec![("x-aws-ec2-metadata-token-ttl-seconds".to_owned(), "60".to_owned())];
        let t = String::from_utf8(answer(&m, &key, "PUT", "/latest/api/token", &ttl, 1000).body).unwrap();
        assert_eq!(get(&m, "/latest/meta-data/instance-id", Some(&t)).status, 200);
        assert_eq!(get(&m, "/latest/meta-data/instance-id", Some("bogus")).status, 401);
        let h = vec![("x-aws-ec2-metadata-token".to_owned(), t.clone())];
        assert_eq!(answer(&m, &key, "GET", "/latest/meta-data/instance-id", &h, 2000).status, 401, "expired");
        assert_eq!(answer(&m, &key, "PUT", "/latest/api/token", &[], 1000).status, 400);
        let fwd = vec![ttl[0].clone(), ("x-forwarded-for".to_owned(), "1.2.3.4".to_owned())];
        assert_eq!(answer(&m, &key, "PUT", "/latest/api/token", &fwd, 1000).status, 403);
        m.tokens_required = true;
        assert_eq!(get(&m, "/latest/meta-data/instance-id", None).status, 401);
        assert_eq!(get(&m, "/latest/meta-data/instance-id", Some(&t)).status, 200);
        // Another instance's token is not this one's.
        let other = key.issue("i-other", 1000, 60);
        assert_eq!(get(&m, "/latest/meta-data/instance-id", Some(&other)).status, 401);
    }
}
