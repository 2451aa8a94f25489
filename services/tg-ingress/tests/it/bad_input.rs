//! Bad input never panics and every rejection is a clear error: property tests over webhook
//! verification, body parsing and mapping, and protobuf decoding. Bounded by the case count
//! (`PROPTEST_CASES`, default below), so CI time stays fixed.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use proptest::prelude::*;
use sha2::Sha256;
use tg_ingress::verify::{WebhookKey, verify};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NOW: i64 = 1_700_000_000;

fn key() -> WebhookKey {
    WebhookKey::from_secret(SECRET, 0).unwrap()
}

fn sign(id: &str, ts: i64, body: &[u8]) -> String {
    let raw = STANDARD
        .decode(SECRET.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&raw).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(512),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A plausible webhook body with arbitrary values in its fields.
fn body_strategy() -> impl Strategy<Value = Vec<u8>> {
    let types = prop::sample::select(vec![
        "case.created",
        "case.updated",
        "case.comment_added",
        "document.uploaded",
        "onboarding.updated",
        "discussion.action_item",
        "dispute.opened",
        "partner.updated",
        "brand.new_type",
    ]);
    let json_leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
    ];
    let data = prop::collection::btree_map(
        prop::sample::select(vec![
            "case_id",
            "revision",
            "title",
            "description",
            "category",
            "priority",
            "status",
            "comment_id",
            "body",
            "document_id",
            "sha256",
            "size",
            "requirements",
            "dispute_id",
            "disputed_amount",
            "legal_name",
            "contacts",
            "opened_by",
            "author",
            "updated_at",
        ]),
        json_leaf,
        0..12,
    );
    (types, ".{0,20}", data).prop_map(|(t, id, data)| {
        serde_json::to_vec(&serde_json::json!({
            "id": id,
            "type": t,
            "occurred_at": "2026-11-21T09:14:03Z",
            "community_id": "retail-suppliers",
            "partner": {"qualifier": "ZZ", "id": "ACME01", "name": "Acme"},
            "data": data,
        }))
        .unwrap()
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn verification_of_arbitrary_headers_never_panics_and_never_accepts_a_forgery(
        id in ".{0,40}", ts in ".{0,15}", sig in ".{0,120}", body in prop::collection::vec(any::<u8>(), 0..256)
    ) {
        let result = verify(&[key()], &id, &ts, &sig, &body, NOW, 300);
        if let Ok(()) = result {
            // Only a genuine signature over exactly these bytes can pass.
            let ts: i64 = ts.trim().parse().unwrap();
            prop_assert!(sig.split_whitespace().any(|s| s == sign(&id, ts, &body)));
        } else {
            prop_assert!(!result.unwrap_err().to_string().is_empty());
        }
    }

    #[test]
    fn a_genuine_signature_verifies_and_any_changed_byte_does_not(
        id in "[a-zA-Z0-9_]{1,30}",
        skew in -300i64..=300,
        body in prop::collection::vec(any::<u8>(), 1..512),
        flip in any::<prop::sample::Index>(),
    ) {
        let ts = NOW + skew;
        let sig = sign(&id, ts, &body);
        prop_assert!(verify(&[key()], &id, &ts.to_string(), &sig, &body, NOW, 300).is_ok());
        let mut tampered = body.clone();
        let i = flip.index(tampered.len());
        tampered[i] ^= 0x01;
        prop_assert!(verify(&[key()], &id, &ts.to_string(), &sig, &tampered, NOW, 300).is_err());
    }

    #[test]
    fn parsing_arbitrary_bytes_never_panics_and_rejections_name_a_reason(
        bytes in prop::collection::vec(any::<u8>(), 0..1024)
    ) {
        if let Err(e) = tgb_clients::tg::parse_event(&bytes) {
            prop_assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn every_accepted_body_maps_to_a_valid_event_that_round_trips(body in body_strategy()) {
        match tgb_clients::tg::parse_event(&body) {
            Ok(parsed) => {
                let event = tg_ingress::mapping::to_event(&parsed, &body);
                prop_assert!(event.validate().is_ok(), "{:?}", event.validate());
                let decoded = tgb_proto::Event::decode(event.subject(), &event.encode_to_vec()).unwrap();
                prop_assert_eq!(decoded, event);
            }
            Err(e) => {
                prop_assert!(!e.message.is_empty());
                prop_assert!(e.message.starts_with(&e.field) || e.field.is_empty(), "{} / {}", e.field, e.message);
            }
        }
    }

    #[test]
    fn decoding_arbitrary_bytes_on_any_subject_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        subject in prop::sample::select(tgb_proto::SUBJECTS.iter().map(|(s, _)| *s).collect::<Vec<_>>()),
    ) {
        if let Err(e) = tgb_proto::Event::decode(subject, &bytes) {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}
