use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tgb_proto::*;
use tgb_testkit::eventually;

use crate::support::*;

fn case(id: &str, category: CaseCategory, priority: CasePriority) -> TgCase {
    TgCase {
        case_id: id.into(),
        revision: 1,
        title: "ASN missing for PO 4711".into(),
        description: "The ASN never arrived.".into(),
        category: category as i32,
        priority: priority as i32,
        document_ids: vec!["D-1".into()],
        order_ref: "PO-4711".into(),
        ..Default::default()
    }
}

fn opened(c: TgCase, partner: PartnerRef) -> TgCaseOpened {
    TgCaseOpened {
        meta: Some(meta(Origin::Tg, &c.case_id.clone(), partner)),
        case: Some(c),
    }
}

#[tokio::test]
async fn p1_case_opened_makes_one_routed_triage_task_and_updates_follow_without_echo() {
    let mut w = World::start().await;
    w.start_adapter(None, &[]);
    let before = w.graph_work_calls();
    w.publish(opened(
        case(
            "C-100",
            CaseCategory::ShipmentDiscrepancy,
            CasePriority::High,
        ),
        globex(),
    ))
    .await;
    let created = w
        .wait_seen::<PlannerTaskCreated, _>("created", |e| e.tg_case_id == "C-100")
        .await;
    let task_id = created.task.unwrap().task_id;
    // The announcement goes out while the details are written: they complete after it.
    eventually("details written", tgb_testkit::HANG_GUARD, || async {
        let (_, details) = w.sandbox.planner().get_task(&task_id)?;
        details["description"]
            .as_str()
            .is_some_and(|d| !d.is_empty())
            .then_some(())
    })
    .await
    .unwrap();
    let (task, details) = w.sandbox.planner().get_task(&task_id).unwrap();
    let per_task = w.graph_work_calls() - before;
    assert_eq!(
        per_task, 3,
        "POST task, GET details (their ETag), PATCH details"
    );
    assert_eq!(task["title"], "[C-100] Globex: ASN missing for PO 4711");
    assert_eq!(task["priority"], 3, "high → important");
    assert_eq!(task["bucketId"], "bKtTriage000000000000000000A");
    assert!(task["assignments"]["2a1b0c3d-0000-4000-8000-000000000101"].is_object());
    assert!(task["dueDateTime"].is_string());
    assert!(details["references"]["https%3A//tg%2Eexample/cases/C-100"].is_object());
    assert!(details["references"]["https%3A//tg%2Eexample/documents/D-1"].is_object());
    assert!(
        details["description"]
            .as_str()
            .unwrap()
            .contains("ASN never arrived")
    );
    eprintln!("FIGURE graph requests per triage task created (poller excluded): {per_task}");

    // A strategic partner's urgent case goes to escalations with the Escalated label.
    w.publish(opened(
        case("C-101", CaseCategory::Order, CasePriority::Urgent),
        acme(),
    ))
    .await;
    let t = &w.wait_tasks(ISSUES, "[C-101]", 1).await[0];
    assert_eq!(t["bucketId"], "bKtEscalations0000000000000A");
    assert_eq!(t["priority"], 1);
    assert_eq!(t["appliedCategories"]["category4"], true);

    // Let a poll observe the task, then the case is updated: title, priority, a new document.
    let progressed_before = w.seen::<PlannerTaskProgressed>().len();
    let mut c = case(
        "C-100",
        CaseCategory::ShipmentDiscrepancy,
        CasePriority::Urgent,
    );
    c.title = "ASN missing for PO 4711 and 4712".into();
    c.document_ids.push("D-2".into());
    c.revision = 2;
    w.publish(TgCaseUpdated {
        meta: Some(meta(Origin::Tg, "C-100", globex())),
        case: Some(c),
    })
    .await;
    eventually("task updated", tgb_testkit::HANG_GUARD, || async {
        let (t, d) = w.sandbox.planner().get_task(&task_id)?;
        (t["priority"] == 1
            && t["title"] == "[C-100] Globex: ASN missing for PO 4711 and 4712"
            && d["references"]["https%3A//tg%2Eexample/documents/D-2"].is_object())
        .then_some(())
    })
    .await
    .unwrap();
    // The poll after tg-bridge's own update sees the change as an echo and emits nothing.
    eventually("echo counted", tgb_testkit::HANG_GUARD, || async {
        (w.sandbox.planner().get_task(&task_id).is_some() && scrape_echoes(&w).await > 0.0)
            .then_some(())
    })
    .await
    .unwrap();
    assert_eq!(
        w.seen::<PlannerTaskProgressed>().len(),
        progressed_before,
        "no progress event for our own write"
    );
    assert_eq!(
        w.tasks(ISSUES)
            .iter()
            .filter(|t| t["title"].as_str().unwrap().starts_with("[C-100]"))
            .count(),
        1
    );
    assert!(
        w.graph_400s().is_empty(),
        "bodies refused: {:?}",
        w.graph_400s()
    );
    w.stop_adapter().await;
}

async fn scrape_echoes(_w: &World) -> f64 {
    let text = tgb_runtime::metrics::install().render();
    text.lines()
        .filter(|l| l.starts_with("tgb_echoes_suppressed_total{") && l.contains("target=\"graph\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn p2_a_task_moved_to_blocked_produces_exactly_one_blocked_progress_event() {
    let mut w = World::start().await;
    w.start_adapter(None, &[]);
    w.publish(opened(
        case("C-200", CaseCategory::Pricing, CasePriority::Normal),
        globex(),
    ))
    .await;
    let created = w
        .wait_seen::<PlannerTaskCreated, _>("created", |e| e.tg_case_id == "C-200")
        .await;
    let task_id = created.task.unwrap().task_id;
    // Wait until the poller has listed the task (its own creation is never progress).
    w.wait_polled_twice(ISSUES).await;

    let calls_before = w.graph_work_calls();
    let mut delays = Vec::new();
    // Measure: in progress, blocked, assignee added, completed; each one event.
    let changes = [
        (json!({"percentComplete": 50}), TaskProgress::InProgress),
        (
            json!({"appliedCategories": {"category1": true}}),
            TaskProgress::Blocked,
        ),
        (
            json!({"appliedCategories": {"category1": false}, "assignments": {"2a1b0c3d-0000-4000-8000-000000000103": {"@odata.type": "#microsoft.graph.plannerAssignment", "orderHint": " !"}}}),
            TaskProgress::InProgress,
        ),
        (json!({"percentComplete": 100}), TaskProgress::Completed),
    ];
    for (i, (patch, expect)) in changes.into_iter().enumerate() {
        let at = Instant::now();
        w.edit_as_user(&task_id, patch);
        let n = i + 1;
        let got = eventually("progressed", tgb_testkit::HANG_GUARD, || async {
            let seen = w.seen::<PlannerTaskProgressed>();
            (seen.len() >= n).then(|| seen[n - 1].clone())
        })
        .await
        .unwrap();
        delays.push(at.elapsed());
        assert_eq!(got.progress(), expect, "change {n}");
        assert_eq!(got.tg_case_id, "C-200");
        if expect == TaskProgress::Blocked {
            assert_eq!(got.labels, vec!["Blocked".to_owned()]);
            assert_eq!(got.previous(), TaskProgress::InProgress);
        }
        if n == 3 {
            assert_eq!(
                got.added_assignees,
                vec!["2a1b0c3d-0000-4000-8000-000000000103".to_owned()]
            );
        }
    }
    // Several more poll cycles: still exactly one event per change.
    let cycles_from = w.graph_calls();
    eventually("more polls", tgb_testkit::HANG_GUARD, || async {
        (w.graph_calls() >= cycles_from + 6).then_some(())
    })
    .await
    .unwrap();
    let events = w.seen::<PlannerTaskProgressed>();
    assert_eq!(events.len(), 4, "{events:?}");
    assert_eq!(
        events
            .iter()
            .filter(|e| e.progress() == TaskProgress::Blocked)
            .count(),
        1
    );
    delays.sort();
    eprintln!("FIGURE planner change → planner.task.progressed delays (poll 50 ms): {delays:?}");
    assert_eq!(
        w.graph_work_calls(),
        calls_before,
        "detecting a change needs no request besides the plan poll"
    );
    assert!(w.graph_400s().is_empty());
    w.stop_adapter().await;
}

#[tokio::test]
async fn a_create_retried_after_a_crash_between_post_and_link_leaves_exactly_one_task() {
    let mut w = World::start().await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let hook: planner_adapter::AfterPost = Arc::new(move |id: &str| {
        let _ = tx.send(id.to_owned());
        // The adapter "crashes" here: it never goes on.
        Box::pin(std::future::pending::<()>())
    });
    w.start_adapter(Some(hook), &[]);
    w.publish(opened(
        case("C-300", CaseCategory::Order, CasePriority::Normal),
        globex(),
    ))
    .await;
    let posted = tokio::time::timeout(tgb_testkit::HANG_GUARD, rx.recv())
        .await
        .unwrap()
        .unwrap();
    // Abort the adapter hard after the POST, before the link is stored.
    let (_token, handle) = w.adapter.take().unwrap();
    handle.abort();
    let _ = handle.await;
    assert_eq!(w.wait_tasks(ISSUES, "[C-300]", 1).await.len(), 1);

    // Restart: the message is redelivered; the intent makes it look for the marker first.
    w.start_adapter(None, &[]);
    let created = w
        .wait_seen::<PlannerTaskCreated, _>("linked", |e| e.tg_case_id == "C-300")
        .await;
    assert_eq!(
        created.task.unwrap().task_id,
        posted,
        "the earlier task was adopted"
    );
    // The announcement goes out while the details are written: they complete after it.
    let details = eventually("details completed", tgb_testkit::HANG_GUARD, || async {
        let (_, details) = w.sandbox.planner().get_task(&posted)?;
        details["references"]["https%3A//tg%2Eexample/cases/C-300"]
            .is_object()
            .then_some(details)
    })
    .await
    .unwrap();
    assert!(
        details["description"]
            .as_str()
            .unwrap_or_default()
            .contains("The ASN never arrived."),
        "description written: {details}"
    );
    // Another redelivery (an update) still finds the link.
    w.publish(TgCaseUpdated {
        meta: Some(meta(Origin::Tg, "C-300", globex())),
        case: Some(case("C-300", CaseCategory::Order, CasePriority::Low)),
    })
    .await;
    eventually("updated", tgb_testkit::HANG_GUARD, || async {
        (w.sandbox.planner().get_task(&posted)?.0["priority"] == 9).then_some(())
    })
    .await
    .unwrap();
    let all: Vec<_> = w
        .tasks(ISSUES)
        .into_iter()
        .filter(|t| t["title"].as_str().unwrap().starts_with("[C-300]"))
        .collect();
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(
        w.sandbox
            .calls()
            .of_system("graph")
            .iter()
            .filter(|c| c.method == "POST" && c.path.ends_with("/planner/tasks"))
            .count(),
        1
    );
    w.stop_adapter().await;
}

#[tokio::test]
async fn a_post_answered_503_is_retried_after_the_settle_time_not_the_lease() {
    let mut w = World::start().await;
    // The lease is far longer than the test: only the settle time can let the retry create.
    w.start_adapter(
        None,
        &[
            ("TGB_ROUTING__GRAPH__INTENT_LEASE_SECS", "3600"),
            ("TGB_ROUTING__GRAPH__INTENT_SETTLE_SECS", "1"),
        ],
    );
    let refuse = w
        .sandbox
        .faults()
        .add(
            tgb_sandbox::FaultRule::new(
                "graph",
                tgb_sandbox::Fault::ErrorRate {
                    rate: 1.0,
                    status: 503,
                },
            )
            .method("POST")
            .path_regex("/planner/tasks$"),
        )
        .unwrap();
    w.publish(opened(
        case("C-350", CaseCategory::Order, CasePriority::Normal),
        globex(),
    ))
    .await;
    let post_503 = || {
        w.sandbox
            .calls()
            .of_system("graph")
            .iter()
            .filter(|c| c.method == "POST" && c.path.ends_with("/planner/tasks") && c.status == 503)
            .count()
    };
    eventually("a POST answered 503", tgb_testkit::HANG_GUARD, || async {
        (post_503() > 0).then_some(())
    })
    .await
    .unwrap();
    assert!(w.sandbox.faults().remove(refuse));
    let created = w
        .wait_seen::<PlannerTaskCreated, _>("created after the refusal", |e| {
            e.tg_case_id == "C-350"
        })
        .await;
    let tasks = w.wait_tasks(ISSUES, "[C-350]", 1).await;
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(
        tasks[0]["id"].as_str(),
        Some(created.task.unwrap().task_id.as_str())
    );
    w.stop_adapter().await;
}

#[tokio::test]
async fn a_stale_etag_race_ends_with_both_changes_applied() {
    let mut w = World::start().await;
    w.start_adapter(None, &[]);
    w.publish(opened(
        case("C-400", CaseCategory::Order, CasePriority::Normal),
        globex(),
    ))
    .await;
    let created = w
        .wait_seen::<PlannerTaskCreated, _>("created", |e| e.tg_case_id == "C-400")
        .await;
    let task_id = created.task.unwrap().task_id;
    // Someone else completes half the work first; our update must keep it.
    w.sandbox.planner().force_etag_races_with(
        1,
        json!({"percentComplete": 50, "appliedCategories": {"category1": true}}),
    );
    w.publish(TgCaseUpdated {
        meta: Some(meta(Origin::Tg, "C-400", globex())),
        case: Some(case("C-400", CaseCategory::Order, CasePriority::Urgent)),
    })
    .await;
    let t = eventually("our change", tgb_testkit::HANG_GUARD, || async {
        let (t, _) = w.sandbox.planner().get_task(&task_id)?;
        (t["priority"] == 1).then_some(t)
    })
    .await
    .unwrap();
    assert_eq!(t["percentComplete"], 50, "their change kept");
    assert_eq!(
        t["appliedCategories"]["category1"], true,
        "their change kept"
    );
    assert_eq!(w.sandbox.planner().pending_etag_races(), 0);
    assert!(
        w.sandbox
            .calls()
            .of_system("graph")
            .iter()
            .any(|c| c.status == 412),
        "the race happened"
    );
    // Their change is a real change: reported as blocked once.
    let ev = w
        .wait_seen::<PlannerTaskProgressed, _>("progress", |e| e.tg_case_id == "C-400")
        .await;
    assert_eq!(ev.progress(), TaskProgress::Blocked);
    w.stop_adapter().await;
}

#[tokio::test]
async fn a_429_burst_delays_and_loses_nothing() {
    let mut w = World::start().await;
    w.start_adapter(None, &[]);
    w.sandbox.planner().throttle_next(6, 1);
    let started = Instant::now();
    for i in 0..5 {
        w.publish(opened(
            case(
                &format!("C-5{i:02}"),
                CaseCategory::Order,
                CasePriority::Normal,
            ),
            globex(),
        ))
        .await;
    }
    for i in 0..5 {
        w.wait_tasks(ISSUES, &format!("[C-5{i:02}]"), 1).await;
        w.wait_seen::<PlannerTaskCreated, _>("created", |e| e.tg_case_id == format!("C-5{i:02}"))
            .await;
    }
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was honoured"
    );
    let throttled = w
        .sandbox
        .calls()
        .of_system("graph")
        .iter()
        .filter(|c| c.status == 429)
        .count();
    assert!(throttled >= 1);
    for i in 0..5 {
        let n = w
            .tasks(ISSUES)
            .iter()
            .filter(|t| {
                t["title"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("[C-5{i:02}]"))
            })
            .count();
        assert_eq!(n, 1, "C-5{i:02}");
    }
    assert!(w.graph_400s().is_empty());
    w.stop_adapter().await;
}

#[tokio::test]
async fn p4_an_exception_makes_one_task_per_department_and_reports_when_all_are_complete() {
    let mut w = World::start().await;
    w.start_adapter(None, &[]);
    let before = w.graph_work_calls();
    let ex = DynException {
        exception_id: "E-1".into(),
        kind: ExceptionKind::InvoiceException as i32,
        title: "Invoice 991 does not match PO 4711".into(),
        description: "Price differs by 4%.".into(),
        invoice_ref: "INV-991".into(),
        priority: CasePriority::High as i32,
        departments: vec!["procurement".into(), "logistics".into(), "finance".into()],
        tg_case_id: "C-600".into(),
        status: "open".into(),
        ..Default::default()
    };
    w.publish(DynExceptionRaised {
        meta: Some(meta(Origin::Dyn, "C-600", globex())),
        exception: Some(ex),
    })
    .await;
    let tasks = w.wait_tasks(ISSUES, "[EX-E-1/", 3).await;
    eventually("details", tgb_testkit::HANG_GUARD, || async {
        tasks
            .iter()
            .all(|t| {
                w.sandbox
                    .planner()
                    .get_task(t["id"].as_str().unwrap())
                    .is_some_and(|(_, d)| d["checklist"].as_object().is_some_and(|c| c.len() == 2))
            })
            .then_some(())
    })
    .await
    .unwrap();
    eprintln!(
        "FIGURE graph requests for 3 department tasks (batched, poller excluded): {}",
        w.graph_work_calls() - before
    );
    eventually("announced", tgb_testkit::HANG_GUARD, || async {
        (w.seen::<PlannerTaskCreated>().len() == 3).then_some(())
    })
    .await
    .unwrap();
    for (i, t) in tasks.iter().enumerate() {
        w.edit_as_user(t["id"].as_str().unwrap(), json!({"percentComplete": 100}));
        let n = i + 1;
        eventually("progress", tgb_testkit::HANG_GUARD, || async {
            (w.seen::<PlannerTaskProgressed>()
                .iter()
                .filter(|e| e.progress() == TaskProgress::Completed)
                .count()
                == n)
                .then_some(())
        })
        .await
        .unwrap();
        if n < 3 {
            assert!(w.seen::<PlannerExceptionCompleted>().is_empty());
        }
    }
    let done = w
        .wait_seen::<PlannerExceptionCompleted, _>("completed", |_| true)
        .await;
    assert_eq!(done.tg_case_id, "C-600");
    assert_eq!(done.exception_id, "E-1");
    assert_eq!(done.tasks.len(), 3);
    assert!(
        w.seen::<PlannerTaskProgressed>()
            .iter()
            .all(|e| e.meta.as_ref().unwrap().correlation_id == "C-600")
    );
    assert!(w.graph_400s().is_empty(), "{:?}", w.graph_400s());
    w.stop_adapter().await;
}

#[tokio::test]
async fn p7_an_action_item_becomes_a_task_for_the_mapped_owner_with_its_due_date() {
    let mut w = World::start().await;
    w.start_adapter(None, &[]);
    w.publish(TgActionItemFlagged {
        meta: Some(meta(Origin::Tg, "C-700", globex())),
        thread_id: "TH-1".into(),
        action_item_id: "AI-1".into(),
        text: "Send the corrected ASN".into(),
        owner_hint: "Pat@example.com".into(),
        due_on: "2030-05-04".into(),
        case_id: "C-700".into(),
    })
    .await;
    let t = &w.wait_tasks(ISSUES, "[AI AI-1]", 1).await[0];
    assert!(t["assignments"]["2a1b0c3d-0000-4000-8000-000000000102"].is_object());
    assert!(t["dueDateTime"].as_str().unwrap().starts_with("2030-05-04"));
    w.stop_adapter().await;
}

#[tokio::test]
async fn p3_p5_p6_escalation_review_and_onboarding_tasks_are_created_and_review_labels_reported() {
    let mut w = World::start().await;
    w.start_adapter(None, &[]);
    w.publish(SlaBreached {
        meta: Some(meta(Origin::Sla, "C-800", globex())),
        case_id: "C-800".into(),
        target: SlaTarget::Resolution as i32,
        priority: CasePriority::High as i32,
        level: 2,
        case_title: "ASN missing".into(),
        next_steps: vec!["Call the partner".into()],
        ..Default::default()
    })
    .await;
    let esc = &w.wait_tasks(ISSUES, "[C-800 L2]", 1).await[0];
    assert_eq!(esc["bucketId"], "bKtEscalations0000000000000A");
    assert_eq!(esc["appliedCategories"]["category4"], true);

    w.publish(ReviewRequested {
        meta: Some(meta(Origin::Review, "ZZ:GLOBEX", globex())),
        document: Some(TgDocument {
            document_id: "D-9".into(),
            file_name: "w9.pdf".into(),
            doc_type: DocType::TaxForm as i32,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    let review = w
        .wait_tasks("pLnOnboarding000000000000000", "[doc D-9]", 1)
        .await[0]
        .clone();
    let id = review["id"].as_str().unwrap().to_owned();
    w.wait_seen::<PlannerTaskCreated, _>("review created", |e| {
        e.task.as_ref().is_some_and(|t| t.task_id == id)
    })
    .await;
    w.wait_polled_twice("pLnOnboarding000000000000000").await;
    w.edit_as_user(
        &id,
        json!({"percentComplete": 100, "appliedCategories": {"category2": true}}),
    );
    let ev = w
        .wait_seen::<PlannerTaskProgressed, _>("review outcome", |e| {
            e.task.as_ref().is_some_and(|t| t.task_id == id)
        })
        .await;
    assert_eq!(ev.progress(), TaskProgress::Completed);
    assert_eq!(ev.labels, vec!["Approved".to_owned()]);
    assert_eq!(ev.task.unwrap().kind(), TaskKind::Review);

    w.publish(OnboardingStepsRequested {
        meta: Some(meta(Origin::Onboarding, "ZZ:GLOBEX", globex())),
        steps: vec![
            InternalStep {
                key: "account_setup".into(),
                label: "Account setup".into(),
                state: "pending".into(),
                task_id: String::new(),
            },
            InternalStep {
                key: "edi_mapping".into(),
                label: "EDI mapping".into(),
                state: "pending".into(),
                task_id: String::new(),
            },
        ],
        ..Default::default()
    })
    .await;
    let steps = w
        .wait_tasks("pLnOnboarding000000000000000", "[ZZ:GLOBEX ", 2)
        .await;
    assert!(
        steps
            .iter()
            .any(|t| t["bucketId"] == "bKtEdiMapping00000000000000A")
    );
    assert!(w.graph_400s().is_empty(), "{:?}", w.graph_400s());
    w.stop_adapter().await;
}

#[tokio::test]
async fn a_case_opened_again_after_the_duplicate_window_updates_its_one_task() {
    let mut w = World::start().await;
    w.start_adapter(None, &[]);
    w.publish(opened(
        case(
            "C-120",
            CaseCategory::ShipmentDiscrepancy,
            CasePriority::Normal,
        ),
        globex(),
    ))
    .await;
    let created = w
        .wait_seen::<PlannerTaskCreated, _>("created", |e| e.tg_case_id == "C-120")
        .await;
    let task_id = created.task.unwrap().task_id;
    assert_eq!(crate::details::posts(&w), 1);

    // TG sends the case as new again, past the duplicate window: the first delivery of a
    // `tg.case.opened` (presumed new: its link read while the intent is written) for a case
    // whose task exists.
    let mut again = case(
        "C-120",
        CaseCategory::ShipmentDiscrepancy,
        CasePriority::Normal,
    );
    again.revision = 2;
    again.title = "ASN missing for PO 4711, sent again".into();
    w.publish(opened(again, globex())).await;
    eventually("the one task updated", tgb_testkit::HANG_GUARD, || async {
        let (t, _) = w.sandbox.planner().get_task(&task_id)?;
        (t["title"] == "[C-120] Globex: ASN missing for PO 4711, sent again").then_some(())
    })
    .await
    .unwrap();
    w.stop_adapter().await;
    assert_eq!(crate::details::posts(&w), 1, "no second POST");
    assert_eq!(
        w.tasks(ISSUES)
            .iter()
            .filter(|t| t["title"].as_str().unwrap().starts_with("[C-120]"))
            .count(),
        1
    );
    assert_eq!(
        w.seen::<PlannerTaskCreated>()
            .iter()
            .filter(|e| e.tg_case_id == "C-120")
            .count(),
        1,
        "announced once"
    );
}

/// The announcements of a triage task stored in `TGB_EVENTS` (what the consumers of
/// `planner.task.created` get), not the copies a core subscriber sees.
async fn stored_announcements(w: &World, case_id: &str) -> usize {
    w.stored::<PlannerTaskCreated>()
        .await
        .iter()
        .filter(|e| e.tg_case_id == case_id)
        .count()
}

/// `TGB_EVENTS` takes every event subject but `planner.task.created` (`refuse = true`): a
/// publish of the announcement gets no PubAck, as while a broker node rejoins its cluster.
async fn refuse_announcements(w: &World, refuse: bool) {
    refuse_subject(w, PlannerTaskCreated::SUBJECT, refuse).await;
}

/// `TGB_EVENTS` takes every event subject but `subject` (`refuse = true`): its publishes get no
/// PubAck.
async fn refuse_subject(w: &World, subject: &str, refuse: bool) {
    let subjects = if refuse {
        SUBJECTS
            .iter()
            .map(|(s, _)| (*s).to_owned())
            .filter(|s| s != subject)
            .collect()
    } else {
        vec![tgb_bus::names::EVENTS_SUBJECTS.to_owned()]
    };
    let js = w.bus.jetstream();
    tgb_testkit::set_stream_subjects(js, tgb_bus::names::EVENTS_STREAM, subjects).await;
}

#[tokio::test]
async fn a_triage_task_whose_announcement_failed_is_announced_on_the_redelivery() {
    let mut w = World::start().await;
    w.start_adapter(None, &[]);
    // A first task: the adapter is consuming and the stream is in place.
    w.publish(opened(
        case(
            "C-140",
            CaseCategory::ShipmentDiscrepancy,
            CasePriority::Normal,
        ),
        globex(),
    ))
    .await;
    w.wait_seen::<PlannerTaskCreated, _>("created", |e| e.tg_case_id == "C-140")
        .await;

    refuse_announcements(&w, true).await;
    w.publish(opened(
        case(
            "C-141",
            CaseCategory::ShipmentDiscrepancy,
            CasePriority::Normal,
        ),
        globex(),
    ))
    .await;
    // The task is created, its announcement refused: the delivery fails and is retried.
    let retried = eventually(
        "the delivery retried after its announcement was refused",
        tgb_testkit::HANG_GUARD,
        || async {
            let h = tgb_bus::ledger::history(w.bus.jetstream(), "C-141")
                .await
                .ok()?;
            h.into_iter().find(|e| {
                e.consumer == "planner-adapter" && e.decision == tgb_bus::ledger::Decision::Retried
            })
        },
    )
    .await
    .unwrap();
    assert_eq!(w.wait_tasks(ISSUES, "[C-141]", 1).await.len(), 1);
    refuse_announcements(&w, false).await;

    eventually(
        "the task announced on the redelivery",
        tgb_testkit::HANG_GUARD,
        || async { (stored_announcements(&w, "C-141").await == 1).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e} (the failed delivery: {})", retried.detail));
    w.stop_adapter().await;
    assert_eq!(crate::details::posts(&w), 2, "one POST per case");
    assert_eq!(
        w.tasks(ISSUES)
            .iter()
            .filter(|t| t["title"].as_str().unwrap().starts_with("[C-141]"))
            .count(),
        1
    );
    assert_eq!(stored_announcements(&w, "C-141").await, 1, "announced once");
}

#[tokio::test]
async fn p4_a_group_completion_refused_by_the_broker_is_published_at_a_later_poll() {
    let mut w = World::start().await;
    w.start_adapter(None, &[]);
    let ex = DynException {
        exception_id: "E-2".into(),
        kind: ExceptionKind::InvoiceException as i32,
        title: "Invoice 992 does not match PO 4712".into(),
        description: "Quantity differs.".into(),
        priority: CasePriority::High as i32,
        departments: vec!["procurement".into(), "finance".into()],
        tg_case_id: "C-610".into(),
        status: "open".into(),
        ..Default::default()
    };
    w.publish(DynExceptionRaised {
        meta: Some(meta(Origin::Dyn, "C-610", globex())),
        exception: Some(ex),
    })
    .await;
    let tasks = w.wait_tasks(ISSUES, "[EX-E-2/", 2).await;
    eventually("announced", tgb_testkit::HANG_GUARD, || async {
        (w.stored::<PlannerTaskCreated>().await.len() == 2).then_some(())
    })
    .await
    .unwrap();

    // Both tasks completed while the stream refuses the group's completion: the poller
    // publishes the tasks' progress, and the completion is refused.
    refuse_subject(&w, PlannerExceptionCompleted::SUBJECT, true).await;
    for t in &tasks {
        w.edit_as_user(t["id"].as_str().unwrap(), json!({"percentComplete": 100}));
    }
    eventually(
        "both completions stored",
        tgb_testkit::HANG_GUARD,
        || async {
            let done = w
                .stored::<PlannerTaskProgressed>()
                .await
                .iter()
                .filter(|e| e.progress() == TaskProgress::Completed)
                .count();
            (done == 2).then_some(())
        },
    )
    .await
    .unwrap();
    // The group's completion was attempted (a core subscriber saw it) and not stored.
    w.wait_seen::<PlannerExceptionCompleted, _>("the completion attempted", |_| true)
        .await;
    assert!(w.stored::<PlannerExceptionCompleted>().await.is_empty());
    refuse_subject(&w, PlannerExceptionCompleted::SUBJECT, false).await;

    let done = eventually("the completion stored", tgb_testkit::HANG_GUARD, || async {
        let done = w.stored::<PlannerExceptionCompleted>().await;
        (!done.is_empty()).then_some(done)
    })
    .await
    .unwrap();
    w.stop_adapter().await;
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0].exception_id, "E-2");
    assert_eq!(done[0].tasks.len(), 2);
}
