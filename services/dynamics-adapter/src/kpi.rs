//! The KPI aggregate (D7): a `tgb_partnerkpi` row changed → the snapshot of every KPI of its
//! partner and period, published on change or at period close as configured. Pure: no I/O.

use serde_json::{Map, Value};
use tgb_proto as pb;

use crate::change::text;
use crate::settings::DynamicsSettings;

/// The partner account of a KPI row, only when it is a GUID (it goes into a filter unquoted).
pub fn partner_account(attrs: &Map<String, Value>) -> Option<uuid::Uuid> {
    attrs
        .get("_tgb_partner_value")
        .and_then(Value::as_str)
        .and_then(|v| uuid::Uuid::try_parse(v).ok())
}

/// The period of a KPI row.
pub fn period(attrs: &Map<String, Value>) -> &str {
    text(attrs, "tgb_period")
}

/// A partner's KPIs of one period.
#[derive(Debug, PartialEq)]
pub struct Snapshot {
    /// The KPIs, by key.
    pub kpis: Vec<pb::Kpi>,
    /// Whether any row closes the period.
    pub closed: bool,
    /// The newest row version (the snapshot's version).
    pub version: Option<u64>,
}

/// D7: the snapshot of the period's `rows` (columns [`crate::odata::KPI_COLUMNS`]), or `None`
/// when the settings publish neither on change nor, for a closed period, at its close.
pub fn plan(rows: &[Value], settings: &DynamicsSettings) -> Option<Snapshot> {
    let closed = rows
        .iter()
        .any(|r| r["tgb_periodclosed"].as_bool() == Some(true));
    if !(settings.kpi_publish_on_change || (closed && settings.kpi_publish_at_period_close)) {
        return None;
    }
    let mut kpis: Vec<pb::Kpi> = rows
        .iter()
        .map(|r| pb::Kpi {
            key: r["tgb_kpikey"].as_str().unwrap_or_default().to_owned(),
            value: r["tgb_value"].as_f64().unwrap_or(0.0),
            unit: r["tgb_unit"].as_str().unwrap_or_default().to_owned(),
            target: r["tgb_target"].as_f64(),
        })
        .collect();
    kpis.sort_by(|x, y| x.key.cmp(&y.key));
    Some(Snapshot {
        kpis,
        closed,
        version: rows
            .iter()
            .filter_map(|r| r["versionnumber"].as_u64())
            .max(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_snapshot_holds_every_kpi_by_key_and_waits_for_the_close_when_configured() {
        let rows = vec![
            json!({"tgb_kpikey": "otd", "tgb_value": 0.91, "tgb_unit": "ratio", "tgb_target": 0.95, "versionnumber": 7}),
            json!({"tgb_kpikey": "accuracy", "tgb_value": 0.99, "tgb_unit": "ratio", "versionnumber": 9}),
        ];
        let s = plan(&rows, &DynamicsSettings::default()).unwrap();
        assert_eq!(
            s.kpis.iter().map(|k| k.key.as_str()).collect::<Vec<_>>(),
            vec!["accuracy", "otd"]
        );
        assert_eq!((s.closed, s.version), (false, Some(9)));
        assert_eq!(s.kpis[1].target, Some(0.95));
        let at_close = DynamicsSettings {
            kpi_publish_on_change: false,
            ..Default::default()
        };
        assert_eq!(plan(&rows, &at_close), None);
        let mut closed = rows.clone();
        closed[0]["tgb_periodclosed"] = json!(true);
        assert!(plan(&closed, &at_close).unwrap().closed);

        let mut a = Map::new();
        a.insert("_tgb_partner_value".into(), json!("not a guid"));
        assert_eq!(partner_account(&a), None);
        a.insert(
            "_tgb_partner_value".into(),
            json!("6F9619FF-8B86-D011-B42D-00C04FC964FF"),
        );
        assert!(partner_account(&a).is_some());
    }
}
