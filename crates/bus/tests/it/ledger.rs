use std::sync::Arc;

use tgb_bus::ledger::{self, Decision};
use tgb_bus::{Delivery, Handler, HandlerError, Outcome};
use tgb_proto::{BusEvent, Event, TgCommentAdded};
use tgb_testkit::eventually;

use crate::support::*;

/// Echo for "mine", permanent failure for "bad", applied otherwise.
struct Deciding;

impl Handler for Deciding {
    async fn handle(&self, d: Delivery) -> Result<Outcome, HandlerError> {
        let Event::TgCommentAdded(c) = &d.event else {
            unreachable!()
        };
        match c.body.as_str() {
            "mine" => Ok(Outcome::echo(
                "D4",
                "written by tg-bridge's application user",
            )),
            "bad" => Err(HandlerError::permanent("no account for ZZ:NOPE")),
            _ => Ok(Outcome::applied("D4").target("dataverse:annotation:1234", "204")),
        }
    }
}

#[tokio::test]
async fn every_handling_leaves_a_ledger_entry_with_its_decision() {
    let (_server, bus) = server_and_bus().await;
    let p = bus.publisher();
    p.publish(&comment("C-42", "hello")).await.unwrap();
    p.publish(&comment("C-42", "mine")).await.unwrap();
    p.publish(&comment("C-42", "bad")).await.unwrap();
    p.publish(&comment("C-43", "other case")).await.unwrap();
    let (stop, join) = spawn_consumer(
        &bus,
        spec("ledgered", &[TgCommentAdded::SUBJECT]),
        Arc::new(Deciding),
    );
    let entries = eventually("three entries for C-42", WAIT, || async {
        let h = ledger::history(bus.jetstream(), "C-42").await.ok()?;
        (h.len() == 3).then_some(h)
    })
    .await
    .unwrap();
    stop.cancel();
    join.await.unwrap().unwrap();
    let decisions: Vec<_> = entries.iter().map(|e| e.decision).collect();
    assert_eq!(
        decisions,
        vec![Decision::Applied, Decision::Echo, Decision::DeadLettered]
    );
    assert_eq!(entries[0].target, "dataverse:annotation:1234");
    assert_eq!(entries[0].response, "204");
    assert!(entries[1].detail.contains("application user"));
    assert!(entries[2].detail.contains("ZZ:NOPE"));
    assert!(
        entries
            .iter()
            .all(|e| e.consumer == "ledgered" && e.correlation_id == "C-42")
    );
    assert!(
        entries
            .iter()
            .all(|e| e.trace_id.is_empty() || e.trace_id.len() == 32)
    );
    assert_eq!(
        ledger::history(bus.jetstream(), "C-43")
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        ledger::history(bus.jetstream(), "C-44")
            .await
            .unwrap()
            .is_empty()
    );
}
