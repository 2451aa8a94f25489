//! The sandbox's TG bodies checked against `proto/tg-community-api.openapi.yaml`.

use serde_json::{Value, json};
use tgb_sandbox::tg::model::*;

use crate::common::*;

const OPENAPI: &str = include_str!("../../../proto/tg-community-api.openapi.yaml");

fn spec() -> Value {
    serde_yaml_ng::from_str(OPENAPI).expect("the contract parses")
}

/// The schema at `pointer`, with the components beside it so that `#/components/...` resolves.
fn validator(spec: &Value, pointer: &str) -> jsonschema::Validator {
    let schema = spec
        .pointer(pointer)
        .unwrap_or_else(|| panic!("no schema at {pointer}"))
        .clone();
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "allOf": [schema],
        "components": spec["components"],
    });
    jsonschema::validator_for(&root).expect("a valid JSON Schema")
}

fn assert_valid(spec: &Value, pointer: &str, instance: &Value) {
    let v = validator(spec, pointer);
    let errors: Vec<String> = v.iter_errors(instance).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{pointer}: {errors:?}\n{instance:#}");
}

fn webhook_pointer(event_type: &str) -> String {
    let item = match event_type {
        "case.created" => "CaseCreated",
        "case.updated" => "CaseUpdated",
        "case.comment_added" => "CaseCommentAdded",
        "document.uploaded" => "DocumentUploaded",
        "onboarding.updated" => "OnboardingUpdated",
        "discussion.action_item" => "DiscussionActionItem",
        "dispute.opened" => "DisputeOpened",
        "dispute.updated" => "DisputeUpdated",
        "partner.updated" => "PartnerUpdated",
        other => panic!("unknown type {other}"),
    };
    format!("/components/pathItems/{item}/post/requestBody/content/application~1json/schema")
}

fn request_pointer(path: &str, method: &str) -> String {
    format!(
        "/paths/{}/{method}/requestBody/content/application~1json/schema",
        path.replace('/', "~1")
    )
}

fn response_pointer(path: &str, method: &str, status: &str) -> String {
    format!(
        "/paths/{}/{method}/responses/{status}/content/application~1json/schema",
        path.replace('/', "~1")
    )
}

#[test]
fn every_webhook_body_the_sandbox_emits_conforms_to_the_contract() {
    let spec = spec();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sb = rt.block_on(start());
    let tg = sb.tg();
    let case = tg
        .raise_case(RaiseCase {
            order_ref: Some("SO-1".into()),
            ..RaiseCase::new(acme_ref(), "Short shipment")
        })
        .unwrap();
    let case_id = case.data["case_id"].as_str().unwrap().to_owned();
    tg.update_case(
        &case_id,
        UpdateCase {
            status: Some("in_progress".into()),
            ..Default::default()
        },
    )
    .unwrap();
    tg.partner_comment(
        &case_id,
        PartnerComment {
            author: Person {
                name: "Ann".into(),
                email: "ann@acme.example".into(),
            },
            body: "hi".into(),
        },
    )
    .unwrap();
    tg.upload_document(UploadDocument {
        case_id: Some(case_id.clone()),
        doc_type: Some("tax_form".into()),
        expires_on: Some("2027-01-31".into()),
        ..Default::default()
    })
    .unwrap();
    tg.update_onboarding(
        &acme_ref(),
        UpdateOnboarding {
            requirements: vec![Requirement {
                key: "w9".into(),
                label: "W-9".into(),
                state: "pending".into(),
            }],
            profile_complete: false,
            agreements_acknowledged: true,
        },
    )
    .unwrap();
    tg.flag_action_item(FlagActionItem {
        partner: acme_ref(),
        thread_id: None,
        text: "call back".into(),
        owner_hint: None,
        due_on: Some("2026-12-01".into()),
        case_id: Some(case_id.clone()),
    })
    .unwrap();
    let d = tg
        .open_dispute(OpenDispute {
            partner: acme_ref(),
            invoice_ref: "INV-1".into(),
            disputed_amount: Money {
                value: 10.0,
                currency: "EUR".into(),
            },
            reason: "price".into(),
            case_id: None,
        })
        .unwrap();
    tg.update_dispute(
        d.data["dispute_id"].as_str().unwrap(),
        UpdateDispute {
            status: Some("under_review".into()),
            ..Default::default()
        },
    )
    .unwrap();
    tg.change_partner_profile(
        &acme_ref(),
        ChangePartnerProfile {
            contacts: Some(vec![
                json!({"contact_id": "c1", "name": "Ann", "email": "a@x", "role": "ap"}),
            ]),
            ..Default::default()
        },
    )
    .unwrap();
    let events = tg.events();
    assert_eq!(events.len(), 9);
    for e in events {
        let body = serde_json::to_value(&e).unwrap();
        assert_valid(&spec, &webhook_pointer(&e.kind), &body);
        assert_valid(&spec, "/components/schemas/Event", &body);
    }
}

#[test]
fn a_body_breaking_the_contract_is_caught_by_the_check() {
    let spec = spec();
    let v = validator(&spec, &webhook_pointer("case.created"));
    let body = json!({"id": "evt_01", "type": "case.created", "occurred_at": "2026-11-21T09:14:03Z",
        "community_id": "c", "partner": {"qualifier": "ZZ", "id": "A"},
        "data": {"case_id": "C-1", "revision": 1}});
    assert!(!v.is_valid(&body), "missing case fields must fail");
}

#[tokio::test]
async fn rest_answers_and_request_fixtures_conform_to_the_contract() {
    let spec = spec();
    let sb = start().await;
    let token = tg_token(&sb).await;
    let api = sb.tg_api_url();
    let client = http();

    let new_case = json!({"partner": acme(), "title": "t", "description": "d", "category": "order",
        "priority": "low", "external_ref": {"system": "dynamics", "id": "x"}});
    assert_valid(&spec, &request_pointer("/v1/cases", "post"), &new_case);
    let created: Value = client
        .post(format!("{api}/v1/cases"))
        .bearer_auth(&token)
        .json(&new_case)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_valid(
        &spec,
        &response_pointer("/v1/cases", "post", "201"),
        &created,
    );
    let case_id = created["case_id"].as_str().unwrap();

    let case: Value = client
        .get(format!("{api}/v1/cases/{case_id}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_valid(
        &spec,
        &response_pointer("/v1/cases/{case_id}", "get", "200"),
        &case,
    );

    let patch = json!({"status": "resolved"});
    assert_valid(
        &spec,
        &request_pointer("/v1/cases/{case_id}", "patch"),
        &patch,
    );
    let patched: Value = client
        .patch(format!("{api}/v1/cases/{case_id}"))
        .bearer_auth(&token)
        .json(&patch)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_valid(
        &spec,
        &response_pointer("/v1/cases/{case_id}", "patch", "200"),
        &patched,
    );

    let comment =
        json!({"body": "b", "author": {"name": "n", "side": "internal"}, "visibility": "internal"});
    assert_valid(
        &spec,
        &request_pointer("/v1/cases/{case_id}/comments", "post"),
        &comment,
    );
    let posted: Value = client
        .post(format!("{api}/v1/cases/{case_id}/comments"))
        .bearer_auth(&token)
        .json(&comment)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_valid(
        &spec,
        &response_pointer("/v1/cases/{case_id}/comments", "post", "201"),
        &posted,
    );

    raise_case(&sb, "feed").await;
    let page: Value = client
        .get(format!("{api}/v1/events?limit=10"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_valid(&spec, &response_pointer("/v1/events", "get", "200"), &page);

    let missing: Value = client
        .get(format!("{api}/v1/cases/C-0"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_valid(&spec, "/components/schemas/Error", &missing);

    for (path, method, body) in [
        (
            "/v1/documents/{document_id}/review",
            "put",
            json!({"outcome": "needs_changes", "note": "blurry"}),
        ),
        (
            "/v1/partners/{partner_key}",
            "patch",
            json!({"legal_name": "Acme", "contacts": [{"contact_id": "c", "name": "n", "email": "e", "role": "r"}]}),
        ),
        (
            "/v1/partners/{partner_key}/onboarding",
            "put",
            json!({"requirements": [{"key": "k", "label": "l", "state": "accepted"}], "internal_steps": [{"key": "edi", "label": "EDI", "state": "done"}], "overall": "complete"}),
        ),
        (
            "/v1/partners/{partner_key}/orders/{order_ref}/milestones",
            "post",
            json!({"milestone": "delivered", "occurred_at": "2026-11-21T09:14:03Z"}),
        ),
        (
            "/v1/partners/{partner_key}/scorecards/{period}",
            "put",
            json!({"period": "2026-11", "kpis": [{"key": "payment_compliance", "value": 1.0, "unit": "ratio"}]}),
        ),
        (
            "/v1/disputes/{dispute_id}",
            "put",
            json!({"status": "resolved", "invoice_status": {"paid_amount": 1.0, "open_amount": 0.0, "currency": "EUR"}}),
        ),
    ] {
        assert_valid(&spec, &request_pointer(path, method), &body);
    }
}
