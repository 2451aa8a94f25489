//! Graph's error body: `{"error":{"code","message","innerError":{"date","request-id","client-request-id"}}}`.

use axum::http::StatusCode;
use serde_json::{Value, json};

/// An error as Graph answers it (the status and the `error` object's code and message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct GraphError {
    /// HTTP status.
    pub status: u16,
    /// `error.code` (e.g. `PreconditionFailed`, `MaximumReferencesOnTask`).
    pub code: String,
    /// `error.message`.
    pub message: String,
}

impl GraphError {
    /// Any status, code and message.
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_string(),
            message: message.into(),
        }
    }

    /// 400: the request is invalid (bad body, bad values).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 404 for a missing object.
    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("The requested item is not found. ({what} '{id}')"),
        )
    }

    /// 412: the `If-Match` header is stale, foreign or missing.
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::new(412, "PreconditionFailed", message)
    }

    /// 403 with a Planner limit code.
    pub fn limit(code: &str, message: impl Into<String>) -> Self {
        Self::new(403, code, message)
    }

    /// The HTTP status.
    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// Graph's JSON error body, with the request ids of the answer.
    pub fn body(&self, request_id: &str, client_request_id: &str) -> Value {
        json!({
            "error": {
                "code": self.code,
                "message": self.message,
                "innerError": {
                    "date": crate::model::now_secs(),
                    "request-id": request_id,
                    "client-request-id": client_request_id,
                }
            }
        })
    }
}
