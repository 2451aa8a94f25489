//! The Dataverse webhook key: in its header by default; `?code=` (which ends up in access logs)
//! only when configured.

use serde_json::Value;

use crate::support::*;

/// Status and error code of one webhook call with an empty JSON object (a body the adapter
/// refuses with 400 once the key is accepted).
async fn call(url: &str, header: Option<&str>, query: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new().post(url).body("{}");
    if let Some(key) = header {
        request = request.header("x-api-key", key);
    }
    if let Some(key) = query {
        request = request.query(&[("code", key)]);
    }
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_webhook_key_is_read_from_its_header_and_from_the_query_only_when_allowed() {
    let env = Env::start().await;
    let adapter = env.adapter(&[]).await;
    let url = format!("{}/webhooks/dataverse", adapter.base);

    let (status, body) = call(&url, Some(WEBHOOK_KEY), None).await;
    assert_eq!(status, 400, "the header key is accepted: {body}");
    let (status, body) = call(&url, None, Some(WEBHOOK_KEY)).await;
    assert_eq!(status, 401, "the query key is refused by default: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("x-api-key header"),
        "{body}"
    );
    let (status, _) = call(&url, Some("a-wrong-key-of-the-same-length-xxxxxxxxx"), None).await;
    assert_eq!(status, 401);
    adapter.stop().await;

    let adapter = env
        .adapter(&[("TGB_DYNAMICS__WEBHOOK_KEY_IN_QUERY", "true")])
        .await;
    let url = format!("{}/webhooks/dataverse", adapter.base);
    let (status, body) = call(&url, None, Some(WEBHOOK_KEY)).await;
    assert_eq!(
        status, 400,
        "the query key is accepted when allowed: {body}"
    );
    let (status, _) = call(&url, None, Some("wrong")).await;
    assert_eq!(status, 401);
    adapter.stop().await;
}
