use reqwest::Method;
use serde_json::{Value, json};

use crate::support::*;

async fn send_batch(app: &App, body: &Value) -> (u16, Value) {
    let r = app
        .graph(Method::POST, "/$batch")
        .json(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn by_id<'a>(body: &'a Value, id: &str) -> &'a Value {
    body["responses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no response {id} in {body}"))
}

fn create(id: &str, fixture_name: &str, depends_on: &[&str]) -> Value {
    json!({
        "id": id,
        "method": "POST",
        "url": "/planner/tasks",
        "headers": {"Content-Type": "application/json"},
        "body": fixture(fixture_name),
        "dependsOn": depends_on,
    })
}

#[tokio::test]
async fn batch_runs_requests_in_dependency_order_and_answers_each() {
    let app = spawn().await;
    let (status, body) = send_batch(
        &app,
        &json!({"requests": [
            // Listed first but depends on the two creates.
            {"id": "3", "method": "GET", "url": format!("/planner/plans/{PLAN}/tasks"), "dependsOn": ["2"]},
            create("1", "plannerTask/create_triage", &[]),
            create("2", "plannerTask/create_minimal", &["1"]),
        ]}),
    )
    .await;
    assert_eq!(status, 200);
    let one = by_id(&body, "1");
    assert_eq!(one["status"], 201);
    assert!(one["headers"]["ETag"].as_str().unwrap().starts_with("W/"));
    assert_eq!(one["body"]["@odata.etag"], one["headers"]["ETag"]);
    assert_eq!(by_id(&body, "2")["status"], 201);
    let listed = by_id(&body, "3");
    assert_eq!(listed["status"], 200);
    assert_eq!(listed["body"]["value"].as_array().unwrap().len(), 2);
    // The inner creates ran as the outer caller.
    assert_eq!(one["body"]["createdBy"]["application"]["id"], APP_USER);
}

#[tokio::test]
async fn a_request_whose_dependency_failed_gets_424_and_the_batch_is_not_atomic() {
    let app = spawn().await;
    let (status, body) = send_batch(
        &app,
        &json!({"requests": [
            {"id": "a", "method": "PATCH", "url": "/planner/tasks/missingTask00000000000000000",
             "headers": {"Content-Type": "application/json", "If-Match": "W/\"x\""},
             "body": fixture("plannerTask/progress_in_progress")},
            {"id": "b", "method": "GET", "url": format!("/planner/plans/{PLAN}"), "dependsOn": ["a"]},
            create("c", "plannerTask/create_minimal", &[]),
        ]}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(by_id(&body, "a")["status"], 404);
    let b = by_id(&body, "b");
    assert_eq!(b["status"], 424);
    assert_graph_error(&b["body"]);
    assert_eq!(by_id(&body, "c")["status"], 201);
    assert_eq!(app.planner.list_tasks(PLAN).unwrap().len(), 1);
}

#[tokio::test]
async fn more_than_20_requests_is_400_and_runs_none() {
    let app = spawn().await;
    let requests: Vec<Value> = (0..21)
        .map(|n| create(&n.to_string(), "plannerTask/create_minimal", &[]))
        .collect();
    let (status, body) = send_batch(&app, &json!({"requests": requests})).await;
    assert_eq!(status, 400);
    assert_eq!(assert_graph_error(&body), "BadRequest");
    assert!(app.planner.list_tasks(PLAN).unwrap().is_empty());
    // 20 is allowed.
    let requests: Vec<Value> = (0..20)
        .map(|n| create(&n.to_string(), "plannerTask/create_minimal", &[]))
        .collect();
    let (status, _) = send_batch(&app, &json!({"requests": requests})).await;
    assert_eq!(status, 200);
    assert_eq!(app.planner.list_tasks(PLAN).unwrap().len(), 20);
}

#[tokio::test]
async fn malformed_batches_are_400() {
    let app = spawn().await;
    for bad in [
        json!({"requests": [create("1", "plannerTask/create_minimal", &["9"])]}),
        json!({"requests": [create("1", "plannerTask/create_minimal", &[]), create("1", "plannerTask/create_minimal", &[])]}),
        json!({"requests": [create("1", "plannerTask/create_minimal", &["2"]), create("2", "plannerTask/create_minimal", &["1"])]}),
        json!({"requests": [{"id": "1", "method": "GET"}]}),
        json!({"nope": []}),
    ] {
        let (status, body) = send_batch(&app, &bad).await;
        assert_eq!(status, 400, "{bad}");
        assert_graph_error(&body);
    }
}

#[tokio::test]
async fn inner_requests_get_their_own_429_with_retry_after() {
    let app = spawn().await;
    app.planner.throttle_next_in_batch(1, 7);
    let (status, body) = send_batch(
        &app,
        &json!({"requests": [
            create("1", "plannerTask/create_minimal", &[]),
            create("2", "plannerTask/create_triage", &[]),
        ]}),
    )
    .await;
    assert_eq!(status, 200);
    let first = by_id(&body, "1");
    assert_eq!(first["status"], 429);
    assert_eq!(first["headers"]["Retry-After"], "7");
    assert_eq!(assert_graph_error(&first["body"]), "TooManyRequests");
    assert_eq!(by_id(&body, "2")["status"], 201);
}

#[tokio::test]
async fn throttle_next_counts_outer_and_inner_requests() {
    let app = spawn().await;
    app.planner.throttle_next(2, 3);
    let batch = json!({"requests": [
        create("1", "plannerTask/create_minimal", &[]),
        create("2", "plannerTask/create_minimal", &[]),
    ]});
    let r = app
        .graph(Method::POST, "/$batch")
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429, "the outer request takes the first");
    assert_eq!(r.headers()["retry-after"], "3");
    let (status, body) = send_batch(&app, &batch).await;
    // The second is consumed by this outer request too; both inner ones run.
    assert_eq!(status, 429, "{body}");
    let (status, body) = send_batch(&app, &batch).await;
    assert_eq!(status, 200);
    assert_eq!(by_id(&body, "1")["status"], 201);
}

#[tokio::test]
async fn an_inner_body_without_content_type_is_400_for_that_request() {
    let app = spawn().await;
    let (status, body) = send_batch(
        &app,
        &json!({"requests": [
            {"id": "1", "method": "POST", "url": "planner/tasks", "body": fixture("plannerTask/create_minimal")},
        ]}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(by_id(&body, "1")["status"], 400);
}

#[tokio::test]
async fn inner_patch_follows_if_match_and_prefer() {
    let app = spawn().await;
    let (task, etag) = app.create_task("plannerTask/create_minimal").await;
    let id = task["id"].as_str().unwrap();
    let (_, body) = send_batch(
        &app,
        &json!({"requests": [
            {"id": "1", "method": "PATCH", "url": format!("/planner/tasks/{id}"),
             "headers": {"Content-Type": "application/json", "If-Match": etag, "Prefer": "return=representation"},
             "body": fixture("plannerTask/progress_in_progress")},
            {"id": "2", "method": "PATCH", "url": format!("/planner/tasks/{id}"),
             "headers": {"Content-Type": "application/json", "If-Match": etag},
             "body": fixture("plannerTask/progress_completed"), "dependsOn": ["1"]},
        ]}),
    )
    .await;
    let one = by_id(&body, "1");
    assert_eq!(one["status"], 200);
    assert_eq!(one["body"]["percentComplete"], 50);
    assert_eq!(
        by_id(&body, "2")["status"],
        412,
        "the first PATCH moved the ETag"
    );
}
