//! Throughput of the emulator on this machine (run with `--ignored`; prints requests/s).

use std::time::Instant;

use reqwest::Method;
use serde_json::json;

use crate::{ALICE, no_limits, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a check: run explicitly"]
async fn throughput() {
    let t = start(no_limits()).await;
    let acc = t.account("A", "P-1").await;
    let n: usize = std::env::var("TGB_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..16 {
        let req = t.clone_handle();
        tasks.push(tokio::spawn(async move {
            for i in 0..n / 16 {
                let r = req
                    .req(Method::PATCH, &format!("incidents(tgb_tgcaseid='C-{w}-{i}')"), ALICE)
                    .json(&json!({"title": "t", "customerid_account@odata.bind": format!("/accounts({acc})")}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 204);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let upserts = n as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let req = t.clone_handle();
        tasks.push(tokio::spawn(async move {
            for _ in 0..n / 16 {
                let r = req
                    .req(Method::GET, &format!("accounts({acc})?$select=name"), ALICE)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let reads = n as f64 / started.elapsed().as_secs_f64();
    println!(
        "dataverse emulator: {upserts:.0} upserts/s, {reads:.0} reads/s (16 concurrent clients, {n} requests of each kind)"
    );
}
