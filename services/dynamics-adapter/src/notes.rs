//! The notes aggregate (D1, D2, D4): TG comments and document uploads → annotations and
//! `tgb_partnermessage` activities regarding the case, the exception or the account; an
//! internal note on an incident → a case note for TG. Pure: no I/O.

use serde_json::json;
use tgb_clients::dataverse::BatchRequest;
use tgb_proto as pb;

use crate::change::{Change, meta, text};
use crate::ids::row_id;
use crate::odata::{create_only, is_create_only, rfc3339, upsert_row};
use crate::schema::{
    ActivityState, ActivityStatus, MessageChannel, MessageDirection, bind, reference, truncate,
};

/// The row notes and messages are written against: (table, id).
pub type Regarding<'a> = (&'a str, &'a str);

/// An annotation (UUIDv5 id of `id_key`) on `regarding`.
pub fn note(id_key: &str, regarding: Regarding<'_>, subject: &str, text: &str) -> BatchRequest {
    let (table, id) = regarding;
    upsert_row(
        "annotation",
        &row_id(id_key).to_string(),
        json!({
            "subject": truncate(subject, 500),
            "notetext": text,
            bind("annotation", "objectid", table): reference(table, id),
        }),
    )
}

/// A captured partner message.
#[derive(Debug)]
pub struct Message<'a> {
    /// Source key of its id (`tg-comment-message:CM-1`).
    pub id_key: String,
    /// Subject.
    pub subject: &'a str,
    /// Text.
    pub text: &'a str,
    /// Channel.
    pub channel: MessageChannel,
    /// Written by the partner (else to it).
    pub from_partner: bool,
    /// The TG id of what it records.
    pub tg_id: &'a str,
    /// Author's name.
    pub author: &'a str,
    /// When it was sent.
    pub sent_at: Option<&'a prost_types::Timestamp>,
}

/// A `tgb_partnermessage` activity regarding `regarding`, written completed and create only.
///
/// Completed: a case cannot be resolved while activities regarding it are open, and a captured
/// message is a record of something that happened, not work to do. A completed activity cannot
/// be updated, so it is created once (`If-None-Match: *`).
pub fn message(m: &Message<'_>, regarding: Regarding<'_>) -> BatchRequest {
    let (table, id) = regarding;
    let direction = if m.from_partner {
        MessageDirection::FromPartner
    } else {
        MessageDirection::ToPartner
    };
    let mut body = json!({
        "subject": truncate(m.subject, 200),
        "description": m.text,
        "tgb_channel": m.channel.code(),
        "tgb_direction": direction.code(),
        "tgb_tgmessageid": truncate(m.tg_id, 100),
        "tgb_author": truncate(m.author, 200),
        bind("tgb_partnermessage", "regardingobjectid", table): reference(table, id),
    });
    if let Some(t) = m.sent_at.and_then(rfc3339) {
        body["tgb_sentat"] = json!(t);
    }
    body["statecode"] = ActivityState::Completed.into();
    body["statuscode"] = ActivityStatus::Completed.into();
    create_only(upsert_row(
        "tgb_partnermessage",
        &row_id(&m.id_key).to_string(),
        body,
    ))
}

/// Whether a comment is captured: internal comments are written in TG by staff or by
/// tg-bridge (Dynamics notes), so copying them back would echo.
pub fn captured(e: &pb::TgCommentAdded) -> bool {
    e.side() != pb::CommentSide::Internal
}

/// D1/D2/D4: a TG comment → a note and a partner message on `regarding`.
pub fn plan_comment(e: &pb::TgCommentAdded, regarding: Regarding<'_>) -> Vec<BatchRequest> {
    let author = e
        .author
        .as_ref()
        .map(|p| p.name.clone())
        .unwrap_or_default();
    let subject = format!(
        "Partner comment from {}",
        if author.is_empty() {
            "the partner"
        } else {
            &author
        }
    );
    vec![
        note(
            &format!("tg-comment:{}", e.comment_id),
            regarding,
            &subject,
            &e.body,
        ),
        message(
            &Message {
                id_key: format!("tg-comment-message:{}", e.comment_id),
                subject: &subject,
                text: &e.body,
                channel: MessageChannel::CaseComment,
                from_partner: true,
                tg_id: &e.comment_id,
                author: &author,
                sent_at: e.created_at.as_ref(),
            },
            regarding,
        ),
    ]
}

/// D1/D4: a document uploaded in TG → a partner message (document interaction) on
/// `regarding`, and a note with the document's reference unless it regards the account. The
/// reference only: the content (banking details included) stays in TG and the document store.
pub fn plan_document(
    doc: &pb::TgDocument,
    occurred_at: Option<&prost_types::Timestamp>,
    regarding: Regarding<'_>,
) -> Vec<BatchRequest> {
    let text = format!(
        "Document {} ({}, {} bytes) uploaded in Trading Grid.\nTG document: {}\nSHA-256: {}",
        doc.file_name,
        doc.doc_type().as_str_name(),
        doc.size,
        doc.document_id,
        doc.sha256
    );
    let subject = format!("Document: {}", doc.file_name);
    let mut set = vec![message(
        &Message {
            id_key: format!("tg-document-message:{}", doc.document_id),
            subject: &subject,
            text: &text,
            channel: MessageChannel::DocumentInteraction,
            from_partner: true,
            tg_id: &doc.document_id,
            author: &doc.uploaded_by,
            sent_at: occurred_at,
        },
        regarding,
    )];
    if regarding.0 != "account" {
        set.insert(
            0,
            note(
                &format!("tg-document:{}", doc.document_id),
                regarding,
                &subject,
                &text,
            ),
        );
    }
    set
}

/// After a change set with create-only messages answered 412 (a message exists already: a
/// redelivery), the rest of the set to write again; empty when nothing is left.
pub fn without_created(set: Vec<BatchRequest>) -> Vec<BatchRequest> {
    set.into_iter().filter(|r| !is_create_only(r)).collect()
}

/// Whether a note change is its creation (a webhook `Create`, or a row the poll found).
pub fn is_creation(c: &Change) -> bool {
    matches!(c.message.as_str(), "Create" | "Poll")
}

/// D1: an internal note on an incident linked to TG case `tg_case`, unless the note was
/// handled already (`seen_version` set) or is not a creation. A subject starting with the
/// partner prefix makes it partner-visible.
pub fn note_added(
    c: &Change,
    incident: &str,
    tg_case: &str,
    seen_version: &str,
    prefix: &str,
) -> Option<pb::DynCaseNoteAdded> {
    if !is_creation(c) || !seen_version.is_empty() {
        return None;
    }
    let subject = text(&c.attrs, "subject");
    let partner_visible = !prefix.is_empty() && subject.starts_with(prefix);
    Some(pb::DynCaseNoteAdded {
        meta: meta(c, "note", None, tg_case),
        incident_id: incident.to_owned(),
        tg_case_id: tg_case.to_owned(),
        annotation_id: c.id.clone(),
        subject: subject.trim_start_matches(prefix).trim().to_owned(),
        text: text(&c.attrs, "notetext").to_owned(),
        author: None,
        partner_visible,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CASE: Regarding<'static> = ("incident", "6f9619ff-8b86-d011-b42d-00c04fc964ff");

    fn comment(side: pb::CommentSide) -> pb::TgCommentAdded {
        pb::TgCommentAdded {
            case_id: "C-1".into(),
            comment_id: "CM-1".into(),
            body: "Pallet 2 is on its way".into(),
            side: side as i32,
            ..Default::default()
        }
    }

    #[test]
    fn a_partner_comment_is_a_note_and_a_completed_message_created_once() {
        assert!(!captured(&comment(pb::CommentSide::Internal)));
        let e = comment(pb::CommentSide::Partner);
        assert!(captured(&e));
        let set = plan_comment(&e, CASE);
        assert_eq!(set.len(), 2);
        assert_eq!(
            set[0].path,
            format!(
                "annotations({})?$select=annotationid",
                row_id("tg-comment:CM-1")
            )
        );
        assert!(!is_create_only(&set[0]), "a note is an upsert");
        let note = set[0].body.as_ref().unwrap();
        assert_eq!(note["subject"], "Partner comment from the partner");
        assert_eq!(
            note["objectid_incident@odata.bind"],
            format!("/incidents({})", CASE.1)
        );
        let msg = &set[1];
        assert!(is_create_only(msg));
        let body = msg.body.as_ref().unwrap();
        assert_eq!(body["statecode"], ActivityState::Completed.code());
        assert_eq!(body["statuscode"], ActivityStatus::Completed.code());
        assert_eq!(body["tgb_channel"], MessageChannel::CaseComment.code());
        assert_eq!(body["tgb_direction"], MessageDirection::FromPartner.code());
        // A redelivery whose message exists: only the note is written again.
        let rest = without_created(set);
        assert_eq!(rest.len(), 1);
        assert!(rest[0].path.starts_with("annotations("));
    }

    #[test]
    fn a_document_on_the_account_is_only_a_message() {
        let doc = pb::TgDocument {
            document_id: "D-1".into(),
            file_name: "w9.pdf".into(),
            ..Default::default()
        };
        let on_account = plan_document(&doc, None, ("account", "acc-1"));
        assert_eq!(on_account.len(), 1);
        assert_eq!(
            on_account[0].body.as_ref().unwrap()["tgb_channel"],
            MessageChannel::DocumentInteraction.code()
        );
        let on_case = plan_document(&doc, None, CASE);
        assert_eq!(on_case.len(), 2);
        assert!(on_case[0].path.starts_with("annotations("));
        assert!(is_create_only(&on_case[1]));
    }

    #[test]
    fn a_note_is_published_once_and_the_prefix_makes_it_partner_visible() {
        let mut c = Change {
            message: "Create".into(),
            table: "annotation".into(),
            id: "n-1".into(),
            ..Default::default()
        };
        c.attrs
            .insert("subject".into(), json!("[partner] ETA Friday"));
        c.attrs.insert("notetext".into(), json!("Truck booked"));
        let ev = note_added(&c, "i-1", "C-1", "", "[partner]").unwrap();
        assert!(ev.partner_visible);
        assert_eq!(ev.subject, "ETA Friday");
        assert_eq!(ev.tg_case_id, "C-1");
        assert!(note_added(&c, "i-1", "C-1", "7", "[partner]").is_none());
        c.message = "Update".into();
        assert!(note_added(&c, "i-1", "C-1", "", "[partner]").is_none());
    }
}
