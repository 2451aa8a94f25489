//! The `[routing]` and `[partners]` configuration and the pure routing decisions over it:
//! which plan, bucket, assignees, due date, Planner priority and labels a task gets.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use tgb_proto::{CaseCategory, CasePriority};

/// A plan by alias: its Graph id and its buckets by alias.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlanRef {
    /// The Graph plan id.
    pub plan_id: String,
    /// Bucket alias → Graph bucket id.
    pub buckets: BTreeMap<String, String>,
}

/// Where a kind of task goes.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Target {
    /// Plan alias (a key of `[routing.plans]`).
    pub plan: String,
    /// Bucket alias in that plan.
    pub bucket: Option<String>,
    /// User ids assigned.
    pub assignees: Vec<String>,
    /// Label names applied (resolved to the plan's categories).
    pub labels: Vec<String>,
    /// Checklist items put on the task.
    pub checklist: Vec<String>,
    /// Due this many hours after creation (0 = no due date).
    pub due_hours: u64,
}

/// One routing rule for TG cases; the first rule whose set fields all match wins.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rule {
    /// TG category (`shipment_discrepancy`, ...); unset matches any.
    pub category: Option<String>,
    /// Partner tier (`[partners]`); unset matches any.
    pub tier: Option<String>,
    /// TG priority (`urgent`, `high`, `normal`, `low`); unset matches any.
    pub priority: Option<String>,
    /// Plan alias.
    pub plan: String,
    /// Bucket alias.
    pub bucket: Option<String>,
    /// User ids.
    pub assignees: Vec<String>,
    /// Label names.
    pub labels: Vec<String>,
    /// Planner priority override (`urgent`, `important`, `medium`, `low`).
    pub planner_priority: Option<String>,
    /// Due-date override, hours.
    pub due_hours: Option<u64>,
}

/// Label names that carry a meaning back to tg-bridge.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Labels {
    /// A task with this label is blocked (P2).
    pub blocked: String,
    /// Review outcomes (P5).
    pub approved: String,
    /// Review outcomes (P5).
    pub rejected: String,
    /// Review outcomes (P5).
    pub needs_changes: String,
}

impl Default for Labels {
    fn default() -> Self {
        Labels {
            blocked: "Blocked".into(),
            approved: "Approved".into(),
            rejected: "Rejected".into(),
            needs_changes: "Needs changes".into(),
        }
    }
}

/// The Graph lane and the poller.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GraphSettings {
    /// How often the configured plans are polled, milliseconds.
    pub poll_interval_ms: u64,
    /// Requests per window allowed to tg-bridge's identity (Planner publishes no limit).
    pub requests_per_window: u32,
    /// The window, seconds.
    pub window_secs: f64,
    /// Requests in flight at once.
    pub max_concurrent: usize,
    /// A create intent older than this with no task found may be re-tried, seconds.
    pub intent_lease_secs: u64,
    /// After a POST answered with an unknown effect (500, 503), how long until the plan
    /// listing is trusted to show its task, seconds.
    pub intent_settle_secs: u64,
    /// Request timeout, seconds.
    pub timeout_secs: u64,
    /// The poller lease (one polling replica) runs out this long after its last renewal,
    /// milliseconds: how long a crashed poller's plans go unpolled at most.
    pub poller_lease_ttl_ms: u64,
    /// The holder renews the lease, and the others try to take it, this often, milliseconds.
    pub poller_lease_renew_ms: u64,
    /// Share the lane's limits (`requests_per_window`, `max_concurrent`) with the other
    /// replicas of this identity (`fleet.<lane>` in `tgb_sync`): each takes 1 / replicas.
    pub fleet: bool,
    /// A replica that stops renewing its fleet membership drops out after this long,
    /// milliseconds (at least twice the renewal period).
    pub fleet_ttl_ms: u64,
    /// How often a replica renews its fleet membership, milliseconds; a starting replica
    /// waits one and a half of it before its first request to Planner.
    pub fleet_renew_ms: u64,
}

impl Default for GraphSettings {
    fn default() -> Self {
        GraphSettings {
            poll_interval_ms: 30_000,
            requests_per_window: 600,
            window_secs: 60.0,
            max_concurrent: 4,
            intent_lease_secs: 120,
            intent_settle_secs: 30,
            timeout_secs: 30,
            poller_lease_ttl_ms: 15_000,
            poller_lease_renew_ms: 3_000,
            fleet: true,
            fleet_ttl_ms: 15_000,
            fleet_renew_ms: 3_000,
        }
    }
}

/// `[routing]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Routing {
    /// The Graph lane and poller.
    pub graph: GraphSettings,
    /// Link to a TG case as people open it; `{case_id}` is replaced. Also the task's marker.
    pub tg_case_url: String,
    /// Link to a TG document; `{document_id}` is replaced.
    pub tg_document_url: String,
    /// Label names with a meaning.
    pub labels: Labels,
    /// Plans by alias.
    pub plans: BTreeMap<String, PlanRef>,
    /// TG priority (`urgent`, `high`, `normal`, `low`) → Planner priority name
    /// (`urgent`, `important`, `medium`, `low`).
    pub priorities: BTreeMap<String, String>,
    /// TG priority → hours until due (mirrors the SLA resolution targets).
    pub due_hours: BTreeMap<String, u64>,
    /// Rules for TG cases (P1), first match wins.
    pub rules: Vec<Rule>,
    /// TG categories handled as cross-functional exceptions (P4) → the departments involved.
    pub multi_department: BTreeMap<String, Vec<String>>,
    /// Department → where its tasks go (P4).
    pub departments: BTreeMap<String, Target>,
    /// Escalation tasks (P3).
    pub escalation: Target,
    /// Review tasks (P5).
    pub review: Target,
    /// Onboarding step tasks (P6); step key → bucket alias in `onboarding.plan`.
    pub onboarding: Target,
    /// Onboarding step key → bucket alias.
    pub onboarding_buckets: BTreeMap<String, String>,
    /// Action items (P7).
    pub action_items: Target,
    /// Owner hint (name or e-mail, lower case) → user id (P7).
    pub owners: BTreeMap<String, String>,
}

/// `[partners]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Partners {
    /// Tier of a partner not listed.
    pub default_tier: String,
    /// Partner key (`ZZ:ACME01`) → tier.
    pub tiers: BTreeMap<String, String>,
}

impl Default for Partners {
    fn default() -> Self {
        Partners {
            default_tier: "standard".into(),
            tiers: BTreeMap::new(),
        }
    }
}

impl Partners {
    /// The tier of a partner.
    pub fn tier(&self, partner_key: Option<&str>) -> &str {
        partner_key
            .and_then(|k| self.tiers.get(k))
            .unwrap_or(&self.default_tier)
    }
}

/// A routing configuration that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("routing.{key}: {reason}")]
pub struct RoutingError {
    /// The dotted key under `[routing]`.
    pub key: String,
    /// Why.
    pub reason: String,
}

fn err(key: impl Into<String>, reason: impl Into<String>) -> RoutingError {
    RoutingError {
        key: key.into(),
        reason: reason.into(),
    }
}

const TG_PRIORITIES: &[&str] = &["urgent", "high", "normal", "low"];
const CATEGORIES: &[&str] = &[
    "shipment_discrepancy",
    "invoice_mismatch",
    "compliance_exception",
    "pricing",
    "order",
    "other",
];

/// Planner's priority numbers: urgent 1, important 3, medium 5, low 9.
pub fn planner_priority(name: &str) -> Option<i64> {
    match name.to_ascii_lowercase().as_str() {
        "urgent" => Some(1),
        "important" => Some(3),
        "medium" => Some(5),
        "low" => Some(9),
        _ => None,
    }
}

/// `high` for `CASE_PRIORITY_HIGH`.
pub fn tg_priority_name(p: CasePriority) -> &'static str {
    match p {
        CasePriority::Urgent => "urgent",
        CasePriority::High => "high",
        CasePriority::Low => "low",
        CasePriority::Normal | CasePriority::Unspecified => "normal",
    }
}

/// `shipment_discrepancy` for `CASE_CATEGORY_SHIPMENT_DISCREPANCY`.
pub fn category_name(c: CaseCategory) -> &'static str {
    match c {
        CaseCategory::ShipmentDiscrepancy => "shipment_discrepancy",
        CaseCategory::InvoiceMismatch => "invoice_mismatch",
        CaseCategory::ComplianceException => "compliance_exception",
        CaseCategory::Pricing => "pricing",
        CaseCategory::Order => "order",
        CaseCategory::Other | CaseCategory::Unspecified => "other",
    }
}

/// Where a task goes, resolved to Graph ids (labels still by name).
#[derive(Clone, Debug, PartialEq)]
pub struct Placement {
    /// Graph plan id.
    pub plan_id: String,
    /// Graph bucket id.
    pub bucket_id: Option<String>,
    /// User ids.
    pub assignees: Vec<String>,
    /// Planner priority (1, 3, 5, 9).
    pub priority: i64,
    /// Due after creation.
    pub due_in: Option<Duration>,
    /// Label names.
    pub labels: Vec<String>,
    /// Checklist items.
    pub checklist: Vec<String>,
}

impl Routing {
    /// Checks every reference in the configuration; the service refuses to start otherwise.
    pub fn validate(&self) -> Result<(), RoutingError> {
        if self.graph.poll_interval_ms == 0 {
            return Err(err("graph.poll_interval_ms", "must be above 0"));
        }
        if self.graph.poller_lease_renew_ms == 0 {
            return Err(err("graph.poller_lease_renew_ms", "must be above 0"));
        }
        if self.graph.poller_lease_ttl_ms < self.graph.poller_lease_renew_ms.saturating_mul(2) {
            return Err(err(
                "graph.poller_lease_ttl_ms",
                "must be at least twice graph.poller_lease_renew_ms",
            ));
        }
        if self.graph.fleet
            && (self.graph.fleet_renew_ms == 0
                || self.graph.fleet_ttl_ms < self.graph.fleet_renew_ms.saturating_mul(2))
        {
            return Err(err(
                "graph.fleet_ttl_ms",
                "must be at least twice graph.fleet_renew_ms, which must be above 0",
            ));
        }
        if self.graph.max_concurrent == 0 {
            return Err(err("graph.max_concurrent", "must be above 0"));
        }
        if !self.tg_case_url.is_empty() && !self.tg_case_url.contains("{case_id}") {
            return Err(err("tg_case_url", "must contain {case_id}"));
        }
        for (alias, p) in &self.plans {
            if p.plan_id.trim().is_empty() {
                return Err(err(format!("plans.{alias}.plan_id"), "is empty"));
            }
        }
        for (k, v) in &self.priorities {
            if !TG_PRIORITIES.contains(&k.as_str()) {
                return Err(err(
                    format!("priorities.{k}"),
                    format!("unknown TG priority; use one of {TG_PRIORITIES:?}"),
                ));
            }
            if planner_priority(v).is_none() {
                return Err(err(
                    format!("priorities.{k}"),
                    format!("{v:?} is not urgent, important, medium or low"),
                ));
            }
        }
        for k in self.due_hours.keys() {
            if !TG_PRIORITIES.contains(&k.as_str()) {
                return Err(err(format!("due_hours.{k}"), "unknown TG priority"));
            }
        }
        for (i, r) in self.rules.iter().enumerate() {
            let key = format!("rules[{i}]");
            if let Some(c) = &r.category
                && !CATEGORIES.contains(&c.as_str())
            {
                return Err(err(
                    format!("{key}.category"),
                    format!("unknown category {c:?}; use one of {CATEGORIES:?}"),
                ));
            }
            if let Some(p) = &r.priority
                && !TG_PRIORITIES.contains(&p.as_str())
            {
                return Err(err(format!("{key}.priority"), "unknown TG priority"));
            }
            if let Some(p) = &r.planner_priority
                && planner_priority(p).is_none()
            {
                return Err(err(
                    format!("{key}.planner_priority"),
                    "is not urgent, important, medium or low",
                ));
            }
            self.check_target(&key, &r.plan, r.bucket.as_deref())?;
        }
        for (c, depts) in &self.multi_department {
            if !CATEGORIES.contains(&c.as_str()) {
                return Err(err(format!("multi_department.{c}"), "unknown category"));
            }
            for d in depts {
                if !self.departments.contains_key(d) {
                    return Err(err(
                        format!("multi_department.{c}"),
                        format!("department {d:?} is not in routing.departments"),
                    ));
                }
            }
        }
        for (d, t) in &self.departments {
            self.check_target(&format!("departments.{d}"), &t.plan, t.bucket.as_deref())?;
        }
        for (key, t) in [
            ("escalation", &self.escalation),
            ("review", &self.review),
            ("onboarding", &self.onboarding),
            ("action_items", &self.action_items),
        ] {
            if !t.plan.is_empty() {
                self.check_target(key, &t.plan, t.bucket.as_deref())?;
            }
        }
        for (step, bucket) in &self.onboarding_buckets {
            self.check_target(
                &format!("onboarding_buckets.{step}"),
                &self.onboarding.plan,
                Some(bucket),
            )?;
        }
        Ok(())
    }

    fn check_target(
        &self,
        key: &str,
        plan: &str,
        bucket: Option<&str>,
    ) -> Result<(), RoutingError> {
        let Some(p) = self.plans.get(plan) else {
            return Err(err(
                format!("{key}.plan"),
                format!("plan alias {plan:?} is not in routing.plans"),
            ));
        };
        if let Some(b) = bucket
            && !p.buckets.contains_key(b)
        {
            return Err(err(
                format!("{key}.bucket"),
                format!("bucket alias {b:?} is not in routing.plans.{plan}.buckets"),
            ));
        }
        Ok(())
    }

    /// Every Graph plan id the poller watches.
    pub fn plan_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.plans.values().map(|p| p.plan_id.clone()).collect();
        ids.sort();
        ids.dedup();
        ids
    }

    fn resolve(&self, plan: &str, bucket: Option<&str>) -> Option<(String, Option<String>)> {
        let p = self.plans.get(plan)?;
        Some((
            p.plan_id.clone(),
            bucket.and_then(|b| p.buckets.get(b).cloned()),
        ))
    }

    fn priority_for(&self, tg: CasePriority) -> i64 {
        self.priorities
            .get(tg_priority_name(tg))
            .and_then(|n| planner_priority(n))
            .unwrap_or(match tg {
                CasePriority::Urgent => 1,
                CasePriority::High => 3,
                CasePriority::Low => 9,
                _ => 5,
            })
    }

    fn due_for(&self, tg: CasePriority) -> Option<Duration> {
        self.due_hours
            .get(tg_priority_name(tg))
            .filter(|h| **h > 0)
            .map(|h| Duration::from_secs(h * 3600))
    }

    /// P1: the triage task of a TG case; `None` when no rule matches.
    pub fn route_case(
        &self,
        category: CaseCategory,
        priority: CasePriority,
        tier: &str,
    ) -> Option<Placement> {
        let cat = category_name(category);
        let prio = tg_priority_name(priority);
        let rule = self.rules.iter().find(|r| {
            r.category.as_deref().is_none_or(|c| c == cat)
                && r.tier.as_deref().is_none_or(|t| t == tier)
                && r.priority.as_deref().is_none_or(|p| p == prio)
        })?;
        let (plan_id, bucket_id) = self.resolve(&rule.plan, rule.bucket.as_deref())?;
        Some(Placement {
            plan_id,
            bucket_id,
            assignees: rule.assignees.clone(),
            priority: rule
                .planner_priority
                .as_deref()
                .and_then(planner_priority)
                .unwrap_or_else(|| self.priority_for(priority)),
            due_in: match rule.due_hours {
                Some(0) => None,
                Some(h) => Some(Duration::from_secs(h * 3600)),
                None => self.due_for(priority),
            },
            labels: rule.labels.clone(),
            checklist: Vec::new(),
        })
    }

    /// A configured target (escalation, review, onboarding, action items, a department).
    pub fn place(&self, t: &Target, priority: CasePriority) -> Option<Placement> {
        let (plan_id, bucket_id) = self.resolve(&t.plan, t.bucket.as_deref())?;
        Some(Placement {
            plan_id,
            bucket_id,
            assignees: t.assignees.clone(),
            priority: self.priority_for(priority),
            due_in: if t.due_hours > 0 {
                Some(Duration::from_secs(t.due_hours * 3600))
            } else {
                self.due_for(priority)
            },
            labels: t.labels.clone(),
            checklist: t.checklist.clone(),
        })
    }

    /// P4: the departments of a TG category configured as multi-department.
    pub fn departments_of(&self, category: CaseCategory) -> Option<&[String]> {
        self.multi_department
            .get(category_name(category))
            .map(Vec::as_slice)
    }

    /// P7: the user id for an owner hint (case-insensitive; `dana@x` also tries `dana`).
    pub fn owner(&self, hint: &str) -> Option<&String> {
        let h = hint.trim().to_lowercase();
        self.owners
            .get(&h)
            .or_else(|| h.split('@').next().and_then(|local| self.owners.get(local)))
    }

    /// The TG case URL (the marker on the task details).
    pub fn case_url(&self, case_id: &str) -> String {
        let template = if self.tg_case_url.is_empty() {
            "https://tg.example/cases/{case_id}"
        } else {
            &self.tg_case_url
        };
        template.replace("{case_id}", case_id)
    }

    /// The TG document URL.
    pub fn document_url(&self, document_id: &str) -> String {
        let template = if self.tg_document_url.is_empty() {
            "https://tg.example/documents/{document_id}"
        } else {
            &self.tg_document_url
        };
        template.replace("{document_id}", document_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routing() -> Routing {
        let text = r#"
            tg_case_url = "https://tg.example/cases/{case_id}"
            [plans.issues]
            plan_id = "P1"
            buckets = { triage = "B1", esc = "B2" }
            [priorities]
            urgent = "urgent"
            high = "important"
            [due_hours]
            urgent = 4
            normal = 72
            [[rules]]
            category = "shipment_discrepancy"
            tier = "gold"
            plan = "issues"
            bucket = "esc"
            assignees = ["u1"]
            planner_priority = "urgent"
            [[rules]]
            plan = "issues"
            bucket = "triage"
            labels = ["Triage"]
        "#;
        let r: Routing = toml::from_str(text).unwrap();
        r.validate().unwrap();
        r
    }

    #[test]
    fn first_matching_rule_wins_with_tier_and_priority_maps() {
        let r = routing();
        let gold = r
            .route_case(
                CaseCategory::ShipmentDiscrepancy,
                CasePriority::Normal,
                "gold",
            )
            .unwrap();
        assert_eq!(gold.bucket_id.as_deref(), Some("B2"));
        assert_eq!(gold.priority, 1);
        assert_eq!(gold.due_in, Some(Duration::from_secs(72 * 3600)));
        let std = r
            .route_case(
                CaseCategory::ShipmentDiscrepancy,
                CasePriority::High,
                "standard",
            )
            .unwrap();
        assert_eq!(std.bucket_id.as_deref(), Some("B1"));
        assert_eq!(std.priority, 3);
        assert_eq!(std.labels, vec!["Triage".to_owned()]);
        let low = r
            .route_case(CaseCategory::Order, CasePriority::Low, "x")
            .unwrap();
        assert_eq!(low.priority, 9);
        assert_eq!(low.due_in, None);
    }

    #[test]
    fn validation_names_the_bad_key() {
        let mut r = routing();
        r.rules[0].bucket = Some("nope".into());
        let e = r.validate().unwrap_err();
        assert_eq!(e.key, "rules[0].bucket");
        let mut r = routing();
        r.priorities.insert("high".into(), "very".into());
        assert_eq!(r.validate().unwrap_err().key, "priorities.high");
        let mut r = routing();
        r.multi_department
            .insert("pricing".into(), vec!["finance".into()]);
        assert!(r.validate().unwrap_err().reason.contains("finance"));
    }

    #[test]
    fn owner_hints_map_case_insensitively() {
        let mut r = routing();
        r.owners.insert("dana".into(), "U-D".into());
        assert_eq!(r.owner("Dana").unwrap(), "U-D");
        assert_eq!(r.owner("dana@acme.example").unwrap(), "U-D");
        assert!(r.owner("sam").is_none());
    }
}
