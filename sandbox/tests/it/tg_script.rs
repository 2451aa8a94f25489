use base64::Engine as _;
use serde_json::{Value, json};

use crate::common::*;

async fn script(base: &str, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
    let r = http()
        .request(method, format!("{base}/_sandbox/tg{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn every_partner_action_yields_its_contract_event_in_the_feed() {
    use reqwest::Method as M;
    let sb = start().await;
    let base = sb.base_url();
    let (s, created) = script(
        &base,
        M::POST,
        "/cases",
        json!({
            "partner": acme(), "title": "Invoice 88 over-billed", "category": "invoice_mismatch",
            "priority": "urgent", "invoice_ref": "INV-88",
            "opened_by": {"name": "Ann", "email": "ann@acme.example"}
        }),
    )
    .await;
    assert_eq!(s, 201);
    let case_id = created["data"]["case_id"].as_str().unwrap().to_owned();
    assert_eq!(created["data"]["revision"], 1);
    assert_eq!(created["data"]["status"], "open");
    assert_eq!(created["data"]["opened_by"]["email"], "ann@acme.example");
    assert_eq!(created["data"]["document_ids"], json!([]));

    let (_, updated) = script(
        &base,
        M::PATCH,
        &format!("/cases/{case_id}"),
        json!({"status": "waiting_on_partner"}),
    )
    .await;
    assert_eq!(updated["type"], "case.updated");
    assert_eq!(updated["data"]["revision"], 2);

    let (_, comment) = script(
        &base,
        M::POST,
        &format!("/cases/{case_id}/comments"),
        json!({"author": {"name": "Ann", "email": "ann@acme.example"}, "body": "See attached"}),
    )
    .await;
    assert_eq!(comment["data"]["author"]["side"], "partner");
    assert!(comment["data"]["comment_id"].is_string());

    let content = base64::engine::general_purpose::STANDARD.encode(b"W-9 form");
    let (_, doc) = script(
        &base,
        M::POST,
        "/documents",
        json!({
            "case_id": case_id, "doc_type": "tax_form", "file_name": "w9.pdf",
            "content_base64": content, "expires_on": "2027-12-31", "uploaded_by": "ann@acme.example"
        }),
    )
    .await;
    assert_eq!(doc["type"], "document.uploaded");
    assert_eq!(doc["data"]["case_id"], case_id.as_str());
    assert_eq!(doc["data"]["size"], 8);
    assert_eq!(doc["data"]["expires_on"], "2027-12-31");
    let doc_id = doc["data"]["document_id"].as_str().unwrap();
    assert_eq!(
        sb.tg().case(&case_id).unwrap().document_ids,
        vec![doc_id.to_owned()]
    );

    let (_, dispute) = script(&base, M::POST, "/disputes", json!({
        "partner": acme(), "invoice_ref": "INV-88",
        "disputed_amount": {"value": 250.0, "currency": "USD"}, "reason": "price", "case_id": case_id
    })).await;
    assert_eq!(dispute["type"], "dispute.opened");
    let dispute_id = dispute["data"]["dispute_id"].as_str().unwrap();
    let (_, dispute2) = script(
        &base,
        M::PATCH,
        &format!("/disputes/{dispute_id}"),
        json!({"status": "under_review"}),
    )
    .await;
    assert_eq!(
        (
            dispute2["type"].as_str(),
            dispute2["data"]["revision"].as_u64()
        ),
        (Some("dispute.updated"), Some(2))
    );

    let (_, onboarding) = script(
        &base,
        M::PUT,
        "/partners/ZZ:ACME01/onboarding",
        json!({
            "requirements": [{"key": "w9", "label": "W-9", "state": "submitted"}],
            "profile_complete": true, "agreements_acknowledged": false
        }),
    )
    .await;
    assert_eq!(onboarding["type"], "onboarding.updated");
    assert_eq!(onboarding["data"]["requirements"][0]["state"], "submitted");
    assert!(onboarding["data"]["partner_revision"].as_u64().unwrap() >= 2);

    let (_, item) = script(&base, M::POST, "/action-items", json!({
        "partner": acme(), "text": "Send corrected ASN", "owner_hint": "logistics", "due_on": "2026-12-01"
    })).await;
    assert_eq!(item["type"], "discussion.action_item");
    assert!(
        item["data"]["thread_id"]
            .as_str()
            .unwrap()
            .starts_with("th_")
    );

    let (_, profile) = script(&base, M::PATCH, "/partners/ZZ:ACME01", json!({
        "legal_name": "Acme Corp GmbH",
        "contacts": [{"contact_id": "c1", "name": "Ann", "email": "ann@acme.example", "role": "billing"}],
        "relationship": "active"
    })).await;
    assert_eq!(profile["type"], "partner.updated");
    assert_eq!(profile["data"]["legal_name"], "Acme Corp GmbH");

    let (_, raw) = script(
        &base,
        M::POST,
        "/events",
        json!({
            "type": "case.escalated", "partner": acme(), "data": {"case_id": case_id}
        }),
    )
    .await;
    assert_eq!(raw["type"], "case.escalated");

    let types: Vec<String> = sb.tg().events().iter().map(|e| e.kind.clone()).collect();
    assert_eq!(
        types,
        [
            "case.created",
            "case.updated",
            "case.comment_added",
            "document.uploaded",
            "dispute.opened",
            "dispute.updated",
            "onboarding.updated",
            "discussion.action_item",
            "partner.updated",
            "case.escalated",
        ]
    );
    for e in sb.tg().events() {
        assert!(e.id.starts_with("evt_") && e.id.len() == 30, "{}", e.id);
        assert!(e.occurred_at.ends_with('Z'));
        assert_eq!(e.community_id, "retail-suppliers");
    }
}

#[tokio::test]
async fn scripting_errors_are_4xx_with_a_json_body() {
    let sb = start().await;
    let base = sb.base_url();
    let (s, body) = script(
        &base,
        reqwest::Method::PATCH,
        "/cases/C-1",
        json!({"status": "open"}),
    )
    .await;
    assert_eq!(s, 404);
    assert_eq!(body["error"]["code"], "not_found");
    let (s, body) = script(
        &base,
        reqwest::Method::POST,
        "/cases",
        json!({"partner": acme(), "title": "x", "priority": "whenever"}),
    )
    .await;
    assert_eq!(s, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("priority")
    );
    let (s, _) = script(
        &base,
        reqwest::Method::POST,
        "/cases",
        json!({"title": "no partner"}),
    )
    .await;
    assert_eq!(s, 400);
}
