use serde_json::json;

use crate::{error_of, no_limits, start};

async fn case(t: &crate::TestDv) -> uuid::Uuid {
    let acc = t.account("A", "P-1").await;
    t.create(
        "incidents",
        json!({"title": "Broken pallet", "casetypecode": 2,
               "customerid_account@odata.bind": format!("/accounts({acc})")}),
    )
    .await
}

#[tokio::test]
async fn incident_requires_a_customer() {
    let t = start(no_limits()).await;
    let (status, _, message) =
        error_of(t.post("incidents", json!({"title": "No customer"})).await).await;
    assert_eq!(status, 400);
    assert_eq!(message, "You should specify a parent contact or account.");
}

#[tokio::test]
async fn new_incident_is_active_in_progress_with_a_ticket_number() {
    let t = start(no_limits()).await;
    let id = case(&t).await;
    let v = t.get_json(&format!("incidents({id})")).await;
    assert_eq!(v["statecode"], 0);
    assert_eq!(v["statuscode"], 1);
    assert!(v["ticketnumber"].as_str().unwrap().starts_with("CAS-"));
}

#[tokio::test]
async fn close_incident_resolves_the_case_and_creates_a_resolution() {
    let t = start(no_limits()).await;
    let id = case(&t).await;
    let r = t
        .post(
            "CloseIncident",
            json!({"IncidentResolution": {"@odata.type": "Microsoft.Dynamics.CRM.incidentresolution",
                    "subject": "Replaced", "description": "New pallet shipped",
                    "incidentid@odata.bind": format!("/incidents({id})")}, "Status": 5}),
        )
        .await;
    assert_eq!(r.status(), 204);
    let v = t.get_json(&format!("incidents({id})")).await;
    assert_eq!(
        (v["statecode"].as_i64(), v["statuscode"].as_i64()),
        (Some(1), Some(5))
    );
    let res = t.dv.rows("incidentresolutions");
    assert_eq!(res.len(), 1);
    assert_eq!(res[0]["_incidentid_value"], id.to_string());
    assert_eq!(res[0]["subject"], "Replaced");
}

#[tokio::test]
async fn resolved_case_is_read_only_until_reopened() {
    let t = start(no_limits()).await;
    let id = case(&t).await;
    let close = json!({"IncidentResolution": {"subject": "Done", "incidentid@odata.bind": format!("/incidents({id})")}, "Status": 1000});
    assert_eq!(t.post("CloseIncident", close.clone()).await.status(), 204);
    let (status, code, _) = error_of(
        t.patch(&format!("incidents({id})"), json!({"title": "Edit"}), &[])
            .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (400, "0x800404cf"));
    let (status, code, _) = error_of(t.post("CloseIncident", close.clone()).await).await;
    assert_eq!((status, code.as_str()), (400, "0x800404cf"));
    // The state change with other columns in the same request is refused too.
    let (status, code, _) = error_of(
        t.patch(
            &format!("incidents({id})"),
            json!({"statecode": 0, "statuscode": 1, "title": "Edit"}),
            &[],
        )
        .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (400, "0x800404cf"));
    // Reopen: statecode 0, statuscode 1, alone.
    let r = t
        .patch(
            &format!("incidents({id})"),
            json!({"statecode": 0, "statuscode": 1}),
            &[],
        )
        .await;
    assert_eq!(r.status(), 204);
    let r = t
        .patch(&format!("incidents({id})"), json!({"title": "Edit"}), &[])
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        t.get_json(&format!("incidents({id})")).await["title"],
        "Edit"
    );
}

#[tokio::test]
async fn close_incident_rejects_a_status_of_another_state() {
    let t = start(no_limits()).await;
    let id = case(&t).await;
    let r = t
        .post(
            "CloseIncident",
            json!({"IncidentResolution": {"subject": "x", "incidentid@odata.bind": format!("/incidents({id})")}, "Status": 2}),
        )
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(
        t.get_json(&format!("incidents({id})")).await["statecode"],
        0
    );
    assert!(t.dv.rows("incidentresolutions").is_empty());
}

#[tokio::test]
async fn resolving_by_patch_is_refused_and_status_must_match_state() {
    let t = start(no_limits()).await;
    let id = case(&t).await;
    let r = t
        .patch(
            &format!("incidents({id})"),
            json!({"statecode": 1, "statuscode": 5}),
            &[],
        )
        .await;
    assert_eq!(r.status(), 400);
    let (status, code, _) = error_of(
        t.patch(&format!("incidents({id})"), json!({"statuscode": 6}), &[])
            .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (400, "0x8004431a"));
    let r = t
        .patch(&format!("incidents({id})"), json!({"statuscode": 2}), &[])
        .await;
    assert_eq!(r.status(), 204, "On Hold is a status of Active");
    let (status, code, _) = error_of(
        t.patch(&format!("incidents({id})"), json!({"prioritycode": 9}), &[])
            .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (400, "0x80044331"));
}

#[tokio::test]
async fn a_case_with_open_activities_cannot_be_resolved() {
    let t = start(no_limits()).await;
    let id = case(&t).await;
    let regarding = format!("/incidents({id})");
    let open = t
        .create(
            "tgb_partnermessages",
            json!({"subject": "Partner comment", "regardingobjectid_incident_tgb_partnermessage@odata.bind": regarding}),
        )
        .await;
    let done = t
        .create(
            "tgb_partnermessages",
            json!({"subject": "Earlier comment", "statecode": 1, "statuscode": 2,
                   "regardingobjectid_incident_tgb_partnermessage@odata.bind": regarding}),
        )
        .await;
    let close = json!({"IncidentResolution": {"subject": "Done", "incidentid@odata.bind": regarding}, "Status": 5});
    let (status, _, message) = error_of(t.post("CloseIncident", close.clone()).await).await;
    assert_eq!(status, 400);
    assert!(message.contains("1 activities"), "{message}");
    assert_eq!(
        t.get_json(&format!("incidents({id})")).await["statecode"],
        0,
        "still active"
    );
    // A completed activity is read-only: only its state can change.
    let (status, code, _) = error_of(
        t.patch(
            &format!("tgb_partnermessages({done})"),
            json!({"subject": "Edited"}),
            &[],
        )
        .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (400, "0x8004022e"));
    // Completing the open one lets the case be resolved.
    let r = t
        .patch(
            &format!("tgb_partnermessages({open})"),
            json!({"statecode": 1, "statuscode": 2}),
            &[],
        )
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(t.post("CloseIncident", close).await.status(), 204);
}
