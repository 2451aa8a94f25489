use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

use crate::{ALICE, entity_id, error_of, no_limits, start};

#[tokio::test]
async fn upsert_by_alternate_key_creates_then_updates() {
    let t = start(no_limits()).await;
    let acc = t.account("A", "P-1").await;
    let body = json!({"title": "Late delivery", "customerid_account@odata.bind": format!("/accounts(tgb_partnerkey='P-1')")});
    let r = t.patch("incidents(tgb_tgcaseid='C-1')", body, &[]).await;
    assert_eq!(r.status(), 204);
    let id = entity_id(&r);
    let v = t.get_json(&format!("incidents({id})")).await;
    assert_eq!(v["tgb_tgcaseid"], "C-1");
    assert_eq!(v["_customerid_value"], acc.to_string());
    let r = t
        .patch(
            "incidents(tgb_tgcaseid='C-1')",
            json!({"title": "Later"}),
            &[],
        )
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(entity_id(&r), id);
    assert_eq!(t.dv.rows("incidents").len(), 1);
    assert_eq!(
        t.get_json("incidents(tgb_tgcaseid='C-1')").await["title"],
        "Later"
    );
}

#[tokio::test]
async fn create_only_upsert_on_an_existing_key_is_412() {
    let t = start(no_limits()).await;
    t.account("A", "P-1").await;
    let r = t
        .patch(
            "accounts(tgb_partnerkey='P-1')",
            json!({"name": "B"}),
            &[("If-None-Match", "*")],
        )
        .await;
    let (status, code, message) = error_of(r).await;
    assert_eq!((status, code.as_str()), (412, "0x80040237"));
    assert_eq!(message, "A record with matching key values already exists.");
    // Missing: created.
    let r = t
        .patch(
            "accounts(tgb_partnerkey='P-2')",
            json!({"name": "C"}),
            &[("If-None-Match", "*")],
        )
        .await;
    assert_eq!(r.status(), 204);
}

#[tokio::test]
async fn update_only_upsert_on_a_missing_row_is_404() {
    let t = start(no_limits()).await;
    let r = t
        .patch(
            &format!("accounts({})", Uuid::new_v4()),
            json!({"name": "B"}),
            &[("If-Match", "*")],
        )
        .await;
    let (status, code, _) = error_of(r).await;
    assert_eq!((status, code.as_str()), (404, "0x80040217"));
    let r = t
        .patch(
            "accounts(tgb_partnerkey='nope')",
            json!({"name": "B"}),
            &[("If-Match", "*")],
        )
        .await;
    assert_eq!(r.status(), 404);
    assert!(t.dv.rows("accounts").is_empty());
}

#[tokio::test]
async fn stale_if_match_is_412_and_current_one_succeeds() {
    let t = start(no_limits()).await;
    let id = t.account("A", "P-1").await;
    let etag = t.get_json(&format!("accounts({id})")).await["@odata.etag"]
        .as_str()
        .unwrap()
        .to_string();
    t.patch(&format!("accounts({id})"), json!({"name": "B"}), &[])
        .await;
    let r = t
        .patch(
            &format!("accounts({id})"),
            json!({"name": "C"}),
            &[("If-Match", &etag)],
        )
        .await;
    let (status, code, _) = error_of(r).await;
    assert_eq!((status, code.as_str()), (412, "0x80060882"));
    let current = t.get_json(&format!("accounts({id})")).await["@odata.etag"]
        .as_str()
        .unwrap()
        .to_string();
    let r = t
        .patch(
            &format!("accounts({id})"),
            json!({"name": "C"}),
            &[("If-Match", &current)],
        )
        .await;
    assert_eq!(r.status(), 204);
    let del = t
        .req(Method::DELETE, &format!("accounts({id})"), ALICE)
        .header("If-Match", &current)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 412, "the update moved the ETag");
}

#[tokio::test]
async fn key_columns_in_the_body_are_400_when_addressed_by_key() {
    let t = start(no_limits()).await;
    let r = t
        .patch(
            "accounts(tgb_partnerkey='P-1')",
            json!({"name": "A", "tgb_partnerkey": "P-1"}),
            &[],
        )
        .await;
    let (status, _, message) = error_of(r).await;
    assert_eq!(status, 400);
    assert!(message.contains("tgb_partnerkey"));
}

#[tokio::test]
async fn upsert_by_guid_creates_with_that_id() {
    let t = start(no_limits()).await;
    let id = Uuid::new_v4();
    let r = t
        .req(Method::PATCH, &format!("accounts({id})"), ALICE)
        .header("Prefer", "return=representation")
        .json(&json!({"name": "A"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["accountid"], id.to_string());
    let r = t
        .req(Method::PATCH, &format!("accounts({id})"), ALICE)
        .header("Prefer", "return=representation")
        .json(&json!({"name": "B"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn duplicate_alternate_key_on_create_is_412() {
    let t = start(no_limits()).await;
    t.account("A", "P-1").await;
    let (status, code, _) = error_of(
        t.post("accounts", json!({"name": "B", "tgb_partnerkey": "P-1"}))
            .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (412, "0x80040237"));
}

#[tokio::test]
async fn composite_key_with_a_lookup_addresses_a_kpi() {
    let t = start(no_limits()).await;
    let acc = t.account("A", "P-1").await;
    let key = format!(
        "tgb_partnerkpis(_tgb_partner_value={acc},tgb_period='2026-10',tgb_kpikey='order_accuracy')"
    );
    let r = t
        .patch(
            &key,
            json!({"tgb_name": "Order accuracy", "tgb_value": 98.5}),
            &[],
        )
        .await;
    assert_eq!(r.status(), 204);
    let r = t
        .patch(&key, json!({"tgb_value": 99.0}), &[("If-Match", "*")])
        .await;
    assert_eq!(r.status(), 204);
    let rows = t.dv.rows("tgb_partnerkpi");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["tgb_value"], 99.0);
    assert_eq!(rows[0]["_tgb_partner_value"], acc.to_string());
    assert_eq!(
        rows[0]["_tgb_partner_value@Microsoft.Dynamics.CRM.lookuplogicalname"],
        "account"
    );
    // A key naming a partner that does not exist creates nothing.
    let ghost = Uuid::new_v4();
    let r = t
        .patch(
            &format!(
                "tgb_partnerkpis(_tgb_partner_value={ghost},tgb_period='2026-10',tgb_kpikey='x')"
            ),
            json!({"tgb_name": "x"}),
            &[],
        )
        .await;
    assert_eq!(r.status(), 404);
    assert_eq!(t.dv.rows("tgb_partnerkpis").len(), 1);
}

#[tokio::test]
async fn forced_etag_race_makes_the_next_if_match_write_412() {
    let t = start(no_limits()).await;
    let id = t.account("A", "P-1").await;
    let etag = t.get_json(&format!("accounts({id})")).await["@odata.etag"]
        .as_str()
        .unwrap()
        .to_string();
    t.dv.force_etag_races(1);
    let r = t
        .patch(
            &format!("accounts({id})"),
            json!({"name": "B"}),
            &[("If-Match", &etag)],
        )
        .await;
    let (status, code, _) = error_of(r).await;
    assert_eq!((status, code.as_str()), (412, "0x80060882"));
    let v = t.get_json(&format!("accounts({id})")).await;
    assert_ne!(
        v["@odata.etag"], etag,
        "the concurrent change moved the ETag"
    );
    assert_eq!(v["name"], "A");
    // The race is used up: re-read, retry, succeed.
    let fresh = v["@odata.etag"].as_str().unwrap().to_string();
    let r = t
        .patch(
            &format!("accounts({id})"),
            json!({"name": "B"}),
            &[("If-Match", &fresh)],
        )
        .await;
    assert_eq!(r.status(), 204);
}

/// "Define alternate keys using Power Apps": a key value holding `/ # < > * % & : \ ? +` breaks
/// GET and PATCH by that key, percent-encoded or not; the row can still be stored and found
/// with `$filter`, and addressed by its GUID.
#[tokio::test]
async fn key_values_with_reserved_characters_are_refused_in_urls() {
    let t = start(no_limits()).await;
    let acc = t.account("Acme", "ZZ:ACME/01").await;
    let refused = [
        "accounts(tgb_partnerkey='ZZ:ACME')",
        "accounts(tgb_partnerkey='ZZ%3AACME')",
        "accounts(tgb_partnerkey='ZZ%2FACME')",
        "accounts(tgb_partnerkey='A%2BB')",
        "accounts(tgb_partnerkey='A%26B')",
        "accounts(tgb_partnerkey='A%25B')",
        "accounts(tgb_partnerkey='A*B')",
        "accounts(tgb_partnerkey='A%5CB')",
        "accounts(tgb_partnerkey='A%3FB')",
        "accounts(tgb_partnerkey='A%23B')",
        "accounts(tgb_partnerkey='A%3CB%3E')",
    ];
    for path in refused {
        let (status, _, message) = error_of(t.get(path).await).await;
        assert_eq!(status, 400, "GET {path}");
        assert!(
            message.starts_with("Bad Request - Error in query syntax"),
            "{message}"
        );
        let (status, _, _) = error_of(t.patch(path, json!({"name": "B"}), &[]).await).await;
        assert_eq!(status, 400, "PATCH {path}");
    }
    // A bind by such a key is refused the same way.
    let r = t
        .patch(
            &format!("incidents({})", Uuid::new_v4()),
            json!({"title": "T", "tgb_tgcaseid": "C-1",
                "customerid_account@odata.bind": "/accounts(tgb_partnerkey='ZZ:ACME/01')"}),
            &[],
        )
        .await;
    assert_eq!(error_of(r).await.0, 400);
    assert_eq!(t.dv.rows("accounts").len(), 1, "nothing was created");
    assert!(t.dv.rows("incidents").is_empty());
    // Spaces and non-ASCII letters are not in the list.
    t.account("Ünïcode", "ZZ ÄÖÜ é").await;
    let r = t
        .get("accounts(tgb_partnerkey='ZZ%20%C3%84%C3%96%C3%9C%20%C3%A9')")
        .await;
    assert_eq!(r.status(), 200);
    // What works for any value: `$filter` (encoded literal) and the row's GUID.
    let found = t
        .get_json("accounts?$select=accountid&$filter=tgb_partnerkey eq 'ZZ%3AACME%2F01'")
        .await;
    assert_eq!(found["value"][0]["accountid"], acc.to_string());
    let id = Uuid::new_v4();
    let r = t
        .patch(
            &format!("incidents({id})"),
            json!({"title": "T", "tgb_tgcaseid": "C:1/ü+&",
                "customerid_account@odata.bind": format!("/accounts({acc})")}),
            &[("If-None-Match", "*")],
        )
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        t.get_json(&format!("incidents({id})")).await["tgb_tgcaseid"],
        "C:1/ü+&"
    );
}
