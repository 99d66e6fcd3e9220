//! The one error type every EC2 action answers with, and its mapping to EC2 error codes and
//! HTTP statuses. Internal detail (database errors and the like) is logged, never sent.

use std::borrow::Cow;

use axum::http::StatusCode;

use crate::ids::MalformedId;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    // --- authentication and authorisation
    #[error("Request is missing Authentication Token")]
    MissingAuthenticationToken,
    #[error("{0}")]
    AuthFailure(Cow<'static, str>),
    #[error("{0}")]
    IncompleteSignature(String),
    #[error("{0}")]
    RequestExpired(String),
    #[error("You are not authorized to perform this operation.")]
    UnauthorizedOperation,
    #[error("Request would have succeeded, but DryRun flag is set.")]
    DryRunOperation,

    // --- the request itself
    #[error("The action {0} is not valid for this web service.")]
    InvalidAction(String),
    /// An action of the EC2 model that Strato does not implement: EC2's `InvalidAction`
    /// code (which clients already handle), with a message that says so.
    #[error("The action {0} is an EC2 action that Strato does not implement (`strato actions` lists those it does).")]
    ActionNotImplemented(String),
    #[error("The request must contain the parameter {0}")]
    MissingParameter(String),
    #[error("The parameter {0} is not recognized")]
    UnknownParameter(String),
    #[error("{0}")]
    InvalidParameterValue(String),
    #[error("{0}")]
    InvalidParameterCombination(String),
    /// A member of the model that the action does not honour, given a value that asks for
    /// something Strato does not have.
    #[error("{0}")]
    UnsupportedOperation(String),
    #[error("{0}")]
    InvalidParameter(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("The token '{0}' is invalid.")]
    InvalidPaginationToken(String),
    #[error("{0}")]
    InvalidFilter(String),

    // --- resources
    #[error("{0}")]
    Malformed(MalformedId),
    /// `code` is the resource's `...NotFound` code, e.g. `InvalidGroup.NotFound`.
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    /// `code` is the resource's `...Duplicate` code, e.g. `InvalidKeyPair.Duplicate`.
    #[error("{message}")]
    Duplicate { code: &'static str, message: String },
    #[error("{0}")]
    DependencyViolation(String),
    #[error("{0}")]
    CannotDelete(String),
    #[error("{0}")]
    InvalidPermissionNotFound(String),
    #[error("{0}")]
    InvalidKeyFormat(String),
    #[error("{0}")]
    InvalidVpcRange(String),
    #[error("{0}")]
    InvalidSubnetRange(String),
    #[error("{0}")]
    InvalidSubnetConflict(String),
    #[error("{message}")]
    LimitExceeded { code: &'static str, message: String },

    #[error("{0}")]
    IncorrectInstanceState(String),
    #[error("{0}")]
    InvalidBlockDeviceMapping(String),
    #[error("{0}")]
    InsufficientInstanceCapacity(String),
    #[error("{0}")]
    InsufficientFreeAddressesInSubnet(String),
    #[error("{0}")]
    InsufficientAddressCapacity(String),
    #[error("{0}")]
    InvalidIpAddressInUse(String),
    /// A request that conflicts with how resources are linked now: `code` is EC2's, e.g.
    /// `Resource.AlreadyAssociated` or `Gateway.NotAttached`.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("{0}")]
    OperationNotPermitted(String),

    /// Anything that is our fault. The cause is logged; the client sees a generic message.
    /// A body over the limit: HTTP 413, with EC2's generic code.
    #[error("{0}")]
    BodyTooLarge(String),
    /// A body that did not arrive in time: HTTP 408, with EC2's generic code.
    #[error("{0}")]
    BodyTimeout(String),
    #[error("An internal error has occurred")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    /// For a command line or a log: an internal error is its cause (which a client never
    /// sees), anything else its code and message.
    pub fn into_anyhow(self) -> anyhow::Error {
        match self {
            ApiError::Internal(e) => e,
            other => anyhow::anyhow!("{}: {other}", other.code()),
        }
    }

    /// The EC2 error code, as clients match on it.
    pub fn code(&self) -> &str {
        match self {
            ApiError::MissingAuthenticationToken => "MissingAuthenticationToken",
            ApiError::AuthFailure(_) => "AuthFailure",
            ApiError::IncompleteSignature(_) => "IncompleteSignature",
            ApiError::RequestExpired(_) => "RequestExpired",
            ApiError::UnauthorizedOperation => "UnauthorizedOperation",
            ApiError::DryRunOperation => "DryRunOperation",
            ApiError::InvalidAction(_) | ApiError::ActionNotImplemented(_) => "InvalidAction",
            ApiError::MissingParameter(_) => "MissingParameter",
            ApiError::UnknownParameter(_) => "UnknownParameter",
            ApiError::InvalidParameterValue(_) => "InvalidParameterValue",
            ApiError::InvalidParameterCombination(_) => "InvalidParameterCombination",
            ApiError::InvalidParameter(_) => "InvalidParameter",
            ApiError::UnsupportedOperation(_) => "UnsupportedOperation",
            ApiError::InvalidRequest(_) | ApiError::BodyTooLarge(_) | ApiError::BodyTimeout(_) => "InvalidRequest",
            ApiError::InvalidPaginationToken(_) => "InvalidPaginationToken",
            ApiError::InvalidFilter(_) => "InvalidParameterValue",
            ApiError::Malformed(m) => m.code,
            ApiError::NotFound { code, .. } => code,
            ApiError::Duplicate { code, .. } => code,
            ApiError::DependencyViolation(_) => "DependencyViolation",
            ApiError::CannotDelete(_) => "CannotDelete",
            ApiError::InvalidPermissionNotFound(_) => "InvalidPermission.NotFound",
            ApiError::InvalidKeyFormat(_) => "InvalidKeyPair.Format",
            ApiError::InvalidVpcRange(_) => "InvalidVpc.Range",
            ApiError::InvalidSubnetRange(_) => "InvalidSubnet.Range",
            ApiError::InvalidSubnetConflict(_) => "InvalidSubnet.Conflict",
            ApiError::LimitExceeded { code, .. } => code,
            ApiError::IncorrectInstanceState(_) => "IncorrectInstanceState",
            ApiError::InvalidBlockDeviceMapping(_) => "InvalidBlockDeviceMapping",
            ApiError::InsufficientInstanceCapacity(_) => "InsufficientInstanceCapacity",
            ApiError::InsufficientFreeAddressesInSubnet(_) => "InsufficientFreeAddressesInSubnet",
            ApiError::InsufficientAddressCapacity(_) => "InsufficientAddressCapacity",
            ApiError::InvalidIpAddressInUse(_) => "InvalidIPAddress.InUse",
            ApiError::Conflict { code, .. } => code,
            ApiError::OperationNotPermitted(_) => "OperationNotPermitted",
            ApiError::Internal(_) => "InternalError",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MissingAuthenticationToken | ApiError::AuthFailure(_) => StatusCode::UNAUTHORIZED,
            ApiError::UnauthorizedOperation => StatusCode::FORBIDDEN,
            ApiError::DryRunOperation => StatusCode::PRECONDITION_FAILED,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::InsufficientInstanceCapacity(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::NotFound { code, message: message.into() }
    }

    pub fn duplicate(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Duplicate { code, message: message.into() }
    }

    pub fn invalid_value(message: impl Into<String>) -> Self {
        ApiError::InvalidParameterValue(message.into())
    }
}

impl From<MalformedId> for ApiError {
    fn from(m: MalformedId) -> Self {
        ApiError::Malformed(m)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::Internal(e.into())
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::Internal(e)
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
