//! tg-bridge's own incident writes detected late are echoes, and TG updates of a case whose
//! incident is resolved never dead-letter.

use serde_json::json;
use tgb_proto as pb;
use tgb_testkit::eventually;

use crate::support::*;

const STATUS_CHANGED: &str = "tgb.v1.dyn.case.status_changed";
const RESOLVED: &str = "tgb.v1.dyn.case.resolved";

fn raise_tg_case(env: &Env, title: &str) -> String {
    env.sandbox
        .tg()
        .raise_case(tgb_sandbox::tg::model::RaiseCase::new(
            tgb_sandbox::tg::model::PartnerRef {
                qualifier: "ZZ".into(),
                id: "ACME01".into(),
                name: "Acme Corp".into(),
            },
            title,
        ))
        .unwrap()
        .data["case_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn tg_patches(env: &Env) -> usize {
    env.sandbox
        .tg()
        .writes()
        .into_iter()
        .filter(|w| w.method == "PATCH")
        .count()
}

#[tokio::test]
async fn the_create_of_an_incident_detected_after_we_resolved_it_is_an_echo_and_tg_is_not_written()
{
    let env = Env::start().await;
    let case_id = raise_tg_case(&env, "Short lived");
    let adapter = env.adapter(&[]).await;
    let egress = env.egress().await;
    let (url, bodies) = capture().await;
    env.sandbox
        .dataverse()
        .register_webhook(tgb_sandbox_dataverse::WebhookRegistration {
            name: "late".into(),
            url,
            auth: tgb_sandbox_dataverse::WebhookAuth::Header {
                name: "x-api-key".into(),
                value: WEBHOOK_KEY.into(),
            },
            entities: vec![],
            messages: vec!["Create".into()],
        })
        .unwrap();

    // The case is raised and resolved in TG; tg-bridge creates the incident and closes it.
    env.publish(opened(&case_id, "Short lived")).await;
    env.publish(updated(
        &case_id,
        2,
        "Short lived",
        pb::CaseStatus::Resolved,
    ))
    .await;
    let inc = eventually("incident resolved", WAIT, || async {
        let rows = env.rows("incident");
        rows.into_iter().find(|r| r["statecode"] == 1)
    })
    .await
    .unwrap();
    // Only now does the incident's Create (still active) reach the adapter.
    let create = eventually("the Create notification", WAIT, || async {
        bodies
            .lock()
            .unwrap()
            .iter()
            .find(|b| b["PrimaryEntityName"] == "incident" && b["MessageName"] == "Create")
            .cloned()
    })
    .await
    .unwrap();
    assert_eq!(create["PrimaryEntityId"], inc["incidentid"]);
    let echoes = r#"reason="own_user""#;
    let before = metric(&adapter.base, "tgb_echoes_suppressed_total", echoes).await;
    let id = inc["incidentid"].as_str().unwrap().to_owned();
    let reads_of_the_row = || {
        env.sandbox
            .calls()
            .of_system("dataverse")
            .iter()
            .filter(|c| c.method == "GET" && c.path.contains(&id))
            .count()
    };
    let reads_before = reads_of_the_row();
    // The webhook answers once the change is handled.
    deliver(&adapter, &create).await;
    let after = metric(&adapter.base, "tgb_echoes_suppressed_total", echoes).await;
    assert_eq!(
        reads_of_the_row(),
        reads_before,
        "our own Create is dropped before its row is read back"
    );
    egress.stop().await;
    adapter.stop().await;

    assert_eq!(
        after,
        before + 1.0,
        "the late Create was counted as an echo"
    );
    assert!(env.events_on(STATUS_CHANGED).await.is_empty());
    assert!(env.events_on(RESOLVED).await.is_empty());
    assert_eq!(tg_patches(&env), 0, "TG's case was not written");
    assert!(env.bad_requests().is_empty(), "{:?}", env.bad_requests());
}

#[tokio::test]
async fn an_own_write_whose_record_was_lost_in_a_crash_is_not_a_persons_change() {
    let env = Env::start().await;
    let case_id = raise_tg_case(&env, "Never changed");
    let adapter = env.adapter(&[]).await;
    env.register_webhook(&adapter);
    let egress = env.egress().await;
    let echoes = r#"reason="own_user""#;
    let before = metric(&adapter.base, "tgb_echoes_suppressed_total", echoes).await;

    // The incident as tg-bridge's write made it, with nothing recorded in tgb_sync (the
    // adapter stopped between the write and the record).
    let dv = env.sandbox.dataverse();
    let account = env.acme_account();
    dv.insert_row_as(
        env.app_user(),
        "incident",
        json!({"title": "Never changed", "tgb_tgcaseid": case_id, "tgb_tgrevision": 1,
               "caseorigincode": 3,
               "customerid_account@odata.bind": format!("/accounts({account})")}),
    )
    .unwrap();
    eventually("the Create handled", WAIT, || async {
        let v = metric(&adapter.base, "tgb_echoes_suppressed_total", echoes).await;
        (v > before).then_some(())
    })
    .await
    .unwrap();
    egress.stop().await;
    adapter.stop().await;

    assert!(env.events_on(STATUS_CHANGED).await.is_empty());
    assert_eq!(tg_patches(&env), 0, "the open TG case was not written");
}

#[tokio::test]
async fn updates_of_a_case_whose_incident_is_resolved_never_dead_letter() {
    let env = Env::start().await;
    let adapter = env.adapter(&[]).await;
    let labels = |outcome: &str| format!(r#"outcome="{outcome}""#);
    env.publish(opened("C-RO", "Read only")).await;
    env.publish(updated("C-RO", 2, "Read only", pb::CaseStatus::Resolved))
        .await;
    let id: uuid::Uuid = eventually("incident resolved", WAIT, || async {
        let rows = env.rows("incident");
        rows.into_iter().find(|r| r["statecode"] == 1)
    })
    .await
    .unwrap()["incidentid"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // TG renames the resolved case, then closes it: nothing to write to a read-only incident.
    env.publish(updated(
        "C-RO",
        3,
        "Read only, renamed",
        pb::CaseStatus::Resolved,
    ))
    .await;
    env.publish(updated(
        "C-RO",
        4,
        "Read only, renamed",
        pb::CaseStatus::Closed,
    ))
    .await;
    eventually("both updates handled", WAIT, || async {
        let done = metric(&adapter.base, "tgb_flow_events_total", &labels("skipped")).await
            + metric(&adapter.base, "tgb_flow_events_total", &labels("failed")).await;
        (done >= 2.0).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(
        metric(&adapter.base, "tgb_flow_events_total", &labels("failed")).await,
        0.0,
        "nothing dead-lettered"
    );

    // TG reopens it: the incident is reopened with the update, then resolved again.
    env.publish(updated("C-RO", 5, "Reopened", pb::CaseStatus::InProgress))
        .await;
    eventually("incident reopened", WAIT, || async {
        let r = env.sandbox.dataverse().row("incident", id)?;
        (r["statecode"] == 0 && r["title"] == "Reopened").then_some(())
    })
    .await
    .unwrap();
    env.publish(updated("C-RO", 6, "Reopened", pb::CaseStatus::Resolved))
        .await;
    eventually("incident resolved again", WAIT, || async {
        let r = env.sandbox.dataverse().row("incident", id)?;
        (r["statecode"] == 1).then_some(())
    })
    .await
    .unwrap();
    let failed = metric(&adapter.base, "tgb_flow_events_total", &labels("failed")).await;
    adapter.stop().await;
    assert_eq!(failed, 0.0, "nothing dead-lettered");
    assert!(env.bad_requests().is_empty(), "{:?}", env.bad_requests());
}

#[tokio::test]
async fn an_older_revision_meeting_an_incident_a_newer_one_resolved_is_stale_not_dead_lettered() {
    let env = Env::start().await;
    let adapter = env.adapter(&[]).await;
    // Another replica wrote and resolved revision 2 of the case; this one has recorded nothing.
    let dv = env.sandbox.dataverse();
    let account = env.acme_account();
    let id = dv
        .insert_row_as(
            env.app_user(),
            "incident",
            json!({"title": "Raced", "tgb_tgcaseid": "C-OLD", "tgb_tgrevision": 2,
                   "customerid_account@odata.bind": format!("/accounts({account})")}),
        )
        .unwrap();
    env.resolve_as_app(id, 2);

    // Revision 1 (opened) arrives now.
    env.publish(opened("C-OLD", "Raced")).await;
    let stale = eventually("revision 1 handled", WAIT, || async {
        let v = metric(
            &adapter.base,
            "tgb_stale_events_dropped_total",
            r#"target="tg""#,
        )
        .await;
        (v >= 1.0).then_some(v)
    })
    .await
    .unwrap();
    let failed = metric(
        &adapter.base,
        "tgb_flow_events_total",
        r#"outcome="failed""#,
    )
    .await;
    adapter.stop().await;
    assert_eq!(stale, 1.0);
    assert_eq!(failed, 0.0, "nothing dead-lettered");
    let row = env.sandbox.dataverse().row("incident", id).unwrap();
    assert_eq!(
        (row["statecode"].clone(), row["title"].clone()),
        (json!(1), json!("Raced"))
    );
}

/// The nats-server restart scenario's echo (`PATCH C-10046 in_progress`): the close of a
/// partner-resolved case landed in Dataverse (a PATCH with the row still active, then
/// `CloseIncident`) but its record in `tgb_sync` did not (NATS went down); the redelivered
/// event found the incident resolved and recorded the revision without a write. The PATCH's
/// own notification, delivered after that (Dataverse retries a webhook refused while NATS was
/// down), is our echo, not a person's status change hidden by a later write of ours.
#[tokio::test]
async fn the_patch_of_a_close_whose_record_was_lost_detected_after_the_redelivery_is_an_echo() {
    use dynamics_adapter::state::{States, TO_DATAVERSE};

    let env = Env::start().await;
    let case_id = raise_tg_case(&env, "Closed in an outage");
    let adapter = env.adapter(&[]).await;
    let egress = env.egress().await;
    let (url, bodies) = capture().await;
    env.sandbox
        .dataverse()
        .register_webhook(tgb_sandbox_dataverse::WebhookRegistration {
            name: "late".into(),
            url,
            auth: tgb_sandbox_dataverse::WebhookAuth::Header {
                name: "x-api-key".into(),
                value: WEBHOOK_KEY.into(),
            },
            entities: vec![],
            messages: vec!["Update".into()],
        })
        .unwrap();
    let states = States::new(env.bus.kv(tgb_bus::names::KV_SYNC).await.unwrap());
    let entity = format!("tg:case:{case_id}");

    env.publish(opened(&case_id, "Closed in an outage")).await;
    let before_close = eventually("revision 1 recorded", WAIT, || async {
        let (st, _) = states.get(TO_DATAVERSE, &entity).await.unwrap();
        (st.version == "1").then_some(st)
    })
    .await
    .unwrap();
    let close = updated(&case_id, 2, "Closed in an outage", pb::CaseStatus::Resolved);
    env.publish(close.clone()).await;
    eventually(
        "incident resolved and revision 2 recorded",
        WAIT,
        || async {
            let resolved = env.rows("incident").iter().any(|r| r["statecode"] == 1);
            let (st, _) = states.get(TO_DATAVERSE, &entity).await.unwrap();
            (resolved && st.version == "2").then_some(())
        },
    )
    .await
    .unwrap();
    // The record of the close is lost: tgb_sync holds revision 1 again.
    let (_, rev) = states.get(TO_DATAVERSE, &entity).await.unwrap();
    assert!(
        states
            .put(TO_DATAVERSE, &entity, &before_close, rev)
            .await
            .unwrap()
    );
    // The event is delivered again (as a new message: the first was acknowledged).
    let skipped = "tgb_dynamics_resolved_writes_skipped_total";
    let before = metric(&adapter.base, skipped, "").await;
    let again = updated(&case_id, 2, "Closed in an outage", pb::CaseStatus::Resolved);
    assert_ne!(again.meta, close.meta, "a new event id");
    env.publish(again).await;
    eventually("the redelivery recorded without a write", WAIT, || async {
        let v = metric(&adapter.base, skipped, "").await;
        (v > before).then_some(())
    })
    .await
    .unwrap();
    // The close's PATCH as Dataverse notified it: our user, revision 2, still active.
    let patch = eventually("the PATCH's notification", WAIT, || async {
        bodies.lock().unwrap().iter().find_map(|b| {
            let c = dynamics_adapter::change::from_context(b).ok()?;
            (c.table == "incident"
                && c.attrs.get("statecode") == Some(&json!(0))
                && c.attrs.get("tgb_tgrevision") == Some(&json!(2)))
            .then(|| b.clone())
        })
    })
    .await
    .unwrap();
    let echoes = r#"reason="own_user""#;
    let before = metric(&adapter.base, "tgb_echoes_suppressed_total", echoes).await;
    deliver(&adapter, &patch).await;
    let after = metric(&adapter.base, "tgb_echoes_suppressed_total", echoes).await;
    egress.stop().await;
    adapter.stop().await;

    assert_eq!(after, before + 1.0, "the PATCH was counted as an echo");
    assert!(env.events_on(STATUS_CHANGED).await.is_empty());
    assert_eq!(tg_patches(&env), 0, "TG's case was not written");
}
