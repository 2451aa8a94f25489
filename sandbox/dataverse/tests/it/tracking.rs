use reqwest::Method;
use serde_json::{Value, json};

use crate::{ALICE, error_of, no_limits, start};

async fn track(t: &crate::TestDv, url: &str) -> Value {
    let r = t
        .req(Method::GET, url, ALICE)
        .header("Prefer", "odata.track-changes")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn delta_link_returns_changed_rows_and_deleted_entities() {
    let t = start(no_limits()).await;
    let a = t.account("A", "P-A").await;
    let b = t.account("B", "P-B").await;
    let first = track(&t, "accounts?$select=name").await;
    assert_eq!(first["value"].as_array().unwrap().len(), 2);
    let delta = first["@odata.deltaLink"].as_str().unwrap().to_string();
    assert!(
        delta.starts_with(&format!("{}/accounts?$select=name&$deltatoken=", t.api)),
        "{delta}"
    );

    // Nothing changed yet.
    let none = track(&t, &delta).await;
    assert_eq!(none["value"].as_array().unwrap().len(), 0);

    let c = t.account("C", "P-C").await;
    t.patch(&format!("accounts({a})"), json!({"name": "A2"}), &[])
        .await;
    let del = t
        .req(Method::DELETE, &format!("accounts({b})"), ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 204);

    let changes = track(&t, &delta).await;
    let value = changes["value"].as_array().unwrap();
    assert_eq!(value.len(), 3, "{changes}");
    let by_id = |id: uuid::Uuid| {
        value
            .iter()
            .find(|v| v["accountid"] == id.to_string() || v["id"] == id.to_string())
            .unwrap()
    };
    assert_eq!(by_id(a)["name"], "A2");
    assert_eq!(by_id(c)["name"], "C");
    let gone = by_id(b);
    assert_eq!(gone["reason"], "deleted");
    assert_eq!(
        gone["@odata.context"],
        format!("{}/$metadata#accounts/$deletedEntity", t.api)
    );
    assert!(
        changes["@odata.context"]
            .as_str()
            .unwrap()
            .ends_with("/$delta")
    );

    // The next link only has what changed after it.
    let next = changes["@odata.deltaLink"].as_str().unwrap().to_string();
    t.patch(&format!("accounts({c})"), json!({"name": "C2"}), &[])
        .await;
    let later = track(&t, &next).await;
    let value = later["value"].as_array().unwrap();
    assert_eq!(value.len(), 1);
    assert_eq!(value[0]["name"], "C2");
}

#[tokio::test]
async fn expired_delta_token_must_be_rebaselined() {
    let mut cfg = no_limits();
    cfg.delta_token_lifetime_ms = 0;
    let t = start(cfg).await;
    t.account("A", "P-A").await;
    let first = track(&t, "accounts?$select=name").await;
    let delta = first["@odata.deltaLink"].as_str().unwrap().to_string();
    let r = t
        .req(Method::GET, &delta, ALICE)
        .header("Prefer", "odata.track-changes")
        .send()
        .await
        .unwrap();
    let (status, code, message) = error_of(r).await;
    assert_eq!((status, code.as_str()), (400, "0x80044352"));
    assert!(message.contains("Please perform a full sync"));
    // Re-baselining works.
    let again = track(&t, "accounts?$select=name").await;
    assert_eq!(again["value"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn change_tracking_refuses_filter() {
    let t = start(no_limits()).await;
    let r = t
        .req(Method::GET, "accounts?$filter=name eq 'A'", ALICE)
        .header("Prefer", "odata.track-changes")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}
