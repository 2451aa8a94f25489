//! A Dataverse webhook body is a claim: the adapter publishes what the row read back by its id
//! holds, so a forged body (with the key) cannot make it announce a change that did not happen.

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn a_forged_close_of_an_incident_that_does_not_exist_publishes_nothing() {
    let env = Env::start().await;
    let adapter = env.adapter(&[]).await;
    let body = json!({
        "MessageName": "Close",
        "PrimaryEntityName": "incident",
        "PrimaryEntityId": uuid::Uuid::new_v4().to_string(),
        "InitiatingUserId": uuid::Uuid::new_v4().to_string(),
        "InputParameters": [
            {"key": "Target", "value": {"Attributes": [
                {"key": "tgb_tgcaseid", "value": "C-FORGED"},
                {"key": "statecode", "value": {"__type": "OptionSetValue:http://schemas.microsoft.com/xrm/2011/Contracts", "Value": 1}},
                {"key": "statuscode", "value": {"__type": "OptionSetValue:http://schemas.microsoft.com/xrm/2011/Contracts", "Value": 5}},
            ]}},
            {"key": "IncidentResolution", "value": {"Attributes": [
                {"key": "subject", "value": "Refund approved"},
            ]}},
        ],
    });
    let answer = reqwest::Client::new()
        .post(format!("{}/webhooks/dataverse", adapter.base))
        .header("x-api-key", WEBHOOK_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    // The webhook is answered after anything it causes is published.
    assert!(answer.status().is_success(), "{}", answer.status());
    let resolved = env.events_on("tgb.v1.dyn.case.resolved").await;
    assert!(
        resolved.is_empty(),
        "a forged resolution was published: {resolved:?}"
    );
    adapter.stop().await;
}
