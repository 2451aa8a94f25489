//! OData errors as Dataverse answers them: `{"error":{"code":"0x…","message":"…"}}`.

use axum::http::StatusCode;
use serde_json::{Value, json};

/// Error codes the emulator answers with (hex, as the Web API writes them).
pub mod codes {
    /// Unspecified / OData layer (e.g. invalid property in the body).
    pub const ODATA: &str = "0x0";
    /// InvalidArgument.
    pub const INVALID_ARGUMENT: &str = "0x80040203";
    /// ObjectDoesNotExist.
    pub const NOT_FOUND: &str = "0x80040217";
    /// DuplicateRecord: a record with matching key values already exists.
    pub const DUPLICATE: &str = "0x80040237";
    /// ConcurrencyVersionMismatch (stale If-Match).
    pub const VERSION_MISMATCH: &str = "0x80060882";
    /// Could not find a property named … ($select / $filter).
    pub const PROPERTY_NOT_FOUND: &str = "0x80060888";
    /// Resource not found for the segment.
    pub const SEGMENT_NOT_FOUND: &str = "0x8006088a";
    /// Error identified in Payload (undeclared property, e.g. a wrong-case `@odata.bind`).
    /// Microsoft's "Troubleshoot Dataverse Web API client errors" page shows this code for an
    /// unknown navigation property in `@odata.bind` ("An undeclared property '…' which only has
    /// property annotations in the payload…"); `0x80060888` is what unknown names in
    /// `$select`/`$filter` get.
    pub const PAYLOAD: &str = "0x80048d19";
    /// A validation error occurred (string too long, choice out of range…).
    pub const VALIDATION: &str = "0x80044331";
    /// CaseAlreadyResolved.
    pub const CASE_ALREADY_RESOLVED: &str = "0x800404cf";
    /// The object cannot be updated because it is read-only (a completed or canceled
    /// activity).
    pub const READ_ONLY: &str = "0x8004022e";
    /// `CloseIncident` on a case with open activities. Microsoft documents the rule (a case
    /// with open activities cannot be resolved until they are completed or canceled) but not
    /// the code the Web API answers: the emulator answers InvalidArgument.
    pub const OPEN_ACTIVITIES: &str = "0x80040203";
    /// Invalid statecode/statuscode combination.
    pub const INVALID_STATE_STATUS: &str = "0x8004431a";
    /// ExpiredVersionStamp: the change-tracking token expired, re-baseline.
    pub const EXPIRED_VERSION_STAMP: &str = "0x80044352";
    /// Attachment too large.
    pub const ATTACHMENT_TOO_LARGE: &str = "0x80043e09";
    /// Service protection: number of requests.
    pub const LIMIT_REQUESTS: &str = "0x80072322";
    /// Service protection: execution time.
    pub const LIMIT_EXECUTION_TIME: &str = "0x80072321";
    /// Service protection: concurrent requests.
    pub const LIMIT_CONCURRENCY: &str = "0x80072326";
    /// No caller (the sandbox core did not authenticate the request).
    pub const UNAUTHORIZED: &str = "0x80072560";
}

/// An error answered by the Web API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ODataError {
    /// HTTP status.
    pub status: StatusCode,
    /// Dataverse error code (`0x…`).
    pub code: String,
    /// Message.
    pub message: String,
}

impl ODataError {
    /// An error with any status.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_string(),
            message: message.into(),
        }
    }

    /// 400.
    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404 for a missing row.
    pub fn row_not_found(table: &str, id: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            codes::NOT_FOUND,
            format!("{table} With Id = {id} Does Not Exist"),
        )
    }

    /// 404 for an unknown entity set, function or action.
    pub fn segment(segment: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            codes::SEGMENT_NOT_FOUND,
            format!("Resource not found for the segment '{segment}'."),
        )
    }

    /// 400 for an unknown property in `$select`/`$filter`.
    pub fn property_not_found(name: &str, table: &str) -> Self {
        Self::bad_request(
            codes::PROPERTY_NOT_FOUND,
            format!(
                "Could not find a property named '{name}' on type 'Microsoft.Dynamics.CRM.{table}'."
            ),
        )
    }

    /// 412 when a create meets an existing row.
    pub fn duplicate() -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            codes::DUPLICATE,
            "A record with matching key values already exists.",
        )
    }

    /// 412 on a stale ETag.
    pub fn version_mismatch() -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            codes::VERSION_MISMATCH,
            "The version of the existing record doesn't match the RowVersion property provided.",
        )
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error": {"code": self.code, "message": self.message}})
    }
}
