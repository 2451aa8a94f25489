//! `POST /webhooks/tg`.
//!
//! | request | answer |
//! |---|---|
//! | `Content-Length` over 1 MiB | 413 `payload_too_large` |
//! | `webhook-*` header missing or empty | 401 `missing_signature` |
//! | timestamp not an integer or more than 300 s from now | 401 `stale_timestamp` |
//! | signature malformed | 401 `invalid_signature` |
//! | body over 1 MiB | 413 `payload_too_large` |
//! | signature matching no secret | 401 `invalid_signature` |
//! | body not JSON or not the contract | 400 `invalid_body`, with `field` |
//! | JetStream did not acknowledge (NATS down, timeout) | 503 `unavailable` + `Retry-After` |
//! | stored (or stored before: same TG event id) | 200 `{event_id, subject, duplicate}` |
//!
//! Everything above the body rows is decided from the headers alone, before a byte of the body
//! is read: a client that cannot sign does not get to hold the request open while it trickles
//! a body (the listener's request timeout bounds the rest).
//!
//! Unknown event types are valid: stored on `tgb.v1.tg.unknown.received`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::verify::{self, VerifyError};
use crate::{Ingress, mapping};

/// The largest body accepted (the contract's limit).
pub const MAX_BODY_BYTES: usize = 1 << 20;

fn error(status: StatusCode, code: &str, message: &str, field: Option<&str>) -> Response {
    let mut err = json!({"code": code, "message": message});
    if let Some(f) = field {
        err["field"] = json!(f);
    }
    (status, axum::Json(json!({ "error": err }))).into_response()
}

fn count(kind: &str, status: StatusCode) {
    metrics::counter!("tgb_tg_webhooks_total", "type" => kind.to_owned(), "answer" => status.as_u16().to_string())
        .increment(1);
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// 401 for a delivery that does not verify, counted by reason.
fn unverified(e: VerifyError) -> Response {
    metrics::counter!("tgb_tg_webhook_signature_failures_total", "reason" => e.label())
        .increment(1);
    count("unverified", StatusCode::UNAUTHORIZED);
    tracing::info!(reason = %e, "webhook refused");
    let code = match e {
        VerifyError::Missing(_) => "missing_signature",
        VerifyError::Stale(_) | VerifyError::BadTimestamp => "stale_timestamp",
        _ => "invalid_signature",
    };
    error(StatusCode::UNAUTHORIZED, code, &e.to_string(), None)
}

pub(crate) async fn receive(State(ingress): State<Arc<Ingress>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        count("unparsed", StatusCode::PAYLOAD_TOO_LARGE);
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            &format!("the body is larger than {MAX_BODY_BYTES} bytes"),
            None,
        )
    };
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return too_large();
    }
    let id = header_str(&headers, "webhook-id");
    let timestamp = header_str(&headers, "webhook-timestamp");
    let signatures = match verify::check_headers(
        &ingress.keys,
        id,
        timestamp,
        header_str(&headers, "webhook-signature"),
        (ingress.now)(),
        ingress.settings.tolerance_secs,
    ) {
        Ok(signatures) => signatures,
        Err(e) => return unverified(e),
    };
    let body = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            let mut length_limit = false;
            while let Some(s) = source {
                length_limit |= s.is::<http_body_util::LengthLimitError>();
                source = s.source();
            }
            if length_limit {
                return too_large();
            }
            count("unparsed", StatusCode::BAD_REQUEST);
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                &format!("the body could not be read: {e}"),
                None,
            );
        }
    };

    if let Err(e) = verify::verify_body(&ingress.keys, id, timestamp, &signatures, &body) {
        return unverified(e);
    }

    let event = match tgb_clients::tg::parse_event(&body) {
        Ok(e) => e,
        Err(e) => {
            count("invalid", StatusCode::BAD_REQUEST);
            let field = (!e.field.is_empty()).then_some(e.field.as_str());
            return error(StatusCode::BAD_REQUEST, "invalid_body", &e.message, field);
        }
    };
    let kind = if tgb_clients::tg::KNOWN_TYPES.contains(&event.kind.as_str()) {
        event.kind.clone()
    } else {
        "unknown".to_owned()
    };
    let pb = mapping::to_event(&event, &body);
    match ingress.publish(&pb).await {
        Ok(duplicate) => {
            count(&kind, StatusCode::OK);
            let meta = pb.meta().cloned().unwrap_or_default();
            tracing::debug!(tg_id = %event.id, event_id = %meta.event_id, duplicate, "webhook stored");
            (
                StatusCode::OK,
                axum::Json(json!({
                    "event_id": meta.event_id,
                    "subject": pb.subject(),
                    "duplicate": duplicate,
                })),
            )
                .into_response()
        }
        Err(failure) => {
            count(&kind, StatusCode::SERVICE_UNAVAILABLE);
            tracing::warn!(tg_id = %event.id, reason = %failure, "webhook not stored; answering 503");
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the event could not be stored; retry later",
                None,
            );
            r.headers_mut().insert(
                header::RETRY_AFTER,
                ingress
                    .settings
                    .retry_after_secs
                    .to_string()
                    .parse()
                    .expect("digits"),
            );
            r
        }
    }
}
