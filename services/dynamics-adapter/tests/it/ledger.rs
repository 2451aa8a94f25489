//! What the writer's outcomes put in the ledger (`tgb history`): a write names the incident it
//! wrote and what Dataverse answered; an older revision is stale; TG reporting what Dynamics
//! already has is an echo.

use tgb_bus::ledger::{self, Decision, LedgerEntry};
use tgb_proto as pb;
use tgb_testkit::eventually;

use crate::support::*;

/// Publishes `event` and waits for the writer's final entry (not a retry) of it.
async fn decided(env: &Env, event: impl Into<pb::Event>) -> LedgerEntry {
    let event = event.into();
    let correlation = event.meta().unwrap().correlation_id.clone();
    let id = env.publish(event).await;
    eventually("the writer's ledger entry", WAIT, || async {
        ledger::history(env.bus.jetstream(), &correlation)
            .await
            .ok()?
            .into_iter()
            .find(|e| {
                e.event_id == id
                    && e.consumer == "dynamics-adapter-in"
                    && e.decision != Decision::Retried
            })
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_ledger_names_the_incident_written_and_the_stale_and_echo_decisions() {
    let env = Env::start().await;
    let running = env.adapter(&[]).await;
    // One at a time: each decision depends on the one before it.
    let entries = [
        decided(&env, opened("L-1", "Short shipment")).await,
        decided(
            &env,
            updated("L-1", 2, "Short shipment, pallet 2", pb::CaseStatus::Open),
        )
        .await,
        // An older revision delivered late.
        decided(
            &env,
            updated("L-1", 1, "Short shipment", pb::CaseStatus::Open),
        )
        .await,
        // A newer revision saying what Dynamics already has.
        decided(
            &env,
            updated("L-1", 3, "Short shipment, pallet 2", pb::CaseStatus::Open),
        )
        .await,
    ];
    let incident = env.wait_rows("incident", 1).await[0]["incidentid"]
        .as_str()
        .unwrap()
        .to_owned();
    let decisions: Vec<Decision> = entries.iter().map(|e| e.decision).collect();
    assert_eq!(
        decisions,
        vec![
            Decision::Applied,
            Decision::Applied,
            Decision::Stale,
            Decision::Echo
        ]
    );
    for applied in &entries[..2] {
        assert_eq!(applied.target, format!("dataverse:incident:{incident}"));
        assert!(
            applied.response.starts_with('2'),
            "Dataverse's answer: {:?}",
            applied.response
        );
    }
    running.stop().await;
}
