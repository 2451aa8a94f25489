//! Configuration of the emulated Planner tenant: limits and seeded groups, plans, buckets, labels.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Planner's page size of task lists (see [`PlannerConfig::list_page_size`]).
pub const DEFAULT_LIST_PAGE_SIZE: usize = 400;

/// What the emulator starts with (and returns to on reset).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlannerConfig {
    /// Planner's service limits (answered with 403 and the limit's code when exceeded).
    pub limits: PlannerLimits,
    /// Microsoft 365 groups with their plans, created at start and on reset.
    pub groups: Vec<SeedGroup>,
    /// The person whose change a forced ETag race applies ("someone else edited it first").
    pub race_user: SeedUser,
    /// Tasks per page of `GET /planner/plans/{id}/tasks` and `GET /planner/buckets/{id}/tasks`;
    /// more follow through `@odata.nextLink`. Planner's page size is fixed by the service, not
    /// by the client (`$top` and `Prefer: odata.maxpagesize` are ignored); its engineers give it
    /// as about 400, the default here. Tests lower it to page small plans.
    pub list_page_size: usize,
}

/// Planner's limits. Graph publishes these per tenant; the defaults are Planner's documented ones.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlannerLimits {
    /// External references per task (`MaximumReferencesOnTask`).
    pub max_references_per_task: usize,
    /// Checklist items per task (`MaximumChecklistItemsOnTask`).
    pub max_checklist_items_per_task: usize,
    /// Tasks per plan (`MaximumTasksInProject`).
    pub max_tasks_per_plan: usize,
    /// Buckets per plan (`MaximumBucketsInProject`).
    pub max_buckets_per_plan: usize,
    /// Assignees per task (`MaximumAssigneesInTasks`).
    pub max_assignees_per_task: usize,
}

impl Default for PlannerLimits {
    fn default() -> Self {
        Self {
            max_references_per_task: 10,
            max_checklist_items_per_task: 20,
            max_tasks_per_plan: 9000,
            max_buckets_per_plan: 200,
            max_assignees_per_task: 20,
        }
    }
}

/// A Microsoft 365 group that contains plans.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedGroup {
    /// The group's id (a GUID in Entra).
    pub id: String,
    /// Display name.
    pub display_name: String,
    /// Plans the group contains.
    #[serde(default)]
    pub plans: Vec<SeedPlan>,
}

/// A plan with its buckets and labels.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SeedPlan {
    /// A fixed id (28 characters in Graph); generated when absent.
    pub id: Option<String>,
    /// The plan's title.
    pub title: String,
    /// Label names by category (`category1` … `category25`), shown as the plan details'
    /// `categoryDescriptions`.
    pub categories: BTreeMap<String, String>,
    /// Buckets, in order.
    pub buckets: Vec<SeedBucket>,
}

/// A bucket of a seeded plan.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SeedBucket {
    /// A fixed id; generated when absent.
    pub id: Option<String>,
    /// The bucket's name.
    pub name: String,
}

/// A person, as Planner records them in `createdBy`, `completedBy`, `lastModifiedBy`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedUser {
    /// User id (GUID).
    pub id: String,
    /// Display name.
    pub name: String,
}

impl Default for SeedUser {
    fn default() -> Self {
        Self {
            id: "5f0c1a8e-3b7d-4c2a-9e61-0d4f2b8a7c13".into(),
            name: "Concurrent Editor".into(),
        }
    }
}

/// The demo tenant: one group, two plans with buckets and the labels tg-bridge routes on.
impl Default for PlannerConfig {
    fn default() -> Self {
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        let buckets = |names: &[(&str, &str)]| {
            names
                .iter()
                .map(|(id, name)| SeedBucket {
                    id: Some(id.to_string()),
                    name: name.to_string(),
                })
                .collect()
        };
        Self {
            limits: PlannerLimits::default(),
            race_user: SeedUser::default(),
            list_page_size: DEFAULT_LIST_PAGE_SIZE,
            groups: vec![SeedGroup {
                id: "0b7a5f5e-6a3c-4f1e-8d0a-2c9e4b1f7a10".into(),
                display_name: "Partner Operations".into(),
                plans: vec![
                    SeedPlan {
                        id: Some("pLnPartnerIssues00000000000A".into()),
                        title: "Partner Issues".into(),
                        categories: labels(&[
                            ("category1", "Blocked"),
                            ("category2", "Approved"),
                            ("category3", "Rejected"),
                            ("category4", "Escalated"),
                        ]),
                        buckets: buckets(&[
                            ("bKtTriage000000000000000000A", "Triage"),
                            ("bKtInProgress00000000000000A", "In progress"),
                            ("bKtEscalations0000000000000A", "Escalations"),
                        ]),
                    },
                    SeedPlan {
                        id: Some("pLnOnboarding000000000000000".into()),
                        title: "Partner Onboarding".into(),
                        categories: labels(&[("category1", "Blocked"), ("category2", "Approved")]),
                        buckets: buckets(&[
                            ("bKtAccountSetup0000000000000", "Account setup"),
                            ("bKtEdiMapping00000000000000A", "EDI mapping"),
                            ("bKtCompliance000000000000000", "Compliance checks"),
                        ]),
                    },
                ],
            }],
        }
    }
}
