//! The cost section: what one case costs, measured from outside the services.
//!
//! After a warm-up, `cases` TG `case.created` webhooks are offered at a fixed rate below
//! saturation (limits off, as in the pipeline section). Before and after, one [`Snapshot`]:
//! each process's CPU (`/proc/<pid>/stat` utime + stime) and wake-ups (its threads'
//! voluntary context switches, a count that does not depend on the machine's speed, which CPU
//! at this rate follows), nats-server's `/varz` (messages in
//! and out) and `/jsz` (API requests, and each stream's last sequence: the messages stored,
//! whether or not a limit removed them since), and the Dataverse and Graph calls in the
//! sandbox's call log. [`CostResult::compute`] turns the two into figures per case.
//!
//! The same run measures raw JetStream's broker CPU per message (acked publishes into a file
//! stream, each consumed and acked), so `nats_cpu_us_per_case / raw_nats_cpu_us_per_message`
//! is a count of "raw messages" a case costs the broker, which holds across machines.
//!
//! Beside them, the floor ([`super::floor`]): the smallest pipeline of a case's shape on the
//! same stack, at the same rate on the same broker, so a case's CPU also reads in floors.
//!
//! The stored messages are counted once more after the drain, when planner-adapter's plan poll
//! and dynamics-adapter's change-tracking poll have each ended a cycle that began after it
//! (`tgb_planner_poll_cycles_total`, `tgb_dynamics_poll_rounds_total`): what those pollers
//! store for a case on their own clocks (a ledger note per task found as tg-bridge wrote it,
//! an incident's version) is part of what a case stores. The CPU and broker figures stay those
//! of the window up to the drain (an idle wait for a poll would add the broker's idle CPU).
//!
//! After it, a short second pass (the breakdown) taps every message through the broker with one
//! core subscription to `>` and counts them by class ([`subject_class`]: event publishes,
//! ledger appends, KV puts and gets per bucket, deliveries and acks per consumer, pull
//! requests, heartbeats, publish acknowledgements). The tap's own deliveries double the
//! broker's out messages, so that pass is kept out of the CPU and message figures above.
//!
//! KV reads come from that pass only (`kv_reads_per_case`): a KV get stores nothing and `/jsz`
//! does not count it apart from other requests; it is one message in `broker_in_msgs` and one
//! out.

use std::collections::BTreeMap;

use anyhow::Context as _;
use serde::Serialize;
use serde_json::Value;

use super::floor::{FloorCost, Floors};
use super::harness::{BenchSystem, now_ms};
use super::pipeline::{self, Percentiles};
use super::procs::{clock_ticks, sample};

/// Settings of the cost section.
#[derive(Clone, Debug, Serialize)]
pub struct CostOptions {
    /// The offered load, cases/s (below saturation).
    pub rate: f64,
    /// Cases offered.
    pub cases: usize,
    /// Longest wait after the last case for its incidents and tasks, seconds.
    pub drain_secs: f64,
    /// Messages of the raw JetStream measure.
    pub raw_messages: usize,
    /// Partners the cases come from.
    pub partners: usize,
}

/// The counters read at one time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Process → CPU time (utime + stime), clock ticks.
    pub cpu_ticks: BTreeMap<String, u64>,
    /// Process → wake-ups so far ([`super::procs::wakeups`]).
    pub wakeups: BTreeMap<String, u64>,
    /// `/varz` `in_msgs`.
    pub in_msgs: u64,
    /// `/varz` `out_msgs`.
    pub out_msgs: u64,
    /// `/varz` `gomaxprocs`: the broker's threads running Go code at once (`None` when the
    /// server does not say).
    pub broker_threads: Option<u64>,
    /// `/jsz` `api.total`.
    pub js_api_total: u64,
    /// Stream → last sequence (messages ever stored).
    pub stream_last_seq: BTreeMap<String, u64>,
    /// Dataverse calls so far (tg-bridge's, scripted ones aside).
    pub dataverse_calls: u64,
    /// Graph calls so far, plan polls aside.
    pub graph_calls: u64,
    /// Graph plan polls so far (planner-adapter's own clock, not caused by a case).
    pub graph_plan_polls: u64,
    /// Dataverse and Graph calls so far by `"{system} {method} {route}"`, plan polls aside.
    pub requests_by_route: BTreeMap<String, u64>,
}

/// Raw JetStream's broker cost, measured in the same run.
#[derive(Clone, Debug, Serialize)]
pub struct RawBrokerCost {
    /// Messages published (each acked, delivered and acked by a durable pull consumer).
    pub messages: usize,
    /// nats-server CPU per message, µs.
    pub nats_cpu_us_per_message: f64,
}

/// What one case costs.
#[derive(Clone, Debug, Serialize)]
pub struct CostResult {
    /// The settings.
    pub options: CostOptions,
    /// The load actually offered, cases/s.
    pub achieved_offered_per_sec: f64,
    /// Cases offered.
    pub cases: usize,
    /// Cases with both their incident and their task.
    pub completed: usize,
    /// Every case completed before the drain deadline.
    pub drained: bool,
    /// CPU of the six services together, µs per case.
    pub services_cpu_us_per_case: f64,
    /// CPU of nats-server, µs per case.
    pub nats_cpu_us_per_case: f64,
    /// CPU of each process (the services, nats-server, the bench process holding the sandbox
    /// and the load), µs per case.
    pub cpu_us_per_case: BTreeMap<String, f64>,
    /// Wake-ups of the six services together per case (their threads woken after blocking:
    /// at this rate, one per round trip at each end, give or take what arrives together).
    pub services_wakeups_per_case: f64,
    /// Wake-ups per case of each process (nats-server's every thread).
    pub wakeups_per_case: BTreeMap<String, f64>,
    /// Messages into the broker per case (`/varz` `in_msgs`: publishes, acks, API requests,
    /// pull requests, KV gets).
    pub broker_in_msgs_per_case: f64,
    /// Messages out of the broker per case (`/varz` `out_msgs`).
    pub broker_out_msgs_per_case: f64,
    /// The broker's `GOMAXPROCS` during the run (`/varz` `gomaxprocs`): its CPU and wake-ups
    /// per case depend on it (docs/benchmarks.md, "The broker's threads"), so results are
    /// compared at the same setting.
    pub broker_threads: Option<u64>,
    /// JetStream messages stored per case, all streams.
    pub js_stored_per_case: f64,
    /// JetStream messages stored per case, by stream.
    pub js_stored_per_case_by_stream: BTreeMap<String, f64>,
    /// KV writes per case (the `KV_*` streams' messages stored).
    pub kv_writes_per_case: f64,
    /// JetStream API requests per case (`/jsz` `api.total`).
    pub js_api_requests_per_case: f64,
    /// Dataverse requests per case (a `$batch` is one).
    pub dataverse_requests_per_case: f64,
    /// Graph HTTP requests per triage task created, plan polls aside (a `$batch` is one; Graph
    /// still counts each request inside it against its limits).
    pub graph_requests_per_task: f64,
    /// Graph plan polls during the run (not per case: they run on a clock).
    pub graph_plan_polls: u64,
    /// Dataverse and Graph requests per case by `"{system} {method} {route}"` (plan polls
    /// aside): which requests a case costs.
    pub requests_per_case_by_route: BTreeMap<String, f64>,
    /// Raw JetStream's broker cost in the same run.
    pub raw: RawBrokerCost,
    /// nats_cpu_us_per_case / raw.nats_cpu_us_per_message: a case's broker cost in raw
    /// messages.
    pub nats_cpu_per_case_in_raw_messages: f64,
    /// Case raised → incident created, ms.
    pub to_incident_ms: Percentiles,
    /// Case raised → triage task created, ms.
    pub to_task_ms: Percentiles,
    /// Messages into the broker per case by class, from the tapped second pass (empty when it
    /// did not run).
    pub broker_msgs_per_case_by_class: BTreeMap<String, f64>,
    /// KV reads per case (direct gets of every bucket), from the tapped pass; `None` when it did
    /// not run.
    pub kv_reads_per_case: Option<f64>,
    /// The floor in the same run: the smallest pipeline of a case's shape on the same stack,
    /// each part its own process ([`super::floor`]); `None` when it did not run.
    pub floor: Option<FloorCost>,
    /// The same floor with its parts in one process, on one NATS connection.
    pub floor_one_process: Option<FloorCost>,
    /// services_cpu_us_per_case / floor.services_cpu_us_per_case: a case's service CPU in
    /// floors, which holds across machines.
    pub services_cpu_in_floors: Option<f64>,
    /// nats_cpu_us_per_case / floor.nats_cpu_us_per_case.
    pub nats_cpu_in_floors: Option<f64>,
    /// The stored messages were counted once the poll cycles that see the run's tasks and
    /// incidents had ended (planner-adapter notes each task it finds as tg-bridge wrote it in
    /// the ledger; dynamics-adapter records each incident's version), not at the drain like the
    /// CPU and broker figures.
    pub stored_after_polls: bool,
}

impl CostResult {
    /// Puts the floor measured in the same run beside the case.
    pub fn set_floors(&mut self, floors: Floors) {
        self.floor_one_process = Some(floors.one_process);
        self.set_floor(floors.processes);
    }

    /// Puts the floor (its parts each in its own process) beside the case.
    pub fn set_floor(&mut self, floor: FloorCost) {
        let ratio = |case: f64, floor: f64| (floor > 0.0).then(|| case / floor);
        self.services_cpu_in_floors = ratio(
            self.services_cpu_us_per_case,
            floor.services_cpu_us_per_case,
        );
        self.nats_cpu_in_floors = ratio(self.nats_cpu_us_per_case, floor.nats_cpu_us_per_case);
        self.floor = Some(floor);
    }
}

/// What grew between two readings of counters by name, for the names read both times (a
/// process that could not be read before has no figure).
pub(super) fn grown(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(name, a)| Some((name.clone(), a.saturating_sub(*before.get(name)?))))
        .collect()
}

/// Messages stored per stream between two snapshots (a stream new since `before` from 0).
pub(super) fn stored_between(before: &Snapshot, after: &Snapshot) -> BTreeMap<String, u64> {
    after
        .stream_last_seq
        .iter()
        .map(|(s, a)| {
            let b = before.stream_last_seq.get(s).copied().unwrap_or(0);
            (s.clone(), a.saturating_sub(b))
        })
        .collect()
}

/// KV reads per case among the tapped pass's classes: its `kv get <bucket> <record>` ones.
pub fn kv_reads_of(classes: &BTreeMap<String, f64>) -> f64 {
    classes
        .iter()
        .filter(|(class, _)| class.starts_with("kv get "))
        .map(|(_, v)| v)
        .sum()
}

/// The six services' names (nats-server and the bench process are the others).
fn is_service(process: &str) -> bool {
    super::procs::SERVICES.contains(&process)
}

impl CostResult {
    /// The figures per case from the snapshots around the steady run; `ticks` is the clock
    /// ticks per second; `tasks` the triage tasks created.
    #[allow(clippy::too_many_arguments)]
    pub fn compute(
        options: CostOptions,
        before: &Snapshot,
        after: &Snapshot,
        ticks: u64,
        cases: usize,
        tasks: usize,
        raw: RawBrokerCost,
        achieved_offered_per_sec: f64,
        completed: usize,
        drained: bool,
        to_incident_ms: Percentiles,
        to_task_ms: Percentiles,
    ) -> CostResult {
        let per_case = |v: u64| v as f64 / cases.max(1) as f64;
        let us = |t: u64| t as f64 * 1e6 / ticks.max(1) as f64;
        // Per process, what grew between the snapshots, per case; and the six services' sum.
        let per_process =
            |b: &BTreeMap<String, u64>, a: &BTreeMap<String, u64>, f: &dyn Fn(u64) -> f64| {
                let each: BTreeMap<String, f64> =
                    grown(b, a).into_iter().map(|(p, v)| (p, f(v))).collect();
                let services = each
                    .iter()
                    .filter(|(p, _)| is_service(p))
                    .map(|(_, v)| v)
                    .sum();
                (each, services)
            };
        let (cpu_us_per_case, services_cpu_us_per_case) =
            per_process(&before.cpu_ticks, &after.cpu_ticks, &|t| {
                us(t) / cases.max(1) as f64
            });
        let (wakeups_per_case, services_wakeups_per_case) =
            per_process(&before.wakeups, &after.wakeups, &per_case);
        let nats_cpu_us_per_case = cpu_us_per_case.get("nats-server").copied().unwrap_or(0.0);
        let mut result = CostResult {
            achieved_offered_per_sec,
            cases,
            completed,
            drained,
            services_cpu_us_per_case,
            nats_cpu_us_per_case,
            nats_cpu_per_case_in_raw_messages: nats_cpu_us_per_case
                / raw.nats_cpu_us_per_message.max(1e-9),
            cpu_us_per_case,
            services_wakeups_per_case,
            wakeups_per_case,
            broker_in_msgs_per_case: per_case(after.in_msgs.saturating_sub(before.in_msgs)),
            broker_out_msgs_per_case: per_case(after.out_msgs.saturating_sub(before.out_msgs)),
            broker_threads: after.broker_threads,
            js_stored_per_case: 0.0,
            js_stored_per_case_by_stream: BTreeMap::new(),
            kv_writes_per_case: 0.0,
            js_api_requests_per_case: per_case(
                after.js_api_total.saturating_sub(before.js_api_total),
            ),
            dataverse_requests_per_case: per_case(
                after.dataverse_calls.saturating_sub(before.dataverse_calls),
            ),
            graph_requests_per_task: after.graph_calls.saturating_sub(before.graph_calls) as f64
                / tasks.max(1) as f64,
            graph_plan_polls: after
                .graph_plan_polls
                .saturating_sub(before.graph_plan_polls),
            requests_per_case_by_route: after
                .requests_by_route
                .iter()
                .map(|(r, a)| {
                    let b = before.requests_by_route.get(r).copied().unwrap_or(0);
                    (r.clone(), per_case(a.saturating_sub(b)))
                })
                .filter(|(_, v)| *v > 0.0)
                .collect(),
            raw,
            to_incident_ms,
            to_task_ms,
            options,
            broker_msgs_per_case_by_class: BTreeMap::new(),
            kv_reads_per_case: None,
            floor: None,
            floor_one_process: None,
            services_cpu_in_floors: None,
            nats_cpu_in_floors: None,
            stored_after_polls: false,
        };
        result.set_stored(before, after);
        result
    }

    /// The JetStream messages stored per case between `before` and `after` (all streams, by
    /// stream, and the KV writes among them).
    pub fn set_stored(&mut self, before: &Snapshot, after: &Snapshot) {
        let per_case = |v: u64| v as f64 / self.cases.max(1) as f64;
        let stored = stored_between(before, after);
        self.js_stored_per_case = per_case(stored.values().sum());
        self.kv_writes_per_case = per_case(
            stored
                .iter()
                .filter(|(s, _)| s.starts_with("KV_"))
                .map(|(_, v)| v)
                .sum(),
        );
        self.js_stored_per_case_by_stream = stored
            .iter()
            .map(|(s, v)| (s.clone(), per_case(*v)))
            .collect();
    }
}

/// The class of one message through the broker, from its subject, its reply subject and its
/// status: what the breakdown counts per case.
pub fn subject_class(subject: &str, reply: Option<&str>, status: Option<u16>) -> String {
    let tokens: Vec<&str> = subject.split('.').collect();
    let tail = |from: usize| tokens.get(from).copied().unwrap_or("?");
    if let Some(r) = reply
        && r.starts_with("$JS.ACK.")
    {
        // A JetStream delivery: its reply subject is the ack subject of its consumer.
        let ack: Vec<&str> = r.split('.').collect();
        let consumer = if ack.len() > 9 {
            ack[4]
        } else {
            ack.get(3).copied().unwrap_or("?")
        };
        return format!("deliver {consumer}");
    }
    match (tail(0), tail(1)) {
        ("$JS", "ACK") => {
            let consumer = if tokens.len() > 9 { tail(4) } else { tail(3) };
            format!("ack {consumer}")
        }
        ("$JS", "API") => match (tail(2), tail(3)) {
            ("CONSUMER", "MSG") => format!("pull {}", tail(6)),
            // The key's first token says which record (e.g. `planner-intent`, `dv`).
            ("DIRECT", "GET") => {
                format!("kv get {} {}", tail(4).trim_start_matches("KV_"), tail(7))
            }
            ("STREAM", "MSG") => format!("msg get {}", tail(5)),
            (a, b) => format!("js api {a}.{b}"),
        },
        ("$JS", "EVENT") => "advisory".into(),
        ("$JS", "FC") => "flow control".into(),
        ("$KV", bucket) => format!("kv put {bucket} {}", tail(2)),
        ("$O", bucket) => format!("object {bucket}"),
        ("_INBOX", _) => match status {
            Some(100) => "heartbeat".into(),
            // 404 answers a direct get of a missing key (a KV miss) or an empty no-wait pull;
            // 408 and 409 end a pull request. The description tells them apart.
            Some(code @ (404 | 408 | 409)) => format!("status {code}"),
            _ => "reply (acks of publishes and requests)".into(),
        },
        ("tgb", "ledger") => "ledger append".into(),
        ("tgb", "v1") => "event publish".into(),
        ("tgb", "dlq") => "dead letter".into(),
        ("tgb", "bench") => "bench".into(),
        (a, _) => format!("other {a}"),
    }
}

/// The tapped second pass: `cases` more cases at the section's rate with every broker message
/// counted by [`subject_class`]; per case.
async fn breakdown(
    sys: &mut BenchSystem,
    partners: &[tgb_sandbox::tg::model::PartnerRef],
    opts: &CostOptions,
    cases: usize,
) -> anyhow::Result<BTreeMap<String, f64>> {
    use futures::StreamExt as _;
    let mut tap = sys.client.subscribe(">").await.context("tap >")?;
    sys.client.flush().await.context("tap flush")?;
    let counting = tokio::spawn(async move {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        while let Some(m) = tap.next().await {
            if m.subject.as_str() == "tgb.bench.tap.end" {
                break;
            }
            let status = m.status.map(|s| s.as_u16());
            let mut class = subject_class(
                m.subject.as_str(),
                m.reply.as_ref().map(|r| r.as_str()),
                status,
            );
            if class.starts_with("status ")
                && let Some(d) = &m.description
            {
                class = format!("{class} ({d})");
            }
            *counts.entry(class).or_default() += 1;
        }
        counts
    });
    let incidents_before = pipeline::incident_count(sys);
    let tasks_before = pipeline::task_count(sys);
    let sent = pipeline::offer(sys, partners, opts.rate, cases, "breakdown").await?;
    let last = sent.last().map_or(now_ms(), |s| s.1);
    pipeline::drain(
        sys,
        incidents_before + sent.len(),
        tasks_before + sent.len(),
        last + opts.drain_secs * 1000.0,
    )
    .await?;
    sys.client
        .publish("tgb.bench.tap.end", bytes::Bytes::new())
        .await
        .context("tap end")?;
    sys.client.flush().await.context("tap flush")?;
    let counts = counting.await.context("the tap")?;
    Ok(counts
        .into_iter()
        .map(|(k, v)| (k, v as f64 / sent.len().max(1) as f64))
        .collect())
}

/// `/varz`: (in_msgs, out_msgs).
pub fn parse_varz(v: &Value) -> anyhow::Result<(u64, u64)> {
    let n = |k: &str| v[k].as_u64().with_context(|| format!("/varz without {k}"));
    Ok((n("in_msgs")?, n("out_msgs")?))
}

/// `/varz` `gomaxprocs`, when the server reports it.
pub fn broker_threads(v: &Value) -> Option<u64> {
    v["gomaxprocs"].as_u64()
}

/// `/jsz?accounts=true&streams=true`: (api.total, stream → last_seq).
pub fn parse_jsz(v: &Value) -> anyhow::Result<(u64, BTreeMap<String, u64>)> {
    let api = v["api"]["total"]
        .as_u64()
        .context("/jsz without api.total")?;
    let mut streams = BTreeMap::new();
    for account in v["account_details"].as_array().into_iter().flatten() {
        for s in account["stream_detail"].as_array().into_iter().flatten() {
            let (Some(name), Some(last)) = (s["name"].as_str(), s["state"]["last_seq"].as_u64())
            else {
                continue;
            };
            *streams.entry(name.to_owned()).or_default() += last;
        }
    }
    Ok((api, streams))
}

pub(super) async fn monitor_json(sys: &BenchSystem, path: &str) -> anyhow::Result<Value> {
    let url = format!("http://{}{path}", sys.monitor);
    sys.http
        .get(&url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("GET {url}"))?
        .json()
        .await
        .with_context(|| format!("GET {url}: not JSON"))
}

pub(super) fn cpu_ticks(pids: &[(String, u32)]) -> BTreeMap<String, u64> {
    pids.iter()
        .filter_map(|(n, p)| sample(*p).ok().map(|s| (n.clone(), s.cpu_ticks)))
        .collect()
}

pub(super) fn wakeups_of(pids: &[(String, u32)]) -> BTreeMap<String, u64> {
    pids.iter()
        .filter_map(|(n, p)| super::procs::wakeups(*p).ok().map(|w| (n.clone(), w)))
        .collect()
}

/// Poll cycles `service` ended so far: the sum of `counter` on its `/metrics`.
async fn poll_cycles(sys: &BenchSystem, service: &str, counter: &str) -> anyhow::Result<u64> {
    let process = sys
        .services
        .iter()
        .find(|s| s.name == service)
        .with_context(|| format!("{service} is not part of the system"))?;
    let url = format!("http://{}/metrics", process.addr);
    let text = sys
        .http
        .get(&url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("GET {url}"))?
        .text()
        .await
        .with_context(|| format!("GET {url}"))?;
    Ok(counter_sum(&text, counter))
}

/// The sum of a counter's series in Prometheus text.
pub fn counter_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Reads every counter now.
pub async fn snapshot(sys: &BenchSystem) -> anyhow::Result<Snapshot> {
    let cpu = cpu_ticks(&sys.pids());
    let wakeups = wakeups_of(&sys.pids());
    let varz = monitor_json(sys, "/varz").await?;
    let (in_msgs, out_msgs) = parse_varz(&varz)?;
    let (js_api_total, stream_last_seq) =
        parse_jsz(&monitor_json(sys, "/jsz?accounts=true&streams=true").await?)?;
    let counts = sys.sandbox.calls().counts();
    let count = |f: &dyn Fn(&str) -> bool| -> u64 {
        counts
            .by_route
            .iter()
            .filter(|(r, _)| f(r))
            .flat_map(|(_, s)| s.values())
            .sum()
    };
    let poll = |r: &str| r.starts_with("graph GET ") && r.ends_with("/planner/plans/{id}/tasks");
    Ok(Snapshot {
        cpu_ticks: cpu,
        wakeups,
        in_msgs,
        out_msgs,
        broker_threads: broker_threads(&varz),
        js_api_total,
        stream_last_seq,
        dataverse_calls: count(&|r| r.starts_with("dataverse ")),
        graph_calls: count(&|r| r.starts_with("graph ") && !poll(r)),
        graph_plan_polls: count(&|r| poll(r)),
        requests_by_route: counts
            .by_route
            .iter()
            .filter(|(r, _)| (r.starts_with("dataverse ") || r.starts_with("graph ")) && !poll(r))
            .map(|(r, s)| (r.clone(), s.values().sum()))
            .collect(),
    })
}

/// Runs the cost section on a running system (limits off, a call log large enough for the
/// run).
pub async fn run(
    sys: &mut BenchSystem,
    opts: &CostOptions,
    logs: &std::path::Path,
    progress: &dyn Fn(String),
) -> anyhow::Result<CostResult> {
    let partners = pipeline::partners(opts.partners);
    progress(format!("cost: warm-up ({} cases)", partners.len()));
    let warm = pipeline::offer(sys, &partners, 50.0, partners.len(), "warm-up").await?;
    if !pipeline::drain(sys, warm.len(), warm.len(), now_ms() + 60_000.0).await? {
        anyhow::bail!(
            "the warm-up's {} cases did not reach Dynamics and Planner within 60 s",
            warm.len()
        );
    }
    let payload = {
        let stream = sys
            .js
            .get_stream(tgb_bus::names::EVENTS_STREAM)
            .await
            .context("the events stream")?;
        stream
            .get_last_raw_message_by_subject("tgb.v1.tg.case.opened")
            .await
            .context("the last tgb.v1.tg.case.opened")?
            .payload
            .to_vec()
    };
    let ticks = clock_ticks();
    progress(format!(
        "cost: raw JetStream, {} messages of {} bytes",
        opts.raw_messages,
        payload.len()
    ));
    let nats_pid = sys.nats.pid().context("nats-server is not running")?;
    let raw_before = sample(nats_pid)?.cpu_ticks;
    pipeline::raw_jetstream(&sys.js, &payload, opts.raw_messages).await?;
    let raw_after = sample(nats_pid)?.cpu_ticks;
    let raw = RawBrokerCost {
        messages: opts.raw_messages.max(1),
        nats_cpu_us_per_message: raw_after.saturating_sub(raw_before) as f64 * 1e6
            / ticks as f64
            / opts.raw_messages.max(1) as f64,
    };

    progress(format!(
        "cost: the floor (ingress and {} consumers on the same stack, as processes and as one), \
         {} cases at {} cases/s each",
        super::floor::CONSUMERS,
        opts.cases,
        opts.rate
    ));
    let floor = super::floor::run(
        sys,
        &payload,
        opts.rate,
        opts.cases,
        raw.nats_cpu_us_per_message,
        logs,
    )
    .await?;

    progress(format!(
        "cost: {} cases at {} cases/s",
        opts.cases, opts.rate
    ));
    let incidents_before = pipeline::incident_count(sys);
    let tasks_before = pipeline::task_count(sys);
    let before = snapshot(sys).await?;
    let sent = pipeline::offer(sys, &partners, opts.rate, opts.cases, "cost").await?;
    let last_sent = sent.last().map_or(now_ms(), |s| s.1);
    let drained = pipeline::drain(
        sys,
        incidents_before + sent.len(),
        tasks_before + sent.len(),
        last_sent + opts.drain_secs * 1000.0,
    )
    .await?;
    let after = snapshot(sys).await?;
    let tasks = pipeline::task_count(sys).saturating_sub(tasks_before);
    let incidents = pipeline::incident_times(sys);
    let task_times = pipeline::task_times(sys);
    let (mut to_i, mut to_t, mut completed) = (Vec::new(), Vec::new(), 0);
    for (case, at) in &sent {
        let i = incidents.get(case).map(|t| t - at);
        let t = task_times.get(case).map(|t| t - at);
        to_i.extend(i);
        to_t.extend(t);
        completed += usize::from(i.is_some() && t.is_some());
    }
    let first = sent.first().map_or(0.0, |s| s.1);
    let achieved = if sent.len() > 1 {
        (sent.len() - 1) as f64 / ((last_sent - first) / 1000.0).max(1e-3)
    } else {
        opts.rate
    };
    let mut result = CostResult::compute(
        opts.clone(),
        &before,
        &after,
        ticks,
        sent.len(),
        tasks,
        raw,
        achieved,
        completed,
        drained,
        Percentiles::of(to_i),
        Percentiles::of(to_t),
    );
    result.set_floors(floor);
    // What the pollers do for a case on their own clocks is stored too: the first plan poll
    // that sees a task notes it in the ledger (tg-bridge's own write, not sent back), and the
    // first change-tracking round that sees an incident records its version. Counted once a
    // cycle of each that began after the drain has ended: the second to end from here.
    progress("cost: waiting for the poll cycles that see the run's tasks and incidents".into());
    let pollers = [
        ("planner-adapter", "tgb_planner_poll_cycles_total"),
        ("dynamics-adapter", "tgb_dynamics_poll_rounds_total"),
    ];
    let mut cycles = Vec::new();
    for (service, counter) in pollers {
        cycles.push(poll_cycles(sys, service, counter).await?);
    }
    // Two of the longest poll interval (the product's default: 60 s), and time to spare.
    let within = std::time::Duration::from_secs(300);
    let deadline = tokio::time::Instant::now() + within;
    for ((service, counter), at_drain) in pollers.into_iter().zip(cycles) {
        while poll_cycles(sys, service, counter).await? < at_drain + 2 {
            if let Some(crash) = sys.crashed() {
                anyhow::bail!("{crash}");
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("{service} ended no two poll cycles within {within:?} ({counter})");
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }
    let settled = snapshot(sys).await?;
    result.set_stored(&before, &settled);
    result.stored_after_polls = true;
    let tapped = opts.cases.clamp(1, 200);
    progress(format!(
        "cost: breakdown of broker messages ({tapped} cases, tapped)"
    ));
    result.broker_msgs_per_case_by_class = breakdown(sys, &partners, opts, tapped).await?;
    result.kv_reads_per_case = Some(kv_reads_of(&result.broker_msgs_per_case_by_class));
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn options() -> CostOptions {
        CostOptions {
            rate: 100.0,
            cases: 100,
            drain_secs: 30.0,
            raw_messages: 1000,
            partners: 8,
        }
    }

    #[test]
    fn broker_messages_are_classed_by_subject_reply_and_status() {
        let c = subject_class;
        assert_eq!(
            c(
                "_INBOX.x.y",
                Some("$JS.ACK.TGB_EVENTS.planner-adapter.1.2.3.4.5"),
                None
            ),
            "deliver planner-adapter"
        );
        assert_eq!(
            c("$JS.ACK.TGB_EVENTS.sla-monitor.1.2.3.4.5", None, None),
            "ack sla-monitor"
        );
        assert_eq!(
            c(
                "$JS.API.CONSUMER.MSG.NEXT.TGB_EVENTS.tg-egress",
                Some("_INBOX.a"),
                None
            ),
            "pull tg-egress"
        );
        assert_eq!(
            c("$JS.API.DIRECT.GET.KV_tgb_sync.$KV.tgb_sync.k", None, None),
            "kv get tgb_sync k"
        );
        assert_eq!(
            c("$KV.tgb_links.tg.case.C-1", Some("_INBOX.b"), None),
            "kv put tgb_links tg"
        );
        assert_eq!(c("_INBOX.a.b", None, Some(100)), "heartbeat");
        assert_eq!(c("_INBOX.a.b", None, Some(404)), "status 404");
        assert_eq!(
            c("_INBOX.a.b", None, None),
            "reply (acks of publishes and requests)"
        );
        assert_eq!(
            c("tgb.v1.tg.case.opened", Some("_INBOX.c"), None),
            "event publish"
        );
        assert_eq!(
            c("tgb.ledger.dynamics-adapter", None, None),
            "ledger append"
        );
        assert_eq!(
            c("$JS.API.STREAM.INFO.TGB_EVENTS", None, None),
            "js api STREAM.INFO"
        );
    }

    #[test]
    fn monitoring_answers_are_read() {
        let varz = json!({"in_msgs": 1800, "out_msgs": 2100, "cpu": 3.5, "gomaxprocs": 1});
        assert_eq!(parse_varz(&varz).unwrap(), (1800, 2100));
        assert_eq!(broker_threads(&varz), Some(1));
        assert_eq!(broker_threads(&json!({"in_msgs": 1})), None);
        let jsz = json!({
            "api": {"total": 4200, "errors": 3},
            "account_details": [{
                "name": "$G",
                "stream_detail": [
                    {"name": "TGB_EVENTS", "state": {"messages": 10, "last_seq": 300}},
                    {"name": "KV_tgb_links", "state": {"messages": 5, "last_seq": 80}},
                    {"name": "broken"}
                ]
            }]
        });
        let (api, streams) = parse_jsz(&jsz).unwrap();
        assert_eq!(api, 4200);
        assert_eq!(
            streams,
            BTreeMap::from([("KV_tgb_links".into(), 80), ("TGB_EVENTS".into(), 300)])
        );
        assert!(parse_varz(&json!({})).is_err());
        assert!(parse_jsz(&json!({"streams": 1})).is_err());
    }

    #[test]
    fn two_snapshots_make_the_cost_per_case() {
        let before = Snapshot {
            cpu_ticks: BTreeMap::from([
                ("tg-ingress".into(), 100),
                ("planner-adapter".into(), 50),
                ("nats-server".into(), 1000),
                ("tgb bench (sandbox + load)".into(), 7),
            ]),
            wakeups: BTreeMap::from([
                ("tg-ingress".into(), 1_000),
                ("planner-adapter".into(), 2_000),
                ("nats-server".into(), 9_000),
            ]),
            in_msgs: 10,
            out_msgs: 20,
            broker_threads: Some(2),
            js_api_total: 5,
            stream_last_seq: BTreeMap::from([("TGB_EVENTS".into(), 40)]),
            dataverse_calls: 3,
            graph_calls: 9,
            graph_plan_polls: 1,
            requests_by_route: BTreeMap::from([("dataverse POST /$batch".into(), 3)]),
        };
        let after = Snapshot {
            // 100 ticks/s: 1 tick = 10 ms; over 100 cases, 1 tick = 100 µs per case.
            cpu_ticks: BTreeMap::from([
                ("tg-ingress".into(), 103),
                ("planner-adapter".into(), 57),
                ("nats-server".into(), 1010),
                ("tgb bench (sandbox + load)".into(), 107),
            ]),
            wakeups: BTreeMap::from([
                ("tg-ingress".into(), 1_300),
                ("planner-adapter".into(), 2_850),
                ("nats-server".into(), 11_000),
            ]),
            in_msgs: 1810,
            out_msgs: 2120,
            broker_threads: Some(2),
            js_api_total: 405,
            stream_last_seq: BTreeMap::from([
                ("TGB_EVENTS".into(), 340),
                ("KV_tgb_sync".into(), 200),
                ("KV_tgb_links".into(), 100),
            ]),
            dataverse_calls: 103,
            graph_calls: 159,
            graph_plan_polls: 4,
            requests_by_route: BTreeMap::from([
                ("dataverse POST /$batch".into(), 103),
                ("graph POST /planner/tasks".into(), 50),
            ]),
        };
        let raw = RawBrokerCost {
            messages: 1000,
            nats_cpu_us_per_message: 20.0,
        };
        let r = CostResult::compute(
            options(),
            &before,
            &after,
            100,
            100,
            50,
            raw,
            99.0,
            100,
            true,
            Percentiles::default(),
            Percentiles::default(),
        );
        assert_eq!(r.services_cpu_us_per_case, 1000.0);
        assert_eq!(r.nats_cpu_us_per_case, 1000.0);
        assert_eq!(r.cpu_us_per_case["tg-ingress"], 300.0);
        assert_eq!(r.cpu_us_per_case["tgb bench (sandbox + load)"], 10_000.0);
        assert_eq!(r.nats_cpu_per_case_in_raw_messages, 50.0);
        assert_eq!(r.services_wakeups_per_case, 11.5);
        assert_eq!(r.wakeups_per_case["nats-server"], 20.0);
        assert_eq!(
            (r.broker_in_msgs_per_case, r.broker_out_msgs_per_case),
            (18.0, 21.0)
        );
        assert_eq!(r.broker_threads, Some(2));
        assert_eq!(r.kv_reads_per_case, None, "no tapped pass yet");
        assert_eq!(r.js_stored_per_case, 6.0);
        assert_eq!(r.js_stored_per_case_by_stream["TGB_EVENTS"], 3.0);
        assert_eq!(r.kv_writes_per_case, 3.0);
        assert_eq!(r.js_api_requests_per_case, 4.0);
        assert_eq!(r.dataverse_requests_per_case, 1.0);
        assert_eq!(r.graph_requests_per_task, 3.0);
        assert_eq!(r.graph_plan_polls, 3);
        assert_eq!(
            r.requests_per_case_by_route,
            BTreeMap::from([
                ("dataverse POST /$batch".into(), 1.0),
                ("graph POST /planner/tasks".into(), 0.5),
            ])
        );
        assert_eq!(r.floor, None);
        assert_eq!(r.services_cpu_in_floors, None);
    }

    #[test]
    fn a_case_is_counted_in_floors_of_the_same_run() {
        let raw = RawBrokerCost {
            messages: 1,
            nats_cpu_us_per_message: 20.0,
        };
        let mut r = CostResult::compute(
            options(),
            &Snapshot {
                cpu_ticks: BTreeMap::from([("tg-ingress".into(), 0), ("nats-server".into(), 0)]),
                ..Snapshot::default()
            },
            &Snapshot {
                cpu_ticks: BTreeMap::from([("tg-ingress".into(), 30), ("nats-server".into(), 20)]),
                ..Snapshot::default()
            },
            100,
            100,
            100,
            raw,
            100.0,
            100,
            true,
            Percentiles::default(),
            Percentiles::default(),
        );
        let floor = |services: f64, nats: f64| FloorCost {
            cases: 100,
            services_cpu_us_per_case: services,
            nats_cpu_us_per_case: nats,
            cpu_us_per_case: BTreeMap::new(),
            services_wakeups_per_case: 7.5,
            nats_wakeups_per_case: 19.0,
            broker_in_msgs_per_case: 7.0,
            broker_out_msgs_per_case: 7.0,
            js_stored_per_case: 4.0,
            nats_cpu_per_case_in_raw_messages: nats / 20.0,
        };
        // 3,000 µs of service CPU and 2,000 µs of the broker's per case.
        r.set_floor(floor(600.0, 1_000.0));
        assert_eq!(r.services_cpu_in_floors, Some(5.0));
        assert_eq!(r.nats_cpu_in_floors, Some(2.0));
        assert_eq!(r.floor.as_ref().map(|f| f.js_stored_per_case), Some(4.0));
        // A floor that measured nothing gives no ratio rather than an infinite one.
        r.set_floor(floor(0.0, 0.0));
        assert_eq!(
            (r.services_cpu_in_floors, r.nats_cpu_in_floors),
            (None, None)
        );
    }

    #[test]
    fn a_counter_is_summed_over_its_series() {
        let text = "# TYPE tgb_planner_poll_cycles_total counter\n\
                    tgb_planner_poll_cycles_total{outcome=\"ok\"} 7\n\
                    tgb_planner_poll_cycles_total{outcome=\"stopped\"} 1\n\
                    tgb_planner_poll_cycles_total_other 100\n\
                    tgb_planner_poller_leader 1\n";
        assert_eq!(counter_sum(text, "tgb_planner_poll_cycles_total"), 8);
        assert_eq!(counter_sum("tgb_x 3\n", "tgb_x"), 3);
        assert_eq!(counter_sum("", "tgb_x"), 0);
    }

    #[test]
    fn kv_reads_are_the_gets_of_every_bucket() {
        let classes = BTreeMap::from([
            ("kv get tgb_links tg".to_owned(), 1.0),
            ("kv get tgb_sync fleet".to_owned(), 0.25),
            ("kv put tgb_links tg".to_owned(), 2.0),
            ("msg get TGB_EVENTS".to_owned(), 3.0),
        ]);
        assert_eq!(kv_reads_of(&classes), 1.25);
        assert_eq!(kv_reads_of(&BTreeMap::new()), 0.0);
    }
}
