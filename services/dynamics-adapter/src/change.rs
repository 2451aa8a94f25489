//! A Dataverse change as the detection path sees it, from either source: a webhook's
//! `RemoteExecutionContext` ([`from_context`]) or a change-tracking row ([`from_row`]); and the
//! meta of the events it causes, whose ids derive from (table, row, version, event) so the two
//! paths detecting one change publish one event. Pure: no I/O.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tgb_proto as pb;

use crate::schema;

/// One detected change.
#[derive(Clone, Debug, Default)]
pub struct Change {
    /// `Create`, `Update`, `Delete`, `Close`; `Poll` from change tracking.
    pub message: String,
    /// Table logical name.
    pub table: String,
    /// Row id (lower case).
    pub id: String,
    /// Row version (versionnumber), when known.
    pub version: Option<u64>,
    /// The row's columns in Web API naming (`_x_value` for lookups).
    pub attrs: Map<String, Value>,
    /// Who made it.
    pub caller: Option<String>,
    /// Close: the incident resolution's columns.
    pub resolution: Option<Map<String, Value>>,
}

/// Why a webhook body is refused.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// Not JSON or not an object.
    #[error("the body is not a RemoteExecutionContext: {0}")]
    Shape(String),
}

fn sdk_value(v: &Value) -> Value {
    match v {
        Value::Object(o) => match o.get("__type").and_then(Value::as_str) {
            Some(t) if t.starts_with("EntityReference") => {
                o.get("Id").cloned().unwrap_or(Value::Null)
            }
            Some(t) if t.starts_with("OptionSetValue") || t.starts_with("Money") => {
                o.get("Value").cloned().unwrap_or(Value::Null)
            }
            _ => v.clone(),
        },
        Value::String(s) if s.starts_with("/Date(") => {
            let ms = s
                .trim_start_matches("/Date(")
                .trim_end_matches(")/")
                .parse::<i64>()
                .unwrap_or(0);
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .map(Value::String)
                .unwrap_or(Value::Null)
        }
        other => other.clone(),
    }
}

fn attributes(entity: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    for kv in entity["Attributes"].as_array().into_iter().flatten() {
        let Some(key) = kv["key"].as_str() else {
            continue;
        };
        let value = &kv["value"];
        let is_ref = value["__type"]
            .as_str()
            .is_some_and(|t| t.starts_with("EntityReference"));
        let name = if is_ref {
            format!("_{key}_value")
        } else {
            key.to_owned()
        };
        let v = sdk_value(value);
        out.insert(
            name,
            match v {
                Value::String(s) if is_ref => Value::String(s.to_ascii_lowercase()),
                v => v,
            },
        );
    }
    out
}

/// The few top-level fields of a `RemoteExecutionContext` that say who made which change, read
/// without building the body's JSON tree: enough to drop tg-bridge's own writes (its `Create`s
/// above all) before the whole body is parsed (in a profile of dynamics-adapter under `tgb bench`, parsing the
/// notification of its own incident into a tree and copying its attributes out took a tenth of
/// the process's CPU). Unknown fields are skipped, as in [`from_context`].
#[derive(Debug, serde::Deserialize)]
pub struct ContextHead<'a> {
    /// `Create`, `Update`, …
    #[serde(rename = "MessageName", borrow)]
    pub message: Option<std::borrow::Cow<'a, str>>,
    /// The table's logical name.
    #[serde(rename = "PrimaryEntityName", borrow)]
    pub table: Option<std::borrow::Cow<'a, str>>,
    /// The row's id.
    #[serde(rename = "PrimaryEntityId", borrow)]
    pub id: Option<std::borrow::Cow<'a, str>>,
    /// The user who made the change.
    #[serde(rename = "InitiatingUserId", borrow)]
    pub caller: Option<std::borrow::Cow<'a, str>>,
}

impl ContextHead<'_> {
    /// Reads the head of a body; `None` for anything that is not a well-formed object with
    /// these fields as strings (the whole parse then says what is wrong).
    pub fn of(body: &[u8]) -> Option<ContextHead<'_>> {
        // serde would also read a struct from an array of its fields; a context is an object.
        if body.trim_ascii_start().first() != Some(&b'{') {
            return None;
        }
        serde_json::from_slice(body).ok()
    }

    /// A change of a row with a GUID id in a followed table, made by `app_user`, that
    /// [`ours_by_author`] drops: what [`from_context`] and the own-echo filter would drop, told
    /// without the whole parse.
    pub fn is_own_echo(&self, app_user: &str) -> bool {
        let (Some(message), Some(table)) = (self.message.as_deref(), self.table.as_deref()) else {
            return false;
        };
        ours_by_author(table, message)
            && schema::table(table).is_some()
            && self
                .id
                .as_deref()
                .is_some_and(|id| uuid::Uuid::try_parse(id).is_ok_and(|u| !u.is_nil()))
            && self
                .caller
                .as_deref()
                .is_some_and(|c| c.eq_ignore_ascii_case(app_user))
    }
}

/// Whether a change made by tg-bridge's application user is its own echo from its author
/// alone: in every table but `incident`, and of an incident its `Create` and `Close`. An
/// incident's other changes are compared with the status tg-bridge last wrote (a person's
/// change may hide behind a later write of ours). The own-echo filter of [`crate::detect`]
/// and the webhook's head read ([`ContextHead::is_own_echo`]) both ask this.
pub fn ours_by_author(table: &str, message: &str) -> bool {
    table != "incident" || message == "Close" || message == "Create"
}

/// Parses a `RemoteExecutionContext`.
pub fn from_context(body: &Value) -> Result<Change, ContextError> {
    let o = body
        .as_object()
        .ok_or_else(|| ContextError::Shape("not a JSON object".into()))?;
    let text = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_owned);
    let message =
        text("MessageName").ok_or_else(|| ContextError::Shape("MessageName is missing".into()))?;
    let table = text("PrimaryEntityName")
        .ok_or_else(|| ContextError::Shape("PrimaryEntityName is missing".into()))?;
    let input = |name: &str| {
        o.get("InputParameters")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|p| p["key"] == name))
            .map(|p| p["value"].clone())
    };
    let resolution = input("IncidentResolution").map(|r| attributes(&r));
    let mut id = text("PrimaryEntityId").unwrap_or_default();
    let mut table = table;
    let blank = id.is_empty() || uuid::Uuid::try_parse(&id).is_ok_and(|u| u.is_nil());
    if blank && message == "Close" {
        // `Close` has no primary row (Dataverse sends an empty or all-zero id): the case is the
        // IncidentResolution's `incidentid`.
        id = resolution
            .as_ref()
            .and_then(|r| r.get("_incidentid_value"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| {
                ContextError::Shape(
                    "a Close without PrimaryEntityId has no IncidentResolution.incidentid".into(),
                )
            })?;
        table = "incident".to_owned();
    } else if id.is_empty() {
        return Err(ContextError::Shape("PrimaryEntityId is missing".into()));
    }
    // The id goes into request paths: only a GUID is taken.
    if uuid::Uuid::try_parse(&id).is_err() {
        return Err(ContextError::Shape(format!(
            "PrimaryEntityId {:?} is not a GUID",
            id.chars().take(64).collect::<String>()
        )));
    }
    let post = o
        .get("PostEntityImages")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .map(|p| p["value"].clone());
    let mut attrs = Map::new();
    let mut version = None;
    if let Some(target) = input("Target")
        && target.is_object()
    {
        attrs.extend(attributes(&target));
    }
    if let Some(post) = &post {
        attrs.extend(attributes(post));
        version = post["RowVersion"].as_str().and_then(|v| v.parse().ok());
    }
    if version.is_none() {
        version = attrs.get("versionnumber").and_then(Value::as_u64);
    }
    Ok(Change {
        message,
        table,
        id: id.to_ascii_lowercase(),
        version,
        attrs,
        caller: text("InitiatingUserId").map(|s| s.to_ascii_lowercase()),
        resolution,
    })
}

/// A row of a change-tracking answer as a change.
pub fn from_row(table: &str, row: &Value) -> Option<Change> {
    let t = schema::table(table)?;
    let o = row.as_object()?;
    Some(Change {
        message: "Poll".into(),
        table: table.to_owned(),
        id: o.get(&t.primaryid)?.as_str()?.to_ascii_lowercase(),
        version: o.get("versionnumber").and_then(Value::as_u64),
        attrs: o.clone(),
        caller: o
            .get("_modifiedby_value")
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase),
        resolution: None,
    })
}

/// A deterministic ULID for the event `what` of a change.
pub fn event_id(c: &Change, what: &str) -> String {
    let d = Sha256::digest(format!("{}|{}|{:?}|{what}", c.table, c.id, c.version).as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&d[..16]);
    // A fixed time part keeps it a valid ULID; the rest is the digest.
    bytes[0] = 0x01;
    ulid::Ulid::from_bytes(bytes).to_string()
}

/// The meta of the event `what` a change causes.
pub fn meta(
    c: &Change,
    what: &str,
    partner: Option<pb::PartnerRef>,
    correlation: &str,
) -> Option<pb::EventMeta> {
    Some(pb::EventMeta {
        event_id: event_id(c, what),
        correlation_id: correlation.to_owned(),
        partner,
        entity: Some(pb::EntityRef::new("dataverse", &c.table, &c.id)),
        entity_version: c.version.map(|v| v.to_string()).unwrap_or_default(),
        ..pb::EventMeta::new(pb::Origin::Dyn)
    })
}

/// An integer column.
pub fn int(attrs: &Map<String, Value>, k: &str) -> Option<i64> {
    attrs.get(k).and_then(Value::as_i64)
}

/// A text column; empty when absent.
pub fn text<'a>(attrs: &'a Map<String, Value>, k: &str) -> &'a str {
    attrs.get(k).and_then(Value::as_str).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn close(primary_id: Value) -> Value {
        json!({
            "MessageName": "Close",
            "PrimaryEntityName": "incident",
            "PrimaryEntityId": primary_id,
            "InputParameters": [{"key": "IncidentResolution", "value": {
                "LogicalName": "incidentresolution",
                "Attributes": [
                    {"key": "subject", "value": "fixed"},
                    {"key": "incidentid", "value": {
                        "__type": "EntityReference:http://schemas.microsoft.com/xrm/2011/Contracts",
                        "Id": "6F9619FF-8B86-D011-B42D-00CF4FC964FF", "LogicalName": "incident"}}
                ]}}],
        })
    }

    #[test]
    fn the_head_tells_our_own_echoes_as_the_whole_parse_would() {
        const APP: &str = "5a0c2a3e-6f4e-4d7b-9f45-0a1b2c3d4e5f";
        let body = |message: &str, table: &str, id: &str, caller: &str| {
            serde_json::to_vec(&json!({
                "MessageName": message,
                "PrimaryEntityName": table,
                "PrimaryEntityId": id,
                "InitiatingUserId": caller,
                "InputParameters": [{"key": "Target", "value": {"Attributes": []}}],
                "Depth": 1,
            }))
            .unwrap()
        };
        let row = "6F9619FF-8B86-D011-B42D-00CF4FC964FF";
        let own = |b: &[u8]| ContextHead::of(b).is_some_and(|h| h.is_own_echo(APP));
        assert!(own(&body("Create", "incident", row, APP)));
        assert!(own(&body("Close", "incident", row, APP)));
        assert!(
            own(&body("Update", "account", row, APP)),
            "outside incidents, our own user's change is ours"
        );
        assert!(
            own(&body("Create", "incident", row, &APP.to_ascii_uppercase())),
            "user ids compare without case, as from_context lowercases them"
        );
        assert!(
            !own(&body("Create", "incident", row, row)),
            "a person's create"
        );
        assert!(
            !own(&body("Update", "incident", row, APP)),
            "updates are compared, not dropped"
        );
        assert!(
            !own(&body("Create", "contact_x", row, APP)),
            "a table not followed: refused later"
        );
        assert!(
            !own(&body("Create", "incident", "not-a-guid", APP)),
            "a bad id: refused later"
        );
        // Not an object, a field of the wrong type, a duplicate field: the whole parse decides.
        assert!(!own(b"[1]"));
        let as_array = format!(r#"["Create", "incident", "{row}", "{APP}"]"#);
        assert!(!own(as_array.as_bytes()));
        assert!(!own(
            br#"{"MessageName": 1, "PrimaryEntityName": "incident"}"#
        ));
        let twice = format!(
            r#"{{"MessageName":"Create","MessageName":"Update","PrimaryEntityName":"incident","PrimaryEntityId":"{row}","InitiatingUserId":"{APP}"}}"#
        );
        assert!(!own(twice.as_bytes()));
        // The head agrees with the whole parse on the fields it reads.
        let whole = from_context(
            &serde_json::from_slice(&body("Create", "incident", row, &APP.to_ascii_uppercase()))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(whole.caller.as_deref(), Some(APP));
        assert_eq!(
            (whole.message.as_str(), whole.table.as_str()),
            ("Create", "incident")
        );
    }

    #[test]
    fn a_close_without_a_primary_id_names_the_case_of_its_resolution() {
        for blank in [
            json!("00000000-0000-0000-0000-000000000000"),
            json!(""),
            Value::Null,
        ] {
            let c = from_context(&close(blank)).unwrap();
            assert_eq!(c.id, "6f9619ff-8b86-d011-b42d-00cf4fc964ff");
            assert_eq!(c.table, "incident");
        }
        let mut no_case = close(json!(""));
        no_case["InputParameters"] = json!([]);
        assert!(matches!(
            from_context(&no_case),
            Err(ContextError::Shape(_))
        ));
    }
}
