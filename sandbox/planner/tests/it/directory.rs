//! The directory behind assignments: users and the members of a plan's group, as Graph
//! answers `GET /users/{id}`, `POST /users/{id}/checkMemberGroups` and
//! `GET /groups/{id}/members`.

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::*;

const OTHER_GROUP: &str = "6f2d8c1a-0000-4000-8000-00000000beef";

async fn check_member_groups(app: &App, user: &str, groups: &[&str]) -> (u16, Value) {
    let r = app
        .graph(Method::POST, &format!("/users/{user}/checkMemberGroups"))
        .json(&json!({ "groupIds": groups }))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn a_user_is_read_and_a_member_only_of_the_groups_it_joined() {
    let app = spawn().await;
    app.planner.add_user(ASSIGNEE, "Dana Agent");
    app.planner.add_member(GROUP, ASSIGNEE);

    let (status, _, user) = app.get(&format!("/users/{ASSIGNEE}")).await;
    assert_eq!(status, 200);
    assert_eq!(user["displayName"], "Dana Agent");
    assert_eq!(user["accountEnabled"], true);

    let (status, body) = check_member_groups(&app, ASSIGNEE, &[GROUP, OTHER_GROUP]).await;
    assert_eq!(status, 200);
    assert_eq!(body["value"], json!([GROUP]));

    let (status, _, members) = app.get(&format!("/groups/{GROUP}/members")).await;
    assert_eq!(status, 200);
    assert_eq!(members["value"][0]["id"], ASSIGNEE);

    // Leaving the group: no longer a member, still a user.
    assert!(app.planner.remove_member(GROUP, ASSIGNEE));
    let (_, body) = check_member_groups(&app, ASSIGNEE, &[GROUP]).await;
    assert_eq!(body["value"], json!([]));
    app.planner.set_user_enabled(ASSIGNEE, false);
    let (_, _, user) = app.get(&format!("/users/{ASSIGNEE}")).await;
    assert_eq!(user["accountEnabled"], false);
}

#[tokio::test]
async fn an_unknown_user_is_404_resource_not_found() {
    let app = spawn().await;
    let (status, _, body) = app.get("/users/00000000-0000-4000-8000-000000000000").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "Request_ResourceNotFound");
    let (status, body) =
        check_member_groups(&app, "00000000-0000-4000-8000-000000000000", &[GROUP]).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "Request_ResourceNotFound");
}

#[tokio::test]
async fn more_than_twenty_groups_or_no_caller_is_refused() {
    let app = spawn().await;
    app.planner.add_user(ASSIGNEE, "Dana Agent");
    let many: Vec<String> = (0..21).map(|i| format!("group-{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let (status, body) = check_member_groups(&app, ASSIGNEE, &many).await;
    assert_eq!(status, 400, "{body}");
    let r = app
        .http
        .get(format!("{}/v1.0/users/{ASSIGNEE}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}
