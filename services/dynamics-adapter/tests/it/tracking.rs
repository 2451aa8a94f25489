//! The change-tracking poll: re-baselining after an expired delta token, and changes hidden
//! behind a later write of tg-bridge's own user.

use serde_json::json;
use tgb_proto as pb;
use tgb_sandbox::SandboxConfig;
use tgb_testkit::eventually;

use crate::support::*;

const REBASELINES: &str = "tgb_dynamics_rebaselines_total";
const PUBLISHED: &str = "tgb_dynamics_changes_published_total";

async fn wait_metric(base: &str, name: &str, labels: &str, at_least: f64) -> f64 {
    eventually(
        &format!("{name}{{{labels}}} >= {at_least}"),
        WAIT,
        || async {
            let v = metric(base, name, labels).await;
            (v >= at_least).then_some(v)
        },
    )
    .await
    .unwrap()
}

fn statuses(events: &[pb::Event]) -> Vec<i32> {
    events
        .iter()
        .filter_map(|e| match e {
            pb::Event::DynCaseStatusChanged(s) => Some(s.statuscode),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn an_expired_delta_token_re_baselines_and_no_change_is_lost_or_emitted_twice() {
    let mut config = SandboxConfig::default();
    // Each stored delta link has expired by the next round (every 600 ms).
    config.dataverse.delta_token_lifetime_ms = 300;
    let env = Env::start_with(config).await;
    let adapter = env
        .adapter(&[("TGB_DYNAMICS__POLL_INTERVAL_MS", "600")])
        .await;
    env.publish(opened("C-R", "Re-baselined")).await;
    let inc = env.wait_rows("incident", 1).await[0].clone();
    let id: uuid::Uuid = inc["incidentid"].as_str().unwrap().parse().unwrap();
    let labels = r#"table="incident""#;
    // A round ran after the incident existed, and it met the expired token.
    let before = wait_metric(&adapter.base, REBASELINES, labels, 1.0).await;

    // Dana changes the case twice; each change is found by a re-baselining round.
    let agent = env.user("agent");
    let dv = env.sandbox.dataverse();
    dv.set_row_as(
        agent,
        "incident",
        id,
        json!({"statecode": 0, "statuscode": 3}),
    )
    .unwrap();
    env.wait_events("tgb.v1.dyn.case.status_changed", 1).await;
    dv.set_row_as(
        agent,
        "incident",
        id,
        json!({"statecode": 0, "statuscode": 1}),
    )
    .unwrap();
    env.wait_events("tgb.v1.dyn.case.status_changed", 2).await;
    // Two more full rounds see both rows again.
    let after = metric(&adapter.base, REBASELINES, labels).await;
    wait_metric(&adapter.base, REBASELINES, labels, after + 2.0).await;

    let published = metric(&adapter.base, PUBLISHED, r#"flow="D1""#).await;
    let stale = metric(
        &adapter.base,
        "tgb_stale_events_dropped_total",
        r#"target="dataverse""#,
    )
    .await;
    adapter.stop().await;
    let events = env.events_on("tgb.v1.dyn.case.status_changed").await;
    assert_eq!(statuses(&events), vec![3, 1], "each change once, in order");
    assert_eq!(
        published, 2.0,
        "published twice in all (no re-send after a re-baseline)"
    );
    assert!(stale >= 2.0, "re-seen rows were recognised as applied");
    assert!(before >= 1.0);
    // The only refused requests are the expired delta links.
    let refused: Vec<_> = env
        .sandbox
        .calls()
        .of_system("dataverse")
        .into_iter()
        .filter(|c| c.status == 400)
        .collect();
    assert!(!refused.is_empty());
    assert!(
        refused
            .iter()
            .all(|c| c.method == "GET"
                && c.query.as_deref().is_some_and(|q| q.contains("deltatoken"))),
        "{refused:?}"
    );
}
