//! Bad input never panics and every rejection is a clear error: property tests over the
//! Dataverse webhook parser (`RemoteExecutionContext`) and the webhook endpoint. Bounded by the
//! case count (`PROPTEST_CASES`, defaults below), so CI time stays fixed.

use dynamics_adapter::detect::from_context;
use proptest::prelude::*;
use proptest::strategy::ValueTree as _;
use serde_json::{Value, json};

use crate::support::*;

fn config(default_cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default_cases),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,16}".prop_map(Value::from),
        "/Date\\(-?[0-9]{0,22}\\)/".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An SDK attribute value of any of the shapes Dataverse sends, with arbitrary contents.
fn sdk_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any_json(),
        (".{0,40}", any_json()).prop_map(|(t, id)| json!({"__type": format!("EntityReference:{t}"), "Id": id})),
        any_json().prop_map(|v| json!({"__type": "OptionSetValue:http://schemas.microsoft.com/xrm/2011/Contracts", "Value": v})),
        any_json().prop_map(|v| json!({"__type": "Money:http://schemas.microsoft.com/xrm/2011/Contracts", "Value": v})),
        "-?[0-9]{1,25}".prop_map(|ms| Value::from(format!("/Date({ms})/"))),
    ]
}

fn entity() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec((".{0,24}", sdk_value()), 0..8),
        prop::option::of(".{0,24}"),
    )
        .prop_map(|(attrs, row_version)| {
            let attrs: Vec<Value> = attrs
                .into_iter()
                .map(|(k, v)| json!({"key": k, "value": v}))
                .collect();
            json!({"Attributes": attrs, "RowVersion": row_version})
        })
}

/// A context shaped like Dataverse's, with arbitrary names, ids and attributes.
fn context() -> impl Strategy<Value = Value> {
    let names = prop_oneof![
        Just("incident".to_owned()),
        Just("annotation".to_owned()),
        Just("account".to_owned()),
        Just("tgb_exception".to_owned()),
        ".{0,16}"
    ];
    let ids = prop_oneof![
        any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).to_string()),
        ".{0,40}",
    ];
    (
        prop::sample::select(vec!["Create", "Update", "Delete", "Close", "Assign", ""]),
        names,
        ids,
        entity(),
        entity(),
        any_json(),
    )
        .prop_map(|(message, table, id, target, post, user)| {
            json!({
                "MessageName": message,
                "PrimaryEntityName": table,
                "PrimaryEntityId": id,
                "InitiatingUserId": user,
                "InputParameters": [{"key": "Target", "value": target}],
                "PostEntityImages": [{"key": "AsynchronousStepPrimaryName", "value": post}],
            })
        })
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn parsing_any_json_never_panics_and_rejections_name_a_reason(body in any_json()) {
        if let Err(e) = from_context(&body) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn a_context_is_taken_exactly_when_its_names_are_present_and_its_id_is_a_guid(
        body in context(),
    ) {
        let id = body["PrimaryEntityId"].as_str().unwrap();
        let guid = uuid::Uuid::try_parse(id).is_ok();
        match from_context(&body) {
            Ok(change) => {
                prop_assert!(guid);
                prop_assert_eq!(change.id, id.to_ascii_lowercase());
                prop_assert_eq!(&change.table, body["PrimaryEntityName"].as_str().unwrap());
                prop_assert_eq!(&change.message, body["MessageName"].as_str().unwrap());
            }
            Err(e) => {
                prop_assert!(!guid, "a GUID context was refused: {e}");
                prop_assert!(e.to_string().contains("PrimaryEntityId"));
            }
        }
    }
}

/// The endpoint over real HTTP: every body gets an answer (204, or 400/503 with a JSON error
/// naming the reason), never a 5xx from a panic, and the adapter keeps serving.
#[tokio::test]
async fn the_webhook_endpoint_answers_every_arbitrary_body_with_a_clear_status() {
    let env = Env::start().await;
    let adapter = env.adapter(&[]).await;
    let http = reqwest::Client::new();
    let url = format!("{}/webhooks/dataverse", adapter.base);
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    let mut runner = proptest::test_runner::TestRunner::new(config(cases));
    let bodies = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        any_json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        context().prop_map(|v| serde_json::to_vec(&v).unwrap()),
    ];
    let mut answered = std::collections::BTreeMap::<u16, u32>::new();
    for _ in 0..cases {
        let body = bodies.new_tree(&mut runner).unwrap().current();
        let r = http
            .post(&url)
            .header("x-api-key", WEBHOOK_KEY)
            .body(body.clone())
            .send()
            .await
            .expect("the adapter answers");
        let status = r.status().as_u16();
        *answered.entry(status).or_default() += 1;
        match status {
            204 => {}
            400 | 503 => {
                let v: Value = r.json().await.expect("a JSON error body");
                let message = v["error"]["message"].as_str().unwrap_or_default();
                assert!(
                    !message.is_empty(),
                    "no reason for {status} on {:?}",
                    String::from_utf8_lossy(&body)
                );
            }
            other => panic!(
                "unexpected {other} for {:?}",
                String::from_utf8_lossy(&body)
            ),
        }
    }
    // Still serving after all of it.
    let ready = http
        .get(format!("{}/readyz", adapter.base))
        .send()
        .await
        .unwrap();
    adapter.stop().await;
    assert_eq!(ready.status(), 200);
    assert!(answered.get(&400).copied().unwrap_or(0) > 0, "{answered:?}");
}
