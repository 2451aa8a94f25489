//! Ids that go into OData filters are parsed as what they are (GUIDs), so a value a webhook
//! body claims cannot widen a query.

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn a_kpi_partner_reference_that_is_not_a_guid_never_reaches_a_filter() {
    let env = Env::start().await;
    let adapter = env.adapter(&[]).await;
    let injected = "00000000-0000-0000-0000-000000000001 or tgb_period ne 'x'";
    let body = json!({
        "MessageName": "Update",
        "PrimaryEntityName": "tgb_partnerkpi",
        "PrimaryEntityId": uuid::Uuid::new_v4().to_string(),
        "InitiatingUserId": uuid::Uuid::new_v4().to_string(),
        "InputParameters": [{"key": "Target", "value": {"Attributes": [
            {"key": "tgb_partner", "value": {"__type": "EntityReference:http://schemas.microsoft.com/xrm/2011/Contracts", "Id": injected, "LogicalName": "account"}},
            {"key": "tgb_period", "value": "2026-11"},
            {"key": "tgb_value", "value": 1.0},
        ]}}],
    });
    let answer = reqwest::Client::new()
        .post(format!("{}/webhooks/dataverse", adapter.base))
        .header("x-api-key", WEBHOOK_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    let widened: Vec<String> = env
        .sandbox
        .calls()
        .of_system("dataverse")
        .into_iter()
        .filter_map(|c| c.query)
        .filter(|q| {
            let q = q.replace("%20", " ").replace("%27", "'");
            q.contains("or tgb_period")
        })
        .collect();
    assert!(
        widened.is_empty(),
        "an injected filter was sent: {widened:?}"
    );
    // Not a partner's KPI row: taken (nothing to publish), not failed.
    assert_eq!(answer.status(), 204);
    adapter.stop().await;
}

#[tokio::test]
async fn a_partner_id_written_as_a_filter_is_matched_as_a_literal_and_takes_over_no_account() {
    let env = Env::start().await;
    // An account Dynamics has that no partner is linked to yet: the first-sync match would
    // take it over if an injected filter widened the lookup to it.
    let dv = env.sandbox.dataverse();
    let victim = dv
        .insert_row_as(
            env.app_user(),
            "account",
            serde_json::json!({"name": "Victim Ltd", "accountnumber": "VICTIM01"}),
        )
        .unwrap();
    let adapter = env.adapter(&[]).await;
    for (case, id) in [
        ("C-INJECT-1", "X%27 or accountnumber ne %27"),
        ("C-INJECT-2", "X' or accountnumber ne 'Y"),
    ] {
        let mut event = opened(case, "Injected partner");
        event.meta.as_mut().unwrap().partner = Some(tgb_proto::PartnerRef {
            qualifier: "ZZ".into(),
            id: id.into(),
            name: "Mallory".into(),
        });
        env.publish(event).await;
        let incident =
            tgb_testkit::eventually("the case's incident", tgb_testkit::HANG_GUARD, || async {
                env.rows("incident")
                    .into_iter()
                    .find(|r| r["tgb_tgcaseid"] == case)
            })
            .await
            .unwrap();
        // The id was a literal: a new account holds it as its key.
        let customer = incident["_customerid_value"].as_str().unwrap().to_owned();
        assert_ne!(
            customer,
            victim.to_string(),
            "the victim's account was taken"
        );
        let account = env
            .rows("account")
            .into_iter()
            .find(|a| a["accountid"] == customer.as_str())
            .unwrap();
        assert_eq!(account["tgb_partnerkey"], format!("ZZ:{id}").as_str());
    }
    let victim_row = env
        .rows("account")
        .into_iter()
        .find(|a| a["accountid"] == victim.to_string().as_str())
        .unwrap();
    assert!(
        victim_row["tgb_partnerkey"].is_null(),
        "the unlinked account was not taken over: {victim_row}"
    );
    assert!(env.bad_requests().is_empty());
    adapter.stop().await;
}
