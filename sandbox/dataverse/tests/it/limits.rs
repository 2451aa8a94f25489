use std::time::Duration;

use reqwest::{Method, Response};
use tgb_sandbox_dataverse::{DataverseConfig, ServiceProtectionConfig};
use tokio::time::Instant;

use crate::{ALICE, BOB, error_of, eventually, start};

fn limits(sp: ServiceProtectionConfig) -> DataverseConfig {
    DataverseConfig {
        service_protection: sp,
        ..Default::default()
    }
}

fn off() -> ServiceProtectionConfig {
    ServiceProtectionConfig {
        enabled: true,
        requests_per_window: None,
        window_ms: 1_000,
        max_concurrent: None,
        execution_time_ms: None,
        penalty_ms: 1_000,
    }
}

fn retry_after(r: &Response) -> u64 {
    r.headers()["Retry-After"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn whoami(t: &crate::TestDv, user: uuid::Uuid) -> Response {
    t.req(Method::GET, "WhoAmI", user).send().await.unwrap()
}

#[tokio::test]
async fn request_beyond_the_window_is_429_and_early_retries_lengthen_the_wait() {
    // A 5 s window and a 5 s penalty: far larger than any gap between two of these requests,
    // even on a busy machine, so the first four share one window and the rounded-up Retry-After
    // values are comparable.
    let t = start(limits(ServiceProtectionConfig {
        requests_per_window: Some(3),
        window_ms: 5_000,
        penalty_ms: 5_000,
        ..off()
    }))
    .await;
    for left in [2, 1, 0] {
        let r = whoami(&t, ALICE).await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["x-ms-ratelimit-burst-remaining-xrm-requests"],
            left.to_string().as_str()
        );
    }
    let r = whoami(&t, ALICE).await;
    assert_eq!(r.status(), 429);
    let first = retry_after(&r);
    let (_, code, message) = error_of(r).await;
    assert_eq!(code, "0x80072322");
    assert!(
        message.starts_with(
            "Number of requests exceeded the limit of 3 over time window of 5 seconds."
        )
    );
    assert!(
        (1..=5).contains(&first),
        "the oldest request leaves the 5 s window within 5 s: {first}"
    );

    // Sent before Retry-After elapsed: the wait grows by the 5 s penalty.
    let r = whoami(&t, ALICE).await;
    let answered = Instant::now();
    assert_eq!(r.status(), 429);
    let second = retry_after(&r);
    assert!(second > first, "{second} > {first}");
    assert!(second <= first + 5, "{second} <= {first} + 5");
    assert_eq!(error_of(r).await.1, "0x80072322");

    // Another caller is not affected.
    assert_eq!(whoami(&t, BOB).await.status(), 200);
    let usage = t.dv.limits_usage();
    let alice = usage
        .iter()
        .find(|u| u.caller == ALICE.to_string())
        .unwrap();
    assert_eq!(alice.requests_in_window, 3);
    assert_eq!(alice.rejected, 2);
    assert!(alice.throttled_for_ms > 0);

    // Waiting the announced Retry-After is enough.
    tokio::time::sleep_until(answered + Duration::from_secs(second)).await;
    assert_eq!(whoami(&t, ALICE).await.status(), 200);
}

#[tokio::test]
async fn execution_time_budget_is_enforced() {
    // A window long enough that the first request's time is still in it however slowly the
    // second one follows.
    let t = start(limits(ServiceProtectionConfig {
        execution_time_ms: Some(0),
        window_ms: 60_000,
        ..off()
    }))
    .await;
    assert_eq!(whoami(&t, ALICE).await.status(), 200);
    // The first request used some execution time; wait until it is on the books.
    eventually(|| {
        let u = t.dv.limits_usage();
        async move {
            u.iter()
                .any(|u| u.in_flight == 0 && u.requests_in_window == 1)
                .then_some(())
        }
    })
    .await;
    let r = whoami(&t, ALICE).await;
    assert_eq!(r.status(), 429);
    assert!(retry_after(&r) >= 1);
    let (_, code, message) = error_of(r).await;
    assert_eq!(code, "0x80072321");
    assert!(message.starts_with(
        "Combined execution time of incoming requests exceeded limit of 0 milliseconds"
    ));
}

#[tokio::test]
async fn concurrent_requests_beyond_the_limit_are_429() {
    let t = start(limits(ServiceProtectionConfig {
        max_concurrent: Some(2),
        ..off()
    }))
    .await;
    let hold = t.dv.hold_requests();
    let a = tokio::spawn(t.req(Method::GET, "WhoAmI", ALICE).send());
    let b = tokio::spawn(t.req(Method::GET, "WhoAmI", ALICE).send());
    eventually(|| {
        let u = t.dv.limits_usage();
        async move { u.iter().any(|u| u.in_flight == 2).then_some(()) }
    })
    .await;
    let r = whoami(&t, ALICE).await;
    assert_eq!(r.status(), 429);
    assert_eq!(retry_after(&r), 1);
    let (_, code, message) = error_of(r).await;
    assert_eq!(code, "0x80072326");
    assert_eq!(
        message,
        "Number of concurrent requests exceeded the limit of 2."
    );
    drop(hold);
    assert_eq!(a.await.unwrap().unwrap().status(), 200);
    assert_eq!(b.await.unwrap().unwrap().status(), 200);
    // Concurrency does not throttle afterwards.
    assert_eq!(whoami(&t, ALICE).await.status(), 200);
}

#[tokio::test]
async fn limits_are_visible_and_configurable_over_the_admin_api() {
    let t = start(limits(off())).await;
    whoami(&t, ALICE).await;
    let v: serde_json::Value = t
        .client
        .get(format!("{}/_sandbox/limits", t.root))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["usage"][0]["caller"], ALICE.to_string());
    let r = t
        .client
        .put(format!("{}/_sandbox/limits", t.root))
        .json(&serde_json::json!({"enabled": true, "requests_per_window": 1, "window_ms": 60000,
                                 "max_concurrent": null, "execution_time_ms": null, "penalty_ms": 1000}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        whoami(&t, ALICE).await.status(),
        429,
        "one request already in the window"
    );
}

#[tokio::test]
async fn requests_before_retry_after_ran_out_are_counted_per_caller() {
    // A 5 s window: the first four requests share it even on a busy machine.
    let t = start(limits(ServiceProtectionConfig {
        requests_per_window: Some(2),
        window_ms: 5_000,
        ..off()
    }))
    .await;
    let early = |caller: uuid::Uuid| {
        t.dv.limits_usage()
            .into_iter()
            .find(|u| u.caller == caller.to_string())
            .map(|u| u.early_requests)
    };
    for _ in 0..2 {
        assert_eq!(whoami(&t, ALICE).await.status(), 200);
    }
    // The first 429 is not early: nobody had told Alice to wait.
    let r = whoami(&t, ALICE).await;
    assert_eq!(r.status(), 429);
    assert_eq!(early(ALICE), Some(0));
    // Sent at once after it: early.
    let r = whoami(&t, ALICE).await;
    let answered = Instant::now();
    assert_eq!(r.status(), 429);
    let wait = retry_after(&r);
    assert_eq!(early(ALICE), Some(1));
    assert_eq!(whoami(&t, BOB).await.status(), 200);
    assert_eq!(early(BOB), Some(0), "per caller");

    // The admin route shows the same count.
    let limits = t
        .client
        .get(format!("{}/_sandbox/limits", t.root))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let alice = limits["usage"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["caller"] == ALICE.to_string())
        .unwrap()
        .clone();
    assert_eq!(alice["early_requests"], 1);

    // Waiting the announced Retry-After: admitted, and not early.
    tokio::time::sleep_until(answered + Duration::from_secs(wait)).await;
    assert_eq!(whoami(&t, ALICE).await.status(), 200);
    assert_eq!(early(ALICE), Some(1));
}
