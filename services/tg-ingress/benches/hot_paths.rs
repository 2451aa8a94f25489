//! The ingress hot path, per webhook: verify the signature, parse and validate the body, map it
//! to its protobuf event and encode it. `cargo bench -p tg-ingress`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::hint::black_box;
use tg_ingress::verify::{WebhookKey, verify};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn case_body() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": "evt_01JD3Q8W5K2R7",
        "type": "case.created",
        "occurred_at": "2026-11-21T09:14:03Z",
        "community_id": "retail-suppliers",
        "partner": {"qualifier": "ZZ", "id": "ACME01", "name": "Acme Corp"},
        "data": {
            "case_id": "C-10492", "revision": 1, "title": "Short shipment on PO 4471",
            "description": "Received 40 of 48 cartons; ASN said 48.",
            "category": "shipment_discrepancy", "priority": "high", "status": "open",
            "order_ref": "PO-4471", "document_ids": ["D-1", "D-2"],
            "opened_by": {"name": "Jo Partner", "email": "jo@acme.example"},
            "updated_at": "2026-11-21T09:14:03Z"
        }
    }))
    .unwrap()
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

fn benches(c: &mut Criterion) {
    let body = case_body();
    let now = 1_763_716_443;
    let sig = sign("msg_1", now, &body);
    let keys = vec![
        WebhookKey::from_secret("whsec_b2xkLXNlY3JldC1yb3RhdGVkLW91dA==", 0).unwrap(),
        WebhookKey::from_secret(SECRET, 1).unwrap(),
    ];
    let mut g = c.benchmark_group("webhook");
    g.throughput(Throughput::Elements(1));
    g.bench_function("verify (2 secrets, match on the second)", |b| {
        b.iter(|| {
            verify(
                black_box(&keys),
                "msg_1",
                &now.to_string(),
                &sig,
                black_box(&body),
                now,
                300,
            )
        })
    });
    g.bench_function("parse and validate case.created", |b| {
        b.iter(|| tgb_clients::tg::parse_event(black_box(&body)).unwrap())
    });
    let parsed = tgb_clients::tg::parse_event(&body).unwrap();
    g.bench_function("map to TgCaseOpened and encode", |b| {
        b.iter(|| tg_ingress::mapping::to_event(black_box(&parsed), &body).encode_to_vec())
    });
    g.finish();
}

criterion_group!(hot_paths, benches);
criterion_main!(hot_paths);
