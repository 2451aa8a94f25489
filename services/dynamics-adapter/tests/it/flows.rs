//! D2–D8 and the reconciling poll.

use serde_json::json;
use tgb_proto as pb;
use tgb_testkit::eventually;

use crate::support::*;

fn partner_updated(revision: i64, legal_name: &str, city: &str) -> pb::TgPartnerUpdated {
    pb::TgPartnerUpdated {
        meta: meta(
            pb::Origin::Tg,
            "partner",
            "ZZ:ACME01",
            &revision.to_string(),
        ),
        profile: Some(pb::PartnerProfile {
            revision,
            legal_name: legal_name.into(),
            addresses: vec![pb::Address {
                kind: "main".into(),
                line1: "1 Dock Road".into(),
                city: city.into(),
                postal_code: "1000".into(),
                country: "BE".into(),
                ..Default::default()
            }],
            contacts: vec![pb::Contact {
                contact_id: "P-1".into(),
                name: "Ann Buyer".into(),
                email: "ann@acme.example".into(),
                ..Default::default()
            }],
            relationship: pb::Relationship::Active as i32,
        }),
    }
}

#[tokio::test]
async fn d8_first_sync_matches_the_existing_account_and_a_conflict_follows_the_field_policy() {
    let env = Env::start().await;
    let agent = env.user("agent");
    let existing = env
        .sandbox
        .dataverse()
        .insert_row_as(
            agent,
            "account",
            json!({"name": "ACME Corporation", "accountnumber": "ACME01"}),
        )
        .unwrap();
    let adapter = env.adapter(&[]).await;
    env.publish(partner_updated(1, "Acme Corp", "Brussels"))
        .await;
    env.wait_rows("contact", 1).await;
    let accounts = env.rows("account");
    assert_eq!(accounts.len(), 1, "matched, not duplicated");
    assert_eq!(accounts[0]["accountid"], existing.to_string());
    assert_eq!(accounts[0]["tgb_partnerkey"], "ZZ:ACME01");
    // legal_name: both sides differ at the first sync → dynamics_wins keeps Dynamics' name;
    // the address (tg_wins) is written.
    assert_eq!(accounts[0]["name"], "ACME Corporation");
    assert_eq!(accounts[0]["address1_city"], "Brussels");
    let contact = &env.rows("contact")[0];
    assert_eq!(contact["_parentcustomerid_value"], existing.to_string());

    // TG changes the city; Dynamics did not: written.
    env.publish(partner_updated(2, "Acme Corp", "Antwerp"))
        .await;
    eventually("city synced", WAIT, || async {
        (env.rows("account")[0]["address1_city"] == "Antwerp").then_some(())
    })
    .await
    .unwrap();
    adapter.stop().await;
    assert!(env.bad_requests().is_empty(), "{:?}", env.bad_requests());
}

#[tokio::test]
async fn d2_d5_d6_d7_changes_made_in_dynamics_become_events_and_own_writes_do_not() {
    let env = Env::start().await;
    let agent = env.user("agent");
    let dv = env.sandbox.dataverse();
    let account = dv
        .insert_row_as(
            agent,
            "account",
            json!({"name": "Acme Corp", "tgb_partnerkey": "ZZ:ACME01"}),
        )
        .unwrap();
    let adapter = env.adapter(&[]).await;
    env.register_webhook(&adapter);
    let acc = format!("/accounts({account})");

    // D2: an exception.
    dv.insert_row_as(
        agent,
        "tgb_exception",
        json!({"tgb_name": "Price differs", "tgb_kind": 100000001, "tgb_Account@odata.bind": acc}),
    )
    .unwrap();
    let ev = env.wait_events("tgb.v1.dyn.exception.raised", 1).await;
    let pb::Event::DynExceptionRaised(x) = &ev[0] else {
        unreachable!()
    };
    assert_eq!(
        x.exception.as_ref().unwrap().kind(),
        pb::ExceptionKind::PricingMismatch
    );
    assert_eq!(
        x.meta.as_ref().unwrap().partner.as_ref().unwrap().id,
        "ACME01"
    );

    // D5: an order milestone.
    let order = dv
        .insert_row_as(
            agent,
            "salesorder",
            json!({"name": "SO-1", "ordernumber": "SO-1", "tgb_tgorderid": "PO-77", "customerid_account@odata.bind": acc}),
        )
        .unwrap();
    dv.set_row_as(
        agent,
        "salesorder",
        order,
        json!({"tgb_milestone": 100000001}),
    )
    .unwrap();
    let ev = env.wait_events("tgb.v1.dyn.order.milestone", 1).await;
    let pb::Event::DynOrderMilestone(m) = &ev[0] else {
        unreachable!()
    };
    assert_eq!(m.order_ref, "PO-77");
    assert_eq!(m.milestone(), pb::OrderMilestone::ShipmentReleased);

    // D6: a TG dispute lands on the invoice with a linked case; Dynamics' resolution goes back.
    let invoice = dv
        .insert_row_as(
            agent,
            "invoice",
            json!({"name": "INV-9", "invoicenumber": "INV-9", "totalamount": 1200.0, "customerid_account@odata.bind": acc}),
        )
        .unwrap();
    env.publish(pb::TgDisputeOpened {
        meta: meta(pb::Origin::Tg, "dispute", "D-1", "1"),
        dispute: Some(pb::TgDispute {
            dispute_id: "D-1".into(),
            revision: 1,
            invoice_ref: "INV-9".into(),
            disputed_amount: Some(pb::Money {
                value: "200.00".into(),
                currency: "EUR".into(),
            }),
            reason: "Two pallets short".into(),
            status: pb::DisputeStatus::Open as i32,
            case_id: "C-77".into(),
        }),
    })
    .await;
    let inv = eventually("dispute columns", WAIT, || async {
        let row = dv.row("invoice", invoice)?;
        (row["tgb_disputeid"] == "D-1").then_some(row)
    })
    .await
    .unwrap();
    let cases = env.rows("incident");
    assert_eq!(cases.len(), 1);
    assert_eq!(inv["_tgb_disputecase_value"], cases[0]["incidentid"]);
    assert_eq!(inv["tgb_disputedamount"], 200.0);
    dv.set_row_as(agent, "invoice", invoice, json!({"tgb_disputestatus": 100000002, "tgb_resolutionnote": "Credit note issued", "tgb_adjustment": -200.0}))
        .unwrap();
    let ev = eventually("resolution event", WAIT, || async {
        let evs = env.events_on("tgb.v1.dyn.invoice.status_changed").await;
        evs.into_iter().find(|e| matches!(e, pb::Event::DynInvoiceStatusChanged(i) if i.resolution_note == "Credit note issued"))
    })
    .await
    .unwrap();
    let pb::Event::DynInvoiceStatusChanged(i) = ev else {
        unreachable!()
    };
    assert_eq!(i.dispute_status(), pb::DisputeStatus::Resolved);
    assert_eq!(i.adjustment.unwrap().value, "-200.00");

    // D7: KPI rows of one partner and period → one snapshot per change, closed at period close.
    for (key, value) in [("order_accuracy", 98.5), ("shipment_timeliness", 91.0)] {
        dv.insert_row_as(
            agent,
            "tgb_partnerkpi",
            json!({"tgb_name": key, "tgb_period": "2026-10", "tgb_kpikey": key, "tgb_value": value, "tgb_unit": "%", "tgb_Partner@odata.bind": acc}),
        )
        .unwrap();
    }
    let snapshots = eventually("a snapshot with both KPIs", WAIT, || async {
        let evs = env.events_on("tgb.v1.dyn.kpi.snapshot").await;
        evs.into_iter()
            .find(|e| matches!(e, pb::Event::DynKpiSnapshot(s) if s.kpis.len() == 2))
    })
    .await
    .unwrap();
    let pb::Event::DynKpiSnapshot(s) = snapshots else {
        unreachable!()
    };
    assert_eq!(s.period, "2026-10");
    assert!(!s.period_closed);

    adapter.stop().await;
    // Our own writes (the dispute columns) came back through the webhook and were dropped.
    let invoice_events = env.events_on("tgb.v1.dyn.invoice.status_changed").await;
    assert_eq!(invoice_events.len(), 1, "only the agent's resolution");
    assert!(env.bad_requests().is_empty(), "{:?}", env.bad_requests());
}

#[tokio::test]
async fn d3_an_approved_banking_document_sets_the_flag_and_a_reference_never_the_details() {
    let env = Env::start().await;
    let adapter = env.adapter(&[]).await;
    env.publish(pb::ReviewCompleted {
        meta: Some(pb::EventMeta {
            partner: Some(acme()),
            entity: Some(pb::EntityRef::new("tg", "document", "DOC-5")),
            ..pb::EventMeta::new(pb::Origin::Review)
        }),
        document: Some(pb::TgDocument {
            document_id: "DOC-5".into(),
            doc_type: pb::DocType::BankingDetails as i32,
            file_name: "bank.pdf".into(),
            ..Default::default()
        }),
        outcome: pb::ReviewOutcome::Approved as i32,
        reviewer: Some(pb::Person {
            name: "Sam Supervisor".into(),
            email: String::new(),
        }),
        ..Default::default()
    })
    .await;
    let account = eventually("flag set", WAIT, || async {
        let rows = env.rows("account");
        rows.into_iter().find(|r| r["tgb_bankingverified"] == true)
    })
    .await
    .unwrap();
    assert_eq!(account["tgb_bankingdocumentref"], "tg:document:DOC-5");
    let notes = env.wait_rows("annotation", 1).await;
    assert!(
        notes[0]["documentbody"].is_null(),
        "no content, only the reference"
    );
    adapter.stop().await;
}

#[tokio::test]
async fn the_change_tracking_poll_finds_a_change_no_webhook_reported_once() {
    let env = Env::start().await;
    let adapter = env
        .adapter(&[("TGB_DYNAMICS__POLL_INTERVAL_MS", "100")])
        .await;
    env.publish(opened("C-P", "Polled")).await;
    let inc = env.wait_rows("incident", 1).await[0].clone();
    let id: uuid::Uuid = inc["incidentid"].as_str().unwrap().parse().unwrap();
    // Wait for a baseline after our own write, then change the case with no webhook.
    eventually("baseline", WAIT, || async {
        let calls = env.sandbox.calls().of_system("dataverse");
        calls
            .iter()
            .any(|c| {
                c.method == "GET"
                    && c.path.ends_with("/incidents")
                    && c.query.as_deref().is_some_and(|q| q.contains("deltatoken"))
            })
            .then_some(())
    })
    .await
    .unwrap();
    env.sandbox
        .dataverse()
        .set_row_as(
            env.user("agent"),
            "incident",
            id,
            json!({"statecode": 0, "statuscode": 3}),
        )
        .unwrap();
    let _ = env.wait_events("tgb.v1.dyn.case.status_changed", 1).await;
    adapter.stop().await;
    // Two pollers' worth of rounds later it is still one event.
    assert_eq!(
        env.events_on("tgb.v1.dyn.case.status_changed").await.len(),
        1
    );
}

#[tokio::test]
async fn d8_an_update_of_an_account_deleted_in_dynamics_is_reported_gone_not_recreated() {
    let env = Env::start().await;
    let adapter = env.adapter(&[]).await;
    env.publish(partner_updated(1, "Acme Corp", "Brussels"))
        .await;
    env.wait_rows("contact", 1).await;
    let account = env.rows("account")[0]["accountid"]
        .as_str()
        .unwrap()
        .to_owned();
    // Someone deletes the account in Dynamics; TG then changes the partner's city.
    let agent = env.user("agent");
    let (status, _, _) = env.sandbox.dataverse().request_as(
        agent,
        axum::http::Method::DELETE,
        &format!("accounts({account})"),
        axum::http::HeaderMap::new(),
        None,
    );
    assert_eq!(status, 204);
    env.publish(partner_updated(2, "Acme Corp", "Antwerp"))
        .await;
    // Sent with If-Match: *, the update finds no row: the event is dead-lettered with
    // Dataverse's answer, and no nameless account appears under the old id.
    let js = env.bus.jetstream().clone();
    let letter = eventually("the update dead-lettered", WAIT, || {
        let js = js.clone();
        async move {
            let stream = js.get_stream("TGB_DLQ").await.ok()?;
            stream.get_raw_message(1).await.ok()
        }
    })
    .await
    .unwrap();
    let reason = letter.headers.get("tgb-error").unwrap().to_string();
    assert!(
        reason.contains("not found") || reason.contains("404"),
        "{reason}"
    );
    adapter.stop().await;
    assert!(
        env.rows("account").is_empty(),
        "no account re-created: {:?}",
        env.rows("account")
    );
}
