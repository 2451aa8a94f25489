use tgb::demo::{self, DemoOptions, Target};
use tgb::ops;
use tgb_bus::ledger::Decision;

use crate::support;

/// The demo's timings: Planner polled every 500 ms, SLA ticks every 200 ms.
const FAST: &[(&str, &str)] = &[
    ("TGB_ROUTING__GRAPH__POLL_INTERVAL_MS", "500"),
    ("TGB_SLA__TICK_INTERVAL_MS", "200"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_demo_passes_every_flow_in_process_and_history_tells_a_case_story() {
    let (system, _dir) = support::system(FAST).await;
    let target = Target {
        sandbox: system.sandbox.base_url(),
        control: Some(system.control_url.clone()),
        local_planner: Some((system.sandbox.planner().clone(), system.users.clone())),
    };
    let opts = DemoOptions {
        partners: 1,
        cases: 2,
        flow_timeout: tgb_testkit::HANG_GUARD,
        progress: false,
    };
    let report = demo::run(&target, &opts).await.unwrap();
    println!("{}", demo::render(&report));
    let flows: Vec<&str> = report.flows.iter().map(|f| f.flow.as_str()).collect();
    for flow in [
        "D1", "D2", "D3", "D4", "D5", "D6", "D7", "D8", "P1", "P2", "P3", "P4", "P5", "P6", "P7",
    ] {
        assert!(
            flows.iter().any(|f| f.split('+').any(|x| x == flow)),
            "{flow} is covered"
        );
    }
    for f in &report.flows {
        assert!(f.passed, "{} failed: {}", f.flow, f.arrived);
    }

    // The first case went through D1, P1 and P2: its ledger says so, decision by decision.
    let (_client, js) = ops::jetstream(&system.nats_url).await.unwrap();
    let case = report.cases.first().unwrap().clone();
    // Whether the Planner poller saw tg-bridge's own writes to the triage task before Pat's
    // change depends on when it polled. One more write of ours makes an echo certain: the
    // partner renames the case, planner-adapter renames the task, the poller sees a change
    // that is ours.
    let title = "Pallets short on PO 4471 (renamed)";
    let update: tgb_sandbox::tg::model::UpdateCase =
        serde_json::from_value(serde_json::json!({"title": title})).unwrap();
    system.sandbox.tg().update_case(&case, update).unwrap();
    let history = tgb_testkit::eventually("the case's ledger", tgb_testkit::HANG_GUARD, || {
        let js = js.clone();
        let spec = format!("tg:{case}");
        async move {
            let h = ops::history(&js, &spec).await.ok()?;
            let has = |consumer: &str, subject: &str| {
                h.entries
                    .iter()
                    .any(|e| e.consumer.starts_with(consumer) && e.subject == subject)
            };
            (has("dynamics-adapter", "tgb.v1.tg.case.opened")
                && has("planner-adapter", "tgb.v1.tg.case.opened")
                && has("tg-egress", "tgb.v1.dyn.case.note_added")
                && has("tg-egress", "tgb.v1.dyn.case.status_changed")
                && has("tg-egress", "tgb.v1.planner.task.progressed")
                && h.entries.iter().any(|e| e.decision == Decision::Echo)
                // Consumers state their own decisions too, not only the Planner poller: e.g.
                // sla-monitor finds that Pat's progress changes no clock (a duplicate).
                && h.entries.iter().any(|e| {
                    e.consumer != "planner-adapter-poll"
                        && matches!(e.decision, Decision::Duplicate | Decision::Stale)
                }))
            .then_some(h)
        }
    })
    .await;
    let history = match history {
        Ok(h) => h,
        Err(e) => {
            let h = ops::history(&js, &format!("tg:{case}")).await.unwrap();
            println!("{}", tgb::render::history(&h));
            panic!("{e}");
        }
    };
    println!("{}", tgb::render::history(&history));
    // Every consumer entry names its consumer, event and decision; the Planner poller's entries
    // (no event: it found a change) record the echoes of tg-bridge's own writes it dropped.
    assert!(history.entries.iter().all(|e| !e.consumer.is_empty()
        && (!e.event_id.is_empty() || e.consumer == "planner-adapter-poll")));
    let echo = history
        .entries
        .iter()
        .find(|e| e.decision == Decision::Echo)
        .expect("at least one echo suppressed");
    assert_eq!(echo.consumer, "planner-adapter-poll");
    assert!(echo.entity.starts_with("planner:task:"));
    assert!(
        history
            .entries
            .iter()
            .any(|e| e.decision == Decision::Applied)
    );

    // The same story from the Dynamics side: the incident resolves to the TG case.
    let links = ops::links(&js, &format!("tg:case:{case}")).await.unwrap();
    let incident = links
        .iter()
        .find(|l| l.to == "dataverse.incident")
        .expect("the case is linked to its incident");
    let task = links
        .iter()
        .find(|l| l.to == "planner.task")
        .expect("the case is linked to its triage task");
    // And from the Planner side: the task's link is stored one way, its record names the case.
    let task_links = ops::links(&js, &format!("planner:task:{}", task.id))
        .await
        .unwrap();
    assert!(
        task_links.iter().any(|l| l.to == "tg.case" && l.id == case),
        "{task_links:?}"
    );
    let from_planner = ops::history(&js, &format!("planner:task:{}", task.id))
        .await
        .unwrap();
    assert_eq!(from_planner.correlations.first(), Some(&case));
    let from_dynamics = ops::history(&js, &format!("dataverse:{}", incident.id))
        .await
        .unwrap();
    assert_eq!(from_dynamics.correlations.first(), Some(&case));
    assert!(from_dynamics.entries.len() >= history.entries.len());
    system.stop().await;
}
