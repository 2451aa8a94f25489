use reqwest::Method;
use serde_json::{Value, json};

use crate::support::*;

#[tokio::test]
async fn admin_routes_create_a_group_plan_and_bucket_and_reset_restores_the_seed() {
    let app = spawn().await;
    let r = app
        .admin(Method::POST, "/groups")
        .json(&json!({"id": "11111111-2222-3333-4444-555555555555", "displayName": "Finance"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .admin(Method::POST, "/plans")
        .json(
            &json!({"groupId": "11111111-2222-3333-4444-555555555555", "title": "Disputes",
                      "categories": {"category1": "Blocked"}, "buckets": [{"name": "New"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let plan: Value = r.json().await.unwrap();
    let plan_id = plan["id"].as_str().unwrap();
    let r = app
        .admin(Method::POST, "/buckets")
        .json(&json!({"planId": plan_id, "name": "Resolved"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, _, buckets) = app.get(&format!("/planner/plans/{plan_id}/buckets")).await;
    assert_eq!(buckets["value"].as_array().unwrap().len(), 2);
    let (_, _, plans) = app
        .get("/groups/11111111-2222-3333-4444-555555555555/planner/plans")
        .await;
    assert_eq!(plans["value"][0]["title"], "Disputes");
    app.create_task("plannerTask/create_minimal").await;

    let snap: Value = app
        .admin(Method::GET, "/snapshot")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(snap["groups"].as_array().unwrap().len(), 2);
    assert_eq!(snap["tasks"].as_array().unwrap().len(), 1);
    assert_eq!(snap, app.planner.snapshot());

    let r = app.admin(Method::POST, "/reset").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let snap = app.planner.snapshot();
    assert_eq!(snap["groups"].as_array().unwrap().len(), 1);
    assert!(snap["tasks"].as_array().unwrap().is_empty());
    assert_eq!(snap["plans"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn admin_throttle_answers_429_with_retry_after_then_serves_again() {
    let app = spawn().await;
    let r = app
        .admin(Method::POST, "/throttle")
        .json(&json!({"n": 1, "retryAfterSecs": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .graph(Method::GET, &format!("/planner/plans/{PLAN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "5");
    let body: Value = r.json().await.unwrap();
    assert_eq!(assert_graph_error(&body), "TooManyRequests");
    let r = app
        .graph(Method::GET, &format!("/planner/plans/{PLAN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn admin_acts_as_a_user_on_a_task_and_bad_admin_bodies_are_400() {
    let app = spawn().await;
    let (task, _) = app.create_task("plannerTask/create_minimal").await;
    let id = task["id"].as_str().unwrap();
    let r = app
        .admin(Method::POST, &format!("/tasks/{id}/as-user"))
        .json(&json!({"userId": ASSIGNEE, "userName": "Dana Doe",
                      "task": fixture("plannerTask/progress_completed"),
                      "details": fixture("plannerTaskDetails/describe")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let out: Value = r.json().await.unwrap();
    assert_eq!(out["task"]["completedBy"]["user"]["id"], ASSIGNEE);
    assert_eq!(out["task"]["hasDescription"], true);

    let r = app
        .admin(Method::POST, "/plans")
        .json(&json!({"title": "no group"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_graph_error(&body);
}

#[tokio::test]
async fn unknown_graph_routes_are_404_and_wrong_methods_405_with_graph_bodies() {
    let app = spawn().await;
    let (status, _, body) = app.get("/planner/nothing/here").await;
    assert_eq!(status, 404);
    assert_graph_error(&body);
    let r = app
        .graph(Method::PUT, "/planner/tasks")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
}
