use tgb_proto as pb;
use tgb_sandbox::tg::model::{Money, OpenDispute, UploadDocument};

use crate::support::{Env, acme, meta};

#[tokio::test]
async fn a_dynamics_exception_opens_one_linked_collaboration_case() {
    let env = Env::start().await;
    let egress = env.egress(&env.sandbox.tg_api_url()).await;
    let raised = pb::DynExceptionRaised {
        meta: meta(
            pb::Origin::Dyn,
            pb::EntityRef::new("dataverse", "exception", "EX-1"),
        ),
        exception: Some(pb::DynException {
            exception_id: "EX-1".into(),
            kind: pb::ExceptionKind::PricingMismatch as i32,
            title: "Price differs from contract".into(),
            description: "Line 3 is 4% above the agreed price".into(),
            invoice_ref: "INV-9".into(),
            priority: pb::CasePriority::High as i32,
            status: "open".into(),
            ..Default::default()
        }),
    };
    env.publish(raised.clone()).await;
    let links = tgb_bus::links::Links::new(env.bus.kv("tgb_links").await.unwrap());
    let exception = tgb_bus::links::Record::new("dataverse", "exception", "EX-1");
    let case_id = tgb_testkit::eventually("linked", tgb_testkit::HANG_GUARD, || async {
        links.find(&exception, "tg", "case").await.ok()?
    })
    .await
    .unwrap();
    let case = env.sandbox.tg().case(&case_id).unwrap();
    assert_eq!(case.category, "pricing");
    assert_eq!(case.priority, "high");
    assert_eq!(case.partner.key(), "ZZ:ACME01");
    let external = case.external_ref.unwrap();
    assert_eq!(
        (external.system.as_str(), external.id.as_str()),
        ("dynamics", "EX-1")
    );
    assert_eq!(
        links
            .find(
                &tgb_bus::links::Record::new("tg", "case", &case_id),
                "dataverse",
                "exception"
            )
            .await
            .unwrap()
            .as_deref(),
        Some("EX-1")
    );

    // The same exception raised again (a new event): no second case.
    let mut again = raised;
    again.meta = meta(
        pb::Origin::Dyn,
        pb::EntityRef::new("dataverse", "exception", "EX-1"),
    );
    env.publish(again).await;
    // Then an update resolves it: a comment and the status, on the linked case.
    let updated = pb::DynExceptionUpdated {
        meta: meta(
            pb::Origin::Dyn,
            pb::EntityRef::new("dataverse", "exception", "EX-1"),
        ),
        exception: Some(pb::DynException {
            exception_id: "EX-1".into(),
            status: "resolved".into(),
            description: "Credit note issued".into(),
            ..Default::default()
        }),
    };
    env.publish(updated).await;
    tgb_testkit::eventually("resolved", tgb_testkit::HANG_GUARD, || async {
        (env.sandbox.tg().case(&case_id)?.status == "resolved").then_some(())
    })
    .await
    .unwrap();
    assert_eq!(env.sandbox.tg().snapshot().cases.len(), 1);
    assert_eq!(env.api_comments(&case_id).len(), 1);
    egress.stop().await;
}

#[tokio::test]
async fn every_flow_reaches_tg_as_its_contract_call() {
    let env = Env::start().await;
    let tg = env.sandbox.tg();
    let case_id = env.raise_case("flows");
    let doc = tg
        .upload_document(UploadDocument {
            partner: Some(acme()),
            doc_type: Some("tax_form".into()),
            ..Default::default()
        })
        .unwrap();
    let doc_id = doc.data["document_id"].as_str().unwrap().to_owned();
    let dispute = tg
        .open_dispute(OpenDispute {
            partner: acme(),
            invoice_ref: "INV-1".into(),
            disputed_amount: Money {
                value: 120.0,
                currency: "EUR".into(),
            },
            reason: "price".into(),
            case_id: None,
        })
        .unwrap();
    let dispute_id = dispute.data["dispute_id"].as_str().unwrap().to_owned();
    let egress = env.egress(&env.sandbox.tg_api_url()).await;
    let m = |kind: &str, id: &str| meta(pb::Origin::Dyn, pb::EntityRef::new("dataverse", kind, id));

    env.publish(pb::DynOrderMilestone {
        meta: m("salesorder", "SO-1"),
        salesorder_id: "SO-1".into(),
        order_ref: "PO-77".into(),
        milestone: pb::OrderMilestone::ShipmentReleased as i32,
        milestone_at: Some(prost_types_now()),
        detail: "2 pallets".into(),
    })
    .await;
    env.publish(pb::DynKpiSnapshot {
        meta: m("account", "ACC-1"),
        period: "2026-11".into(),
        kpis: vec![pb::Kpi {
            key: "order_accuracy".into(),
            value: 98.5,
            unit: "percent".into(),
            target: Some(99.0),
        }],
        period_closed: true,
    })
    .await;
    env.publish(pb::DynInvoiceStatusChanged {
        meta: m("invoice", "INV-1"),
        invoice_id: "INV-1".into(),
        invoice_ref: "INV-1".into(),
        dispute_id: dispute_id.clone(),
        dispute_status: pb::DisputeStatus::Resolved as i32,
        paid_amount: Some(pb::Money {
            value: "880.00".into(),
            currency: "EUR".into(),
        }),
        open_amount: Some(pb::Money {
            value: "0".into(),
            currency: "EUR".into(),
        }),
        adjustment: Some(pb::Money {
            value: "-120.00".into(),
            currency: "EUR".into(),
        }),
        resolution_note: "Credit note CN-4".into(),
    })
    .await;
    env.publish(pb::DynAccountUpdated {
        meta: m("account", "ACC-1"),
        account_id: "ACC-1".into(),
        legal_name: "Acme Corporation SA".into(),
        changed_fields: vec!["legal_name".into()],
        ..Default::default()
    })
    .await;
    let review_meta = meta(
        pb::Origin::Review,
        pb::EntityRef::new("tg", "document", &doc_id),
    );
    env.publish(pb::ReviewCompleted {
        meta: review_meta,
        document: Some(pb::TgDocument {
            document_id: doc_id.clone(),
            ..Default::default()
        }),
        outcome: pb::ReviewOutcome::Approved as i32,
        note: "valid until 2027".into(),
        ..Default::default()
    })
    .await;
    env.publish(pb::ReviewIntakeRefused {
        meta: meta(
            pb::Origin::Review,
            pb::EntityRef::new("tg", "document", "doc_x"),
        ),
        document: Some(pb::TgDocument {
            document_id: "doc_x".into(),
            case_id: case_id.clone(),
            file_name: "w9.pdf".into(),
            ..Default::default()
        }),
        reason: "the content does not match its SHA-256".into(),
    })
    .await;
    env.publish(pb::OnboardingStatus {
        meta: meta(
            pb::Origin::Onboarding,
            pb::EntityRef::new("tg", "partner", "ZZ:ACME01"),
        ),
        requirements: vec![pb::OnboardingRequirement {
            key: "tax_form".into(),
            label: "Tax form".into(),
            state: pb::RequirementState::Accepted as i32,
        }],
        internal_steps: vec![pb::InternalStep {
            key: "edi_mapping".into(),
            label: "EDI mapping".into(),
            state: "in_progress".into(),
            task_id: "t1".into(),
        }],
        overall: pb::OnboardingOverall::InProgress as i32,
    })
    .await;
    env.publish(pb::PlannerTaskProgressed {
        meta: meta(
            pb::Origin::Planner,
            pb::EntityRef::new("planner", "task", "t9"),
        ),
        task: Some(pb::TaskRef {
            task_id: "t9".into(),
            title: "Check pallets".into(),
            department: "logistics".into(),
            ..Default::default()
        }),
        tg_case_id: case_id.clone(),
        progress: pb::TaskProgress::Blocked as i32,
        previous: pb::TaskProgress::InProgress as i32,
        ..Default::default()
    })
    .await;
    env.publish(pb::SlaBreached {
        meta: meta(pb::Origin::Sla, pb::EntityRef::new("tg", "case", &case_id)),
        case_id: case_id.clone(),
        partner_notice: "We are late on this case; a supervisor has it now.".into(),
        ..Default::default()
    })
    .await;
    // Once tg-egress holds a token, it expires: the next call gets a 401, refreshes the
    // token, and goes through.
    tgb_testkit::eventually("a first write", tgb_testkit::HANG_GUARD, || async {
        (tg.snapshot().milestones.len() == 1).then_some(())
    })
    .await
    .unwrap();
    env.sandbox.identity().expire_all_tokens();
    env.publish(pb::DynCaseResolved {
        meta: m("incident", "inc-1"),
        incident_id: "inc-1".into(),
        tg_case_id: case_id.clone(),
        resolution_subject: "Replacement shipped".into(),
        resolution_description: "Tracking 1Z999".into(),
        statuscode: 5,
    })
    .await;

    tgb_testkit::eventually("everything written", tgb_testkit::HANG_GUARD, || async {
        let s = tg.snapshot();
        let partner = &s.partners["ZZ:ACME01"];
        let done = s.milestones.len() == 1
            && s.scorecards.contains_key("ZZ:ACME01/2026-11")
            && s.disputes[&dispute_id].status == "resolved"
            && partner.legal_name == "Acme Corporation SA"
            && partner.onboarding_status.is_some()
            && !s.documents[&doc_id].reviews.is_empty()
            && s.cases[&case_id].status == "resolved"
            && env.api_comments(&case_id).len() == 4;
        done.then_some(s)
    })
    .await
    .map(|s| {
        assert_eq!(s.milestones[0]["milestone"], "shipment_released");
        assert_eq!(s.milestones[0]["order_ref"], "PO-77");
        assert_eq!(
            s.disputes[&dispute_id].resolution_note.as_deref(),
            Some("Credit note CN-4")
        );
        assert_eq!(s.documents[&doc_id].reviews[0]["outcome"], "approved");
        assert_eq!(
            s.partners["ZZ:ACME01"].onboarding_status.as_ref().unwrap()["overall"],
            "in_progress"
        );
    })
    .unwrap();
    let comments = env.api_comments(&case_id);
    assert!(
        comments
            .iter()
            .any(|c| c.contains("w9.pdf") && c.contains("upload it again"))
    );
    assert!(
        comments
            .iter()
            .any(|c| c == "Task \"Check pallets\" (logistics) is blocked.")
    );
    assert!(comments.iter().any(|c| c.starts_with("We are late")));
    assert!(
        comments
            .iter()
            .any(|c| c.starts_with("Resolved: Replacement shipped"))
    );
    let unauthorized = env
        .sandbox
        .calls()
        .of_system("tg")
        .iter()
        .filter(|c| c.status == 401)
        .count();
    assert!(
        unauthorized >= 1,
        "the expired token met a 401 and was refreshed"
    );
    egress.stop().await;
}

#[tokio::test]
async fn a_refused_write_goes_to_the_dlq_with_tgs_answer() {
    let env = Env::start().await;
    let egress = env.egress(&env.sandbox.tg_api_url()).await;
    // A comment on a case TG does not have: 404, permanent.
    env.publish(crate::support::note("C-404", "lost")).await;
    let js = env.bus.jetstream();
    let message = tgb_testkit::eventually("dead-lettered", tgb_testkit::HANG_GUARD, || async {
        let stream = js.get_stream("TGB_DLQ").await.ok()?;
        stream.get_raw_message(1).await.ok()
    })
    .await
    .unwrap();
    let error = message
        .headers
        .get("tgb-error")
        .unwrap()
        .as_str()
        .to_owned();
    assert!(
        error.contains("404") && error.contains("not_found"),
        "{error}"
    );
    assert_eq!(
        message.headers.get("tgb-error-kind").unwrap().as_str(),
        "permanent"
    );
    egress.stop().await;
}

fn prost_types_now() -> prost_types::Timestamp {
    prost_types::Timestamp::from(std::time::SystemTime::now())
}

#[tokio::test]
async fn a_refused_secret_stops_the_consumer_and_readyz_says_why_without_dead_letters() {
    let env = Env::start().await;
    let case = env.raise_case("Pallets short");
    // TG's token endpoint refuses this secret (401): no request of this identity can succeed
    // until someone fixes it, so the consumer stops instead of dead-lettering every message.
    let egress = env
        .egress_with(
            &env.sandbox.tg_api_url(),
            &[("TGB_TG_CLIENT_SECRET", "a-revoked-secret")],
        )
        .await;
    env.publish(crate::support::note(&case, "first")).await;
    env.publish(crate::support::note(&case, "second")).await;
    let http = reqwest::Client::new();
    let reason = tgb_testkit::eventually(
        "/readyz names the stopped consumer",
        tgb_testkit::HANG_GUARD,
        || async {
            let r = http
                .get(format!("{}/readyz", egress.base))
                .send()
                .await
                .ok()?;
            if r.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE {
                return None;
            }
            let body: serde_json::Value = r.json().await.ok()?;
            let reason = body["reason"].as_str()?.to_owned();
            reason
                .contains("consumer tg-egress stopped")
                .then_some(reason)
        },
    )
    .await
    .unwrap();
    assert!(reason.contains("refused"), "{reason}");
    assert!(
        !reason.contains("a-revoked-secret"),
        "the secret is not in the reason"
    );
    // The service still serves (health, metrics) while its consumer is stopped.
    let health = http
        .get(format!("{}/healthz", egress.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), reqwest::StatusCode::OK);
    assert!(!egress.task.is_finished());
    // Nothing was dead-lettered: both notes wait in the stream for the fixed secret.
    let js = env.bus.jetstream();
    let mut dlq = js.get_stream("TGB_DLQ").await.unwrap();
    assert_eq!(dlq.info().await.unwrap().state.messages, 0);
    assert!(env.api_comments(&case).is_empty());
    egress.stop().await;

    // With the secret fixed, a restart writes both notes.
    let egress = env.egress(&env.sandbox.tg_api_url()).await;
    tgb_testkit::eventually("both notes in TG", tgb_testkit::HANG_GUARD, || async {
        (env.api_comments(&case).len() == 2).then_some(())
    })
    .await
    .unwrap();
    egress.stop().await;
}
