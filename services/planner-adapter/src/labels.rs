//! Plan labels: names in configuration, `categoryN` keys in Graph. Read once per plan from the
//! plan details and cached (read again when a category is not known).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use tgb_clients::graph::{GraphClient, GraphError, PlanDetails};

/// Label names of each plan (cheap to clone).
#[derive(Clone, Default)]
pub struct LabelCache {
    plans: Arc<Mutex<HashMap<String, PlanDetails>>>,
}

impl LabelCache {
    async fn details(
        &self,
        graph: &GraphClient,
        plan_id: &str,
        refresh: bool,
    ) -> Result<PlanDetails, GraphError> {
        if !refresh && let Some(d) = self.plans.lock().unwrap().get(plan_id) {
            return Ok(d.clone());
        }
        let d = graph.get_plan_details(plan_id).await?;
        self.plans
            .lock()
            .unwrap()
            .insert(plan_id.to_owned(), d.clone());
        Ok(d)
    }

    /// The category keys of label `names` in a plan; a name the plan lacks is a permanent error.
    pub async fn categories(
        &self,
        graph: &GraphClient,
        plan_id: &str,
        names: &[String],
    ) -> Result<Vec<String>, GraphError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut d = self.details(graph, plan_id, false).await?;
        if names.iter().any(|n| d.category_of(n).is_none()) {
            d = self.details(graph, plan_id, true).await?;
        }
        names
            .iter()
            .map(|n| {
                d.category_of(n).ok_or_else(|| GraphError::Permanent {
                    route: "GET /planner/plans/{id}/details".into(),
                    status: 400,
                    code: "UnknownLabel".into(),
                    message: format!(
                        "plan {plan_id} has no label named {n:?} (routing configuration)"
                    ),
                })
            })
            .collect()
    }

    /// The category key of one label, if the plan has it.
    pub async fn category(
        &self,
        graph: &GraphClient,
        plan_id: &str,
        name: &str,
    ) -> Result<Option<String>, GraphError> {
        Ok(self.details(graph, plan_id, false).await?.category_of(name))
    }

    /// The names of applied categories (unknown ones by key).
    pub async fn names(
        &self,
        graph: &GraphClient,
        plan_id: &str,
        categories: &BTreeSet<String>,
    ) -> Result<Vec<String>, GraphError> {
        let mut d = self.details(graph, plan_id, false).await?;
        if categories.iter().any(|c| d.name_of(c).is_none()) {
            d = self.details(graph, plan_id, true).await?;
        }
        Ok(categories
            .iter()
            .map(|c| d.name_of(c).unwrap_or_else(|| c.clone()))
            .collect())
    }
}
