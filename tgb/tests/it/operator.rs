use tgb::ops;
use tgb_bus::ledger::Decision;
use tgb_proto as pb;
use tgb_sandbox::tg::model::{PartnerRef, RaiseCase};
use tgb_sandbox::{Fault, FaultRule};
use tgb_testkit::eventually;

use crate::support;

fn note_for(case_id: &str, text: &str) -> pb::DynCaseNoteAdded {
    let mut meta = pb::EventMeta::new(pb::Origin::Dyn);
    meta.correlation_id = case_id.to_owned();
    meta.entity = Some(pb::EntityRef::new("dataverse", "annotation", "a-1"));
    meta.entity_version = "1".into();
    pb::DynCaseNoteAdded {
        meta: Some(meta),
        incident_id: "00000000-0000-4000-8000-00000000a001".into(),
        tg_case_id: case_id.to_owned(),
        annotation_id: "a-1".into(),
        subject: String::new(),
        text: text.to_owned(),
        author: None,
        partner_visible: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dlq_replay_of_a_message_dead_lettered_by_a_sandbox_fault_delivers_it_once_the_fault_is_gone()
 {
    // Two deliveries, so the fault dead-letters the note within about a second.
    let (system, _dir) = support::system(&[("TGB_BUS__MAX_DELIVER", "2")]).await;
    let sandbox = &system.sandbox;
    let case = sandbox
        .tg()
        .raise_case(RaiseCase::new(
            PartnerRef {
                qualifier: "ZZ".into(),
                id: "ACME01".into(),
                name: "Acme Corp".into(),
            },
            "Pallets short",
        ))
        .unwrap();
    let case_id = case.data["case_id"].as_str().unwrap().to_owned();
    let fault = sandbox
        .faults()
        .add(
            FaultRule::new(
                "tg",
                Fault::ErrorRate {
                    rate: 1.0,
                    status: 503,
                },
            )
            .method("POST")
            .path_regex("^/v1/cases/[^/]+/comments$"),
        )
        .unwrap();

    let (_client, js) = ops::jetstream(&system.nats_url).await.unwrap();
    let bus = tgb_bus::Bus::connect(&system.nats_url, None, tgb_bus::BusConfig::default())
        .await
        .unwrap();
    let text = "We will ship the missing pallets on Monday.";
    bus.publisher()
        .publish(&note_for(&case_id, text))
        .await
        .unwrap();

    let letter = eventually("the note is dead-lettered", tgb_testkit::HANG_GUARD, || {
        let js = js.clone();
        async move { ops::dlq_list(&js, None).await.unwrap().into_iter().next() }
    })
    .await
    .unwrap();
    assert_eq!(letter.consumer, "tg-egress");
    assert_eq!(letter.original_subject, "tgb.v1.dyn.case.note_added");
    assert_eq!(letter.correlation_id, case_id);
    assert!(sandbox.tg().comments(&case_id).is_empty());

    // A dry run changes nothing.
    let dry = ops::dlq_replay(&js, letter.id, true).await.unwrap();
    assert!(dry.new_seq.is_none());
    assert_eq!(ops::dlq_list(&js, None).await.unwrap().len(), 1);

    assert!(sandbox.faults().remove(fault));
    let replayed = ops::dlq_replay(&js, letter.id, false).await.unwrap();
    assert!(replayed.new_seq.is_some());
    assert!(
        !replayed.duplicate,
        "a new Nats-Msg-Id is not deduplicated away"
    );
    assert!(
        ops::dlq_list(&js, None).await.unwrap().is_empty(),
        "removed after the PubAck"
    );

    let comment = eventually(
        "the note reaches the TG case",
        tgb_testkit::HANG_GUARD,
        || {
            let tg = sandbox.tg().clone();
            let case_id = case_id.clone();
            async move {
                tg.comments(&case_id)
                    .into_iter()
                    .find(|c| c.body.contains(text))
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(comment.source, "api");

    // The ledger tells the story: dead-lettered, then applied after the replay.
    let history = eventually(
        "the ledger has both decisions",
        tgb_testkit::HANG_GUARD,
        || {
            let js = js.clone();
            let spec = format!("tg:{case_id}");
            async move {
                let h = ops::history(&js, &spec).await.unwrap();
                let decisions: Vec<Decision> = h
                    .entries
                    .iter()
                    .filter(|e| e.consumer == "tg-egress")
                    .map(|e| e.decision)
                    .collect();
                (decisions.contains(&Decision::DeadLettered)
                    && decisions.contains(&Decision::Applied))
                .then_some(h)
            }
        },
    )
    .await
    .unwrap();
    let egress: Vec<_> = history
        .entries
        .iter()
        .filter(|e| e.consumer == "tg-egress")
        .collect();
    assert!(
        egress
            .iter()
            .all(|e| e.subject == "tgb.v1.dyn.case.note_added")
    );
    assert_eq!(egress.last().unwrap().decision, Decision::Applied);
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_lists_streams_consumers_and_an_empty_dlq() {
    let (system, _dir) = support::system(&[]).await;
    let (client, js) = ops::jetstream(&system.nats_url).await.unwrap();
    let status = ops::status(&client, &js, &[]).await.unwrap();
    for stream in ["TGB_EVENTS", "TGB_DLQ", "TGB_LEDGER", "KV_tgb_links"] {
        assert!(status.streams.iter().any(|s| s.name == stream), "{stream}");
    }
    assert!(status.consumers.iter().any(|c| c.name == "tg-egress"));
    assert_eq!(status.dlq_depth, 0);
    assert!(!status.governors_note.is_empty());
    // The feed poller's first start: from now, shown with its cursor once it has caught up.
    let feed = eventually(
        "the TG feed poller caught up",
        tgb_testkit::HANG_GUARD,
        || async {
            let s = ops::status(&client, &js, &[]).await.ok()?;
            s.tg_feed.as_ref().is_some_and(|f| f.caught_up).then_some(s)
        },
    )
    .await
    .unwrap();
    let f = feed.tg_feed.as_ref().unwrap();
    assert_eq!(f.start_from.as_deref(), Some("now"));
    assert!(f.not_before.is_some());
    let text = tgb::render::status(&feed);
    assert!(text.contains("TG feed: started from now"), "{text}");
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_since_a_time_redelivers_to_that_consumer_only_and_the_write_stays_single() {
    let (system, _dir) = support::system(&[]).await;
    let sandbox = &system.sandbox;
    let case_id = sandbox
        .tg()
        .raise_case(RaiseCase::new(
            PartnerRef {
                qualifier: "ZZ".into(),
                id: "ACME01".into(),
                name: "Acme Corp".into(),
            },
            "Labels missing",
        ))
        .unwrap()
        .data["case_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (client, js) = ops::jetstream(&system.nats_url).await.unwrap();
    let bus = tgb_bus::Bus::connect(&system.nats_url, None, tgb_bus::BusConfig::default())
        .await
        .unwrap();
    let since = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
    let text = "Labels are reprinted today.";
    let note = note_for(&case_id, text);
    let event_id = note.meta.as_ref().unwrap().event_id.clone();
    bus.publisher().publish(&note).await.unwrap();
    let handled = |consumer: &'static str, n: usize| {
        let js = js.clone();
        let spec = format!("tg:{case_id}");
        let event_id = event_id.clone();
        move || {
            let (js, spec, event_id) = (js.clone(), spec.clone(), event_id.clone());
            async move {
                let h = ops::history(&js, &spec).await.ok()?;
                let count = h
                    .entries
                    .iter()
                    .filter(|e| e.consumer == consumer && e.event_id == event_id)
                    .count();
                (count >= n).then_some(count)
            }
        }
    };
    eventually(
        "tg-egress handled the note",
        tgb_testkit::HANG_GUARD,
        handled("tg-egress", 1),
    )
    .await
    .unwrap();
    eventually(
        "sla-monitor handled the note",
        tgb_testkit::HANG_GUARD,
        handled("sla-monitor", 1),
    )
    .await
    .unwrap();

    let dry = ops::replay_consumer(&client, &js, "tg-egress", since, true)
        .await
        .unwrap();
    assert!(!dry.applied);
    assert_eq!(dry.by_subject.get("tgb.v1.dyn.case.note_added"), Some(&1));
    let done = ops::replay_consumer(&client, &js, "tg-egress", since, false)
        .await
        .unwrap();
    assert!(done.applied);
    assert_eq!(done.messages, 1);

    eventually(
        "tg-egress handled it again",
        tgb_testkit::HANG_GUARD,
        handled("tg-egress", 2),
    )
    .await
    .unwrap();
    // The other consumer of the subject saw nothing new, and TG has the comment once (the
    // replayed write carries the same Idempotency-Key).
    let h = ops::history(&js, &format!("tg:{case_id}")).await.unwrap();
    assert_eq!(
        h.entries
            .iter()
            .filter(|e| e.consumer == "sla-monitor" && e.event_id == event_id)
            .count(),
        1
    );
    let comments = sandbox
        .tg()
        .comments(&case_id)
        .into_iter()
        .filter(|c| c.body.contains(text))
        .count();
    assert_eq!(comments, 1);
    system.stop().await;
}
