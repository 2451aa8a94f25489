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
