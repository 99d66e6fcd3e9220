//! AWS STS `GetCallerIdentity` on the EC2 endpoint (service `sts`, API version 2011-06-15),
//! routed by the SigV4 credential scope's service. Tools such as Ansible's amazon.aws modules
//! and Terraform's provider ask it who they are before anything else.
//!
//! Strato's access keys are an account's own keys, so the caller is the account's root
//! principal: `Account` is the account id, `Arn` `arn:aws:iam::ACCOUNT:root` and `UserId`
//! the account id, as STS answers for root credentials. Both wire forms are answered: the
//! Query form (`Action=GetCallerIdentity`, XML) and the JSON 1.0 form
//! (`X-Amz-Target: AWSSecurityTokenServiceV20110615.GetCallerIdentity`).

use serde_json::json;

use super::error::ApiError;
use super::query::Params;
use super::xml::Xml;
use crate::control::model::Caller;

pub const NAMESPACE: &str = "https://sts.amazonaws.com/doc/2011-06-15/";
pub const VERSION: &str = "2011-06-15";
pub const JSON_TARGET_PREFIX: &str = "AWSSecurityTokenServiceV20110615.";

/// The caller's identity: (Account, Arn, UserId).
pub fn identity(caller: &Caller) -> (String, String, String) {
    let account = caller.account_id.to_string();
    let arn = format!("arn:aws:iam::{account}:root");
    (account.clone(), arn, account)
}

/// Runs an STS Query request whose signature is verified: `Ok` is the XML answer.
pub fn query(caller: &Caller, p: &mut Params, request_id: &str) -> Result<String, ApiError> {
    let action = p.str("Action").ok_or_else(|| ApiError::MissingParameter("Action".into()))?;
    if let Some(v) = p.str("Version") {
        if v != VERSION {
            return Err(ApiError::invalid_value(format!("Invalid API version '{v}' for STS: {VERSION}")));
        }
    }
    if action != "GetCallerIdentity" {
        return Err(ApiError::InvalidAction(action));
    }
    if let Some((k, _)) = p.unread().next() {
        return Err(ApiError::UnknownParameter(k.to_owned()));
    }
    let (account, arn, user_id) = identity(caller);
    let mut x = Xml::document("GetCallerIdentityResponse", NAMESPACE);
    x.open("GetCallerIdentityResult").field("Arn", arn).field("UserId", user_id).field("Account", account);
    x.close("GetCallerIdentityResult");
    x.open("ResponseMetadata").field("RequestId", request_id).close("ResponseMetadata");
    x.close("GetCallerIdentityResponse");
    Ok(x.into_string())
}

/// The Query protocol's error document (`ErrorResponse`, with the fault's side).
pub fn error_document(e: &ApiError, request_id: &str) -> String {
    let kind = if e.status().is_server_error() { "Receiver" } else { "Sender" };
    let mut x = Xml::document("ErrorResponse", NAMESPACE);
    x.open("Error").field("Type", kind).field("Code", sts_code(e)).field("Message", e.to_string()).close("Error");
    x.field("RequestId", request_id).close("ErrorResponse");
    x.into_string()
}

/// STS names some of the shared errors differently from EC2.
fn sts_code(e: &ApiError) -> &str {
    match e {
        ApiError::AuthFailure(m) if m.contains("validate the provided access credentials") => "InvalidClientTokenId",
        ApiError::AuthFailure(_) => "SignatureDoesNotMatch",
        ApiError::RequestExpired(_) => "ExpiredToken",
        ApiError::UnknownParameter(_) => "InvalidParameter",
        other => other.code(),
    }
}

/// The JSON 1.0 form's answer to `GetCallerIdentity`.
pub fn json_identity(caller: &Caller) -> serde_json::Value {
    let (account, arn, user_id) = identity(caller);
    json!({ "Account": account, "Arn": arn, "UserId": user_id })
}
