//! Any Authorization header, date and query string: the SigV4 parser and verifier must
//! answer Ok or an EC2 error, never panic.
#![no_main]

use axum::http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use strato::api::sigv4;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(4, '\n');
    let auth = parts.next().unwrap_or("");
    let date = parts.next().unwrap_or("");
    let query = parts.next().unwrap_or("");
    let body = parts.next().unwrap_or("").as_bytes();
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("127.0.0.1:8787"));
    if let Ok(v) = HeaderValue::from_str(auth) {
        if !auth.is_empty() {
            headers.insert("authorization", v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(date) {
        headers.insert("x-amz-date", v);
    }
    let req = sigv4::RequestParts { method: "POST", path: "/", query, headers: &headers, body };
    if let Ok(claims) = sigv4::parse(&req) {
        let _ = claims.check_scope("local-1", "ec2", chrono::Utc::now());
        let _ = claims.verify(&req, "secret");
    }
});
