//! The AWS Cost Explorer call `GetCostAndUsage` (service `ce`, JSON 1.1 protocol,
//! `X-Amz-Target: AWSInsightsIndexService.GetCostAndUsage`), served on the EC2 endpoint so that
//! `aws ce get-cost-and-usage --endpoint-url ...` and boto3 work. Each account sees its own
//! costs only, computed from the same usage records as `strato bill`.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, TimeZone, Utc};
use serde_json::{json, Value};

use super::error::ApiError;
use crate::control::billing::{self, BillLine};
use crate::control::model::Caller;
use crate::control::Control;

pub const TARGET_PREFIX: &str = "AWSInsightsIndexService.";

/// A Cost Explorer error: `__type` and message, HTTP 400 unless said otherwise.
#[derive(Debug)]
pub struct CeError {
    pub kind: &'static str,
    pub message: String,
    pub status: u16,
}

impl CeError {
    fn validation(message: impl Into<String>) -> CeError {
        CeError { kind: "ValidationException", message: message.into(), status: 400 }
    }

    pub fn body(&self) -> String {
        json!({ "__type": self.kind, "message": self.message }).to_string()
    }

    /// The JSON protocol's names for the errors the shared pipeline raises.
    pub fn from_api(e: &ApiError) -> CeError {
        let (kind, status) = match e {
            ApiError::MissingAuthenticationToken => ("MissingAuthenticationTokenException", 403),
            ApiError::IncompleteSignature(_) => ("IncompleteSignatureException", 400),
            ApiError::AuthFailure(m) if m.contains("validate the provided access credentials") => {
                ("UnrecognizedClientException", 403)
            }
            ApiError::AuthFailure(_) | ApiError::RequestExpired(_) => ("InvalidSignatureException", 403),
            ApiError::UnauthorizedOperation => ("AccessDeniedException", 403),
            ApiError::Internal(_) => ("InternalFailure", 500),
            _ => ("ValidationException", 400),
        };
        CeError { kind, message: e.to_string(), status }
    }
}

fn parse_time(s: &str, hourly: bool) -> Result<DateTime<Utc>, CeError> {
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).unwrap_or_default()));
    }
    if hourly {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%SZ") {
            return Ok(Utc.from_utc_datetime(&t));
        }
    }
    Err(CeError::validation(format!(
        "Invalid date '{s}': expected YYYY-MM-DD{}",
        if hourly { " or YYYY-MM-DDThh:mm:ssZ" } else { "" }
    )))
}

const METRICS: &[&str] =
    &["UnblendedCost", "BlendedCost", "AmortizedCost", "NetUnblendedCost", "NetAmortizedCost", "UsageQuantity"];
const DIMENSIONS: &[&str] = &["SERVICE", "INSTANCE_TYPE", "USAGE_TYPE", "RESOURCE_ID", "REGION", "LINKED_ACCOUNT"];

fn dimension(line: &BillLine, key: &str, region: &str) -> String {
    match key {
        "SERVICE" => line.service.clone(),
        "INSTANCE_TYPE" => line.usage_type.strip_prefix("BoxUsage:").unwrap_or("NoInstanceType").to_owned(),
        "USAGE_TYPE" => line.usage_type.clone(),
        "RESOURCE_ID" => line.resource_id.clone(),
        "REGION" => region.to_owned(),
        "LINKED_ACCOUNT" => line.account_id.clone(),
        _ => String::new(),
    }
}

/// A `Filter` of `Dimensions` (alone or under `And`).
fn filter_matches(filter: &Value, line: &BillLine, region: &str) -> Result<bool, CeError> {
    if let Some(parts) = filter.get("And").and_then(Value::as_array) {
        for p in parts {
            if !filter_matches(p, line, region)? {
                return Ok(false);
            }
        }
        return Ok(true);
    }
    if let Some(d) = filter.get("Dimensions") {
        let key = d["Key"].as_str().unwrap_or("");
        if !DIMENSIONS.contains(&key) {
            return Err(CeError::validation(format!("Dimension {key} is not supported")));
        }
        let values: Vec<&str> =
            d["Values"].as_array().map(|v| v.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        return Ok(values.contains(&dimension(line, key, region).as_str()));
    }
    Err(CeError::validation("Only Dimensions filters (alone or under And) are supported"))
}

fn amount(v: f64, unit: &str) -> Value {
    json!({ "Amount": format!("{v:.10}"), "Unit": unit })
}

pub async fn get_cost_and_usage(control: &Control, caller: &Caller, body: &[u8]) -> Result<Value, CeError> {
    let req: Value = serde_json::from_slice(body).map_err(|_| CeError {
        kind: "SerializationException",
        message: "The request body is not JSON".into(),
        status: 400,
    })?;
    let granularity = req["Granularity"].as_str().ok_or_else(|| CeError::validation("Granularity is required"))?;
    let step = match granularity {
        "HOURLY" => Duration::hours(1),
        "DAILY" => Duration::days(1),
        "MONTHLY" => Duration::days(0),
        g => return Err(CeError::validation(format!("Granularity {g} is not one of DAILY, MONTHLY, HOURLY"))),
    };
    let hourly = granularity == "HOURLY";
    let period = &req["TimePeriod"];
    let start = parse_time(
        period["Start"].as_str().ok_or_else(|| CeError::validation("TimePeriod.Start is required"))?,
        hourly,
    )?;
    let end =
        parse_time(period["End"].as_str().ok_or_else(|| CeError::validation("TimePeriod.End is required"))?, hourly)?;
    if start >= end {
        return Err(CeError::validation("Start date (and hour) should be before end date (and hour)"));
    }
    if hourly && end - start > Duration::days(14) {
        return Err(CeError::validation("Hourly granularity covers at most the last 14 days"));
    }
    let metrics: Vec<String> = req["Metrics"]
        .as_array()
        .map(|m| m.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default();
    if metrics.is_empty() {
        return Err(CeError::validation("Metrics is required"));
    }
    for m in &metrics {
        if !METRICS.contains(&m.as_str()) {
            return Err(CeError::validation(format!("Metric {m} is not supported: {}", METRICS.join(", "))));
        }
    }
    let mut group_keys = Vec::new();
    if let Some(groups) = req["GroupBy"].as_array() {
        if groups.len() > 2 {
            return Err(CeError::validation("GroupBy takes at most two groups"));
        }
        for g in groups {
            let key = g["Key"].as_str().unwrap_or("");
            if g["Type"].as_str() != Some("DIMENSION") || !DIMENSIONS.contains(&key) {
                return Err(CeError::validation(format!(
                    "Group by {} {key} is not supported: DIMENSION {}",
                    g["Type"],
                    DIMENSIONS.join(", ")
                )));
            }
            if key == "RESOURCE_ID" && !control.catalogue.billing.resource_level_data {
                return Err(CeError::validation("Grouping by RESOURCE_ID needs resource-level data: set [billing] resource_level_data = true in instance-types.toml"));
            }
            group_keys.push(key.to_owned());
        }
    }
    let filter = req.get("Filter").filter(|f| !f.is_null()).cloned();

    // The time buckets: calendar months for MONTHLY, fixed steps otherwise.
    let mut buckets = Vec::new();
    let mut s = start;
    while s < end {
        let e = if granularity == "MONTHLY" {
            let d = s.date_naive();
            let (y, m) = if d.month0() == 11 { (d.year() + 1, 1) } else { (d.year(), d.month() + 1) };
            Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).single().unwrap_or(end)
        } else {
            s + step
        };
        buckets.push((s, e.min(end)));
        s = e.min(end);
    }
    if buckets.len() > 1000 {
        return Err(CeError::validation("The time period has too many buckets for this granularity"));
    }

    let now = Utc::now();
    let intervals =
        control.usage_intervals(Some(&caller.account_id), start, end, now).await.map_err(|e| CeError::from_api(&e))?;
    let region = control.region.name.clone();
    let mut results = Vec::new();
    for (bs, be) in buckets {
        let mut lines = billing::bill(&intervals, bs, be);
        if let Some(f) = &filter {
            let mut kept = Vec::new();
            for l in lines {
                if filter_matches(f, &l, &region)? {
                    kept.push(l);
                }
            }
            lines = kept;
        }
        let fmt = |t: DateTime<Utc>| {
            if hourly {
                t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
            } else {
                t.format("%Y-%m-%d").to_string()
            }
        };
        let metric_values = |ls: &[&BillLine]| -> Value {
            let cost: f64 = ls.iter().map(|l| l.cost).sum();
            let qty: f64 = ls.iter().map(|l| l.quantity).sum();
            let units: std::collections::BTreeSet<&str> = ls.iter().map(|l| l.unit.as_str()).collect();
            let unit = if units.len() == 1 { units.into_iter().next().unwrap_or("N/A") } else { "N/A" };
            let mut m = serde_json::Map::new();
            for name in &metrics {
                m.insert(name.clone(), if name == "UsageQuantity" { amount(qty, unit) } else { amount(cost, "USD") });
            }
            Value::Object(m)
        };
        let all: Vec<&BillLine> = lines.iter().collect();
        let (total, groups) = if group_keys.is_empty() {
            (metric_values(&all), Vec::new())
        } else {
            let mut by: BTreeMap<Vec<String>, Vec<&BillLine>> = BTreeMap::new();
            for l in &lines {
                by.entry(group_keys.iter().map(|k| dimension(l, k, &region)).collect()).or_default().push(l);
            }
            (
                json!({}),
                by.into_iter().map(|(keys, ls)| json!({ "Keys": keys, "Metrics": metric_values(&ls) })).collect(),
            )
        };
        results.push(json!({
            "TimePeriod": { "Start": fmt(bs), "End": fmt(be) },
            "Total": total,
            "Groups": groups,
            "Estimated": be > now,
        }));
    }
    Ok(json!({
        "GroupDefinitions": group_keys.iter().map(|k| json!({ "Type": "DIMENSION", "Key": k })).collect::<Vec<_>>(),
        "ResultsByTime": results,
        "DimensionValueAttributes": [],
    }))
}

use chrono::Datelike;
