//! `tgb doctor` against the system `tgb up` starts: all green as started (no `tgb setup` run
//! first), and, for each thing a deployment gets wrong, exactly that check fails.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tgb::doctor::{self, Check, DoctorOptions, DoctorReport};
use tgb::system::System;
use tgb_runtime::Config;
use tgb_sandbox_dataverse::SolutionFile;
use tgb_sandbox_dataverse::schema::AlternateKey;

use crate::support;

const FAST: &[(&str, &str)] = &[
    ("TGB_ROUTING__GRAPH__POLL_INTERVAL_MS", "500"),
    ("TGB_SLA__TICK_INTERVAL_MS", "200"),
];

/// The user the configured routing assigns procurement and logistics work to (Pat Planner).
const PAT: &str = "2a1b0c3d-0000-4000-8000-000000000102";
/// The group of the demo tenant that owns both plans.
const GROUP: &str = "0b7a5f5e-6a3c-4f1e-8d0a-2c9e4b1f7a10";

fn file() -> SolutionFile {
    serde_json::from_str(tgb_sandbox_dataverse::SOLUTION_JSON).unwrap()
}

/// The services' environment, as planner-adapter gets it, with `extra` on top.
fn env_of(system: &System, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let planner = system.service("planner-adapter").unwrap();
    let mut env = system.service_env(planner.addr);
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    env
}

fn config_with(system: &System, extra: &[(&str, &str)]) -> Config {
    let path = tgb::system::find_in_repo(tgb_runtime::config::DEFAULT_CONFIG_PATH);
    Config::load_from(path.as_deref(), env_of(system, extra)).unwrap()
}

async fn doctor(config: &Config, file: &SolutionFile) -> DoctorReport {
    let report = tokio::time::timeout(
        tgb_testkit::HANG_GUARD,
        doctor::run_with(config, file, &DoctorOptions::default()),
    )
    .await
    .expect("doctor ends");
    println!("{}", doctor::render(&report));
    report
}

/// The one failing check, asserted to be the only one.
fn only_failure(report: &DoctorReport) -> &Check {
    let failed: Vec<&Check> = report.checks.iter().filter(|c| c.failed()).collect();
    assert_eq!(
        failed.len(),
        1,
        "exactly one check fails:\n{}",
        doctor::render(report)
    );
    assert!(!report.passed);
    assert!(!failed[0].hint.is_empty(), "a failure has a hint");
    failed[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn doctor_passes_every_check_on_the_system_tgb_up_starts() {
    let (system, _dir) = support::system(FAST).await;
    let config = config_with(&system, &[]);
    let report = doctor(&config, &file()).await;
    assert!(report.passed, "{}", doctor::render(&report));
    assert!(report.checks.iter().all(|c| c.ok && !c.skipped));
    for name in [
        "entra: token",
        "dataverse: Entra token and WhoAmI",
        "dataverse: key incident.tgb_tgcaseid_key",
        "dataverse: webhook endpoint",
        "dataverse: webhook steps",
        "graph: plan issues",
        "graph: bucket issues.triage",
        "graph: label issues \"Escalated\"",
        "graph: assignee 2a1b0c3d-0000-4000-8000-000000000101",
        "graph: assignee 2a1b0c3d-0000-4000-8000-000000000102",
        "graph: assignee 2a1b0c3d-0000-4000-8000-000000000103",
        "tg: token",
        "tg: event feed",
        "tg: write without effect",
        "nats: reachable",
        "nats: consumer planner-adapter",
        "nats: permissions of tg-ingress",
        "nats: permissions of document-review",
    ] {
        assert!(
            report.checks.iter().any(|c| c.name == name && c.ok),
            "{name}"
        );
    }
    let steps = report
        .checks
        .iter()
        .find(|c| c.name == "dataverse: webhook steps")
        .unwrap();
    assert_eq!(
        steps.detail,
        format!("{} steps", tgb::setup::webhook_steps().len())
    );
    // The no-op write left nothing behind in TG.
    let tg = &system.sandbox.state()["tg"];
    for part in ["cases", "case_updates"] {
        assert!(
            !tg[part].to_string().contains(doctor::NO_SUCH_CASE),
            "the no-op changed nothing: {part}"
        );
    }
    let writes: Vec<&Value> = tg["writes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| {
            w["path"]
                .as_str()
                .is_some_and(|p| p.contains(doctor::NO_SUCH_CASE))
        })
        .collect();
    assert_eq!(writes.len(), 1, "one write, by the doctor: {writes:?}");
    assert_eq!(writes[0]["status"], 404);
    assert!(writes[0]["idempotency_key"].is_string());

    // The NATS probes (as the broker's admin: every service's subjects) stored and created
    // nothing: no dead letter, ledger entry or key, no consumer.
    let client = async_nats::connect(&system.nats_url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut dlq = js.get_stream(tgb_bus::names::DLQ_STREAM).await.unwrap();
    assert_eq!(dlq.info().await.unwrap().state.messages, 0);
    let ledger = js.get_stream(tgb_bus::names::LEDGER_STREAM).await.unwrap();
    assert!(
        ledger
            .get_last_raw_message_by_subject("tgb.ledger.tgb-doctor-probe")
            .await
            .is_err()
    );
    for (bucket, _) in tgb_bus::names::KV_BUCKETS {
        let kv = js.get_key_value(*bucket).await.unwrap();
        assert!(
            kv.get("tgb-doctor-probe").await.unwrap().is_none(),
            "{bucket}"
        );
    }
    let events = js.get_stream(tgb_bus::names::EVENTS_STREAM).await.unwrap();
    assert!(events.consumer_info("tgb-doctor-probe").await.is_err());

    // The command: the same checks, exit code 0.
    let env = env_of(&system, &[]);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_tgb"))
            .args(["--json", "doctor"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env)
            .output()
            .unwrap()
    });
    let out = tokio::time::timeout(tgb_testkit::HANG_GUARD + Duration::from_secs(30), out)
        .await
        .expect("tgb doctor ends")
        .unwrap();
    let json: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(0), "{json:#}");
    assert_eq!(json["passed"], true);
    assert_eq!(
        json["checks"].as_array().unwrap().len(),
        report.checks.len()
    );
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn doctor_names_the_one_failing_check_for_each_wrong_setting() {
    let (system, _dir) = support::system(FAST).await;
    let file = file();

    // A wrong Entra client secret: the token fails; Dataverse and Graph are not run.
    let config = config_with(&system, &[("TGB_AZURE_CLIENT_SECRET", "not-the-secret")]);
    let report = doctor(&config, &file).await;
    let failed = only_failure(&report);
    assert_eq!(failed.name, "entra: token");
    assert!(
        failed.detail.contains("invalid_client"),
        "{}",
        failed.detail
    );
    assert!(!failed.detail.contains("not-the-secret"), "no secret shown");
    let skipped: Vec<&str> = report
        .checks
        .iter()
        .filter(|c| c.skipped)
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(skipped, ["dataverse", "graph"]);

    // A wrong TG client secret.
    let config = config_with(&system, &[("TGB_TG_CLIENT_SECRET", "not-the-secret")]);
    let report = doctor(&config, &file).await;
    assert_eq!(only_failure(&report).name, "tg: token");

    // A key the solution description has and the organisation lacks (setup not re-run after
    // an upgrade).
    let mut newer = file.clone();
    let incident = newer
        .tables
        .iter_mut()
        .find(|t| t.logicalname == "incident")
        .unwrap();
    let mut key: AlternateKey = incident.keys[0].clone();
    key.schemaname = "tgb_doctorprobe_key".into();
    incident.keys.push(key);
    let config = config_with(&system, &[]);
    let report = doctor(&config, &newer).await;
    let failed = only_failure(&report);
    assert_eq!(failed.name, "dataverse: key incident.tgb_doctorprobe_key");
    assert_eq!(failed.detail, "missing");

    // A label the plan does not have.
    let default = tgb::system::find_in_repo(tgb_runtime::config::DEFAULT_CONFIG_PATH).unwrap();
    let text = std::fs::read_to_string(&default).unwrap();
    let wrong = text.replacen(
        "labels = [\"Escalated\"]\ndue_hours = 4",
        "labels = [\"Escalated\", \"Urgentt\"]\ndue_hours = 4",
        1,
    );
    assert_ne!(wrong, text, "the escalation target has its labels line");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tg-bridge.toml");
    std::fs::write(&path, wrong).unwrap();
    // The file given here, not the repository's that the services' TGB_CONFIG names.
    let mut env = env_of(&system, &[]);
    env.retain(|(k, _)| k != "TGB_CONFIG");
    let env_config = Config::load_from(Some(&path), env).unwrap();
    let report = doctor(&env_config, &file).await;
    let failed = only_failure(&report);
    assert_eq!(failed.name, "graph: label issues \"Urgentt\"");
    assert!(
        failed.detail.contains("has no label named"),
        "{}",
        failed.detail
    );

    // NATS unreachable: a port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let url = format!("nats://127.0.0.1:{port}");
    let config = config_with(&system, &[("TGB_NATS_URL", &url)]);
    let report = doctor(&config, &file).await;
    let failed = only_failure(&report);
    assert_eq!(failed.name, "nats: reachable");
    assert!(
        failed.detail.contains(&port.to_string()),
        "{}",
        failed.detail
    );
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn doctor_names_the_one_failing_check_for_each_broken_part_of_the_tenant() {
    let (system, _dir) = support::system(FAST).await;
    let file = file();
    let config = config_with(&system, &[]);

    // Someone deletes the Close step of the webhook.
    let dv = tgb::setup::client_from_config(&config).unwrap();
    let step = dv
        .get("sdkmessageprocessingsteps?$filter=name eq 'tg-bridge: Close of incident'")
        .await
        .unwrap();
    let id = step["value"][0]["sdkmessageprocessingstepid"]
        .as_str()
        .expect("tgb up registered the Close step")
        .to_owned();
    dv.send(
        reqwest::Method::DELETE,
        &format!("sdkmessageprocessingsteps({id})"),
        &[],
        None,
    )
    .await
    .unwrap();
    let report = doctor(&config, &file).await;
    let failed = only_failure(&report);
    assert_eq!(failed.name, "dataverse: webhook steps");
    assert_eq!(failed.detail, "missing: Close of incident");
    // Setup's registration puts it back.
    let adapter = system.service("dynamics-adapter").unwrap();
    let adapter_config = system
        .service_config("dynamics-adapter", adapter.addr)
        .unwrap();
    let (webhook_header, webhook_key) =
        tgb::setup::webhook_key_from_config(&adapter_config).unwrap();
    let opts = tgb::setup::SetupOptions {
        dry_run: false,
        webhook_url: Some(format!("{}/webhooks/dataverse", adapter.url())),
        webhook_header,
        webhook_key,
        key_timeout: tgb_testkit::HANG_GUARD,
        create_role: None,
    };
    let again = tgb::setup::register_webhook(&dv, &file, &opts)
        .await
        .unwrap();
    assert_eq!(again.changes, 1, "{}", tgb::setup::render(&again));

    // A person an assignment goes to leaves the plan's group.
    assert!(system.sandbox.planner().remove_member(GROUP, PAT));
    let report = doctor(&config, &file).await;
    let failed = only_failure(&report);
    assert_eq!(failed.name, format!("graph: assignee {PAT}"));
    assert!(
        failed.detail.contains("is not a member of group")
            && failed.detail.contains("routing.departments.procurement"),
        "{}",
        failed.detail
    );
    system.sandbox.planner().add_member(GROUP, PAT);

    // Someone deletes the triage bucket in Planner.
    let bucket = "bKtTriage000000000000000000A";
    let url = format!(
        "{}/v1.0/planner/buckets/{bucket}",
        system.sandbox.graph_url_as("planner")
    );
    let http = reqwest::Client::new();
    let current: Value = http.get(&url).send().await.unwrap().json().await.unwrap();
    let etag = current["@odata.etag"].as_str().expect("the bucket's ETag");
    let deleted = http
        .delete(&url)
        .header("If-Match", etag)
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());
    let report = doctor(&config, &file).await;
    let failed = only_failure(&report);
    assert_eq!(failed.name, "graph: bucket issues.triage");
    assert!(failed.detail.contains(bucket), "{}", failed.detail);
    system.stop().await;
}

#[tokio::test]
async fn doctor_names_the_subject_a_nats_user_may_not_use() {
    tgb_testkit::init_test_tracing();
    let conf = tgb::permissions::render_conf(&|user| format!("\"pw-{user}\""));
    let nats = tgb_testkit::NatsServer::start_with_config(&conf)
        .await
        .expect("nats-server with the generated users");
    let url_of = |user: &str| format!("nats://{user}:pw-{user}@127.0.0.1:{}", nats.port());
    tgb_bus::Bus::connect(&url_of("admin"), None, tgb_bus::BusConfig::default())
        .await
        .unwrap();
    let check = |user: &str, service: &str| {
        let config = Config::load_from(None, [("TGB_NATS_URL".to_owned(), url_of(user))]).unwrap();
        let service = service.to_owned();
        async move {
            let opts = DoctorOptions {
                services: vec![service.clone()],
            };
            let report = doctor::run_with(&config, &file(), &opts).await;
            println!("{}", doctor::render(&report));
            report
                .checks
                .into_iter()
                .find(|c| c.name == format!("nats: permissions of {service}"))
                .expect("the permission line")
        }
    };
    // Under its own user, dynamics-adapter has what it needs.
    let own = check("dynamics-adapter", "dynamics-adapter").await;
    assert!(own.ok, "{}", own.detail);
    // Under dynamics-adapter's user, tg-egress could neither create its consumer nor dead-letter.
    let other = check("dynamics-adapter", "tg-egress").await;
    assert!(other.failed());
    for subject in [
        "$JS.API.CONSUMER.CREATE.TGB_EVENTS.tg-egress",
        "tgb.dlq.tg-egress.tgb-doctor-probe",
    ] {
        assert!(
            other
                .detail
                .contains(&format!("Permissions Violation for Publish to \"{subject}")),
            "{subject}: {}",
            other.detail
        );
    }
    assert!(!other.detail.contains("pw-"), "no password shown");
    // Nothing the probes sent was stored or created.
    let client =
        async_nats::ConnectOptions::with_user_and_password("admin".into(), "pw-admin".into())
            .connect(format!("nats://127.0.0.1:{}", nats.port()))
            .await
            .unwrap();
    let js = async_nats::jetstream::new(client);
    let mut dlq = js.get_stream(tgb_bus::names::DLQ_STREAM).await.unwrap();
    assert_eq!(dlq.info().await.unwrap().state.messages, 0);
    let mut events = js.get_stream(tgb_bus::names::EVENTS_STREAM).await.unwrap();
    assert_eq!(events.info().await.unwrap().state.messages, 0);
    assert!(events.consumer_info("tgb-doctor-probe").await.is_err());
}
