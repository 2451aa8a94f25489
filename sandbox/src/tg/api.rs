//! The REST API of the TG adapter contract (what tg-egress and tg-ingress call).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use base64::Engine as _;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::model::*;
use super::{StoredAnswer, TgState};
use crate::App;
use crate::errors;
use crate::identity::{Caller, caller_of};

/// Largest page of the event feed.
pub const MAX_EVENTS_PAGE: usize = 500;

/// Routes below `/tg` that need a TG bearer token.
pub(crate) fn router() -> Router<App> {
    Router::new()
        .route("/v1/events", get(events))
        .route("/v1/cases", post(post_case))
        .route("/v1/cases/{case_id}", get(get_case).patch(patch_case))
        .route("/v1/cases/{case_id}/comments", post(post_comment))
        .route("/v1/documents/{document_id}/content", get(document_content))
        .route("/v1/documents/{document_id}/review", put(put_review))
        .route(
            "/v1/partners/{partner}",
            axum::routing::patch(patch_partner),
        )
        .route("/v1/partners/{partner}/onboarding", put(put_onboarding))
        .route(
            "/v1/partners/{partner}/orders/{order_ref}/milestones",
            post(post_milestone),
        )
        .route(
            "/v1/partners/{partner}/scorecards/{period}",
            put(put_scorecard),
        )
        .route("/v1/disputes/{dispute_id}", put(put_dispute))
}

type Answer = (StatusCode, Value);

fn err(status: StatusCode, code: &str, message: impl Into<String>) -> Answer {
    (
        status,
        json!({"error": {"code": code, "message": message.into()}}),
    )
}

fn not_found(what: impl std::fmt::Display) -> Answer {
    err(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("{what} not found"),
    )
}

fn check_in(field: &str, value: &str, allowed: &[&str]) -> Result<(), Answer> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(err(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!(
                "{field} must be one of {}, not '{value}'",
                allowed.join(", ")
            ),
        ))
    }
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// Runs one write under the idempotency rules of the contract.
///
/// A replay of a key seen within the TTL (same caller, method and path) answers the stored
/// status and body and changes nothing. Only answers that changed something (2xx) are stored:
/// a 412 or 404 changed nothing, so a retry with the same key after re-reading executes.
fn write<T: DeserializeOwned>(
    app: &App,
    headers: &HeaderMap,
    method: &str,
    path: &str,
    body: &[u8],
    op: impl FnOnce(&mut TgState, T, &Caller) -> Answer,
) -> Response {
    let Some(caller) = caller_of(headers) else {
        return errors::tg(StatusCode::UNAUTHORIZED, "unauthorized", "no caller");
    };
    let key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(k)) if !k.is_empty() && k.len() <= 255 => Some(k.to_owned()),
        Some(_) => {
            return errors::tg(
                StatusCode::BAD_REQUEST,
                "invalid_idempotency_key",
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
            );
        }
    };
    let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let mut state = app.tg.lock();
    let ttl = state.idempotency_ttl;
    state.idempotency.retain(|_, a| a.at.elapsed() < ttl);
    let record = |state: &mut TgState, status: StatusCode, response: &Value, replayed| {
        state.writes.push(RecordedWrite {
            method: method.to_owned(),
            path: path.to_owned(),
            idempotency_key: key.clone(),
            replayed,
            status: status.as_u16(),
            request: request.clone(),
            response: response.clone(),
            at: now_rfc3339(),
        });
    };
    if let Some(k) = &key
        && let Some(stored) = state.idempotency.get(&(caller.id.clone(), k.clone()))
    {
        if stored.method != method || stored.path != path {
            let (status, body) = err(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                format!(
                    "Idempotency-Key was first used for {} {}",
                    stored.method, stored.path
                ),
            );
            record(&mut state, status, &body, false);
            return answer(status, body);
        }
        let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
        let body = stored.body.clone();
        record(&mut state, status, &body, true);
        let mut response = answer(status, body);
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
        return response;
    }
    let (status, response) = match serde_json::from_slice::<T>(body) {
        Err(e) => err(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("invalid body: {e}"),
        ),
        Ok(input) => op(&mut state, input, &caller),
    };
    if status.is_success()
        && let Some(k) = &key
    {
        state.idempotency.insert(
            (caller.id.clone(), k.clone()),
            StoredAnswer {
                method: method.to_owned(),
                path: path.to_owned(),
                status: status.as_u16(),
                body: response.clone(),
                at: std::time::Instant::now(),
            },
        );
    }
    record(&mut state, status, &response, false);
    answer(status, response)
}

fn partner_key(raw: &str) -> Result<String, Answer> {
    match raw.split_once(':') {
        Some((q, id)) if !q.is_empty() && !id.is_empty() => Ok(raw.to_owned()),
        _ => Err(err(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("partner must be {{qualifier}}:{{id}}, not '{raw}'"),
        )),
    }
}

fn parse_revision(headers: &HeaderMap) -> Result<Option<u64>, Answer> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let s = v.to_str().unwrap_or_default().trim();
    let s = s.strip_prefix("W/").unwrap_or(s).trim_matches('"');
    s.parse().map(Some).map_err(|_| {
        err(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "If-Match must be a revision number",
        )
    })
}

#[derive(Deserialize)]
struct FeedQuery {
    after: Option<String>,
    limit: Option<String>,
}

/// `GET /v1/events?after=&limit=`
async fn events(State(app): State<App>, Query(q): Query<FeedQuery>) -> Response {
    let after = match q.after.as_deref().map(str::trim) {
        None | Some("") => 0usize,
        Some(c) => match c.parse::<usize>() {
            Ok(n) => n,
            Err(_) => {
                return errors::tg(
                    StatusCode::BAD_REQUEST,
                    "invalid_cursor",
                    "after is not a cursor this feed issued",
                );
            }
        },
    };
    let limit = match q.limit.as_deref() {
        None => 100,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_EVENTS_PAGE).contains(&n) => n,
            _ => {
                return errors::tg(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "limit must be an integer from 1 to 500",
                );
            }
        },
    };
    let state = app.tg.lock();
    if after > state.events.len() {
        return errors::tg(
            StatusCode::BAD_REQUEST,
            "invalid_cursor",
            "after is beyond the end of the feed",
        );
    }
    let page: Vec<&TgEvent> = state.events[after..].iter().take(limit).collect();
    let next = after + page.len();
    axum::Json(json!({"events": page, "next_cursor": next.to_string()})).into_response()
}

/// `GET /v1/cases/{case_id}`
async fn get_case(State(app): State<App>, Path(case_id): Path<String>) -> Response {
    match app.tg.case(&case_id) {
        Some(case) => {
            let mut data = case.event_data();
            data["partner"] = json!(case.partner);
            if let Some(r) = &case.external_ref {
                data["external_ref"] = json!(r);
            }
            axum::Json(data).into_response()
        }
        None => errors::tg(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("case {case_id} not found"),
        ),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCase {
    partner: PartnerRef,
    title: String,
    #[serde(default)]
    description: String,
    category: String,
    priority: String,
    #[serde(default)]
    external_ref: Option<ExternalRef>,
}

/// `POST /v1/cases`
async fn post_case(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    write(
        &app,
        &headers,
        "POST",
        "/v1/cases",
        &body,
        |state, input: NewCase, caller| {
            let run = || -> Result<Answer, Answer> {
                check_in("category", &input.category, CATEGORIES)?;
                check_in("priority", &input.priority, PRIORITIES)?;
                if input.title.trim().is_empty() || input.title.chars().count() > 200 {
                    return Err(err(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "title must be 1 to 200 characters",
                    ));
                }
                if input.partner.qualifier.is_empty() || input.partner.id.is_empty() {
                    return Err(err(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "partner.qualifier and partner.id are required",
                    ));
                }
                let partner = state.partner_entry(&input.partner).as_ref();
                state.case_seq += 1;
                let case = Case {
                    case_id: format!("C-{}", 10_000 + state.case_seq),
                    revision: 1,
                    title: input.title,
                    description: input.description,
                    category: input.category,
                    priority: input.priority,
                    status: "open".into(),
                    order_ref: None,
                    invoice_ref: None,
                    document_ids: Vec::new(),
                    opened_by: Person {
                        name: caller.name.clone(),
                        email: String::new(),
                    },
                    updated_at: now_rfc3339(),
                    partner,
                    external_ref: input.external_ref,
                };
                let answer = json!({"case_id": case.case_id, "revision": case.revision});
                state.cases.insert(case.case_id.clone(), case);
                Ok((StatusCode::CREATED, answer))
            };
            run().unwrap_or_else(|e| e)
        },
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CasePatch {
    status: Option<String>,
    priority: Option<String>,
    external_ref: Option<ExternalRef>,
}

/// `PATCH /v1/cases/{case_id}` with optional `If-Match: <revision>`.
async fn patch_case(
    State(app): State<App>,
    Path(case_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v1/cases/{case_id}");
    let if_match = parse_revision(&headers);
    write(
        &app,
        &headers,
        "PATCH",
        &path,
        &body,
        |state, input: CasePatch, _| {
            let run = || -> Result<Answer, Answer> {
                let if_match = if_match?;
                if let Some(s) = &input.status {
                    check_in("status", s, STATUSES)?;
                }
                if let Some(p) = &input.priority {
                    check_in("priority", p, PRIORITIES)?;
                }
                let case = state
                    .cases
                    .get_mut(&case_id)
                    .ok_or_else(|| not_found(format!("case {case_id}")))?;
                if let Some(expected) = if_match
                    && expected != case.revision
                {
                    return Err(err(
                        StatusCode::PRECONDITION_FAILED,
                        "revision_mismatch",
                        format!(
                            "case {case_id} is at revision {}, not {expected}",
                            case.revision
                        ),
                    ));
                }
                if let Some(s) = input.status.clone() {
                    case.status = s;
                }
                if let Some(p) = input.priority.clone() {
                    case.priority = p;
                }
                if let Some(r) = input.external_ref.clone() {
                    case.external_ref = Some(r);
                }
                case.revision += 1;
                case.updated_at = now_rfc3339();
                let revision = case.revision;
                state.case_updates.push(json!({
                    "case_id": case_id,
                    "revision": revision,
                    "status": input.status,
                    "priority": input.priority,
                    "external_ref": input.external_ref,
                    "at": now_rfc3339(),
                }));
                Ok((StatusCode::OK, json!({"revision": revision})))
            };
            run().unwrap_or_else(|e| e)
        },
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiAuthor {
    name: String,
    side: String,
    #[serde(default)]
    email: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewComment {
    body: String,
    author: ApiAuthor,
    visibility: String,
}

/// `POST /v1/cases/{case_id}/comments`
async fn post_comment(
    State(app): State<App>,
    Path(case_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v1/cases/{case_id}/comments");
    write(
        &app,
        &headers,
        "POST",
        &path,
        &body,
        |state, input: NewComment, _| {
            let run = || -> Result<Answer, Answer> {
                check_in("visibility", &input.visibility, &["partner", "internal"])?;
                check_in("author.side", &input.author.side, &["internal"])?;
                if input.body.is_empty() {
                    return Err(err(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "body must not be empty",
                    ));
                }
                if !state.cases.contains_key(&case_id) {
                    return Err(not_found(format!("case {case_id}")));
                }
                let mut author = json!({"name": input.author.name, "side": input.author.side});
                if let Some(e) = input.author.email {
                    author["email"] = json!(e);
                }
                let comment = Comment {
                    comment_id: format!("cm_{}", ulid::Ulid::new()),
                    case_id: case_id.clone(),
                    author,
                    body: input.body,
                    visibility: input.visibility,
                    created_at: now_rfc3339(),
                    source: "api".into(),
                };
                let id = comment.comment_id.clone();
                state.comments.push(comment);
                Ok((StatusCode::CREATED, json!({"comment_id": id})))
            };
            run().unwrap_or_else(|e| e)
        },
    )
}

/// `GET /v1/documents/{document_id}/content`: the bytes, `Content-Type`, `Digest`.
async fn document_content(State(app): State<App>, Path(document_id): Path<String>) -> Response {
    let Some(doc) = app.tg.document(&document_id) else {
        return errors::tg(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("document {document_id} not found"),
        );
    };
    let digest = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&doc.content));
    let mut response = doc.content.into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&doc.media_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("sha-256={digest}")) {
        headers.insert("digest", v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"{}\"",
        doc.file_name.replace('"', "")
    )) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    response
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Review {
    outcome: String,
    #[serde(default)]
    note: String,
}

/// `PUT /v1/documents/{document_id}/review`
async fn put_review(
    State(app): State<App>,
    Path(document_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v1/documents/{document_id}/review");
    write(
        &app,
        &headers,
        "PUT",
        &path,
        &body,
        |state, input: Review, caller| {
            let mut run = || -> Result<Answer, Answer> {
                check_in("outcome", &input.outcome, REVIEW_OUTCOMES)?;
                let doc = state
                    .documents
                    .get_mut(&document_id)
                    .ok_or_else(|| not_found(format!("document {document_id}")))?;
                doc.reviews.push(json!({
                    "outcome": input.outcome,
                    "note": input.note,
                    "by": caller.id,
                    "at": now_rfc3339(),
                }));
                Ok((
                    StatusCode::OK,
                    json!({"document_id": document_id, "outcome": input.outcome}),
                ))
            };
            run().unwrap_or_else(|e| e)
        },
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    key: String,
    label: String,
    state: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OnboardingStatus {
    #[serde(default)]
    requirements: Vec<Value>,
    #[serde(default)]
    internal_steps: Vec<Step>,
    overall: String,
}

/// `PUT /v1/partners/{qualifier}:{id}/onboarding`
async fn put_onboarding(
    State(app): State<App>,
    Path(partner): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v1/partners/{partner}/onboarding");
    write(
        &app,
        &headers,
        "PUT",
        &path,
        &body,
        |state, input: OnboardingStatus, _| {
            let mut run = || -> Result<Answer, Answer> {
                let key = partner_key(&partner)?;
                check_in("overall", &input.overall, ONBOARDING_OVERALL)?;
                let p = state
                    .partners
                    .get_mut(&key)
                    .ok_or_else(|| not_found(format!("partner {key}")))?;
                let steps: Vec<Value> = input
                    .internal_steps
                    .iter()
                    .map(|s| json!({"key": s.key, "label": s.label, "state": s.state}))
                    .collect();
                p.onboarding_status = Some(json!({
                    "requirements": input.requirements,
                    "internal_steps": steps,
                    "overall": input.overall,
                    "at": now_rfc3339(),
                }));
                Ok((
                    StatusCode::OK,
                    json!({"partner": key, "overall": input.overall}),
                ))
            };
            run().unwrap_or_else(|e| e)
        },
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Milestone {
    milestone: String,
    occurred_at: String,
    #[serde(default)]
    detail: Option<String>,
}

/// `POST /v1/partners/{qualifier}:{id}/orders/{order_ref}/milestones`
async fn post_milestone(
    State(app): State<App>,
    Path((partner, order_ref)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v1/partners/{partner}/orders/{order_ref}/milestones");
    write(
        &app,
        &headers,
        "POST",
        &path,
        &body,
        |state, input: Milestone, _| {
            let mut run = || -> Result<Answer, Answer> {
                let key = partner_key(&partner)?;
                check_in("milestone", &input.milestone, MILESTONES)?;
                if time::OffsetDateTime::parse(
                    &input.occurred_at,
                    &time::format_description::well_known::Rfc3339,
                )
                .is_err()
                {
                    return Err(err(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "occurred_at must be an RFC 3339 date-time",
                    ));
                }
                if !state.partners.contains_key(&key) {
                    return Err(not_found(format!("partner {key}")));
                }
                let id = format!("ms_{}", ulid::Ulid::new());
                state.milestones.push(json!({
                    "milestone_id": id,
                    "partner": key,
                    "order_ref": order_ref,
                    "milestone": input.milestone,
                    "occurred_at": input.occurred_at,
                    "detail": input.detail,
                }));
                Ok((StatusCode::CREATED, json!({"milestone_id": id})))
            };
            run().unwrap_or_else(|e| e)
        },
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Kpi {
    key: String,
    value: f64,
    unit: String,
    #[serde(default)]
    target: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Scorecard {
    period: String,
    kpis: Vec<Kpi>,
}

fn valid_period(p: &str) -> bool {
    let b = p.as_bytes();
    b.len() == 7
        && b[4] == b'-'
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[5..].iter().all(u8::is_ascii_digit)
        && matches!(p[5..].parse::<u8>(), Ok(1..=12))
}

/// `PUT /v1/partners/{qualifier}:{id}/scorecards/{period}`
async fn put_scorecard(
    State(app): State<App>,
    Path((partner, period)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v1/partners/{partner}/scorecards/{period}");
    write(
        &app,
        &headers,
        "PUT",
        &path,
        &body,
        |state, input: Scorecard, _| {
            let mut run = || -> Result<Answer, Answer> {
                let key = partner_key(&partner)?;
                if !valid_period(&period) || input.period != period {
                    return Err(err(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "period must be YYYY-MM and equal in the path and the body",
                    ));
                }
                for k in &input.kpis {
                    check_in("kpis[].key", &k.key, KPI_KEYS)?;
                }
                if !state.partners.contains_key(&key) {
                    return Err(not_found(format!("partner {key}")));
                }
                let kpis: Vec<Value> = input
                .kpis
                .iter()
                .map(|k| json!({"key": k.key, "value": k.value, "unit": k.unit, "target": k.target}))
                .collect();
                state.scorecards.insert(
                    format!("{key}/{period}"),
                    json!({"partner": key, "period": period, "kpis": kpis, "at": now_rfc3339()}),
                );
                Ok((StatusCode::OK, json!({"partner": key, "period": period})))
            };
            run().unwrap_or_else(|e| e)
        },
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartnerPatch {
    legal_name: Option<String>,
    addresses: Option<Vec<Value>>,
    contacts: Option<Vec<Value>>,
}

/// `PATCH /v1/partners/{qualifier}:{id}`
async fn patch_partner(
    State(app): State<App>,
    Path(partner): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v1/partners/{partner}");
    write(
        &app,
        &headers,
        "PATCH",
        &path,
        &body,
        |state, input: PartnerPatch, _| {
            let run = || -> Result<Answer, Answer> {
                let key = partner_key(&partner)?;
                let p = state
                    .partners
                    .get_mut(&key)
                    .ok_or_else(|| not_found(format!("partner {key}")))?;
                if let Some(v) = input.legal_name {
                    p.legal_name = v;
                }
                if let Some(v) = input.addresses {
                    p.addresses = v;
                }
                if let Some(v) = input.contacts {
                    p.contacts = v;
                }
                p.revision += 1;
                Ok((StatusCode::OK, json!({"revision": p.revision})))
            };
            run().unwrap_or_else(|e| e)
        },
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InvoiceStatus {
    paid_amount: f64,
    open_amount: f64,
    currency: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisputeUpdate {
    status: String,
    invoice_status: InvoiceStatus,
    #[serde(default)]
    resolution_note: Option<String>,
    #[serde(default)]
    adjustment: Option<Money>,
}

/// `PUT /v1/disputes/{dispute_id}`
async fn put_dispute(
    State(app): State<App>,
    Path(dispute_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v1/disputes/{dispute_id}");
    write(
        &app,
        &headers,
        "PUT",
        &path,
        &body,
        |state, input: DisputeUpdate, _| {
            let run = || -> Result<Answer, Answer> {
                check_in("status", &input.status, DISPUTE_STATUSES)?;
                let d = state
                    .disputes
                    .get_mut(&dispute_id)
                    .ok_or_else(|| not_found(format!("dispute {dispute_id}")))?;
                d.status = input.status;
                d.invoice_status = Some(json!({
                    "paid_amount": input.invoice_status.paid_amount,
                    "open_amount": input.invoice_status.open_amount,
                    "currency": input.invoice_status.currency,
                }));
                if input.resolution_note.is_some() {
                    d.resolution_note = input.resolution_note;
                }
                if let Some(a) = input.adjustment {
                    d.adjustment = Some(json!(a));
                }
                d.revision += 1;
                Ok((
                    StatusCode::OK,
                    json!({"dispute_id": dispute_id, "revision": d.revision}),
                ))
            };
            run().unwrap_or_else(|e| e)
        },
    )
}
