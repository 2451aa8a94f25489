//! `tgb`: run tg-bridge in one process, drive the demo, operate a running system.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use tgb::system::{Ports, System, UpOptions};
use tgb::{demo, ops, render};

#[derive(Parser)]
#[command(
    name = "tgb",
    version,
    about = "tg-bridge in one command: run it (up), see it work (demo), operate it (dlq, history, links, replay, status), measure it (bench)"
)]
struct Cli {
    /// NATS of the system to operate (default: the one `tgb up` started, from
    /// <data-dir>/nats.url, else nats://127.0.0.1:4222).
    #[arg(long, global = true, env = "TGB_NATS_URL")]
    nats_url: Option<String>,
    /// NATS credentials file (a user JWT and its nkey seed).
    #[arg(long, global = true, env = "TGB_NATS_CREDS")]
    creds: Option<PathBuf>,
    /// PEM file of the CA that signed the NATS servers' certificates (a private CA).
    #[arg(long, global = true, env = "TGB_NATS_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// PEM file of a TLS client certificate for NATS (with --tls-key).
    #[arg(long, global = true, env = "TGB_NATS_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM file of the TLS client certificate's private key (with --tls-cert).
    #[arg(long, global = true, env = "TGB_NATS_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    /// Where `tgb up` keeps the NATS store and writes nats.url.
    #[arg(long, global = true, default_value = ".data")]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run NATS, the sandbox and the six services in this process, wired to each other.
    Up(UpArgs),
    /// Drive a scripted business day through the sandbox: every flow D1–D8 and P1–P7.
    Demo(DemoArgs),
    /// The dead-letter queue (TGB_DLQ).
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Everything that happened to a record: each event, the decision taken, the target's
    /// answer, the trace id. E.g. `tgb history tg:C-10001`, `tgb history dataverse:<guid>`.
    History {
        /// `<system>:<id>` or `<system>:<kind>:<id>`.
        record: String,
    },
    /// NATS set-up for a secured cluster.
    Nats {
        #[command(subcommand)]
        command: NatsCommand,
    },
    /// The records linked to a record (TG case ↔ Dynamics incident ↔ Planner tasks).
    Links {
        /// `<system>:<id>` or `<system>:<kind>:<id>`.
        record: String,
    },
    /// Rebuild what tg-bridge keeps in KV from the systems of record (after a loss).
    Rebuild {
        #[command(subcommand)]
        what: RebuildCommand,
    },
    /// First sync of history through the normal flows, matching what already exists first.
    Backfill {
        #[command(subcommand)]
        what: BackfillCommand,
    },
    /// Re-deliver to a consumer every message of its subjects stored since a time.
    Replay {
        /// The durable consumer (see `tgb status`).
        #[arg(long)]
        consumer: String,
        /// `15m`, `2h`, `1d` ago, or an RFC 3339 time.
        #[arg(long)]
        since: String,
        /// Show what would be re-delivered; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Streams, consumers (pending, ack pending, redelivered), DLQ depth, governor lanes.
    Status {
        /// A service's /metrics URL to read governor lanes from (repeatable).
        #[arg(long)]
        metrics: Vec<String>,
    },
    /// Benchmarks: pipeline throughput and latency against raw JetStream, Dataverse and Graph
    /// requests per change, the backlog under the Dataverse limits, CPU and memory per
    /// service. Writes bench.json, summary.md and pipeline.svg.
    Bench(BenchArgs),
    /// Conformance checks of what a deployment talks to.
    Check {
        #[command(subcommand)]
        command: CheckCommand,
    },
    /// Prepare a Microsoft tenant for tg-bridge: `tgb setup dataverse`.
    Setup {
        #[command(subcommand)]
        target: SetupTarget,
    },
    /// Check, live and with the services' TGB_* settings and configuration, the Entra token,
    /// Dataverse (WhoAmI, privileges, keys Active, webhook steps), Graph (plans, buckets,
    /// labels, assignees), TG (token, feed, a write without effect) and NATS (streams,
    /// consumers, each service's permissions). Exit code 0 only when every check passes.
    Doctor {
        /// Probe the NATS permissions of this service only (repeatable; default: all six),
        /// e.g. when TGB_NATS_URL or TGB_NATS_CREDS is that service's own user.
        #[arg(long = "service")]
        services: Vec<String>,
    },
    /// One service in its own process (what `tgb bench` starts when the service binaries
    /// were not built).
    #[command(hide = true)]
    BenchService {
        /// The service.
        name: String,
    },
    /// One process of the floor `tgb bench` measures beside a case (bench/floor.rs).
    #[command(hide = true)]
    BenchFloor {
        #[command(subcommand)]
        role: tgb::bench::floor::Role,
    },
}

#[derive(Subcommand)]
enum RebuildCommand {
    /// `tgb_links` (and planner-adapter's task records) from Dataverse alternate keys
    /// (incident `tgb_tgcaseid`, account `tgb_partnerkey`) and Planner title markers.
    Links {
        /// Show what would be written; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// `tgb_sla`: the clocks of open cases from their history in TGB_EVENTS and the `[sla]`
    /// policies; warnings and breaches already raised are marked so they are not raised again.
    Sla {
        /// Show what would be written; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum BackfillCommand {
    /// TG's event feed from `--since`: existing incidents, accounts and Planner tasks of the
    /// cases in range are linked first (as `tgb rebuild links`), then the events are published
    /// as the feed poller would (same event ids), and the adapters create what is missing.
    Tg {
        /// `15m`, `2h`, `30d` ago, or an RFC 3339 time.
        #[arg(long)]
        since: String,
        /// Only this partner (`QUALIFIER:ID` or the id; repeatable).
        #[arg(long = "partner")]
        partners: Vec<String>,
        /// Events published per second at most.
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
        /// Show what would be matched and published; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Dataverse rows: the cases of the open incidents are linked to them and to their
    /// Planner tasks first (as `tgb rebuild links`), then each incident goes through
    /// dynamics-adapter's change detection as a row of its poll would (a status TG does not
    /// have yet is published as `dyn.case.status_changed`, with the poller's event ids).
    Dataverse {
        /// The table (only `incident`).
        #[arg(long, value_enum)]
        table: BackfillTable,
        /// Which rows (only `open`: statecode 0).
        #[arg(long, value_enum)]
        filter: BackfillFilter,
        /// Show what would be matched; write and publish nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum BackfillTable {
    Incident,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum BackfillFilter {
    Open,
}

#[derive(Args)]
struct BenchArgs {
    /// Where the results go.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Scaled down: the Dataverse window 600 requests / 30 s (the same 20 req/s), a backlog
    /// of 3,000 changes, shorter steps.
    #[arg(long)]
    quick: bool,
    /// Sections to run (default: all).
    #[arg(long, value_delimiter = ',', value_enum)]
    sections: Vec<tgb::bench::Section>,
    /// Offered loads, cases/s, in order (the ramp stops at the first saturated step).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "25,50,75,100,150,200,300,400,800"
    )]
    steps: Vec<f64>,
    /// Seconds each step offers its load (default 10; --quick 5).
    #[arg(long)]
    step_secs: Option<f64>,
    /// Longest wait after a step for its incidents and tasks, seconds.
    #[arg(long, default_value_t = 30.0)]
    drain_secs: f64,
    /// Messages of the raw JetStream measure.
    #[arg(long, default_value_t = 50_000)]
    raw_messages: usize,
    /// Partners the pipeline's cases come from.
    #[arg(long, default_value_t = 8)]
    partners: usize,
    /// The cost section's offered load, cases/s (below saturation).
    #[arg(long, default_value_t = 100.0)]
    cost_rate: f64,
    /// Cases the cost section offers.
    #[arg(long, default_value_t = 1000)]
    cost_cases: usize,
    /// The idle window of the resources, seconds.
    #[arg(long, default_value_t = 5.0)]
    idle_secs: f64,
    /// Rounds of the quota mix (17 changes of 15 kinds each; default 5, --quick 2).
    #[arg(long)]
    mix_rounds: Option<usize>,
    /// planner-adapter's plan poll during the mix and the cost section, ms
    /// (config/tg-bridge.toml: 30000).
    #[arg(long, default_value_t = 30_000)]
    planner_poll_ms: u64,
    /// dynamics-adapter's change-tracking poll during the cost section, ms
    /// (config/tg-bridge.toml: 60000).
    #[arg(long, default_value_t = 60_000)]
    dynamics_poll_ms: u64,
    /// Changes in the backlog (default 10,000; --quick 3,000).
    #[arg(long)]
    backlog: Option<usize>,
    /// How the services run: their own binaries (beside tgb; `cargo build --release --bins`),
    /// tgb itself once per service, or auto (the binaries when all six are there).
    #[arg(long, value_enum, default_value = "auto")]
    service_binaries: tgb::bench::procs::ServiceBinaries,
    /// The directory of the service binaries (default: tgb's own).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum CheckCommand {
    /// Run the TG contract's behaviours against a live TG shim (token, feed paging and
    /// cursors, Idempotency-Key replay, If-Match on case PATCH, document Digest): one line per
    /// behaviour; exit 0 only if every behaviour that ran conforms. Opens one test case.
    Tg(CheckTgArgs),
}

#[derive(Args)]
struct CheckTgArgs {
    /// The shim's API base URL.
    #[arg(long, env = "TGB_TG_API_URL")]
    url: url::Url,
    /// The shim's OAuth2 token endpoint.
    #[arg(long, env = "TGB_TG_TOKEN_URL")]
    token_url: url::Url,
    /// OAuth2 client id.
    #[arg(long, env = "TGB_TG_CLIENT_ID")]
    client_id: String,
    /// OAuth2 client secret (prefer the environment variable: arguments are visible to
    /// other users of the machine).
    #[arg(long, env = "TGB_TG_CLIENT_SECRET", hide_env_values = true)]
    client_secret: String,
    /// The partner the test case is opened with, `qualifier:id`.
    #[arg(long, default_value = "ZZ:ACME01")]
    partner: String,
    /// A document to fetch (default: the newest document.uploaded in the feed).
    #[arg(long)]
    document_id: Option<String>,
    /// Bound of each request and of the wait for the test webhook, seconds.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
    /// The shim's test-webhook trigger: tgb POSTs `{"url": <receiver>}` there (with the bearer
    /// token) and expects one signed webhook at the receiver. Without it the round trip is
    /// skipped.
    #[arg(long, requires = "webhook_secret")]
    webhook_trigger: Option<url::Url>,
    /// The `whsec_…` secret(s) the shim signs webhooks with, comma-separated.
    #[arg(
        long,
        env = "TGB_TG_WEBHOOK_SECRETS",
        hide_env_values = true,
        value_delimiter = ','
    )]
    webhook_secret: Vec<String>,
    /// Where the receiver of the test webhook listens.
    #[arg(long, default_value = "127.0.0.1:0")]
    webhook_listen: SocketAddr,
    /// The receiver's URL as the shim reaches it (default `http://<listen>/webhooks/tg`).
    #[arg(long)]
    webhook_url: Option<url::Url>,
}

#[derive(Subcommand)]
enum SetupTarget {
    /// Create or update, through the Web API metadata endpoints, every table, column, lookup
    /// and alternate key of proto/dataverse/tgb-solution.json, change tracking, and (with
    /// --webhook-url) the webhook endpoint and steps; prints the role's privileges. Reads the
    /// services' TGB_* settings (TGB_DATAVERSE_URL, TGB_AZURE_*, TGB_DATAVERSE_WEBHOOK_KEY).
    Dataverse {
        /// Print the plan; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// The dynamics-adapter's /webhooks/dataverse as Dataverse reaches it (without it, no
        /// webhook is registered).
        #[arg(long)]
        webhook_url: Option<String>,
        /// The solution description (default: the one built in).
        #[arg(long)]
        solution: Option<PathBuf>,
        /// Longest wait for the alternate keys' index jobs, seconds.
        #[arg(long, default_value_t = 600)]
        key_timeout: u64,
        /// Also create a security role of this name with the privileges printed (assign it
        /// to the application user yourself).
        #[arg(long)]
        create_role: Option<String>,
    },
}

#[derive(Subcommand)]
enum NatsCommand {
    /// Print the NATS users of tg-bridge, one per service with exactly the subjects it needs
    /// (generated from the code): a nats-server `accounts` block (passwords from
    /// `$TGB_NATS_PASSWORD_<SERVICE>`), or JSON for nsc or a chart's values.
    Permissions {
        #[arg(long, value_enum, default_value = "conf")]
        format: PermissionsFormat,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PermissionsFormat {
    Conf,
    Json,
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Every dead letter, oldest first.
    List {
        /// Only those of this consumer.
        #[arg(long)]
        consumer: Option<String>,
    },
    /// One dead letter: why, where from, headers, the decoded event.
    Show { id: u64 },
    /// Republish dead letters to their original subject (new Nats-Msg-Id), then remove them.
    Replay {
        /// The dead letter's id (see `tgb dlq list`).
        #[arg(conflicts_with = "all", required_unless_present = "all")]
        id: Option<u64>,
        /// Every dead letter (of --consumer, when given).
        #[arg(long)]
        all: bool,
        /// With --all: only those of this consumer.
        #[arg(long, requires = "all")]
        consumer: Option<String>,
        /// With --all: confirm (a replay of everything is not done by accident).
        #[arg(long, requires = "all")]
        yes: bool,
        /// With --all: replay at most this many, oldest first (default 100).
        #[arg(long, requires = "all")]
        limit: Option<usize>,
        /// Show what would be replayed; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Args, Clone)]
struct UpArgs {
    /// The tg-bridge TOML file (default: TGB_CONFIG, else config/tg-bridge.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The sandbox TOML file (default: config/sandbox.toml).
    #[arg(long)]
    sandbox_config: Option<PathBuf>,
    /// The sandbox's address (default: the file's, 127.0.0.1:8600).
    #[arg(long)]
    sandbox_listen: Option<SocketAddr>,
    /// Keep the NATS store of the previous run (it is emptied by default: the sandbox starts
    /// empty too, and old links would point at records that no longer exist).
    #[arg(long)]
    keep_data: bool,
    /// Services on free ports instead of 8081..8086.
    #[arg(long)]
    ephemeral_ports: bool,
    /// The address the services listen on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    host: IpAddr,
    /// Run only NATS and the sandbox; run the services yourself with the printed environment.
    #[arg(long)]
    sandbox_only: bool,
    /// Print the environment a service needs to join this system (export lines).
    #[arg(long)]
    print_env: bool,
    /// Demo timings: Planner polled every 500 ms (not 30 s), SLA ticks every 200 ms.
    #[arg(long)]
    fast: bool,
    /// Start the Dataverse emulator without tg-bridge's tables, columns, keys and webhook
    /// steps: run `tgb setup dataverse --webhook-url …` to create them.
    #[arg(long)]
    dataverse_empty_org: bool,
}

#[derive(Args)]
struct DemoArgs {
    #[command(flatten)]
    up: UpArgs,
    /// Partners taking part.
    #[arg(long, default_value_t = 1)]
    partners: usize,
    /// Cases raised per partner (D1/P1/P2 run once per case).
    #[arg(long, default_value_t = 2)]
    cases: usize,
    /// Drive the system a `tgb up` is running (found through <data-dir>/tgb-up.json).
    #[arg(long, conflicts_with = "url")]
    attach: bool,
    /// Drive a system already running at this sandbox URL instead of starting one (P3 then
    /// needs --control-url, the control URL `tgb up` prints).
    #[arg(long)]
    url: Option<String>,
    /// `tgb up`'s control URL (moves sla-monitor's clock for P3).
    #[arg(long, requires = "url")]
    control_url: Option<String>,
    /// Longest wait for one flow, seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

fn print<T: Serialize>(json: bool, value: &T, human: impl FnOnce(&T) -> String) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value)
                .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
        );
    } else {
        println!("{}", human(value));
    }
}

fn up_options(cli: &Cli, a: &UpArgs) -> UpOptions {
    UpOptions {
        config: a.config.clone(),
        sandbox_config: a.sandbox_config.clone(),
        sandbox_listen: a.sandbox_listen,
        data_dir: cli.data_dir.clone(),
        keep_data: a.keep_data,
        nats_url: cli.nats_url.clone(),
        nats_auth: nats_auth(cli),
        ports: if a.ephemeral_ports {
            Ports::Ephemeral
        } else {
            Ports::Default(a.host)
        },
        sandbox_only: a.sandbox_only,
        extra_env: if a.fast { fast_env() } else { Vec::new() },
        dataverse_empty_org: a.dataverse_empty_org,
        service_env: Vec::new(),
    }
}

/// Settings that make the demo quick: Planner polled every 500 ms, SLA ticks every 200 ms.
fn fast_env() -> Vec<(String, String)> {
    [
        ("TGB_ROUTING__GRAPH__POLL_INTERVAL_MS", "500"),
        ("TGB_SLA__TICK_INTERVAL_MS", "200"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

/// `--creds`, `--tls-ca`, `--tls-cert`, `--tls-key` (or their `TGB_NATS_*` variables).
fn nats_auth(cli: &Cli) -> tgb_bus::NatsAuth {
    tgb_bus::NatsAuth {
        creds: cli.creds.clone(),
        tls_ca: cli.tls_ca.clone(),
        tls_cert: cli.tls_cert.clone(),
        tls_key: cli.tls_key.clone(),
    }
}

/// The NATS of the system to operate.
fn operator_nats_url(cli: &Cli) -> String {
    if let Some(url) = &cli.nats_url {
        return url.clone();
    }
    std::fs::read_to_string(cli.data_dir.join("nats.url"))
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| tgb_runtime::config::DEFAULT_NATS_URL.to_owned())
}

fn bench_options(a: &BenchArgs) -> anyhow::Result<tgb::bench::BenchOptions> {
    if let Some(bad) = a.steps.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        anyhow::bail!("--steps: {bad} is not a positive rate");
    }
    if a.steps.is_empty() {
        anyhow::bail!("--steps: give at least one rate");
    }
    if !(a.cost_rate.is_finite() && a.cost_rate > 0.0) {
        anyhow::bail!("--cost-rate: {} is not a positive rate", a.cost_rate);
    }
    let step_secs = a.step_secs.unwrap_or(if a.quick { 5.0 } else { 10.0 });
    if !(step_secs.is_finite() && step_secs > 0.0) {
        anyhow::bail!("--step-secs must be above 0");
    }
    Ok(tgb::bench::BenchOptions {
        out_dir: a.out.clone(),
        quick: a.quick,
        sections: if a.sections.is_empty() {
            tgb::bench::Section::ALL.to_vec()
        } else {
            a.sections.clone()
        },
        pipeline: tgb::bench::pipeline::PipelineOptions {
            steps: a.steps.clone(),
            step_secs,
            drain_secs: a.drain_secs.max(1.0),
            raw_messages: a.raw_messages.max(1),
            partners: a.partners.max(1),
            saturation_share: 0.8,
        },
        cost: tgb::bench::cost::CostOptions {
            rate: a.cost_rate,
            cases: a.cost_cases.max(1),
            drain_secs: a.drain_secs.max(1.0),
            raw_messages: a.raw_messages.max(1),
            partners: a.partners.max(1),
        },
        idle_secs: a.idle_secs.max(0.5),
        mix_rounds: a.mix_rounds.unwrap_or(if a.quick { 2 } else { 5 }).max(1),
        planner_poll_ms: a.planner_poll_ms.max(100),
        dynamics_poll_ms: a.dynamics_poll_ms.max(100),
        backlog: a
            .backlog
            .unwrap_or(if a.quick { 3_000 } else { 10_000 })
            .max(1),
        services: a.service_binaries,
        bin_dir: a.bin_dir.clone(),
    })
}

/// One service, as its own binary's `main` runs it.
async fn bench_service(name: &str) -> anyhow::Result<()> {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    match name {
        "tg-ingress" => {
            tgb_service::main_in_runtime(tg_ingress::NAME, any, tg_ingress::serve).await
        }
        "tg-egress" => tgb_service::main_in_runtime(tg_egress::NAME, any, tg_egress::serve).await,
        "dynamics-adapter" => {
            tgb_service::main_in_runtime(dynamics_adapter::NAME, any, dynamics_adapter::serve).await
        }
        "planner-adapter" => {
            tgb_service::main_in_runtime(planner_adapter::NAME, any, planner_adapter::serve).await
        }
        "sla-monitor" => {
            tgb_service::main_in_runtime(sla_monitor::NAME, any, sla_monitor::serve).await
        }
        "document-review" => {
            tgb_service::main_in_runtime(document_review::NAME, any, document_review::serve).await
        }
        other => anyhow::bail!(
            "no service '{other}' (tg-ingress, tg-egress, dynamics-adapter, planner-adapter, sla-monitor, document-review)"
        ),
    }
}

fn main() {
    let cli = Cli::parse();
    // A floor process runs on the runtime the services run on (one thread); the rest of `tgb`
    // on tokio's default.
    let runtime = match cli.command {
        Command::BenchFloor { .. } => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build();
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tgb: starting the async runtime: {e}");
            std::process::exit(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("tgb: {e:#}");
            std::process::exit(2);
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    match &cli.command {
        Command::Check {
            command: CheckCommand::Tg(a),
        } => {
            let report = tgb::check_tg::run(&tgb::check_tg::Options {
                api_url: a.url.clone(),
                token_url: a.token_url.clone(),
                client_id: a.client_id.clone(),
                client_secret: a.client_secret.clone().into(),
                partner: a.partner.clone(),
                document_id: a.document_id.clone(),
                timeout: Duration::from_secs(a.timeout_secs.max(1)),
                webhook_trigger: a.webhook_trigger.clone(),
                webhook_secrets: a.webhook_secret.iter().map(|s| s.clone().into()).collect(),
                webhook_listen: a.webhook_listen,
                webhook_url: a.webhook_url.clone(),
            })
            .await;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
            Ok(if report.conforms() { 0 } else { 1 })
        }
        Command::Up(a) => {
            let format = tgb_runtime::Config::load()
                .map(|c| c.settings.log_format)
                .unwrap_or_default();
            let _telemetry = tgb_runtime::telemetry::init("tg-bridge", format);
            let stop = tgb_runtime::shutdown::on_signals();
            let system = System::start(up_options(&cli, a)).await?;
            let url_file = cli.data_dir.join("nats.url");
            let _ = std::fs::create_dir_all(&cli.data_dir);
            let _ = std::fs::write(&url_file, &system.nats_url);
            if !a.sandbox_only {
                system.wait_ready(Duration::from_secs(60)).await?;
            }
            println!("tg-bridge is up.\n{}", system.summary());
            if a.print_env || a.sandbox_only {
                println!(
                    "# Environment of a service joining this system:\n{}",
                    system.print_env()
                );
            }
            println!(
                "Operate it: tgb status | tgb dlq list | tgb history tg:<case id>   (NATS {})\n\
                 Drive it:   tgb demo --url {}\nCtrl-C stops everything.",
                system.nats_url,
                system.sandbox.base_url()
            );
            let result = system.run_until(stop).await;
            let _ = std::fs::remove_file(&url_file);
            result.map(|()| 0)
        }
        Command::Demo(a) => {
            let opts = demo::DemoOptions {
                partners: a.partners.max(1),
                cases: a.cases.max(1),
                flow_timeout: Duration::from_secs(a.timeout),
                progress: !cli.json,
            };
            let attached = if a.attach {
                let file = cli.data_dir.join("tgb-up.json");
                let text = std::fs::read_to_string(&file).with_context(|| {
                    format!(
                        "{} not found: is `tgb up` running with --data-dir {}?",
                        file.display(),
                        cli.data_dir.display()
                    )
                })?;
                let v: serde_json::Value = serde_json::from_str(&text)?;
                Some(demo::Target {
                    sandbox: v["sandbox"].as_str().unwrap_or_default().to_owned(),
                    control: v["control"].as_str().map(str::to_owned),
                    local_planner: None,
                })
            } else {
                a.url.as_ref().map(|url| demo::Target {
                    sandbox: url.trim_end_matches('/').to_owned(),
                    control: a.control_url.clone(),
                    local_planner: None,
                })
            };
            let report = match attached {
                Some(target) => demo::run(&target, &opts).await?,
                None => {
                    if std::env::var_os("RUST_LOG").is_some() {
                        let _ = tgb_runtime::telemetry::init(
                            "tg-bridge",
                            tgb_runtime::LogFormat::Pretty,
                        );
                    }
                    let mut up = up_options(&cli, &a.up);
                    up.extra_env = fast_env();
                    if a.up.sandbox_listen.is_none() {
                        up.sandbox_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
                    }
                    up.ports = Ports::Ephemeral;
                    let system = System::start(up).await?;
                    system.wait_ready(Duration::from_secs(60)).await?;
                    let target = demo::Target {
                        sandbox: system.sandbox.base_url(),
                        control: Some(system.control_url.clone()),
                        local_planner: Some((
                            system.sandbox.planner().clone(),
                            system.users.clone(),
                        )),
                    };
                    let report = demo::run(&target, &opts).await;
                    system.stop().await;
                    report?
                }
            };
            print(cli.json, &report, demo::render);
            Ok(if report.all_passed() { 0 } else { 1 })
        }
        Command::Dlq { command } => {
            let (_client, js) =
                ops::jetstream_with(&operator_nats_url(&cli), &nats_auth(&cli)).await?;
            match command {
                DlqCommand::List { consumer } => {
                    let list = ops::dlq_list(&js, consumer.as_deref()).await?;
                    print(cli.json, &list, |l| render::dlq_list(l));
                }
                DlqCommand::Show { id } => {
                    let d = ops::dlq_show(&js, *id).await?;
                    print(cli.json, &d, render::dlq_show);
                }
                DlqCommand::Replay {
                    id,
                    all,
                    consumer,
                    yes,
                    limit,
                    dry_run,
                } => {
                    let ids: Vec<u64> = if *all {
                        if !*yes && !*dry_run {
                            anyhow::bail!(
                                "--all republishes every dead letter: add --yes (and --limit N, \
                                 default {}), or see them first with --dry-run",
                                ops::DEFAULT_REPLAY_LIMIT
                            );
                        }
                        let limit = limit.unwrap_or(ops::DEFAULT_REPLAY_LIMIT);
                        let letters = ops::dlq_list(&js, consumer.as_deref()).await?;
                        if letters.len() > limit {
                            eprintln!(
                                "{} dead letters; replaying the oldest {limit} (--limit)",
                                letters.len()
                            );
                        }
                        letters.iter().take(limit).map(|l| l.id).collect()
                    } else {
                        vec![id.context("give a dead letter id, or --all")?]
                    };
                    let bar = (!cli.json && ids.len() > 1).then(|| {
                        let bar = indicatif::ProgressBar::new(ids.len() as u64);
                        bar.set_style(
                            indicatif::ProgressStyle::with_template(
                                "replaying {bar:40} {pos}/{len} {msg}",
                            )
                            .expect("valid template"),
                        );
                        bar
                    });
                    let mut done = Vec::new();
                    let mut refused = Vec::new();
                    for id in ids {
                        match ops::dlq_replay(&js, id, *dry_run).await {
                            Ok(d) => done.push(d),
                            // One refused dead letter does not stop the others; it stays put.
                            Err(e) if *all => refused.push(format!("{e:#}")),
                            Err(e) => return Err(e),
                        }
                        if let Some(b) = &bar {
                            b.inc(1);
                        }
                    }
                    if let Some(b) = bar {
                        b.finish_and_clear();
                    }
                    print(cli.json, &done, |d| render::replayed(d, *dry_run));
                    for r in &refused {
                        eprintln!("refused: {r}");
                    }
                    if !refused.is_empty() {
                        return Ok(1);
                    }
                }
            }
            Ok(0)
        }
        Command::History { record } => {
            let (_client, js) =
                ops::jetstream_with(&operator_nats_url(&cli), &nats_auth(&cli)).await?;
            let h = ops::history(&js, record).await?;
            print(cli.json, &h, render::history);
            Ok(0)
        }
        Command::Nats {
            command: NatsCommand::Permissions { format },
        } => {
            print!(
                "{}",
                match format {
                    PermissionsFormat::Conf => tgb::permissions::conf(),
                    PermissionsFormat::Json => tgb::permissions::json(),
                }
            );
            Ok(0)
        }
        Command::Links { record } => {
            let (_client, js) =
                ops::jetstream_with(&operator_nats_url(&cli), &nats_auth(&cli)).await?;
            let rows = ops::links(&js, record).await?;
            print(cli.json, &rows, |r| render::links(r, record));
            Ok(0)
        }
        Command::Rebuild { what } => match what {
            RebuildCommand::Links { dry_run } => {
                let config = tgb_runtime::Config::load()?;
                let (_client, js) =
                    ops::jetstream_with(&operator_nats_url(&cli), &nats_auth(&cli)).await?;
                let r = tgb::rebuild::links_from_config(&config, &js, None, *dry_run).await?;
                print(cli.json, &r, tgb::rebuild::render_links);
                Ok(0)
            }
            RebuildCommand::Sla { dry_run } => {
                let config = tgb_runtime::Config::load()?;
                let policies = sla_monitor::policies_from(&config)?;
                let (_client, js) =
                    ops::jetstream_with(&operator_nats_url(&cli), &nats_auth(&cli)).await?;
                let r = tgb::rebuild_sla::sla(&js, policies, *dry_run).await?;
                print(cli.json, &r, tgb::rebuild_sla::render);
                Ok(0)
            }
        },
        Command::Backfill { what } => {
            let config = tgb_runtime::Config::load()?;
            // The arguments are checked before anything is connected to.
            if let BackfillCommand::Tg { since, .. } = what {
                ops::parse_since(since, time::OffsetDateTime::now_utc())?;
            }
            let (_client, js) =
                ops::jetstream_with(&operator_nats_url(&cli), &nats_auth(&cli)).await?;
            let r = match what {
                BackfillCommand::Tg {
                    since,
                    partners,
                    rate,
                    dry_run,
                } => {
                    if !(rate.is_finite() && *rate > 0.0) {
                        anyhow::bail!("--rate: {rate} is not a positive rate");
                    }
                    let opts = tgb::backfill::TgOptions {
                        since: ops::parse_since(since, time::OffsetDateTime::now_utc())?,
                        partners: partners.clone(),
                        dry_run: *dry_run,
                        rate: *rate,
                    };
                    let client = tgb::backfill::tg_client(&config)?;
                    tgb::backfill::tg(&config, &js, &client, &opts).await?
                }
                BackfillCommand::Dataverse {
                    table: BackfillTable::Incident,
                    filter: BackfillFilter::Open,
                    dry_run,
                } => tgb::backfill::dataverse_open_incidents(&config, &js, *dry_run).await?,
            };
            print(cli.json, &r, tgb::backfill::render);
            Ok(0)
        }
        Command::Replay {
            consumer,
            since,
            dry_run,
        } => {
            let since = ops::parse_since(since, time::OffsetDateTime::now_utc())?;
            let (client, js) =
                ops::jetstream_with(&operator_nats_url(&cli), &nats_auth(&cli)).await?;
            let r = ops::replay_consumer(&client, &js, consumer, since, *dry_run).await?;
            print(cli.json, &r, |r| render::consumer_replay(r, *dry_run));
            Ok(0)
        }
        Command::Bench(a) => {
            let opts = bench_options(a)?;
            let quiet = cli.json;
            let report = tgb::bench::run(&opts, &|m: String| {
                if !quiet {
                    eprintln!("tgb bench: {m}");
                }
            })
            .await?;
            print(cli.json, &tgb::bench::to_json(&report)?, |_| {
                let r = &report;
                format!(
                    "{}\nResults in {}: bench.json, summary.md{}.",
                    tgb::bench::report::markdown(r),
                    opts.out_dir.display(),
                    if r.pipeline.is_some() {
                        ", pipeline.svg"
                    } else {
                        ""
                    }
                )
            });
            Ok(0)
        }
        Command::Setup {
            target:
                SetupTarget::Dataverse {
                    dry_run,
                    webhook_url,
                    solution,
                    key_timeout,
                    create_role,
                },
        } => {
            let config = tgb_runtime::Config::load()?;
            let dv = tgb::setup::client_from_config(&config)?;
            let (webhook_header, webhook_key) = tgb::setup::webhook_key_from_config(&config)?;
            let text = match solution {
                Some(p) => std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?,
                None => tgb_sandbox_dataverse::SOLUTION_JSON.to_owned(),
            };
            let file: tgb_sandbox_dataverse::SolutionFile =
                serde_json::from_str(&text).context("the solution description")?;
            let opts = tgb::setup::SetupOptions {
                dry_run: *dry_run,
                webhook_url: webhook_url.clone(),
                webhook_header,
                webhook_key,
                key_timeout: Duration::from_secs(*key_timeout),
                create_role: create_role.clone(),
            };
            let report = tgb::setup::run(&dv, &file, &opts).await?;
            print(cli.json, &report, tgb::setup::render);
            Ok(0)
        }
        Command::Doctor { services } => {
            let known: Vec<&str> = tgb::permissions::users().iter().map(|u| u.user).collect();
            if let Some(unknown) = services.iter().find(|s| !known.contains(&s.as_str())) {
                anyhow::bail!("no service {unknown:?}: one of {}", known.join(", "));
            }
            let config = tgb_runtime::Config::load()?;
            let file: tgb_sandbox_dataverse::SolutionFile =
                serde_json::from_str(tgb_sandbox_dataverse::SOLUTION_JSON)
                    .context("the solution description")?;
            let opts = tgb::doctor::DoctorOptions {
                services: services.clone(),
            };
            let report = tgb::doctor::run_with(&config, &file, &opts).await;
            print(cli.json, &report, tgb::doctor::render);
            Ok(if report.passed { 0 } else { 1 })
        }
        Command::BenchService { name } => {
            bench_service(name).await?;
            Ok(0)
        }
        Command::BenchFloor { role } => {
            tgb::bench::floor::serve(role.clone()).await?;
            Ok(0)
        }
        Command::Status { metrics } => {
            let (client, js) =
                ops::jetstream_with(&operator_nats_url(&cli), &nats_auth(&cli)).await?;
            let s = ops::status(&client, &js, metrics).await?;
            print(cli.json, &s, render::status);
            Ok(0)
        }
    }
}
