use std::time::Duration;

use tgb_proto as pb;
use tgb_sandbox::tg::model::{Requirement, UpdateOnboarding};
use tgb_testkit::eventually;

use crate::support::{Env, onboarding_updated, partner, progressed};

const WAIT: Duration = tgb_testkit::HANG_GUARD;

fn requirements(state: &str) -> Vec<Requirement> {
    [
        ("tax_form", "W-9 tax form"),
        ("insurance", "Insurance certificate"),
    ]
    .into_iter()
    .map(|(k, l)| Requirement {
        key: k.into(),
        label: l.into(),
        state: state.into(),
    })
    .collect()
}

#[tokio::test]
async fn an_onboarding_with_all_steps_done_reports_complete_on_both_sides() {
    let env = Env::start().await;
    let p = partner("ONB1");
    let tg = env.sandbox.tg();

    // The partner starts onboarding in TG.
    let ev = tg
        .update_onboarding(
            &p,
            UpdateOnboarding {
                requirements: requirements("pending"),
                ..Default::default()
            },
        )
        .unwrap();
    env.publish(onboarding_updated(&ev)).await;

    // The internal checklist is requested once, for planner-adapter to create as tasks.
    let steps = eventually("steps requested", WAIT, || async {
        env.events::<pb::OnboardingStepsRequested>()
            .await
            .into_iter()
            .next()
    })
    .await
    .unwrap();
    let keys: Vec<&str> = steps.steps.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "account_setup",
            "edi_mapping",
            "compliance_checks",
            "testing"
        ]
    );
    assert_eq!(steps.plan_id, "plan-onboarding");
    assert_eq!(
        steps.meta.as_ref().unwrap().partner_key().as_deref(),
        Some("ZZ:ONB1")
    );

    let overall = || async {
        let status = tg.partner("ZZ:ONB1")?.onboarding_status?;
        Some((status["overall"].as_str()?.to_owned(), status))
    };
    let (o, _) = eventually("status in TG", WAIT, || async { overall().await })
        .await
        .unwrap();
    assert_eq!(o, "not_started");

    // The partner completes everything on its side.
    let ev = tg
        .update_onboarding(
            &p,
            UpdateOnboarding {
                requirements: requirements("accepted"),
                profile_complete: true,
                agreements_acknowledged: true,
            },
        )
        .unwrap();
    env.publish(onboarding_updated(&ev)).await;
    eventually("in progress", WAIT, || async {
        overall().await.filter(|(o, _)| o == "in_progress")
    })
    .await
    .unwrap();

    // The internal steps are done one by one in Planner (planner-adapter's events); one blocks
    // on the way.
    let task = |key: &str| pb::TaskRef {
        task_id: format!("task-{key}"),
        plan_id: "plan-onboarding".into(),
        kind: pb::TaskKind::OnboardingStep as i32,
        title: key.into(),
        subject_id: key.into(),
        ..Default::default()
    };
    env.publish(progressed(
        "ONB1",
        task("edi_mapping"),
        pb::TaskProgress::Blocked,
        &[],
    ))
    .await;
    eventually("blocked", WAIT, || async {
        overall().await.filter(|(o, _)| o == "blocked")
    })
    .await
    .unwrap();
    for key in [
        "account_setup",
        "edi_mapping",
        "compliance_checks",
        "testing",
    ] {
        env.publish(progressed(
            "ONB1",
            task(key),
            pb::TaskProgress::Completed,
            &[],
        ))
        .await;
    }
    let (_, status) = eventually("complete", WAIT, || async {
        overall().await.filter(|(o, _)| o == "complete")
    })
    .await
    .unwrap();
    let steps_in_tg = status["internal_steps"].as_array().unwrap();
    assert_eq!(steps_in_tg.len(), 4);
    assert!(steps_in_tg.iter().all(|s| s["state"] == "done"), "{status}");
    let reqs = status["requirements"].as_array().unwrap();
    assert!(reqs.iter().all(|r| r["state"] == "accepted"), "{status}");

    // The same status is on the bus for Dynamics (dynamics-adapter updates the account).
    let last = eventually("complete on the bus", WAIT, || async {
        env.events::<pb::OnboardingStatus>()
            .await
            .pop()
            .filter(|s| s.overall() == pb::OnboardingOverall::Complete)
    })
    .await
    .unwrap();
    assert_eq!(
        last.meta.as_ref().unwrap().partner_key().as_deref(),
        Some("ZZ:ONB1")
    );
    // And the steps were requested exactly once.
    assert_eq!(env.events::<pb::OnboardingStepsRequested>().await.len(), 1);
    env.stop().await;
}
