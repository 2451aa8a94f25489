//! `tgb bench`: how close tg-bridge runs to the limits it cannot change.
//!
//! 1. [`pipeline`]: TG webhooks → Dynamics incidents and Planner triage tasks at a rising
//!    offered load, limits off; raw JetStream on the same broker; the ratio.
//! 2. [`quota`]: Dataverse and Graph requests per synced change for a mix of the flows, with
//!    `$batch` coalescing on and off; a backlog drained under the real Dataverse limits.
//! 3. [`resources`]: CPU and peak RSS of each process, idle and at the sustained rate.
//!
//! The services run as their own processes ([`procs`]); the sandbox and the load generator run
//! in this process ([`harness`]). Results: `bench.json`, `summary.md` and `pipeline.svg` in the
//! output directory ([`report`]).

pub mod cost;
pub mod floor;
pub mod harness;
pub mod pipeline;
pub mod procs;
pub mod quota;
pub mod report;
pub mod resources;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use serde_json::json;
use tgb_sandbox::SandboxConfig;

use harness::{BenchSystem, Spec};
use pipeline::{PipelineOptions, PipelineResult};
use procs::{Launcher, SERVICES, ServiceBinaries};
use quota::QuotaResult;
use resources::{ProcUsage, Sampler};

/// The sections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Section {
    /// Throughput and latency, raw JetStream, and the resources measured with them.
    Pipeline,
    /// Requests per change for the mix of flows, `$batch` on and off.
    Mix,
    /// The backlog under the Dataverse limits.
    Backlog,
    /// What one case costs (CPU, broker messages, JetStream messages, API requests) at a
    /// fixed rate below saturation, beside raw JetStream's broker cost per message.
    Cost,
}

impl Section {
    /// Every section, in the order they run.
    pub const ALL: [Section; 4] = [
        Section::Pipeline,
        Section::Mix,
        Section::Backlog,
        Section::Cost,
    ];
}

/// What `tgb bench` runs.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Where the results go.
    pub out_dir: PathBuf,
    /// Scaled down: the Dataverse window 600 / 30 s (same rate) and a smaller backlog.
    pub quick: bool,
    /// Sections to run.
    pub sections: Vec<Section>,
    /// Section 1's settings.
    pub pipeline: PipelineOptions,
    /// The cost section's settings.
    pub cost: cost::CostOptions,
    /// The idle window of the resources, seconds.
    pub idle_secs: f64,
    /// Rounds of the quota mix (15 kinds of change, 17 changes each).
    pub mix_rounds: usize,
    /// planner-adapter's plan poll in the quota mix and the cost section, ms.
    pub planner_poll_ms: u64,
    /// dynamics-adapter's change-tracking poll in the cost section, ms.
    pub dynamics_poll_ms: u64,
    /// Changes in the backlog.
    pub backlog: usize,
    /// How the services are started.
    pub services: ServiceBinaries,
    /// Where the service binaries are (default: beside `tgb`).
    pub bin_dir: Option<PathBuf>,
}

/// The machine.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// Logical CPUs.
    pub cpus: usize,
    /// `uname -sr`, as far as /proc tells.
    pub os: String,
    /// 1-minute load average at the start.
    pub load_at_start: f64,
}

/// Section 3's result.
#[derive(Clone, Debug, Serialize)]
pub struct ResourcesResult {
    /// Each process with no load (after start-up), over the idle window.
    pub idle: Vec<ProcUsage>,
    /// Each process over the step with the highest sustained, unsaturated throughput.
    pub at_sustained: Vec<ProcUsage>,
    /// That step's sustained throughput, cases/s.
    pub sustained_rate: f64,
    /// The idle window, seconds.
    pub idle_secs: f64,
}

/// Everything `tgb bench` measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// `full` or `quick`.
    pub run: String,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// tgb's version.
    pub version: String,
    /// The build profile of tgb (`release` or `debug`).
    pub profile: String,
    /// The machine.
    pub machine: Machine,
    /// How the services ran.
    pub services: String,
    /// Section 1.
    pub pipeline: Option<PipelineResult>,
    /// Section 2.
    pub quota: Option<QuotaResult>,
    /// Section 3.
    pub resources: Option<ResourcesResult>,
    /// The cost per case.
    pub cost: Option<cost::CostResult>,
    /// Wall time of the whole run, seconds.
    pub wall_secs: f64,
}

fn machine() -> Machine {
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0);
    let os = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| format!("{} {}", std::env::consts::OS, r.trim()))
        .unwrap_or_else(|_| std::env::consts::OS.to_owned());
    Machine {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        os,
        load_at_start: load,
    }
}

fn env(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// The sandbox with limits off, for section 1.
fn unlimited_sandbox() -> SandboxConfig {
    let mut sb = SandboxConfig::default();
    sb.dataverse.service_protection.enabled = false;
    sb.planner.limits.max_tasks_per_plan = 10_000_000;
    sb.tg.webhook_retry.max_in_flight = 128;
    sb.call_log_capacity = 10_000;
    sb
}

/// tg-bridge's own lanes opened too, for section 1 (else the pipeline measures the Graph lane's
/// 600 requests/min).
fn unlimited_env() -> Vec<(String, String)> {
    env(&[
        ("TGB_DYNAMICS__GOVERNOR__REQUESTS_PER_WINDOW", "0".into()),
        ("TGB_DYNAMICS__GOVERNOR__MAX_CONCURRENT", "52".into()),
        ("TGB_ROUTING__GRAPH__REQUESTS_PER_WINDOW", "0".into()),
        ("TGB_ROUTING__GRAPH__MAX_CONCURRENT", "16".into()),
        // Webhooks are the path measured; the feed is read once at start.
        ("TGB_TG_INGRESS__POLL_INTERVAL_MS", "3600000".into()),
    ])
}

/// Runs the benchmark and writes its outputs; `progress` hears what is going on.
pub async fn run(opts: &BenchOptions, progress: &dyn Fn(String)) -> anyhow::Result<BenchReport> {
    let started = harness::now_ms();
    let started_at = tgb_proto::timestamps::rfc3339(time::OffsetDateTime::now_utc());
    std::fs::create_dir_all(&opts.out_dir)
        .with_context(|| format!("cannot create {}", opts.out_dir.display()))?;
    let logs = opts.out_dir.join("logs");
    let _ = std::fs::remove_dir_all(&logs);
    let launcher = Launcher::choose(opts.services, opts.bin_dir.as_deref())?;
    progress(format!("services: {}", launcher.describe()));
    if matches!(launcher, Launcher::SelfExec(_)) && opts.services == ServiceBinaries::Auto {
        progress(format!(
            "(the six service binaries are not all beside tgb: `cargo build {}--bins` puts them there)",
            if cfg!(debug_assertions) {
                ""
            } else {
                "--release "
            }
        ));
    }
    let mut report = BenchReport {
        run: if opts.quick { "quick" } else { "full" }.into(),
        started_at,
        version: env!("CARGO_PKG_VERSION").into(),
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
        .into(),
        machine: machine(),
        services: launcher.describe(),
        pipeline: None,
        quota: None,
        resources: None,
        cost: None,
        wall_secs: 0.0,
    };

    // The results so far are written after each section.
    if opts.sections.contains(&Section::Pipeline) {
        let (p, r) = pipeline_section(opts, &launcher, &logs.join("pipeline"), progress).await?;
        report.pipeline = Some(p);
        report.resources = Some(r);
        report.wall_secs = (harness::now_ms() - started) / 1000.0;
        write(&opts.out_dir, &report)?;
    }
    if opts.sections.contains(&Section::Mix) {
        let (on, off) = mix_section(opts, &launcher, &logs, progress).await?;
        let q = report.quota.get_or_insert_with(QuotaResult::default);
        q.batching_on = Some(on);
        q.batching_off = Some(off);
        report.wall_secs = (harness::now_ms() - started) / 1000.0;
        write(&opts.out_dir, &report)?;
    }
    if opts.sections.contains(&Section::Backlog) {
        let b = backlog_section(opts, &launcher, &logs, progress).await?;
        report
            .quota
            .get_or_insert_with(QuotaResult::default)
            .backlog = Some(b);
        report.wall_secs = (harness::now_ms() - started) / 1000.0;
        write(&opts.out_dir, &report)?;
    }
    if opts.sections.contains(&Section::Cost) {
        report.cost = Some(cost_section(opts, &launcher, &logs.join("cost"), progress).await?);
    }
    report.wall_secs = (harness::now_ms() - started) / 1000.0;
    write(&opts.out_dir, &report)?;
    Ok(report)
}

/// The report as bench.json holds it (and `--json` prints it): the sections, plus
/// `pipeline.p99_case_to_incident_ms_at_100`.
pub fn to_json(report: &BenchReport) -> anyhow::Result<serde_json::Value> {
    let mut json = serde_json::to_value(report)?;
    if let Some(p99) = p99_case_to_incident_ms_at_100(report) {
        if !json["pipeline"].is_object() {
            json["pipeline"] = json!({});
        }
        json["pipeline"]["p99_case_to_incident_ms_at_100"] = json!(p99);
    }
    Ok(json)
}

/// Writes bench.json, summary.md and (with section 1) pipeline.svg.
pub fn write(dir: &Path, report: &BenchReport) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(&to_json(report)?)?;
    std::fs::write(dir.join("bench.json"), json)
        .with_context(|| format!("writing {}", dir.join("bench.json").display()))?;
    std::fs::write(dir.join("summary.md"), report::markdown(report))?;
    if let Some(p) = &report.pipeline {
        std::fs::write(dir.join("pipeline.svg"), report::svg(p))?;
    }
    Ok(())
}

/// p99 from a case raised to its incident at 100 cases/s offered: from the cost section when
/// it ran at 100/s (a steady run), else from the pipeline's step at 100/s.
pub fn p99_case_to_incident_ms_at_100(report: &BenchReport) -> Option<f64> {
    let at_100 = |rate: f64| (rate - 100.0).abs() < 1e-9;
    report
        .cost
        .as_ref()
        .filter(|c| at_100(c.options.rate) && c.to_incident_ms.n > 0)
        .map(|c| c.to_incident_ms.p99)
        .or_else(|| {
            report.pipeline.as_ref().and_then(|p| {
                p.steps
                    .iter()
                    .find(|s| at_100(s.offered_per_sec) && s.to_incident_ms.n > 0)
                    .map(|s| s.to_incident_ms.p99)
            })
        })
}

async fn cost_section(
    opts: &BenchOptions,
    launcher: &Launcher,
    logs: &Path,
    progress: &dyn Fn(String),
) -> anyhow::Result<cost::CostResult> {
    progress("cost: starting NATS, the sandbox (limits off) and the six services".into());
    let mut sandbox = unlimited_sandbox();
    // Every call of the run is counted from the log.
    sandbox.call_log_capacity = 2_000_000;
    let mut env = unlimited_env();
    // The cost waits for the poll cycles that see the run's tasks and incidents (cost.rs).
    for (poll, ms) in [
        ("TGB_ROUTING__GRAPH__POLL_INTERVAL_MS", opts.planner_poll_ms),
        ("TGB_DYNAMICS__POLL_INTERVAL_MS", opts.dynamics_poll_ms),
    ] {
        env.push((poll.into(), ms.to_string()));
    }
    let spec = Spec {
        sandbox,
        start: SERVICES.to_vec(),
        env,
        incident_probe: true,
    };
    let mut sys = BenchSystem::start(spec, launcher, logs).await?;
    let result = cost::run(&mut sys, &opts.cost, logs, progress).await;
    sys.stop().await;
    result
}

async fn pipeline_section(
    opts: &BenchOptions,
    launcher: &Launcher,
    logs: &Path,
    progress: &dyn Fn(String),
) -> anyhow::Result<(PipelineResult, ResourcesResult)> {
    progress("pipeline: starting NATS, the sandbox (limits off) and the six services".into());
    let spec = Spec {
        sandbox: unlimited_sandbox(),
        start: SERVICES.to_vec(),
        env: unlimited_env(),
        incident_probe: true,
    };
    let mut sys = BenchSystem::start(spec, launcher, logs).await?;
    let result = async {
        let sampler = Sampler::new(sys.pids());
        progress(format!("resources: idle for {} s", opts.idle_secs));
        let before = sampler.sample();
        // A measuring window, not a synchronisation.
        tokio::time::sleep(Duration::from_secs_f64(opts.idle_secs)).await;
        let idle = sampler.usage(&before, &sampler.sample());
        let p = pipeline::run(&mut sys, &opts.pipeline, idle.clone(), &sampler, progress).await?;
        let step = &p.steps[p.sustained_step.min(p.steps.len().saturating_sub(1))];
        let r = ResourcesResult {
            idle,
            at_sustained: step.resources.clone(),
            sustained_rate: step.sustained_per_sec,
            idle_secs: opts.idle_secs,
        };
        Ok::<_, anyhow::Error>((p, r))
    }
    .await;
    sys.stop().await;
    result
}

async fn mix_section(
    opts: &BenchOptions,
    launcher: &Launcher,
    logs: &Path,
    progress: &dyn Fn(String),
) -> anyhow::Result<(quota::MixResult, quota::MixResult)> {
    let mut mixes = Vec::new();
    for batching in [true, false] {
        progress(format!(
            "quota: starting a system with $batch coalescing {}",
            if batching { "on" } else { "off" }
        ));
        let sandbox = SandboxConfig {
            call_log_capacity: 1_000_000,
            ..SandboxConfig::default()
        };
        let mut e = vec![(
            "TGB_ROUTING__GRAPH__POLL_INTERVAL_MS",
            opts.planner_poll_ms.to_string(),
        )];
        if !batching {
            e.push(("TGB_DYNAMICS__BATCH_MAX_REQUESTS", "1".into()));
        }
        let spec = Spec {
            sandbox,
            start: SERVICES.to_vec(),
            env: env(&e),
            incident_probe: false,
        };
        let dir = logs.join(if batching {
            "mix-batch-on"
        } else {
            "mix-batch-off"
        });
        let mut sys = BenchSystem::start(spec, launcher, &dir).await?;
        let r = quota::run_mix(
            &mut sys,
            opts.mix_rounds.max(1),
            batching,
            Duration::from_millis(opts.planner_poll_ms),
            progress,
        )
        .await;
        sys.stop().await;
        mixes.push(r?);
    }
    let off = mixes.pop().context("the mix without $batch")?;
    let on = mixes.pop().context("the mix with $batch")?;
    Ok((on, off))
}

async fn backlog_section(
    opts: &BenchOptions,
    launcher: &Launcher,
    logs: &Path,
    progress: &dyn Fn(String),
) -> anyhow::Result<quota::BacklogResult> {
    // The backlog, under the real limits (or the same rate over a tenth of the window).
    let scale = if opts.quick { 10 } else { 1 };
    let mut sandbox = SandboxConfig {
        call_log_capacity: 2_000_000,
        ..SandboxConfig::default()
    };
    sandbox.tg.webhook_retry.max_in_flight = 128;
    let sp = &mut sandbox.dataverse.service_protection;
    sp.enabled = true;
    sp.requests_per_window = Some(6000 / scale);
    sp.window_ms = 300_000 / u64::from(scale);
    sp.execution_time_ms = sp.execution_time_ms.map(|e| e / u64::from(scale));
    let governor = tgb_governor_default();
    let gov_requests = governor.0 / scale;
    let gov_window = governor.1 / f64::from(scale);
    let e = env(&[
        (
            "TGB_DYNAMICS__GOVERNOR__REQUESTS_PER_WINDOW",
            gov_requests.to_string(),
        ),
        (
            "TGB_DYNAMICS__GOVERNOR__WINDOW_SECS",
            gov_window.to_string(),
        ),
        ("TGB_TG_INGRESS__POLL_INTERVAL_MS", "3600000".into()),
    ]);
    let spec = Spec {
        sandbox,
        // dynamics-adapter starts once the backlog is on the bus; planner-adapter and the
        // others are not part of this measure (Planner has its own lane).
        start: vec!["tg-ingress", "tg-egress"],
        env: e,
        incident_probe: true,
    };
    progress(format!(
        "quota: starting a system with Dataverse limits {} requests / {} s",
        6000 / scale,
        300 / scale
    ));
    let mut sys = BenchSystem::start(spec, launcher, &logs.join("backlog")).await?;
    let gov = json!({
        "requests_per_window": gov_requests,
        "window_secs": gov_window,
        "headroom": governor.2,
        "max_concurrent": governor.3,
    });
    let b = quota::run_backlog(&mut sys, opts.backlog.max(1), opts.quick, gov, progress).await;
    sys.stop().await;
    b
}

/// dynamics-adapter's default governor as config/tg-bridge.toml sets it (else the built-in
/// defaults): (requests per window, window seconds, headroom, concurrency).
fn tgb_governor_default() -> (u32, f64, f64, usize) {
    let d = tgb_governor::GovernorConfig::default();
    let mut out = (
        d.requests_per_window,
        d.window_secs,
        d.headroom,
        d.max_concurrent,
    );
    let doc = crate::system::find_in_repo(tgb_runtime::config::DEFAULT_CONFIG_PATH)
        .and_then(|f| std::fs::read_to_string(f).ok())
        .and_then(|t| t.parse::<toml::Table>().ok());
    if let Some(g) = doc
        .as_ref()
        .and_then(|d| d.get("dynamics"))
        .and_then(|d| d.get("governor"))
    {
        let num = |k: &str| {
            g.get(k)
                .and_then(|v| v.as_float().or_else(|| v.as_integer().map(|i| i as f64)))
        };
        if let Some(v) = num("requests_per_window") {
            out.0 = v as u32;
        }
        if let Some(v) = num("window_secs") {
            out.1 = v;
        }
        if let Some(v) = num("headroom") {
            out.2 = v;
        }
        if let Some(v) = num("max_concurrent") {
            out.3 = v as usize;
        }
    }
    out
}
