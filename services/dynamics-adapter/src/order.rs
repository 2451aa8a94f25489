//! The order aggregate (D5): a sales order's milestone (`tgb_milestone`, else its state) →
//! `dyn.order.milestone`, once per milestone. Pure: no I/O.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use tgb_proto as pb;

use crate::change::{Change, int, meta, text};
use crate::schema::{OrderMilestone, SalesOrderState};
use crate::state::hash;

/// The milestone of an order row: its `tgb_milestone`, else what its state says (submitted =
/// confirmed, fulfilled = delivered); `None` when neither says one.
pub fn milestone(attrs: &Map<String, Value>) -> Option<pb::OrderMilestone> {
    Some(
        match int(attrs, "tgb_milestone").and_then(OrderMilestone::from_code) {
            Some(OrderMilestone::Confirmed) => pb::OrderMilestone::Confirmed,
            Some(OrderMilestone::ShipmentReleased) => pb::OrderMilestone::ShipmentReleased,
            Some(OrderMilestone::Backordered) => pb::OrderMilestone::Backordered,
            Some(OrderMilestone::Delivered) => pb::OrderMilestone::Delivered,
            None => match int(attrs, "statecode").and_then(SalesOrderState::from_code) {
                Some(SalesOrderState::Submitted) => pb::OrderMilestone::Confirmed,
                Some(SalesOrderState::Fulfilled) => pb::OrderMilestone::Delivered,
                _ => return None,
            },
        },
    )
}

/// D5: the milestone to publish and its hash; `None` when the row has none or it was
/// published already (`seen`).
pub fn plan(
    attrs: &Map<String, Value>,
    seen: &BTreeMap<String, String>,
) -> Option<(pb::OrderMilestone, String)> {
    let m = milestone(attrs)?;
    let h = hash(&json!(m as i32));
    (seen.get("milestone") != Some(&h)).then_some((m, h))
}

/// D5: the `dyn.order.milestone` of an order change.
pub fn event(
    c: &Change,
    milestone: pb::OrderMilestone,
    partner: pb::PartnerRef,
) -> pb::DynOrderMilestone {
    let a = &c.attrs;
    let order_ref = match text(a, "tgb_tgorderid") {
        "" => text(a, "ordernumber").to_owned(),
        r => r.to_owned(),
    };
    let at = a
        .get("tgb_milestoneon")
        .and_then(Value::as_str)
        .and_then(|s| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
        })
        .map(|t| prost_types::Timestamp {
            seconds: t.unix_timestamp(),
            nanos: 0,
        });
    pb::DynOrderMilestone {
        meta: meta(c, "milestone", Some(partner), &order_ref),
        salesorder_id: c.id.clone(),
        order_ref,
        milestone: milestone as i32,
        milestone_at: at,
        detail: text(a, "description").to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_milestone_column_wins_over_the_state_and_each_is_published_once() {
        let mut a = Map::new();
        assert_eq!(plan(&a, &BTreeMap::new()), None);
        a.insert("statecode".into(), SalesOrderState::Active.into());
        assert_eq!(milestone(&a), None);
        a.insert("statecode".into(), SalesOrderState::Fulfilled.into());
        assert_eq!(milestone(&a), Some(pb::OrderMilestone::Delivered));
        a.insert("tgb_milestone".into(), OrderMilestone::Backordered.into());
        let (m, h) = plan(&a, &BTreeMap::new()).unwrap();
        assert_eq!(m, pb::OrderMilestone::Backordered);
        assert_eq!(plan(&a, &BTreeMap::from([("milestone".into(), h)])), None);

        let mut c = Change {
            table: "salesorder".into(),
            id: "so-1".into(),
            attrs: a,
            ..Default::default()
        };
        c.attrs.insert("ordernumber".into(), json!("ORD-1"));
        c.attrs
            .insert("tgb_milestoneon".into(), json!("2026-01-01T00:00:00Z"));
        let ev = event(&c, m, crate::ids::partner_ref("ZZ:ACME"));
        assert_eq!(ev.order_ref, "ORD-1");
        assert_eq!(ev.milestone_at.unwrap().seconds, 1_767_225_600);
    }
}
