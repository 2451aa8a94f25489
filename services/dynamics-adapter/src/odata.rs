//! Every OData string the adapter sends, in one place: the `$select` lists, the `$filter`
//! queries (every literal through [`quote`]), the row paths, and the shapes of a write
//! (upsert, update only, create only, conditional). Pure: no I/O.

use reqwest::Method;
use tgb_clients::dataverse::{BatchRequest, quote};

use crate::schema;

/// Incident columns read back when a conditional write's precondition is unknown or refused.
pub const INCIDENT_REREAD: &str = "incidentid,tgb_tgrevision,statecode,statuscode";
/// Incident columns a D1 write answers (the row as the write left it).
pub const INCIDENT_WRITTEN: &str = "incidentid,versionnumber,statecode,statuscode";
/// Account columns D8 reads.
pub const ACCOUNT_COLUMNS: &str =
    "name,address1_line1,address1_city,address1_postalcode,address1_country,versionnumber";
/// The incident column that says which TG revision wrote it last.
pub const INCIDENT_REVISION: &str = "tgb_tgrevision";
/// The incident's id column, all a lookup by case key needs.
pub const INCIDENT_ID: &str = "incidentid";
/// KPI columns of a D7 snapshot.
pub const KPI_COLUMNS: &str =
    "tgb_kpikey,tgb_value,tgb_unit,tgb_target,tgb_periodclosed,versionnumber";
/// Most KPI rows one snapshot reads.
pub const KPI_MAX_ROWS: u32 = 500;

/// `{set}({id})`: the address of a row.
pub fn path(table: &str, id: &str) -> String {
    format!("{}({id})", schema::set(table))
}

/// `{set}({id})?$select={select}`: one row, some columns.
pub fn row(table: &str, id: &str, select: &str) -> String {
    format!("{}?$select={select}", path(table, id))
}

/// `{set}?$select={select}&$filter={column} eq '{value}'`: rows whose `column` equals `value`
/// (a text literal, quoted and encoded). Rows are found by their keys this way, never by a key
/// in a URL (Dataverse refuses key values holding `/ # < > * % & : \ ? +` there).
pub fn by_column(table: &str, select: &str, column: &str, value: &str) -> String {
    format!(
        "{}?$select={select}&$filter={column} eq {}",
        schema::set(table),
        quote(value)
    )
}

/// The latest resolution of an incident (a GUID, checked by the caller): its subject and
/// description.
pub fn latest_resolution(incident_id: &str) -> String {
    format!(
        "{}?$select=subject,description&$filter=_incidentid_value eq {incident_id}&$orderby=createdon desc&$top=1",
        schema::set("incidentresolution")
    )
}

/// The KPI rows of one partner account (a GUID, checked by the caller) and period.
pub fn kpi_rows(account_guid: &uuid::Uuid, period: &str) -> String {
    format!(
        "{}?$select={KPI_COLUMNS}&$filter=_tgb_partner_value eq {account_guid} and tgb_period eq {}",
        schema::set("tgb_partnerkpi"),
        quote(period)
    )
}

/// The primary id column of a table of the solution.
pub fn primary_id(table: &str) -> &'static str {
    schema::table(table)
        .map(|t| t.primaryid.as_str())
        .unwrap_or_else(|| panic!("table {table} is not in the solution"))
}

/// `{path}?$select={columns}` for a row path already built (`incidents(<id>)`).
pub fn select(path: &str, columns: &str) -> String {
    format!("{path}?$select={columns}")
}

/// A `PATCH` upsert of row `id` of `table` answering its primary id.
pub fn upsert_row(table: &str, id: &str, body: serde_json::Value) -> BatchRequest {
    upsert(&path(table, id), primary_id(table), body)
}

/// A `PATCH` upsert answering the row (`$select`).
pub fn upsert(path: &str, columns: &str, body: serde_json::Value) -> BatchRequest {
    BatchRequest::new(Method::PATCH, select(path, columns), Some(body))
        .header("Prefer", "return=representation")
}

/// Makes a write an update only (`If-Match: *`): for rows that must exist (accounts, invoices),
/// so that a row deleted meanwhile answers 404 instead of being re-created, nameless, under its
/// old id.
pub fn must_exist(request: BatchRequest) -> BatchRequest {
    request.header("If-Match", "*")
}

/// Makes a write a create only (`If-None-Match: *`): a row that exists answers 412.
pub fn create_only(request: BatchRequest) -> BatchRequest {
    request.header("If-None-Match", "*")
}

/// Whether `request` was made [`create_only`].
pub fn is_create_only(request: &BatchRequest) -> bool {
    request
        .headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("If-None-Match") && v == "*")
}

/// Makes a write conditional on the row's ETag (`If-Match`).
pub fn if_match(request: BatchRequest, etag: &str) -> BatchRequest {
    request.header("If-Match", etag)
}

/// RFC 3339 of a protobuf timestamp (Dataverse's date and time format).
pub fn rfc3339(t: &prost_types::Timestamp) -> Option<String> {
    let at = time::OffsetDateTime::from_unix_timestamp(t.seconds).ok()?;
    at.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_quote_their_literals_and_paths_use_the_entity_set() {
        assert_eq!(
            by_column("account", "accountid", "tgb_partnerkey", "ZZ:O'NEIL & CO"),
            "accounts?$select=accountid&$filter=tgb_partnerkey eq 'ZZ:O%27%27NEIL %26 CO'"
        );
        assert_eq!(
            row("incident", "1", "tgb_tgcaseid"),
            "incidents(1)?$select=tgb_tgcaseid"
        );
        assert_eq!(
            upsert_row("tgb_partnermessage", "7", serde_json::json!({})).path,
            "tgb_partnermessages(7)?$select=activityid"
        );
        let account = uuid::Uuid::nil();
        assert_eq!(
            kpi_rows(&account, "2026-Q1"),
            format!(
                "tgb_partnerkpis?$select={KPI_COLUMNS}&$filter=_tgb_partner_value eq {account} and tgb_period eq '2026-Q1'"
            )
        );
    }

    #[test]
    fn write_shapes_carry_their_conditions() {
        let w = upsert("accounts(1)", "accountid", serde_json::json!({}));
        assert_eq!(w.method, Method::PATCH);
        assert_eq!(w.path, "accounts(1)?$select=accountid");
        assert!(!is_create_only(&w));
        assert!(is_create_only(&create_only(w.clone())));
        let updated = must_exist(w);
        assert!(
            updated
                .headers
                .iter()
                .any(|(k, v)| k == "If-Match" && v == "*")
        );
    }
}
