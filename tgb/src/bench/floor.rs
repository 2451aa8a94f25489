//! The floor: what the smallest pipeline of a case's shape costs on the same stack, measured in
//! the same run as a case.
//!
//! A new case is one HTTP request answered after an acknowledged JetStream publish, then one
//! delivery to each of three durable consumers (dynamics-adapter, planner-adapter and
//! sla-monitor), each of which writes something and acknowledges. The floor is that shape and
//! nothing else, built from the parts tg-bridge is built from (axum, async-nats, tokio's
//! current-thread runtime, nats-server with a file store), each part in its own process as the
//! services are:
//!
//! - `tgb bench-floor ingress`: `POST /` publishes the body and answers 202 once the broker
//!   acknowledged it;
//! - `tgb bench-floor consumer` (three of them): a durable pull consumer of that stream whose
//!   handling is one KV put (awaited) of the message, keyed by its stream sequence, then the ack;
//! - `tgb bench-floor one-process`: the same four parts in one process on one NATS connection,
//!   measured after them (what merging the services would leave).
//!
//! It stores four messages per case (the event and one KV entry per consumer), does no Dataverse
//! or Graph request, no read, no dedup, no ledger. Whatever tg-bridge does per case costs at least
//! this; `case / floor` holds across machines as the raw ratio does, and a target below the floor
//! is one no code of ours can reach on that stack and machine.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, consumer, kv, stream};
use futures::StreamExt as _;
use serde::Serialize;
use tokio::process::Child;

use super::cost::{
    Snapshot, cpu_ticks, grown, monitor_json, parse_jsz, parse_varz, stored_between, wakeups_of,
};
use super::harness::BenchSystem;
use super::procs::{command_with_deathsig, free_addr};

/// The floor's stream.
pub const STREAM: &str = "TGB_BENCH_FLOOR";
/// Its one subject.
const SUBJECT: &str = "tgb-bench.floor";
/// Consumers of a new case (dynamics-adapter, planner-adapter, sla-monitor).
pub const CONSUMERS: usize = 3;
/// The ingress's process name in the figures.
const INGRESS: &str = "floor-ingress";

/// A role of `tgb bench-floor`.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum Role {
    /// `POST /`: an acknowledged publish to the floor's stream, then 202; `GET /readyz`: 200.
    Ingress {
        /// NATS URL.
        nats: String,
        /// Address to listen on.
        listen: SocketAddr,
    },
    /// One durable pull consumer of the floor's stream: a KV put per message, then the ack.
    Consumer {
        /// NATS URL.
        nats: String,
        /// The durable consumer (created by the bench).
        consumer: String,
        /// The KV bucket (created by the bench).
        bucket: String,
    },
    /// The ingress and the three consumers in one process, on one NATS connection.
    OneProcess {
        /// NATS URL.
        nats: String,
        /// Address to listen on.
        listen: SocketAddr,
    },
}

/// The ingress's routes on `js`.
fn ingress(js: jetstream::Context) -> axum::Router {
    axum::Router::new()
        .route(
            "/",
            axum::routing::post(
                |axum::extract::State(js): axum::extract::State<jetstream::Context>,
                 body: bytes::Bytes| async move {
                    let acked = match js.publish(SUBJECT, body).await {
                        Ok(ack) => ack.await.is_ok(),
                        Err(_) => false,
                    };
                    if acked {
                        axum::http::StatusCode::ACCEPTED
                    } else {
                        axum::http::StatusCode::SERVICE_UNAVAILABLE
                    }
                },
            ),
        )
        .route("/readyz", axum::routing::get(|| async { "ready" }))
        .with_state(js)
}

async fn serve_ingress(js: jetstream::Context, listen: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    axum::serve(listener, ingress(js)).await.context("serving")
}

/// One consumer's loop: a KV put of each message, keyed by its stream sequence, then the ack.
async fn consume(js: jetstream::Context, consumer: String, bucket: String) -> anyhow::Result<()> {
    let store = js.get_key_value(&bucket).await.context("the bucket")?;
    let pull: consumer::PullConsumer = js
        .get_stream(STREAM)
        .await
        .context("the stream")?
        .get_consumer(&consumer)
        .await
        .map_err(|e| anyhow::anyhow!("the consumer: {e}"))?;
    let mut messages = pull.messages().await.context("pulling")?;
    while let Some(next) = messages.next().await {
        let Ok(message) = next else { continue };
        let seq = message
            .info()
            .map_err(|e| anyhow::anyhow!("message info: {e}"))?
            .stream_sequence;
        store
            .put(format!("case-{seq}"), message.payload.clone())
            .await
            .context("KV put")?;
        message
            .ack()
            .await
            .map_err(|e| anyhow::anyhow!("ack: {e}"))?;
    }
    bail!("the pull stream ended")
}

/// Runs a role until killed, on a current-thread runtime as the services run.
pub async fn serve(role: Role) -> anyhow::Result<()> {
    let connect = |nats: String| async move {
        anyhow::Ok(jetstream::new(
            async_nats::connect(&nats).await.context("NATS")?,
        ))
    };
    match role {
        Role::Ingress { nats, listen } => serve_ingress(connect(nats).await?, listen).await,
        Role::Consumer {
            nats,
            consumer,
            bucket,
        } => consume(connect(nats).await?, consumer, bucket).await,
        Role::OneProcess { nats, listen } => {
            let js = connect(nats).await?;
            let mut consumers = tokio::task::JoinSet::new();
            for i in 1..=CONSUMERS {
                consumers.spawn(consume(js.clone(), consumer_name(i), bucket(i)));
            }
            tokio::select! {
                served = serve_ingress(js, listen) => served,
                Some(ended) = consumers.join_next() => ended?,
            }
        }
    }
}

/// What the floor costs, per case.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FloorCost {
    /// Cases offered in the measured window.
    pub cases: usize,
    /// CPU of the ingress and the three consumers together, µs per case.
    pub services_cpu_us_per_case: f64,
    /// CPU of nats-server, µs per case.
    pub nats_cpu_us_per_case: f64,
    /// CPU of each floor process, µs per case.
    pub cpu_us_per_case: BTreeMap<String, f64>,
    /// Wake-ups of the floor's processes together, per case.
    pub services_wakeups_per_case: f64,
    /// Wake-ups of nats-server per case.
    pub nats_wakeups_per_case: f64,
    /// Messages into and out of the broker per case.
    pub broker_in_msgs_per_case: f64,
    /// Messages out of the broker per case.
    pub broker_out_msgs_per_case: f64,
    /// JetStream messages stored per case (4 by construction: the check that it ran as meant).
    pub js_stored_per_case: f64,
    /// nats-server's CPU per case in raw JetStream messages (the same run's raw measure).
    pub nats_cpu_per_case_in_raw_messages: f64,
}

impl FloorCost {
    /// The figures per case between two snapshots of the floor's processes (`nats-server`
    /// among them) and its streams; `ticks` is the clock ticks per second.
    pub fn compute(
        before: &Snapshot,
        after: &Snapshot,
        ticks: u64,
        cases: usize,
        raw_nats_cpu_us_per_message: f64,
    ) -> FloorCost {
        let n = cases.max(1) as f64;
        let cpu = grown(&before.cpu_ticks, &after.cpu_ticks);
        let wakeups = grown(&before.wakeups, &after.wakeups);
        let us = |t: u64| t as f64 * 1e6 / ticks.max(1) as f64 / n;
        let is_floor = |p: &str| p != "nats-server";
        let cpu_us_per_case: BTreeMap<String, f64> = cpu
            .iter()
            .filter(|(p, _)| is_floor(p))
            .map(|(p, t)| (p.clone(), us(*t)))
            .collect();
        let nats_cpu_us_per_case = cpu.get("nats-server").map_or(0.0, |t| us(*t));
        let stored: u64 = stored_between(before, after).values().sum();
        FloorCost {
            cases,
            services_cpu_us_per_case: cpu_us_per_case.values().sum(),
            nats_cpu_us_per_case,
            cpu_us_per_case,
            services_wakeups_per_case: wakeups
                .iter()
                .filter(|(p, _)| is_floor(p))
                .map(|(_, w)| *w as f64)
                .sum::<f64>()
                / n,
            nats_wakeups_per_case: wakeups.get("nats-server").map_or(0.0, |w| *w as f64 / n),
            broker_in_msgs_per_case: after.in_msgs.saturating_sub(before.in_msgs) as f64 / n,
            broker_out_msgs_per_case: after.out_msgs.saturating_sub(before.out_msgs) as f64 / n,
            js_stored_per_case: stored as f64 / n,
            nats_cpu_per_case_in_raw_messages: nats_cpu_us_per_case
                / raw_nats_cpu_us_per_message.max(1e-9),
        }
    }
}

/// One floor process.
struct FloorProcess {
    name: String,
    child: Child,
    log: PathBuf,
}

impl FloorProcess {
    fn start(name: &str, role_args: &[String], logs: &Path) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("the path of this executable")?;
        let log = logs.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).with_context(|| format!("{}", log.display()))?;
        let child = command_with_deathsig(&exe)
            .arg("bench-floor")
            .args(role_args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(FloorProcess {
            name: name.to_owned(),
            child,
            log,
        })
    }

    fn pid(&self) -> anyhow::Result<u32> {
        self.child
            .id()
            .with_context(|| format!("{} is not running", self.name))
    }

    /// An error when it exited, with the end of its log.
    fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(10).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("{} exited ({status}):\n{}", self.name, tail.join("\n"));
        }
        Ok(())
    }
}

/// Consumer `i`'s KV bucket.
fn bucket(i: usize) -> String {
    format!("TGB_BENCH_FLOOR_{i}")
}

/// Consumer `i`'s durable name.
fn consumer_name(i: usize) -> String {
    format!("floor-{i}")
}

async fn set_up(js: &jetstream::Context) -> anyhow::Result<()> {
    tear_down(js).await;
    let s = js
        .create_stream(stream::Config {
            name: STREAM.into(),
            subjects: vec![SUBJECT.into()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .context("creating the floor's stream")?;
    for i in 1..=CONSUMERS {
        js.create_key_value(kv::Config {
            bucket: bucket(i),
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .context("creating a floor bucket")?;
        s.create_consumer(consumer::pull::Config {
            durable_name: Some(consumer_name(i)),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .context("creating a floor consumer")?;
    }
    Ok(())
}

async fn tear_down(js: &jetstream::Context) {
    let _ = js.delete_stream(STREAM).await;
    for i in 1..=CONSUMERS {
        let _ = js.delete_key_value(bucket(i)).await;
    }
}

/// Waits until `f` holds, every floor process still running, or fails after `within`.
async fn wait_for<F, Fut>(
    procs: &mut [FloorProcess],
    within: Duration,
    what: &str,
    mut f: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        for p in procs.iter_mut() {
            p.check_running()?;
        }
        if f().await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("the floor: {what} not within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every floor consumer's info answers and satisfies `holds`.
async fn every_consumer(js: &jetstream::Context, holds: impl Fn(&consumer::Info) -> bool) -> bool {
    let Ok(s) = js.get_stream(STREAM).await else {
        return false;
    };
    for i in 1..=CONSUMERS {
        let Ok(mut c) = s
            .get_consumer::<consumer::pull::Config>(&consumer_name(i))
            .await
        else {
            return false;
        };
        if !c.info().await.is_ok_and(&holds) {
            return false;
        }
    }
    true
}

/// Every floor consumer has acknowledged the stream up to `last`.
async fn all_acked(js: &jetstream::Context, last: u64) -> bool {
    every_consumer(js, |info| {
        info.ack_floor.stream_sequence >= last && info.num_ack_pending == 0
    })
    .await
}

/// Every floor consumer has a pull request waiting.
async fn all_pulling(js: &jetstream::Context) -> bool {
    every_consumer(js, |info| info.num_waiting > 0).await
}

/// Offers `n` requests of `payload` at `rate` per second; an error unless every one got its 202.
async fn offer(
    http: &reqwest::Client,
    url: &str,
    payload: &[u8],
    rate: f64,
    n: usize,
) -> anyhow::Result<()> {
    let start = tokio::time::Instant::now();
    let mut answers = Vec::with_capacity(n);
    for i in 0..n {
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
        let request = http.post(url).body(payload.to_vec()).send();
        answers.push(tokio::spawn(request));
    }
    for a in answers {
        let status = a.await?.context("POST to the floor's ingress")?.status();
        if status != reqwest::StatusCode::ACCEPTED {
            bail!("the floor's ingress answered {status}");
        }
    }
    Ok(())
}

async fn last_seq(js: &jetstream::Context) -> anyhow::Result<u64> {
    let mut s = js.get_stream(STREAM).await.context("the floor's stream")?;
    Ok(s.info().await.context("stream info")?.state.last_sequence)
}

async fn snapshot(sys: &BenchSystem, pids: &[(String, u32)]) -> anyhow::Result<Snapshot> {
    let varz = monitor_json(sys, "/varz").await?;
    let (in_msgs, out_msgs) = parse_varz(&varz)?;
    let (_, streams) = parse_jsz(&monitor_json(sys, "/jsz?accounts=true&streams=true").await?)?;
    Ok(Snapshot {
        cpu_ticks: cpu_ticks(pids),
        wakeups: wakeups_of(pids),
        in_msgs,
        out_msgs,
        stream_last_seq: streams
            .into_iter()
            .filter(|(s, _)| s == STREAM || s.starts_with("KV_TGB_BENCH_FLOOR_"))
            .collect(),
        ..Snapshot::default()
    })
}

/// How the floor's parts are laid out in processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Each part its own process, as tg-bridge's services run.
    Processes,
    /// All four in one process on one NATS connection: what merging the services would leave.
    OneProcess,
}

/// The floor in both shapes.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Floors {
    /// Each part its own process: the floor a case is compared with.
    pub processes: FloorCost,
    /// The same parts in one process.
    pub one_process: FloorCost,
}

/// Runs the floor on the bench's broker in both shapes: `cases` requests of `payload` at `rate`
/// per second after a warm-up, its processes' logs in `logs`.
pub async fn run(
    sys: &BenchSystem,
    payload: &[u8],
    rate: f64,
    cases: usize,
    raw_nats_cpu_us_per_message: f64,
    logs: &Path,
) -> anyhow::Result<Floors> {
    let one = |shape| async move {
        set_up(&sys.js).await?;
        let result = measure(
            sys,
            shape,
            payload,
            rate,
            cases,
            raw_nats_cpu_us_per_message,
            logs,
        )
        .await;
        tear_down(&sys.js).await;
        result
    };
    Ok(Floors {
        processes: one(Shape::Processes).await?,
        one_process: one(Shape::OneProcess).await?,
    })
}

async fn measure(
    sys: &BenchSystem,
    shape: Shape,
    payload: &[u8],
    rate: f64,
    cases: usize,
    raw_nats_cpu_us_per_message: f64,
    logs: &Path,
) -> anyhow::Result<FloorCost> {
    let nats = sys.nats.url();
    let listen = free_addr()?;
    let mut procs = Vec::new();
    match shape {
        Shape::Processes => {
            procs.push(FloorProcess::start(
                INGRESS,
                &["ingress".into(), nats.clone(), listen.to_string()],
                logs,
            )?);
            for i in 1..=CONSUMERS {
                procs.push(FloorProcess::start(
                    &format!("floor-consumer-{i}"),
                    &["consumer".into(), nats.clone(), consumer_name(i), bucket(i)],
                    logs,
                )?);
            }
        }
        Shape::OneProcess => procs.push(FloorProcess::start(
            "floor-one-process",
            &["one-process".into(), nats.clone(), listen.to_string()],
            logs,
        )?),
    }
    let ready = format!("http://{listen}/readyz");
    let start_up = Duration::from_secs(30);
    wait_for(&mut procs, start_up, "the ingress's readiness", || async {
        matches!(sys.http.get(&ready).send().await, Ok(r) if r.status().is_success())
    })
    .await?;
    wait_for(&mut procs, start_up, "the consumers' first pulls", || {
        all_pulling(&sys.js)
    })
    .await?;

    let url = format!("http://{listen}/");
    let drain = Duration::from_secs(60);
    let warm_up = 50;
    offer(&sys.http, &url, payload, rate, warm_up).await?;
    let last = last_seq(&sys.js).await?;
    wait_for(&mut procs, drain, "the warm-up's acks", || {
        all_acked(&sys.js, last)
    })
    .await?;

    let mut pids: Vec<(String, u32)> = procs
        .iter()
        .map(|p| Ok((p.name.clone(), p.pid()?)))
        .collect::<anyhow::Result<_>>()?;
    pids.push((
        "nats-server".into(),
        sys.nats.pid().context("nats-server is not running")?,
    ));
    let ticks = super::procs::clock_ticks();
    let before = snapshot(sys, &pids).await?;
    offer(&sys.http, &url, payload, rate, cases).await?;
    let last = last_seq(&sys.js).await?;
    wait_for(&mut procs, drain, "the acks of every case", || {
        all_acked(&sys.js, last)
    })
    .await?;
    let after = snapshot(sys, &pids).await?;
    Ok(FloorCost::compute(
        &before,
        &after,
        ticks,
        cases,
        raw_nats_cpu_us_per_message,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(
        cpu: &[(&str, u64)],
        wakeups: &[(&str, u64)],
        io: (u64, u64),
        seqs: &[(&str, u64)],
    ) -> Snapshot {
        let map = |v: &[(&str, u64)]| v.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect();
        Snapshot {
            cpu_ticks: map(cpu),
            wakeups: map(wakeups),
            in_msgs: io.0,
            out_msgs: io.1,
            stream_last_seq: map(seqs),
            ..Snapshot::default()
        }
    }

    #[test]
    fn two_snapshots_make_the_floor_per_case() {
        let before = snap(
            &[
                ("floor-ingress", 10),
                ("floor-consumer-1", 5),
                ("nats-server", 100),
            ],
            &[
                ("floor-ingress", 7),
                ("floor-consumer-1", 3),
                ("nats-server", 50),
            ],
            (1_000, 900),
            &[(STREAM, 50), ("KV_TGB_BENCH_FLOOR_1", 50)],
        );
        let after = snap(
            &[
                ("floor-ingress", 30),
                ("floor-consumer-1", 15),
                ("nats-server", 200),
            ],
            &[
                ("floor-ingress", 167),
                ("floor-consumer-1", 203),
                ("nats-server", 2_050),
            ],
            (11_000, 9_900),
            &[(STREAM, 150), ("KV_TGB_BENCH_FLOOR_1", 150)],
        );
        // 100 cases, 100 ticks a second: one tick is 10,000 µs, 100 µs per case.
        let f = FloorCost::compute(&before, &after, 100, 100, 20.0);
        assert_eq!(f.cpu_us_per_case["floor-ingress"], 2_000.0);
        assert_eq!(f.cpu_us_per_case["floor-consumer-1"], 1_000.0);
        assert!(!f.cpu_us_per_case.contains_key("nats-server"));
        assert_eq!(f.services_cpu_us_per_case, 3_000.0);
        assert_eq!(f.nats_cpu_us_per_case, 10_000.0);
        assert_eq!(f.services_wakeups_per_case, 3.6);
        assert_eq!(f.nats_wakeups_per_case, 20.0);
        assert_eq!(f.broker_in_msgs_per_case, 100.0);
        assert_eq!(f.broker_out_msgs_per_case, 90.0);
        assert_eq!(f.js_stored_per_case, 2.0);
        assert_eq!(f.nats_cpu_per_case_in_raw_messages, 500.0);
    }
}
