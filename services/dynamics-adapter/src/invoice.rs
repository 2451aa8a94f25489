//! The invoice aggregate (D6): a TG dispute → the invoice's dispute columns and the case it
//! points at, in one change set; an invoice's payment and dispute status changed in Dynamics →
//! `dyn.invoice.status_changed`. Pure: no I/O, no clock.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use tgb_clients::dataverse::{BatchAnswer, BatchRequest};
use tgb_proto as pb;

use crate::change::{Change, int, meta, text};
use crate::ids::incident_id;
use crate::odata::{self, must_exist, rfc3339, upsert, upsert_row};
use crate::schema::{
    CaseOrigin, CaseType, DisputeStatus, InvoiceState, TgbOrigin, bind, reference, truncate,
};

/// The TG case key of a dispute's incident: its TG case, else one of its own.
pub fn case_key(d: &pb::TgDispute) -> String {
    if d.case_id.is_empty() {
        format!("dispute:{}", d.dispute_id)
    } else {
        d.case_id.clone()
    }
}

/// The writes of one dispute event.
#[derive(Debug)]
pub struct DisputePlan {
    /// The change set: the incident (when written) first, then the invoice.
    pub writes: Vec<BatchRequest>,
    /// Whether the incident is written (else an existing TG case's incident is only pointed at).
    pub write_incident: bool,
}

/// D6: the invoice's dispute columns, pointing at the incident of the dispute's case.
///
/// The incident is the existing one (`existing`: linked, or found by the case key), else the id
/// tg-bridge gives a new one. A TG case already in Dynamics keeps its own title and
/// description: the dispute only points at it. A dispute without a TG case gets an incident of
/// its own, written with the invoice.
pub fn plan_dispute(
    d: &pb::TgDispute,
    opened: bool,
    occurred_at: Option<&prost_types::Timestamp>,
    invoice: &str,
    account: &str,
    existing: Option<&str>,
) -> DisputePlan {
    let case_key = case_key(d);
    let incident_key = odata::path(
        "incident",
        &existing
            .map(str::to_owned)
            .unwrap_or_else(|| incident_id(&case_key).to_string()),
    );
    let write_incident = existing.is_none() || d.case_id.is_empty();
    let status = match d.status() {
        pb::DisputeStatus::UnderReview => DisputeStatus::UnderReview,
        pb::DisputeStatus::Resolved => DisputeStatus::Resolved,
        _ => DisputeStatus::Open,
    };
    let mut columns = json!({
        "tgb_disputeid": d.dispute_id,
        "tgb_disputestatus": status.code(),
        "tgb_disputereason": truncate(&d.reason, 4000),
        bind("invoice", "tgb_disputecase", "incident"): format!("/{incident_key}"),
    });
    if let Some(m) = &d.disputed_amount
        && let Ok(v) = m.value.parse::<f64>()
    {
        columns["tgb_disputedamount"] = json!(v);
    }
    if opened && let Some(t) = occurred_at.and_then(rfc3339) {
        columns["tgb_disputeraisedon"] = json!(t);
    }
    let mut writes = Vec::new();
    if write_incident {
        writes.push(upsert(
            &incident_key,
            odata::INCIDENT_ID,
            json!({
                "title": truncate(&format!("Invoice dispute {} on {}", d.dispute_id, d.invoice_ref), 200),
                "description": truncate(&d.reason, 2000),
                "casetypecode": CaseType::Problem.code(),
                "caseorigincode": CaseOrigin::Web.code(),
                "tgb_origin": TgbOrigin::InvoiceDispute.code(),
                "tgb_tgcaseid": case_key,
                bind("incident", "customerid", "account"): reference("account", account),
            }),
        ));
    }
    writes.push(must_exist(upsert_row("invoice", invoice, columns)));
    DisputePlan {
        writes,
        write_incident,
    }
}

impl DisputePlan {
    /// The incident the dispute points at, from the existing one or the incident write's
    /// answer; empty when the answer names none.
    pub fn incident(&self, existing: Option<&str>, answers: &[BatchAnswer]) -> String {
        match existing {
            Some(id) if !self.write_incident => id.to_owned(),
            _ => answers
                .first()
                .and_then(|a| a.body.as_ref())
                .and_then(|b| b["incidentid"].as_str())
                .unwrap_or_default()
                .to_owned(),
        }
    }
}

/// D6: the hash of a disputed invoice's status view (state, dispute status, resolution note,
/// adjustment) when it differs from the one last published (`seen`); `None` for an invoice
/// without a dispute or with nothing new.
pub fn changed(attrs: &Map<String, Value>, seen: &BTreeMap<String, String>) -> Option<String> {
    if text(attrs, "tgb_disputeid").is_empty() {
        return None;
    }
    let h = crate::state::hash(&json!([
        attrs.get("statecode"),
        attrs.get("tgb_disputestatus"),
        attrs.get("tgb_resolutionnote"),
        attrs.get("tgb_adjustment")
    ]));
    (seen.get("view") != Some(&h)).then_some(h)
}

/// D6: the `dyn.invoice.status_changed` of an invoice change.
pub fn status_changed(c: &Change, partner: Option<pb::PartnerRef>) -> pb::DynInvoiceStatusChanged {
    let a = &c.attrs;
    let dispute = text(a, "tgb_disputeid");
    let money = |v: Option<&Value>| {
        v.and_then(Value::as_f64).map(|x| pb::Money {
            value: format!("{x:.2}"),
            currency: String::new(),
        })
    };
    let total = a.get("totalamount").and_then(Value::as_f64).unwrap_or(0.0);
    let paid = int(a, "statecode") == Some(InvoiceState::Paid.code());
    pb::DynInvoiceStatusChanged {
        meta: meta(c, "invoice", partner, dispute),
        invoice_id: c.id.clone(),
        invoice_ref: text(a, "invoicenumber").to_owned(),
        dispute_id: dispute.to_owned(),
        dispute_status: match int(a, "tgb_disputestatus").and_then(DisputeStatus::from_code) {
            Some(DisputeStatus::UnderReview) => pb::DisputeStatus::UnderReview,
            Some(DisputeStatus::Resolved) => pb::DisputeStatus::Resolved,
            _ => pb::DisputeStatus::Open,
        } as i32,
        paid_amount: money(Some(&json!(if paid { total } else { 0.0 }))),
        open_amount: money(Some(&json!(if paid { 0.0 } else { total }))),
        adjustment: money(a.get("tgb_adjustment")),
        resolution_note: text(a, "tgb_resolutionnote").to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dispute(case_id: &str) -> pb::TgDispute {
        pb::TgDispute {
            dispute_id: "DP-1".into(),
            invoice_ref: "INV-7".into(),
            case_id: case_id.into(),
            reason: "Price differs from contract".into(),
            status: pb::DisputeStatus::UnderReview as i32,
            disputed_amount: Some(pb::Money {
                value: "120.50".into(),
                currency: "EUR".into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_dispute_without_a_case_creates_its_incident_in_the_invoice_change_set() {
        let at = prost_types::Timestamp {
            seconds: 1_767_225_600,
            nanos: 0,
        };
        let p = plan_dispute(&dispute(""), true, Some(&at), "inv-1", "acc-1", None);
        assert!(p.write_incident);
        assert_eq!(p.writes.len(), 2);
        let incident = p.writes[0].body.as_ref().unwrap();
        assert_eq!(incident["tgb_tgcaseid"], "dispute:DP-1");
        assert_eq!(incident["tgb_origin"], TgbOrigin::InvoiceDispute.code());
        assert_eq!(incident["casetypecode"], CaseType::Problem.code());
        let invoice = &p.writes[1];
        assert!(invoice.path.starts_with("invoices(inv-1)?"));
        assert!(
            invoice
                .headers
                .iter()
                .any(|(k, v)| k == "If-Match" && v == "*")
        );
        let cols = invoice.body.as_ref().unwrap();
        assert_eq!(cols["tgb_disputestatus"], DisputeStatus::UnderReview.code());
        assert_eq!(cols["tgb_disputedamount"], 120.5);
        assert_eq!(cols["tgb_disputeraisedon"], "2026-01-01T00:00:00Z");
        assert_eq!(
            cols["tgb_DisputeCase@odata.bind"],
            format!("/incidents({})", incident_id("dispute:DP-1"))
        );
        // The incident's id comes from the answer; an empty answer names none (no panic).
        assert_eq!(p.incident(None, &[]), "");
    }

    #[test]
    fn a_dispute_on_a_known_case_only_points_at_its_incident() {
        let p = plan_dispute(&dispute("C-1"), false, None, "inv-1", "acc-1", Some("i-1"));
        assert!(!p.write_incident);
        assert_eq!(p.writes.len(), 1);
        let cols = p.writes[0].body.as_ref().unwrap();
        assert_eq!(cols["tgb_DisputeCase@odata.bind"], "/incidents(i-1)");
        assert!(
            cols.get("tgb_disputeraisedon").is_none(),
            "only when opened"
        );
        assert_eq!(p.incident(Some("i-1"), &[]), "i-1");
    }

    #[test]
    fn an_invoice_change_is_published_once_per_view_with_paid_and_open_amounts() {
        let mut c = Change {
            table: "invoice".into(),
            id: "inv-1".into(),
            version: Some(4),
            ..Default::default()
        };
        assert_eq!(changed(&c.attrs, &BTreeMap::new()), None, "no dispute");
        c.attrs.insert("tgb_disputeid".into(), json!("DP-1"));
        c.attrs
            .insert("statecode".into(), InvoiceState::Paid.into());
        c.attrs.insert("totalamount".into(), json!(99.5));
        c.attrs
            .insert("tgb_disputestatus".into(), DisputeStatus::Resolved.into());
        let h = changed(&c.attrs, &BTreeMap::new()).unwrap();
        assert_eq!(
            changed(&c.attrs, &BTreeMap::from([("view".into(), h)])),
            None
        );
        let ev = status_changed(&c, None);
        assert_eq!(ev.paid_amount.unwrap().value, "99.50");
        assert_eq!(ev.open_amount.unwrap().value, "0.00");
        assert_eq!(ev.dispute_status, pb::DisputeStatus::Resolved as i32);
    }
}
