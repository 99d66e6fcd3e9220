//! AWS Systems Manager's public parameters for Strato's images (service `ssm`, JSON 1.1,
//! `X-Amz-Target: AmazonSSM.*`): `GetParameter`, `GetParameters` and `GetParametersByPath`,
//! read-only, the same for every account (as AWS's public parameters are). Code that looks
//! an AMI up by parameter works unchanged, and RunInstances takes `resolve:ssm:NAME` as its
//! ImageId.
//!
//! Parameters: `/aws/service/strato/ami/IMAGE_NAME` for each image Strato builds, and the
//! Debian 12 image also at `/aws/service/debian/release/12/latest/amd64` (and `bookworm`),
//! where Debian publishes its own. Nothing else is stored: PutParameter and the rest answer
//! that they are not offered.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::ce::CeError;
use crate::control::Control;

pub const TARGET_PREFIX: &str = "AmazonSSM.";

fn error(kind: &'static str, message: impl Into<String>) -> CeError {
    CeError { kind, message: message.into(), status: 400 }
}

fn parameter(region: &str, name: &str, value: &str, at: &DateTime<Utc>) -> Value {
    json!({
        "Name": name,
        "Type": "String",
        "Value": value,
        "Version": 1,
        "LastModifiedDate": at.timestamp_millis() as f64 / 1000.0,
        "ARN": format!("arn:aws:ssm:{region}::parameter{name}"),
        "DataType": "aws:ec2:image",
    })
}

fn body(raw: &[u8]) -> Result<Value, CeError> {
    let v: Value = serde_json::from_slice(if raw.is_empty() { b"{}" } else { raw })
        .map_err(|e| error("ValidationException", format!("The request body is not JSON: {e}")))?;
    if !v.is_object() {
        return Err(error("ValidationException", "The request body must be a JSON object"));
    }
    Ok(v)
}

/// A parameter name without its `:1` selector (`NAME:VERSION`; there is only version 1).
fn base_name(name: &str) -> &str {
    match name.rsplit_once(':') {
        Some((n, "1")) => n,
        _ => name,
    }
}

/// The value of one public parameter (RunInstances' `resolve:ssm:`), if there is one.
pub async fn resolve(control: &Control, name: &str) -> Result<Option<String>, crate::api::error::ApiError> {
    let name = base_name(name);
    Ok(control.public_image_parameters().await?.into_iter().find(|(n, _, _)| n == name).map(|(_, v, _)| v))
}

/// Answers one SSM operation.
pub async fn call(control: &Control, operation: &str, raw: &[u8]) -> Result<Value, CeError> {
    let b = body(raw)?;
    let params = control.public_image_parameters().await.map_err(|e| CeError::from_api(&e))?;
    let region = control.region.name.as_str();
    let find = |name: &str| {
        let base = base_name(name);
        params.iter().find(|(n, _, _)| n == base).map(|(_, v, t)| parameter(region, base, v, t))
    };
    match operation {
        "GetParameter" => {
            let name = b
                .get("Name")
                .and_then(Value::as_str)
                .ok_or_else(|| error("ValidationException", "Name is required"))?;
            let p = find(name).ok_or_else(|| error("ParameterNotFound", format!("Parameter {name} not found.")))?;
            Ok(json!({ "Parameter": p }))
        }
        "GetParameters" => {
            let names: Vec<&str> = b
                .get("Names")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .ok_or_else(|| error("ValidationException", "Names is required"))?;
            if names.is_empty() || names.len() > 10 {
                return Err(error("ValidationException", "Names must have 1 to 10 members"));
            }
            let (found, invalid): (Vec<&str>, Vec<&str>) = names.iter().partition(|n| find(n).is_some());
            Ok(json!({
                "Parameters": found.iter().filter_map(|n| find(n)).collect::<Vec<_>>(),
                "InvalidParameters": invalid,
            }))
        }
        "GetParametersByPath" => {
            let path = b
                .get("Path")
                .and_then(Value::as_str)
                .ok_or_else(|| error("ValidationException", "Path is required"))?;
            if !path.starts_with('/') {
                return Err(error("ValidationException", format!("The path {path} must start with /")));
            }
            let recursive = b.get("Recursive").and_then(Value::as_bool).unwrap_or(false);
            let max = b.get("MaxResults").and_then(Value::as_u64).unwrap_or(10);
            if !(1..=10).contains(&max) {
                return Err(error("ValidationException", "MaxResults must be between 1 and 10"));
            }
            let prefix = format!("{}/", path.trim_end_matches('/'));
            let under: Vec<&(String, String, DateTime<Utc>)> = params
                .iter()
                .filter(|(n, _, _)| n.starts_with(&prefix) && (recursive || !n[prefix.len()..].contains('/')))
                .collect();
            let start = match b.get("NextToken").and_then(Value::as_str) {
                None => 0,
                Some(t) => {
                    t.parse::<usize>().map_err(|_| error("ValidationException", "The NextToken is not valid"))?
                }
            };
            let page: Vec<Value> =
                under.iter().skip(start).take(max as usize).map(|(n, v, t)| parameter(region, n, v, t)).collect();
            let mut out = json!({ "Parameters": page });
            let end = start + max as usize;
            if end < under.len() {
                out["NextToken"] = Value::from(end.to_string());
            }
            Ok(out)
        }
        "PutParameter" | "DeleteParameter" | "DeleteParameters" | "LabelParameterVersion" => Err(error(
            "UnsupportedOperation",
            format!("Strato serves SSM's public image parameters only, read-only ({operation} is not offered)"),
        )),
        other => Err(error("UnknownOperationException", format!("Unknown operation AmazonSSM.{other}"))),
    }
}
