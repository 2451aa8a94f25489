//! The tg-bridge solution (`proto/dataverse/tgb-solution.json`), compiled in: entity set names,
//! primary ids and the case-sensitive navigation property names of `@odata.bind`.

use std::sync::OnceLock;

use serde::Deserialize;

/// The solution file, as shipped in the repo.
pub const SOLUTION_JSON: &str = include_str!("../../../proto/dataverse/tgb-solution.json");

/// One table of the solution.
#[derive(Debug, Deserialize)]
pub struct Table {
    /// Logical name.
    pub logicalname: String,
    /// Entity set name.
    pub entitysetname: String,
    /// Primary id column.
    pub primaryid: String,
    #[serde(default)]
    lookups: Vec<Lookup>,
}

#[derive(Debug, Deserialize)]
struct Lookup {
    logicalname: String,
    targets: Vec<Target>,
}

#[derive(Debug, Deserialize)]
struct Target {
    table: String,
    navigation: String,
}

#[derive(Debug, Deserialize)]
struct Solution {
    tables: Vec<Table>,
}

fn solution() -> &'static Solution {
    static S: OnceLock<Solution> = OnceLock::new();
    S.get_or_init(|| serde_json::from_str(SOLUTION_JSON).expect("the solution file is valid JSON"))
}

/// The table with this logical name.
pub fn table(logical: &str) -> Option<&'static Table> {
    solution().tables.iter().find(|t| t.logicalname == logical)
}

/// The entity set of a table (`incident` → `incidents`).
pub fn set(logical: &str) -> &'static str {
    table(logical)
        .map(|t| t.entitysetname.as_str())
        .unwrap_or_else(|| panic!("table {logical} is not in the solution"))
}

/// `<navigation>@odata.bind` for lookup `lookup` of `table` pointing at `target`, exactly as
/// the solution spells it (case-sensitive).
pub fn bind(table_name: &str, lookup: &str, target: &str) -> String {
    let nav = table(table_name)
        .and_then(|t| t.lookups.iter().find(|l| l.logicalname == lookup))
        .and_then(|l| l.targets.iter().find(|t| t.table == target))
        .map(|t| t.navigation.as_str())
        .unwrap_or_else(|| panic!("{table_name}.{lookup} → {target} is not in the solution"));
    format!("{nav}@odata.bind")
}

/// `/{set}({id})`: an entity reference for `@odata.bind`.
pub fn reference(logical: &str, key: &str) -> String {
    format!("/{}({key})", set(logical))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn navigation_names_keep_their_schema_case() {
        assert_eq!(
            bind("incident", "customerid", "account"),
            "customerid_account@odata.bind"
        );
        assert_eq!(
            bind("tgb_partnerkpi", "tgb_partner", "account"),
            "tgb_Partner@odata.bind"
        );
        assert_eq!(
            bind("invoice", "tgb_disputecase", "incident"),
            "tgb_DisputeCase@odata.bind"
        );
        assert_eq!(
            bind("tgb_partnermessage", "regardingobjectid", "incident"),
            "regardingobjectid_incident_tgb_partnermessage@odata.bind"
        );
        assert_eq!(set("tgb_partnerkpi"), "tgb_partnerkpis");
    }
}
