//! AWS Signature Version 2 for EC2 Query requests, verified as AWS documents it (Apache
//! Libcloud's EC2 driver signs this way by default).
//!
//! The signed parameters are `AWSAccessKeyId`, `SignatureVersion=2`, `SignatureMethod`
//! (`HmacSHA256` or `HmacSHA1`), `Timestamp` (within 15 minutes of the server's clock) or
//! `Expires` (not passed), and `Signature`: the base64 HMAC, keyed with the secret key, of
//!
//! ```text
//! METHOD \n host header in lower case \n path \n canonical query string
//! ```
//!
//! where the canonical query string is every parameter but `Signature`, sorted by name
//! (byte order), names and values percent-encoded per RFC 3986 (`A-Z a-z 0-9 - _ . ~` left
//! as they are, upper-case hex), joined with `&`. The parameters are those of the query
//! string and of a form POST's body together.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::sigv4::MAX_SKEW_SECS;

/// The protocol's own parameters, which no action reads.
pub const PARAMS: [&str; 6] =
    ["AWSAccessKeyId", "SignatureVersion", "SignatureMethod", "Signature", "Timestamp", "Expires"];

/// A Signature Version 2 request's claims, read from its parameters.
#[derive(Debug)]
pub struct Claims {
    pub access_key: String,
    method: Method,
    signature: Vec<u8>,
    when: When,
}

#[derive(Debug, Clone, Copy)]
enum Method {
    Sha256,
    Sha1,
}

#[derive(Debug)]
enum When {
    Timestamp(DateTime<Utc>),
    Expires(DateTime<Utc>),
}

/// Whether the request says it is signed with Version 2.
pub fn is_v2(pairs: &[(String, String)]) -> bool {
    pairs.iter().any(|(k, _)| k == "SignatureVersion" || k == "AWSAccessKeyId")
}

fn get<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn time(name: &str, v: &str) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Ok(t.with_timezone(&Utc));
    }
    // ISO 8601 without a zone means UTC (`2026-12-07T23:10:28`).
    chrono::NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S%.f")
        .map(|t| t.and_utc())
        .map_err(|_| ApiError::invalid_value(format!("Invalid value '{v}' for {name}: not an ISO 8601 time")))
}

/// Reads the claims of a Version 2 request.
pub fn parse(pairs: &[(String, String)]) -> Result<Claims, ApiError> {
    match get(pairs, "SignatureVersion") {
        Some("2") => {}
        Some(v) => {
            return Err(ApiError::AuthFailure(
                format!("Signature version {v} is not supported: use 2 or Signature Version 4").into(),
            ))
        }
        None => return Err(ApiError::MissingParameter("SignatureVersion".into())),
    }
    let access_key = get(pairs, "AWSAccessKeyId").ok_or_else(|| ApiError::MissingParameter("AWSAccessKeyId".into()))?;
    let method = match get(pairs, "SignatureMethod") {
        Some("HmacSHA256") => Method::Sha256,
        Some("HmacSHA1") => Method::Sha1,
        Some(m) => {
            return Err(ApiError::invalid_value(format!(
                "Invalid value '{m}' for SignatureMethod: HmacSHA256 or HmacSHA1"
            )))
        }
        None => return Err(ApiError::MissingParameter("SignatureMethod".into())),
    };
    let signature = get(pairs, "Signature").ok_or_else(|| ApiError::MissingParameter("Signature".into()))?;
    use base64::Engine;
    let signature = base64::engine::general_purpose::STANDARD
        .decode(signature)
        .map_err(|_| ApiError::AuthFailure("AWS was not able to validate the provided access credentials".into()))?;
    let when = match (get(pairs, "Timestamp"), get(pairs, "Expires")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::InvalidParameterCombination(
                "The parameters Timestamp and Expires cannot be used together".into(),
            ))
        }
        (Some(t), None) => When::Timestamp(time("Timestamp", t)?),
        (None, Some(e)) => When::Expires(time("Expires", e)?),
        (None, None) => return Err(ApiError::MissingParameter("Timestamp".into())),
    };
    Ok(Claims { access_key: access_key.to_owned(), method, signature, when })
}

/// RFC 3986 percent-encoding as Signature Version 2 wants it.
fn encode(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// The string a Version 2 signature covers.
pub fn string_to_sign(method: &str, host: &str, path: &str, pairs: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = pairs.iter().filter(|(k, _)| k != "Signature").collect();
    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut out = format!("{method}\n{}\n{}\n", host.to_ascii_lowercase(), if path.is_empty() { "/" } else { path });
    for (i, (k, v)) in sorted.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode(k, &mut out);
        out.push('=');
        encode(v, &mut out);
    }
    out
}

impl Claims {
    /// Checks the time window: a `Timestamp` within 15 minutes, an `Expires` not passed.
    pub fn check_time(&self, now: DateTime<Utc>) -> Result<(), ApiError> {
        match self.when {
            When::Timestamp(t) if (now - t).num_seconds().abs() > MAX_SKEW_SECS => {
                Err(ApiError::RequestExpired(format!("Request has expired. Timestamp date is {}", t.to_rfc3339())))
            }
            When::Expires(e) if now > e => {
                Err(ApiError::RequestExpired(format!("Request has expired. Expires date is {}", e.to_rfc3339())))
            }
            _ => Ok(()),
        }
    }

    /// Checks the signature with the access key's secret, in constant time.
    pub fn verify(&self, secret: &str, string_to_sign: &str) -> Result<(), ApiError> {
        let expected = sign(self.method, secret, string_to_sign);
        if expected.ct_eq(&self.signature).into() {
            Ok(())
        } else {
            Err(ApiError::AuthFailure(
                "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method."
                    .into(),
            ))
        }
    }
}

fn sign(method: Method, secret: &str, text: &str) -> Vec<u8> {
    match method {
        Method::Sha256 => {
            // HMAC takes a key of any length.
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
            mac.update(text.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
        Method::Sha1 => {
            let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("any key length");
            mac.update(text.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
    }
}

/// Signs `pairs` (adding the Version 2 parameters) for tests and tools.
pub fn sign_pairs(
    access_key: &str,
    secret: &str,
    host: &str,
    method: &str,
    sha1: bool,
    now: DateTime<Utc>,
    pairs: &mut Vec<(String, String)>,
) {
    pairs.push(("AWSAccessKeyId".into(), access_key.into()));
    pairs.push(("SignatureVersion".into(), "2".into()));
    pairs.push(("SignatureMethod".into(), if sha1 { "HmacSHA1" } else { "HmacSHA256" }.into()));
    pairs.push(("Timestamp".into(), now.format("%Y-%m-%dT%H:%M:%SZ").to_string()));
    let text = string_to_sign(method, host, "/", pairs);
    use base64::Engine;
    let sig = base64::engine::general_purpose::STANDARD.encode(sign(
        if sha1 { Method::Sha1 } else { Method::Sha256 },
        secret,
        &text,
    ));
    pairs.push(("Signature".into(), sig));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    /// The worked example of AWS's Signature Version 2 documentation (EC2 DescribeImages
    /// and its string to sign), checked for the encoding and the order.
    #[test]
    fn string_to_sign_is_canonical() {
        let p = pairs(&[
            ("Action", "DescribeImages"),
            ("AWSAccessKeyId", "AKIAIOSFODNN7EXAMPLE"),
            ("SignatureVersion", "2"),
            ("SignatureMethod", "HmacSHA256"),
            ("Timestamp", "2011-10-03T15:19:30"),
            ("Version", "2014-10-01"),
            ("Signature", "ignored"),
            ("Filter.1.Value.1", "a b*c/ü"),
        ]);
        let s = string_to_sign("GET", "EC2.Amazonaws.com", "/", &p);
        assert_eq!(
            s,
            "GET\nec2.amazonaws.com\n/\nAWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Action=DescribeImages\
             &Filter.1.Value.1=a%20b%2Ac%2F%C3%BC&SignatureMethod=HmacSHA256&SignatureVersion=2\
             &Timestamp=2011-10-03T15%3A19%3A30&Version=2014-10-01"
        );
    }

    #[test]
    fn signatures_verify_and_fail() {
        let now = Utc::now();
        for sha1 in [false, true] {
            let mut p = pairs(&[("Action", "DescribeRegions")]);
            sign_pairs("AK", "secret", "127.0.0.1:8787", "POST", sha1, now, &mut p);
            let c = parse(&p).expect("claims");
            c.check_time(now).expect("fresh");
            let text = string_to_sign("POST", "127.0.0.1:8787", "/", &p);
            c.verify("secret", &text).expect("good signature");
            assert_eq!(c.verify("other", &text).unwrap_err().code(), "AuthFailure");
            let text = string_to_sign("GET", "127.0.0.1:8787", "/", &p);
            assert_eq!(c.verify("secret", &text).unwrap_err().code(), "AuthFailure");
            assert_eq!(c.check_time(now + chrono::Duration::minutes(16)).unwrap_err().code(), "RequestExpired");
        }
        let p = pairs(&[("SignatureVersion", "1"), ("AWSAccessKeyId", "AK")]);
        assert_eq!(parse(&p).unwrap_err().code(), "AuthFailure");
        let p = pairs(&[("SignatureVersion", "2"), ("AWSAccessKeyId", "AK"), ("SignatureMethod", "HmacMD5")]);
        assert_eq!(parse(&p).unwrap_err().code(), "InvalidParameterValue");
        let p = pairs(&[
            ("SignatureVersion", "2"),
            ("AWSAccessKeyId", "AK"),
            ("SignatureMethod", "HmacSHA1"),
            ("Signature", "AAAA"),
            ("Expires", "2000-01-01T00:00:00Z"),
        ]);
        assert_eq!(parse(&p).expect("claims").check_time(Utc::now()).unwrap_err().code(), "RequestExpired");
    }
}
