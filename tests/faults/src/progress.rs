//! How far the burst has come, read from the targets or the bus: a fault lands "in the
//! middle" when one of these passes a threshold, never after a guessed sleep.

use std::time::Duration;

use anyhow::bail;
use tgb_bus::names;

use crate::invariant::ISSUES_PLAN;
use crate::system::{FaultSystem, INGRESS_SUBSCRIPTION};

/// A measure of progress.
#[derive(Clone, Copy, Debug)]
pub enum Progress {
    /// Events TG delivered to tg-ingress by webhook (2xx).
    WebhooksDelivered,
    /// Incidents in Dataverse.
    Incidents,
    /// Tasks in the issues plan.
    Tasks,
    /// Messages a durable consumer has acknowledged (its ack floor).
    Acked(&'static str),
    /// Comments tg-bridge wrote in TG.
    TgComments,
}

/// The current value of a measure.
pub async fn value(sys: &FaultSystem, p: Progress) -> u64 {
    match p {
        Progress::WebhooksDelivered => sys
            .sandbox
            .tg()
            .webhooks()
            .stats(INGRESS_SUBSCRIPTION)
            .map(|s| s.delivered)
            .unwrap_or(0),
        Progress::Incidents => sys.sandbox.dataverse().rows("incident").len() as u64,
        Progress::Tasks => sys
            .sandbox
            .planner()
            .list_tasks(ISSUES_PLAN)
            .map(|t| t.len() as u64)
            .unwrap_or(0),
        Progress::Acked(consumer) => {
            let Ok(stream) = sys.js.get_stream(names::EVENTS_STREAM).await else {
                return 0;
            };
            match stream.consumer_info(consumer).await {
                Ok(info) => info.ack_floor.consumer_sequence,
                Err(_) => 0,
            }
        }
        Progress::TgComments => sys
            .sandbox
            .tg()
            .writes()
            .iter()
            .filter(|w| !w.replayed && w.method == "POST" && w.path.ends_with("/comments"))
            .count() as u64,
    }
}

/// Waits until `p` reaches `at_least` (restarting processes that exit by themselves).
pub async fn wait_for(
    sys: &mut FaultSystem,
    p: Progress,
    at_least: u64,
    within: Duration,
) -> anyhow::Result<u64> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        sys.supervise()?;
        let v = value(sys, p).await;
        if v >= at_least {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            // Where the burst stopped: how far TG's webhooks got, and each service's last lines.
            let mut why = format!(
                "{p:?} reached {v}, not {at_least}, within {within:?} (TG webhooks delivered: {})",
                value(sys, Progress::WebhooksDelivered).await
            );
            for s in &sys.services {
                why.push_str(&format!(
                    "\n--- {} (last lines)\n{}",
                    s.label(),
                    s.log_tail(10)
                ));
            }
            bail!("{why}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
