//! The EC2 front door: an HTTP server speaking the EC2 Query protocol, and on the same
//! endpoint STS (`sts`), SSM's public parameters (`ssm`) and Cost Explorer (`ce`), told
//! apart by the SigV4 credential scope (Query) or `X-Amz-Target` (JSON).
//!
//! Every EC2 request goes through one pipeline (`process`): read the body (at most
//! `MAX_BODY_BYTES`), decode the form, verify SigV4 (or, for EC2, Signature Version 2)
//! against the caller's secret, pick the action, check the request against the EC2 model
//! (`model`: names, types, enums, ranges, required members), decode its typed request
//! (members it does not honour are refused by name), check permission and `DryRun`, run
//! it, and answer XML. Any failure becomes the EC2 error document with the code and status
//! of `ApiError`; nothing half-done is left behind because each control function runs in
//! one transaction.

pub mod actions;
pub mod ce;
pub mod error;
pub mod listen;
pub mod model;
mod net_actions;
pub mod query;
pub mod sigv2;
pub mod sigv4;
pub mod ssm;
pub mod sts;
mod template_actions;
mod volume_actions;
pub mod xml;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, Method, Request};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};

use crate::control::model::Caller;
use crate::control::Control;
use actions::Action;
use error::{ApiError, ApiResult};
use query::Params;
use xml::Xml;

/// Largest request body accepted. EC2's own limit is about this size; user data (16 KiB
/// base64) fits many times over.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Everything an action needs to know about its request.
pub struct Ctx {
    pub control: Arc<Control>,
    pub caller: Caller,
    pub request_id: String,
    /// The `Host` the client used, shown as the region's endpoint.
    pub endpoint_host: String,
}

/// EC2's timestamp form: `2026-11-26T20:28:55.000Z`.
pub fn timestamp(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

macro_rules! dispatch_table {
    ($($action:ident),* $(,)?) => {
        /// The EC2 actions Strato implements.
        pub const SUPPORTED_ACTIONS: &[&str] = &[$(stringify!($action)),*];

        /// Decodes the typed request of an action without running it (for the fuzzer and
        /// tools): Ok, or the error the request would get.
        pub fn decode_request(name: &str, p: &mut Params) -> ApiResult<()> {
            p.mark_used("Action");
            p.mark_used("Version");
            match name {
                $(stringify!($action) => decode::<actions::$action>(p).map(drop),)*
                _ => Err(ApiError::InvalidAction(name.to_owned())),
            }
        }

        async fn dispatch(name: &str, ctx: &Ctx, p: &mut Params) -> ApiResult<String> {
            match name {
                $(stringify!($action) => call::<actions::$action>(ctx, p).await,)*
                _ if model::operation(name).is_some() => Err(ApiError::ActionNotImplemented(name.to_owned())),
                _ => Err(ApiError::InvalidAction(name.to_owned())),
            }
        }
    };
}

dispatch_table!(
    DescribeRegions,
    DescribeAvailabilityZones,
    DescribeAccountAttributes,
    DescribeInstanceTypes,
    DescribeInstanceTypeOfferings,
    CreateKeyPair,
    ImportKeyPair,
    DescribeKeyPairs,
    DeleteKeyPair,
    CreateVpc,
    CreateDefaultVpc,
    CreateDefaultSubnet,
    DescribeVpcs,
    DeleteVpc,
    CreateSubnet,
    DescribeSubnets,
    DeleteSubnet,
    CreateSecurityGroup,
    DescribeSecurityGroups,
    DeleteSecurityGroup,
    AuthorizeSecurityGroupIngress,
    AuthorizeSecurityGroupEgress,
    RevokeSecurityGroupIngress,
    RevokeSecurityGroupEgress,
    DescribeSecurityGroupRules,
    ModifySecurityGroupRules,
    CreateTags,
    DeleteTags,
    DescribeTags,
    DescribeImages,
    RegisterImage,
    DeregisterImage,
    DescribeImageAttribute,
    ModifyImageAttribute,
    CopyImage,
    RunInstances,
    DescribeInstances,
    DescribeInstanceStatus,
    StartInstances,
    StopInstances,
    RebootInstances,
    TerminateInstances,
    GetConsoleOutput,
    ModifyInstanceAttribute,
    DescribeInstanceAttribute,
    DescribeInstanceCreditSpecifications,
    ModifyInstanceCreditSpecification,
    ModifyInstanceMetadataOptions,
    ModifyInstanceMaintenanceOptions,
    AllocateAddress,
    DescribeAddresses,
    DescribeAddressesAttribute,
    AssociateAddress,
    DisassociateAddress,
    ReleaseAddress,
    CreateInternetGateway,
    DescribeInternetGateways,
    AttachInternetGateway,
    DetachInternetGateway,
    DeleteInternetGateway,
    DescribeRouteTables,
    DescribeNetworkAcls,
    DescribeNetworkInterfaces,
    DescribeVpcEndpoints,
    CreateDhcpOptions,
    DescribeDhcpOptions,
    DeleteDhcpOptions,
    AssociateDhcpOptions,
    DescribePrefixLists,
    ModifySubnetAttribute,
    DescribeVpcAttribute,
    ModifyVpcAttribute,
    CreateVolume,
    DescribeVolumes,
    DeleteVolume,
    AttachVolume,
    DetachVolume,
    CreateSnapshot,
    DescribeSnapshots,
    DeleteSnapshot,
    CopySnapshot,
    ModifySnapshotAttribute,
    DescribeSnapshotAttribute,
    ModifyVolume,
    DescribeVolumesModifications,
    CreateImage,
    CreateLaunchTemplate,
    CreateLaunchTemplateVersion,
    DescribeLaunchTemplates,
    DescribeLaunchTemplateVersions,
    ModifyLaunchTemplate,
    DeleteLaunchTemplate,
    DeleteLaunchTemplateVersions,
    GetLaunchTemplateData,
);

/// Whether an action only reads (allowed to read-only accounts).
fn is_read_only(action: &str) -> bool {
    action.starts_with("Describe") || action.starts_with("Get")
}

/// Decodes an action's request: the model check (names, types, enums, ranges, required
/// members), the action's own decoding, then `finish` (members it does not honour).
/// Also says whether the request is a `DryRun`.
fn decode<A: Action>(p: &mut Params) -> ApiResult<(A, bool)> {
    let op = model::operation(A::NAME).ok_or_else(|| ApiError::InvalidAction(A::NAME.to_owned()))?;
    model::check(op, p.unread())?;
    let dry_run = p.bool("DryRun")?.unwrap_or(false);
    let req = A::decode(p)?;
    p.finish(A::NAME)?;
    Ok((req, dry_run))
}

async fn call<A: Action>(ctx: &Ctx, p: &mut Params) -> ApiResult<String> {
    let (req, dry_run) = decode::<A>(p)?;
    if ctx.caller.read_only && !is_read_only(A::NAME) {
        return Err(ApiError::UnauthorizedOperation);
    }
    if dry_run {
        return Err(ApiError::DryRunOperation);
    }
    let mut x = Xml::response(A::NAME, &ctx.request_id);
    if is_read_only(A::NAME) {
        // At most `read_slots()` read-only requests run at once; the rest wait here without
        // using the CPU, so a mutating request never queues behind a crowd of them.
        let _slot = match READ_PRIORITY.load(std::sync::atomic::Ordering::Relaxed) {
            true => Some(READS.acquire().await.map_err(|e| ApiError::Internal(e.into()))?),
            false => None,
        };
        req.run(ctx, &mut x).await?;
    } else {
        // Its reads too come from the store's priority pool: a launch never waits behind
        // requests that only read.
        crate::store::priority(req.run(ctx, &mut x)).await?;
    }
    Ok(x.finish(A::NAME))
}

/// How many read-only requests run at once: twice the cores (at least 4).
fn read_slots() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from).saturating_mul(2).max(4)
}

static READS: std::sync::LazyLock<tokio::sync::Semaphore> =
    std::sync::LazyLock::new(|| tokio::sync::Semaphore::new(read_slots()));

/// Whether read-only requests are gated (`READS`); on by default.
static READ_PRIORITY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Turns the gate on read-only requests off or on (`strato bench reads` compares; the
/// store's pools are split or shared by `Store::set_split`).
pub fn set_read_priority(on: bool) {
    READ_PRIORITY.store(on, std::sync::atomic::Ordering::Relaxed);
}

pub struct ApiState {
    pub control: Arc<Control>,
}

/// The axum router: every path and method goes to the one pipeline.
pub fn router(state: Arc<ApiState>) -> axum::Router {
    axum::Router::new()
        .route("/strato-agent/v1/{method}", axum::routing::post(agent_call))
        .fallback(handle)
        .with_state(state)
}

/// The agent API alone, for its TLS listener (`serve --agent-listen`).
pub fn agent_router(state: Arc<ApiState>) -> axum::Router {
    axum::Router::new().route("/strato-agent/v1/{method}", axum::routing::post(agent_call)).with_state(state)
}

/// The agent API (`agent::remote`): JSON in and out, `{"error": ...}` when refused.
async fn agent_call(
    State(state): State<Arc<ApiState>>,
    axum::extract::Path(method): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let call = crate::agent::remote::serve_call(&state.control, auth, &method, &body);
    let (status, value) = match crate::store::priority(call).await {
        Ok(v) => (axum::http::StatusCode::OK, v),
        Err(crate::agent::remote::Refused(code, message)) => {
            // The method name is the caller's (before any authentication): logged bounded
            // and escaped.
            let shown: String = method.chars().take(48).flat_map(char::escape_default).collect();
            tracing::warn!(method = shown, method_len = method.len(), code, message, "agent call refused");
            (
                axum::http::StatusCode::from_u16(code).unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR),
                serde_json::json!({ "error": message }),
            )
        }
    };
    (status, [(header::CONTENT_TYPE, "application/json")], value.to_string()).into_response()
}

/// Serves the API on `listener` until `shutdown` resolves, with the default `listen::Limits`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ApiState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    listen::serve(listener, router(state), listen::Limits::default(), shutdown).await
}

async fn handle(State(state): State<Arc<ApiState>>, req: Request<Body>) -> Response {
    let started = Instant::now();
    let request_id = uuid::Uuid::new_v4().to_string();
    let (parts, body) = req.into_parts();
    if parts.headers.contains_key("x-amz-target") {
        return handle_json(&state, &parts, body, &request_id).await;
    }
    let mut action = String::new();
    let mut service = Service::Ec2;
    let result = process(&state, &parts, body, &request_id, &mut action, &mut service).await;
    match result {
        Ok(xml) => {
            tracing::debug!(%request_id, action, micros = started.elapsed().as_micros() as u64, "ok");
            ([(header::CONTENT_TYPE, "text/xml;charset=UTF-8")], xml).into_response()
        }
        Err(e) => {
            if let ApiError::Internal(cause) = &e {
                tracing::error!(%request_id, action, error = format!("{cause:#}"), "internal error");
            } else {
                tracing::debug!(%request_id, action, code = e.code(), "client error");
            }
            let doc = match service {
                Service::Ec2 => xml::error_document(e.code(), &e.to_string(), &request_id),
                Service::Sts => sts::error_document(&e, &request_id),
            };
            (e.status(), [(header::CONTENT_TYPE, "text/xml;charset=UTF-8")], doc).into_response()
        }
    }
}

/// Verifies the request's SigV4 signature for `service` and returns who is calling.
async fn authenticate(
    state: &ApiState,
    parts: &axum::http::request::Parts,
    query: &str,
    body: &[u8],
    service: &str,
) -> ApiResult<Caller> {
    let req = sigv4::RequestParts {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query,
        headers: &parts.headers,
        body,
    };
    verify_v4(state, &req, sigv4::parse(&req)?, service).await
}

/// The rest of `authenticate` for claims already read (the Query pipeline reads them once to
/// learn the service).
async fn verify_v4(
    state: &ApiState,
    req: &sigv4::RequestParts<'_>,
    claims: sigv4::Claims,
    service: &str,
) -> ApiResult<Caller> {
    claims.check_scope(&state.control.region.name, service, Utc::now())?;
    if req.headers.contains_key("x-amz-security-token")
        || form_urlencoded::parse(req.query.as_bytes()).any(|(k, _)| k == "X-Amz-Security-Token")
    {
        return Err(invalid_security_token());
    }
    let (secret, caller) =
        state.control.lookup_access_key(&claims.access_key).await?.ok_or_else(|| {
            ApiError::AuthFailure("AWS was not able to validate the provided access credentials".into())
        })?;
    claims.verify(req, &secret)?;
    Ok(caller)
}

/// A session token (temporary credentials): Strato issues none, so every one is invalid, signed
/// or not (an unsigned one was ignored until 2026-12-08).
fn invalid_security_token() -> ApiError {
    ApiError::AuthFailure(
        "The security token included in the request is invalid: Strato issues no temporary credentials".into(),
    )
}

/// Verifies a Signature Version 2 request (EC2 only) and returns who is calling.
async fn authenticate_v2(
    state: &ApiState,
    parts: &axum::http::request::Parts,
    pairs: &[(String, String)],
) -> ApiResult<Caller> {
    let claims = sigv2::parse(pairs)?;
    claims.check_time(Utc::now())?;
    if pairs.iter().any(|(k, _)| k == "SecurityToken") {
        return Err(invalid_security_token());
    }
    let (secret, caller) =
        state.control.lookup_access_key(&claims.access_key).await?.ok_or_else(|| {
            ApiError::AuthFailure("AWS was not able to validate the provided access credentials".into())
        })?;
    let host = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    claims.verify(&secret, &sigv2::string_to_sign(parts.method.as_str(), host, parts.uri.path(), pairs))?;
    Ok(caller)
}

/// The JSON-protocol services on this endpoint (Cost Explorer), chosen by `X-Amz-Target`.
async fn handle_json(state: &ApiState, parts: &axum::http::request::Parts, body: Body, request_id: &str) -> Response {
    let result: Result<serde_json::Value, ce::CeError> = async {
        let body = listen::read_body(&parts.headers, body).await.map_err(|e| ce::CeError::from_api(&e))?;
        let query = parts.uri.query().unwrap_or("");
        let target = parts.headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or("");
        let (service, operation) = if let Some(op) = target.strip_prefix(ce::TARGET_PREFIX) {
            ("ce", op)
        } else if let Some(op) = target.strip_prefix(sts::JSON_TARGET_PREFIX) {
            ("sts", op)
        } else if let Some(op) = target.strip_prefix(ssm::TARGET_PREFIX) {
            ("ssm", op)
        } else {
            let prefix = target.split('.').next().unwrap_or(target);
            return Err(ce::CeError {
                kind: "UnknownOperationException",
                message: format!(
                    "Strato does not serve the service of X-Amz-Target '{prefix}' on this endpoint (it serves {SERVICES})"
                ),
                status: 400,
            });
        };
        let caller = authenticate(state, parts, query, &body, service).await.map_err(|e| ce::CeError::from_api(&e))?;
        match (service, operation) {
            ("ce", "GetCostAndUsage") => ce::get_cost_and_usage(&state.control, &caller, &body).await,
            ("sts", "GetCallerIdentity") => Ok(sts::json_identity(&caller)),
            ("ssm", op) => ssm::call(&state.control, op, &body).await,
            _ => Err(ce::CeError {
                kind: "UnknownOperationException",
                message: format!("Unknown operation {target}"),
                status: 400,
            }),
        }
    }
    .await;
    let (status, text) = match result {
        Ok(v) => (200, v.to_string()),
        Err(e) => {
            tracing::debug!(request_id, kind = e.kind, "client error");
            (e.status, e.body())
        }
    };
    let status = axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::BAD_REQUEST);
    let rid = header::HeaderValue::from_str(request_id).unwrap_or(header::HeaderValue::from_static("-"));
    (
        status,
        [
            (header::CONTENT_TYPE, header::HeaderValue::from_static("application/x-amz-json-1.1")),
            (header::HeaderName::from_static("x-amzn-requestid"), rid),
        ],
        text,
    )
        .into_response()
}

/// The Query-protocol services on this endpoint, told apart by the SigV4 credential scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Service {
    Ec2,
    Sts,
}

/// What this endpoint serves, for the error a request for anything else gets.
const SERVICES: &str =
    "ec2, sts (GetCallerIdentity), ssm (public image parameters: GetParameter(s), GetParametersByPath) and ce (GetCostAndUsage)";

async fn process(
    state: &ApiState,
    parts: &axum::http::request::Parts,
    body: Body,
    request_id: &str,
    action_out: &mut String,
    service_out: &mut Service,
) -> ApiResult<String> {
    if parts.method != Method::POST && parts.method != Method::GET {
        return Err(ApiError::InvalidRequest(format!(
            "The HTTP method {} is not supported; use POST or GET",
            parts.method
        )));
    }
    let body = listen::read_body(&parts.headers, body).await?;
    let query = parts.uri.query().unwrap_or("");
    let mut params = Params::parse(query.as_bytes())?;
    if parts.method == Method::POST && !body.is_empty() {
        params.merge(Params::parse(&body)?)?;
    }

    // The service a SigV4 request is for is in its credential scope; a request without one
    // (unsigned, or Signature Version 2) is EC2's.
    let req = sigv4::RequestParts {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query,
        headers: &parts.headers,
        body: &body,
    };
    let claims = sigv4::parse(&req);
    let scope = claims.as_ref().ok().map(|c| c.service.clone());
    let service = match scope.as_deref() {
        None | Some("ec2") => Service::Ec2,
        Some("sts") => Service::Sts,
        Some(other) => {
            return Err(ApiError::InvalidRequest(format!(
                "Strato does not serve the AWS service '{other}' on this endpoint (it serves {SERVICES})"
            )))
        }
    };
    *service_out = service;

    // Authenticate before anything else is looked at, as AWS does.
    let all = params.pairs();
    let caller = if scope.is_none() && sigv2::is_v2(&all) {
        let caller = authenticate_v2(state, parts, &all).await?;
        for k in sigv2::PARAMS {
            params.mark_used(k);
        }
        caller
    } else {
        verify_v4(state, &req, claims?, if service == Service::Sts { "sts" } else { "ec2" }).await?
    };
    for k in
        ["X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-SignedHeaders", "X-Amz-Signature", "X-Amz-Expires"]
    {
        params.mark_used(k);
    }

    if service == Service::Sts {
        *action_out = params.peek("Action").unwrap_or_default().to_owned();
        return sts::query(&caller, &mut params, request_id);
    }

    let action = params.peek("Action").map(str::to_owned).ok_or_else(|| ApiError::MissingParameter("Action".into()))?;
    params.mark_used("Action");
    // Every EC2 Query request names its API version (every SDK sends it).
    let Some(v) = params.peek("Version") else { return Err(ApiError::MissingParameter("Version".into())) };
    if v.len() != 10 || !v.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        return Err(ApiError::invalid_value(format!("Invalid API version '{v}'")));
    }
    params.mark_used("Version");
    action_out.clone_from(&action);
    let endpoint_host = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1").to_owned();
    let ctx = Ctx { control: state.control.clone(), caller, request_id: request_id.to_owned(), endpoint_host };
    dispatch(&action, &ctx, &mut params).await
}
