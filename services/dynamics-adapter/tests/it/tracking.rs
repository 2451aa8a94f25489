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

    // A round counts its re-baseline before it has looked at the rows it found: wait for the
    // rows themselves to be recognised, not for the round.
    let stale = wait_metric(
        &adapter.base,
        "tgb_stale_events_dropped_total",
        r#"target="dataverse""#,
        2.0,
    )
    .await;
    let published = metric(&adapter.base, PUBLISHED, r#"flow="D1""#).await;
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

#[tokio::test]
async fn a_persons_change_hidden_by_a_later_write_of_ours_is_found_and_our_own_writes_stay_echoes()
{
    let env = Env::start().await;
    // Only the round at start runs: it sets the baseline.
    let first = env
        .adapter(&[("TGB_DYNAMICS__POLL_INTERVAL_MS", "3600000")])
        .await;
    env.publish(opened("C-H", "Hidden")).await;
    let inc = env.wait_rows("incident", 1).await[0].clone();
    let id: uuid::Uuid = inc["incidentid"].as_str().unwrap().parse().unwrap();
    eventually("the baseline of incidents", WAIT, || async {
        env.sandbox
            .calls()
            .of_system("dataverse")
            .iter()
            .any(|c| c.method == "GET" && c.path.ends_with("/incidents") && c.status == 200)
            .then_some(())
    })
    .await
    .unwrap();

    // Dana sets the case to Waiting for Details (no webhook), then TG renames the case and
    // tg-bridge writes the row: the row's last modifier is now tg-bridge.
    env.sandbox
        .dataverse()
        .set_row_as(
            env.user("agent"),
            "incident",
            id,
            json!({"statecode": 0, "statuscode": 3}),
        )
        .unwrap();
    env.publish(updated("C-H", 2, "Hidden, renamed", pb::CaseStatus::Open))
        .await;
    let row = eventually("renamed", WAIT, || async {
        let r = env.sandbox.dataverse().row("incident", id)?;
        (r["title"] == "Hidden, renamed").then_some(r)
    })
    .await
    .unwrap();
    assert_eq!(row["_modifiedby_value"], env.app_user().to_string());
    assert_eq!(row["statuscode"], 3, "our write kept Dana's status");
    first.stop().await;

    // The next round reads the change behind our write.
    let adapter = env
        .adapter(&[("TGB_DYNAMICS__POLL_INTERVAL_MS", "100")])
        .await;
    let events = env.wait_events("tgb.v1.dyn.case.status_changed", 1).await;
    assert_eq!(statuses(&events), vec![3]);

    // TG moves the case back to open: tg-bridge writes the status; that row is an echo.
    let echoes = r#"reason="own_user""#;
    let before = metric(&adapter.base, "tgb_echoes_suppressed_total", echoes).await;
    env.publish(updated(
        "C-H",
        3,
        "Hidden, renamed",
        pb::CaseStatus::InProgress,
    ))
    .await;
    eventually("status written", WAIT, || async {
        let r = env.sandbox.dataverse().row("incident", id)?;
        (r["statuscode"] == 1).then_some(())
    })
    .await
    .unwrap();
    wait_metric(
        &adapter.base,
        "tgb_echoes_suppressed_total",
        echoes,
        before + 1.0,
    )
    .await;
    let published = metric(&adapter.base, PUBLISHED, r#"flow="D1""#).await;
    adapter.stop().await;
    assert_eq!(published, 1.0, "only Dana's change");
    assert_eq!(
        statuses(&env.events_on("tgb.v1.dyn.case.status_changed").await),
        vec![3]
    );
    assert!(env.bad_requests().is_empty(), "{:?}", env.bad_requests());
}
