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
async fn a_partner_id_outside_the_strict_character_set_is_dead_lettered_before_any_query() {
    let env = Env::start().await;
    let adapter = env.adapter(&[]).await;
    let mut event = opened("C-INJECT", "Injected partner");
    event.meta.as_mut().unwrap().partner = Some(tgb_proto::PartnerRef {
        qualifier: "ZZ".into(),
        id: "X%27 or accountnumber ne %27".into(),
        name: "Mallory".into(),
    });
    env.publish(event).await;

    let js = env.bus.jetstream().clone();
    tgb_testkit::eventually(
        "the event is dead-lettered or an incident written",
        tgb_testkit::HANG_GUARD,
        || {
            let js = js.clone();
            let env = &env;
            async move {
                let mut dlq = js.get_stream("TGB_DLQ").await.ok()?;
                let dead = dlq.info().await.ok()?.state.messages;
                (dead > 0 || !env.rows("incident").is_empty()).then_some(())
            }
        },
    )
    .await
    .unwrap();
    let widened: Vec<String> = env
        .sandbox
        .calls()
        .of_system("dataverse")
        .into_iter()
        .filter_map(|c| c.query)
        .filter(|q| {
            q.to_ascii_lowercase().contains("accountnumber%20ne") || q.contains("accountnumber ne")
        })
        .collect();
    assert!(
        widened.is_empty(),
        "an injected filter was sent: {widened:?}"
    );
    assert!(env.rows("incident").is_empty(), "a case was written for it");
    adapter.stop().await;
}
