use reqwest::Method;
use serde_json::{Map, Value, json};
use tgb_sandbox_planner::{PlannerConfig, PlannerLimits};

use crate::support::*;

async fn small() -> App {
    spawn_with(PlannerConfig {
        limits: PlannerLimits {
            max_references_per_task: 2,
            max_checklist_items_per_task: 3,
            max_tasks_per_plan: 2,
            max_buckets_per_plan: 3,
            max_assignees_per_task: 2,
        },
        ..PlannerConfig::default()
    })
    .await
}

async fn patch_details(app: &App, id: &str, body: &Value) -> (u16, Value) {
    let (_, etag, _) = app.get(&format!("/planner/tasks/{id}/details")).await;
    let r = app
        .graph(Method::PATCH, &format!("/planner/tasks/{id}/details"))
        .header("If-Match", etag.unwrap())
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn references_beyond_the_limit_are_403_maximum_references_on_task() {
    let app = small().await;
    let (task, _) = app.create_task("plannerTask/create_minimal").await;
    let id = task["id"].as_str().unwrap();
    let (status, _) = patch_details(&app, id, &fixture("plannerTaskDetails/triage_details")).await;
    assert_eq!(status, 204);
    let mut refs = Map::new();
    for n in 0..2 {
        refs.insert(
            format!("https%3A//tg%2Eexample/documents/D-{n}"),
            json!({"@odata.type": "#microsoft.graph.plannerExternalReference", "alias": format!("D-{n}")}),
        );
    }
    let (status, body) = patch_details(&app, id, &json!({"references": refs})).await;
    assert_eq!(status, 403);
    assert_eq!(assert_graph_error(&body), "MaximumReferencesOnTask");
    let (_, details) = app.planner.get_task(id).unwrap();
    assert_eq!(
        details["references"].as_object().unwrap().len(),
        1,
        "nothing applied"
    );
}

#[tokio::test]
async fn checklist_items_beyond_the_limit_are_403_maximum_checklist_items_on_task() {
    let app = small().await;
    let (task, _) = app.create_task("plannerTask/create_minimal").await;
    let mut items = Map::new();
    for n in 0..4 {
        items.insert(
            format!("item-{n}"),
            json!({"@odata.type": "microsoft.graph.plannerChecklistItem", "title": format!("step {n}")}),
        );
    }
    let (status, body) = patch_details(
        &app,
        task["id"].as_str().unwrap(),
        &json!({"checklist": items}),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(assert_graph_error(&body), "MaximumChecklistItemsOnTask");
}

#[tokio::test]
async fn tasks_beyond_the_plan_limit_are_403_maximum_tasks_in_project() {
    let app = small().await;
    app.create_task("plannerTask/create_minimal").await;
    app.create_task("plannerTask/create_triage").await;
    let r = app
        .graph(Method::POST, "/planner/tasks")
        .json(&fixture("plannerTask/create_minimal"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(assert_graph_error(&body), "MaximumTasksInProject");
    assert_eq!(app.planner.list_tasks(PLAN).unwrap().len(), 2);
    // Other plans are not affected.
    let r = app
        .graph(Method::POST, "/planner/tasks")
        .json(&json!({"planId": ONBOARDING_PLAN, "title": "EDI mapping for Acme"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

#[tokio::test]
async fn assignees_and_buckets_beyond_their_limits_are_403_with_their_codes() {
    let app = small().await;
    let (task, etag) = app.create_task("plannerTask/create_triage").await;
    let r = app
        .graph(
            Method::PATCH,
            &format!("/planner/tasks/{}", task["id"].as_str().unwrap()),
        )
        .header("If-Match", &etag)
        .json(&json!({"assignments": {
            "u-2": {"@odata.type": "#microsoft.graph.plannerAssignment", "orderHint": " !"},
            "u-3": {"@odata.type": "#microsoft.graph.plannerAssignment", "orderHint": " !"}
        }}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(assert_graph_error(&body), "MaximumAssigneesInTasks");

    let r = app
        .graph(Method::POST, "/planner/buckets")
        .json(&fixture("plannerBucket/create"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(assert_graph_error(&body), "MaximumBucketsInProject");
}
