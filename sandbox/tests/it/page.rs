use crate::common::*;

#[tokio::test]
async fn root_page_lists_cases_and_recent_calls() {
    let sb = start().await;
    raise_case(&sb, "Pallets <short>").await;
    let token = tg_token(&sb).await;
    http()
        .get(format!("{}/v1/events", sb.tg_api_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let r = http().get(sb.base_url()).send().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = r.text().await.unwrap();
    assert!(html.contains("Pallets &lt;short&gt;"), "titles are escaped");
    assert!(html.contains("C-10001"));
    assert!(html.contains("/v1/events"));
    assert!(html.contains("http-equiv=\"refresh\""));
    assert!(html.contains("Dataverse: incidents") && html.contains("Planner: tasks"));
}
