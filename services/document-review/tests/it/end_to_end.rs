//! P5/D3 and P6 through every service: document-review, planner-adapter (tasks in the sandbox's
//! Planner, people completing them), tg-egress (TG) and dynamics-adapter (the account), all with
//! the shipped configuration.

use std::time::Duration;

use serde_json::json;
use tgb_proto as pb;
use tgb_sandbox::tg::model::{Requirement, UpdateOnboarding, UploadDocument};
use tgb_testkit::eventually;

use crate::support::{Env, onboarding_updated, partner, uploaded};

const WAIT: Duration = tgb_testkit::HANG_GUARD;
const ONBOARDING_PLAN: &str = "pLnOnboarding000000000000000";

fn shipped() -> String {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/tg-bridge.toml");
    std::fs::read_to_string(file).unwrap()
}

/// A person completes a task in Planner (optionally with a label category).
fn complete_as_user(env: &Env, task_id: &str, patch: serde_json::Value) {
    let user =
        tgb_sandbox_planner::Caller::user("2a1b0c3d-0000-4000-8000-000000000102", "Pat Planner");
    env.sandbox
        .planner()
        .update_task_as(&user, task_id, &patch)
        .unwrap();
}

/// Waits until planner-adapter announced the task for `subject` (its record is stored, so the
/// poller attributes later changes to it), and returns the task id.
async fn created_task(env: &Env, kind: pb::TaskKind, subject: &str) -> String {
    eventually("task created", WAIT, || async {
        env.events::<pb::PlannerTaskCreated>()
            .await
            .into_iter()
            .filter_map(|c| c.task)
            .find(|t| t.kind() == kind && t.subject_id == subject)
            .map(|t| t.task_id)
    })
    .await
    .unwrap()
}

fn account(env: &Env, partner_key: &str) -> Option<serde_json::Value> {
    env.sandbox
        .dataverse()
        .rows("account")
        .into_iter()
        .find(|a| a["tgb_partnerkey"] == partner_key)
}

#[tokio::test]
async fn an_approved_compliance_certificate_ends_as_an_annotation_on_the_account_and_approved_in_tg()
 {
    let env = Env::start_with(&shipped(), true).await;
    let up = env
        .sandbox
        .tg()
        .upload_document(UploadDocument {
            partner: Some(partner("E2EDOC")),
            doc_type: Some("compliance_certificate".into()),
            file_name: Some("iso9001-2026.pdf".into()),
            content: Some(b"%PDF-1.7 ISO 9001 certificate".to_vec()),
            expires_on: Some("2099-01-31".into()),
            ..Default::default()
        })
        .unwrap();
    let event = uploaded(&up);
    let document_id = event.document.as_ref().unwrap().document_id.clone();
    env.publish(event).await;

    // The review task, placed by planner-adapter's [routing.review]; the reviewer approves it.
    let task_id = created_task(&env, pb::TaskKind::Review, &document_id).await;
    let task = env
        .sandbox
        .planner()
        .list_tasks(ONBOARDING_PLAN)
        .unwrap()
        .into_iter()
        .find(|t| t["id"] == task_id.as_str())
        .unwrap();
    assert!(
        task["title"].as_str().unwrap().contains(&document_id),
        "{task}"
    );
    complete_as_user(
        &env,
        &task_id,
        json!({"percentComplete": 100, "appliedCategories": {"category2": true}}),
    );

    // TG: the document's review outcome.
    let review = eventually("approved in TG", WAIT, || async {
        env.sandbox
            .tg()
            .document(&document_id)?
            .reviews
            .first()
            .cloned()
    })
    .await
    .unwrap();
    assert_eq!(review["outcome"], "approved");
    // Dynamics: the account is verified and carries a note with the document.
    let note = eventually("annotation on the account", WAIT, || async {
        let account = account(&env, "ZZ:E2EDOC")?;
        let id = account["accountid"].as_str()?.to_owned();
        env.sandbox
            .dataverse()
            .rows("annotation")
            .into_iter()
            .find(|n| {
                n["_objectid_value"] == id.as_str()
                    && n["notetext"]
                        .as_str()
                        .unwrap_or_default()
                        .contains(&document_id)
            })
    })
    .await
    .unwrap();
    assert!(
        note["subject"]
            .as_str()
            .unwrap()
            .contains("iso9001-2026.pdf"),
        "{note}"
    );
    let account = account(&env, "ZZ:E2EDOC").unwrap();
    assert_eq!(account["tgb_compliancecertverified"], true, "{account}");
    env.stop().await;
}

#[tokio::test]
async fn an_onboarding_with_all_steps_done_in_planner_is_complete_in_tg_and_on_the_account() {
    let env = Env::start_with(&shipped(), true).await;
    let p = partner("E2EONB");
    let ev = env
        .sandbox
        .tg()
        .update_onboarding(
            &p,
            UpdateOnboarding {
                requirements: vec![Requirement {
                    key: "w9".into(),
                    label: "W-9 tax form".into(),
                    state: "accepted".into(),
                }],
                profile_complete: true,
                agreements_acknowledged: true,
            },
        )
        .unwrap();
    env.publish(onboarding_updated(&ev)).await;

    // planner-adapter creates the four step tasks; people complete them.
    for key in [
        "account_setup",
        "edi_mapping",
        "compliance_checks",
        "testing",
    ] {
        let task_id = created_task(&env, pb::TaskKind::OnboardingStep, key).await;
        complete_as_user(&env, &task_id, json!({"percentComplete": 100}));
    }

    let status = eventually("complete in TG", WAIT, || async {
        let s = env.sandbox.tg().partner("ZZ:E2EONB")?.onboarding_status?;
        (s["overall"] == "complete").then_some(s)
    })
    .await
    .unwrap();
    let steps = status["internal_steps"].as_array().unwrap();
    assert_eq!(steps.len(), 4);
    assert!(steps.iter().all(|s| s["state"] == "done"), "{status}");
    // Dynamics: the account's onboarding status is Complete.
    eventually("complete on the account", WAIT, || async {
        (account(&env, "ZZ:E2EONB")?["tgb_onboardingstatus"] == 100_000_003).then_some(())
    })
    .await
    .unwrap();
    env.stop().await;
}
