use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tgb_bus::{Delivery, Handler, HandlerError, Outcome};
use tgb_proto::{BusEvent, Event, SUBJECTS};
use tgb_testkit::eventually;

use crate::support::*;

struct Collect(Mutex<BTreeMap<String, Event>>);

impl Handler for Collect {
    async fn handle(&self, d: Delivery) -> Result<Outcome, HandlerError> {
        assert_eq!(d.subject, d.event.subject(), "delivered on its own subject");
        self.0.lock().unwrap().insert(d.subject.clone(), d.event);
        Ok(Outcome::applied("T1"))
    }
}

#[tokio::test]
async fn every_message_type_round_trips_through_its_subject() {
    let (_server, bus) = server_and_bus().await;
    let publisher = bus.publisher();
    let mut sent = BTreeMap::new();
    for (subject, _) in SUBJECTS {
        let mut event = Event::empty_for(subject).unwrap();
        event.meta_mut().correlation_id = format!("corr-{subject}");
        let ack = publisher.publish_event(&event).await.unwrap();
        assert!(!ack.duplicate);
        sent.insert(subject.to_string(), event);
    }
    let collect = Arc::new(Collect(Mutex::new(BTreeMap::new())));
    let (stop, join) = spawn_consumer(&bus, spec("all", &["tgb.v1.>"]), collect.clone());
    eventually("every subject consumed", WAIT, || async {
        (collect.0.lock().unwrap().len() == SUBJECTS.len()).then_some(())
    })
    .await
    .unwrap();
    stop.cancel();
    join.await.unwrap().unwrap();
    assert_eq!(*collect.0.lock().unwrap(), sent);
    assert_eq!(consumer_state(&bus, "all").await, (0, 0), "all acked");
}

#[tokio::test]
async fn a_duplicate_msg_id_within_the_window_is_stored_once() {
    let (_server, bus) = server_and_bus().await;
    let publisher = bus.publisher();
    let ev = comment("C-1", "hello");
    let first = publisher.publish(&ev).await.unwrap();
    let second = publisher.publish(&ev).await.unwrap();
    assert!(!first.duplicate);
    assert!(
        second.duplicate,
        "the second publish is reported as a duplicate"
    );
    assert_eq!(first.sequence, second.sequence);
    let mut stream = bus
        .jetstream()
        .get_stream(tgb_bus::names::EVENTS_STREAM)
        .await
        .unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
    // A different event id is a different message.
    publisher.publish(&comment("C-1", "hello")).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 2);
}

#[tokio::test]
async fn publish_without_event_id_is_refused() {
    let (_server, bus) = server_and_bus().await;
    let mut ev = comment("C-1", "x");
    ev.meta_mut().event_id.clear();
    let err = bus.publisher().publish(&ev).await.unwrap_err();
    assert!(err.to_string().contains("event_id"), "{err}");
    let _ = tgb_proto::TgCommentAdded::SUBJECT;
}
