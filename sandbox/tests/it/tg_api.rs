use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tgb_sandbox::Sandbox;
use tgb_sandbox::tg::model::{Money, OpenDispute, UploadDocument};

use crate::common::*;

struct Api {
    base: String,
    token: String,
}

impl Api {
    async fn new(sb: &Sandbox) -> Self {
        Self {
            base: sb.tg_api_url(),
            token: tg_token(sb).await,
        }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        http()
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let r = rb.send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

fn new_case_body() -> Value {
    json!({
        "partner": acme(),
        "title": "Order 4711: 3 pallets short",
        "description": "Dynamics exception",
        "category": "shipment_discrepancy",
        "priority": "high",
        "external_ref": {"system": "dynamics", "id": "exc-1"}
    })
}

#[tokio::test]
async fn created_case_reads_back_at_revision_one() {
    let sb = start().await;
    let api = Api::new(&sb).await;
    let (status, created) = api
        .send(
            api.req(reqwest::Method::POST, "/v1/cases")
                .json(&new_case_body()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(created["revision"], 1);
    let id = created["case_id"].as_str().unwrap();
    let (status, case) = api
        .send(api.req(reqwest::Method::GET, &format!("/v1/cases/{id}")))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(case["case_id"], id);
    assert_eq!(case["status"], "open");
    assert_eq!(case["category"], "shipment_discrepancy");
    assert_eq!(case["external_ref"]["id"], "exc-1");
    assert_eq!(case["partner"]["id"], "ACME01");
}

#[tokio::test]
async fn unknown_case_is_404_with_the_tg_error_body() {
    let sb = start().await;
    let api = Api::new(&sb).await;
    let (status, body) = api
        .send(api.req(reqwest::Method::GET, "/v1/cases/C-404"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
}

#[tokio::test]
async fn invalid_body_is_400_naming_the_problem() {
    let sb = start().await;
    let api = Api::new(&sb).await;
    let mut body = new_case_body();
    body["category"] = json!("weather");
    let (status, err) = api
        .send(api.req(reqwest::Method::POST, "/v1/cases").json(&body))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("category")
    );
    let (status, err) = api
        .send(
            api.req(reqwest::Method::POST, "/v1/cases")
                .header("content-type", "application/json")
                .body("{not json"),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err["error"]["code"], "invalid_request");
}

#[tokio::test]
async fn patch_with_a_stale_if_match_is_412_and_changes_nothing() {
    let sb = start().await;
    let api = Api::new(&sb).await;
    let case_id = raise_case(&sb, "Damaged goods").await;
    let path = format!("/v1/cases/{case_id}");
    let (status, body) = api
        .send(
            api.req(reqwest::Method::PATCH, &path)
                .header("if-match", "7")
                .json(&json!({"status": "in_progress"})),
        )
        .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(body["error"]["code"], "revision_mismatch");
    assert_eq!(sb.tg().case(&case_id).unwrap().status, "open");
    assert_eq!(sb.tg().case(&case_id).unwrap().revision, 1);

    let (status, body) = api
        .send(
            api.req(reqwest::Method::PATCH, &path)
                .header("if-match", "\"1\"")
                .json(&json!({"status": "in_progress", "priority": "urgent"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["revision"], 2);
    let case = sb.tg().case(&case_id).unwrap();
    assert_eq!(
        (case.status.as_str(), case.priority.as_str()),
        ("in_progress", "urgent")
    );
    // Without If-Match the write is unconditional.
    let (status, body) = api
        .send(
            api.req(reqwest::Method::PATCH, &path)
                .json(&json!({"status": "resolved"})),
        )
        .await;
    assert_eq!(
        (status, body["revision"].as_u64()),
        (StatusCode::OK, Some(3))
    );
}

#[tokio::test]
async fn idempotency_key_replay_returns_the_first_answer_and_changes_nothing() {
    let sb = start().await;
    let api = Api::new(&sb).await;
    let case_id = raise_case(&sb, "Missing ASN").await;
    let path = format!("/v1/cases/{case_id}/comments");
    let body = json!({"body": "We are on it", "author": {"name": "Dana", "side": "internal"}, "visibility": "partner"});
    let first = api
        .req(reqwest::Method::POST, &path)
        .header("idempotency-key", "evt-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(!first.headers().contains_key("idempotent-replayed"));
    let first: Value = first.json().await.unwrap();
    let replay = api
        .req(reqwest::Method::POST, &path)
        .header("idempotency-key", "evt-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.json::<Value>().await.unwrap(), first);
    let comments = sb.tg().comments(&case_id);
    assert_eq!(comments.len(), 1);
    assert_eq!(comments[0].body, "We are on it");
    assert_eq!(comments[0].visibility, "partner");
    let writes = sb.tg().writes();
    assert_eq!(writes.iter().filter(|w| w.replayed).count(), 1);

    // A different key is a different write.
    let (status, second) = api
        .send(
            api.req(reqwest::Method::POST, &path)
                .header("idempotency-key", "evt-2")
                .json(&body),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_ne!(second["comment_id"], first["comment_id"]);
    assert_eq!(sb.tg().comments(&case_id).len(), 2);
}

#[tokio::test]
async fn a_412_is_not_stored_so_a_retry_with_the_same_key_after_rereading_succeeds() {
    let sb = start().await;
    let api = Api::new(&sb).await;
    let case_id = raise_case(&sb, "Price mismatch").await;
    let path = format!("/v1/cases/{case_id}");
    let send = |rev: &str| {
        api.req(reqwest::Method::PATCH, &path)
            .header("idempotency-key", "evt-9")
            .header("if-match", rev)
            .json(&json!({"status": "in_progress"}))
    };
    assert_eq!(api.send(send("5")).await.0, StatusCode::PRECONDITION_FAILED);
    let (status, body) = api.send(send("1")).await;
    assert_eq!(
        (status, body["revision"].as_u64()),
        (StatusCode::OK, Some(2))
    );
    let (status, body) = api.send(send("1")).await;
    assert_eq!(
        (status, body["revision"].as_u64()),
        (StatusCode::OK, Some(2)),
        "replayed"
    );
    assert_eq!(sb.tg().case(&case_id).unwrap().revision, 2);
}

#[tokio::test]
async fn an_idempotency_key_reused_for_another_call_is_422() {
    let sb = start().await;
    let api = Api::new(&sb).await;
    let (status, _) = api
        .send(
            api.req(reqwest::Method::POST, "/v1/cases")
                .header("idempotency-key", "k")
                .json(&new_case_body()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = api
        .send(
            api.req(reqwest::Method::PATCH, "/v1/partners/ZZ:ACME01")
                .header("idempotency-key", "k")
                .json(&json!({"legal_name": "Acme"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["code"], "idempotency_key_reused");
}

#[tokio::test]
async fn event_feed_pages_oldest_first_with_a_cursor() {
    let sb = start().await;
    let api = Api::new(&sb).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(raise_case(&sb, &format!("case {i}")).await);
    }
    let mut cursor = String::new();
    let mut seen = Vec::new();
    loop {
        let (status, page) = api
            .send(api.req(
                reqwest::Method::GET,
                &format!("/v1/events?after={cursor}&limit=2"),
            ))
            .await;
        assert_eq!(status, StatusCode::OK);
        let events = page["events"].as_array().unwrap();
        assert!(events.len() <= 2);
        cursor = page["next_cursor"].as_str().unwrap().to_owned();
        if events.is_empty() {
            break;
        }
        for e in events {
            assert!(e["id"].as_str().unwrap().starts_with("evt_"));
            assert_eq!(e["type"], "case.created");
            assert_eq!(e["community_id"], "retail-suppliers");
            seen.push(e["data"]["case_id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(seen, ids);
    // A later event appears after the cursor already held.
    let late = raise_case(&sb, "late").await;
    let (_, page) = api
        .send(api.req(reqwest::Method::GET, &format!("/v1/events?after={cursor}")))
        .await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    assert_eq!(page["events"][0]["data"]["case_id"], late);
}

#[tokio::test]
async fn event_feed_refuses_a_limit_over_500_and_a_foreign_cursor() {
    let sb = start().await;
    let api = Api::new(&sb).await;
    let (status, body) = api
        .send(api.req(reqwest::Method::GET, "/v1/events?limit=501"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"]["message"].as_str().unwrap().contains("500"));
    let (status, body) = api
        .send(api.req(reqwest::Method::GET, "/v1/events?after=abc"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_cursor");
    let (status, _) = api
        .send(api.req(reqwest::Method::GET, "/v1/events?limit=500"))
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn document_content_carries_its_type_and_a_correct_digest() {
    let sb = start().await;
    let api = Api::new(&sb).await;
    let bytes = b"%PDF-1.7 certificate of origin".to_vec();
    let event = sb
        .tg()
        .upload_document(UploadDocument {
            partner: Some(acme_ref()),
            doc_type: Some("compliance_certificate".into()),
            file_name: Some("coo.pdf".into()),
            media_type: Some("application/pdf".into()),
            content: Some(bytes.clone()),
            ..Default::default()
        })
        .unwrap();
    let id = event.data["document_id"].as_str().unwrap();
    let r = api
        .req(reqwest::Method::GET, &format!("/v1/documents/{id}/content"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/pdf");
    let expected = format!(
        "sha-256={}",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&bytes))
    );
    assert_eq!(r.headers()["digest"].to_str().unwrap(), expected);
    assert_eq!(r.bytes().await.unwrap().as_ref(), bytes.as_slice());
    let hex: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(event.data["sha256"], hex);
    assert_eq!(event.data["size"], bytes.len());
}

#[tokio::test]
async fn a_wrongly_announced_sha256_still_gets_the_digest_of_the_real_bytes() {
    let sb = start().await;
    let api = Api::new(&sb).await;
    let event = sb
        .tg()
        .upload_document(UploadDocument {
            partner: Some(acme_ref()),
            generate_size: Some(4096),
            announce_sha256: Some("00".repeat(32)),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(event.data["sha256"], "00".repeat(32));
    assert_eq!(event.data["size"], 4096);
    let id = event.data["document_id"].as_str().unwrap();
    let r = api
        .req(reqwest::Method::GET, &format!("/v1/documents/{id}/content"))
        .send()
        .await
        .unwrap();
    let digest = r.headers()["digest"].to_str().unwrap().to_owned();
    let bytes = r.bytes().await.unwrap();
    assert_eq!(bytes.len(), 4096);
    let real = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&bytes));
    assert_eq!(digest, format!("sha-256={real}"));
}

#[tokio::test]
async fn review_onboarding_milestone_scorecard_partner_and_dispute_writes_are_recorded() {
    let sb = start().await;
    let api = Api::new(&sb).await;
    let doc = sb
        .tg()
        .upload_document(UploadDocument {
            partner: Some(acme_ref()),
            ..Default::default()
        })
        .unwrap();
    let doc_id = doc.data["document_id"].as_str().unwrap();
    let (s, _) = api
        .send(
            api.req(
                reqwest::Method::PUT,
                &format!("/v1/documents/{doc_id}/review"),
            )
            .json(&json!({"outcome": "approved", "note": "ok"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        sb.tg().document(doc_id).unwrap().reviews[0]["outcome"],
        "approved"
    );

    let (s, _) = api
        .send(
            api.req(reqwest::Method::PUT, "/v1/partners/ZZ:ACME01/onboarding").json(&json!({
                "requirements": [{"key": "w9", "label": "Tax form", "state": "accepted"}],
                "internal_steps": [{"key": "edi", "label": "EDI mapping", "state": "in_progress"}],
                "overall": "in_progress"
            })),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let partner = sb.tg().partner("ZZ:ACME01").unwrap();
    assert_eq!(partner.onboarding_status.unwrap()["overall"], "in_progress");

    let (s, _) = api
        .send(
            api.req(
                reqwest::Method::POST,
                "/v1/partners/ZZ:ACME01/orders/SO-1/milestones",
            )
            .json(
                &json!({"milestone": "shipment_released", "occurred_at": "2026-11-21T09:14:03Z"}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = api
        .send(
            api.req(
                reqwest::Method::POST,
                "/v1/partners/ZZ:ACME01/orders/SO-1/milestones",
            )
            .json(&json!({"milestone": "teleported", "occurred_at": "2026-11-21T09:14:03Z"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    let card = json!({"period": "2026-11", "kpis": [{"key": "order_accuracy", "value": 98.5, "unit": "%", "target": 99}]});
    let (s, _) = api
        .send(
            api.req(
                reqwest::Method::PUT,
                "/v1/partners/ZZ:ACME01/scorecards/2026-11",
            )
            .json(&card),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = api
        .send(
            api.req(
                reqwest::Method::PUT,
                "/v1/partners/ZZ:ACME01/scorecards/2026-12",
            )
            .json(&card),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "period must match");

    let (s, body) = api
        .send(
            api.req(reqwest::Method::PATCH, "/v1/partners/ZZ:ACME01")
                .json(&json!({"legal_name": "Acme Corporation Ltd"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["revision"], partner.revision + 1);
    assert_eq!(
        sb.tg().partner("ZZ:ACME01").unwrap().legal_name,
        "Acme Corporation Ltd"
    );
    let (s, _) = api
        .send(
            api.req(reqwest::Method::PATCH, "/v1/partners/XX:NOPE")
                .json(&json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let opened = sb
        .tg()
        .open_dispute(OpenDispute {
            partner: acme_ref(),
            invoice_ref: "INV-1".into(),
            disputed_amount: Money {
                value: 120.5,
                currency: "EUR".into(),
            },
            reason: "short shipment".into(),
            case_id: None,
        })
        .unwrap();
    let dispute_id = opened.data["dispute_id"].as_str().unwrap();
    let (s, body) = api
        .send(
            api.req(reqwest::Method::PUT, &format!("/v1/disputes/{dispute_id}"))
                .json(&json!({
                    "status": "resolved",
                    "invoice_status": {"paid_amount": 900.0, "open_amount": 0.0, "currency": "EUR"},
                    "resolution_note": "credit note issued",
                    "adjustment": {"value": -120.5, "currency": "EUR"}
                })),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["revision"], 2);
    let d = sb.tg().dispute(dispute_id).unwrap();
    assert_eq!(d.status, "resolved");
    assert_eq!(d.resolution_note.as_deref(), Some("credit note issued"));
    let snap = sb.tg().snapshot();
    assert_eq!(snap.milestones.len(), 1);
    assert!(snap.scorecards.contains_key("ZZ:ACME01/2026-11"));
}

#[tokio::test]
async fn internal_comment_visibility_is_recorded() {
    let sb = start().await;
    let api = Api::new(&sb).await;
    let case_id = raise_case(&sb, "x").await;
    let (s, _) = api
        .send(
            api.req(reqwest::Method::POST, &format!("/v1/cases/{case_id}/comments")).json(
                &json!({"body": "internal only", "author": {"name": "Dana", "side": "internal"}, "visibility": "internal"}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = api
        .send(
            api.req(reqwest::Method::POST, &format!("/v1/cases/{case_id}/comments")).json(
                &json!({"body": "spoof", "author": {"name": "Acme", "side": "partner"}, "visibility": "partner"}),
            ),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "the API writes internal comments only"
    );
    let comments = sb.tg().comments(&case_id);
    assert_eq!(comments.len(), 1);
    assert_eq!(comments[0].visibility, "internal");
    assert_eq!(comments[0].source, "api");
}

#[tokio::test]
async fn an_idempotency_key_is_forgotten_after_its_ttl() {
    let mut config = tgb_sandbox::SandboxConfig::default();
    config.tg.idempotency_ttl_secs = 1;
    let sb = start_with(config).await;
    let api = Api::new(&sb).await;
    let case_id = raise_case(&sb, "ttl").await;
    let path = format!("/v1/cases/{case_id}/comments");
    let body = json!({"body": "once", "author": {"name": "Dana", "side": "internal"}, "visibility": "partner"});
    let post = || {
        api.req(reqwest::Method::POST, &path)
            .header("idempotency-key", "evt-ttl")
            .json(&body)
            .send()
    };
    assert_eq!(post().await.unwrap().status(), StatusCode::CREATED);
    wait_for(WAIT_SECS, || async {
        let r = post().await.unwrap();
        (!r.headers().contains_key("idempotent-replayed")).then_some(())
    })
    .await;
    assert_eq!(sb.tg().comments(&case_id).len(), 2);
}
