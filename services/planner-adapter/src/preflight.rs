//! The checks planner-adapter runs at start (and `tgb doctor` runs live): every configured
//! plan exists and can be read, every configured bucket is in its plan, and every label a
//! route applies is a label of its plan. A typo in an id then stops the start with the id named,
//! instead of dead-lettering events at run time.

use std::collections::{BTreeMap, BTreeSet};

use tgb_clients::graph::{GraphClient, GraphError, PlanDetails};

use crate::routing::Routing;

/// One check's outcome.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Finding {
    /// What was checked (`plan issues`, `bucket issues.triage`, `label issues "Escalated"`).
    pub check: String,
    /// Whether it holds.
    pub ok: bool,
    /// The id checked, or why it fails.
    pub detail: String,
}

/// Every (plan alias, label) a route applies.
fn route_labels(r: &Routing) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let targets = [&r.escalation, &r.review, &r.onboarding, &r.action_items]
        .into_iter()
        .chain(r.departments.values());
    for t in targets {
        for l in &t.labels {
            out.insert((t.plan.clone(), l.clone()));
        }
    }
    for rule in &r.rules {
        for l in &rule.labels {
            out.insert((rule.plan.clone(), l.clone()));
        }
    }
    out
}

/// How many times a throttled or unavailable Graph is waited out before a check fails.
const TRANSIENT_RETRIES: u32 = 8;

/// `call`, re-sent after the wait Graph asks for while the failure is transient (a 429 at
/// start is no reason not to start).
async fn patiently<T, F, Fut>(mut call: F) -> Result<T, GraphError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, GraphError>>,
{
    let mut attempt = 0;
    loop {
        match call().await {
            Err(e) if e.is_transient() && attempt < TRANSIENT_RETRIES => {
                attempt += 1;
                let wait = e.retry_after().unwrap_or(std::time::Duration::from_secs(1));
                tracing::warn!(error = %e, ?wait, "Graph check deferred");
                tokio::time::sleep(wait).await;
            }
            other => return other,
        }
    }
}

/// Runs the checks against Graph.
pub async fn check(graph: &GraphClient, routing: &Routing) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut details: BTreeMap<String, PlanDetails> = BTreeMap::new();
    for (alias, plan) in &routing.plans {
        let id = &plan.plan_id;
        match patiently(|| graph.get_plan_details(id)).await {
            Ok(d) => {
                findings.push(Finding {
                    check: format!("plan {alias}"),
                    ok: true,
                    detail: id.clone(),
                });
                details.insert(alias.clone(), d);
            }
            Err(e) => {
                findings.push(Finding {
                    check: format!("plan {alias}"),
                    ok: false,
                    detail: format!(
                        "plan id {id} ([routing.plans.{alias}] plan_id) cannot be read: {e}"
                    ),
                });
                continue;
            }
        }
        let buckets = match patiently(|| graph.list_plan_bucket_ids(id)).await {
            Ok(b) => b,
            Err(e) => {
                findings.push(Finding {
                    check: format!("buckets of plan {alias}"),
                    ok: false,
                    detail: format!("the buckets of plan {id} cannot be listed: {e}"),
                });
                continue;
            }
        };
        for (balias, bid) in &plan.buckets {
            let ok = buckets.iter().any(|b| b == bid);
            findings.push(Finding {
                check: format!("bucket {alias}.{balias}"),
                ok,
                detail: if ok {
                    bid.clone()
                } else {
                    format!(
                        "bucket id {bid} ([routing.plans.{alias}] buckets.{balias}) is not a bucket of plan {id}"
                    )
                },
            });
        }
    }
    for (alias, label) in route_labels(routing) {
        let Some(d) = details.get(&alias) else {
            continue;
        };
        let ok = d.category_of(&label).is_some();
        findings.push(Finding {
            check: format!("label {alias} {label:?}"),
            ok,
            detail: if ok {
                "present".to_owned()
            } else {
                format!(
                    "plan {} has no label named {label:?}",
                    routing.plans[&alias].plan_id
                )
            },
        });
    }
    findings
}

/// The failures as one message, `None` when every check holds.
pub fn failures(findings: &[Finding]) -> Option<String> {
    let failed: Vec<&str> = findings
        .iter()
        .filter(|f| !f.ok)
        .map(|f| f.detail.as_str())
        .collect();
    (!failed.is_empty()).then(|| failed.join("; "))
}
