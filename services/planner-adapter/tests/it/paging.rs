//! Plans longer than one page of `GET /planner/plans/{id}/tasks` (`@odata.nextLink`).

use std::sync::Arc;

use serde_json::json;
use tgb_proto::*;
use tgb_sandbox::SandboxConfig;
use tgb_testkit::eventually;

use crate::support::*;

const ONBOARDING: &str = "pLnOnboarding000000000000000";
const PAGE: usize = 3;

fn opened(id: &str) -> TgCaseOpened {
    TgCaseOpened {
        meta: Some(meta(Origin::Tg, id, acme())),
        case: Some(TgCase {
            case_id: id.into(),
            revision: 1,
            title: "Price list mismatch".into(),
            category: CaseCategory::Pricing as i32,
            priority: CasePriority::Normal as i32,
            ..Default::default()
        }),
    }
}

/// List requests tg-bridge made for `plan` (every page counts).
fn list_calls(w: &World, plan: &str) -> Vec<Option<String>> {
    w.sandbox
        .calls()
        .of_system("graph")
        .into_iter()
        .filter(|c| !c.scripted && c.method == "GET")
        .filter(|c| c.path.ends_with(&format!("/planner/plans/{plan}/tasks")))
        .map(|c| c.query)
        .collect()
}

#[tokio::test]
async fn a_plan_longer_than_a_page_is_read_in_full_by_the_marker_search_and_the_poller() {
    let mut sandbox = SandboxConfig::default();
    sandbox.planner.list_page_size = PAGE;
    let mut w = World::start_with(sandbox).await;
    // People's own tasks fill the first page and a half.
    let http = reqwest::Client::new();
    for i in 0..4 {
        let r = http
            .post(format!(
                "{}/v1.0/planner/tasks",
                w.sandbox.graph_url_as("planner")
            ))
            .json(&json!({"planId": ISSUES, "title": format!("Team chore {i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }

    // A create interrupted after its POST: the retry must find the task on page 2 by its
    // marker (a short intent lease makes a missed marker a second task, not a wait).
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let hook: planner_adapter::AfterPost = Arc::new(move |id: &str| {
        let _ = tx.send(id.to_owned());
        Box::pin(std::future::pending::<()>())
    });
    // (A short poller lease too: the crashed replica's runs out quickly.)
    let env = [
        ("TGB_ROUTING__GRAPH__INTENT_LEASE_SECS", "1"),
        ("TGB_ROUTING__GRAPH__POLLER_LEASE_TTL_MS", "1000"),
        ("TGB_ROUTING__GRAPH__POLLER_LEASE_RENEW_MS", "200"),
    ];
    w.start_adapter(Some(hook), &env);
    w.publish(opened("C-700")).await;
    let posted = tokio::time::timeout(tgb_testkit::HANG_GUARD, rx.recv())
        .await
        .unwrap()
        .unwrap();
    let (_token, handle) = w.adapter.take().unwrap();
    handle.abort();
    let _ = handle.await;
    w.start_adapter(None, &env);
    let created = w
        .wait_seen::<PlannerTaskCreated, _>("adopted", |e| e.tg_case_id == "C-700")
        .await;
    assert_eq!(
        created.task.unwrap().task_id,
        posted,
        "the task on page 2 was adopted"
    );

    // More cases: 8 tasks, 3 pages. A change on the last page reaches the bus.
    let mut last = String::new();
    for id in ["C-701", "C-702", "C-703"] {
        w.publish(opened(id)).await;
        last = w
            .wait_seen::<PlannerTaskCreated, _>(id, |e| e.tg_case_id == id)
            .await
            .task
            .unwrap()
            .task_id;
    }
    assert_eq!(w.tasks(ISSUES).len(), 8);
    assert_eq!(
        w.tasks(ISSUES)
            .iter()
            .filter(|t| t["title"].as_str().unwrap().starts_with("[C-700]"))
            .count(),
        1
    );
    w.edit_as_user(&last, json!({"percentComplete": 50}));
    let progressed = w
        .wait_seen::<PlannerTaskProgressed, _>("progress on page 3", |e| {
            e.task.as_ref().is_some_and(|t| t.task_id == last)
        })
        .await;
    assert_eq!(progressed.progress(), TaskProgress::InProgress);
    assert_eq!(progressed.tg_case_id, "C-703");

    // Per poll cycle: one request per page (3 for the long plan, 1 for the empty one).
    w.sandbox.calls().clear();
    eventually(
        "20 polls of the short plan",
        tgb_testkit::HANG_GUARD,
        || async { (list_calls(&w, ONBOARDING).len() >= 20).then_some(()) },
    )
    .await
    .unwrap();
    let short = list_calls(&w, ONBOARDING).len();
    let long = list_calls(&w, ISSUES);
    assert!(
        long.len() + PAGE >= 3 * short && long.len() <= 3 * (short + 1),
        "{} requests for the 3-page plan, {short} for the 1-page one",
        long.len()
    );
    let follow_ups = long
        .iter()
        .filter(|q| q.as_deref().is_some_and(|q| q.contains("skiptoken")))
        .count();
    assert!(
        follow_ups * 3 + 3 >= long.len() * 2,
        "pages 2 and 3 are read through @odata.nextLink: {follow_ups} of {}",
        long.len()
    );
    assert!(w.graph_400s().is_empty());
    w.stop_adapter().await;
}
