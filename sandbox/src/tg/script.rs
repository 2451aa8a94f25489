//! `/_sandbox/tg/...`: act as a partner over HTTP, and manage webhook subscriptions.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::TgError;
use super::model::*;
use crate::App;
use crate::config::WebhookSubscriptionConfig;
use crate::errors;

pub(crate) fn router() -> Router<App> {
    Router::new()
        .route("/cases", post(raise_case))
        .route("/cases/{case_id}", axum::routing::patch(update_case))
        .route("/cases/{case_id}/comments", post(comment))
        .route("/documents", post(upload_document))
        .route("/disputes", post(open_dispute))
        .route(
            "/disputes/{dispute_id}",
            axum::routing::patch(update_dispute),
        )
        .route("/partners/{partner}/onboarding", put(update_onboarding))
        .route("/partners/{partner}", axum::routing::patch(change_partner))
        .route("/action-items", post(flag_action_item))
        .route("/events", post(emit_raw).get(list_events))
        .route("/webhooks", get(list_webhooks).post(add_webhook))
        .route("/webhooks/test", post(send_test_webhook))
        .route("/webhooks/{name}", axum::routing::delete(remove_webhook))
        .route("/webhooks/{name}/secrets", put(rotate_secrets))
        .route("/webhooks/{name}/pause", post(pause))
        .route("/webhooks/{name}/resume", post(resume))
        .route("/webhooks/{name}/deliveries", get(deliveries))
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| {
        errors::sandbox(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("invalid body: {e}"),
        )
    })
}

fn reply(result: Result<TgEvent, TgError>) -> Response {
    match result {
        Ok(event) => (StatusCode::CREATED, axum::Json(event)).into_response(),
        Err(TgError::NotFound(m)) => errors::sandbox(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("{m} not found"),
        ),
        Err(TgError::Invalid(m)) => errors::sandbox(StatusCode::BAD_REQUEST, "invalid_request", &m),
    }
}

fn partner_ref(app: &App, raw: &str) -> Result<PartnerRef, Response> {
    let Some((q, id)) = raw.split_once(':') else {
        return Err(errors::sandbox(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "partner must be {qualifier}:{id}",
        ));
    };
    Ok(app
        .tg
        .partner(raw)
        .map(|p| p.as_ref())
        .unwrap_or(PartnerRef {
            qualifier: q.into(),
            id: id.into(),
            name: id.into(),
        }))
}

macro_rules! handler {
    ($body:ident, $t:ty, |$input:ident| $call:expr) => {{
        match parse::<$t>(&$body) {
            Ok($input) => reply($call),
            Err(r) => r,
        }
    }};
}

async fn raise_case(State(app): State<App>, body: Bytes) -> Response {
    handler!(body, RaiseCase, |input| app.tg.raise_case(input))
}

async fn update_case(State(app): State<App>, Path(id): Path<String>, body: Bytes) -> Response {
    handler!(body, UpdateCase, |input| app.tg.update_case(&id, input))
}

async fn comment(State(app): State<App>, Path(id): Path<String>, body: Bytes) -> Response {
    handler!(body, PartnerComment, |input| app
        .tg
        .partner_comment(&id, input))
}

async fn upload_document(State(app): State<App>, body: Bytes) -> Response {
    handler!(body, UploadDocument, |input| app.tg.upload_document(input))
}

async fn open_dispute(State(app): State<App>, body: Bytes) -> Response {
    handler!(body, OpenDispute, |input| app.tg.open_dispute(input))
}

async fn update_dispute(State(app): State<App>, Path(id): Path<String>, body: Bytes) -> Response {
    handler!(body, UpdateDispute, |input| app
        .tg
        .update_dispute(&id, input))
}

async fn update_onboarding(
    State(app): State<App>,
    Path(partner): Path<String>,
    body: Bytes,
) -> Response {
    let partner = match partner_ref(&app, &partner) {
        Ok(p) => p,
        Err(r) => return r,
    };
    handler!(body, UpdateOnboarding, |input| app
        .tg
        .update_onboarding(&partner, input))
}

async fn change_partner(
    State(app): State<App>,
    Path(partner): Path<String>,
    body: Bytes,
) -> Response {
    let partner = match partner_ref(&app, &partner) {
        Ok(p) => p,
        Err(r) => return r,
    };
    handler!(body, ChangePartnerProfile, |input| app
        .tg
        .change_partner_profile(&partner, input))
}

async fn flag_action_item(State(app): State<App>, body: Bytes) -> Response {
    handler!(body, FlagActionItem, |input| app.tg.flag_action_item(input))
}

async fn emit_raw(State(app): State<App>, body: Bytes) -> Response {
    handler!(body, RawEvent, |input| app.tg.emit_raw(input))
}

async fn list_events(State(app): State<App>) -> Response {
    axum::Json(json!({"events": app.tg.events()})).into_response()
}

async fn list_webhooks(State(app): State<App>) -> Response {
    axum::Json(json!({"subscriptions": app.tg.webhooks().subscriptions()})).into_response()
}

async fn add_webhook(State(app): State<App>, body: Bytes) -> Response {
    let sub: WebhookSubscriptionConfig = match parse(&body) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match app.tg.webhooks().add(sub) {
        Ok(()) => StatusCode::CREATED.into_response(),
        Err(e) => errors::sandbox(StatusCode::BAD_REQUEST, "invalid_request", &e.to_string()),
    }
}

/// The secret a test webhook is signed with when the trigger names none.
pub const TEST_WEBHOOK_SECRET: &str = "whsec_dGdiLWNoZWNrLXRlc3Qtd2ViaG9vay1zZWNyZXQ=";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestWebhook {
    /// Where to send it.
    url: String,
    /// `whsec_…` secrets to sign with (default [`TEST_WEBHOOK_SECRET`]).
    #[serde(default)]
    secrets: Vec<String>,
}

/// `POST /_sandbox/tg/webhooks/test {url, secrets?}`: sends one signed `webhook.test` event
/// to `url` now (not stored in the feed, not retried) and answers with the receiver's status:
/// the trigger `tgb check tg --webhook-trigger` calls.
async fn send_test_webhook(State(app): State<App>, body: Bytes) -> Response {
    let input: TestWebhook = match parse(&body) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let secrets = if input.secrets.is_empty() {
        vec![TEST_WEBHOOK_SECRET.to_owned()]
    } else {
        input.secrets
    };
    let id = format!("evt_{}", ulid::Ulid::new());
    let event = json!({
        "id": id,
        "type": "webhook.test",
        "occurred_at": now_rfc3339(),
        "community_id": app.tg.community_id(),
        "partner": {"qualifier": "ZZ", "id": "TGBTEST", "name": "Webhook test"},
        "data": {},
    });
    let body = event.to_string().into_bytes();
    let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let signature = match crate::webhooks::signature_header(&secrets, &id, timestamp, &body) {
        Ok(s) => s,
        Err(e) => {
            return errors::sandbox(StatusCode::BAD_REQUEST, "invalid_request", &e.to_string());
        }
    };
    let sent = reqwest::Client::new()
        .post(&input.url)
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .timeout(std::time::Duration::from_secs(30))
        .send()
        .await;
    match sent {
        Ok(r) => {
            axum::Json(json!({"id": id, "receiver_status": r.status().as_u16()})).into_response()
        }
        Err(e) => errors::sandbox(
            StatusCode::BAD_GATEWAY,
            "delivery_failed",
            &format!("the receiver did not answer: {}", e.without_url()),
        ),
    }
}

async fn remove_webhook(State(app): State<App>, Path(name): Path<String>) -> Response {
    if app.tg.webhooks().remove(&name) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        errors::sandbox(StatusCode::NOT_FOUND, "not_found", "no such subscription")
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Secrets {
    secrets: Vec<String>,
}

async fn rotate_secrets(State(app): State<App>, Path(name): Path<String>, body: Bytes) -> Response {
    let input: Secrets = match parse(&body) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match app.tg.webhooks().set_secrets(&name, input.secrets) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => errors::sandbox(StatusCode::BAD_REQUEST, "invalid_request", &e.to_string()),
    }
}

async fn pause(State(app): State<App>, Path(name): Path<String>) -> Response {
    toggle(&app, &name, true)
}

async fn resume(State(app): State<App>, Path(name): Path<String>) -> Response {
    toggle(&app, &name, false)
}

fn toggle(app: &App, name: &str, paused: bool) -> Response {
    if app.tg.webhooks().set_paused(name, paused) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        errors::sandbox(StatusCode::NOT_FOUND, "not_found", "no such subscription")
    }
}

async fn deliveries(State(app): State<App>, Path(name): Path<String>) -> Response {
    match app.tg.webhooks().deliveries(&name) {
        Some(d) => axum::Json(json!({"deliveries": d})).into_response(),
        None => errors::sandbox(StatusCode::NOT_FOUND, "not_found", "no such subscription"),
    }
}
