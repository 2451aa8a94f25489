//! The exception aggregate (D2): a `tgb_exception` raised or updated in Dynamics →
//! `dyn.exception.raised` (new, not yet a TG case) or `dyn.exception.updated`. Pure: no I/O.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use tgb_proto as pb;

use crate::change::{Change, int, meta, text};
use crate::schema::{Department, ExceptionKind, ExceptionStatus};
use crate::state::hash;

/// The department names TG and Planner routing use.
fn department(code: i64) -> &'static str {
    match Department::from_code(code) {
        Some(Department::Sales) => "sales",
        Some(Department::Logistics) => "logistics",
        Some(Department::Finance) => "finance",
        Some(Department::CustomerService) => "service",
        Some(Department::Procurement) | None => "procurement",
    }
}

/// The exception as the bus carries it; `tg_case` is the TG case opened for it, if any.
pub fn exception(c: &Change, tg_case: String) -> pb::DynException {
    let a = &c.attrs;
    let kind = match int(a, "tgb_kind").and_then(ExceptionKind::from_code) {
        Some(ExceptionKind::OrderDiscrepancy) => pb::ExceptionKind::OrderDiscrepancy,
        Some(ExceptionKind::PricingMismatch) => pb::ExceptionKind::PricingMismatch,
        Some(ExceptionKind::MissingShipmentConfirmation) => {
            pb::ExceptionKind::MissingShipmentConfirmation
        }
        Some(ExceptionKind::InvoiceException) => pb::ExceptionKind::InvoiceException,
        None => pb::ExceptionKind::Unspecified,
    };
    let status = match int(a, "tgb_exceptionstatus").and_then(ExceptionStatus::from_code) {
        Some(ExceptionStatus::CorrectiveActionAgreed) => "corrective_action",
        Some(ExceptionStatus::Closed) => "resolved",
        _ => "open",
    };
    let mut departments: Vec<String> = Vec::new();
    if let Some(d) = int(a, "tgb_department") {
        departments.push(department(d).into());
    }
    for d in text(a, "tgb_involveddepartments")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let d = d.to_ascii_lowercase();
        if !departments.contains(&d) {
            departments.push(d);
        }
    }
    pb::DynException {
        exception_id: c.id.clone(),
        kind: kind as i32,
        account_id: account(a).to_owned(),
        title: text(a, "tgb_name").to_owned(),
        description: text(a, "tgb_description").to_owned(),
        order_ref: String::new(),
        invoice_ref: String::new(),
        priority: pb::CasePriority::Normal as i32,
        departments,
        tg_case_id: tg_case,
        status: status.into(),
    }
}

/// The exception's account (`_tgb_account_value`), empty when none.
pub fn account(attrs: &Map<String, Value>) -> &str {
    text(attrs, "_tgb_account_value")
}

/// The TG case the row names itself (`tgb_tgcaseid`), used when no link says otherwise.
pub fn own_tg_case(attrs: &Map<String, Value>) -> &str {
    text(attrs, "tgb_tgcaseid")
}

/// D2: what to publish for exception `x`, given the view hash last published (`seen`): the
/// event and the hash to record; `None` when nothing the flow carries changed. An exception
/// seen first and not yet a TG case is raised; anything else is an update.
pub fn plan(
    c: &Change,
    x: pb::DynException,
    partner: Option<pb::PartnerRef>,
    seen: &BTreeMap<String, String>,
) -> Option<(pb::Event, String)> {
    let view = hash(&json!([
        x.title,
        x.description,
        x.status,
        x.kind,
        x.departments
    ]));
    if seen.get("view") == Some(&view) {
        return None;
    }
    let m = meta(c, "exception", partner, &c.id);
    let ev: pb::Event = if seen.is_empty() && x.tg_case_id.is_empty() {
        pb::DynExceptionRaised {
            meta: m,
            exception: Some(x),
        }
        .into()
    } else {
        pb::DynExceptionUpdated {
            meta: m,
            exception: Some(x),
        }
        .into()
    };
    Some((ev, view))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change() -> Change {
        let mut c = Change {
            message: "Create".into(),
            table: "tgb_exception".into(),
            id: "x-1".into(),
            version: Some(3),
            ..Default::default()
        };
        c.attrs
            .insert("tgb_kind".into(), ExceptionKind::PricingMismatch.into());
        c.attrs.insert(
            "tgb_exceptionstatus".into(),
            ExceptionStatus::CorrectiveActionAgreed.into(),
        );
        c.attrs
            .insert("tgb_department".into(), Department::CustomerService.into());
        c.attrs.insert(
            "tgb_involveddepartments".into(),
            json!("Finance, service,,"),
        );
        c.attrs.insert("tgb_name".into(), json!("Price list 2026"));
        c
    }

    #[test]
    fn a_new_exception_is_raised_then_updated_and_an_unchanged_one_is_skipped() {
        let c = change();
        let x = exception(&c, String::new());
        assert_eq!(x.kind, pb::ExceptionKind::PricingMismatch as i32);
        assert_eq!(x.status, "corrective_action");
        assert_eq!(x.departments, vec!["service", "finance"]);
        let (ev, h) = plan(&c, x.clone(), None, &BTreeMap::new()).unwrap();
        assert!(matches!(ev, pb::Event::DynExceptionRaised(_)));
        let seen = BTreeMap::from([("view".to_owned(), h)]);
        assert!(plan(&c, x.clone(), None, &seen).is_none());
        let mut renamed = x.clone();
        renamed.title = "Price list 2026 (v2)".into();
        let (ev, _) = plan(&c, renamed, None, &seen).unwrap();
        assert!(matches!(ev, pb::Event::DynExceptionUpdated(_)));
        // Already a TG case: an update even when first seen.
        let linked = exception(&c, "C-9".into());
        let (ev, _) = plan(&c, linked, None, &BTreeMap::new()).unwrap();
        assert!(matches!(ev, pb::Event::DynExceptionUpdated(_)));
    }
}
