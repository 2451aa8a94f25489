//! D1 both ways, retries, staleness, echoes, throttling.

use serde_json::json;
use tgb_proto as pb;
use tgb_testkit::eventually;

use crate::support::*;

fn comment(case_id: &str, comment_id: &str, body: &str) -> pb::TgCommentAdded {
    pb::TgCommentAdded {
        meta: meta(pb::Origin::Tg, "case", case_id, ""),
        case_id: case_id.into(),
        comment_id: comment_id.into(),
        author: Some(pb::Person {
            name: "Pat Partner".into(),
            email: String::new(),
        }),
        side: pb::CommentSide::Partner as i32,
        body: body.into(),
        created_at: None,
    }
}

#[tokio::test]
async fn a_tg_case_becomes_one_incident_of_the_partner_account_and_comments_become_notes_and_messages()
 {
    let env = Env::start().await;
    let adapter = env.adapter(&[]).await;
    env.publish(opened("C-1", "Short shipment")).await;
    let incidents = env.wait_rows("incident", 1).await;
    let accounts = env.rows("account");
    assert_eq!(accounts.len(), 1);
    assert_eq!(accounts[0]["tgb_partnerkey"], "ZZ:ACME01");
    let inc = &incidents[0];
    assert_eq!(inc["tgb_tgcaseid"], "C-1");
    assert_eq!(inc["title"], "Short shipment");
    assert_eq!(inc["prioritycode"], 1);
    assert_eq!(inc["casetypecode"], 2);
    assert_eq!(inc["_customerid_value"], accounts[0]["accountid"]);

    // The same comment twice (a TG retry with a new event id): one note, one message.
    env.publish(comment("C-1", "CM-1", "Two pallets missing"))
        .await;
    env.publish(comment("C-1", "CM-1", "Two pallets missing"))
        .await;
    let notes = env.wait_rows("annotation", 1).await;
    let messages = env.wait_rows("tgb_partnermessage", 1).await;
    assert_eq!(notes[0]["notetext"], "Two pallets missing");
    assert_eq!(notes[0]["_objectid_value"], inc["incidentid"]);
    assert_eq!(messages[0]["_regardingobjectid_value"], inc["incidentid"]);
    // Both writes of a comment travel as one change set.
    let batches = env
        .sandbox
        .calls()
        .of_system("dataverse")
        .into_iter()
        .filter(|c| c.path.ends_with("$batch"))
        .count();
    assert!(batches >= 1, "the note and the message were batched");
    adapter.stop().await;
    assert_eq!(env.rows("annotation").len(), 1);
    assert_eq!(env.rows("tgb_partnermessage").len(), 1);
    assert_eq!(env.rows("incident").len(), 1);
    assert!(env.bad_requests().is_empty(), "{:?}", env.bad_requests());
}

#[tokio::test]
async fn a_retried_event_after_the_call_but_before_the_ack_creates_no_second_incident_or_note() {
    let mut env = Env::start().await;
    let adapter = env.adapter(&[]).await;
    env.publish(opened("C-2", "Damaged goods")).await;
    env.wait_rows("incident", 1).await;

    // The next write is admitted by Dataverse and held there; NATS goes away; the write
    // completes; the adapter can neither link nor ack; it is then killed.
    let hold = env.sandbox.dataverse().hold_requests();
    env.publish(comment("C-2", "CM-9", "Photos attached")).await;
    eventually("the comment's change set is held", WAIT, || async {
        let held = env.sandbox.dataverse().held_requests();
        held.iter().any(|r| r.ends_with("$batch")).then_some(())
    })
    .await
    .unwrap();
    env.nats.stop().await;
    drop(hold);
    env.wait_rows("annotation", 1).await;
    adapter.task.abort();
    let _ = adapter.task.await;
    env.nats.start_again().await.unwrap();

    // A new process gets the message again and re-applies it: same rows.
    env.bus = tgb_bus::Bus::connect(&env.nats.url(), None, tgb_bus::BusConfig::default())
        .await
        .unwrap();
    let again = env.adapter(&[]).await;
    eventually("redelivered and acked", WAIT, || async {
        let puts = env
            .sandbox
            .calls()
            .of_system("dataverse")
            .into_iter()
            .filter(|c| c.method == "POST" && c.path.ends_with("$batch") && c.status == 200)
            .count();
        (puts >= 2).then_some(())
    })
    .await
    .unwrap();
    again.stop().await;
    assert_eq!(env.rows("incident").len(), 1);
    assert_eq!(env.rows("annotation").len(), 1);
    assert_eq!(env.rows("tgb_partnermessage").len(), 1);
    assert!(env.bad_requests().is_empty());
}

#[tokio::test]
async fn a_stale_event_does_not_overwrite_a_newer_one() {
    let env = Env::start().await;
    let adapter = env.adapter(&[]).await;
    env.publish(opened("C-3", "v1")).await;
    env.wait_rows("incident", 1).await;
    env.publish(updated("C-3", 3, "v3", pb::CaseStatus::Open))
        .await;
    eventually("v3 applied", WAIT, || async {
        (env.rows("incident")[0]["title"] == "v3").then_some(())
    })
    .await
    .unwrap();
    env.publish(updated("C-3", 2, "v2", pb::CaseStatus::Open))
        .await;
    // A newer event after the stale one proves the stale one was handled (in order).
    let mut marker = updated("C-3", 4, "v3", pb::CaseStatus::Open);
    marker.case.as_mut().unwrap().description = "marker".into();
    env.publish(marker).await;
    eventually("marker applied", WAIT, || async {
        (env.rows("incident")[0]["description"] == "marker").then_some(())
    })
    .await
    .unwrap();
    adapter.stop().await;
    let inc = &env.rows("incident")[0];
    assert_eq!(inc["title"], "v3");
    assert_eq!(inc["tgb_tgrevision"], 4);
}

#[tokio::test]
async fn an_internal_status_change_reaches_tg_once_and_its_echo_is_not_written_back() {
    let env = Env::start().await;
    let case_id = env
        .sandbox
        .tg()
        .raise_case(tgb_sandbox::tg::model::RaiseCase::new(
            tgb_sandbox::tg::model::PartnerRef {
                qualifier: "ZZ".into(),
                id: "ACME01".into(),
                name: "Acme Corp".into(),
            },
            "Late delivery",
        ))
        .unwrap()
        .data["case_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let adapter = env.adapter(&[]).await;
    env.register_webhook(&adapter);
    let egress = env.egress().await;
    env.publish(opened(&case_id, "Late delivery")).await;
    let inc = env.wait_rows("incident", 1).await[0].clone();
    let incident_id: uuid::Uuid = inc["incidentid"].as_str().unwrap().parse().unwrap();
    let writes_before = env.app_writes();

    // Dana sets the case to Waiting for Details in Dynamics.
    env.sandbox
        .dataverse()
        .set_row_as(
            env.user("agent"),
            "incident",
            incident_id,
            json!({"statecode": 0, "statuscode": 3}),
        )
        .unwrap();
    let events = env.wait_events("tgb.v1.dyn.case.status_changed", 1).await;
    let pb::Event::DynCaseStatusChanged(ev) = &events[0] else {
        unreachable!()
    };
    assert_eq!(ev.tg_case_id, case_id);
    assert_eq!(ev.tg_status(), pb::CaseStatus::WaitingOnPartner);
    let tg_case = eventually("TG case waiting", WAIT, || async {
        let c = env.sandbox.tg().case(&case_id)?;
        (serde_json::to_value(&c.status).ok()? == json!("waiting_on_partner")).then_some(c)
    })
    .await
    .unwrap();

    // TG reports its new revision back (as tg-ingress would): nothing is written to Dynamics.
    let echo = updated(
        &case_id,
        tg_case.revision as i64,
        "Late delivery",
        pb::CaseStatus::WaitingOnPartner,
    );
    env.publish(echo).await;
    let marker = env
        .publish(comment(&case_id, "CM-marker", "after the echo"))
        .await;
    let _ = marker;
    env.wait_rows("annotation", 1).await;
    egress.stop().await;
    adapter.stop().await;
    // The only write after Dana's change is the marker comment (one $batch).
    assert_eq!(env.app_writes(), writes_before + 1);
    assert_eq!(
        env.events_on("tgb.v1.dyn.case.status_changed").await.len(),
        1
    );
    let status_writes = env
        .sandbox
        .tg()
        .writes()
        .into_iter()
        .filter(|w| w.method == "PATCH")
        .count();
    assert_eq!(status_writes, 1, "TG got the status once");
    assert!(env.bad_requests().is_empty());
}

#[tokio::test]
async fn a_429_storm_ends_with_every_incident_once_and_no_request_before_retry_after() {
    let env = Env::start().await;
    // Service protection as a real org can have it: 20 requests per 5 s for the app user.
    env.sandbox
        .dataverse()
        .configure_limits(tgb_sandbox_dataverse::ServiceProtectionConfig {
            requests_per_window: Some(20),
            window_ms: 5_000,
            ..Default::default()
        });
    let adapter = env
        .adapter(&[
            ("TGB_DYNAMICS__GOVERNOR__MAX_CONCURRENT", "2"),
            ("TGB_DYNAMICS__BATCH_MAX_REQUESTS", "50"),
            ("TGB_DYNAMICS__THROTTLE_RETRIES", "20"),
            ("TGB_BUS__CONCURRENCY", "64"),
        ])
        .await;
    // Whether the window above is exceeded depends on how fast this machine batches the storm
    // (a slow machine sends fewer, fuller batches). The storm is made certain instead: the first
    // five Dataverse requests after the adapter started are answered 429 with `Retry-After: 2`,
    // whatever the timing; the window may add more.
    env.sandbox
        .faults()
        .add(tgb_sandbox::FaultRule::new(
            "dataverse",
            tgb_sandbox::Fault::Burst429 {
                count: 5,
                retry_after_secs: 2,
            },
        ))
        .unwrap();
    for i in 0..300 {
        env.publish(opened(&format!("S-{i}"), &format!("storm {i}")))
            .await;
    }
    eventually("300 incidents", tgb_testkit::HANG_GUARD, || async {
        (env.rows("incident").len() >= 300).then_some(())
    })
    .await
    .unwrap();
    adapter.stop().await;
    let rows = env.rows("incident");
    let mut ids: Vec<String> = rows
        .iter()
        .map(|r| r["tgb_tgcaseid"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 300);
    assert_eq!(rows.len(), 300);

    // Every request the adapter sent after a 429 was answered waited until that answer's
    // Retry-After ran out: the injected ones (2 s) and any from the window (at least 1 s).
    let calls: Vec<_> = env
        .sandbox
        .calls()
        .of_system("dataverse")
        .into_iter()
        .filter(|c| !c.scripted)
        .collect();
    let injected = calls
        .iter()
        .filter(|c| c.status == 429 && !c.faults.is_empty())
        .count();
    assert_eq!(injected, 5, "the storm met five injected 429s");
    // The lane holds two requests at once, so when a 429 is answered one other request can
    // already be on its way: it cannot honour an answer its sender has not read yet. Any
    // further request arriving before the Retry-After ran out would be one sent in spite of it.
    const IN_FLIGHT_BESIDE: usize = 1;
    let parse = |s: &str| {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
    };
    let mut window_429s = 0;
    for c in calls.iter().filter(|c| c.status == 429) {
        // Injected: 2 s. The window's own is at least 1 s (whole seconds, rounded up).
        let retry_after = if c.faults.is_empty() {
            window_429s += 1;
            1_000
        } else {
            2_000
        };
        let answered = parse(&c.at) + time::Duration::milliseconds(c.latency_ms as i64);
        let until = answered + time::Duration::milliseconds(retry_after - 10);
        let early: Vec<u64> = calls
            .iter()
            .filter(|l| {
                let at = parse(&l.at);
                at > answered && at < until
            })
            .map(|l| l.seq)
            .collect();
        assert!(
            early.len() <= IN_FLIGHT_BESIDE,
            "requests {early:?} arrived before the Retry-After of the 429 to request {} ran out",
            c.seq
        );
    }
    // The sandbox's own count agrees: requests it received while it had told the app user to
    // wait, at most the one in flight per 429.
    let usage = env.sandbox.dataverse().limits_usage();
    let app = env.app_user().to_string();
    if let Some(lane) = usage.iter().find(|u| u.caller == app) {
        assert!(
            lane.early_requests as usize <= window_429s * IN_FLIGHT_BESIDE,
            "{} requests came before a Retry-After of the window ran out ({window_429s} 429s)",
            lane.early_requests
        );
    }
    assert!(env.bad_requests().is_empty());
}

#[tokio::test]
async fn an_older_revision_cannot_reopen_an_incident_another_replica_resolved_meanwhile() {
    let env = Env::start().await;
    let adapter = env.adapter(&[]).await;
    env.publish(opened("C-RACE", "v1")).await;
    let id = env.wait_rows("incident", 1).await[0]["incidentid"]
        .as_str()
        .unwrap()
        .parse::<uuid::Uuid>()
        .unwrap();
    // Another replica wrote revision 3 (TG resolved the case) after this one recorded
    // revision 1: the row moved on behind this replica's back.
    let dv = env.sandbox.dataverse();
    let (status, _, _) = dv.request_as(
        env.app_user(),
        axum::http::Method::PATCH,
        &format!("incidents({id})"),
        axum::http::HeaderMap::new(),
        Some(json!({"tgb_tgrevision": 3})),
    );
    assert_eq!(status, 204);
    env.resolve_as_app(id, 3);

    // Revision 2 (waiting on the partner: an active status) reaches this replica now.
    env.publish(updated("C-RACE", 2, "v2", pb::CaseStatus::WaitingOnPartner))
        .await;
    eventually("revision 2 found stale", WAIT, || async {
        let v = metric(
            &adapter.base,
            "tgb_stale_events_dropped_total",
            r#"target="tg""#,
        )
        .await;
        (v >= 1.0).then_some(())
    })
    .await
    .unwrap();
    adapter.stop().await;
    let row = env.sandbox.dataverse().row("incident", id).unwrap();
    assert_eq!(
        (
            row["statecode"].clone(),
            row["title"].clone(),
            row["tgb_tgrevision"].clone()
        ),
        (json!(1), json!("v1"), json!(3)),
        "the resolved incident is neither reopened nor overwritten"
    );
    assert_eq!(env.rows("incidentresolution").len(), 1);
}

#[tokio::test]
async fn a_forced_etag_race_on_an_incident_update_ends_with_the_update_applied() {
    let env = Env::start().await;
    let adapter = env.adapter(&[]).await;
    env.publish(opened("C-ETAG", "v1")).await;
    env.wait_rows("incident", 1).await;
    // The next conditional write meets someone else's edit first and gets 412.
    env.sandbox.dataverse().force_etag_races(1);
    env.publish(updated("C-ETAG", 2, "v2", pb::CaseStatus::WaitingOnPartner))
        .await;
    eventually("v2 applied", WAIT, || async {
        let inc = &env.rows("incident")[0];
        (inc["title"] == "v2" && inc["statuscode"] == 3).then_some(())
    })
    .await
    .unwrap();
    let retries = metric(&adapter.base, "tgb_dynamics_conditional_retries_total", "").await;
    adapter.stop().await;
    assert_eq!(retries, 1.0, "one 412, one re-read, one successful write");
    let conflicts = env
        .sandbox
        .calls()
        .of_system("dataverse")
        .into_iter()
        .filter(|c| c.status == 412)
        .count();
    assert_eq!(conflicts, 1);
    assert_eq!(env.rows("incident")[0]["tgb_tgrevision"], 2);
}

#[tokio::test]
async fn an_agent_note_on_an_incident_whose_link_was_never_stored_still_reaches_its_case() {
    let env = Env::start().await;
    // The adapter wrote the incident and stopped before storing the link (a crash between
    // the two): the row carries the TG case id, tgb_links knows nothing of it.
    let dv = env.sandbox.dataverse();
    let account = env.acme_account();
    let incident = dv
        .insert_row_as(
            env.app_user(),
            "incident",
            json!({"title": "Unlinked", "tgb_tgcaseid": "C-NOLINK", "tgb_tgrevision": 1,
                   "customerid_account@odata.bind": format!("/accounts({account})")}),
        )
        .unwrap();
    let other = dv
        .insert_row_as(
            env.user("agent"),
            "incident",
            json!({"title": "Not from TG",
                   "customerid_account@odata.bind": format!("/accounts({account})")}),
        )
        .unwrap();
    let adapter = env.adapter(&[]).await;
    env.register_webhook(&adapter);
    // An agent notes on both incidents.
    for (id, text) in [(other, "internal only"), (incident, "we are on it")] {
        dv.insert_row_as(
            env.user("agent"),
            "annotation",
            json!({"subject": "Agent note", "notetext": text,
                   "objectid_incident@odata.bind": format!("/incidents({id})")}),
        )
        .unwrap();
    }
    // Both notes' webhooks answered: both notes were handled.
    eventually("both notes delivered", WAIT, || async {
        let answered = dv
            .webhook_deliveries()
            .into_iter()
            .filter(|d| d.entity == "annotation" && d.status.is_some_and(|s| s < 300))
            .count();
        (answered == 2).then_some(())
    })
    .await
    .unwrap();
    let events = env.wait_events("tgb.v1.dyn.case.note_added", 1).await;
    adapter.stop().await;
    let pb::Event::DynCaseNoteAdded(ev) = &events[0] else {
        unreachable!()
    };
    assert_eq!(ev.tg_case_id, "C-NOLINK");
    assert_eq!(ev.text, "we are on it");
    assert_eq!(
        env.events_on("tgb.v1.dyn.case.note_added").await.len(),
        1,
        "the note on the incident without a TG case is not sent anywhere"
    );
}

#[tokio::test]
async fn a_case_opened_again_after_the_duplicate_window_updates_its_one_incident() {
    let env = Env::start().await;
    let adapter = env.adapter(&[]).await;
    env.publish(opened("C-8", "v1")).await;
    let first = env.wait_rows("incident", 1).await;
    let patches = |status: u16| {
        env.sandbox
            .calls()
            .of_system("dataverse")
            .into_iter()
            .filter(|c| c.method == "PATCH" && c.path.contains("incidents(") && c.status == status)
            .count()
    };
    assert_eq!(patches(412), 0, "the first create met no incident");

    // TG sends the case as new again, past the duplicate window: a first delivery of a
    // `tg.case.opened` (presumed new, nothing read) for a case whose incident exists.
    let mut again = opened("C-8", "v2");
    again.case.as_mut().unwrap().revision = 2;
    env.publish(again).await;
    eventually("v2 written to the one incident", WAIT, || async {
        (env.rows("incident")[0]["title"] == "v2").then_some(())
    })
    .await
    .unwrap();
    adapter.stop().await;

    // The create-only condition caught the presumption: 412, the row read back, written under
    // its ETag.
    assert_eq!(patches(412), 1);
    let rows = env.rows("incident");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["incidentid"], first[0]["incidentid"]);
    assert_eq!(rows[0]["tgb_tgrevision"], 2);
    assert!(env.bad_requests().is_empty(), "{:?}", env.bad_requests());
}

/// `tgb_links` refuses every write (`refuse = true`): a put is answered "no stream found", as
/// while the broker node leading the bucket is down and its cluster elects another.
async fn refuse_link_writes(env: &Env, refuse: bool) {
    let links = tgb_bus::names::KV_LINKS;
    let taken = if refuse { "refused.>" } else { ">" };
    let js = env.bus.jetstream();
    tgb_testkit::set_stream_subjects(
        js,
        &format!("KV_{links}"),
        vec![format!("$KV.{links}.{taken}")],
    )
    .await;
}

#[tokio::test]
async fn a_link_lost_beside_its_written_state_is_restored_on_the_redelivery() {
    let env = Env::start().await;
    let adapter = env.adapter(&[]).await;
    // A first case: the partner's account and its link exist.
    env.publish(opened("C-20", "first")).await;
    env.wait_rows("incident", 1).await;

    // The next case's incident and sync state are written; its link's write is refused.
    refuse_link_writes(&env, true).await;
    env.publish(opened("C-21", "second")).await;
    let rows = env.wait_rows("incident", 2).await;
    let incident = rows
        .iter()
        .find(|r| r["tgb_tgcaseid"] == "C-21")
        .map(|r| r["incidentid"].as_str().unwrap().to_owned())
        .expect("the incident of C-21");
    let retried = eventually("the delivery retried", WAIT, || async {
        tgb_bus::ledger::history(env.bus.jetstream(), "C-21")
            .await
            .ok()?
            .into_iter()
            .find(|e| e.decision == tgb_bus::ledger::Decision::Retried)
    })
    .await
    .unwrap();
    assert!(retried.detail.contains("tgb_links"), "{}", retried.detail);
    refuse_link_writes(&env, false).await;

    // The redelivery finds the revision recorded and no link: it links the incident, which a
    // comment on the case needs to find it.
    let links = tgb_bus::links::Links::new(env.bus.kv(tgb_bus::names::KV_LINKS).await.unwrap());
    let case = tgb_bus::links::Record::new("tg", "case", "C-21");
    let linked = eventually("the case linked to its incident", WAIT, || async {
        (links
            .find(&case, "dataverse", "incident")
            .await
            .ok()?
            .as_deref()
            == Some(incident.as_str()))
        .then_some(())
    })
    .await;
    if let Err(e) = linked {
        let history = tgb_bus::ledger::history(env.bus.jetstream(), "C-21").await;
        panic!("{e}: {history:?}");
    }
    adapter.stop().await;
    let back = links
        .find(
            &tgb_bus::links::Record::new("dataverse", "incident", &incident),
            "tg",
            "case",
        )
        .await
        .unwrap();
    assert_eq!(
        back.as_deref(),
        Some("C-21"),
        "and the incident to its case"
    );
    assert_eq!(env.rows("incident").len(), 2, "one incident per case");
    assert!(env.bad_requests().is_empty(), "{:?}", env.bad_requests());
}

/// `TGB_EVENTS` takes every event subject but `subject` (`refuse = true`): its publishes are
/// answered "no stream found".
async fn refuse_subject(env: &Env, subject: &str, refuse: bool) {
    let subjects = if refuse {
        pb::SUBJECTS
            .iter()
            .map(|(s, _)| (*s).to_owned())
            .filter(|s| s != subject)
            .collect()
    } else {
        vec![tgb_bus::names::EVENTS_SUBJECTS.to_owned()]
    };
    let js = env.bus.jetstream();
    tgb_testkit::set_stream_subjects(js, tgb_bus::names::EVENTS_STREAM, subjects).await;
}

/// An adapter polling every 300 ms with Dataverse's webhook registered, and the incident it
/// created for the new case `case`.
async fn incident_of_new_case(env: &Env, case: &str) -> (Running, uuid::Uuid) {
    let adapter = env
        .adapter(&[("TGB_DYNAMICS__POLL_INTERVAL_MS", "300")])
        .await;
    env.register_webhook(&adapter);
    env.publish(opened(case, "Late delivery")).await;
    let inc = env.wait_rows("incident", 1).await[0].clone();
    (
        adapter,
        inc["incidentid"].as_str().unwrap().parse().unwrap(),
    )
}

/// The webhook delivery of `message` on `incident` once its last attempt is answered (a
/// success, or the one retry).
async fn last_answer(
    env: &Env,
    incident: uuid::Uuid,
    message: &str,
) -> tgb_sandbox_dataverse::WebhookDelivery {
    eventually(
        &format!("the {message}'s last attempt answered"),
        WAIT,
        || async {
            env.sandbox
                .dataverse()
                .webhook_deliveries()
                .into_iter()
                .find(|d| {
                    d.entity_id == incident
                        && d.message == message
                        && d.status.is_some()
                        && (d.attempts == 2 || d.status.is_some_and(|s| s < 300))
                })
        },
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_status_change_whose_publish_was_refused_is_published_by_a_later_poll() {
    const SUBJECT: &str = "tgb.v1.dyn.case.status_changed";
    let env = Env::start().await;
    let (adapter, incident) = incident_of_new_case(&env, "C-30").await;

    // Dana changes the status while the stream refuses the event: the webhook and its one
    // retry are answered 503, the polls meanwhile fail.
    refuse_subject(&env, SUBJECT, true).await;
    env.sandbox
        .dataverse()
        .set_row_as(
            env.user("agent"),
            "incident",
            incident,
            json!({"statecode": 0, "statuscode": 3}),
        )
        .unwrap();
    let delivery = last_answer(&env, incident, "Update").await;
    assert!(env.events_on(SUBJECT).await.is_empty());
    refuse_subject(&env, SUBJECT, false).await;

    // The change was not recorded as handled: a poll after the refusal publishes it.
    let events = env.wait_events(SUBJECT, 1).await;
    adapter.stop().await;
    assert_eq!(events.len(), 1, "{events:?} (the webhook: {delivery:?})");
    let pb::Event::DynCaseStatusChanged(ev) = &events[0] else {
        unreachable!()
    };
    assert_eq!(ev.tg_case_id, "C-30");
    assert_eq!(ev.tg_status(), pb::CaseStatus::WaitingOnPartner);
}

/// Resolves an incident as `user` (`CloseIncident`, the way Dynamics does when an agent
/// resolves a case).
fn resolve_as(env: &Env, user: uuid::Uuid, incident: uuid::Uuid, subject: &str) {
    let (status, _, body) = env.sandbox.dataverse().request_as(
        user,
        axum::http::Method::POST,
        "CloseIncident",
        axum::http::HeaderMap::new(),
        Some(json!({"IncidentResolution": {
            "@odata.type": "Microsoft.Dynamics.CRM.incidentresolution",
            "subject": subject,
            "description": "Credit note CN-77 issued",
            "incidentid@odata.bind": format!("/incidents({incident})")}, "Status": 5})),
    );
    assert_eq!(status, 204, "{body:?}");
}

#[tokio::test]
async fn a_resolution_whose_close_was_refused_twice_is_published_by_a_later_poll() {
    const SUBJECT: &str = "tgb.v1.dyn.case.resolved";
    let env = Env::start().await;
    let (adapter, incident) = incident_of_new_case(&env, "C-31").await;

    // Dana resolves the case while the stream refuses resolutions: the `Close` webhook and its
    // one retry are answered 503; the resolution's `Update` is taken (it publishes nothing).
    refuse_subject(&env, SUBJECT, true).await;
    resolve_as(&env, env.user("agent"), incident, "Refund approved");
    let close = last_answer(&env, incident, "Close").await;
    let update = last_answer(&env, incident, "Update").await;
    assert!(
        close.status.is_none_or(|s| s >= 500),
        "the Close was taken: {close:?}"
    );
    assert!(env.events_on(SUBJECT).await.is_empty());
    refuse_subject(&env, SUBJECT, false).await;

    // Neither the `Update` nor the refused `Close` recorded the resolution as announced: a poll
    // after the refusal publishes it, with the resolution's text.
    let events = env.wait_events(SUBJECT, 1).await;
    adapter.stop().await;
    assert_eq!(
        events.len(),
        1,
        "{events:?} (Close: {close:?}, Update: {update:?})"
    );
    let pb::Event::DynCaseResolved(ev) = &events[0] else {
        unreachable!()
    };
    assert_eq!(ev.tg_case_id, "C-31");
    assert_eq!(ev.resolution_subject, "Refund approved");
    assert_eq!(ev.resolution_description, "Credit note CN-77 issued");
}

#[tokio::test]
async fn a_resolution_the_poll_published_before_its_close_came_is_stored_once() {
    const SUBJECT: &str = "tgb.v1.dyn.case.resolved";
    let env = Env::start().await;
    let adapter = env
        .adapter(&[("TGB_DYNAMICS__POLL_INTERVAL_MS", "100")])
        .await;
    env.publish(opened("C-32", "Short shipment")).await;
    let inc = env.wait_rows("incident", 1).await[0].clone();
    let incident: uuid::Uuid = inc["incidentid"].as_str().unwrap().parse().unwrap();

    // Dataverse's notifications are held back (kept, not delivered) while the poll meets the
    // resolved row first.
    let (url, held) = capture().await;
    env.sandbox.dataverse().clear_webhooks();
    env.sandbox
        .dataverse()
        .register_webhook(tgb_sandbox_dataverse::WebhookRegistration {
            name: "held".into(),
            url,
            auth: tgb_sandbox_dataverse::WebhookAuth::None,
            entities: vec!["incident".into()],
            messages: vec!["Update".into(), "Close".into()],
        })
        .unwrap();
    resolve_as(&env, env.user("agent"), incident, "Refund approved");
    let polled = env.wait_events(SUBJECT, 1).await;
    let held = eventually("the Close and its Update held", WAIT, || async {
        let held = held.lock().unwrap().clone();
        (held.len() >= 2).then_some(held)
    })
    .await
    .unwrap();

    // Then they come, late: the `Close` publishes the same resolution under the same id.
    for body in &held {
        deliver(&adapter, body).await;
    }
    let stored = env.events_on(SUBJECT).await;
    adapter.stop().await;
    assert_eq!(stored.len(), 1, "{polled:?} then {stored:?}");
    let pb::Event::DynCaseResolved(ev) = &stored[0] else {
        unreachable!()
    };
    assert_eq!(ev.tg_case_id, "C-32");
    assert_eq!(ev.resolution_subject, "Refund approved");
    assert_eq!(ev.resolution_description, "Credit note CN-77 issued");
}
