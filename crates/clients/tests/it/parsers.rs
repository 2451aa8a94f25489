//! Property tests of what other systems send: a `$batch` answer and a TG feed page, however
//! malformed, is parsed or refused with a reason, never a panic.

use proptest::prelude::*;
use serde_json::{Value, json};
use tgb_clients::dataverse::batch;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Lines a `$batch` answer is made of, plus noise, in any order and number.
fn batch_line() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("--batchresponse_1".to_owned()),
        Just("--batchresponse_1--".to_owned()),
        Just("--changesetresponse_2".to_owned()),
        Just("--changesetresponse_2--".to_owned()),
        Just("Content-Type: multipart/mixed; boundary=changesetresponse_2".to_owned()),
        Just("Content-Type: application/http".to_owned()),
        Just("Content-Transfer-Encoding: binary".to_owned()),
        Just("Content-ID: 1".to_owned()),
        Just("HTTP/1.1 204 No Content".to_owned()),
        Just("HTTP/1.1 400 Bad Request".to_owned()),
        Just("HTTP/1.1 abc".to_owned()),
        Just("OData-EntityId: https://org/api/data/v9.2/incidents(1)".to_owned()),
        Just(r#"{"error":{"code":"0x80040217","message":"x"}}"#.to_owned()),
        Just(String::new()),
        ".{0,40}",
    ]
}

fn raw_event() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        ".{0,16}".prop_map(Value::from),
    ];
    let data = prop::collection::btree_map(
        prop::sample::select(vec![
            "case_id",
            "revision",
            "title",
            "status",
            "priority",
            "document_id",
            "size",
            "sha256",
            "dispute_id",
            "comment_id",
            "body",
        ]),
        leaf.clone(),
        0..8,
    );
    (
        prop::option::of(".{0,20}"),
        prop::sample::select(vec![
            "case.created",
            "case.updated",
            "document.uploaded",
            "x.y",
            "",
        ]),
        prop::option::of(".{0,30}"),
        leaf,
        data,
    )
        .prop_map(|(id, kind, at, partner, data)| {
            json!({
                "id": id, "type": kind, "occurred_at": at, "community_id": "c",
                "partner": partner, "data": data,
            })
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_batch_answer_of_any_shape_never_panics(
        lines in prop::collection::vec(batch_line(), 0..30),
        crlf in any::<bool>(),
    ) {
        let body = lines.join(if crlf { "\r\n" } else { "\n" });
        let _ = batch::parse("multipart/mixed; boundary=batchresponse_1", &body);
        let _ = batch::parse("multipart/mixed", &body);
        let _ = batch::parse("", &body);
    }

    #[test]
    fn a_feed_element_of_any_shape_is_validated_or_refused_with_a_reason(event in raw_event()) {
        match serde_json::from_value::<tgb_clients::tg::RawEvent>(event) {
            Ok(raw) => match tgb_clients::tg::validate(raw) {
                Ok(e) => prop_assert!(!e.id.is_empty()),
                Err(e) => prop_assert!(!e.message.is_empty()),
            },
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}
