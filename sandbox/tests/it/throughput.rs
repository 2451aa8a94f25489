//! The sandbox's own throughput: `cargo test -p tgb-sandbox --release --test it -- --ignored --nocapture throughput`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;

async fn measure<F, Fut>(label: &str, clients: usize, secs: u64, make: F)
where
    F: Fn(reqwest::Client) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let make = Arc::new(make);
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (make, done, failed) = (make.clone(), done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            while Instant::now() < deadline {
                if make(client.clone()).await {
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let started = Instant::now();
    for t in tasks {
        t.await.unwrap();
    }
    let n = done.load(Ordering::Relaxed);
    println!(
        "{label}: {clients} clients, {n} requests in {:.1} s = {:.0} req/s ({} failed)",
        started.elapsed().as_secs_f64(),
        n as f64 / started.elapsed().as_secs_f64(),
        failed.load(Ordering::Relaxed)
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement, not a check: run with --ignored --nocapture"]
async fn throughput() {
    let sb = start().await;
    let case = raise_case(&sb, "bench").await;
    let token = tg_token(&sb).await;
    let url = format!("{}/v1/cases/{case}", sb.tg_api_url());
    measure("TG GET /v1/cases/{id}", 16, 3, move |c| {
        let (url, token) = (url.clone(), token.clone());
        async move {
            c.get(&url)
                .bearer_auth(&token)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await;
    let token_url = sb.tg_token_url();
    measure("TG POST /oauth2/token", 16, 3, move |c| {
        let url = token_url.clone();
        async move {
            c.post(&url)
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", TG_CLIENT.0),
                    ("client_secret", TG_CLIENT.1),
                ])
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await;
}
