use reqwest::Method;
use serde_json::{Value, json};

use crate::{ALICE, error_of, no_limits, start};

async fn seed(t: &crate::TestDv) -> (uuid::Uuid, uuid::Uuid) {
    let a = t.account("Alpha", "P-A").await;
    let b = t.account("Beta", "P-B").await;
    for (i, acc) in [(1, a), (2, a), (3, b)] {
        t.create(
            "incidents",
            json!({"title": format!("Case {i}"), "prioritycode": i,
                   "customerid_account@odata.bind": format!("/accounts({acc})")}),
        )
        .await;
    }
    (a, b)
}

fn titles(v: &Value) -> Vec<String> {
    let mut t: Vec<String> = v["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["title"].as_str().unwrap().to_string())
        .collect();
    t.sort();
    t
}

#[tokio::test]
async fn filter_by_lookup_value_and_number() {
    let t = start(no_limits()).await;
    let (a, _) = seed(&t).await;
    let v = t
        .get_json(&format!(
            "incidents?$select=title&$filter=_customerid_value eq {a}"
        ))
        .await;
    assert_eq!(titles(&v), vec!["Case 1", "Case 2"]);
    let v = t
        .get_json(&format!(
            "incidents?$select=title&$filter=_customerid_value eq {a} and prioritycode gt 1"
        ))
        .await;
    assert_eq!(titles(&v), vec!["Case 2"]);
    let v = t
        .get_json("incidents?$select=title&$filter=prioritycode ne 2")
        .await;
    assert_eq!(titles(&v), vec!["Case 1", "Case 3"]);
    let v = t
        .get_json("incidents?$select=title&$filter=title eq 'Case 3' or prioritycode lt 2")
        .await;
    assert_eq!(titles(&v), vec!["Case 1", "Case 3"]);
}

#[tokio::test]
async fn filter_by_string_and_date() {
    let t = start(no_limits()).await;
    seed(&t).await;
    let v = t
        .get_json("accounts?$select=name&$filter=tgb_partnerkey eq 'P-B'")
        .await;
    assert_eq!(v["value"].as_array().unwrap().len(), 1);
    assert_eq!(v["value"][0]["name"], "Beta");
    let v = t
        .get_json("incidents?$select=title&$filter=createdon gt 2000-01-01T00:00:00Z")
        .await;
    assert_eq!(v["value"].as_array().unwrap().len(), 3);
    let v = t
        .get_json("incidents?$select=title&$filter=createdon lt 2000-01-01T00:00:00Z")
        .await;
    assert_eq!(v["value"].as_array().unwrap().len(), 0);
    let (status, code, _) = error_of(t.get("incidents?$filter=nosuch eq 1").await).await;
    assert_eq!((status, code.as_str()), (400, "0x80060888"));
}

#[tokio::test]
async fn top_limits_the_rows() {
    let t = start(no_limits()).await;
    seed(&t).await;
    let v = t.get_json("incidents?$select=title&$top=2").await;
    assert_eq!(v["value"].as_array().unwrap().len(), 2);
    assert!(v.get("@odata.nextLink").is_none());
}

#[tokio::test]
async fn paging_with_maxpagesize_and_next_link_returns_every_row_once() {
    let t = start(no_limits()).await;
    let acc = t.account("A", "P-1").await;
    for i in 0..7 {
        t.create(
            "tasks",
            json!({"subject": format!("T{i}"), "regardingobjectid_account_task@odata.bind": format!("/accounts({acc})")}),
        )
        .await;
    }
    let mut url = format!("{}/tasks?$select=subject", t.api);
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let r = t
            .req(Method::GET, &url, ALICE)
            .header("Prefer", "odata.maxpagesize=3")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["Preference-Applied"], "odata.maxpagesize=3");
        let v: Value = r.json().await.unwrap();
        pages += 1;
        assert!(v["value"].as_array().unwrap().len() <= 3);
        seen.extend(
            v["value"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["subject"].as_str().unwrap().to_string()),
        );
        match v["@odata.nextLink"].as_str() {
            Some(next) => url = next.to_string(),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    seen.sort();
    assert_eq!(seen, (0..7).map(|i| format!("T{i}")).collect::<Vec<_>>());
}

#[tokio::test]
async fn page_size_is_capped_by_configuration() {
    let mut cfg = no_limits();
    cfg.page_size_cap = 2;
    let t = start(cfg).await;
    seed(&t).await;
    let v = t.get_json("incidents?$select=title").await;
    assert_eq!(v["value"].as_array().unwrap().len(), 2);
    assert!(
        v["@odata.nextLink"]
            .as_str()
            .unwrap()
            .contains("$skiptoken")
    );
}

#[tokio::test]
async fn who_am_i_names_the_caller() {
    let t = start(no_limits()).await;
    let v = t.get_json("WhoAmI").await;
    assert_eq!(v["UserId"], ALICE.to_string());
}

#[tokio::test]
async fn orderby_and_count() {
    let t = start(no_limits()).await;
    seed(&t).await;
    let v = t
        .get_json("incidents?$select=title&$orderby=prioritycode desc&$count=true")
        .await;
    assert_eq!(v["@odata.count"], 3);
    let order: Vec<&str> = v["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["title"].as_str().unwrap())
        .collect();
    assert_eq!(order, vec!["Case 3", "Case 2", "Case 1"]);
}

#[tokio::test]
async fn include_annotations_adds_choice_labels_and_lookup_tables() {
    let t = start(no_limits()).await;
    let (a, _) = seed(&t).await;
    let r = t
        .req(
            Method::GET,
            "incidents?$select=title,prioritycode,_customerid_value&$filter=prioritycode eq 1",
            ALICE,
        )
        .header("Prefer", "odata.include-annotations=\"*\"")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    let row = &v["value"][0];
    assert_eq!(
        row["prioritycode@OData.Community.Display.V1.FormattedValue"],
        "High"
    );
    assert_eq!(row["_customerid_value"], a.to_string());
    assert_eq!(
        row["_customerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"],
        "account"
    );
    let plain = t.get_json("incidents?$select=prioritycode&$top=1").await;
    assert!(
        plain["value"][0]
            .get("prioritycode@OData.Community.Display.V1.FormattedValue")
            .is_none()
    );
}
