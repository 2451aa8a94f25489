use reqwest::StatusCode;
use serde_json::Value;
use tgb_sandbox::SandboxConfig;

use crate::common::*;

#[tokio::test]
async fn entra_issues_a_bearer_token_for_a_known_client_and_scope() {
    let sb = start().await;
    let r = entra_token(&sb, &format!("{}/.default", sb.dataverse_url())).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert!(body["access_token"].as_str().unwrap().len() > 20);
}

#[tokio::test]
async fn entra_refuses_a_wrong_secret_with_invalid_client() {
    let sb = start().await;
    let r = http()
        .post(format!("{}/t/oauth2/v2.0/token", sb.azure_authority()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", ENTRA_CLIENT.0),
            ("client_secret", "wrong"),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .starts_with("AADSTS7000215")
    );
}

#[tokio::test]
async fn entra_refuses_an_unknown_client_and_a_scope_without_default() {
    let sb = start().await;
    let url = format!("{}/t/oauth2/v2.0/token", sb.azure_authority());
    let r = http()
        .post(&url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "nobody"),
            ("client_secret", "x"),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_client");
    let r = entra_token(&sb, "https://graph.microsoft.com").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_scope");
}

#[tokio::test]
async fn tg_token_endpoint_accepts_form_and_basic_and_refuses_a_wrong_secret() {
    let sb = start().await;
    let ok = http()
        .post(sb.tg_token_url())
        .basic_auth(TG_CLIENT.0, Some(TG_CLIENT.1))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let body: Value = ok.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["expires_in"].as_u64().unwrap() > 0);
    assert!(!tg_token(&sb).await.is_empty());

    let bad = http()
        .post(sb.tg_token_url())
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", TG_CLIENT.0),
            ("client_secret", "nope"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_client");
    assert!(body["error"]["message"].is_string());
}

#[tokio::test]
async fn tg_api_refuses_a_missing_token_with_the_tg_error_body() {
    let sb = start().await;
    let r = http()
        .get(format!("{}/v1/events", sb.tg_api_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().contains_key("www-authenticate"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
}

#[tokio::test]
async fn tg_token_expires_after_the_configured_lifetime() {
    let mut config = SandboxConfig::default();
    config.identity.token_lifetime_secs = 1;
    let sb = start_with(config).await;
    let token = tg_token(&sb).await;
    let url = format!("{}/v1/events", sb.tg_api_url());
    let first = http().get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let refused = wait_for(WAIT_SECS, || {
        let (url, token) = (url.clone(), token.clone());
        async move {
            let r = http().get(&url).bearer_auth(&token).send().await.unwrap();
            (r.status() == StatusCode::UNAUTHORIZED).then_some(r)
        }
    })
    .await;
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
}

#[tokio::test]
async fn expired_entra_tokens_get_dataverse_and_graph_style_401s() {
    let sb = start().await;
    let dv: Value = entra_token(&sb, &format!("{}/.default", sb.dataverse_url()))
        .await
        .json()
        .await
        .unwrap();
    let gr: Value = entra_token(&sb, "https://graph.microsoft.com/.default")
        .await
        .json()
        .await
        .unwrap();
    let dv_url = format!("{}/api/data/v9.2/incidents", sb.dataverse_url());
    let gr_url = format!("{}/v1.0/planner/tasks/x", sb.graph_url());
    let before = http()
        .get(&dv_url)
        .bearer_auth(dv["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_ne!(before.status(), StatusCode::UNAUTHORIZED);

    sb.identity().expire_all_tokens();

    let r = http()
        .get(&dv_url)
        .bearer_auth(dv["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"]["code"].as_str().unwrap().starts_with("0x"));
    let r = http()
        .get(&gr_url)
        .bearer_auth(gr["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "InvalidAuthenticationToken");
    assert!(body["error"]["innerError"]["request-id"].is_string());
}

#[tokio::test]
async fn a_token_is_refused_outside_its_audience() {
    let sb = start().await;
    let graph: Value = entra_token(&sb, "https://graph.microsoft.com/.default")
        .await
        .json()
        .await
        .unwrap();
    let graph = graph["access_token"].as_str().unwrap().to_owned();
    let tg = tg_token(&sb).await;
    let dv_url = format!("{}/api/data/v9.2/incidents", sb.dataverse_url());
    for token in [&graph, &tg] {
        let r = http().get(&dv_url).bearer_auth(token).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = http()
        .get(format!("{}/v1/events", sb.tg_api_url()))
        .bearer_auth(&graph)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = http()
        .get(format!("{}/v1.0/planner/tasks/x", sb.graph_url()))
        .bearer_auth(&graph)
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn client_credentials_calls_are_logged_as_the_application_user() {
    let sb = start().await;
    let dv: Value = entra_token(&sb, &format!("{}/.default", sb.dataverse_url()))
        .await
        .json()
        .await
        .unwrap();
    http()
        .get(format!("{}/api/data/v9.2/incidents", sb.dataverse_url()))
        .bearer_auth(dv["access_token"].as_str().unwrap())
        .header("x-tgb-caller-id", "forged")
        .send()
        .await
        .unwrap();
    let call = sb.calls().of_system("dataverse").pop().unwrap();
    let caller = call.caller.unwrap();
    assert_eq!(caller.id, "7d3c0b1e-0000-4000-8000-000000000001");
    assert_eq!(caller.kind, "application");
}

#[tokio::test]
async fn acting_as_a_named_user_needs_no_token_and_is_logged_as_that_user() {
    let sb = start().await;
    let r = http()
        .get(format!(
            "{}/api/data/v9.2/incidents",
            sb.dataverse_url_as("agent")
        ))
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), StatusCode::UNAUTHORIZED);
    let call = sb.calls().of_system("dataverse").pop().unwrap();
    assert!(call.scripted);
    assert_eq!(call.path, "/api/data/v9.2/incidents");
    let caller = call.caller.unwrap();
    assert_eq!(caller.name, "Dana Agent");
    assert_eq!(caller.kind, "user");

    let r = http()
        .get(format!("{}/v1.0/planner/tasks", sb.graph_url_as("nobody")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "unknown_user"
    );
}

async fn create_account(url: &str, token: Option<&str>, name: &str) -> Value {
    let mut rb = http()
        .post(format!("{url}/api/data/v9.2/accounts"))
        .header("prefer", "return=representation")
        .json(&serde_json::json!({"name": name}));
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    let r = rb.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    r.json().await.unwrap()
}

#[tokio::test]
async fn dataverse_records_the_application_user_or_the_named_user_as_the_writer() {
    let sb = start().await;
    let token: Value = entra_token(&sb, &format!("{}/.default", sb.dataverse_url()))
        .await
        .json()
        .await
        .unwrap();
    let by_app = create_account(&sb.dataverse_url(), token["access_token"].as_str(), "Acme").await;
    assert_eq!(
        by_app["_modifiedby_value"],
        "7d3c0b1e-0000-4000-8000-000000000001"
    );
    let by_agent = create_account(&sb.dataverse_url_as("agent"), None, "Globex").await;
    assert_eq!(
        by_agent["_modifiedby_value"],
        "2a1b0c3d-0000-4000-8000-000000000101"
    );
}

#[tokio::test]
async fn emulator_admin_routes_need_no_token_and_are_not_logged() {
    let sb = start().await;
    let r = http()
        .get(format!("{}/_sandbox/snapshot", sb.dataverse_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(sb.calls().counts().total, 0);
}

async fn first_page_next_link(url: &str, token: Option<&str>) -> String {
    let mut rb = http()
        .get(format!("{url}/api/data/v9.2/accounts"))
        .header("prefer", "odata.maxpagesize=2");
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    let page: Value = rb.send().await.unwrap().json().await.unwrap();
    assert_eq!(page["value"].as_array().unwrap().len(), 2);
    page["@odata.nextLink"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn dataverse_next_links_lead_back_through_the_same_mount() {
    let sb = start().await;
    for name in ["A", "B", "C"] {
        create_account(&sb.dataverse_url_as("agent"), None, name).await;
    }
    let token: Value = entra_token(&sb, &format!("{}/.default", sb.dataverse_url()))
        .await
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().unwrap();
    let direct = first_page_next_link(&sb.dataverse_url(), Some(token)).await;
    assert!(direct.starts_with(&sb.dataverse_url()), "{direct}");
    let page: Value = http()
        .get(&direct)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["value"].as_array().unwrap().len(), 1);

    let scripted = first_page_next_link(&sb.dataverse_url_as("agent"), None).await;
    assert!(
        scripted.starts_with(&sb.dataverse_url_as("agent")),
        "{scripted}"
    );
    let page: Value = http()
        .get(&scripted)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["value"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn acting_as_a_user_reaches_routes_with_path_parameters() {
    let sb = start().await;
    let plan = "pLnPartnerIssues00000000000A";
    let r = http()
        .get(format!(
            "{}/v1.0/planner/plans/{plan}",
            sb.graph_url_as("planner")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.text().await);
    let r = http()
        .get(format!(
            "{}/v1.0/planner/plans/{plan}/tasks",
            sb.graph_url_as("planner")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}
