//! TG ids as Dataverse keys: every partner key is `QUALIFIER:ID`, and a TG id may hold any
//! character, while Dataverse refuses a key value holding `/ # < > * % & : \ ? +` in a URL.
//! Rows are addressed by their GUID and found with `$filter`.

use std::time::Duration;

use serde_json::json;
use tgb_proto as pb;
use tgb_testkit::eventually;

use crate::support::*;

/// The hang guard of these tests' waits.
const LONG: Duration = Duration::from_secs(120);

fn partner(id: &str) -> pb::PartnerRef {
    pb::PartnerRef {
        qualifier: "ZZ".into(),
        id: id.into(),
        name: format!("Partner {id}"),
    }
}

fn opened_by(p: &pb::PartnerRef, case_id: &str, title: &str) -> pb::TgCaseOpened {
    let mut e = opened(case_id, title);
    if let Some(m) = e.meta.as_mut() {
        m.partner = Some(p.clone());
    }
    e
}

async fn wait_for_case(env: &Env, case_id: &str) -> serde_json::Value {
    eventually(&format!("the incident of {case_id}"), LONG, || async {
        env.rows("incident")
            .into_iter()
            .find(|r| r["tgb_tgcaseid"] == case_id)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn cases_from_an_unknown_partner_with_reserved_characters_in_ids_make_one_account_and_one_incident_each()
 {
    let env = Env::start().await;
    let adapter = env.adapter(&[]).await;
    let odd = partner("AC:ME/01 + & Ünïcødé");
    let first = "C:1/ä + &x";
    env.publish(opened_by(&odd, first, "Short shipment")).await;
    let inc = wait_for_case(&env, first).await;
    let accounts = env.rows("account");
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    assert_eq!(accounts[0]["tgb_partnerkey"], "ZZ:AC:ME/01 + & Ünïcødé");
    assert_eq!(inc["_customerid_value"], accounts[0]["accountid"]);
    assert_eq!(inc["title"], "Short shipment");

    // The same event again (a redelivery) and an update: still one incident.
    env.publish(opened_by(&odd, first, "Short shipment")).await;
    let mut update = updated(
        first,
        2,
        "Short shipment (2 pallets)",
        pb::CaseStatus::InProgress,
    );
    update.meta.as_mut().unwrap().partner = Some(odd.clone());
    env.publish(update).await;
    eventually("the update", LONG, || async {
        let rows = env.rows("incident");
        rows.iter()
            .any(|r| r["title"] == "Short shipment (2 pallets)")
            .then_some(())
    })
    .await
    .unwrap();

    // A second case of the partner reuses its account; ids with `#`, `%`, `?`, `*`, `\`.
    let second = r"C#2%3F?*\<x>";
    env.publish(opened_by(&odd, second, "Damaged pallet")).await;
    let inc2 = wait_for_case(&env, second).await;
    assert_eq!(inc2["_customerid_value"], accounts[0]["accountid"]);
    assert_eq!(env.rows("account").len(), 1);
    assert_eq!(env.rows("incident").len(), 2);
    adapter.stop().await;
    assert!(env.bad_requests().is_empty(), "{:?}", env.bad_requests());
}

#[tokio::test]
async fn a_dispute_without_a_case_gets_its_own_incident_once() {
    let env = Env::start().await;
    let adapter = env.adapter(&[]).await;
    let dv = env.sandbox.dataverse();
    let agent = env.user("agent");
    let odd = partner("P/1:+&");
    let account = dv
        .insert_row_as(
            agent,
            "account",
            json!({"name": "Slash Partner", "tgb_partnerkey": "ZZ:P/1:+&"}),
        )
        .unwrap();
    let acc = format!("/accounts({account})");
    let invoice = dv
        .insert_row_as(
            agent,
            "invoice",
            json!({"name": "INV/1&2", "invoicenumber": "INV/1&2+3", "totalamount": 10.0, "customerid_account@odata.bind": acc}),
        )
        .unwrap();
    let dispute = |revision: i64, reason: &str| pb::TgDisputeOpened {
        meta: {
            let mut m = meta(pb::Origin::Tg, "dispute", "D:1/ü", &revision.to_string());
            m.as_mut().unwrap().partner = Some(odd.clone());
            m
        },
        dispute: Some(pb::TgDispute {
            dispute_id: "D:1/ü".into(),
            revision,
            invoice_ref: "INV/1&2+3".into(),
            reason: reason.into(),
            status: pb::DisputeStatus::Open as i32,
            ..Default::default()
        }),
    };
    env.publish(dispute(1, "Price differs")).await;
    let inv = eventually("dispute columns", LONG, || async {
        let row = dv.row("invoice", invoice)?;
        (row["tgb_disputeid"] == "D:1/ü").then_some(row)
    })
    .await
    .unwrap();
    env.publish(dispute(2, "Price differs (again)")).await;
    eventually("the second revision", LONG, || async {
        env.rows("incident")
            .iter()
            .any(|r| r["description"] == "Price differs (again)")
            .then_some(())
    })
    .await
    .unwrap();
    let incidents = env.rows("incident");
    assert_eq!(incidents.len(), 1);
    assert_eq!(incidents[0]["tgb_tgcaseid"], "dispute:D:1/ü");
    assert_eq!(inv["_tgb_disputecase_value"], incidents[0]["incidentid"]);
    assert_eq!(
        env.rows("account").len(),
        1,
        "the partner's account was found"
    );
    adapter.stop().await;
    assert!(env.bad_requests().is_empty(), "{:?}", env.bad_requests());
}
