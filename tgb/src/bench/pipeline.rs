//! Section 1: TG webhooks → Dynamics incidents and Planner triage tasks at a rising offered
//! load, with the limits off; and raw JetStream on the same broker.
//!
//! A case is raised in the TG emulator at its scheduled time; the emulator's webhook sender
//! signs and posts `case.created` to tg-ingress at once, as TG does. The case's start time is
//! taken just before it is raised. Its incident's time is when the incident's Create
//! notification reached this process (a Dataverse webhook registered for incident Create: one
//! loopback hop after the row is written; the emulator stamps rows to the second only). Its
//! task's time is the task's `createdDateTime` in the Planner emulator (to the microsecond).
//! Every time comes from the same machine clock.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use serde::Serialize;
use tgb_sandbox::tg::model::{PartnerRef, RaiseCase};

use super::harness::{BenchSystem, now_ms};
use super::resources::{ProcUsage, Sampler};

/// The plan the triage tasks go to (the sandbox's seeded issues plan, as config/tg-bridge.toml
/// routes them).
pub const ISSUES_PLAN: &str = "pLnPartnerIssues00000000000A";

/// Settings of section 1.
#[derive(Clone, Debug, Serialize)]
pub struct PipelineOptions {
    /// Offered loads, cases/s, in order; the ramp stops after the first saturated step.
    pub steps: Vec<f64>,
    /// How long each step offers its load, seconds.
    pub step_secs: f64,
    /// Longest wait after a step's last case for its incidents and tasks, seconds.
    pub drain_secs: f64,
    /// Messages of the raw JetStream measure.
    pub raw_messages: usize,
    /// Partners the cases come from (their accounts are created in the warm-up).
    pub partners: usize,
    /// A step is saturated when it sustains less than this share of what it offered.
    pub saturation_share: f64,
}

/// p50/p95/p99/max, milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    /// Samples.
    pub n: usize,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `values`.
    pub fn of(mut values: Vec<f64>) -> Percentiles {
        values.retain(|v| v.is_finite());
        if values.is_empty() {
            return Percentiles::default();
        }
        values.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let i = ((p / 100.0) * values.len() as f64).ceil() as usize;
            values[i.clamp(1, values.len()) - 1]
        };
        Percentiles {
            n: values.len(),
            p50: rank(50.0),
            p95: rank(95.0),
            p99: rank(99.0),
            max: values[values.len() - 1],
        }
    }
}

/// One step of the ramp.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// The load asked for, cases/s.
    pub offered_per_sec: f64,
    /// The load actually offered (cases raised / time from first to last), cases/s.
    pub achieved_offered_per_sec: f64,
    /// Cases raised.
    pub cases: usize,
    /// Cases with both their incident and their task.
    pub completed: usize,
    /// (Completed cases − 1) / (last completion − first case raised), cases/s.
    pub sustained_per_sec: f64,
    /// Case raised → incident created, ms.
    pub to_incident_ms: Percentiles,
    /// Case raised → triage task created, ms.
    pub to_task_ms: Percentiles,
    /// Case raised → both, ms.
    pub to_both_ms: Percentiles,
    /// Every case completed before the drain deadline.
    pub drained: bool,
    /// Sustained under `saturation_share` of the offered load, or not drained.
    pub saturated: bool,
    /// CPU and memory of each process over the step (first case raised → last completion).
    pub resources: Vec<ProcUsage>,
}

/// Raw JetStream on the same broker.
#[derive(Clone, Debug, Serialize)]
pub struct RawJetStream {
    /// Messages.
    pub messages: usize,
    /// Bytes of each (the payload of a real `tgb.v1.tg.case.opened` of this run).
    pub message_bytes: usize,
    /// Publisher's PubAcks in flight at most.
    pub publish_window: usize,
    /// Messages acknowledged by the durable pull consumer / time from the first publish to
    /// the last ack.
    pub messages_per_sec: f64,
    /// Acked publishes alone, messages/s.
    pub publish_per_sec: f64,
}

/// Section 1's result.
#[derive(Clone, Debug, Serialize)]
pub struct PipelineResult {
    /// The settings.
    pub options: PipelineOptions,
    /// Each step run.
    pub steps: Vec<Step>,
    /// The highest sustained throughput of any step, cases/s.
    pub max_sustained_per_sec: f64,
    /// The step the "sustained rate" figures come from: the unsaturated step with the highest
    /// sustained throughput (else the first step).
    pub sustained_step: usize,
    /// Raw JetStream.
    pub raw: RawJetStream,
    /// max_sustained_per_sec / raw.messages_per_sec.
    pub ratio_to_raw: f64,
    /// Messages the bus carried per case (every event of every service), at the ramp.
    pub bus_messages_per_case: f64,
    /// Idle CPU and memory of each process, before any load.
    pub idle: Vec<ProcUsage>,
}

pub(super) fn partners(n: usize) -> Vec<PartnerRef> {
    (1..=n.max(1))
        .map(|i| PartnerRef {
            qualifier: "ZZ".into(),
            id: format!("BENCH{i:03}"),
            name: format!("Bench Supplier {i}"),
        })
        .collect()
}

/// The case id in a triage task's title (`[C-10001] …`).
fn case_of_title(title: &str) -> Option<&str> {
    title.strip_prefix('[')?.split(']').next()
}

fn rfc3339_ms(s: &str) -> Option<f64> {
    let t = tgb_proto::timestamps::parse_rfc3339(s)?;
    Some(t.unix_timestamp_nanos() as f64 / 1e6)
}

/// Case id → task creation time.
pub(super) fn task_times(sys: &BenchSystem) -> HashMap<String, f64> {
    sys.sandbox
        .planner()
        .list_tasks(ISSUES_PLAN)
        .unwrap_or_default()
        .iter()
        .filter_map(|t| {
            let case = case_of_title(t["title"].as_str()?)?;
            Some((case.to_owned(), rfc3339_ms(t["createdDateTime"].as_str()?)?))
        })
        .collect()
}

pub(super) fn task_count(sys: &BenchSystem) -> usize {
    sys.sandbox
        .planner()
        .list_tasks(ISSUES_PLAN)
        .map(|t| t.len())
        .unwrap_or(0)
}

/// Case id → incident creation time (from the probe).
pub(super) fn incident_times(sys: &BenchSystem) -> HashMap<String, f64> {
    let Some(probe) = &sys.probe else {
        return HashMap::new();
    };
    let seen = probe.all();
    sys.sandbox
        .dataverse()
        .rows("incident")
        .iter()
        .filter_map(|r| {
            let case = r["tgb_tgcaseid"].as_str()?;
            let at = seen.get(r["incidentid"].as_str()?)?;
            Some((case.to_owned(), *at))
        })
        .collect()
}

pub(super) fn incident_count(sys: &BenchSystem) -> usize {
    sys.probe.as_ref().map_or(0, |p| p.count())
}

/// Raises `n` cases at `rate` per second; (case id, time raised).
pub(super) async fn offer(
    sys: &BenchSystem,
    partners: &[PartnerRef],
    rate: f64,
    n: usize,
    tag: &str,
) -> anyhow::Result<Vec<(String, f64)>> {
    let start = tokio::time::Instant::now();
    let mut sent = Vec::with_capacity(n);
    for i in 0..n {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due).await;
        let partner = partners[i % partners.len()].clone();
        let mut input = RaiseCase::new(partner, format!("Bench {tag} case {i}"));
        input.description = format!("Shipment {i} arrived short");
        input.category = "shipment_discrepancy".into();
        input.priority = "normal".into();
        let at = now_ms();
        let ev = sys
            .sandbox
            .tg()
            .raise_case(input)
            .map_err(|e| anyhow::anyhow!("raising a case: {e}"))?;
        let case_id = ev.data["case_id"]
            .as_str()
            .context("case.created without case_id")?
            .to_owned();
        sent.push((case_id, at));
    }
    Ok(sent)
}

/// Waits until `incidents` and `tasks` are reached, or `deadline_ms`; whether reached.
pub(super) async fn drain(
    sys: &mut BenchSystem,
    incidents: usize,
    tasks: usize,
    deadline_ms: f64,
) -> anyhow::Result<bool> {
    loop {
        if let Some(crash) = sys.crashed() {
            bail!("{crash}");
        }
        // Counting tasks copies the plan's tasks out of the emulator: only once the incidents
        // are there, and twice a second (the times measured come from the records, not from
        // this poll).
        if incident_count(sys) >= incidents && task_count(sys) >= tasks {
            return Ok(true);
        }
        if now_ms() >= deadline_ms {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The stream's message count.
async fn stream_messages(sys: &BenchSystem) -> anyhow::Result<u64> {
    let mut stream = sys
        .js
        .get_stream(tgb_bus::names::EVENTS_STREAM)
        .await
        .context("the events stream")?;
    Ok(stream.info().await.context("stream info")?.state.messages)
}

/// Runs section 1 on a running system (limits off), sampling `sampler`'s processes.
pub async fn run(
    sys: &mut BenchSystem,
    opts: &PipelineOptions,
    idle: Vec<ProcUsage>,
    sampler: &Sampler,
    progress: &dyn Fn(String),
) -> anyhow::Result<PipelineResult> {
    let partners = partners(opts.partners);
    // Warm-up: one case per partner (accounts created on first sight, tokens fetched).
    progress(format!("pipeline: warm-up ({} cases)", partners.len()));
    let warm = offer(sys, &partners, 50.0, partners.len(), "warm-up").await?;
    let deadline = now_ms() + 60_000.0;
    if !drain(sys, warm.len(), warm.len(), deadline).await? {
        bail!(
            "the warm-up's {} cases did not reach Dynamics and Planner within 60 s",
            warm.len()
        );
    }

    // The size of a real tg.case.opened, for the raw measure.
    let payload = {
        let stream = sys
            .js
            .get_stream(tgb_bus::names::EVENTS_STREAM)
            .await
            .context("the events stream")?;
        let msg = stream
            .get_last_raw_message_by_subject("tgb.v1.tg.case.opened")
            .await
            .context("the last tgb.v1.tg.case.opened")?;
        msg.payload.to_vec()
    };
    progress(format!(
        "pipeline: raw JetStream, {} messages of {} bytes",
        opts.raw_messages,
        payload.len()
    ));
    let raw = raw_jetstream(&sys.js, &payload, opts.raw_messages).await?;

    let mut steps = Vec::new();
    let bus_before = stream_messages(sys).await?;
    let mut ramp_cases = 0usize;
    for (i, rate) in opts.steps.iter().copied().enumerate() {
        if rate <= 0.0 || !rate.is_finite() {
            bail!("offered load {rate} is not a positive rate");
        }
        let n = ((rate * opts.step_secs).round() as usize).max(1);
        progress(format!(
            "pipeline: step {}/{}: {rate} cases/s for {} s ({n} cases)",
            i + 1,
            opts.steps.len(),
            opts.step_secs
        ));
        let incidents_before = incident_count(sys);
        let tasks_before = task_count(sys);
        let before = sampler.sample();
        let sent = offer(sys, &partners, rate, n, &format!("s{i}")).await?;
        ramp_cases += sent.len();
        let last_sent = sent.last().map_or(now_ms(), |s| s.1);
        let drained = drain(
            sys,
            incidents_before + n,
            tasks_before + n,
            last_sent + opts.drain_secs * 1000.0,
        )
        .await?;
        let after = sampler.sample();
        let incidents = incident_times(sys);
        let tasks = task_times(sys);
        let first = sent.first().map_or(0.0, |s| s.1);
        let (mut to_i, mut to_t, mut to_b) = (Vec::new(), Vec::new(), Vec::new());
        let mut last_done = first;
        for (case, at) in &sent {
            let inc = incidents.get(case).map(|t| t - at);
            let task = tasks.get(case).map(|t| t - at);
            if let Some(v) = inc {
                to_i.push(v);
            }
            if let Some(v) = task {
                to_t.push(v);
            }
            if let (Some(a), Some(b)) = (inc, task) {
                to_b.push(a.max(b));
                last_done = last_done.max(at + a.max(b));
            }
        }
        let completed = to_b.len();
        let achieved = if sent.len() > 1 {
            (sent.len() - 1) as f64 / ((last_sent - first) / 1000.0).max(1e-3)
        } else {
            rate
        };
        let span = ((last_done - first) / 1000.0).max(1e-3);
        // Like the offered rate: n cases make n − 1 intervals.
        let sustained = completed.saturating_sub(1) as f64 / span;
        let saturated = !drained || sustained < opts.saturation_share * achieved.min(rate);
        steps.push(Step {
            offered_per_sec: rate,
            achieved_offered_per_sec: achieved,
            cases: sent.len(),
            completed,
            sustained_per_sec: sustained,
            to_incident_ms: Percentiles::of(to_i),
            to_task_ms: Percentiles::of(to_t),
            to_both_ms: Percentiles::of(to_b),
            drained,
            saturated,
            resources: sampler.usage(&before, &after),
        });
        if saturated {
            progress(format!(
                "pipeline: saturated at {rate} cases/s (sustained {sustained:.1}/s)"
            ));
            break;
        }
    }
    let bus_after = stream_messages(sys).await?;
    let max_sustained = steps
        .iter()
        .map(|s| s.sustained_per_sec)
        .fold(0.0, f64::max);
    let sustained_step = steps
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.saturated)
        .max_by(|a, b| a.1.sustained_per_sec.total_cmp(&b.1.sustained_per_sec))
        .map_or(0, |(i, _)| i);
    Ok(PipelineResult {
        options: opts.clone(),
        ratio_to_raw: max_sustained / raw.messages_per_sec.max(1e-9),
        max_sustained_per_sec: max_sustained,
        sustained_step,
        raw,
        bus_messages_per_case: bus_after.saturating_sub(bus_before) as f64
            / ramp_cases.max(1) as f64,
        steps,
        idle,
    })
}

/// Acked publishes into a file stream, consumed by a durable pull consumer that acks each
/// message, at the same time.
pub async fn raw_jetstream(
    js: &async_nats::jetstream::Context,
    payload: &[u8],
    n: usize,
) -> anyhow::Result<RawJetStream> {
    use async_nats::jetstream::{consumer, stream};
    const STREAM: &str = "TGB_BENCH_RAW";
    const WINDOW: usize = 256;
    let n = n.max(1);
    let _ = js.delete_stream(STREAM).await;
    let s = js
        .create_stream(stream::Config {
            name: STREAM.into(),
            subjects: vec!["tgb-bench.raw".into()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            ..Default::default()
        })
        .await
        .context("creating the raw benchmark stream")?;
    let c: consumer::PullConsumer = s
        .create_consumer(consumer::pull::Config {
            durable_name: Some("tgb-bench-raw".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 10_000,
            ..Default::default()
        })
        .await
        .context("creating the raw benchmark consumer")?;
    let consume = tokio::spawn(async move {
        let mut messages = c
            .stream()
            .max_messages_per_batch(256)
            .messages()
            .await
            .context("pulling")?;
        let mut got = 0;
        while got < n {
            match messages.next().await {
                Some(Ok(m)) => {
                    m.ack().await.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
                    got += 1;
                }
                Some(Err(e)) => tracing::debug!(error = %e, "raw pull"),
                None => bail!("the pull stream ended after {got} messages"),
            }
        }
        Ok::<f64, anyhow::Error>(now_ms())
    });
    let start = now_ms();
    type Ack = futures::future::BoxFuture<
        'static,
        Result<
            async_nats::jetstream::publish::PublishAck,
            async_nats::jetstream::context::PublishError,
        >,
    >;
    let mut acks: futures::stream::FuturesUnordered<Ack> = futures::stream::FuturesUnordered::new();
    let body = bytes::Bytes::copy_from_slice(payload);
    for _ in 0..n {
        if acks.len() >= WINDOW
            && let Some(r) = acks.next().await
        {
            r.context("a PubAck")?;
        }
        let ack = js
            .publish("tgb-bench.raw", body.clone())
            .await
            .context("publishing")?;
        acks.push(Box::pin(ack.into_future()));
    }
    while let Some(r) = acks.next().await {
        r.context("a PubAck")?;
    }
    let published = now_ms();
    let consumed = tokio::time::timeout(Duration::from_secs(300), consume)
        .await
        .context("the raw consumer did not finish within 300 s")?
        .context("the raw consumer")??;
    let _ = js.delete_stream(STREAM).await;
    Ok(RawJetStream {
        messages: n,
        message_bytes: payload.len(),
        publish_window: WINDOW,
        messages_per_sec: n as f64 / ((consumed - start) / 1000.0).max(1e-6),
        publish_per_sec: n as f64 / ((published - start) / 1000.0).max(1e-6),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let p = Percentiles::of((1..=100).map(f64::from).collect());
        assert_eq!(
            (p.n, p.p50, p.p95, p.p99, p.max),
            (100, 50.0, 95.0, 99.0, 100.0)
        );
        let one = Percentiles::of(vec![7.0]);
        assert_eq!((one.p50, one.p99), (7.0, 7.0));
        assert_eq!(Percentiles::of(Vec::new()).n, 0);
    }

    #[test]
    fn the_case_id_is_read_from_a_task_title() {
        assert_eq!(case_of_title("[C-10001] Short delivery"), Some("C-10001"));
        assert_eq!(case_of_title("no marker"), None);
    }
}
