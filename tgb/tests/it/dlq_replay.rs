//! `tgb dlq replay` does not trust a dead letter's headers alone: anything that may publish
//! under `tgb.dlq.>` writes them, so a forged dead letter must not become an event on a subject
//! its consumer never reads, or an event of another origin.

use std::process::Command;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::pull;
use tgb::ops;
use tgb_bus::names;
use tgb_proto as pb;
use tgb_testkit::NatsServer;

/// A dyn note (origin `dyn`), or the same message claiming origin `origin`.
fn note(origin: pb::Origin) -> Vec<u8> {
    let mut meta = pb::EventMeta::new(origin);
    meta.correlation_id = "C-1".into();
    meta.entity = Some(pb::EntityRef::new("dataverse", "annotation", "a-1"));
    let event: pb::Event = pb::DynCaseNoteAdded {
        meta: Some(meta),
        tg_case_id: "C-1".into(),
        text: "hello".into(),
        ..Default::default()
    }
    .into();
    event.encode_to_vec()
}

fn opened() -> Vec<u8> {
    let mut meta = pb::EventMeta::new(pb::Origin::Tg);
    meta.correlation_id = "C-1".into();
    let event: pb::Event = pb::TgCaseOpened {
        meta: Some(meta),
        case: None,
    }
    .into();
    event.encode_to_vec()
}

/// Publishes a dead letter on `dlq_subject` with the given headers; its DLQ id.
async fn dead_letter(
    js: &async_nats::jetstream::Context,
    dlq_subject: &str,
    consumer: &str,
    original: &str,
    payload: Vec<u8>,
) -> u64 {
    let mut headers = HeaderMap::new();
    headers.insert(names::HDR_CONSUMER, consumer);
    headers.insert(names::HDR_ORIGINAL_SUBJECT, original);
    headers.insert(names::HDR_ERROR_KIND, "permanent");
    js.publish_with_headers(dlq_subject.to_owned(), headers, payload.into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence
}

#[tokio::test]
async fn forged_dead_letters_are_refused_and_a_genuine_one_is_replayed() {
    let nats = NatsServer::start().await.unwrap();
    let bus = tgb_bus::Bus::connect(&nats.url(), None, tgb_bus::BusConfig::default())
        .await
        .unwrap();
    let js = bus.jetstream().clone();
    js.get_stream(names::EVENTS_STREAM)
        .await
        .unwrap()
        .create_consumer(pull::Config {
            durable_name: Some("tg-egress".into()),
            filter_subjects: vec!["tgb.v1.dyn.case.note_added".into()],
            ..Default::default()
        })
        .await
        .unwrap();

    let note_subject = "tgb.v1.dyn.case.note_added";
    let forged = [
        // A subject the named consumer does not consume.
        (
            dead_letter(
                &js,
                "tgb.dlq.tg-egress.v1.tg.case.opened",
                "tg-egress",
                "tgb.v1.tg.case.opened",
                opened(),
            )
            .await,
            "does not consume",
        ),
        // Headers that disagree with the DLQ subject it sits on.
        (
            dead_letter(
                &js,
                "tgb.dlq.tg-egress.v1.dyn.case.note_added",
                "tg-egress",
                "tgb.v1.tg.case.opened",
                opened(),
            )
            .await,
            "does not match its headers",
        ),
        // A consumer that does not exist.
        (
            dead_letter(
                &js,
                "tgb.dlq.nobody.v1.dyn.case.note_added",
                "nobody",
                note_subject,
                note(pb::Origin::Dyn),
            )
            .await,
            "does not have",
        ),
        // The right subject, an event of another origin.
        (
            dead_letter(
                &js,
                "tgb.dlq.tg-egress.v1.dyn.case.note_added",
                "tg-egress",
                note_subject,
                note(pb::Origin::Tg),
            )
            .await,
            "not a valid event",
        ),
    ];
    let genuine = dead_letter(
        &js,
        "tgb.dlq.tg-egress.v1.dyn.case.note_added",
        "tg-egress",
        note_subject,
        note(pb::Origin::Dyn),
    )
    .await;

    for (id, why) in forged {
        for dry_run in [true, false] {
            let e = ops::dlq_replay(&js, id, dry_run).await.unwrap_err();
            assert!(format!("{e:#}").contains(why), "{id}: {e:#}");
        }
    }
    let mut events = js.get_stream(names::EVENTS_STREAM).await.unwrap();
    assert_eq!(
        events.info().await.unwrap().state.messages,
        0,
        "nothing republished"
    );
    assert_eq!(
        ops::dlq_list(&js, None).await.unwrap().len(),
        5,
        "refused ones stay"
    );

    let replayed = ops::dlq_replay(&js, genuine, false).await.unwrap();
    assert_eq!(replayed.subject, note_subject);
    assert_eq!(events.info().await.unwrap().state.messages, 1);

    // --all without --yes changes nothing.
    let out = Command::new(env!("CARGO_BIN_EXE_tgb"))
        .args(["--nats-url", &nats.url(), "dlq", "replay", "--all"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--yes"), "{stderr}");
    // With --yes: the four forged ones are refused, reported, and kept.
    let out = Command::new(env!("CARGO_BIN_EXE_tgb"))
        .args([
            "--nats-url",
            &nats.url(),
            "dlq",
            "replay",
            "--all",
            "--yes",
            "--limit",
            "10",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.matches("refused:").count(), 4, "{stderr}");
    assert_eq!(ops::dlq_list(&js, None).await.unwrap().len(), 4);
    assert_eq!(events.info().await.unwrap().state.messages, 1);
}
