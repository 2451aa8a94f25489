//! Requests on single Planner tasks made while the client is sending leave together in one
//! JSON `$batch`, and each gets its own answer as if it had been sent alone.

use std::sync::Arc;
use std::time::Duration;

use tgb_clients::graph::{GraphClient, GraphError, MAX_ROUNDS_IN_FLIGHT, NewTask};
use tgb_clients::oauth::{ClientCredentials, TokenCache};
use tgb_governor::{Governor, GovernorConfig};
use tgb_sandbox::{Fault, FaultRule, Sandbox, SandboxConfig};

const PLAN: &str = "pLnPartnerIssues00000000000A";
const TRIAGE: &str = "bKtTriage000000000000000000A";

fn client(sb: &Sandbox) -> GraphClient {
    let (id, secret) = sb.identity().first_entra_client().unwrap();
    let mut credentials = ClientCredentials::new(
        format!("{}/tenant/oauth2/v2.0/token", sb.azure_authority())
            .parse()
            .unwrap(),
        id.clone(),
        secrecy::SecretString::from(secret),
    );
    credentials.scope = Some(format!("{}/.default", sb.graph_url()));
    GraphClient::new(
        GraphClient::http_client(Duration::from_secs(30)),
        sb.graph_url().parse().unwrap(),
        Arc::new(TokenCache::new(reqwest::Client::new(), credentials)),
        Governor::new("graph:test", GovernorConfig::default()),
        id,
    )
}

/// Reads of task `id` take `ms`; everything else answers at once.
fn slow_reads_of(sb: &Sandbox, id: &str, ms: u64) {
    sb.faults()
        .add(
            FaultRule::new("graph", Fault::Latency { ms })
                .method("GET")
                .path_prefix(&format!("/v1.0/planner/tasks/{id}")),
        )
        .unwrap();
}

fn task(title: &str) -> NewTask {
    NewTask {
        plan_id: PLAN.into(),
        bucket_id: Some(TRIAGE.into()),
        title: title.into(),
        ..Default::default()
    }
}

/// The Graph requests the sandbox received, as `METHOD /route`.
fn graph_requests(sb: &Sandbox) -> Vec<String> {
    sb.calls()
        .of_system("graph")
        .iter()
        .map(|c| format!("{} {}", c.method, c.route))
        .collect()
}

#[tokio::test]
async fn task_requests_made_together_leave_in_one_batch_each_with_its_own_answer() {
    let sb = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let graph = client(&sb);
    // One alone, as before: a plain request.
    let first = graph.create_task(&task("alone")).await.unwrap();
    assert_eq!(graph_requests(&sb), ["POST /v1.0/planner/tasks"]);

    let titles: Vec<String> = (0..6).map(|i| format!("together {i}")).collect();
    let new: Vec<NewTask> = titles.iter().map(|t| task(t)).collect();
    let (created, details, missing) = tokio::join!(
        futures::future::join_all(new.iter().map(|t| graph.create_task(t))),
        graph.get_details(&first.id),
        graph.get_task("no-such-task-000000000000000"),
    );
    let created: Vec<_> = created.into_iter().map(Result::unwrap).collect();
    let got: Vec<&str> = created.iter().map(|t| t.title.as_str()).collect();
    assert_eq!(got, titles, "each creation answered with its own task");
    let mut ids: Vec<&str> = created.iter().map(|t| t.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 6, "six tasks");
    assert_eq!(
        details.unwrap().id,
        first.id,
        "the read answered with its own details"
    );
    assert!(
        matches!(missing, Err(GraphError::NotFound { .. })),
        "a request refused inside the batch fails alone: {missing:?}"
    );
    // The eight requests made at once (the first of them starts the sender, the others queue
    // before it runs) went out in one HTTP request.
    assert_eq!(
        graph_requests(&sb),
        ["POST /v1.0/planner/tasks", "POST /v1.0/$batch"],
        "the requests made together left in one $batch"
    );
    let titles_in_plan = sb.planner().snapshot()["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| {
            t["task"]["title"]
                .as_str()
                .is_some_and(|s| s.starts_with("together"))
        })
        .count();
    assert_eq!(titles_in_plan, 6, "each created once");
}

#[tokio::test]
async fn a_slow_answer_holds_none_of_the_requests_made_after_it() {
    let sb = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let graph = client(&sb);
    let slow = graph.create_task(&task("slow to read")).await.unwrap();
    // Reads of this one task take 30 s; everything else answers at once.
    slow_reads_of(&sb, &slow.id, 30_000);
    let slow_read = graph.get_task(&slow.id);
    tokio::pin!(slow_read);
    // The slow read goes out first; three creations come while it is in flight.
    let made_after = async {
        // Once the slow read holds the lane's permit, it is on its way.
        while graph.governor().in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        let mut titles = Vec::new();
        for i in 0..3 {
            titles.push(
                graph
                    .create_task(&task(&format!("after {i}")))
                    .await
                    .unwrap()
                    .title,
            );
        }
        titles
    };
    tokio::select! {
        biased;
        _ = &mut slow_read => panic!("the slow read answered first: the creations waited for it"),
        titles = made_after => assert_eq!(titles, ["after 0", "after 1", "after 2"]),
    }
}

#[test]
fn the_requests_inside_a_batch_are_counted_under_their_own_routes_and_statuses() {
    // The coalescer's sender runs on the test's runtime too: the counts are this test's.
    let text = crate::metrics_of(|| async {
        let sb = Sandbox::start(SandboxConfig::default()).await.unwrap();
        let graph = client(&sb);
        let (first, second) = (task("counted a"), task("counted b"));
        let (a, b, missing) = tokio::join!(
            graph.create_task(&first),
            graph.create_task(&second),
            graph.get_task("no-such-task-000000000000000"),
        );
        assert!(a.is_ok() && b.is_ok() && missing.is_err());
        assert_eq!(graph_requests(&sb), ["POST /v1.0/$batch"]);
    });
    let count = |route: &str, status: u16| {
        let series = format!(r#"route="{route}",status="{status}"}}"#);
        text.lines()
            .find(|l| l.starts_with("tgb_external_calls_total{") && l.contains(&series))
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_owned)
    };
    assert_eq!(count("POST /$batch", 200).as_deref(), Some("1"), "{text}");
    assert_eq!(
        count("POST /planner/tasks", 201).as_deref(),
        Some("2"),
        "{text}"
    );
    assert_eq!(
        count("GET /planner/tasks/{id}", 404).as_deref(),
        Some("1"),
        "{text}"
    );
}

#[test]
fn senders_dropped_with_their_runtime_are_not_waited_for() {
    // The sandbox on a runtime of its own, which outlives the client's first one.
    let server = tokio::runtime::Runtime::new().unwrap();
    let sb = server.block_on(async { Sandbox::start(SandboxConfig::default()).await.unwrap() });
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let graph = client(&sb);
    let first = runtime();
    first.block_on(async {
        let slow = graph.create_task(&task("slow to read")).await.unwrap();
        slow_reads_of(&sb, &slow.id, 60_000);
        // Every sender busy with a slow read: each read starts the next sender once the one
        // before holds the lane's permit.
        for n in 1..=MAX_ROUNDS_IN_FLIGHT {
            let (reader, id) = (graph.clone(), slow.id.clone());
            tokio::spawn(async move { reader.get_task(&id).await });
            while graph.governor().in_flight() < n {
                tokio::task::yield_now().await;
            }
        }
    });
    // The senders go down with their runtime, mid-request.
    drop(first);
    let made_after = runtime().block_on(async {
        tokio::time::timeout(
            Duration::from_secs(20),
            graph.create_task(&task("after the senders went")),
        )
        .await
    });
    let created = made_after
        .expect("a request after them is sent, not queued behind senders that are gone")
        .unwrap();
    assert_eq!(created.title, "after the senders went");
    drop(server);
}
