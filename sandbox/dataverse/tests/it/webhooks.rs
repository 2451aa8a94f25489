use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use reqwest::Method;
use serde_json::{Value, json};
use tgb_sandbox_dataverse::{WebhookAuth, WebhookRegistration};
use tokio::sync::mpsc;

use crate::{ALICE, BOB, eventually, no_limits, start};

struct Received {
    headers: HeaderMap,
    uri: Uri,
    body: Value,
}

#[derive(Clone)]
struct Receiver {
    tx: mpsc::UnboundedSender<Received>,
    answers: Arc<Mutex<VecDeque<u16>>>,
}

/// A webhook receiver on port 0 that answers with the queued statuses (then 200).
async fn receiver(answers: &[u16]) -> (String, mpsc::UnboundedReceiver<Received>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let state = Receiver {
        tx,
        answers: Arc::new(Mutex::new(answers.iter().copied().collect())),
    };
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                |State(s): State<Receiver>,
                 headers: HeaderMap,
                 uri: Uri,
                 body: axum::body::Bytes| async move {
                    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let _ = s.tx.send(Received { headers, uri, body });
                    let code = s.answers.lock().unwrap().pop_front().unwrap_or(200);
                    StatusCode::from_u16(code).unwrap()
                },
            ),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Received>) -> Received {
    tokio::time::timeout(Duration::from_secs(120), rx.recv())
        .await
        .expect("a webhook call within 10 s")
        .expect("receiver open")
}

fn attr<'a>(entity: &'a Value, key: &str) -> Option<&'a Value> {
    entity["Attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

#[tokio::test]
async fn write_posts_remote_execution_context_with_headers_and_initiating_user() {
    let t = start(no_limits()).await;
    let (url, mut rx) = receiver(&[]).await;
    let reg = json!({"name": "tg-bridge", "url": url, "auth": {"type": "header", "name": "x-api-key", "value": "s3cret"},
                     "entities": ["incident"], "messages": ["Create", "Update"]});
    let r = t
        .client
        .post(format!("{}/_sandbox/webhooks", t.root))
        .json(&reg)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let acc = t.account("A", "P-1").await; // account: not subscribed
    let r = t
        .req(Method::POST, "incidents", BOB)
        .json(&json!({"title": "Hooked", "prioritycode": 1, "customerid_account@odata.bind": format!("/accounts({acc})")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let id = crate::entity_id(&r);

    let got = next(&mut rx).await;
    assert_eq!(got.headers["x-api-key"], "s3cret");
    assert_eq!(
        got.headers["x-ms-dynamics-organization"],
        "tgbsandbox.crm.dynamics.com"
    );
    assert_eq!(got.headers["x-ms-dynamics-entity-name"], "incident");
    assert_eq!(got.headers["x-ms-dynamics-request-name"], "Create");
    let correlation = got.headers["x-ms-correlation-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let b = &got.body;
    assert_eq!(b["MessageName"], "Create");
    assert_eq!(b["PrimaryEntityName"], "incident");
    assert_eq!(b["PrimaryEntityId"], id.to_string());
    assert_eq!(b["InitiatingUserId"], BOB.to_string());
    assert_eq!(b["UserId"], BOB.to_string());
    assert_eq!(b["CorrelationId"], correlation);
    assert_eq!(b["Depth"], 1);
    assert_eq!(b["OrganizationName"], "tgbsandbox");
    let target = &b["InputParameters"][0];
    assert_eq!(target["key"], "Target");
    assert_eq!(target["value"]["LogicalName"], "incident");
    assert_eq!(target["value"]["Id"], id.to_string());
    assert_eq!(attr(&target["value"], "title").unwrap(), "Hooked");
    assert_eq!(attr(&target["value"], "prioritycode").unwrap()["Value"], 1);
    assert_eq!(
        attr(&target["value"], "customerid").unwrap()["Id"],
        acc.to_string()
    );
    assert_eq!(
        attr(&target["value"], "customerid").unwrap()["LogicalName"],
        "account"
    );
    let post = &b["PostEntityImages"][0]["value"];
    assert_eq!(attr(post, "statecode").unwrap()["Value"], 0);

    // An update by another user, in order after the create.
    t.patch(
        &format!("incidents({id})"),
        json!({"description": "more"}),
        &[],
    )
    .await;
    let got = next(&mut rx).await;
    assert_eq!(got.body["MessageName"], "Update");
    assert_eq!(got.body["InitiatingUserId"], ALICE.to_string());
    let target = &got.body["InputParameters"][0]["value"];
    assert_eq!(attr(target, "description").unwrap(), "more");
    assert!(
        attr(target, "title").is_none(),
        "Target holds only what was sent"
    );
    assert!(rx.try_recv().is_err(), "the account was not subscribed");
}

#[tokio::test]
async fn query_string_key_and_delete_message() {
    let t = start(no_limits()).await;
    let (url, mut rx) = receiver(&[]).await;
    t.dv.register_webhook(WebhookRegistration {
        name: "q".into(),
        url,
        auth: WebhookAuth::Query {
            name: "code".into(),
            value: "k3y".into(),
        },
        entities: vec!["account".into()],
        messages: vec!["Delete".into()],
    })
    .unwrap();
    let id = t.account("A", "P-1").await;
    t.req(Method::DELETE, &format!("accounts({id})"), ALICE)
        .send()
        .await
        .unwrap();
    let got = next(&mut rx).await;
    assert_eq!(got.uri.query(), Some("code=k3y"));
    assert_eq!(got.body["MessageName"], "Delete");
    let target = &got.body["InputParameters"][0]["value"];
    assert_eq!(target["Id"], id.to_string());
    assert_eq!(target["LogicalName"], "account");
    let pre = &got.body["PreEntityImages"][0]["value"];
    assert_eq!(
        attr(pre, "tgb_partnerkey").unwrap(),
        "P-1",
        "the pre-image tells what was deleted"
    );
    assert_eq!(got.body["PostEntityImages"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn close_incident_notifies_close_and_update() {
    let t = start(no_limits()).await;
    let (url, mut rx) = receiver(&[]).await;
    t.dv.register_webhook(WebhookRegistration {
        name: "c".into(),
        url,
        auth: WebhookAuth::None,
        entities: vec!["incident".into()],
        messages: vec!["Update".into(), "Close".into()],
    })
    .unwrap();
    let acc = t.account("A", "P-1").await;
    let id = t
        .create(
            "incidents",
            json!({"title": "t", "customerid_account@odata.bind": format!("/accounts({acc})")}),
        )
        .await;
    t.post(
        "CloseIncident",
        json!({"IncidentResolution": {"subject": "fixed", "incidentid@odata.bind": format!("/incidents({id})")}, "Status": 5}),
    )
    .await;
    let update = next(&mut rx).await;
    assert_eq!(update.body["MessageName"], "Update");
    assert_eq!(
        attr(&update.body["InputParameters"][0]["value"], "statecode").unwrap()["Value"],
        1
    );
    let close = next(&mut rx).await;
    assert_eq!(close.body["MessageName"], "Close");
    // Close targets no row: the case is the resolution's incidentid.
    assert_eq!(
        close.body["PrimaryEntityId"],
        "00000000-0000-0000-0000-000000000000"
    );
    let inputs = close.body["InputParameters"].as_array().unwrap();
    let res = inputs
        .iter()
        .find(|p| p["key"] == "IncidentResolution")
        .unwrap();
    assert_eq!(attr(&res["value"], "subject").unwrap(), "fixed");
    assert_eq!(
        attr(&res["value"], "incidentid").unwrap()["Id"],
        id.to_string()
    );
    let status = inputs.iter().find(|p| p["key"] == "Status").unwrap();
    assert_eq!(status["value"]["Value"], 5);
}

#[tokio::test]
async fn retries_once_on_503_but_not_on_500() {
    let t = start(no_limits()).await;
    let (url, mut rx) = receiver(&[503, 200, 500]).await;
    t.dv.register_webhook(WebhookRegistration {
        name: "r".into(),
        url,
        auth: WebhookAuth::None,
        entities: vec!["account".into()],
        messages: vec![],
    })
    .unwrap();
    let a = t.account("A", "P-1").await;
    let first = next(&mut rx).await;
    let second = next(&mut rx).await;
    assert_eq!(first.body["PrimaryEntityId"], a.to_string());
    assert_eq!(
        second.body["PrimaryEntityId"],
        a.to_string(),
        "the 503 is retried once"
    );
    let b = t.account("B", "P-2").await;
    let third = next(&mut rx).await;
    assert_eq!(third.body["PrimaryEntityId"], b.to_string());
    let deliveries = eventually(|| {
        let d = t.dv.webhook_deliveries();
        async move { (d.len() == 2).then_some(d) }
    })
    .await;
    assert_eq!(
        (deliveries[0].attempts, deliveries[0].status),
        (2, Some(200))
    );
    assert_eq!(
        (deliveries[1].attempts, deliveries[1].status),
        (1, Some(500))
    );
    assert!(rx.try_recv().is_err(), "a 500 is not retried");
}
