//! The metadata endpoints and the empty organisation: what does not exist yet is refused as
//! Dataverse refuses it, and exists once created.

use serde_json::json;
use tgb_sandbox_dataverse::DataverseConfig;

use crate::{error_of, no_limits, start};

fn empty_org() -> DataverseConfig {
    DataverseConfig {
        empty_org: true,
        ..no_limits()
    }
}

fn label(text: &str) -> serde_json::Value {
    json!({"LocalizedLabels": [{"Label": text, "LanguageCode": 1033}]})
}

#[tokio::test]
async fn an_empty_org_lacks_the_custom_tables_columns_and_keys_until_they_are_created() {
    let t = start(empty_org()).await;
    // No custom table, no tgb_ column, no key.
    let (status, code, _) = error_of(t.get("tgb_partnerkpis").await).await;
    assert_eq!((status, code.as_str()), (404, "0x8006088a"));
    let r = t
        .post("accounts", json!({"name": "A", "tgb_partnerkey": "P-1"}))
        .await;
    let (status, code, message) = error_of(r).await;
    assert_eq!((status, code.as_str()), (400, "0x80060888"), "{message}");
    assert!(message.contains("tgb_partnerkey"), "{message}");
    assert_eq!(
        t.get("EntityDefinitions(LogicalName='tgb_exception')")
            .await
            .status(),
        404
    );

    // The column, then its key: Pending, InProgress, Active, one read at a time.
    let r = t
        .post(
            "EntityDefinitions(LogicalName='account')/Attributes",
            json!({
                "@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
                "SchemaName": "tgb_PartnerKey",
                "MaxLength": 100,
                "DisplayName": label("Partner key"),
            }),
        )
        .await;
    assert_eq!(r.status(), 204);
    assert!(r.headers().contains_key("OData-EntityId"));
    let again = t
        .post(
            "EntityDefinitions(LogicalName='account')/Attributes",
            json!({"@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata", "SchemaName": "tgb_PartnerKey"}),
        )
        .await;
    assert_eq!(again.status(), 400, "a second create is refused");
    let r = t
        .post(
            "EntityDefinitions(LogicalName='account')/Keys",
            json!({"SchemaName": "tgb_partnerkey_key", "KeyAttributes": ["tgb_partnerkey"]}),
        )
        .await;
    assert_eq!(r.status(), 204);
    let by_key = "accounts(tgb_partnerkey='P-1')";
    let (status, _, message) = error_of(t.patch(by_key, json!({"name": "A"}), &[]).await).await;
    assert_eq!(status, 400);
    assert!(message.contains("Active"), "{message}");
    let mut seen = Vec::new();
    for _ in 0..3 {
        let keys = t
            .get_json("EntityDefinitions(LogicalName='account')/Keys")
            .await;
        seen.push(
            keys["value"][0]["EntityKeyIndexStatus"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(seen, ["Pending", "InProgress", "Active"]);
    assert_eq!(
        t.patch(by_key, json!({"name": "A"}), &[]).await.status(),
        204
    );
}

#[tokio::test]
async fn a_lookup_must_keep_the_navigation_name_tg_bridge_binds_with() {
    let t = start(empty_org()).await;
    let table = json!({
        "@odata.type": "Microsoft.Dynamics.CRM.EntityMetadata",
        "SchemaName": "tgb_Exception",
        "OwnershipType": "UserOwned",
        "IsActivity": false,
        "Attributes": [{"SchemaName": "tgb_Name", "IsPrimaryName": true}],
    });
    assert_eq!(t.post("EntityDefinitions", table).await.status(), 204);
    let relationship = |nav: &str| {
        json!({
            "@odata.type": "Microsoft.Dynamics.CRM.OneToManyRelationshipMetadata",
            "SchemaName": format!("tgb_account_tgb_exception_{nav}"),
            "ReferencedEntity": "account",
            "ReferencingEntity": "tgb_exception",
            "ReferencingEntityNavigationPropertyName": nav,
            "Lookup": {"SchemaName": "tgb_Account"},
        })
    };
    let (status, _, message) = error_of(
        t.post("RelationshipDefinitions", relationship("tgb_account"))
            .await,
    )
    .await;
    assert_eq!(status, 400);
    assert!(message.contains("tgb_Account"), "{message}");
    assert_eq!(
        t.post("RelationshipDefinitions", relationship("tgb_Account"))
            .await
            .status(),
        204
    );
    assert_eq!(
        t.get(
            "EntityDefinitions(LogicalName='tgb_exception')/Attributes(LogicalName='tgb_account')"
        )
        .await
        .status(),
        200
    );
}

#[tokio::test]
async fn the_default_org_has_the_whole_solution() {
    let t = start(no_limits()).await;
    let def = t
        .get_json("EntityDefinitions(LogicalName='tgb_partnerkpi')")
        .await;
    assert_eq!(def["ChangeTrackingEnabled"], true);
    let keys = t
        .get_json("EntityDefinitions(LogicalName='incident')/Keys")
        .await;
    assert_eq!(keys["value"][0]["EntityKeyIndexStatus"], "Active");
}
