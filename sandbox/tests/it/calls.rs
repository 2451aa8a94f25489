use serde_json::Value;
use tgb_sandbox::{Fault, FaultRule};

use crate::common::*;

#[tokio::test]
async fn call_log_counts_calls_by_route_and_status() {
    let sb = start().await;
    let token = tg_token(&sb).await;
    let client = http();
    let case = raise_case(&sb, "x").await;
    for _ in 0..3 {
        client
            .get(format!("{}/v1/cases/{case}", sb.tg_api_url()))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
    }
    client
        .get(format!("{}/v1/cases/C-999", sb.tg_api_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    sb.faults()
        .add(FaultRule::new(
            "tg",
            Fault::Burst429 {
                count: 1,
                retry_after_secs: 1,
            },
        ))
        .unwrap();
    client
        .get(format!("{}/v1/events", sb.tg_api_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();

    let counts = sb.calls().counts();
    assert_eq!(counts.get("tg POST /oauth2/token", "200"), 1);
    assert_eq!(counts.get("tg GET /v1/cases/{id}", "200"), 3);
    assert_eq!(counts.get("tg GET /v1/cases/{id}", "404"), 1);
    assert_eq!(counts.get("tg GET /v1/events", "429"), 1);
    assert_eq!(counts.by_system["tg"], 6);
    assert_eq!(
        counts.total, 6,
        "scripting and inspection calls are not logged"
    );

    let calls = sb.calls().of_system("tg");
    let get = calls
        .iter()
        .find(|c| c.status == 200 && c.method == "GET")
        .unwrap();
    assert_eq!(get.caller.as_ref().unwrap().id, TG_CLIENT.0);
    assert!(get.latency_ms >= 0.0 && get.at.ends_with('Z'));

    let body: Value = client
        .get(format!(
            "{}/_sandbox/calls?system=tg&limit=2",
            sb.base_url()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["calls"].as_array().unwrap().len(), 2);
    assert_eq!(body["calls"][1]["status"], 429);
    assert_eq!(
        body["counts"]["by_route"]["tg GET /v1/cases/{id}"]["200"],
        3
    );

    client
        .delete(format!("{}/_sandbox/calls", sb.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(sb.calls().counts().total, 0);
}

#[tokio::test]
async fn state_shows_what_tg_holds_and_the_other_emulators_snapshots() {
    let sb = start().await;
    let case = raise_case(&sb, "state me").await;
    let state: Value = http()
        .get(format!("{}/_sandbox/state", sb.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["tg"]["cases"][&case]["title"], "state me");
    assert_eq!(state["tg"]["event_count"], 1);
    assert_eq!(state["dataverse"], sb.dataverse().snapshot());
    assert_eq!(state["planner"], sb.planner().snapshot());
    assert_eq!(sb.state()["tg"]["cases"][&case]["case_id"], case.as_str());
}
