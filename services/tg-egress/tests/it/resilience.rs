use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use tgb_proto as pb;
use tgb_sandbox::{Fault, FaultRule};
use tokio::sync::Notify;

use crate::support::{Env, note, status};

#[tokio::test]
async fn comments_and_statuses_arrive_exactly_once_through_a_503_stretch_and_429_bursts() {
    let env = Env::start().await;
    let cases: Vec<String> = (0..3)
        .map(|i| env.raise_case(&format!("case {i}")))
        .collect();
    // The TG API answers 503 to everything for 30 s (as in a TG maintenance window), then 429
    // to the next requests. Egress backs off (1, 2, 4, 8, 16 s) within its 8 deliveries.
    let faults = env.sandbox.faults();
    faults
        .add(
            FaultRule::new(
                "tg",
                Fault::ErrorRate {
                    rate: 1.0,
                    status: 503,
                },
            )
            .path_prefix("/v1")
            .for_duration(Duration::from_secs(30)),
        )
        .unwrap();
    faults
        .add(
            FaultRule::new(
                "tg",
                Fault::Burst429 {
                    count: 8,
                    retry_after_secs: 1,
                },
            )
            .path_prefix("/v1/cases"),
        )
        .unwrap();
    let egress = env.egress(&env.sandbox.tg_api_url()).await;
    for case in &cases {
        for n in 0..3 {
            env.publish(note(case, &format!("note {n} on {case}")))
                .await;
        }
        env.publish(status(case, pb::CaseStatus::InProgress)).await;
    }
    tgb_testkit::eventually("all written", tgb_testkit::HANG_GUARD, || async {
        cases
            .iter()
            .all(|c| {
                env.api_comments(c).len() >= 3
                    && env.sandbox.tg().case(c).unwrap().status == "in_progress"
            })
            .then_some(())
    })
    .await
    .unwrap();
    let snapshot = env.sandbox.tg().snapshot();
    for case in &cases {
        let mut comments = env.api_comments(case);
        comments.sort();
        let expected: Vec<String> = (0..3).map(|n| format!("note {n} on {case}")).collect();
        assert_eq!(comments, expected, "each comment exactly once on {case}");
        let updates = snapshot
            .case_updates
            .iter()
            .filter(|u| u["case_id"] == case.as_str())
            .count();
        assert_eq!(updates, 1, "the status is set once on {case}");
    }
    // The faults were met: some writes saw 503 and 429 before succeeding.
    let statuses: Vec<u16> = env
        .sandbox
        .calls()
        .of_system("tg")
        .iter()
        .map(|c| c.status)
        .collect();
    assert!(statuses.contains(&503), "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    egress.stop().await;
}

/// Forwards to the sandbox; while `hold` is set, a comment POST is forwarded, answered by
/// the sandbox, and then never answered to the caller (the process "dies" before its ack).
struct Proxy {
    target: String,
    hold: AtomicBool,
    /// When set, the partner changes the case just before the next PATCH reaches TG.
    race_once: AtomicBool,
    tg: tgb_sandbox::Tg,
    reached: Notify,
    http: reqwest::Client,
}

async fn forward(State(p): State<Arc<Proxy>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let url = format!(
        "{}{}",
        p.target,
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    if parts.method == "PATCH" && p.race_once.swap(false, Ordering::SeqCst) {
        let case_id = parts.uri.path().rsplit('/').next().unwrap();
        p.tg.update_case(
            case_id,
            tgb_sandbox::tg::model::UpdateCase {
                priority: Some("urgent".into()),
                ..Default::default()
            },
        )
        .unwrap();
    }
    let mut headers = parts.headers.clone();
    headers.remove("host");
    headers.remove("content-length");
    let answer = p
        .http
        .request(parts.method.clone(), url)
        .headers(headers)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = answer.status();
    let answer_headers = answer.headers().clone();
    let bytes = answer.bytes().await.unwrap();
    if p.hold.load(Ordering::SeqCst)
        && parts.method == "POST"
        && parts.uri.path().ends_with("/comments")
    {
        p.reached.notify_one();
        std::future::pending::<()>().await;
    }
    let mut response = (status, bytes).into_response();
    for (k, v) in answer_headers.iter() {
        if k != "content-length" && k != "transfer-encoding" {
            response.headers_mut().insert(k, v.clone());
        }
    }
    response
}

async fn start_proxy(env: &Env, hold: bool, race_once: bool) -> (Arc<Proxy>, String) {
    let proxy = Arc::new(Proxy {
        target: env.sandbox.base_url(),
        hold: AtomicBool::new(hold),
        race_once: AtomicBool::new(race_once),
        tg: env.sandbox.tg().clone(),
        reached: Notify::new(),
        http: reqwest::Client::new(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}/tg", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .fallback(forward)
        .with_state(proxy.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (proxy, proxy_url)
}

#[tokio::test]
async fn a_412_on_a_status_update_is_resolved_by_re_reading_the_case() {
    let env = Env::start().await;
    let case = env.raise_case("race test");
    let (_proxy, proxy_url) = start_proxy(&env, false, true).await;
    let egress = env.egress(&proxy_url).await;
    env.publish(status(&case, pb::CaseStatus::WaitingOnPartner))
        .await;
    let case_now = tgb_testkit::eventually("status set", tgb_testkit::HANG_GUARD, || async {
        let c = env.sandbox.tg().case(&case)?;
        (c.status == "waiting_on_partner").then_some(c)
    })
    .await
    .unwrap();
    assert_eq!(
        case_now.priority, "urgent",
        "the partner's concurrent change is kept"
    );
    let patches: Vec<u16> = env
        .sandbox
        .tg()
        .writes()
        .iter()
        .filter(|w| w.method == "PATCH")
        .map(|w| w.status)
        .collect();
    assert_eq!(patches, [412, 200]);
    egress.stop().await;
}

#[tokio::test]
async fn egress_killed_between_the_call_and_the_ack_posts_no_duplicate_comment() {
    let env = Env::start().await;
    let case = env.raise_case("kill test");
    let (proxy, proxy_url) = start_proxy(&env, true, false).await;

    let first = env.egress(&proxy_url).await;
    let event_id = env.publish(note(&case, "posted once")).await;
    tokio::time::timeout(tgb_testkit::HANG_GUARD, proxy.reached.notified())
        .await
        .expect("the comment reached TG");
    assert_eq!(env.api_comments(&case), ["posted once"]);
    // The process dies: its task is aborted before the handler returns, so no ack is sent.
    first.task.abort();
    let _ = first.task.await;
    proxy.hold.store(false, Ordering::SeqCst);

    let second = env.egress(&proxy_url).await;
    tgb_testkit::eventually(
        "redelivered and replayed",
        tgb_testkit::HANG_GUARD,
        || async {
            let writes: Vec<_> = env
                .sandbox
                .tg()
                .writes()
                .into_iter()
                .filter(|w| w.path.ends_with("/comments"))
                .collect();
            (writes.len() == 2).then_some(writes)
        },
    )
    .await
    .map(|writes| {
        assert!(!writes[0].replayed);
        assert!(
            writes[1].replayed,
            "the redelivery was answered from the idempotency store"
        );
        assert!(
            writes
                .iter()
                .all(|w| w.idempotency_key.as_deref() == Some(event_id.as_str()))
        );
    })
    .unwrap();
    assert_eq!(
        env.api_comments(&case),
        ["posted once"],
        "no duplicate comment"
    );
    // The redelivery was acknowledged: nothing is pending on the consumer.
    let js = env.bus.jetstream();
    tgb_testkit::eventually("acked", tgb_testkit::HANG_GUARD, || async {
        let mut c: tgb_bus::async_nats::jetstream::consumer::PullConsumer = js
            .get_consumer_from_stream("tg-egress", "TGB_EVENTS")
            .await
            .ok()?;
        let info = c.info().await.ok()?;
        (info.num_ack_pending == 0 && info.num_pending == 0).then_some(())
    })
    .await
    .unwrap();
    second.stop().await;
}
