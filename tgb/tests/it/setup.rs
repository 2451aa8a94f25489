//! `tgb setup dataverse` against the Dataverse emulator started as an empty organisation.

use tgb::demo::{self, DemoOptions, Target};
use tgb::setup::{self, Action, SetupOptions, SetupReport};
use tgb::system::{System, UpOptions};
use tgb_clients::dataverse::{DataverseClient, DataverseError};
use tgb_sandbox_dataverse::SolutionFile;

const ROLE: &str = "tg-bridge integration";

const FAST: &[(&str, &str)] = &[
    ("TGB_ROUTING__GRAPH__POLL_INTERVAL_MS", "500"),
    ("TGB_SLA__TICK_INTERVAL_MS", "200"),
];

async fn empty_org_system(sandbox_only: bool) -> (System, tempfile::TempDir) {
    tgb_testkit::init_test_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = UpOptions::ephemeral(dir.path());
    opts.dataverse_empty_org = true;
    opts.sandbox_only = sandbox_only;
    opts.extra_env = FAST
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let system = System::start(opts).await.expect("tgb up starts");
    system
        .wait_ready(tgb_testkit::HANG_GUARD)
        .await
        .expect("every service ready");
    (system, dir)
}

/// The client and options setup uses, from the dynamics-adapter's own configuration.
fn setup_for(system: &System, dry_run: bool) -> (DataverseClient, SetupOptions) {
    let adapter = system.service("dynamics-adapter").expect("listed");
    let config = system
        .service_config("dynamics-adapter", adapter.addr)
        .unwrap();
    let dv = setup::client_from_config(&config).unwrap();
    let (webhook_header, webhook_key) = setup::webhook_key_from_config(&config).unwrap();
    let opts = SetupOptions {
        dry_run,
        webhook_url: Some(format!("{}/webhooks/dataverse", adapter.url())),
        webhook_header,
        webhook_key,
        key_timeout: tgb_testkit::HANG_GUARD,
        create_role: Some(ROLE.into()),
    };
    (dv, opts)
}

fn file() -> SolutionFile {
    serde_json::from_str(tgb_sandbox_dataverse::SOLUTION_JSON).unwrap()
}

/// Every item the solution file and the adapter's webhook call for, by kind.
fn expected_counts(file: &SolutionFile) -> Vec<(&'static str, usize)> {
    let custom = |n: &str| n.starts_with("tgb_");
    let tables = file.tables.iter().filter(|t| !t.standard).count();
    let columns = file
        .tables
        .iter()
        .map(|t| {
            t.columns
                .iter()
                .filter(|c| {
                    custom(&c.logicalname) && (t.standard || c.logicalname != t.primaryname)
                })
                .count()
        })
        .sum();
    let lookups = file
        .tables
        .iter()
        .map(|t| t.lookups.iter().filter(|l| custom(&l.logicalname)).count())
        .sum();
    let keys = file.tables.iter().map(|t| t.keys.len()).sum();
    let tracking = file.tables.iter().filter(|t| t.changetracking).count();
    let steps = setup::WEBHOOK_TABLES.len() * 3 + 1;
    let images = setup::WEBHOOK_TABLES.len() * 2;
    vec![
        ("table", tables),
        ("column", columns),
        ("lookup", lookups),
        ("key", keys),
        ("change_tracking", tracking),
        ("service_endpoint", 1),
        ("step", steps),
        ("image", images),
        ("role", 1),
    ]
}

fn count(report: &SetupReport, kind: &str, action: Action) -> usize {
    report
        .steps
        .iter()
        .filter(|s| s.kind == kind && s.action == action)
        .count()
}

async fn table_exists(dv: &DataverseClient, table: &str) -> bool {
    match dv
        .get(&format!("EntityDefinitions(LogicalName='{table}')"))
        .await
    {
        Ok(_) => true,
        Err(DataverseError::NotFound { .. }) => false,
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn setup_on_an_empty_org_is_planned_applied_once_and_then_the_demo_passes() {
    let (system, _dir) = empty_org_system(false).await;
    let file = file();
    let expected = expected_counts(&file);

    // The dry run lists every item as to be created or changed, and changes nothing.
    let (dv, opts) = setup_for(&system, true);
    let plan = setup::run(&dv, &file, &opts).await.unwrap();
    println!("{}", setup::render(&plan));
    for (kind, n) in &expected {
        let changing = count(&plan, kind, Action::Create) + count(&plan, kind, Action::Update);
        assert_eq!(changing, *n, "dry run: {kind}");
    }
    assert_eq!(plan.changes, plan.steps.len());
    assert!(
        !table_exists(&dv, "tgb_exception").await,
        "a dry run creates nothing"
    );
    let again = setup::run(&dv, &file, &opts).await.unwrap();
    assert_eq!(again.changes, plan.changes, "still everything to do");

    // The real run does what was planned, and waits for the keys.
    let (dv, opts) = setup_for(&system, false);
    let done = setup::run(&dv, &file, &opts).await.unwrap();
    println!("{}", setup::render(&done));
    assert_eq!(done.changes, plan.changes);
    for s in done.steps.iter().filter(|s| s.kind == "key") {
        assert_eq!(s.detail, "index Active", "{}", s.target);
    }
    assert!(table_exists(&dv, "tgb_partnerkpi").await);
    let role = dv
        .get(&format!("roles?$filter=name eq '{ROLE}'"))
        .await
        .unwrap();
    let granted = role["value"][0]["privileges"].as_array().unwrap().len();
    let wanted: usize = setup::PRIVILEGES.iter().map(|(_, p)| p.len()).sum();
    assert_eq!(granted, wanted, "the role holds every privilege printed");

    // A second run changes nothing, and says so.
    let second = setup::run(&dv, &file, &opts).await.unwrap();
    assert_eq!(second.changes, 0, "{}", setup::render(&second));
    assert!(setup::render(&second).contains("Nothing to change"));
    for (kind, n) in &expected {
        assert_eq!(
            count(&second, kind, Action::Exists),
            *n,
            "second run: {kind}"
        );
    }

    // The system works against the organisation setup made, webhooks included.
    let target = Target {
        sandbox: system.sandbox.base_url(),
        control: Some(system.control_url.clone()),
        local_planner: Some((system.sandbox.planner().clone(), system.users.clone())),
    };
    let demo_opts = DemoOptions {
        partners: 1,
        cases: 1,
        flow_timeout: tgb_testkit::HANG_GUARD,
        progress: false,
    };
    let report = demo::run(&target, &demo_opts).await.unwrap();
    println!("{}", demo::render(&report));
    for f in &report.flows {
        assert!(f.passed, "{} failed: {}", f.flow, f.arrived);
    }
    // A person resolves an open case in Dynamics: the Close step tells the adapter.
    let dataverse = system.sandbox.dataverse().clone();
    let incident = dataverse
        .rows("incidents")
        .into_iter()
        .find(|r| r["statecode"] == 0)
        .and_then(|r| r["incidentid"].as_str().map(str::to_owned))
        .expect("the demo left an open case");
    let person: uuid::Uuid = system.users[0].1.parse().unwrap();
    let (status, _, body) = dataverse.request_as(
        person,
        reqwest::Method::POST,
        "CloseIncident",
        Default::default(),
        Some(serde_json::json!({
            "IncidentResolution": {
                "subject": "Solved by phone",
                "incidentid@odata.bind": format!("/incidents({incident})"),
            },
            "Status": 5,
        })),
    );
    assert!(status.is_success(), "{body:?}");
    let delivered = tgb_testkit::eventually(
        "the Close webhook delivered",
        tgb_testkit::HANG_GUARD,
        || {
            let dataverse = dataverse.clone();
            async move {
                dataverse
                    .webhook_deliveries()
                    .into_iter()
                    .find(|d| d.message == "Close" && d.entity == "incident")
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:?}: {:?}", dataverse.webhook_deliveries()));
    assert!(
        delivered.status.is_some_and(|s| (200..300).contains(&s)),
        "the adapter took the Close: {delivered:?}"
    );

    // `tgb doctor` against the organisation setup made and the running system: all green.
    let planner = system.service("planner-adapter").unwrap();
    let config = system
        .service_config("planner-adapter", planner.addr)
        .unwrap();
    let report = tgb::doctor::run(&config, &file).await;
    println!("{}", tgb::doctor::render(&report));
    assert!(report.passed, "{}", tgb::doctor::render(&report));
    for name in [
        "dataverse: Entra token and WhoAmI",
        "dataverse: privileges of the application user",
        "dataverse: key incident.tgb_tgcaseid_key",
        "dataverse: webhook steps",
        "graph: plan issues",
        "graph: bucket issues.triage",
        "tg: event feed",
        "nats: stream TGB_EVENTS",
        "nats: consumer planner-adapter",
    ] {
        assert!(
            report.checks.iter().any(|c| c.name == name && c.ok),
            "{name}"
        );
    }

    // A wrong plan id fails that line (and so the exit code), naming the id.
    let mut env = system.service_env(planner.addr);
    env.push((
        "TGB_ROUTING__PLANS__ISSUES__PLAN_ID".into(),
        "no-such-plan-0000".into(),
    ));
    let file_path = tgb::system::find_in_repo(tgb_runtime::config::DEFAULT_CONFIG_PATH);
    let wrong = tgb_runtime::Config::load_from(file_path.as_deref(), env).unwrap();
    let report = tgb::doctor::run(&wrong, &file).await;
    println!("{}", tgb::doctor::render(&report));
    assert!(!report.passed);
    let failed: Vec<&str> = report
        .checks
        .iter()
        .filter(|c| c.failed())
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(failed, vec!["graph: plan issues"], "only the plan fails");
    let line = report.checks.iter().find(|c| c.failed()).unwrap();
    assert!(line.detail.contains("no-such-plan-0000"), "{}", line.detail);
    assert!(!line.hint.is_empty());

    // An application user without a privilege the flows need fails the privileges line.
    let app_user: uuid::Uuid = dv.who_am_i().await.unwrap().parse().unwrap();
    dataverse.revoke_privilege(app_user, "prvCreateincident");
    let report = tgb::doctor::run(&config, &file).await;
    println!("{}", tgb::doctor::render(&report));
    let failed: Vec<&tgb::doctor::Check> = report.checks.iter().filter(|c| !c.ok).collect();
    assert_eq!(failed.len(), 1, "{}", tgb::doctor::render(&report));
    assert_eq!(
        failed[0].name,
        "dataverse: privileges of the application user"
    );
    assert_eq!(failed[0].detail, "lacks prvCreateincident");
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn planner_adapter_refuses_to_start_when_a_configured_bucket_is_missing() {
    let (system, _dir) = empty_org_system(true).await;
    let planner = system.service("planner-adapter").unwrap();
    let mut env = system.service_env(planner.addr);
    env.push((
        "TGB_ROUTING__PLANS__ISSUES__BUCKETS__TRIAGE".into(),
        "bKtNoSuchBucket".into(),
    ));
    let file_path = tgb::system::find_in_repo(tgb_runtime::config::DEFAULT_CONFIG_PATH);
    let config = tgb_runtime::Config::load_from(file_path.as_deref(), env).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let err = tokio::time::timeout(
        tgb_testkit::HANG_GUARD,
        planner_adapter::serve(config, listener, stop.clone()),
    )
    .await
    .expect("it stops by itself")
    .expect_err("it refuses to start");
    let text = format!("{err:#}");
    println!("{text}");
    assert!(
        text.contains("bKtNoSuchBucket") && text.contains("buckets.triage"),
        "{text}"
    );
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_key_index_job_is_reported_by_name() {
    let (system, _dir) = empty_org_system(true).await;
    system.sandbox.dataverse().fail_key_job("tgb_tgcaseid_key");
    let (dv, mut opts) = setup_for(&system, false);
    opts.webhook_url = None;
    let err = setup::run(&dv, &file(), &opts).await.unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("tgb_tgcaseid_key") && text.contains("incident") && text.contains("Failed"),
        "{text}"
    );
    system.stop().await;
}
