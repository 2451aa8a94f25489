use reqwest::Method;
use serde_json::Value;

use crate::support::*;

#[tokio::test]
async fn group_lists_its_seeded_plans_with_etags() {
    let app = spawn().await;
    let (status, _, body) = app.get(&format!("/groups/{GROUP}/planner/plans")).await;
    assert_eq!(status, 200);
    let plans = body["value"].as_array().unwrap();
    let ids: Vec<&str> = plans.iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![PLAN, ONBOARDING_PLAN]);
    assert!(plans.iter().all(|p| p["@odata.etag"].is_string()));
    assert_eq!(plans[0]["container"]["containerId"], GROUP);
    let (status, _, _) = app.get("/groups/unknown-group/planner/plans").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn plan_details_show_the_labels_as_category_descriptions() {
    let app = spawn().await;
    let (status, etag, d) = app.get(&format!("/planner/plans/{PLAN}/details")).await;
    assert_eq!(status, 200);
    assert_eq!(d["categoryDescriptions"]["category1"], "Blocked");
    assert_eq!(d["categoryDescriptions"]["category4"], "Escalated");
    assert!(d["categoryDescriptions"]["category25"].is_null());

    let r = app
        .graph(Method::PATCH, &format!("/planner/plans/{PLAN}/details"))
        .header("If-Match", etag.unwrap())
        .header("Prefer", "return=representation")
        .json(&fixture("plannerPlanDetails/labels"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let d: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        d["categoryDescriptions"]["category5"],
        "Waiting for partner"
    );
    assert!(d["categoryDescriptions"]["category4"].is_null());
}

#[tokio::test]
async fn plan_buckets_and_tasks_are_listed_in_order() {
    let app = spawn().await;
    let (_, _, b) = app.get(&format!("/planner/plans/{PLAN}/buckets")).await;
    let names: Vec<&str> = b["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["Triage", "In progress", "Escalations"]);
    let (t1, _) = app.create_task("plannerTask/create_triage").await;
    let (t2, _) = app.create_task("plannerTask/create_minimal").await;
    let (_, _, tasks) = app.get(&format!("/planner/plans/{PLAN}/tasks")).await;
    let ids: Vec<&str> = tasks["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![t1["id"].as_str().unwrap(), t2["id"].as_str().unwrap()]
    );
    let (_, _, in_triage) = app.get(&format!("/planner/buckets/{TRIAGE}/tasks")).await;
    assert_eq!(in_triage["value"].as_array().unwrap().len(), 1);
    let (_, _, other) = app
        .get(&format!("/planner/plans/{ONBOARDING_PLAN}/tasks"))
        .await;
    assert!(other["value"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn plans_and_buckets_are_created_renamed_and_deleted_with_their_own_etags() {
    let app = spawn().await;
    let r = app
        .graph(Method::POST, "/planner/plans")
        .json(&fixture("plannerPlan/create"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let plan_etag = etag_header(&r);
    let plan: serde_json::Value = r.json().await.unwrap();
    let plan_id = plan["id"].as_str().unwrap();
    assert_eq!(plan["owner"], GROUP);
    let r = app
        .graph(Method::PATCH, &format!("/planner/plans/{plan_id}"))
        .header("If-Match", &plan_etag)
        .header("Prefer", "return=representation")
        .json(&fixture("plannerPlan/rename"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let plan: serde_json::Value = r.json().await.unwrap();
    assert_eq!(plan["title"], "Finance Exceptions (EMEA)");

    let r = app
        .graph(Method::POST, "/planner/buckets")
        .json(&fixture("plannerBucket/create"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let b_etag = etag_header(&r);
    let bucket: serde_json::Value = r.json().await.unwrap();
    let bid = bucket["id"].as_str().unwrap();
    let r = app
        .graph(Method::PATCH, &format!("/planner/buckets/{bid}"))
        .header("If-Match", &b_etag)
        .json(&fixture("plannerBucket/rename"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let b_etag2 = etag_header(&r);
    assert_ne!(b_etag, b_etag2);
    let (_, _, b) = app.get(&format!("/planner/buckets/{bid}")).await;
    assert_eq!(b["name"], "Waiting for the partner");
    let r = app
        .graph(Method::DELETE, &format!("/planner/buckets/{bid}"))
        .header("If-Match", &b_etag2)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (status, _, _) = app.get(&format!("/planner/buckets/{bid}")).await;
    assert_eq!(status, 404);

    let (_, _, all) = app.get("/planner/plans").await;
    assert_eq!(all["value"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn task_lists_come_in_pages_linked_by_next_link_and_stay_consistent_under_writes() {
    let app = spawn_with(tgb_sandbox_planner::PlannerConfig {
        list_page_size: 2,
        ..Default::default()
    })
    .await;
    assert_eq!(
        tgb_sandbox_planner::PlannerConfig::default().list_page_size,
        tgb_sandbox_planner::DEFAULT_LIST_PAGE_SIZE
    );
    let mut created = Vec::new();
    for _ in 0..5 {
        let (t, _) = app.create_task("plannerTask/create_minimal").await;
        created.push(t["id"].as_str().unwrap().to_owned());
    }
    let (status, _, first) = app
        .get(&format!("/planner/plans/{PLAN}/tasks?$top=10"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        first["value"].as_array().unwrap().len(),
        2,
        "$top does not change the page"
    );
    let mut next = first["@odata.nextLink"].as_str().unwrap().to_owned();
    assert!(
        next.starts_with(&format!(
            "{}/v1.0/planner/plans/{PLAN}/tasks?$skiptoken=",
            app.base
        )),
        "{next}"
    );
    let mut ids: Vec<String> = first["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    // A task created between two pages shows up on a later page; none repeats or is skipped.
    let (late, _) = app.create_task("plannerTask/create_minimal").await;
    created.push(late["id"].as_str().unwrap().to_owned());
    let mut pages = 1;
    loop {
        let r = app
            .http
            .get(&next)
            .header("x-tgb-caller-id", APP_USER)
            .header("x-tgb-caller-kind", "application")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let page: Value = r.json().await.unwrap();
        pages += 1;
        let values = page["value"].as_array().unwrap();
        assert!(values.len() <= 2);
        ids.extend(values.iter().map(|t| t["id"].as_str().unwrap().to_owned()));
        match page["@odata.nextLink"].as_str() {
            Some(n) => next = n.to_owned(),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(ids, created);
    let (_, _, bucket) = app.get(&format!("/planner/buckets/{TRIAGE}/tasks")).await;
    assert!(bucket["value"].as_array().unwrap().len() <= 2);

    let (status, _, body) = app
        .get(&format!("/planner/plans/{PLAN}/tasks?$skiptoken=nonsense"))
        .await;
    assert_eq!(status, 400);
    assert_graph_error(&body);
}
