use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

use crate::{ALICE, BOB, entity_id, error_of, no_limits, start};

#[tokio::test]
async fn create_answers_204_with_entity_id_and_odata_version() {
    let t = start(no_limits()).await;
    let r = t.post("accounts", json!({"name": "Contoso"})).await;
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["OData-Version"], "4.0");
    let url = r.headers()["OData-EntityId"].to_str().unwrap().to_string();
    assert!(url.starts_with(&format!("{}/accounts(", t.api)), "{url}");
    let id = entity_id(&r);
    let row = t.get_json(&format!("accounts({id})")).await;
    assert_eq!(row["name"], "Contoso");
    assert_eq!(row["accountid"], id.to_string());
}

#[tokio::test]
async fn create_with_return_representation_answers_201_and_the_row() {
    let t = start(no_limits()).await;
    let r = t
        .req(Method::POST, "accounts?$select=name", ALICE)
        .header("Prefer", "return=representation")
        .json(&json!({"name": "Fabrikam"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["Preference-Applied"], "return=representation");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["name"], "Fabrikam");
    assert!(v["@odata.etag"].as_str().unwrap().starts_with("W/\""));
    assert!(
        v.get("accountnumber").is_none(),
        "only the selected columns"
    );
}

#[tokio::test]
async fn client_chosen_guid_is_kept_and_a_second_create_is_412() {
    let t = start(no_limits()).await;
    let id = Uuid::new_v4();
    let r = t
        .post(
            "annotations",
            json!({"annotationid": id, "subject": "note"}),
        )
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(entity_id(&r), id);
    let again = t
        .post(
            "annotations",
            json!({"annotationid": id, "subject": "note"}),
        )
        .await;
    let (status, code, _) = error_of(again).await;
    assert_eq!((status, code.as_str()), (412, "0x80040237"));
}

#[tokio::test]
async fn get_by_id_honours_select_and_answers_404_when_missing() {
    let t = start(no_limits()).await;
    let id = t.account("Northwind", "P-1").await;
    let v = t
        .get_json(&format!("accounts({id})?$select=name,tgb_partnerkey"))
        .await;
    assert_eq!(v["tgb_partnerkey"], "P-1");
    assert_eq!(v["accountid"], id.to_string());
    assert!(v.get("telephone1").is_none());
    assert!(
        v["@odata.context"]
            .as_str()
            .unwrap()
            .contains("$metadata#accounts(name,tgb_partnerkey)/$entity")
    );
    let etag = v["@odata.etag"].as_str().unwrap().to_string();
    let not_modified = t
        .req(Method::GET, &format!("accounts({id})"), ALICE)
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(not_modified.status(), 304);
    let missing = Uuid::new_v4();
    let (status, code, message) = error_of(t.get(&format!("accounts({missing})")).await).await;
    assert_eq!((status, code.as_str()), (404, "0x80040217"));
    assert!(message.contains(&missing.to_string()));
}

#[tokio::test]
async fn unknown_select_property_is_400_naming_it() {
    let t = start(no_limits()).await;
    let (status, code, message) = error_of(t.get("accounts?$select=Name").await).await;
    assert_eq!((status, code.as_str()), (400, "0x80060888"));
    assert!(message.contains("'Name'"), "{message}");
}

#[tokio::test]
async fn unknown_column_in_body_is_400() {
    let t = start(no_limits()).await;
    let (status, _, message) = error_of(t.post("accounts", json!({"Name": "x"})).await).await;
    assert_eq!(status, 400);
    assert!(message.contains("Invalid property 'Name'"), "{message}");
}

#[tokio::test]
async fn string_longer_than_max_length_is_400() {
    let t = start(no_limits()).await;
    let acc = t.account("A", "P-1").await;
    let title = "x".repeat(201);
    let r = t
        .post(
            "incidents",
            json!({"title": title, "customerid_account@odata.bind": format!("/accounts({acc})")}),
        )
        .await;
    let (status, code, message) = error_of(r).await;
    assert_eq!((status, code.as_str()), (400, "0x80044331"));
    assert!(
        message.contains("'title'") && message.contains("'200'"),
        "{message}"
    );
}

#[tokio::test]
async fn wrong_case_odata_bind_is_400_undeclared_property() {
    let t = start(no_limits()).await;
    let acc = t.account("A", "P-1").await;
    let r = t
        .post(
            "incidents",
            json!({"title": "t", "CustomerId_Account@odata.bind": format!("/accounts({acc})")}),
        )
        .await;
    let (status, code, message) = error_of(r).await;
    assert_eq!((status, code.as_str()), (400, "0x80048d19"));
    assert!(
        message.contains(
            "An undeclared property 'CustomerId_Account' which only has property annotations"
        ),
        "{message}"
    );
    // A custom lookup's navigation property keeps its SchemaName case.
    let ok = t
        .post(
            "tgb_partnerkpis",
            json!({"tgb_name": "k", "tgb_period": "2026-10", "tgb_kpikey": "order_accuracy",
                   "tgb_Partner@odata.bind": format!("/accounts({acc})")}),
        )
        .await;
    assert_eq!(ok.status(), 204);
    let lower = t
        .post(
            "tgb_partnerkpis",
            json!({"tgb_name": "k", "tgb_period": "2026-11", "tgb_kpikey": "order_accuracy",
                   "tgb_partner@odata.bind": format!("/accounts({acc})")}),
        )
        .await;
    let (status, code, message) = error_of(lower).await;
    assert_eq!((status, code.as_str()), (400, "0x80048d19"));
    assert!(message.contains("'tgb_partner'"));
}

#[tokio::test]
async fn bind_to_a_missing_row_is_404() {
    let t = start(no_limits()).await;
    let missing = Uuid::new_v4();
    let r = t
        .post(
            "incidents",
            json!({"title": "t", "customerid_account@odata.bind": format!("/accounts({missing})")}),
        )
        .await;
    let (status, code, _) = error_of(r).await;
    assert_eq!((status, code.as_str()), (404, "0x80040217"));
}

#[tokio::test]
async fn writes_record_who_made_them() {
    let t = start(no_limits()).await;
    let id = t.account("A", "P-1").await;
    let v = t.get_json(&format!("accounts({id})")).await;
    assert_eq!(v["_createdby_value"], ALICE.to_string());
    assert_eq!(v["_modifiedby_value"], ALICE.to_string());
    assert!(v["modifiedon"].as_str().unwrap().ends_with('Z'));
    let r = t
        .req(Method::PATCH, &format!("accounts({id})"), BOB)
        .json(&json!({"telephone1": "555"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let v = t.get_json(&format!("accounts({id})")).await;
    assert_eq!(v["_createdby_value"], ALICE.to_string());
    assert_eq!(v["_modifiedby_value"], BOB.to_string());
}

#[tokio::test]
async fn etags_are_weak_and_grow_with_each_write() {
    let t = start(no_limits()).await;
    let id = t.account("A", "P-1").await;
    let v1 = t.get_json(&format!("accounts({id})")).await;
    t.patch(&format!("accounts({id})"), json!({"name": "B"}), &[])
        .await;
    let v2 = t.get_json(&format!("accounts({id})")).await;
    let n = |v: &serde_json::Value| -> u64 {
        v["@odata.etag"]
            .as_str()
            .unwrap()
            .trim_start_matches("W/\"")
            .trim_end_matches('"')
            .parse()
            .unwrap()
    };
    assert!(n(&v2) > n(&v1));
    assert_eq!(v2["versionnumber"].as_u64().unwrap(), n(&v2));
}

#[tokio::test]
async fn delete_removes_the_row() {
    let t = start(no_limits()).await;
    let id = t.account("A", "P-1").await;
    let r = t
        .req(Method::DELETE, &format!("accounts({id})"), ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(t.get(&format!("accounts({id})")).await.status(), 404);
    let again = t
        .req(Method::DELETE, &format!("accounts({id})"), ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404);
}

#[tokio::test]
async fn request_without_caller_is_401_and_unknown_set_is_404() {
    let t = start(no_limits()).await;
    let r = t
        .client
        .get(format!("{}/accounts", t.api))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (status, code, message) = error_of(t.get("Account").await).await;
    assert_eq!((status, code.as_str()), (404, "0x8006088a"));
    assert_eq!(message, "Resource not found for the segment 'Account'.");
}

#[tokio::test]
async fn unsupported_odata_version_is_400() {
    let t = start(no_limits()).await;
    let r = t
        .client
        .get(format!("{}/accounts", t.api))
        .header("x-tgb-caller-id", ALICE.to_string())
        .header("OData-Version", "3.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn library_calls_write_as_a_given_user() {
    let t = start(no_limits()).await;
    let id =
        t.dv.insert_row_as(
            BOB,
            "account",
            json!({"name": "Lib", "tgb_partnerkey": "P-9"}),
        )
        .unwrap();
    t.dv.set_row_as(ALICE, "accounts", id, json!({"name": "Lib 2"}))
        .unwrap();
    let rows = t.dv.rows("accounts");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["name"], "Lib 2");
    assert_eq!(rows[0]["_createdby_value"], BOB.to_string());
    assert_eq!(rows[0]["_modifiedby_value"], ALICE.to_string());
    let err =
        t.dv.insert_row_as(BOB, "accounts", json!({"nope": 1}))
            .unwrap_err();
    assert_eq!(err.status, 400);
    let snap = t.dv.snapshot();
    assert_eq!(snap["tables"]["accounts"].as_array().unwrap().len(), 1);
    t.dv.reset();
    assert!(t.dv.rows("accounts").is_empty());
}

#[tokio::test]
async fn annotation_records_its_parent_and_file_size() {
    let t = start(no_limits()).await;
    let acc = t.account("A", "P-1").await;
    let id = t
        .create(
            "annotations",
            json!({"subject": "doc", "filename": "a.txt", "mimetype": "text/plain",
                   "documentbody": "aGVsbG8=", "objectid_account@odata.bind": format!("/accounts({acc})")}),
        )
        .await;
    let v = t.get_json(&format!("annotations({id})")).await;
    assert_eq!(v["_objectid_value"], acc.to_string());
    assert_eq!(v["objecttypecode"], "account");
    assert_eq!(v["filesize"], 5);
    assert_eq!(v["isdocument"], true);
}

#[tokio::test]
async fn attachment_over_the_size_limit_is_400() {
    let mut cfg = no_limits();
    cfg.max_attachment_bytes = 3;
    let t = start(cfg).await;
    let (status, code, _) = error_of(
        t.post(
            "annotations",
            json!({"subject": "big", "documentbody": "aGVsbG8="}),
        )
        .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (400, "0x80043e09"));
    assert!(t.dv.rows("annotations").is_empty());
}

#[tokio::test]
async fn admin_routes_reset_race_and_show_rows() {
    let t = start(no_limits()).await;
    let id = t.account("A", "P-1").await;
    let rows: serde_json::Value = t
        .client
        .get(format!("{}/_sandbox/tables/accounts", t.root))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rows["value"][0]["accountid"], id.to_string());
    let r = t
        .client
        .post(format!("{}/_sandbox/etag-races", t.root))
        .json(&json!({"n": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let etag = t.get_json(&format!("accounts({id})")).await["@odata.etag"]
        .as_str()
        .unwrap()
        .to_string();
    let r = t
        .patch(
            &format!("accounts({id})"),
            json!({"name": "B"}),
            &[("If-Match", &etag)],
        )
        .await;
    assert_eq!(r.status(), 412);
    let r = t
        .client
        .post(format!("{}/_sandbox/reset", t.root))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let snap: serde_json::Value = t
        .client
        .get(format!("{}/_sandbox/snapshot", t.root))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(snap["tables"]["accounts"].as_array().unwrap().len(), 0);
    let bad = t
        .client
        .post(format!("{}/_sandbox/etag-races", t.root))
        .body("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}
