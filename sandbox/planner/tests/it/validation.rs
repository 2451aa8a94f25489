use reqwest::Method;
use serde_json::{Value, json};

use crate::support::*;

async fn post_task(app: &App, body: &Value) -> (u16, Value) {
    let r = app
        .graph(Method::POST, "/planner/tasks")
        .json(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn an_unknown_property_on_a_task_is_400_naming_it() {
    let app = spawn().await;
    let (status, body) = post_task(&app, &fixture("invalid/plannerTask/unknown_property")).await;
    assert_eq!(status, 400);
    assert_eq!(assert_graph_error(&body), "BadRequest");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("severity"), "{msg}");
    assert!(app.planner.list_tasks(PLAN).unwrap().is_empty());
}

#[tokio::test]
async fn a_wrongly_typed_value_is_400_naming_the_property() {
    let app = spawn().await;
    let (status, body) = post_task(&app, &fixture("invalid/plannerTask/priority_as_string")).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/priority")
    );
}

#[tokio::test]
async fn an_assignment_without_odata_type_is_400() {
    let app = spawn().await;
    let (task, etag) = app.create_task("plannerTask/create_minimal").await;
    let r = app
        .graph(
            Method::PATCH,
            &format!("/planner/tasks/{}", task["id"].as_str().unwrap()),
        )
        .header("If-Match", &etag)
        .json(&fixture(
            "invalid/plannerTask/assignment_without_odata_type",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("@odata.type")
    );
}

#[tokio::test]
async fn a_reference_keyed_by_a_raw_url_is_400() {
    let app = spawn().await;
    let (task, _) = app.create_task("plannerTask/create_minimal").await;
    let id = task["id"].as_str().unwrap();
    let (_, etag, _) = app.get(&format!("/planner/tasks/{id}/details")).await;
    let r = app
        .graph(Method::PATCH, &format!("/planner/tasks/{id}/details"))
        .header("If-Match", etag.unwrap())
        .json(&fixture("invalid/plannerTaskDetails/raw_url_reference_key"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_graph_error(&body);
}

#[tokio::test]
async fn missing_title_or_plan_is_400_and_an_unknown_plan_is_404() {
    let app = spawn().await;
    let (status, _) = post_task(&app, &json!({"planId": PLAN})).await;
    assert_eq!(status, 400);
    let (status, _) = post_task(&app, &json!({"title": "x"})).await;
    assert_eq!(status, 400);
    let (status, body) = post_task(&app, &json!({"planId": "noSuchPlan", "title": "x"})).await;
    assert_eq!(status, 404);
    assert_graph_error(&body);
}

#[tokio::test]
async fn a_body_that_is_not_json_is_400() {
    let app = spawn().await;
    let r = app
        .graph(Method::POST, "/planner/tasks")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(assert_graph_error(&body), "BadRequest");
}

#[tokio::test]
async fn a_start_date_after_the_due_date_is_400() {
    let app = spawn().await;
    let (status, _) = post_task(
        &app,
        &json!({"planId": PLAN, "title": "x", "startDateTime": "2026-12-02T00:00:00Z", "dueDateTime": "2026-12-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(status, 400);
}

#[test]
fn the_validator_library_call_names_every_problem() {
    let errs = tgb_sandbox_planner::validate_request(
        "microsoft.graph.plannerTask",
        &json!({"title": 5, "bogus": true, "createdDateTime": "2026-01-01T00:00:00Z"}),
    )
    .unwrap_err();
    let all = errs.join("\n");
    assert!(all.contains("/title"), "{all}");
    assert!(all.contains("bogus"), "{all}");
    assert!(all.contains("createdDateTime"), "{all}");
    assert!(tgb_sandbox_planner::validate_request("noSuchSchema", &json!({})).is_err());
}

#[test]
fn a_reference_is_a_planner_external_reference() {
    let details = |t: &str| json!({"references": {"https%3A//tg%2Eexample/cases/C-1": {"@odata.type": t, "alias": "C-1", "type": "Other"}}});
    for refused in [
        "microsoft.graph.externalReference",
        "#microsoft.graph.externalReference",
    ] {
        assert!(
            tgb_sandbox_planner::validate_request("plannerTaskDetails", &details(refused)).is_err(),
            "{refused}"
        );
    }
    tgb_sandbox_planner::validate_request(
        "plannerTaskDetails",
        &details("#microsoft.graph.plannerExternalReference"),
    )
    .unwrap();
}
