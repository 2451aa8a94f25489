//! Measures the emulator's own throughput on loopback (so benchmarks know it is not the
//! bottleneck): `cargo run --release -p tgb-sandbox-planner --example throughput`.
//!
//! A bounded number of requests from a fixed number of concurrent clients: GETs of a task, then
//! PATCHes (each with the ETag returned by the previous one, `Prefer: return=representation`).

use std::time::Instant;

use serde_json::{Value, json};
use tgb_sandbox_planner::Planner;

const CLIENTS: usize = 16;
const REQUESTS_PER_CLIENT: usize = 500;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let planner = Planner::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}/v1.0", listener.local_addr()?);
    let router = planner.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let http = reqwest::Client::new();
    let call = move |m: reqwest::Method, path: String| {
        http.request(m, format!("{base}{path}"))
            .header("x-tgb-caller-id", "3c9d2e1f-7a6b-4c5d-8e9f-0a1b2c3d4e5f")
            .header("x-tgb-caller-kind", "application")
    };

    // One task per client, so PATCHes do not race each other.
    let mut tasks = Vec::new();
    for n in 0..CLIENTS {
        let r: Value = call(reqwest::Method::POST, "/planner/tasks".into())
            .json(&json!({"planId": "pLnPartnerIssues00000000000A", "title": format!("load {n}")}))
            .send()
            .await?
            .json()
            .await?;
        tasks.push((
            r["id"].as_str().unwrap_or_default().to_string(),
            r["@odata.etag"].as_str().unwrap_or_default().to_string(),
        ));
    }

    for kind in ["GET task", "PATCH task (If-Match, return=representation)"] {
        let start = Instant::now();
        let mut handles = Vec::new();
        for (id, etag) in tasks.clone() {
            let call = call.clone();
            let patch = kind.starts_with("PATCH");
            handles.push(tokio::spawn(async move {
                let mut etag = etag;
                for i in 0..REQUESTS_PER_CLIENT {
                    if patch {
                        let r = call(reqwest::Method::PATCH, format!("/planner/tasks/{id}"))
                            .header("If-Match", &etag)
                            .header("Prefer", "return=representation")
                            .json(&json!({"priority": (i % 10) as i64}))
                            .send()
                            .await?;
                        anyhow::ensure!(r.status() == 200, "PATCH answered {}", r.status());
                        let v: Value = r.json().await?;
                        etag = v["@odata.etag"].as_str().unwrap_or_default().to_string();
                    } else {
                        let r = call(reqwest::Method::GET, format!("/planner/tasks/{id}"))
                            .send()
                            .await?;
                        anyhow::ensure!(r.status() == 200, "GET answered {}", r.status());
                        r.bytes().await?;
                    }
                }
                Ok::<_, anyhow::Error>(etag)
            }));
        }
        let mut new_tasks = Vec::new();
        for (h, (id, _)) in handles.into_iter().zip(tasks.iter()) {
            new_tasks.push((id.clone(), h.await??));
        }
        tasks = new_tasks;
        let total = CLIENTS * REQUESTS_PER_CLIENT;
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{kind}: {total} requests, {CLIENTS} clients, {secs:.2} s, {:.0} requests/s",
            total as f64 / secs
        );
    }
    Ok(())
}
