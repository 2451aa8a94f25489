//! The delay from a change in Planner to the resulting comment on the TG case thread (P2), in
//! the sandbox: nats-server, the sandbox, planner-adapter and tg-egress in this process.
//!
//! Per poll interval: N TG cases are raised and their triage tasks created (`tg.case.opened` →
//! P1); then, at a steady pace, a person changes one task in Planner (the sandbox's
//! `/_sandbox/tasks/{id}/as-user` route: in progress, blocked, in progress, ...), and the time
//! until the comment appears on the case thread is measured by polling the sandbox's inspect
//! API (`GET /_sandbox/state`). A task is changed again only once its previous change reached
//! TG (two changes within one poll cycle would be seen as one).
//!
//! `cargo bench -p planner-adapter --bench poll_delay`. Settings (environment):
//! `TGB_BENCH_INTERVALS_MS` (default `30000,2000`), `TGB_BENCH_CASES` (10),
//! `TGB_BENCH_SAMPLES` (per interval, default 12 at 30 s and 40 below). Prints p50/p95/max per
//! interval and writes them as JSON to `target/bench/planner-poll-delay.json`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use prost::Message as _;
use serde_json::{Value, json};
use tgb_bus::{Bus, BusConfig};
use tgb_proto::{BusEvent as _, EventMeta, Origin, PartnerRef, PlannerTaskCreated};
use tgb_runtime::Config;
use tgb_sandbox::tg::model::{PartnerRef as TgPartner, RaiseCase};
use tgb_sandbox::{Sandbox, SandboxConfig};
use tgb_testkit::NatsServer;
use tokio_util::sync::CancellationToken;

const ISSUES: &str = "pLnPartnerIssues00000000000A";
const PERSON: (&str, &str) = ("2a1b0c3d-0000-4000-8000-000000000102", "Pat Planner");
/// How often the inspect API is read while changes are in flight.
const WATCH_EVERY: Duration = Duration::from_millis(20);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

struct Running {
    nats: NatsServer,
    sandbox: Sandbox,
    bus: Bus,
    shutdown: CancellationToken,
    services: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

async fn start(poll_interval_ms: u64) -> anyhow::Result<Running> {
    let nats = NatsServer::start().await?;
    let sandbox = Sandbox::start(SandboxConfig::default()).await?;
    let env = tgb_sandbox::TgbEnv::new(nats.url())
        .sandbox(&sandbox)
        .set(
            "TGB_ROUTING__GRAPH__POLL_INTERVAL_MS",
            poll_interval_ms.to_string(),
        )
        .vars();
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../config/tg-bridge.toml");
    let config = || Config::load_from(Some(&file), env.clone()).context("configuration");
    let shutdown = CancellationToken::new();
    let planner = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let egress = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let services = vec![
        tokio::spawn(planner_adapter::serve(config()?, planner, shutdown.clone())),
        tokio::spawn(tg_egress::serve(config()?, egress, shutdown.clone())),
    ];
    let bus = Bus::connect(&nats.url(), None, BusConfig::default()).await?;
    Ok(Running {
        nats,
        sandbox,
        bus,
        shutdown,
        services,
    })
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        for s in self.services {
            let _ = tokio::time::timeout(Duration::from_secs(20), s).await;
        }
        self.sandbox.shutdown().await;
        drop(self.nats);
    }
}

/// Comments tg-bridge posted (through the TG API), per case, from the inspect API.
async fn comments(http: &reqwest::Client, base: &str) -> anyhow::Result<HashMap<String, usize>> {
    let state: Value = http
        .get(format!("{base}/_sandbox/state"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let mut out = HashMap::new();
    for c in state["tg"]["comments"].as_array().into_iter().flatten() {
        if c["source"] == "api" {
            let case = c["case_id"].as_str().unwrap_or_default().to_owned();
            *out.entry(case).or_default() += 1;
        }
    }
    Ok(out)
}

/// Raises `n` TG cases and waits for their triage tasks: (case id, task id).
async fn cases_with_tasks(r: &Running, n: usize) -> anyhow::Result<Vec<(String, String)>> {
    let mut created = r
        .bus
        .client()
        .subscribe(PlannerTaskCreated::SUBJECT)
        .await?;
    r.bus.client().flush().await?;
    let partner = TgPartner {
        qualifier: "ZZ".into(),
        id: "ACME01".into(),
        name: "Acme Corp".into(),
    };
    let mut cases = Vec::new();
    for i in 0..n {
        let mut raise = RaiseCase::new(partner.clone(), format!("Price list mismatch {i}"));
        raise.category = "pricing".into();
        let ev = r.sandbox.tg().raise_case(raise)?;
        let case_id = ev.data["case_id"]
            .as_str()
            .context("raised case has no id")?
            .to_owned();
        let mut meta = EventMeta::new(Origin::Tg);
        meta.correlation_id = case_id.clone();
        meta.partner = Some(PartnerRef {
            qualifier: "ZZ".into(),
            id: "ACME01".into(),
            name: "Acme Corp".into(),
        });
        let opened = tgb_proto::TgCaseOpened {
            meta: Some(meta),
            case: Some(tgb_proto::TgCase {
                case_id: case_id.clone(),
                revision: 1,
                title: format!("Price list mismatch {i}"),
                category: tgb_proto::CaseCategory::Pricing as i32,
                priority: tgb_proto::CasePriority::Normal as i32,
                ..Default::default()
            }),
        };
        r.bus.publisher().publish(&opened).await?;
        cases.push(case_id);
    }
    let mut tasks: HashMap<String, String> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while tasks.len() < n {
        let msg = tokio::time::timeout_at(deadline, created.next())
            .await
            .context("triage tasks were not all created within 120 s")?
            .context("subscription ended")?;
        let ev = PlannerTaskCreated::decode(msg.payload.as_ref())?;
        let task = ev.task.unwrap_or_default();
        if task.plan_id != ISSUES {
            bail!(
                "case {} was routed to plan {}, not the issues plan",
                ev.tg_case_id,
                task.plan_id
            );
        }
        tasks.insert(ev.tg_case_id, task.task_id);
    }
    Ok(cases
        .into_iter()
        .filter_map(|c| tasks.get(&c).map(|t| (c, t.clone())))
        .collect())
}

/// The next change of a task: in progress, then blocked and back (each one a new progress, so
/// each one a TG comment).
fn change(step: usize) -> Value {
    match step {
        0 => json!({"percentComplete": 50}),
        s if s % 2 == 1 => json!({"appliedCategories": {"category1": true}}),
        _ => json!({"appliedCategories": {"category1": false}}),
    }
}

fn is_task_list(c: &tgb_sandbox::CallRecord) -> bool {
    c.method == "GET" && c.path.ends_with("/tasks")
}

struct Pending {
    case: String,
    expect: usize,
    at: Instant,
}

struct Run {
    poll_interval_ms: u64,
    create_requests_per_task: f64,
    delays_ms: Vec<f64>,
    list_requests: HashMap<String, usize>,
    window: Duration,
}

async fn measure(poll_interval_ms: u64, n_cases: usize, samples: usize) -> anyhow::Result<Run> {
    let r = start(poll_interval_ms).await?;
    let base = r.sandbox.base_url();
    let http = reqwest::Client::new();
    r.sandbox.calls().clear();
    let cases = cases_with_tasks(&r, n_cases).await?;
    // What creating one triage task cost in Graph requests (the poller's lists aside).
    let create_requests = r
        .sandbox
        .calls()
        .of_system("graph")
        .iter()
        .filter(|c| !c.scripted && !is_task_list(c))
        .count();
    let baseline = comments(&http, &base).await?;
    eprintln!(
        "poll {poll_interval_ms} ms: {} triage tasks created; {samples} changes follow",
        cases.len()
    );

    // Changes at a steady pace, out of step with the poll interval so they land at every
    // phase of a cycle.
    let pace = Duration::from_millis((poll_interval_ms * 37 / 100).max(50));
    let pending: Arc<Mutex<Vec<Pending>>> = Arc::default();
    let delays: Arc<Mutex<Vec<f64>>> = Arc::default();
    let busy: Arc<Mutex<HashMap<String, bool>>> = Arc::default();
    let stop = CancellationToken::new();
    let watcher = {
        let (pending, delays, busy, stop) =
            (pending.clone(), delays.clone(), busy.clone(), stop.clone());
        let (http, base) = (http.clone(), base.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                if let Ok(counts) = comments(&http, &base).await {
                    let now = Instant::now();
                    let mut p = pending.lock().unwrap();
                    p.retain(|s| {
                        if counts.get(&s.case).copied().unwrap_or(0) >= s.expect {
                            delays
                                .lock()
                                .unwrap()
                                .push(now.duration_since(s.at).as_secs_f64() * 1000.0);
                            busy.lock().unwrap().insert(s.case.clone(), false);
                            false
                        } else {
                            true
                        }
                    });
                }
                tokio::time::sleep(WATCH_EVERY).await;
            }
        })
    };

    r.sandbox.calls().clear();
    let started = Instant::now();
    let mut steps: HashMap<String, usize> = HashMap::new();
    let mut next = 0usize;
    let mut sent = 0usize;
    let mut ticks = tokio::time::interval(pace);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while sent < samples {
        ticks.tick().await;
        // The next task whose previous change has reached TG.
        let Some(i) = (0..cases.len())
            .map(|k| (next + k) % cases.len())
            .find(|&k| {
                !busy
                    .lock()
                    .unwrap()
                    .get(&cases[k].0)
                    .copied()
                    .unwrap_or(false)
            })
        else {
            continue;
        };
        next = i + 1;
        let (case, task) = &cases[i];
        let step = steps.entry(case.clone()).or_default();
        let expect = baseline.get(case).copied().unwrap_or(0) + *step + 1;
        busy.lock().unwrap().insert(case.clone(), true);
        let at = Instant::now();
        http.post(format!("{base}/graph/_sandbox/tasks/{task}/as-user"))
            .json(&json!({"userId": PERSON.0, "userName": PERSON.1, "task": change(*step)}))
            .send()
            .await?
            .error_for_status()
            .with_context(|| format!("changing task {task} as a person"))?;
        pending.lock().unwrap().push(Pending {
            case: case.clone(),
            expect,
            at,
        });
        *step += 1;
        sent += 1;
    }
    let deadline =
        Instant::now() + Duration::from_millis(poll_interval_ms * 3) + Duration::from_secs(60);
    while !pending.lock().unwrap().is_empty() {
        if Instant::now() > deadline {
            bail!(
                "{} changes never reached the TG thread",
                pending.lock().unwrap().len()
            );
        }
        tokio::time::sleep(WATCH_EVERY).await;
    }
    let window = started.elapsed();
    stop.cancel();
    let _ = watcher.await;
    let mut list_requests = HashMap::new();
    for c in r.sandbox.calls().of_system("graph") {
        if !c.scripted && is_task_list(&c) {
            *list_requests.entry(c.path.clone()).or_default() += 1;
        }
    }
    r.stop().await;
    let mut delays_ms = delays.lock().unwrap().clone();
    delays_ms.sort_by(f64::total_cmp);
    Ok(Run {
        poll_interval_ms,
        create_requests_per_task: create_requests as f64 / n_cases.max(1) as f64,
        delays_ms,
        list_requests,
        window,
    })
}

fn main() -> anyhow::Result<()> {
    let intervals: Vec<u64> = std::env::var("TGB_BENCH_INTERVALS_MS")
        .unwrap_or_else(|_| "30000,2000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let n_cases: usize = env_or("TGB_BENCH_CASES", 10);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut results = Vec::new();
    for interval in intervals {
        let samples: usize = env_or(
            "TGB_BENCH_SAMPLES",
            if interval >= 10_000 { 12 } else { 40 },
        );
        let run = runtime.block_on(measure(interval, n_cases, samples))?;
        let d = &run.delays_ms;
        let (p50, p95, max) = (percentile(d, 0.50), percentile(d, 0.95), percentile(d, 1.0));
        let cycles = run.window.as_secs_f64() * 1000.0 / run.poll_interval_ms as f64;
        let mut per_cycle: Vec<(String, f64)> = run
            .list_requests
            .iter()
            .map(|(path, n)| (path.clone(), (*n as f64 / cycles * 100.0).round() / 100.0))
            .collect();
        per_cycle.sort_by(|a, b| a.0.cmp(&b.0));
        let per_cycle_text: Vec<String> = per_cycle
            .iter()
            .map(|(path, n)| format!("{path}: {n}"))
            .collect();
        let per_cycle: serde_json::Map<String, Value> =
            per_cycle.into_iter().map(|(p, n)| (p, json!(n))).collect();
        println!(
            "planner change → TG comment, poll every {} ms, {} samples: p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms (min {:.0} ms); task-list requests per plan per cycle: {}; Graph requests per triage task created: {:.2}",
            run.poll_interval_ms,
            d.len(),
            p50,
            p95,
            max,
            percentile(d, 0.0),
            per_cycle_text.join(", "),
            run.create_requests_per_task
        );
        results.push(json!({
            "poll_interval_ms": run.poll_interval_ms,
            "cases": n_cases,
            "samples": d.len(),
            "p50_ms": p50.round(),
            "p95_ms": p95.round(),
            "max_ms": max.round(),
            "min_ms": percentile(d, 0.0).round(),
            "delays_ms": d.iter().map(|v| v.round()).collect::<Vec<_>>(),
            "task_list_requests_per_plan_per_cycle": per_cycle,
            "graph_requests_per_triage_task_created": run.create_requests_per_task,
        }));
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.canonicalize().unwrap_or(workspace).join("target"))
        .join("bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("planner-poll-delay.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&json!({"bench": "planner poll delay", "runs": results}))?,
    )?;
    println!("written to {}", path.display());
    Ok(())
}
