//! D1's hot pure function: a TG case mapped to the incident columns tg-bridge keeps in step,
//! and that mapping encoded as the upsert body sent to Dataverse. `cargo bench -p
//! dynamics-adapter`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dynamics_adapter::incident::incident_view;
use dynamics_adapter::settings::DynamicsSettings;
use std::hint::black_box;
use tgb_proto as pb;

fn case() -> pb::TgCase {
    pb::TgCase {
        case_id: "C-10492".into(),
        revision: 3,
        title: "Short shipment on PO 4471".into(),
        description: "Received 40 of 48 cartons; ASN said 48. Pallet 2 of 3 missing.".into(),
        category: pb::CaseCategory::ShipmentDiscrepancy as i32,
        priority: pb::CasePriority::High as i32,
        status: pb::CaseStatus::WaitingOnPartner as i32,
        ..Default::default()
    }
}

fn mapping(c: &mut Criterion) {
    let settings = DynamicsSettings::default();
    let case = case();
    let mut g = c.benchmark_group("dynamics_mapping");
    g.throughput(Throughput::Elements(1));
    g.bench_function("tg_case_to_incident_columns", |b| {
        b.iter(|| incident_view(black_box(&case), black_box(&settings)))
    });
    g.bench_function("tg_case_to_upsert_body_bytes", |b| {
        b.iter(|| {
            let view = incident_view(black_box(&case), black_box(&settings));
            let mut body = serde_json::Map::new();
            for (k, v) in view {
                if k != "status" {
                    body.insert(k.to_owned(), v);
                }
            }
            body.insert("tgb_tgrevision".into(), serde_json::json!(case.revision));
            body.insert(
                "customerid_account@odata.bind".into(),
                serde_json::json!("/accounts(6d8f4c1e-1b7a-4c55-9a53-0f3f6c1d2e11)"),
            );
            serde_json::to_vec(&body).expect("a JSON object")
        })
    });
    g.finish();
}

criterion_group!(benches, mapping);
criterion_main!(benches);
