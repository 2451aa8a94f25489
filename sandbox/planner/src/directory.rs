//! The tenant's directory as far as Planner assignments need it: users and the members of the
//! Microsoft 365 groups that contain plans. Planner assigns tasks to users of the group that
//! owns the plan, so a deployment checks each configured assignee before the first task.
//!
//! Served (Graph v1.0, caller headers required as for every Graph route):
//! - `GET /v1.0/users/{id}`: the user (`id`, `displayName`, `accountEnabled`); unknown → 404
//!   `Request_ResourceNotFound`, as Graph answers.
//! - `POST /v1.0/users/{id}/checkMemberGroups` `{"groupIds": [...]}` (at most 20): the ids of
//!   the listed groups the user is a member of (`{"value": [...]}`); unknown user → 404.
//! - `GET /v1.0/groups/{id}/members`: the group's direct members (users), one page.
//!
//! The sandbox core seeds the directory with its named users, each a member of every seeded
//! group; tests remove a member or a user with [`Planner::remove_member`] and
//! [`Planner::remove_user`].

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::{GraphError, Planner};

/// Graph's limit on `groupIds` of one `checkMemberGroups` call.
pub const MAX_CHECK_GROUPS: usize = 20;

/// A directory user.
#[derive(Debug, Clone)]
struct User {
    name: String,
    enabled: bool,
}

/// Users and group memberships.
#[derive(Debug, Default)]
pub(crate) struct Directory {
    users: BTreeMap<String, User>,
    members: BTreeMap<String, BTreeSet<String>>,
}

impl Planner {
    fn directory(&self) -> std::sync::MutexGuard<'_, Directory> {
        self.inner
            .directory
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds (or renames) a user of the directory, account enabled.
    pub fn add_user(&self, id: &str, display_name: &str) {
        self.directory().users.insert(
            id.to_owned(),
            User {
                name: display_name.to_owned(),
                enabled: true,
            },
        );
    }

    /// Removes a user (and its memberships); whether it was there.
    pub fn remove_user(&self, id: &str) -> bool {
        let mut d = self.directory();
        for m in d.members.values_mut() {
            m.remove(id);
        }
        d.users.remove(id).is_some()
    }

    /// Enables or disables a user's account (`accountEnabled`).
    pub fn set_user_enabled(&self, id: &str, enabled: bool) {
        if let Some(u) = self.directory().users.get_mut(id) {
            u.enabled = enabled;
        }
    }

    /// Makes a user a member of a group.
    pub fn add_member(&self, group_id: &str, user_id: &str) {
        self.directory()
            .members
            .entry(group_id.to_owned())
            .or_default()
            .insert(user_id.to_owned());
    }

    /// Removes a user from a group; whether it was a member.
    pub fn remove_member(&self, group_id: &str, user_id: &str) -> bool {
        self.directory()
            .members
            .get_mut(group_id)
            .is_some_and(|m| m.remove(user_id))
    }

    /// The members of a group.
    pub fn members(&self, group_id: &str) -> Vec<String> {
        self.directory()
            .members
            .get(group_id)
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default()
    }
}

fn answer(h: &HeaderMap, result: Result<Value, GraphError>) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let client = h
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or(&request_id)
        .to_owned();
    match result {
        Ok(v) => (StatusCode::OK, Json(v)).into_response(),
        Err(e) => (e.status_code(), Json(e.body(&request_id, &client))).into_response(),
    }
}

fn authorised(h: &HeaderMap) -> Result<(), GraphError> {
    let caller = h
        .get("x-tgb-caller-id")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| !v.trim().is_empty());
    if caller {
        Ok(())
    } else {
        Err(GraphError::new(
            401,
            "InvalidAuthenticationToken",
            "Access token is empty.",
        ))
    }
}

fn user_missing(id: &str) -> GraphError {
    GraphError::new(
        404,
        "Request_ResourceNotFound",
        format!(
            "Resource '{id}' does not exist or one of its queried reference-property objects are not present."
        ),
    )
}

async fn get_user(State(p): State<Planner>, Path(id): Path<String>, h: HeaderMap) -> Response {
    let result = authorised(&h).and_then(|()| {
        let d = p.directory();
        let u = d.users.get(&id).ok_or_else(|| user_missing(&id))?;
        Ok(json!({
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users/$entity",
            "id": id,
            "displayName": u.name,
            "accountEnabled": u.enabled,
        }))
    });
    answer(&h, result)
}

async fn check_member_groups(
    State(p): State<Planner>,
    Path(id): Path<String>,
    h: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let result = authorised(&h).and_then(|()| {
        let body: Value = serde_json::from_slice(&body).map_err(|e| {
            GraphError::bad_request(format!("The request body is not valid JSON: {e}"))
        })?;
        let ids: Vec<String> = body
            .get("groupIds")
            .and_then(Value::as_array)
            .ok_or_else(|| GraphError::bad_request("groupIds is required."))?
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| GraphError::bad_request("groupIds holds strings."))
            })
            .collect::<Result<_, _>>()?;
        if ids.len() > MAX_CHECK_GROUPS {
            return Err(GraphError::bad_request(format!(
                "At most {MAX_CHECK_GROUPS} groupIds per request."
            )));
        }
        let d = p.directory();
        if !d.users.contains_key(&id) {
            return Err(user_missing(&id));
        }
        let value: Vec<&String> = ids
            .iter()
            .filter(|g| d.members.get(*g).is_some_and(|m| m.contains(&id)))
            .collect();
        Ok(json!({
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Collection(Edm.String)",
            "value": value,
        }))
    });
    answer(&h, result)
}

async fn group_members(
    State(p): State<Planner>,
    Path(gid): Path<String>,
    h: HeaderMap,
) -> Response {
    let result = authorised(&h).and_then(|()| {
        if !p.state().groups.contains_key(&gid) {
            return Err(GraphError::new(
                404,
                "Request_ResourceNotFound",
                format!("Resource '{gid}' does not exist or one of its queried reference-property objects are not present."),
            ));
        }
        let d = p.directory();
        let value: Vec<Value> = d
            .members
            .get(&gid)
            .into_iter()
            .flatten()
            .filter_map(|id| {
                d.users.get(id).map(|u| {
                    json!({"@odata.type": "#microsoft.graph.user", "id": id, "displayName": u.name})
                })
            })
            .collect();
        Ok(json!({"value": value}))
    });
    answer(&h, result)
}

/// The directory's Graph routes.
pub(crate) fn routes(p: &Planner) -> Router {
    Router::new()
        .route("/v1.0/users/{id}", get(get_user))
        .route(
            "/v1.0/users/{id}/checkMemberGroups",
            post(check_member_groups),
        )
        .route("/v1.0/groups/{gid}/members", get(group_members))
        .with_state(p.clone())
}
