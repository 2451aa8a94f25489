//! A new task whose details PATCH fails: the redelivery finishes the task it created.

use tgb_proto::*;
use tgb_sandbox::{Fault, FaultRule};
use tgb_testkit::eventually;

use crate::support::*;

/// The details of a task (read with GET, written with PATCH).
const DETAILS: &str = "/planner/tasks/[^/]+/details$";

fn opened(id: &str) -> TgCaseOpened {
    TgCaseOpened {
        meta: Some(meta(Origin::Tg, id, globex())),
        case: Some(TgCase {
            case_id: id.into(),
            revision: 1,
            title: "ASN missing for PO 4711".into(),
            description: "The ASN never arrived.".into(),
            category: CaseCategory::ShipmentDiscrepancy as i32,
            priority: CasePriority::Normal as i32,
            document_ids: vec!["D-1".into()],
            ..Default::default()
        }),
    }
}

fn breached(case_id: &str) -> SlaBreached {
    SlaBreached {
        meta: Some(meta(Origin::Sla, case_id, acme())),
        case_id: case_id.into(),
        case_title: "Invoice dispute".into(),
        target: SlaTarget::Resolution as i32,
        level: 1,
        priority: CasePriority::High as i32,
        next_steps: vec!["Call the partner".into(), "Escalate to finance".into()],
        ..Default::default()
    }
}

/// `PATCH /planner/tasks/{id}/details` calls with this status.
fn details_patches(w: &World, status: u16) -> usize {
    w.sandbox
        .calls()
        .of_system("graph")
        .iter()
        .filter(|c| {
            c.method == "PATCH"
                && c.path.contains("/planner/tasks/")
                && c.path.ends_with("/details")
                && c.status == status
        })
        .count()
}

/// The task creates (`POST /planner/tasks`) Graph was sent.
pub(crate) fn posts(w: &World) -> usize {
    w.sandbox
        .calls()
        .of_system("graph")
        .iter()
        .filter(|c| c.method == "POST" && c.path.ends_with("/planner/tasks"))
        .count()
}

/// Answers the next `n` details PATCHes with 503 (the rule goes once `n` were refused).
async fn refuse_details_patches(w: &World, n: usize) {
    let rule = w
        .sandbox
        .faults()
        .add(
            FaultRule::new(
                "graph",
                Fault::ErrorRate {
                    rate: 1.0,
                    status: 503,
                },
            )
            .method("PATCH")
            .path_regex(DETAILS),
        )
        .unwrap();
    let before = details_patches(w, 503);
    eventually(
        &format!("{n} details PATCHes answered 503"),
        tgb_testkit::HANG_GUARD,
        || async { (details_patches(w, 503) >= before + n).then_some(()) },
    )
    .await
    .unwrap();
    assert!(w.sandbox.faults().remove(rule));
}

/// The consumer has settled every message published so far (acked or dead-lettered): none
/// left to deliver, none awaiting an ack or a redelivery.
pub async fn wait_settled(w: &World) {
    let js = w.bus.jetstream().clone();
    eventually("the consumer settled", tgb_testkit::HANG_GUARD, || {
        let js = js.clone();
        async move {
            let stream = js.get_stream(tgb_bus::names::EVENTS_STREAM).await.ok()?;
            let mut c: tgb_bus::async_nats::jetstream::consumer::PullConsumer = stream
                .get_consumer(planner_adapter::handler::CONSUMER)
                .await
                .ok()?;
            let info = c.info().await.ok()?;
            (info.delivered.stream_sequence > 0
                && info.num_ack_pending == 0
                && info.num_pending == 0)
                .then_some(())
        }
    })
    .await
    .unwrap();
}

async fn dlq_depth(w: &World) -> u64 {
    let js = w.bus.jetstream();
    let mut dlq = js.get_stream(tgb_bus::names::DLQ_STREAM).await.unwrap();
    dlq.info().await.unwrap().state.messages
}

/// The one task in `plan` with `marker` (asserted to be one), with its details.
fn the_one_task(w: &World, plan: &str, marker: &str) -> (serde_json::Value, serde_json::Value) {
    let tasks: Vec<_> = w
        .tasks(plan)
        .into_iter()
        .filter(|t| t["title"].as_str().unwrap_or_default().starts_with(marker))
        .collect();
    assert_eq!(tasks.len(), 1, "one task {marker}: {tasks:?}");
    w.sandbox
        .planner()
        .get_task(tasks[0]["id"].as_str().unwrap())
        .unwrap()
}

/// `planner.task.created` of `task` was published, and stored once: each attempt announces
/// the task it created (a redelivery completes a create whose details failed, announcement
/// included), and the stream keeps one per event id.
async fn announced_once(w: &World, task: &serde_json::Value, case_id: &str) {
    let created = w
        .wait_seen::<PlannerTaskCreated, _>("planner.task.created", |e| e.tg_case_id == case_id)
        .await;
    assert_eq!(
        Some(created.task.unwrap().task_id.as_str()),
        task["id"].as_str()
    );
    // The stream may store it a moment after a core subscriber got its copy.
    let stored = eventually(
        "the announcement stored",
        tgb_testkit::HANG_GUARD,
        || async {
            let stored: Vec<_> = w
                .stored::<PlannerTaskCreated>()
                .await
                .into_iter()
                .filter(|e| e.tg_case_id == case_id)
                .collect();
            (!stored.is_empty()).then_some(stored)
        },
    )
    .await
    .unwrap();
    assert_eq!(stored.len(), 1, "announced once: {stored:?}");
    assert_eq!(
        stored[0].task.as_ref().map(|t| t.task_id.as_str()),
        task["id"].as_str()
    );
}

#[tokio::test]
async fn a_triage_details_patch_answered_503_twice_is_redelivered_and_completes_the_one_task() {
    let mut w = World::start().await;
    w.start_adapter(None, &[]);
    w.publish(opened("C-700")).await;
    refuse_details_patches(&w, 2).await;
    wait_settled(&w).await;

    let (task, details) = the_one_task(&w, ISSUES, "[C-700]");
    assert!(
        details["description"]
            .as_str()
            .unwrap_or_default()
            .contains("The ASN never arrived."),
        "description written: {details}"
    );
    assert!(
        details["references"]["https%3A//tg%2Eexample/cases/C-700"].is_object(),
        "the marker reference (the TG case): {details}"
    );
    assert!(details["references"]["https%3A//tg%2Eexample/documents/D-1"].is_object());
    assert_eq!(posts(&w), 1, "created once");
    assert!(details_patches(&w, 200) + details_patches(&w, 204) >= 1);
    assert_eq!(dlq_depth(&w).await, 0, "nothing dead-lettered");
    assert!(w.graph_400s().is_empty(), "{:?}", w.graph_400s());
    announced_once(&w, &task, "C-700").await;
    w.stop_adapter().await;
}

#[tokio::test]
async fn an_escalation_details_patch_answered_503_is_redelivered_and_writes_the_checklist() {
    let mut w = World::start().await;
    w.start_adapter(None, &[]);
    w.publish(breached("C-710")).await;
    refuse_details_patches(&w, 1).await;
    wait_settled(&w).await;

    let (task, details) = the_one_task(&w, ISSUES, "[C-710 L1]");
    assert!(
        details["description"]
            .as_str()
            .unwrap_or_default()
            .contains("Next steps:\n- Call the partner"),
        "description written: {details}"
    );
    let items: Vec<&str> = details["checklist"]
        .as_object()
        .map(|m| m.values().filter_map(|i| i["title"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(items.len(), 2, "checklist: {details}");
    assert!(items.contains(&"Call the partner") && items.contains(&"Escalate to finance"));
    assert!(details["references"]["https%3A//tg%2Eexample/cases/C-710"].is_object());
    assert_eq!(posts(&w), 1, "created once");
    assert_eq!(dlq_depth(&w).await, 0, "nothing dead-lettered");
    announced_once(&w, &task, "C-710").await;
    w.stop_adapter().await;
}

/// planner-adapter's KV view: the link of a TG case, its create intent, the task record.
struct Kv {
    links: tgb_bus::links::Links,
    store: planner_adapter::store::Store,
}

impl Kv {
    async fn of(w: &World) -> Kv {
        Kv {
            links: tgb_bus::links::Links::new(w.bus.kv(tgb_bus::names::KV_LINKS).await.unwrap()),
            store: planner_adapter::store::Store::new(
                w.bus.kv(tgb_bus::names::KV_SYNC).await.unwrap(),
            ),
        }
    }

    async fn linked_task(&self, case_id: &str) -> Option<String> {
        self.links
            .find(
                &tgb_bus::links::Record::new("tg", "case", case_id),
                "planner",
                "task",
            )
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn a_create_stopped_after_its_link_before_its_details_is_completed_after_the_restart() {
    let mut w = World::start().await;
    let kv = Kv::of(&w).await;
    // The details read hangs: the adapter is stopped hard while it waits, after the link.
    let hang = w
        .sandbox
        .faults()
        .add(
            FaultRule::new("graph", Fault::Latency { ms: 3_600_000 })
                .method("GET")
                .path_regex(DETAILS),
        )
        .unwrap();
    w.start_adapter(None, &[]);
    w.publish(opened("C-720")).await;
    let task_id = eventually("the link", tgb_testkit::HANG_GUARD, || async {
        kv.linked_task("C-720").await
    })
    .await
    .unwrap();
    let (_token, handle) = w.adapter.take().unwrap();
    handle.abort();
    let _ = handle.await;
    assert!(w.sandbox.faults().remove(hang));
    assert!(
        kv.store.task(&task_id).await.unwrap().is_none(),
        "no record before the details are written"
    );
    assert!(
        kv.store.intent("tg:case:C-720").await.unwrap().is_some(),
        "the intent stays until the create is complete"
    );

    // Restart: the redelivery finds the link without a record and completes the create.
    w.start_adapter(None, &[]);
    wait_settled(&w).await;
    let (task, details) = the_one_task(&w, ISSUES, "[C-720]");
    assert_eq!(task["id"].as_str(), Some(task_id.as_str()));
    assert!(
        details["description"]
            .as_str()
            .unwrap_or_default()
            .contains("The ASN never arrived."),
        "description written: {details}"
    );
    assert!(details["references"]["https%3A//tg%2Eexample/cases/C-720"].is_object());
    assert_eq!(posts(&w), 1, "created once");
    let fresh =
        planner_adapter::store::Store::new(w.bus.kv(tgb_bus::names::KV_SYNC).await.unwrap());
    let (record, _) = fresh.task(&task_id).await.unwrap().expect("the record");
    assert!(
        record.own_write,
        "the record knows the task as tg-bridge's write"
    );
    // The intent stays (superseded by the link, never read again while the link exists).
    assert_eq!(dlq_depth(&w).await, 0, "nothing dead-lettered");
    announced_once(&w, &task, "C-720").await;
    w.stop_adapter().await;
}
