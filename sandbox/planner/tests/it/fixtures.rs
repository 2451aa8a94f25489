//! Every Planner request body the tests send is kept under `tests/fixtures/<schema>/`; each must
//! validate against the official OpenAPI schema, and each under `tests/fixtures/invalid/<schema>/`
//! must be rejected.

use std::path::Path;

use tgb_sandbox_planner::validate_request;

use crate::support::fixtures_dir;

fn fixtures_in(dir: &Path) -> Vec<(String, std::path::PathBuf)> {
    let mut out = Vec::new();
    for schema_dir in std::fs::read_dir(dir).unwrap() {
        let schema_dir = schema_dir.unwrap().path();
        let name = schema_dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string();
        if !schema_dir.is_dir() || name == "invalid" {
            continue;
        }
        for f in std::fs::read_dir(&schema_dir).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|e| e == "json") {
                out.push((name.clone(), f));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_planner_request_fixture_validates_against_the_openapi_schema() {
    let all = fixtures_in(&fixtures_dir());
    assert!(all.len() >= 15, "fixtures found: {}", all.len());
    let mut failures = Vec::new();
    for (schema, path) in &all {
        let body: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        if let Err(problems) = validate_request(schema, &body) {
            failures.push(format!("{}: {problems:?}", path.display()));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn every_invalid_fixture_is_rejected_by_the_validator() {
    let all = fixtures_in(&fixtures_dir().join("invalid"));
    assert!(all.len() >= 8, "fixtures found: {}", all.len());
    for (schema, path) in &all {
        let body: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert!(
            validate_request(schema, &body).is_err(),
            "{} should not validate",
            path.display()
        );
    }
}
