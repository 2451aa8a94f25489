//! Protobuf encode/decode of a typical event. `cargo bench -p tgb-proto`.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use tgb_proto::{BusEvent, EntityRef, Event, EventMeta, Origin, PartnerRef, TgCase, TgCaseOpened};

fn event() -> TgCaseOpened {
    let mut ev = TgCaseOpened {
        case: Some(TgCase {
            case_id: "C-10492".into(),
            revision: 3,
            title: "Short shipment on PO 4471".into(),
            description: "Received 40 of 48 cartons; ASN said 48.".repeat(4),
            order_ref: "PO-4471".into(),
            document_ids: vec!["D-1".into(), "D-2".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    *ev.meta_mut() = EventMeta {
        correlation_id: "C-10492".into(),
        partner: Some(PartnerRef {
            qualifier: "ZZ".into(),
            id: "ACME01".into(),
            name: "Acme Corp".into(),
        }),
        entity: Some(EntityRef::new("tg", "case", "C-10492")),
        entity_version: "3".into(),
        ..EventMeta::new(Origin::Tg)
    };
    ev
}

fn benches(c: &mut Criterion) {
    let ev = event();
    let bytes = prost::Message::encode_to_vec(&ev);
    c.bench_function("encode TgCaseOpened", |b| {
        b.iter(|| prost::Message::encode_to_vec(black_box(&ev)))
    });
    c.bench_function("decode + validate TgCaseOpened by subject", |b| {
        b.iter(|| Event::decode(TgCaseOpened::SUBJECT, black_box(&bytes)).unwrap())
    });
}

criterion_group!(codec, benches);
criterion_main!(codec);
