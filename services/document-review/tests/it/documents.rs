use std::time::Duration;

use tgb_proto as pb;
use tgb_sandbox::tg::model::{RaiseCase, UploadDocument};
use tgb_testkit::eventually;

use crate::support::{Env, partner, progressed, uploaded};

const WAIT: Duration = tgb_testkit::HANG_GUARD;

#[tokio::test]
async fn a_document_with_a_wrong_digest_is_refused_dead_lettered_and_the_partner_told_once() {
    let env = Env::start().await;
    let case = env
        .sandbox
        .tg()
        .raise_case(RaiseCase::new(partner("DIGEST1"), "Certificate for audit"))
        .unwrap();
    let case_id = case.data["case_id"].as_str().unwrap().to_owned();
    let up = env
        .sandbox
        .tg()
        .upload_document(UploadDocument {
            case_id: Some(case_id.clone()),
            doc_type: Some("compliance_certificate".into()),
            file_name: Some("iso9001.pdf".into()),
            announce_sha256: Some("0".repeat(64)),
            ..Default::default()
        })
        .unwrap();
    let event = uploaded(&up);
    let document_id = event.document.as_ref().unwrap().document_id.clone();
    env.publish(event.clone()).await;

    // The partner is asked to upload it again, on the case.
    let comment = eventually("re-upload comment", WAIT, || async {
        env.sandbox
            .tg()
            .comments(&case_id)
            .into_iter()
            .find(|c| c.source == "api")
    })
    .await
    .unwrap();
    assert!(comment.body.contains("iso9001.pdf"), "{}", comment.body);
    assert!(
        comment.body.contains("Please upload it again"),
        "{}",
        comment.body
    );
    assert!(comment.body.contains("does not match"), "{}", comment.body);
    assert_eq!(comment.visibility, "partner");

    // The same upload delivered again (as after a re-sent webhook: a new event id).
    let mut again = event.clone();
    again.meta.as_mut().unwrap().event_id = ulid::Ulid::new().to_string();
    env.publish(again).await;
    let letters = eventually("two dead letters", WAIT, || async {
        let l = env.dead_letters().await;
        (l.len() == 2).then_some(l)
    })
    .await
    .unwrap();
    for (subject, kind, error) in &letters {
        assert_eq!(subject, "tgb.dlq.document-review.v1.tg.document.uploaded");
        assert_eq!(kind, "permanent");
        assert!(
            error.contains(&document_id) && error.contains("SHA-256"),
            "{error}"
        );
    }
    // One refusal on the bus, one comment in TG.
    let refused = env.events::<pb::ReviewIntakeRefused>().await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    let api_comments = env
        .sandbox
        .tg()
        .comments(&case_id)
        .into_iter()
        .filter(|c| c.source == "api")
        .count();
    assert_eq!(api_comments, 1);
    // Nothing was stored, and no review was requested.
    let store = env.bus.documents().await.unwrap();
    assert!(store.info(&document_id).await.is_err());
    assert!(env.events::<pb::ReviewRequested>().await.is_empty());
    env.stop().await;
}

#[tokio::test]
async fn an_oversize_document_is_refused_with_the_limit_named() {
    let env = Env::start().await;
    let up = env
        .sandbox
        .tg()
        .upload_document(UploadDocument {
            partner: Some(partner("BIG1")),
            doc_type: Some("tax_form".into()),
            generate_size: Some(5000),
            ..Default::default()
        })
        .unwrap();
    let event = uploaded(&up);
    let document_id = event.document.as_ref().unwrap().document_id.clone();
    env.publish(event).await;
    // No case: tg-egress records "needs changes" on the document itself.
    let review = eventually("needs_changes in TG", WAIT, || async {
        env.sandbox
            .tg()
            .document(&document_id)?
            .reviews
            .first()
            .cloned()
    })
    .await
    .unwrap();
    assert_eq!(review["outcome"], "needs_changes");
    let note = review["note"].as_str().unwrap();
    assert!(
        note.contains("5000 bytes") && note.contains("4096"),
        "{note}"
    );
    // The refusal is published before the dead letter is written: wait for it.
    let letters = eventually("dead letter", WAIT, || async {
        let l = env.dead_letters().await;
        (!l.is_empty()).then_some(l)
    })
    .await
    .unwrap();
    assert_eq!(letters.len(), 1);
    assert!(letters[0].2.contains("limit"), "{:?}", letters[0]);
    env.stop().await;
}

#[tokio::test]
async fn an_approved_compliance_certificate_is_stored_reviewed_and_ends_approved_in_tg() {
    let env = Env::start().await;
    let up = env
        .sandbox
        .tg()
        .upload_document(UploadDocument {
            partner: Some(partner("CERT1")),
            doc_type: Some("compliance_certificate".into()),
            file_name: Some("iso14001.pdf".into()),
            content: Some(b"%PDF-1.7 certificate of compliance".to_vec()),
            expires_on: Some("2099-12-31".into()),
            ..Default::default()
        })
        .unwrap();
    let event = uploaded(&up);
    let document_id = event.document.as_ref().unwrap().document_id.clone();
    let uploaded_at = event.meta.as_ref().unwrap().occurred_at.unwrap();
    env.publish(event).await;

    // Review requested, per the compliance_certificate policy: due five days after the upload.
    let requested = eventually("review requested", WAIT, || async {
        env.events::<pb::ReviewRequested>().await.into_iter().next()
    })
    .await
    .unwrap();
    assert_eq!(requested.team, "Compliance");
    assert_eq!(requested.plan_id, "plan-compliance");
    assert_eq!(requested.bucket_id, "bucket-review");
    assert_eq!(requested.assignees, ["reviewer-1"]);
    assert_eq!(requested.object_name, document_id);
    let due = requested.due_at.unwrap();
    assert_eq!(due.seconds - uploaded_at.seconds, 5 * 24 * 3600);
    assert_eq!(
        requested.meta.as_ref().unwrap().partner_key().as_deref(),
        Some("ZZ:CERT1")
    );

    // The content is in the object store, byte for byte.
    let store = env.bus.documents().await.unwrap();
    let mut object = store.get(&document_id).await.unwrap();
    let mut bytes = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut object, &mut bytes)
        .await
        .unwrap();
    assert_eq!(bytes, b"%PDF-1.7 certificate of compliance");

    // The reviewer completes the task with the label "Approved" (planner-adapter's event).
    let task = pb::TaskRef {
        task_id: "task-review-1".into(),
        plan_id: "plan-compliance".into(),
        kind: pb::TaskKind::Review as i32,
        title: "Review iso14001.pdf".into(),
        subject_id: document_id.clone(),
        ..Default::default()
    };
    env.publish(progressed(
        "CERT1",
        task,
        pb::TaskProgress::Completed,
        &["Approved"],
    ))
    .await;
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
    let completed = env.events::<pb::ReviewCompleted>().await;
    assert_eq!(completed.len(), 1);
    let c = &completed[0];
    assert_eq!(c.outcome(), pb::ReviewOutcome::Approved);
    assert!(!c.automatic);
    assert_eq!(c.object_name, document_id);
    assert_eq!(c.reviewer.as_ref().unwrap().name, "reviewer-1");
    // dynamics-adapter (D3) attaches it to the account from this event: partner and document.
    assert_eq!(
        c.meta.as_ref().unwrap().partner_key().as_deref(),
        Some("ZZ:CERT1")
    );
    assert_eq!(c.document.as_ref().unwrap().file_name, "iso14001.pdf");
    env.stop().await;
}

#[tokio::test]
async fn an_expired_certificate_is_rejected_automatically_with_a_note() {
    let env = Env::start().await;
    let up = env
        .sandbox
        .tg()
        .upload_document(UploadDocument {
            partner: Some(partner("OLD1")),
            doc_type: Some("compliance_certificate".into()),
            expires_on: Some("2020-06-30".into()),
            ..Default::default()
        })
        .unwrap();
    let event = uploaded(&up);
    let document_id = event.document.as_ref().unwrap().document_id.clone();
    env.publish(event).await;
    let review = eventually("rejected in TG", WAIT, || async {
        env.sandbox
            .tg()
            .document(&document_id)?
            .reviews
            .first()
            .cloned()
    })
    .await
    .unwrap();
    assert_eq!(review["outcome"], "rejected");
    assert!(
        review["note"]
            .as_str()
            .unwrap()
            .contains("expired on 2020-06-30")
    );
    let completed = env.events::<pb::ReviewCompleted>().await;
    assert_eq!(completed.len(), 1);
    assert!(completed[0].automatic);
    assert!(env.events::<pb::ReviewRequested>().await.is_empty());
    env.stop().await;
}
