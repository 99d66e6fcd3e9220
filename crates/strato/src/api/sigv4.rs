//! AWS Signature Version 4, verified as AWS does it: the canonical request rebuilt from what
//! arrived (method, path, sorted query, the signed headers, the hash of the body we read),
//! the credential scope checked against our region and service, 15 minutes of clock skew,
//! and a constant-time comparison of the signature. Presigned query strings
//! (`X-Amz-Signature` in the URL) are verified the same way.
//!
//! `sign` is the client side, for the benchmark and the tests.

use axum::http::HeaderMap;
use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;

pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// How far a request's time may be from ours.
pub const MAX_SKEW_SECS: i64 = 15 * 60;
/// Longest validity of a presigned URL (seven days, as on AWS).
const MAX_PRESIGN_EXPIRES: i64 = 7 * 24 * 3600;

/// What arrived over HTTP, as the signature covers it.
pub struct RequestParts<'a> {
    pub method: &'a str,
    /// The raw path, still percent-encoded.
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// The claims of a signed request, before the secret is looked up.
#[derive(Debug, Clone)]
pub struct Claims {
    pub access_key: String,
    pub time: DateTime<Utc>,
    amz_date: String,
    date_stamp: String,
    pub region: String,
    pub service: String,
    signed_headers: Vec<String>,
    signature: String,
    presigned_expires: Option<i64>,
}

fn incomplete(msg: impl Into<String>) -> ApiError {
    ApiError::IncompleteSignature(msg.into())
}

/// Finds and parses the signature of a request: the `Authorization` header, or the
/// `X-Amz-*` parameters of a presigned query string.
pub fn parse(req: &RequestParts<'_>) -> Result<Claims, ApiError> {
    if let Some(auth) = req.headers.get("authorization") {
        let auth = auth.to_str().map_err(|_| incomplete("Authorization header is not valid ASCII"))?;
        return parse_header(auth, req.headers);
    }
    let q: Vec<(String, String)> = form_urlencoded::parse(req.query.as_bytes()).into_owned().collect();
    let get = |name: &str| q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    match get("X-Amz-Algorithm") {
        None if get("X-Amz-Signature").is_none() => Err(ApiError::MissingAuthenticationToken),
        None => Err(incomplete("X-Amz-Algorithm is missing")),
        Some(alg) if alg != ALGORITHM => Err(incomplete(format!("Unsupported algorithm {alg}"))),
        Some(_) => {
            let credential = get("X-Amz-Credential").ok_or_else(|| incomplete("X-Amz-Credential is missing"))?;
            let amz_date = get("X-Amz-Date").ok_or_else(|| incomplete("X-Amz-Date is missing"))?;
            let signed = get("X-Amz-SignedHeaders").ok_or_else(|| incomplete("X-Amz-SignedHeaders is missing"))?;
            let signature = get("X-Amz-Signature").ok_or_else(|| incomplete("X-Amz-Signature is missing"))?;
            let expires = match get("X-Amz-Expires") {
                None => return Err(incomplete("X-Amz-Expires is missing")),
                Some(e) => match e.parse::<i64>() {
                    Ok(n) if (1..=MAX_PRESIGN_EXPIRES).contains(&n) => n,
                    _ => {
                        return Err(ApiError::AuthFailure("X-Amz-Expires must be between 1 and 604800 seconds".into()))
                    }
                },
            };
            let mut c = claims(credential, amz_date, signed, signature)?;
            c.presigned_expires = Some(expires);
            Ok(c)
        }
    }
}

fn parse_header(auth: &str, headers: &HeaderMap) -> Result<Claims, ApiError> {
    let rest = match auth.split_once(' ') {
        Some((alg, rest)) if alg == ALGORITHM => rest,
        _ => return Err(incomplete(format!("Authorization header requires the {ALGORITHM} algorithm"))),
    };
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        match part.split_once('=') {
            Some(("Credential", v)) => credential = Some(v),
            Some(("SignedHeaders", v)) => signed = Some(v),
            Some(("Signature", v)) => signature = Some(v),
            _ if part.is_empty() => {}
            _ => return Err(incomplete(format!("Authorization header has an unknown part '{part}'"))),
        }
    }
    let credential = credential.ok_or_else(|| incomplete("Authorization header requires 'Credential' parameter."))?;
    let signed = signed.ok_or_else(|| incomplete("Authorization header requires 'SignedHeaders' parameter."))?;
    let signature = signature.ok_or_else(|| incomplete("Authorization header requires 'Signature' parameter."))?;
    let amz_date = match headers.get("x-amz-date").and_then(|v| v.to_str().ok()) {
        Some(d) => d.to_owned(),
        None => {
            // Clients that do not send X-Amz-Date sign the Date header instead.
            let date = headers.get("date").and_then(|v| v.to_str().ok()).ok_or_else(|| {
                incomplete("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.")
            })?;
            let t =
                DateTime::parse_from_rfc2822(date).map_err(|_| incomplete("The Date header is not a valid date"))?;
            t.with_timezone(&Utc).format("%Y%m%dT%H%M%SZ").to_string()
        }
    };
    claims(credential, &amz_date, signed, signature)
}

fn claims(credential: &str, amz_date: &str, signed: &str, signature: &str) -> Result<Claims, ApiError> {
    let parts: Vec<&str> = credential.split('/').collect();
    let [access_key, date_stamp, region, service, terminal] = parts[..] else {
        return Err(incomplete(format!(
            "Credential '{credential}' is not of the form KEY/DATE/REGION/SERVICE/aws4_request"
        )));
    };
    if terminal != "aws4_request" || access_key.is_empty() {
        return Err(incomplete(format!(
            "Credential '{credential}' is not of the form KEY/DATE/REGION/SERVICE/aws4_request"
        )));
    }
    let time = NaiveDateTime::parse_from_str(amz_date, "%Y%m%dT%H%M%SZ")
        .map(|t| Utc.from_utc_datetime(&t))
        .map_err(|_| incomplete(format!("X-Amz-Date '{amz_date}' is not in the form YYYYMMDDTHHMMSSZ")))?;
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::AuthFailure("The request signature is malformed".into()));
    }
    let signed_headers: Vec<String> = signed.split(';').map(str::to_owned).collect();
    if signed_headers.iter().any(String::is_empty) || !signed_headers.iter().any(|h| h == "host") {
        return Err(ApiError::AuthFailure("The host header must be signed".into()));
    }
    if signed_headers.windows(2).any(|w| w[0] >= w[1])
        || signed_headers.iter().any(|h| h.bytes().any(|b| b.is_ascii_uppercase()))
    {
        return Err(ApiError::AuthFailure("SignedHeaders must be lowercase and sorted".into()));
    }
    Ok(Claims {
        access_key: access_key.to_owned(),
        time,
        amz_date: amz_date.to_owned(),
        date_stamp: date_stamp.to_owned(),
        region: region.to_owned(),
        service: service.to_owned(),
        signed_headers,
        signature: signature.to_ascii_lowercase(),
        presigned_expires: None,
    })
}

impl Claims {
    /// Checks the credential scope and the request time, before any secret is used.
    pub fn check_scope(&self, region: &str, service: &str, now: DateTime<Utc>) -> Result<(), ApiError> {
        let day = self.amz_date.get(..8).unwrap_or("");
        if self.date_stamp != day {
            return Err(ApiError::AuthFailure(
                format!("Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{day}'", self.date_stamp).into(),
            ));
        }
        if self.region != region {
            return Err(ApiError::AuthFailure(
                format!("Credential should be scoped to a valid region, not '{}'. ", self.region).into(),
            ));
        }
        if self.service != service {
            return Err(ApiError::AuthFailure(
                format!("Credential should be scoped to correct service: '{service}'. ").into(),
            ));
        }
        let age = (now - self.time).num_seconds();
        match self.presigned_expires {
            Some(expires) if age > expires || age < -MAX_SKEW_SECS => {
                Err(ApiError::RequestExpired("Request has expired.".into()))
            }
            None if age.abs() > MAX_SKEW_SECS => Err(ApiError::RequestExpired(format!(
                "Request timestamp {} is more than {} minutes away from the server time {}.",
                self.amz_date,
                MAX_SKEW_SECS / 60,
                now.format("%Y%m%dT%H%M%SZ")
            ))),
            _ => Ok(()),
        }
    }

    /// Recomputes the signature with `secret` and compares it in constant time.
    pub fn verify(&self, req: &RequestParts<'_>, secret: &str) -> Result<(), ApiError> {
        // The body's hash, also for presigned URLs: botocore signs those (outside S3) with the
        // hash of the empty body they carry.
        let computed = hex::encode(Sha256::digest(req.body));
        let payload_hash = match req.headers.get("x-amz-content-sha256").and_then(|v| v.to_str().ok()) {
            Some(UNSIGNED_PAYLOAD) => UNSIGNED_PAYLOAD.to_owned(),
            Some(claimed) if !claimed.eq_ignore_ascii_case(&computed) => {
                return Err(ApiError::AuthFailure(
                    "The provided 'x-amz-content-sha256' header does not match what was computed.".into(),
                ))
            }
            _ => computed,
        };
        let mut canonical_headers = String::new();
        for name in &self.signed_headers {
            let values: Vec<String> = req
                .headers
                .get_all(name.as_str())
                .iter()
                .map(|v| collapse_spaces(&String::from_utf8_lossy(v.as_bytes())))
                .collect();
            if values.is_empty() {
                return Err(ApiError::AuthFailure(
                    format!("The signed header '{name}' is missing from the request").into(),
                ));
            }
            canonical_headers.push_str(name);
            canonical_headers.push(':');
            canonical_headers.push_str(&values.join(","));
            canonical_headers.push('\n');
        }
        let skip = self.presigned_expires.is_some().then_some("X-Amz-Signature");
        let canonical = format!(
            "{}\n{}\n{}\n{}\n{}\n{}",
            req.method,
            canonical_uri(req.path),
            canonical_query(req.query, skip),
            canonical_headers,
            self.signed_headers.join(";"),
            payload_hash
        );
        let expected = signature(secret, &self.amz_date, &self.date_stamp, &self.region, &self.service, &canonical);
        if bool::from(expected.as_bytes().ct_eq(self.signature.as_bytes())) {
            Ok(())
        } else {
            Err(ApiError::AuthFailure("AWS was not able to validate the provided access credentials".into()))
        }
    }
}

fn collapse_spaces(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Percent-encodes as SigV4 asks: everything but `A-Za-z0-9-_.~` (and `/` when `keep_slash`).
fn aws_encode(input: &[u8], keep_slash: bool, out: &mut String) {
    for &b in input {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

fn percent_decode(s: &str) -> Vec<u8> {
    fn hex_val(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex_val(bytes[i + 1]), hex_val(bytes[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

fn canonical_uri(path: &str) -> String {
    if path.is_empty() {
        return "/".to_owned();
    }
    let mut out = String::with_capacity(path.len());
    aws_encode(&percent_decode(path), true, &mut out);
    out
}

fn canonical_query(query: &str, skip: Option<&str>) -> String {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if Some(k.as_ref()) == skip {
            continue;
        }
        let mut ek = String::new();
        aws_encode(k.as_bytes(), false, &mut ek);
        let mut ev = String::new();
        aws_encode(v.as_bytes(), false, &mut ev);
        pairs.push((ek, ev));
    }
    pairs.sort();
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

fn signature(secret: &str, amz_date: &str, date_stamp: &str, region: &str, service: &str, canonical: &str) -> String {
    let scope = format!("{date_stamp}/{region}/{service}/aws4_request");
    let to_sign = format!("{ALGORITHM}\n{amz_date}\n{scope}\n{}", hex::encode(Sha256::digest(canonical.as_bytes())));
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date_stamp.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    let k_signing = hmac(&k_service, b"aws4_request");
    hex::encode(hmac(&k_signing, to_sign.as_bytes()))
}

/// Credentials and scope for signing a request (client side).
pub struct Signer<'a> {
    pub access_key: &'a str,
    pub secret: &'a str,
    pub region: &'a str,
    pub service: &'a str,
}

impl Signer<'_> {
    /// Signs a POST of a form body to `/` the way botocore does: returns the `X-Amz-Date` and
    /// `Authorization` header values (signed headers: content-type, host, x-amz-date).
    pub fn sign_form_post(&self, host: &str, body: &[u8], now: DateTime<Utc>) -> (String, String) {
        let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
        let date_stamp = &amz_date[..8];
        let content_type = "application/x-www-form-urlencoded; charset=utf-8";
        let signed = "content-type;host;x-amz-date";
        let canonical = format!(
            "POST\n/\n\ncontent-type:{content_type}\nhost:{host}\nx-amz-date:{amz_date}\n\n{signed}\n{}",
            hex::encode(Sha256::digest(body))
        );
        let sig = signature(self.secret, &amz_date, date_stamp, self.region, self.service, &canonical);
        let auth = format!(
            "{ALGORITHM} Credential={}/{date_stamp}/{}/{}/aws4_request, SignedHeaders={signed}, Signature={sig}",
            self.access_key, self.region, self.service
        );
        (amz_date, auth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    /// `get-vanilla` from the AWS SigV4 test suite.
    #[test]
    fn aws_test_suite_get_vanilla() {
        let canonical = "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let sig = signature(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "20150830T123600Z",
            "20150830",
            "us-east-1",
            "service",
            canonical,
        );
        assert_eq!(sig, "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31");
    }

    fn signed_post(body: &[u8], now: DateTime<Utc>) -> HeaderMap {
        let s = Signer { access_key: "AKIDEXAMPLE", secret: "secret", region: "local-1", service: "ec2" };
        let (date, auth) = s.sign_form_post("127.0.0.1:8787", body, now);
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("127.0.0.1:8787"));
        h.insert("content-type", HeaderValue::from_static("application/x-www-form-urlencoded; charset=utf-8"));
        h.insert("x-amz-date", HeaderValue::from_str(&date).unwrap());
        h.insert("authorization", HeaderValue::from_str(&auth).unwrap());
        h
    }

    #[test]
    fn signer_and_verifier_agree_and_tampering_fails() {
        let now = Utc::now();
        let body = b"Action=DescribeRegions&Version=2016-11-15";
        let h = signed_post(body, now);
        let req = RequestParts { method: "POST", path: "/", query: "", headers: &h, body };
        let c = parse(&req).unwrap();
        c.check_scope("local-1", "ec2", now).unwrap();
        c.verify(&req, "secret").unwrap();
        assert_eq!(c.verify(&req, "other").unwrap_err().code(), "AuthFailure");
        let tampered = RequestParts { body: b"Action=DescribeRegions&Version=2016-11-16", ..req };
        assert_eq!(c.verify(&tampered, "secret").unwrap_err().code(), "AuthFailure");
        assert_eq!(c.check_scope("us-east-1", "ec2", now).unwrap_err().code(), "AuthFailure");
        assert_eq!(c.check_scope("local-1", "s3", now).unwrap_err().code(), "AuthFailure");
        let later = now + chrono::Duration::minutes(16);
        assert_eq!(c.check_scope("local-1", "ec2", later).unwrap_err().code(), "RequestExpired");
    }

    #[test]
    fn missing_and_broken_signatures() {
        let h = HeaderMap::new();
        let req = RequestParts { method: "GET", path: "/", query: "Action=DescribeRegions", headers: &h, body: b"" };
        assert_eq!(parse(&req).unwrap_err().code(), "MissingAuthenticationToken");
        for bad in [
            "AWS4-HMAC-SHA256 Credential=a/b",
            "AWS AKID:sig",
            "AWS4-HMAC-SHA256 SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=A/20200101/r/ec2/aws4_request, SignedHeaders=host, Signature=zz",
        ] {
            let mut h = HeaderMap::new();
            h.insert("authorization", HeaderValue::from_str(bad).unwrap());
            h.insert("x-amz-date", HeaderValue::from_static("20200101T000000Z"));
            let req = RequestParts { method: "GET", path: "/", query: "", headers: &h, body: b"" };
            assert!(matches!(parse(&req).unwrap_err().code(), "IncompleteSignature" | "AuthFailure"), "{bad}");
        }
    }

    #[test]
    fn canonical_query_sorts_and_encodes() {
        assert_eq!(canonical_query("b=2&a=x%20y&a=1", None), "a=1&a=x%20y&b=2");
        assert_eq!(canonical_query("X-Amz-Signature=abc&c=%2F", Some("X-Amz-Signature")), "c=%2F");
        assert_eq!(canonical_uri("/a%20b/"), "/a%20b/");
    }
}
