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
    #[serde(default)]
    columns: Vec<Column>,
}

#[derive(Debug, Deserialize)]
struct Column {
    logicalname: String,
    #[serde(default)]
    options: Vec<OptionValue>,
}

#[derive(Debug, Deserialize)]
struct OptionValue {
    value: i64,
    label: String,
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

/// The first `n` characters of `s`: a text value cut to its column's maximum length.
pub fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// `/{set}({id})`: an entity reference for `@odata.bind`.
pub fn reference(logical: &str, key: &str) -> String {
    format!("/{}({key})", set(logical))
}

/// The label the solution gives `code` in the option set of `table.column`, if any.
pub fn option_label(table_name: &str, column: &str, code: i64) -> Option<&'static str> {
    table(table_name)?
        .columns
        .iter()
        .find(|c| c.logicalname == column)?
        .options
        .iter()
        .find(|o| o.value == code)
        .map(|o| o.label.as_str())
}

/// An option set (choice column) of the solution as a named enum: each variant's code and the
/// label Dataverse shows for it (a unit test checks both against the solution file).
macro_rules! option_set {
    ($(#[$meta:meta])* $name:ident ($table:literal . $column:literal) {
        $($(#[$vmeta:meta])* $variant:ident = $code:literal $label:literal),+ $(,)?
    }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// The table of the column.
            pub const TABLE: &'static str = $table;
            /// The column (logical name).
            pub const COLUMN: &'static str = $column;
            /// Every value, in code order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The integer Dataverse stores.
            pub const fn code(self) -> i64 {
                match self {
                    $($name::$variant => $code),+
                }
            }

            /// The value of `code`, if it is one of the set.
            pub fn from_code(code: i64) -> Option<Self> {
                match code {
                    $($code => Some($name::$variant),)+
                    _ => None,
                }
            }

            /// The label Dataverse shows.
            pub const fn label(self) -> &'static str {
                match self {
                    $($name::$variant => $label),+
                }
            }
        }

        impl From<$name> for serde_json::Value {
            fn from(v: $name) -> Self {
                serde_json::Value::from(v.code())
            }
        }
    };
}

option_set! {
    /// `incident.statecode`.
    IncidentState ("incident"."statecode") {
        /// Open (any active status).
        Active = 0 "Active",
        /// Resolved (`CloseIncident`).
        Resolved = 1 "Resolved",
        /// Canceled.
        Canceled = 2 "Canceled",
    }
}

option_set! {
    /// `incident.statuscode` (each belongs to one state).
    IncidentStatus ("incident"."statuscode") {
        /// Active: in progress.
        InProgress = 1 "In Progress",
        /// Active: on hold.
        OnHold = 2 "On Hold",
        /// Active: waiting for details (TG's "waiting on partner").
        WaitingForDetails = 3 "Waiting for Details",
        /// Active: researching.
        Researching = 4 "Researching",
        /// Resolved: problem solved (the status `CloseIncident` is sent with).
        ProblemSolved = 5 "Problem Solved",
        /// Canceled.
        Cancelled = 6 "Cancelled",
        /// Resolved: information provided.
        InformationProvided = 1000 "Information Provided",
    }
}

option_set! {
    /// `incident.prioritycode`.
    IncidentPriority ("incident"."prioritycode") {
        /// High (TG urgent and high).
        High = 1 "High",
        /// Normal.
        Normal = 2 "Normal",
        /// Low.
        Low = 3 "Low",
    }
}

option_set! {
    /// `incident.caseorigincode`.
    CaseOrigin ("incident"."caseorigincode") {
        /// Phone.
        Phone = 1 "Phone",
        /// Email.
        Email = 2 "Email",
        /// Web: the origin of every case tg-bridge opens.
        Web = 3 "Web",
    }
}

option_set! {
    /// `incident.casetypecode`.
    CaseType ("incident"."casetypecode") {
        /// Question.
        Question = 1 "Question",
        /// Problem.
        Problem = 2 "Problem",
        /// Request.
        Request = 3 "Request",
    }
}

option_set! {
    /// `incident.tgb_origin`: where the case started.
    TgbOrigin ("incident"."tgb_origin") {
        /// Opened for a TG case.
        TradingGridCase = 100_000_000 "Trading Grid case",
        /// Opened for a Dynamics exception.
        DynamicsException = 100_000_001 "Dynamics exception",
        /// Opened for a TG invoice dispute.
        InvoiceDispute = 100_000_002 "Invoice dispute",
    }
}

option_set! {
    /// `tgb_partnermessage.statecode` (an activity's state).
    ActivityState ("tgb_partnermessage"."statecode") {
        /// Open.
        Open = 0 "Open",
        /// Completed: read-only from then on.
        Completed = 1 "Completed",
        /// Canceled.
        Canceled = 2 "Canceled",
    }
}

option_set! {
    /// `tgb_partnermessage.statuscode`.
    ActivityStatus ("tgb_partnermessage"."statuscode") {
        /// Open.
        Open = 1 "Open",
        /// Completed.
        Completed = 2 "Completed",
        /// Canceled.
        Canceled = 3 "Canceled",
    }
}

option_set! {
    /// `tgb_partnermessage.tgb_channel`.
    MessageChannel ("tgb_partnermessage"."tgb_channel") {
        /// A comment on a TG case.
        CaseComment = 100_000_000 "Case comment",
        /// A TG thread message.
        ThreadMessage = 100_000_001 "Thread message",
        /// A document uploaded in TG.
        DocumentInteraction = 100_000_002 "Document interaction",
    }
}

option_set! {
    /// `tgb_partnermessage.tgb_direction`.
    MessageDirection ("tgb_partnermessage"."tgb_direction") {
        /// Written by the partner.
        FromPartner = 100_000_000 "From partner",
        /// Written to the partner.
        ToPartner = 100_000_001 "To partner",
    }
}

option_set! {
    /// `account.tgb_onboardingstatus`.
    OnboardingStatus ("account"."tgb_onboardingstatus") {
        /// Not started.
        NotStarted = 100_000_000 "Not started",
        /// In progress (TG's blocked too).
        InProgress = 100_000_001 "In progress",
        /// Pending review.
        PendingReview = 100_000_002 "Pending review",
        /// Approved: onboarding complete.
        Approved = 100_000_003 "Approved",
        /// Rejected.
        Rejected = 100_000_004 "Rejected",
    }
}

option_set! {
    /// `invoice.tgb_disputestatus`.
    DisputeStatus ("invoice"."tgb_disputestatus") {
        /// Open.
        Open = 100_000_000 "Open",
        /// Under review.
        UnderReview = 100_000_001 "Under review",
        /// Resolved.
        Resolved = 100_000_002 "Resolved",
        /// Rejected.
        Rejected = 100_000_003 "Rejected",
    }
}

option_set! {
    /// `invoice.statecode`.
    InvoiceState ("invoice"."statecode") {
        /// Active.
        Active = 0 "Active",
        /// Closed.
        Closed = 1 "Closed",
        /// Paid.
        Paid = 2 "Paid",
        /// Canceled.
        Canceled = 3 "Canceled",
    }
}

option_set! {
    /// `salesorder.tgb_milestone`: the latest milestone shared with the partner.
    OrderMilestone ("salesorder"."tgb_milestone") {
        /// Confirmed.
        Confirmed = 100_000_000 "Confirmed",
        /// Shipment released.
        ShipmentReleased = 100_000_001 "Shipment released",
        /// Backordered.
        Backordered = 100_000_002 "Backordered",
        /// Delivered.
        Delivered = 100_000_003 "Delivered",
    }
}

option_set! {
    /// `salesorder.statecode`.
    SalesOrderState ("salesorder"."statecode") {
        /// Active.
        Active = 0 "Active",
        /// Submitted (confirmed, when no milestone is set).
        Submitted = 1 "Submitted",
        /// Canceled.
        Canceled = 2 "Canceled",
        /// Fulfilled (delivered, when no milestone is set).
        Fulfilled = 3 "Fulfilled",
        /// Invoiced.
        Invoiced = 4 "Invoiced",
    }
}

option_set! {
    /// `tgb_exception.tgb_kind`.
    ExceptionKind ("tgb_exception"."tgb_kind") {
        /// Order discrepancy.
        OrderDiscrepancy = 100_000_000 "Order discrepancy",
        /// Pricing mismatch.
        PricingMismatch = 100_000_001 "Pricing mismatch",
        /// Missing shipment confirmation.
        MissingShipmentConfirmation = 100_000_002 "Missing shipment confirmation",
        /// Invoice exception.
        InvoiceException = 100_000_003 "Invoice exception",
    }
}

option_set! {
    /// `tgb_exception.tgb_exceptionstatus`.
    ExceptionStatus ("tgb_exception"."tgb_exceptionstatus") {
        /// Open.
        Open = 100_000_000 "Open",
        /// Waiting for the partner.
        WaitingForPartner = 100_000_001 "Waiting for partner",
        /// Corrective action agreed.
        CorrectiveActionAgreed = 100_000_002 "Corrective action agreed",
        /// Closed.
        Closed = 100_000_003 "Closed",
    }
}

option_set! {
    /// `tgb_exception.tgb_department`: the department that owns the exception.
    Department ("tgb_exception"."tgb_department") {
        /// Sales.
        Sales = 100_000_000 "Sales",
        /// Logistics.
        Logistics = 100_000_001 "Logistics",
        /// Finance.
        Finance = 100_000_002 "Finance",
        /// Customer service.
        CustomerService = 100_000_003 "Customer service",
        /// Procurement.
        Procurement = 100_000_004 "Procurement",
    }
}

/// Checks an option-set enum against the solution file: every variant's code exists in the
/// column's options with the variant's label. Used by the unit tests.
#[cfg(test)]
fn check_option_set(table_name: &str, column: &str, values: &[(i64, &str)]) {
    for (code, label) in values {
        assert_eq!(
            option_label(table_name, column, *code),
            Some(*label),
            "{table_name}.{column} = {code}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! check {
        ($($set:ident),+ $(,)?) => {
            $(
                let values: Vec<(i64, &str)> =
                    $set::ALL.iter().map(|v| (v.code(), v.label())).collect();
                check_option_set($set::TABLE, $set::COLUMN, &values);
                for v in $set::ALL {
                    assert_eq!($set::from_code(v.code()), Some(*v));
                }
            )+
        };
    }

    #[test]
    fn option_sets_match_the_solution_file() {
        check!(
            IncidentState,
            IncidentStatus,
            IncidentPriority,
            CaseOrigin,
            CaseType,
            TgbOrigin,
            ActivityState,
            ActivityStatus,
            MessageChannel,
            MessageDirection,
            OnboardingStatus,
            DisputeStatus,
            InvoiceState,
            OrderMilestone,
            SalesOrderState,
            ExceptionKind,
            ExceptionStatus,
            Department,
        );
        assert_eq!(IncidentStatus::from_code(7), None);
        assert_eq!(option_label("incident", "statecode", 9), None);
    }

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
