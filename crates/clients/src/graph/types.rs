//! The Planner resources tg-bridge reads and the request bodies it writes (Graph v1.0 names).
//!
//! Bodies are built only from these types so every one conforms to the OpenAPI schemas:
//! open types (`assignments`, `appliedCategories`, `checklist`, `references`) carry the
//! `@odata.type` Graph expects, and nothing read-only is ever sent.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A Planner task as Graph returns it (the fields tg-bridge uses).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    /// The task id.
    pub id: String,
    /// `@odata.etag` of the task (not of its details).
    #[serde(rename = "@odata.etag", default)]
    pub etag: String,
    /// The plan.
    pub plan_id: String,
    /// The bucket, if any.
    #[serde(default)]
    pub bucket_id: Option<String>,
    /// The title.
    #[serde(default)]
    pub title: String,
    /// 0 not started, 50 in progress, 100 completed.
    #[serde(default)]
    pub percent_complete: i64,
    /// 0..10; Planner writes 1 urgent, 3 important, 5 medium, 9 low.
    #[serde(default)]
    pub priority: Option<i64>,
    /// ISO 8601, UTC.
    #[serde(default)]
    pub due_date_time: Option<String>,
    /// Assignments by user id.
    #[serde(default)]
    pub assignments: BTreeMap<String, Value>,
    /// Applied labels: `category1`..`category25` → true.
    #[serde(default)]
    pub applied_categories: BTreeMap<String, Value>,
    /// Checklist items.
    #[serde(default)]
    pub checklist_item_count: i64,
    /// Checklist items not checked.
    #[serde(default)]
    pub active_checklist_item_count: i64,
    /// Who completed it.
    #[serde(default)]
    pub completed_by: Option<Value>,
}

impl Task {
    /// User ids assigned.
    pub fn assignees(&self) -> BTreeSet<String> {
        self.assignments.keys().cloned().collect()
    }

    /// Applied category keys (`category1`, ...).
    pub fn categories(&self) -> BTreeSet<String> {
        self.applied_categories
            .iter()
            .filter(|(_, v)| v.as_bool() == Some(true))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// A task's details (their own ETag).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskDetails {
    /// The task id.
    #[serde(default)]
    pub id: String,
    /// `@odata.etag` of the details.
    #[serde(rename = "@odata.etag", default)]
    pub etag: String,
    /// The description.
    #[serde(default)]
    pub description: Option<String>,
    /// Checklist items by client-chosen id.
    #[serde(default)]
    pub checklist: BTreeMap<String, Value>,
    /// External references by encoded URL.
    #[serde(default)]
    pub references: BTreeMap<String, Value>,
}

/// A plan's details: its label names.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanDetails {
    /// `category1` → "Blocked".
    #[serde(default)]
    pub category_descriptions: BTreeMap<String, Option<String>>,
}

impl PlanDetails {
    /// The category key of the label named `name` (case-insensitive).
    pub fn category_of(&self, name: &str) -> Option<String> {
        self.category_descriptions
            .iter()
            .find(|(_, v)| v.as_deref().is_some_and(|v| v.eq_ignore_ascii_case(name)))
            .map(|(k, _)| k.clone())
    }

    /// The label name of a category key.
    pub fn name_of(&self, category: &str) -> Option<String> {
        self.category_descriptions.get(category).cloned().flatten()
    }
}

/// `POST /planner/tasks`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewTask {
    /// The plan.
    pub plan_id: String,
    /// The title (max 255 characters).
    pub title: String,
    /// The bucket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket_id: Option<String>,
    /// 1 urgent, 3 important, 5 medium, 9 low.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    /// ISO 8601 UTC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub due_date_time: Option<String>,
    /// Assignees.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub assignments: BTreeMap<String, Option<Assignment>>,
    /// Labels.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub applied_categories: BTreeMap<String, bool>,
}

/// `PATCH /planner/tasks/{id}`: only the fields that change.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskPatch {
    /// New title.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// New bucket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket_id: Option<String>,
    /// New priority.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    /// New due date.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub due_date_time: Option<String>,
    /// New progress.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent_complete: Option<i64>,
    /// `Some` assigns, `None` unassigns.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub assignments: BTreeMap<String, Option<Assignment>>,
    /// `true` applies, `false` removes.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub applied_categories: BTreeMap<String, bool>,
}

impl TaskPatch {
    /// Nothing to change?
    pub fn is_empty(&self) -> bool {
        *self == TaskPatch::default()
    }
}

/// `PATCH /planner/tasks/{id}/details`: only what changes.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DetailsPatch {
    /// New description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `reference` shows the references on the card.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preview_type: Option<String>,
    /// Checklist items to add or change (`None` removes).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub checklist: BTreeMap<String, Option<ChecklistItem>>,
    /// References to add (`None` removes), keyed by [`encode_reference_url`].
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub references: BTreeMap<String, Option<ExternalReference>>,
}

impl DetailsPatch {
    /// Nothing to change?
    pub fn is_empty(&self) -> bool {
        *self == DetailsPatch::default()
    }
}

/// An assignment value.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Assignment {
    #[serde(rename = "@odata.type")]
    odata_type: &'static str,
    /// Order hint (`" !"` = Planner picks).
    #[serde(rename = "orderHint")]
    pub order_hint: String,
}

impl Default for Assignment {
    fn default() -> Self {
        Assignment {
            odata_type: "#microsoft.graph.plannerAssignment",
            order_hint: " !".into(),
        }
    }
}

/// A checklist item value.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChecklistItem {
    #[serde(rename = "@odata.type")]
    odata_type: &'static str,
    /// The text.
    pub title: String,
    /// Checked?
    #[serde(rename = "isChecked")]
    pub is_checked: bool,
}

impl ChecklistItem {
    /// An unchecked item.
    pub fn new(title: impl Into<String>) -> Self {
        ChecklistItem {
            odata_type: "microsoft.graph.plannerChecklistItem",
            title: title.into(),
            is_checked: false,
        }
    }
}

/// An external reference value.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExternalReference {
    #[serde(rename = "@odata.type")]
    odata_type: &'static str,
    /// Shown name.
    pub alias: String,
    /// `Other`, `PowerPoint`, ...
    #[serde(rename = "type")]
    pub kind: String,
}

impl ExternalReference {
    /// A reference of type `Other`.
    pub fn new(alias: impl Into<String>) -> Self {
        ExternalReference {
            odata_type: "#microsoft.graph.plannerExternalReference",
            alias: alias.into(),
            kind: "Other".into(),
        }
    }
}

/// Encodes a URL as a `references` key: `%` `.` `:` `@` `#` escaped
/// (`https://tg.example/cases/C-1` → `https%3A//tg%2Eexample/cases/C-1`).
pub fn encode_reference_url(url: &str) -> String {
    let mut out = String::with_capacity(url.len() + 8);
    for c in url.chars() {
        match c {
            '%' => out.push_str("%25"),
            '.' => out.push_str("%2E"),
            ':' => out.push_str("%3A"),
            '@' => out.push_str("%40"),
            '#' => out.push_str("%23"),
            c => out.push(c),
        }
    }
    out
}

/// One request of a JSON `$batch`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchRequest {
    /// Unique within the batch.
    pub id: String,
    /// `GET`, `POST`, `PATCH`, `DELETE`.
    pub method: String,
    /// Relative to the version: `/planner/tasks`.
    pub url: String,
    /// Headers (a body needs `Content-Type`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// JSON body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// Ids that must succeed first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
}

/// One answer of a JSON `$batch`.
#[derive(Clone, Debug, Deserialize)]
pub struct BatchResponse {
    /// The request id.
    pub id: String,
    /// Its status.
    pub status: u16,
    /// Its headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Its body, as the JSON text Graph sent: kept raw, so the answers of a `$batch` are not
    /// built into JSON trees and written out again before each is read into its own type (#21).
    #[serde(default)]
    pub body: Option<Box<serde_json::value::RawValue>>,
}

impl BatchResponse {
    /// Its `Retry-After`, if any (header names in any case).
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        super::parse_retry_after(
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
                .map(|(_, v)| v.as_str()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_urls_are_encoded_as_planner_wants() {
        assert_eq!(
            encode_reference_url("https://tg.example/cases/C-1"),
            "https%3A//tg%2Eexample/cases/C-1"
        );
        assert_eq!(encode_reference_url("a%b@c#d"), "a%25b%40c%23d");
    }

    #[test]
    fn patches_only_carry_what_changes() {
        let p = TaskPatch {
            priority: Some(1),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({"priority": 1})
        );
        let mut a = TaskPatch::default();
        a.assignments.insert("u".into(), None);
        assert_eq!(
            serde_json::to_value(&a).unwrap(),
            serde_json::json!({"assignments": {"u": null}})
        );
    }
}
