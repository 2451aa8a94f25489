//! Request-body validation against the official Planner OpenAPI description.
//!
//! The OpenAPI 3.0 file is compiled into the crate and converted once into JSON Schema
//! (draft 2020-12): `$ref`s to components become `$defs`, `nullable` becomes a `null` type,
//! `allOf` chains (entity + type) are flattened into one object, and types are closed.
//!
//! How the file marks open and closed types: Microsoft's generator writes
//! `additionalProperties: {type: object}` on *every* type, so that marker says nothing. What does
//! distinguish them is that the open types of the CSDL (`plannerAssignments`,
//! `plannerAppliedCategories`, `plannerChecklistItems`, `plannerExternalReferences`, ...) declare
//! no `properties` at all, while every closed entity or complex type declares its properties.
//! So a type with declared properties is closed here (an unknown property is a 400, as Graph
//! answers "The property 'x' does not exist on type ..."), only annotations (`@odata.type`, ...)
//! being allowed besides. The open types get their value shapes from Graph's reference pages
//! (`plannerAssignment`, `plannerChecklistItem`, `plannerExternalReference`, which the OpenAPI
//! slice does not contain).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use serde_json::{Map, Value, json};

/// The official OpenAPI description of Graph Planner v1.0 (read, never edited).
pub const OPENAPI_YAML: &str = include_str!("../../../proto/graph-planner-v1.0.openapi.yml");

/// Schemas that request bodies are validated against, by short name.
pub const REQUEST_SCHEMAS: &[&str] = &[
    "plannerTask",
    "plannerTaskDetails",
    "plannerPlan",
    "plannerPlanDetails",
    "plannerBucket",
    "plannerAssignment",
    "plannerChecklistItem",
    "plannerExternalReference",
];

struct Registry {
    /// `$defs` of the converted document, by full component name.
    defs: Map<String, Value>,
    /// Compiled validators by short name.
    validators: BTreeMap<String, jsonschema::Validator>,
    /// Properties Graph documents as read-only or navigation, per short name.
    not_writable: BTreeMap<String, BTreeSet<String>>,
    /// Operation (method, path template) → the short name of its request body schema.
    operations: BTreeMap<(String, String), String>,
}

static REGISTRY: LazyLock<Result<Registry, String>> = LazyLock::new(build_registry);

fn registry() -> &'static Registry {
    match &*REGISTRY {
        Ok(r) => r,
        // The file is compiled in: a failure here is a bug caught by every test.
        Err(e) => panic!("the Planner OpenAPI file cannot be converted: {e}"),
    }
}

/// Forces the conversion (call at start so a broken spec fails early, not on the first request).
pub fn init() -> Result<(), String> {
    REGISTRY.as_ref().map(|_| ()).map_err(Clone::clone)
}

fn short(name: &str) -> &str {
    name.strip_prefix("microsoft.graph.").unwrap_or(name)
}

/// Validates a request body against a Planner schema of the official OpenAPI file
/// (`plannerTask`, `plannerTaskDetails`, `plannerPlan`, `plannerPlanDetails`, `plannerBucket`,
/// or the open types' values `plannerAssignment`, `plannerChecklistItem`,
/// `plannerExternalReference`; the `microsoft.graph.` prefix is optional).
///
/// Returns every problem found, each naming the property (as a JSON pointer) and what is wrong.
pub fn validate_request(schema_name: &str, body: &Value) -> Result<(), Vec<String>> {
    let reg = registry();
    let name = short(schema_name);
    let Some(validator) = reg.validators.get(name) else {
        return Err(vec![format!("unknown schema '{schema_name}'")]);
    };
    let mut problems: Vec<String> = Vec::new();
    if let (Some(obj), Some(ro)) = (body.as_object(), reg.not_writable.get(name)) {
        for key in obj.keys() {
            if ro.contains(key) {
                problems.push(format!(
                    "/{key}: the property '{key}' is read-only or a navigation property of \
                     'microsoft.graph.{name}' and cannot be set in a request body"
                ));
            }
        }
    }
    for err in validator.iter_errors(body) {
        let path = err.instance_path().to_string();
        let path = if path.is_empty() {
            "/".to_string()
        } else {
            path
        };
        problems.push(format!("{path}: {err}"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// The request-body schema the OpenAPI file declares for an operation, e.g.
/// `("PATCH", "/planner/tasks/{plannerTask-id}/details")` → `plannerTaskDetails`.
pub fn operation_schema(method: &str, path_template: &str) -> Option<&'static str> {
    registry()
        .operations
        .get(&(method.to_ascii_uppercase(), path_template.to_string()))
        .map(String::as_str)
}

/// The converted JSON Schema of one component (with every `$defs` it needs), for inspection.
pub fn json_schema(schema_name: &str) -> Option<Value> {
    let reg = registry();
    let full = format!("microsoft.graph.{}", short(schema_name));
    reg.defs.get(&full).map(|_| {
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$defs": Value::Object(reg.defs.clone()),
            "$ref": format!("#/$defs/{full}"),
        })
    })
}

fn build_registry() -> Result<Registry, String> {
    let doc: Value = serde_yaml_ng::from_str(OPENAPI_YAML).map_err(|e| e.to_string())?;
    let components = doc
        .pointer("/components/schemas")
        .and_then(Value::as_object)
        .ok_or("no components.schemas")?;

    let mut defs = Map::new();
    let mut not_writable: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for name in components.keys() {
        let flat = flatten(components, name, 0)?;
        if let Some(props) = flat.get("properties").and_then(Value::as_object) {
            let ro: BTreeSet<String> = props
                .iter()
                .filter(|(_, p)| {
                    p.get("x-ms-navigationProperty") == Some(&Value::Bool(true))
                        || p.get("description")
                            .and_then(Value::as_str)
                            .is_some_and(|d| d.starts_with("Read-only"))
                })
                .map(|(k, _)| k.clone())
                .collect();
            not_writable.insert(short(name).to_string(), ro);
        }
        defs.insert(name.clone(), convert(&flat));
    }
    // Navigation properties that point at another entity (`details`, the task board formats)
    // carry no marker in the file; Graph does not deep-insert them.
    for (ty, props) in [
        (
            "plannerTask",
            &[
                "details",
                "assignedToTaskBoardFormat",
                "bucketTaskBoardFormat",
                "progressTaskBoardFormat",
                "createdBy",
                "completedBy",
            ][..],
        ),
        ("plannerPlan", &["details", "createdBy"][..]),
    ] {
        let set = not_writable.entry(ty.to_string()).or_default();
        set.extend(props.iter().map(|p| p.to_string()));
    }

    // The open types' values, from Graph's reference pages.
    for (open, value_def) in [
        (
            "microsoft.graph.plannerAssignments",
            "microsoft.graph.plannerAssignment",
        ),
        (
            "microsoft.graph.plannerChecklistItems",
            "microsoft.graph.plannerChecklistItem",
        ),
        (
            "microsoft.graph.plannerExternalReferences",
            "microsoft.graph.plannerExternalReference",
        ),
    ] {
        let mut open_schema = json!({
            "type": ["object", "null"],
            // A value is the item, or null to remove it (the value schemas admit null).
            "additionalProperties": {"$ref": format!("#/$defs/{value_def}")},
        });
        if open.ends_with("ExternalReferences") {
            // Keys are encoded URLs: `.`, `:`, `@` and `#` must be escaped.
            open_schema["propertyNames"] = json!({"pattern": "^[^.:@#]+$"});
        }
        defs.insert(open.to_string(), open_schema);
    }
    let odata_type = |names: &[&str]| {
        let mut all = Vec::new();
        for n in names {
            all.push(Value::String(format!("microsoft.graph.{n}")));
            all.push(Value::String(format!("#microsoft.graph.{n}")));
        }
        json!({"enum": all})
    };
    let identity_ref = json!({"$ref": "#/$defs/microsoft.graph.identitySet"});
    let date_time = defs
        .get("microsoft.graph.plannerTask")
        .and_then(|t| t.pointer("/properties/dueDateTime"))
        .cloned()
        .ok_or("plannerTask.dueDateTime missing")?;
    let nullable_string = json!({"type": ["string", "null"]});
    defs.insert(
        "microsoft.graph.plannerAssignment".into(),
        json!({
            "type": ["object", "null"],
            "required": ["@odata.type"],
            "properties": {
                "@odata.type": odata_type(&["plannerAssignment"]),
                "orderHint": nullable_string,
                "assignedBy": identity_ref,
                "assignedDateTime": date_time,
            },
            "additionalProperties": false,
        }),
    );
    defs.insert(
        "microsoft.graph.plannerChecklistItem".into(),
        json!({
            "type": ["object", "null"],
            "required": ["@odata.type"],
            "properties": {
                "@odata.type": odata_type(&["plannerChecklistItem"]),
                "isChecked": {"type": ["boolean", "null"]},
                "orderHint": nullable_string,
                "title": nullable_string,
                "lastModifiedBy": identity_ref,
                "lastModifiedDateTime": date_time,
            },
            "additionalProperties": false,
        }),
    );
    defs.insert(
        "microsoft.graph.plannerExternalReference".into(),
        json!({
            "type": ["object", "null"],
            "required": ["@odata.type"],
            "properties": {
                "@odata.type": odata_type(&["plannerExternalReference"]),
                "alias": nullable_string,
                "previewPriority": nullable_string,
                "type": nullable_string,
                "lastModifiedBy": identity_ref,
                "lastModifiedDateTime": date_time,
            },
            "additionalProperties": false,
        }),
    );
    defs.insert(
        "microsoft.graph.plannerAppliedCategories".into(),
        json!({
            "type": ["object", "null"],
            "propertyNames": {"pattern": "^category([1-9]|1[0-9]|2[0-5])$"},
            "additionalProperties": {"type": "boolean"},
        }),
    );
    defs.insert(
        "microsoft.graph.plannerOrderHintsByAssignee".into(),
        json!({"type": ["object", "null"], "additionalProperties": {"type": ["string", "null"]}}),
    );
    defs.insert(
        "microsoft.graph.plannerUserIds".into(),
        json!({"type": ["object", "null"], "additionalProperties": {"type": "boolean"}}),
    );

    let mut validators = BTreeMap::new();
    for name in REQUEST_SCHEMAS {
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$defs": Value::Object(defs.clone()),
            "$ref": format!("#/$defs/microsoft.graph.{name}"),
        });
        let v = jsonschema::draft202012::new(&root).map_err(|e| format!("{name}: {e}"))?;
        validators.insert(name.to_string(), v);
    }

    let mut operations = BTreeMap::new();
    if let Some(paths) = doc.get("paths").and_then(Value::as_object) {
        for (path, item) in paths {
            let Some(item) = item.as_object() else {
                continue;
            };
            for (method, op) in item {
                if let Some(r) = op
                    .pointer("/requestBody/content/application~1json/schema/$ref")
                    .and_then(Value::as_str)
                {
                    let name = r.rsplit('/').next().unwrap_or(r);
                    operations.insert(
                        (method.to_ascii_uppercase(), path.clone()),
                        short(name).to_string(),
                    );
                }
            }
        }
    }

    Ok(Registry {
        defs,
        validators,
        not_writable,
        operations,
    })
}

/// Resolves a component by name and merges its `allOf` parts into one object schema.
fn flatten(components: &Map<String, Value>, name: &str, depth: usize) -> Result<Value, String> {
    if depth > 16 {
        return Err(format!("allOf chain too deep at {name}"));
    }
    let schema = components
        .get(name)
        .ok_or_else(|| format!("missing component {name}"))?;
    let Some(parts) = schema.get("allOf").and_then(Value::as_array) else {
        return Ok(schema.clone());
    };
    let mut properties = Map::new();
    let mut required: BTreeSet<String> = BTreeSet::new();
    let mut title = None;
    let mut collect = |part: &Value| {
        if let Some(p) = part.get("properties").and_then(Value::as_object) {
            properties.extend(p.clone());
        }
        if let Some(r) = part.get("required").and_then(Value::as_array) {
            required.extend(r.iter().filter_map(Value::as_str).map(String::from));
        }
        if let Some(t) = part.get("title") {
            title = Some(t.clone());
        }
    };
    for part in parts {
        if let Some(r) = part.get("$ref").and_then(Value::as_str) {
            let target = r.rsplit('/').next().unwrap_or(r);
            collect(&flatten(components, target, depth + 1)?);
        } else {
            collect(part);
        }
    }
    collect(schema);
    let mut out = Map::new();
    out.insert("type".into(), "object".into());
    if let Some(t) = title {
        out.insert("title".into(), t);
    }
    out.insert("properties".into(), Value::Object(properties));
    if !required.is_empty() {
        out.insert(
            "required".into(),
            Value::Array(required.into_iter().map(Value::String).collect()),
        );
    }
    Ok(Value::Object(out))
}

/// Converts one OpenAPI 3.0 schema object into JSON Schema 2020-12.
fn convert(schema: &Value) -> Value {
    let Some(obj) = schema.as_object() else {
        return schema.clone();
    };
    let mut out = Map::new();
    let nullable = obj.get("nullable") == Some(&Value::Bool(true));
    for (k, v) in obj {
        match k.as_str() {
            "nullable" | "example" | "externalDocs" | "xml" | "discriminator" => {}
            k if k.starts_with("x-") => {}
            "$ref" => {
                let target = v.as_str().unwrap_or_default();
                let name = target.rsplit('/').next().unwrap_or(target);
                out.insert("$ref".into(), Value::String(format!("#/$defs/{name}")));
            }
            "properties" => {
                let props = v
                    .as_object()
                    .map(|p| {
                        p.iter()
                            .map(|(name, s)| (name.clone(), convert(s)))
                            .collect::<Map<_, _>>()
                    })
                    .unwrap_or_default();
                out.insert("properties".into(), Value::Object(props));
            }
            "items" => {
                out.insert("items".into(), convert(v));
            }
            "allOf" | "anyOf" | "oneOf" => {
                let parts = v
                    .as_array()
                    .map(|a| a.iter().map(convert).collect())
                    .unwrap_or_default();
                out.insert(k.to_string(), Value::Array(parts));
            }
            "additionalProperties" => {
                // Handled below: the generator's `{type: object}` marker carries no meaning.
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    let has_properties = obj.get("properties").is_some_and(|p| p.is_object());
    if has_properties {
        // A closed type: only declared properties and instance annotations.
        out.insert("patternProperties".into(), json!({"^@": {}}));
        out.insert("additionalProperties".into(), Value::Bool(false));
    }
    if nullable {
        if let Some(t) = out.get("type").cloned() {
            match t {
                Value::String(s) => {
                    out.insert("type".into(), json!([s, "null"]));
                }
                Value::Array(mut a) => {
                    a.push("null".into());
                    out.insert("type".into(), Value::Array(a));
                }
                _ => {}
            }
        }
        if let Some(Value::Array(e)) = out.get_mut("enum") {
            e.push(Value::Null);
        }
        if out.contains_key("$ref") {
            let r = out.remove("$ref").unwrap_or_default();
            out.insert("anyOf".into(), json!([{"type": "null"}, {"$ref": r}]));
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_converts_and_tasks_validate() {
        init().unwrap();
        assert!(validate_request("plannerTask", &json!({"planId": "p", "title": "t"})).is_ok());
        let err = validate_request("plannerTask", &json!({"planId": "p", "bogus": 1})).unwrap_err();
        assert!(err.iter().any(|e| e.contains("bogus")), "{err:?}");
        assert_eq!(
            operation_schema("PATCH", "/planner/tasks/{plannerTask-id}/details"),
            Some("plannerTaskDetails")
        );
    }

    /// The schema each served write validates against is the one the OpenAPI file declares.
    #[test]
    fn served_writes_use_the_request_schemas_the_spec_declares() {
        for (method, path, used) in [
            ("POST", "/planner/tasks", "plannerTask"),
            ("PATCH", "/planner/tasks/{plannerTask-id}", "plannerTask"),
            (
                "PATCH",
                "/planner/tasks/{plannerTask-id}/details",
                "plannerTaskDetails",
            ),
            ("POST", "/planner/plans", "plannerPlan"),
            ("PATCH", "/planner/plans/{plannerPlan-id}", "plannerPlan"),
            (
                "PATCH",
                "/planner/plans/{plannerPlan-id}/details",
                "plannerPlanDetails",
            ),
            ("POST", "/planner/buckets", "plannerBucket"),
            (
                "PATCH",
                "/planner/buckets/{plannerBucket-id}",
                "plannerBucket",
            ),
        ] {
            assert_eq!(
                operation_schema(method, path),
                Some(used),
                "{method} {path}"
            );
        }
    }
}
