//! Error bodies in each emulated system's own format.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// TG: `{"error": {"code", "message"}}`.
pub fn tg(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// Dataverse: `{"error": {"code": "0x…", "message"}}`.
pub fn dataverse(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// Graph: `{"error": {"code", "message", "innerError": {"date", "request-id", "client-request-id"}}}`.
pub fn graph(status: StatusCode, code: &str, message: &str) -> Response {
    let request_id = uuid::Uuid::new_v4();
    (
        status,
        Json(json!({"error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": crate::tg::model::now_rfc3339(),
                "request-id": request_id,
                "client-request-id": request_id,
            }
        }})),
    )
        .into_response()
}

/// Entra ID: `{"error", "error_description"}`.
pub fn entra(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

/// The sandbox's own admin routes: the TG shape.
pub fn sandbox(status: StatusCode, code: &str, message: &str) -> Response {
    tg(status, code, message)
}
