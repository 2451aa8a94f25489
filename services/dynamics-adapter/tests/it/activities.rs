//! Captured partner messages are completed activities, so a case can be resolved; their
//! redelivery is safe although a completed activity cannot be updated.

use std::time::Duration;

use tgb_proto as pb;
use tgb_testkit::eventually;

use crate::support::*;

/// The hang guard of these tests' waits.
const LONG: Duration = Duration::from_secs(120);

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
async fn a_case_with_captured_messages_resolves_and_a_redelivered_message_is_written_once() {
    let env = Env::start().await;
    let adapter = env.adapter(&[]).await;
    env.publish(opened("C-ACT", "Missing ASN")).await;
    env.wait_rows("incident", 1).await;
    env.publish(comment("C-ACT", "CM-1", "ASN sent again"))
        .await;
    let messages = eventually("the message", LONG, || async {
        let rows = env.rows("tgb_partnermessage");
        (!rows.is_empty()).then_some(rows)
    })
    .await
    .unwrap();
    assert_eq!(messages[0]["statecode"], 1, "written completed");
    assert_eq!(messages[0]["statuscode"], 2);

    // TG retries the comment (a new event id): the completed message is not updated again,
    // the note is, and nothing fails.
    env.publish(comment("C-ACT", "CM-1", "ASN sent again"))
        .await;
    eventually("the retry handled", LONG, || async {
        let seen = metric(
            &adapter.base,
            "tgb_dynamics_messages_already_written_total",
            "",
        )
        .await;
        (seen >= 1.0).then_some(())
    })
    .await
    .unwrap();

    // TG resolves the case: CloseIncident is accepted (no open activity regards it).
    env.publish(updated("C-ACT", 2, "Missing ASN", pb::CaseStatus::Resolved))
        .await;
    eventually("the incident resolved", LONG, || async {
        env.rows("incident")
            .iter()
            .any(|r| r["statecode"] == 1)
            .then_some(())
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
    assert_eq!(failed, 0.0, "nothing dead-lettered");
    assert_eq!(env.rows("tgb_partnermessage").len(), 1);
    assert_eq!(env.rows("annotation").len(), 1);
    assert!(env.bad_requests().is_empty(), "{:?}", env.bad_requests());
}
