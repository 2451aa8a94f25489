use reqwest::Method;
use serde_json::{Value, json};

use crate::support::*;

#[tokio::test]
async fn patch_without_if_match_is_412_saying_the_header_must_be_specified() {
    let app = spawn().await;
    let (task, _) = app.create_task("plannerTask/create_minimal").await;
    let r = app
        .graph(
            Method::PATCH,
            &format!("/planner/tasks/{}", task["id"].as_str().unwrap()),
        )
        .json(&fixture("plannerTask/progress_in_progress"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    let body: Value = r.json().await.unwrap();
    assert_eq!(assert_graph_error(&body), "PreconditionFailed");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("If-Match header must be specified")
    );
}

#[tokio::test]
async fn patch_with_a_stale_etag_is_412_precondition_failed_and_changes_nothing() {
    let app = spawn().await;
    let (task, first) = app.create_task("plannerTask/create_minimal").await;
    let id = task["id"].as_str().unwrap();
    let r = app
        .graph(Method::PATCH, &format!("/planner/tasks/{id}"))
        .header("If-Match", &first)
        .json(&fixture("plannerTask/progress_in_progress"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = app
        .graph(Method::PATCH, &format!("/planner/tasks/{id}"))
        .header("If-Match", &first)
        .json(&fixture("plannerTask/progress_completed"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    let body: Value = r.json().await.unwrap();
    assert_eq!(assert_graph_error(&body), "PreconditionFailed");
    let (_, _, t) = app.get(&format!("/planner/tasks/{id}")).await;
    assert_eq!(t["percentComplete"], 50);
}

#[tokio::test]
async fn a_tasks_etag_sent_to_its_details_is_412() {
    let app = spawn().await;
    let (task, task_etag) = app.create_task("plannerTask/create_triage").await;
    let id = task["id"].as_str().unwrap();
    let (_, details_etag, _) = app.get(&format!("/planner/tasks/{id}/details")).await;
    assert_ne!(Some(task_etag.clone()), details_etag);
    let r = app
        .graph(Method::PATCH, &format!("/planner/tasks/{id}/details"))
        .header("If-Match", &task_etag)
        .json(&fixture("plannerTaskDetails/describe"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    let body: Value = r.json().await.unwrap();
    assert_eq!(assert_graph_error(&body), "PreconditionFailed");
    // And the other way round.
    let r = app
        .graph(Method::PATCH, &format!("/planner/tasks/{id}"))
        .header("If-Match", details_etag.unwrap())
        .json(&fixture("plannerTask/progress_in_progress"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
}

#[tokio::test]
async fn prefer_return_representation_answers_200_with_the_row_and_its_new_etag() {
    let app = spawn().await;
    let (task, etag) = app.create_task("plannerTask/create_minimal").await;
    let id = task["id"].as_str().unwrap();
    let r = app
        .graph(Method::PATCH, &format!("/planner/tasks/{id}"))
        .header("If-Match", &etag)
        .header("Prefer", "return=representation")
        .json(&fixture("plannerTask/progress_in_progress"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["preference-applied"], "return=representation");
    let new_etag = etag_header(&r);
    let body: Value = r.json().await.unwrap();
    assert_ne!(new_etag, etag);
    assert_eq!(body["@odata.etag"], new_etag);
    assert_eq!(body["percentComplete"], 50);
    // The new ETag is the current one: a write with it succeeds.
    let r = app
        .graph(Method::PATCH, &format!("/planner/tasks/{id}"))
        .header("If-Match", &new_etag)
        .json(&fixture("plannerTask/progress_completed"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(r.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn forced_etag_race_makes_the_next_conditional_write_412_and_a_reread_retry_succeed() {
    let app = spawn().await;
    let (task, etag) = app.create_task("plannerTask/create_minimal").await;
    let id = task["id"].as_str().unwrap();
    app.planner.force_etag_races(1);
    let r = app
        .graph(Method::PATCH, &format!("/planner/tasks/{id}"))
        .header("If-Match", &etag)
        .json(&fixture("plannerTask/progress_in_progress"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    assert_eq!(app.planner.pending_etag_races(), 0);
    let (_, current, t) = app.get(&format!("/planner/tasks/{id}")).await;
    let current = current.unwrap();
    assert_ne!(current, etag, "the concurrent change moved the ETag");
    assert_ne!(
        t["orderHint"], task["orderHint"],
        "someone else saved the task"
    );
    let r = app
        .graph(Method::PATCH, &format!("/planner/tasks/{id}"))
        .header("If-Match", &current)
        .json(&fixture("plannerTask/progress_in_progress"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
}

#[tokio::test]
async fn forced_race_with_a_change_keeps_both_changes_after_reread_and_retry() {
    let app = spawn().await;
    let (task, etag) = app.create_task("plannerTask/create_triage").await;
    let id = task["id"].as_str().unwrap();
    app.planner
        .force_etag_races_with(1, json!({"appliedCategories": {"category1": true}}));
    let r = app
        .graph(Method::PATCH, &format!("/planner/tasks/{id}"))
        .header("If-Match", &etag)
        .json(&fixture("plannerTask/progress_in_progress"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    let (_, current, t) = app.get(&format!("/planner/tasks/{id}")).await;
    assert_eq!(t["appliedCategories"]["category1"], true);
    let r = app
        .graph(Method::PATCH, &format!("/planner/tasks/{id}"))
        .header("If-Match", current.unwrap())
        .header("Prefer", "return=representation")
        .json(&fixture("plannerTask/progress_in_progress"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["percentComplete"], 50);
    assert_eq!(t["appliedCategories"]["category1"], true);
}

#[tokio::test]
async fn admin_route_forces_races_on_details_too() {
    let app = spawn().await;
    let (task, _) = app.create_task("plannerTask/create_minimal").await;
    let id = task["id"].as_str().unwrap();
    let (_, details_etag, _) = app.get(&format!("/planner/tasks/{id}/details")).await;
    let r = app
        .admin(Method::POST, "/etag-races")
        .json(&json!({"n": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .graph(Method::PATCH, &format!("/planner/tasks/{id}/details"))
        .header("If-Match", details_etag.unwrap())
        .json(&fixture("plannerTaskDetails/describe"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
}

#[tokio::test]
async fn a_details_change_that_moves_counts_moves_the_tasks_etag() {
    let app = spawn().await;
    let (task, task_etag) = app.create_task("plannerTask/create_minimal").await;
    let id = task["id"].as_str().unwrap();
    let (_, details_etag, _) = app.get(&format!("/planner/tasks/{id}/details")).await;
    let r = app
        .graph(Method::PATCH, &format!("/planner/tasks/{id}/details"))
        .header("If-Match", details_etag.unwrap())
        .json(&fixture("plannerTaskDetails/triage_details"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (_, new_task_etag, _) = app.get(&format!("/planner/tasks/{id}")).await;
    assert_ne!(new_task_etag.unwrap(), task_etag);
}
