use reqwest::Method;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn create_task_answers_201_with_its_etag_and_the_caller_as_created_by() {
    let app = spawn().await;
    let (task, etag) = app.create_task("plannerTask/create_triage").await;
    assert_eq!(task["@odata.etag"], etag);
    assert!(etag.starts_with("W/\""), "{etag}");
    assert_eq!(task["planId"], PLAN);
    assert_eq!(task["bucketId"], TRIAGE);
    assert_eq!(task["priority"], 3);
    assert_eq!(task["percentComplete"], 0);
    assert_eq!(task["createdBy"]["application"]["id"], APP_USER);
    assert_eq!(task["appliedCategories"], json!({"category4": true}));
    let a = &task["assignments"][ASSIGNEE];
    assert_eq!(a["@odata.type"], "#microsoft.graph.plannerAssignment");
    assert_eq!(a["assignedBy"]["application"]["id"], APP_USER);
    assert_eq!(task["id"].as_str().unwrap().len(), 28);

    let (status, get_etag, got) = app
        .get(&format!("/planner/tasks/{}", task["id"].as_str().unwrap()))
        .await;
    assert_eq!(status, 200);
    assert_eq!(get_etag.as_deref(), Some(etag.as_str()));
    assert_eq!(got["title"], task["title"]);
}

#[tokio::test]
async fn missing_task_is_404_with_graph_error_body() {
    let app = spawn().await;
    let (status, _, body) = app.get("/planner/tasks/doesNotExist0000000000000000").await;
    assert_eq!(status, 404);
    assert_eq!(assert_graph_error(&body), "NotFound");
    let (status, _, body) = app
        .get("/planner/tasks/doesNotExist0000000000000000/details")
        .await;
    assert_eq!(status, 404);
    assert_graph_error(&body);
    let (status, _, body) = app.get("/planner/plans/nope/tasks").await;
    assert_eq!(status, 404);
    assert_graph_error(&body);
}

#[tokio::test]
async fn request_without_caller_headers_is_401() {
    let app = spawn().await;
    let r = app
        .http
        .get(format!("{}/v1.0/planner/plans/{PLAN}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(assert_graph_error(&body), "InvalidAuthenticationToken");
}

#[tokio::test]
async fn client_request_id_is_echoed_in_the_error_body() {
    let app = spawn().await;
    let r = app
        .graph(Method::GET, "/planner/tasks/none")
        .header("client-request-id", "my-correlation-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["client-request-id"], "my-correlation-1");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        body["error"]["innerError"]["client-request-id"],
        "my-correlation-1"
    );
}

async fn patch_task(
    app: &App,
    id: &str,
    etag: &str,
    fixture_name: &str,
) -> (String, serde_json::Value) {
    let r = app
        .graph(Method::PATCH, &format!("/planner/tasks/{id}"))
        .header("If-Match", etag)
        .header("Prefer", "return=representation")
        .json(&fixture(fixture_name))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{fixture_name}");
    let etag = etag_header(&r);
    (etag, r.json().await.unwrap())
}

#[tokio::test]
async fn percent_complete_100_sets_completed_by_and_date_and_50_clears_them() {
    let app = spawn().await;
    let (task, etag) = app.create_task("plannerTask/create_minimal").await;
    let id = task["id"].as_str().unwrap();
    assert!(task["completedDateTime"].is_null());

    let r = app
        .graph_as_user(
            Method::PATCH,
            &format!("/planner/tasks/{id}"),
            ASSIGNEE,
            "Dana Doe",
        )
        .header("If-Match", &etag)
        .header("Prefer", "return=representation")
        .json(&fixture("plannerTask/progress_completed"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let etag = etag_header(&r);
    let done: serde_json::Value = r.json().await.unwrap();
    assert_eq!(done["percentComplete"], 100);
    assert!(done["completedDateTime"].is_string());
    assert_eq!(done["completedBy"]["user"]["id"], ASSIGNEE);
    assert_eq!(done["completedBy"]["user"]["displayName"], "Dana Doe");

    let (_, back) = patch_task(&app, id, &etag, "plannerTask/progress_in_progress").await;
    assert_eq!(back["percentComplete"], 50);
    assert!(back["completedDateTime"].is_null());
    assert!(back["completedBy"].is_null());
}

#[tokio::test]
async fn priority_outside_0_to_10_is_400() {
    let app = spawn().await;
    let (task, etag) = app.create_task("plannerTask/create_minimal").await;
    let r = app
        .graph(
            Method::PATCH,
            &format!("/planner/tasks/{}", task["id"].as_str().unwrap()),
        )
        .header("If-Match", &etag)
        .json(&fixture("plannerTask/priority_out_of_range"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_graph_error(&body);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("priority")
    );
}

#[tokio::test]
async fn assignments_are_keyed_by_user_and_null_unassigns() {
    let app = spawn().await;
    let (task, etag) = app.create_task("plannerTask/create_triage").await;
    let id = task["id"].as_str().unwrap();
    let (etag, t) = patch_task(&app, id, &etag, "plannerTask/assign_second").await;
    let keys: Vec<&String> = t["assignments"].as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 2);
    let (_, t) = patch_task(&app, id, &etag, "plannerTask/unassign").await;
    let keys: Vec<&String> = t["assignments"].as_object().unwrap().keys().collect();
    assert_eq!(keys, vec!["1b2c3d4e-5f60-4718-92a3-b4c5d6e7f809"]);
}

#[tokio::test]
async fn applied_categories_are_added_with_true_and_removed_with_false() {
    let app = spawn().await;
    let (task, etag) = app.create_task("plannerTask/create_triage").await;
    let (_, t) = patch_task(
        &app,
        task["id"].as_str().unwrap(),
        &etag,
        "plannerTask/label_blocked",
    )
    .await;
    assert_eq!(t["appliedCategories"], json!({"category1": true}));
}

#[tokio::test]
async fn title_priority_and_bucket_change_and_a_foreign_bucket_is_400() {
    let app = spawn().await;
    let (task, etag) = app.create_task("plannerTask/create_triage").await;
    let id = task["id"].as_str().unwrap();
    let (etag, t) = patch_task(&app, id, &etag, "plannerTask/retitle").await;
    assert_eq!(t["bucketId"], ESCALATIONS);
    assert_eq!(t["priority"], 1);
    assert!(t["title"].as_str().unwrap().ends_with("(escalated)"));

    // A bucket of another plan.
    let r = app
        .graph(Method::PATCH, &format!("/planner/tasks/{id}"))
        .header("If-Match", &etag)
        .json(&json!({"bucketId": "bKtAccountSetup0000000000000"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn details_keep_checklist_by_client_id_references_by_encoded_url_and_task_counts() {
    let app = spawn().await;
    let (task, _) = app.create_task("plannerTask/create_triage").await;
    let id = task["id"].as_str().unwrap();
    let (status, details_etag, details) = app.get(&format!("/planner/tasks/{id}/details")).await;
    assert_eq!(status, 200);
    let details_etag = details_etag.unwrap();
    assert_eq!(details["@odata.etag"], details_etag);

    let r = app
        .graph(Method::PATCH, &format!("/planner/tasks/{id}/details"))
        .header("If-Match", &details_etag)
        .header("Prefer", "return=representation")
        .json(&fixture("plannerTaskDetails/triage_details"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let details_etag = etag_header(&r);
    let d: serde_json::Value = r.json().await.unwrap();
    assert_eq!(d["checklist"].as_object().unwrap().len(), 2);
    let item = &d["checklist"]["c1b7e9a2-0001-4c1e-9a55-000000000001"];
    assert_eq!(item["title"], "Check the shipment confirmation in Dynamics");
    assert_eq!(item["isChecked"], false);
    let reference = &d["references"]["https%3A//tg%2Eexample/cases/C-1001"];
    assert_eq!(reference["alias"], "TG case C-1001");
    assert_eq!(reference["lastModifiedBy"]["application"]["id"], APP_USER);

    let (_, _, t) = app.get(&format!("/planner/tasks/{id}")).await;
    assert_eq!(t["checklistItemCount"], 2);
    assert_eq!(t["activeChecklistItemCount"], 2);
    assert_eq!(t["referenceCount"], 1);
    assert_eq!(t["hasDescription"], true);

    let r = app
        .graph(Method::PATCH, &format!("/planner/tasks/{id}/details"))
        .header("If-Match", &details_etag)
        .json(&fixture("plannerTaskDetails/check_item"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let details_etag = etag_header(&r);
    let r = app
        .graph(Method::PATCH, &format!("/planner/tasks/{id}/details"))
        .header("If-Match", &details_etag)
        .json(&fixture("plannerTaskDetails/remove_reference"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (_, _, t) = app.get(&format!("/planner/tasks/{id}")).await;
    assert_eq!(t["checklistItemCount"], 2);
    assert_eq!(t["activeChecklistItemCount"], 1);
    assert_eq!(t["referenceCount"], 0);
}

#[tokio::test]
async fn delete_task_needs_if_match_and_then_the_task_is_gone() {
    let app = spawn().await;
    let (task, etag) = app.create_task("plannerTask/create_minimal").await;
    let path = format!("/planner/tasks/{}", task["id"].as_str().unwrap());
    let r = app.graph(Method::DELETE, &path).send().await.unwrap();
    assert_eq!(r.status(), 412);
    let r = app
        .graph(Method::DELETE, &path)
        .header("If-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (status, _, _) = app.get(&path).await;
    assert_eq!(status, 404);
    assert!(app.planner.list_tasks(PLAN).unwrap().is_empty());
}

#[tokio::test]
async fn library_update_as_user_changes_the_task_without_if_match() {
    let app = spawn().await;
    let (task, etag) = app.create_task("plannerTask/create_minimal").await;
    let id = task["id"].as_str().unwrap();
    let who = tgb_sandbox_planner::Caller::user(ASSIGNEE, "Dana Doe");
    let t = app
        .planner
        .update_task_as(&who, id, &fixture("plannerTask/progress_completed"))
        .unwrap();
    assert_eq!(t["completedBy"]["user"]["id"], ASSIGNEE);
    assert_ne!(t["@odata.etag"], etag);
    let (task, details) = app.planner.get_task(id).unwrap();
    assert_eq!(task["percentComplete"], 100);
    assert_eq!(details["id"], id);
    let d = app
        .planner
        .update_task_details_as(&who, id, &fixture("plannerTaskDetails/describe"))
        .unwrap();
    assert!(
        d["description"]
            .as_str()
            .unwrap()
            .contains("wrong endpoint")
    );
}
