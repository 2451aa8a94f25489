use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tgb_sandbox::{Fault, FaultRule, Sandbox};

use crate::common::*;

async fn get_events(
    sb: &Sandbox,
    client: &reqwest::Client,
    token: &str,
) -> reqwest::Result<reqwest::Response> {
    client
        .get(format!("{}/v1/events", sb.tg_api_url()))
        .bearer_auth(token)
        .send()
        .await
}

async fn count_503(n: usize) -> usize {
    let sb = start().await;
    let token = tg_token(&sb).await;
    sb.faults()
        .add(
            FaultRule::new(
                "tg",
                Fault::ErrorRate {
                    rate: 0.5,
                    status: 503,
                },
            )
            .path_prefix("/v1/events"),
        )
        .unwrap();
    let client = http();
    let mut failures = 0;
    for _ in 0..n {
        let r = get_events(&sb, &client, &token).await.unwrap();
        if r.status() == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(r.headers()["retry-after"], "1");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "unavailable");
            failures += 1;
        } else {
            assert_eq!(r.status(), StatusCode::OK);
        }
    }
    failures
}

#[tokio::test]
async fn error_rate_fails_a_seeded_deterministic_share_of_requests() {
    let first = count_503(60).await;
    assert!(first > 10 && first < 50, "{first} of 60");
    assert_eq!(
        count_503(60).await,
        first,
        "the same seed gives the same draws"
    );
}

#[tokio::test]
async fn a_429_burst_refuses_the_next_n_requests_with_retry_after() {
    let sb = start().await;
    let token = tg_token(&sb).await;
    sb.faults()
        .add(
            FaultRule::new(
                "tg",
                Fault::Burst429 {
                    count: 3,
                    retry_after_secs: 7,
                },
            )
            .method("GET"),
        )
        .unwrap();
    let client = http();
    for _ in 0..3 {
        let r = get_events(&sb, &client, &token).await.unwrap();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()["retry-after"], "7");
        assert_eq!(
            r.json::<Value>().await.unwrap()["error"]["code"],
            "rate_limited"
        );
    }
    assert_eq!(
        get_events(&sb, &client, &token).await.unwrap().status(),
        StatusCode::OK
    );
    assert!(
        sb.faults().list().is_empty(),
        "an exhausted burst removes itself"
    );
}

#[tokio::test]
async fn a_dropped_connection_gets_no_answer_and_the_next_request_is_served() {
    let sb = start().await;
    let token = tg_token(&sb).await;
    sb.faults()
        .add(FaultRule::new("tg", Fault::Drop { count: Some(1) }))
        .unwrap();
    let client = http();
    let err = get_events(&sb, &client, &token).await.unwrap_err();
    assert!(
        err.is_request() || err.is_connect() || err.is_body(),
        "{err:?}"
    );
    assert_eq!(
        get_events(&sb, &client, &token).await.unwrap().status(),
        StatusCode::OK
    );
    let dropped = sb
        .calls()
        .of_system("tg")
        .into_iter()
        .filter(|c| c.dropped)
        .count();
    assert_eq!(dropped, 1);
}

#[tokio::test]
async fn latency_delays_only_the_matching_route() {
    let sb = start().await;
    let token = tg_token(&sb).await;
    sb.faults()
        .add(FaultRule::new("tg", Fault::Latency { ms: 300 }).path_regex("^/v1/events$"))
        .unwrap();
    let client = http();
    let started = Instant::now();
    assert_eq!(
        get_events(&sb, &client, &token).await.unwrap().status(),
        StatusCode::OK
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    let started = Instant::now();
    let r = client
        .get(format!("{}/v1/cases/C-1", sb.tg_api_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let _ = started;
    // Which calls the rule touched is in the log; how long the other took says nothing on a
    // busy machine.
    let other = sb
        .calls()
        .of_system("tg")
        .into_iter()
        .find(|c| c.path == "/v1/cases/C-1")
        .unwrap();
    assert!(other.faults.is_empty(), "{other:?}");
    let logged = sb
        .calls()
        .of_system("tg")
        .into_iter()
        .find(|c| c.path == "/v1/events")
        .unwrap();
    assert!(logged.latency_ms >= 300.0);
}

#[tokio::test]
async fn faults_are_managed_over_http() {
    let sb = start().await;
    let url = format!("{}/_sandbox/faults", sb.base_url());
    let r = http()
        .put(&url)
        .json(&json!({"rules": [
            {"system": "dataverse", "kind": "burst429", "count": 2, "retry_after_secs": 3},
            {"system": "graph", "method": "PATCH", "kind": "error_rate", "rate": 1.0, "status": 500}
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let listed: Value = http().get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["rules"].as_array().unwrap().len(), 2);
    assert_eq!(listed["rules"][0]["kind"], "burst429");

    // A Dataverse-style 429 before any token check.
    let r = http()
        .get(format!("{}/api/data/v9.2/incidents", sb.dataverse_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "3");
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "0x80072322"
    );

    let bad = http()
        .post(&url)
        .json(&json!({"kind": "error_rate", "rate": 2.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let bad = http()
        .post(&url)
        .json(&json!({"kind": "latency", "ms": 1, "path_regex": "("}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    assert_eq!(
        http().delete(&url).send().await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    assert!(sb.faults().list().is_empty());
}

#[tokio::test]
async fn a_rule_with_a_duration_ends_by_itself() {
    const RULE_MS: u64 = 1_000;
    let sb = start().await;
    let token = tg_token(&sb).await;
    let added = Instant::now();
    sb.faults()
        .add(
            FaultRule::new(
                "tg",
                Fault::ErrorRate {
                    rate: 1.0,
                    status: 503,
                },
            )
            .for_duration(Duration::from_millis(RULE_MS)),
        )
        .unwrap();
    let client = http();
    let status = get_events(&sb, &client, &token).await.unwrap().status();
    // While the rule lasts it answers; a machine too busy to send this request within the rule's
    // time sees it ended already, which is what the rest of the test shows anyway.
    if added.elapsed() < Duration::from_millis(RULE_MS) {
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    wait_for(WAIT_SECS, || {
        let (client, token) = (client.clone(), token.clone());
        let sb = &sb;
        async move {
            let r = get_events(sb, &client, &token).await.unwrap();
            (r.status() == StatusCode::OK).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn scripted_calls_are_never_faulted() {
    let sb = start().await;
    sb.faults()
        .add(FaultRule {
            system: None,
            ..FaultRule::new(
                "",
                Fault::ErrorRate {
                    rate: 1.0,
                    status: 503,
                },
            )
        })
        .unwrap();
    let r = http()
        .get(format!(
            "{}/api/data/v9.2/incidents",
            sb.dataverse_url_as("agent")
        ))
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let r = http()
        .get(format!("{}/api/data/v9.2/incidents", sb.dataverse_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn etag_races_reach_dataverse_and_planner_and_are_refused_for_tg() {
    let sb = start().await;
    let url = format!("{}/_sandbox/faults/etag-races", sb.base_url());
    let r = http()
        .post(&url)
        .json(&json!({"system": "dataverse", "n": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(sb.dataverse().snapshot()["pending_etag_races"], 2);
    sb.force_etag_races("graph", 3).unwrap();
    assert_eq!(sb.planner().snapshot()["pendingEtagRaces"], 3);
    let r = http()
        .post(&url)
        .json(&json!({"system": "tg", "n": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(sb.force_etag_races("tg", 1).is_err());
}

#[tokio::test]
async fn fault_rules_from_the_config_apply_from_the_start() {
    let config = tgb_sandbox::SandboxConfig::from_toml(
        r#"
        [[faults]]
        system = "entra"
        kind = "burst429"
        count = 1
        retry_after_secs = 4
        "#,
    )
    .unwrap();
    let sb = start_with(config).await;
    let r = entra_token(&sb, "https://graph.microsoft.com/.default").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "4");
    let r = entra_token(&sb, "https://graph.microsoft.com/.default").await;
    assert_eq!(r.status(), StatusCode::OK);
}
