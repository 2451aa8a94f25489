//! The tg-bridge solution description (`proto/dataverse/tgb-solution.json`), shared with the
//! dynamics-adapter, loaded once and indexed for the emulator.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// The solution file, embedded so the emulator and the adapter read the very same text.
pub const SOLUTION_JSON: &str = include_str!("../../../proto/dataverse/tgb-solution.json");

/// The whole solution file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SolutionFile {
    /// Solution and publisher identity.
    pub solution: SolutionInfo,
    /// Tables (standard ones extended by the solution, and custom ones).
    pub tables: Vec<Table>,
}

/// Solution and publisher identity.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SolutionInfo {
    /// Unique name of the solution.
    pub uniquename: String,
    /// Version of the solution.
    pub version: String,
    /// Publisher (prefix `tgb`).
    pub publisher: Publisher,
}

/// Solution publisher.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Publisher {
    /// Unique name.
    pub uniquename: String,
    /// Customization prefix (`tgb`).
    pub customizationprefix: String,
    /// Option value prefix (choice values start at prefix * 10000).
    pub customizationoptionvalueprefix: u32,
}

/// One table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Table {
    /// Logical name (`incident`).
    pub logicalname: String,
    /// Schema name (`Incident`).
    pub schemaname: String,
    /// Entity set name used in URLs (`incidents`).
    pub entitysetname: String,
    /// Primary key column (`incidentid`, `activityid` for activities).
    pub primaryid: String,
    /// Primary name column.
    pub primaryname: String,
    /// Out-of-the-box table extended by the solution.
    #[serde(default)]
    pub standard: bool,
    /// Activity table (primary key `activityid`, `regardingobjectid`).
    #[serde(default)]
    pub activity: bool,
    /// `UserOwned` (default) or `OrganizationOwned`.
    #[serde(default)]
    pub ownership: Option<String>,
    /// Change tracking enabled.
    #[serde(default)]
    pub changetracking: bool,
    /// What the table holds (custom tables).
    #[serde(default)]
    pub description: Option<String>,
    /// Columns other than lookups.
    pub columns: Vec<Column>,
    /// Lookup columns.
    #[serde(default)]
    pub lookups: Vec<Lookup>,
    /// Alternate keys.
    #[serde(default)]
    pub keys: Vec<AlternateKey>,
}

/// Column types known to the emulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    /// Single line of text.
    String,
    /// Multiple lines of text.
    Memo,
    /// Whole number.
    Integer,
    /// Decimal number.
    Decimal,
    /// Currency.
    Money,
    /// Yes/No.
    Boolean,
    /// Date and time.
    Datetime,
    /// Choice.
    Picklist,
    /// Status (statecode).
    State,
    /// Status reason (statuscode).
    Status,
}

/// A non-lookup column.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Column {
    /// Logical name.
    pub logicalname: String,
    /// Schema name (custom columns).
    #[serde(default)]
    pub schemaname: Option<String>,
    /// Type.
    #[serde(rename = "type")]
    pub kind: ColumnType,
    /// Maximum length for text columns.
    #[serde(default)]
    pub maxlength: Option<usize>,
    /// Business required (informational: the Web API does not enforce it).
    #[serde(default)]
    pub required: bool,
    /// Set by the platform only.
    #[serde(default)]
    pub readonly: bool,
    /// Choice values.
    #[serde(default)]
    pub options: Vec<OptionValue>,
    /// What the column holds.
    #[serde(default)]
    pub description: Option<String>,
}

/// One choice value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OptionValue {
    /// Value.
    pub value: i64,
    /// Label.
    pub label: String,
    /// For a status reason: the statecode it belongs to.
    #[serde(default)]
    pub state: Option<i64>,
}

/// A lookup column and its navigation properties, one per target table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lookup {
    /// Logical name (`customerid`); read back as `_customerid_value`.
    pub logicalname: String,
    /// Schema name (custom lookups).
    #[serde(default)]
    pub schemaname: Option<String>,
    /// `lookup` or `customer`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Business required (informational).
    #[serde(default)]
    pub required: bool,
    /// Required by the platform itself (enforced on create).
    #[serde(default)]
    pub systemrequired: bool,
    /// Target tables.
    pub targets: Vec<LookupTarget>,
    /// What the lookup points to.
    #[serde(default)]
    pub description: Option<String>,
}

/// A lookup target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LookupTarget {
    /// Target table logical name.
    pub table: String,
    /// Single-valued navigation property used in `@odata.bind` (case-sensitive).
    pub navigation: String,
}

/// An alternate key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlternateKey {
    /// Schema name of the key.
    pub schemaname: String,
    /// Key columns (lookup columns by logical name).
    pub columns: Vec<String>,
}

/// The solution with lookup indexes.
#[derive(Debug)]
pub struct Schema {
    /// The parsed file.
    pub file: SolutionFile,
    by_logical: HashMap<String, usize>,
    by_set: HashMap<String, usize>,
}

impl Schema {
    /// The schema embedded in this crate.
    pub fn get() -> &'static Schema {
        static SCHEMA: OnceLock<Schema> = OnceLock::new();
        SCHEMA.get_or_init(|| {
            let file: SolutionFile = serde_json::from_str(SOLUTION_JSON)
                .expect("proto/dataverse/tgb-solution.json is valid (checked by tests)");
            Schema::index(file)
        })
    }

    fn index(file: SolutionFile) -> Schema {
        let mut by_logical = HashMap::new();
        let mut by_set = HashMap::new();
        for (i, t) in file.tables.iter().enumerate() {
            by_logical.insert(t.logicalname.clone(), i);
            by_set.insert(t.entitysetname.clone(), i);
        }
        Schema {
            file,
            by_logical,
            by_set,
        }
    }

    /// A table by logical name.
    pub fn table(&self, logical: &str) -> Option<&Table> {
        self.by_logical.get(logical).map(|&i| &self.file.tables[i])
    }

    /// A table by entity set name (case-sensitive, as Dataverse).
    pub fn table_by_set(&self, set: &str) -> Option<&Table> {
        self.by_set.get(set).map(|&i| &self.file.tables[i])
    }

    /// A table by logical name or entity set name.
    pub fn table_by_any(&self, name: &str) -> Option<&Table> {
        self.table(name).or_else(|| self.table_by_set(name))
    }

    /// All tables.
    pub fn tables(&self) -> &[Table] {
        &self.file.tables
    }
}

/// Columns every table has, maintained by the platform.
pub const SYSTEM_COLUMNS: &[&str] = &[
    "createdon",
    "modifiedon",
    "versionnumber",
    "_createdby_value",
    "_modifiedby_value",
    "_ownerid_value",
];

impl Table {
    /// A non-lookup column.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.logicalname == name)
    }

    /// A lookup by logical name.
    pub fn lookup(&self, name: &str) -> Option<&Lookup> {
        self.lookups.iter().find(|l| l.logicalname == name)
    }

    /// The lookup and target for a navigation property (exact case).
    pub fn navigation(&self, nav: &str) -> Option<(&Lookup, &LookupTarget)> {
        self.lookups.iter().find_map(|l| {
            l.targets
                .iter()
                .find(|t| t.navigation == nav)
                .map(|t| (l, t))
        })
    }

    /// Whether `name` is a property that can be read (`$select`, `$filter`).
    pub fn is_readable(&self, name: &str) -> bool {
        name == self.primaryid
            || self.column(name).is_some()
            || SYSTEM_COLUMNS.contains(&name)
            || lookup_of_value_name(name).is_some_and(|l| self.lookup(l).is_some())
    }

    /// Names of every readable property, in output order.
    pub fn readable_names(&self) -> Vec<String> {
        let mut names = vec![self.primaryid.clone()];
        names.extend(self.columns.iter().map(|c| c.logicalname.clone()));
        names.extend(
            self.lookups
                .iter()
                .map(|l| format!("_{}_value", l.logicalname)),
        );
        names.extend(SYSTEM_COLUMNS.iter().map(|s| s.to_string()));
        names
    }

    /// The OData type name (`Microsoft.Dynamics.CRM.incident`).
    pub fn odata_type(&self) -> String {
        format!("Microsoft.Dynamics.CRM.{}", self.logicalname)
    }

    /// Whether rows have an owner.
    pub fn user_owned(&self) -> bool {
        self.ownership.as_deref() != Some("OrganizationOwned")
    }
}

/// `_customerid_value` → `customerid`.
pub fn lookup_of_value_name(name: &str) -> Option<&str> {
    name.strip_prefix('_')
        .and_then(|n| n.strip_suffix("_value"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solution_file_is_consistent() {
        let s = Schema::get();
        assert_eq!(s.file.solution.publisher.customizationprefix, "tgb");
        for t in s.tables() {
            let mut navs = std::collections::HashSet::new();
            for l in &t.lookups {
                for target in &l.targets {
                    assert!(
                        s.table(&target.table).is_some(),
                        "{}: unknown target {}",
                        t.logicalname,
                        target.table
                    );
                    assert!(
                        navs.insert(target.navigation.clone()),
                        "duplicate navigation {}",
                        target.navigation
                    );
                }
            }
            for k in &t.keys {
                for c in &k.columns {
                    assert!(
                        t.column(c).is_some() || t.lookup(c).is_some(),
                        "{}: key column {c}",
                        t.logicalname
                    );
                }
            }
            if !t.standard {
                for c in &t.columns {
                    let n = c.logicalname.as_str();
                    assert!(
                        n.starts_with("tgb_")
                            || ["subject", "description", "statecode", "statuscode"].contains(&n),
                        "{}: custom column {n} lacks the publisher prefix",
                        t.logicalname
                    );
                }
            }
        }
        for set in [
            "incidents",
            "annotations",
            "accounts",
            "contacts",
            "salesorders",
            "invoices",
            "tasks",
            "tgb_exceptions",
            "tgb_partnermessages",
            "tgb_partnerkpis",
        ] {
            assert!(s.table_by_set(set).is_some(), "{set}");
        }
        let incident = s.table("incident").unwrap();
        assert!(incident.navigation("customerid_account").is_some());
        assert!(incident.navigation("CustomerId_Account").is_none());
        assert_eq!(incident.keys[0].columns, vec!["tgb_tgcaseid"]);
        assert_eq!(
            s.table("account").unwrap().keys[0].columns,
            vec!["tgb_partnerkey"]
        );
    }
}
