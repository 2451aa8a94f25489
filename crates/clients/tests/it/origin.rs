//! A client never sends its token to a host an API answer (or a stored cursor) pointed it to:
//! a stand-in Dataverse whose links lead to a second server, the "thief", which must see no
//! request at all.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{Path, Query};
use secrecy::SecretString;
use serde_json::json;
use tgb_clients::dataverse::{DataverseClient, DataverseError, DataverseSettings};
use tgb_clients::oauth::ClientCredentials;
use tgb_governor::{Governor, GovernorConfig};

const API: &str = "/api/data/v9.2";

/// A server on its own port counting the requests it receives.
async fn thief() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let app = axum::Router::new().fallback(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        async { axum::Json(json!({"value": [], "@odata.deltaLink": "stolen"})) }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, hits)
}

/// The stand-in organisation: a token endpoint and tables whose links lead where the test says.
async fn organisation(thief: &str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let thief_host = thief.trim_start_matches("http://").to_owned();
    let links: HashMap<&str, serde_json::Value> = HashMap::from([
        (
            "accounts",
            json!({"value": [{"n": 1}], "@odata.nextLink": format!("{thief}{API}/accounts?$skiptoken=2")}),
        ),
        (
            "contacts",
            json!({"value": [{"n": 1}], "@odata.nextLink": format!("//{thief_host}{API}/contacts?$skiptoken=2")}),
        ),
        (
            "incidents",
            json!({"value": [], "@odata.deltaLink": format!("{thief}{API}/incidents?$deltatoken=9")}),
        ),
        (
            "tasks",
            json!({"value": [{"n": 1}], "@odata.nextLink": format!("{base}{API}/tasks_page2")}),
        ),
        ("tasks_page2", json!({"value": [{"n": 2}]})),
    ]);
    let links = Arc::new(links);
    let app = axum::Router::new()
        .route(
            "/token",
            axum::routing::post(|| async {
                axum::Json(json!({"access_token": "secret-token", "token_type": "Bearer", "expires_in": 3600}))
            }),
        )
        .route(
            "/api/data/v9.2/{table}",
            axum::routing::get(
                move |Path(table): Path<String>, Query(_q): Query<HashMap<String, String>>| {
                    let links = links.clone();
                    async move { axum::Json(links.get(table.as_str()).cloned().unwrap_or(json!({"value": []}))) }
                },
            ),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

fn client(org: &str) -> DataverseClient {
    let settings = DataverseSettings {
        org_url: org.parse().unwrap(),
        request_timeout: Duration::from_secs(30),
        throttle_retries: 0,
    };
    let credentials = ClientCredentials::new(
        format!("{org}/token").parse().unwrap(),
        "me",
        SecretString::from("s3cret"),
    );
    DataverseClient::new(
        &settings,
        credentials,
        Governor::new("dataverse:test", GovernorConfig::unlimited(4)),
    )
    .unwrap()
}

fn refused(result: Result<impl std::fmt::Debug, DataverseError>) {
    match result {
        Err(DataverseError::Invalid { message, .. }) => {
            assert!(message.contains("refused to follow"), "{message}");
            assert!(!message.contains("secret-token"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn dataverse_links_and_cursors_to_another_host_are_not_followed() {
    let (thief, hits) = thief().await;
    let org = organisation(&thief).await;
    let dv = client(&org);

    // A link to the same organisation is followed.
    assert_eq!(dv.get_all("tasks", 10).await.unwrap().len(), 2);

    refused(dv.get_all("accounts", 10).await);
    refused(dv.get_all("contacts", 10).await);
    // A foreign delta link is refused when it arrives, so it is never stored as the cursor...
    refused(dv.changes("incidents", "", None).await);
    // ...and a foreign cursor read back from the store is not followed either.
    refused(
        dv.changes(
            "accounts",
            "",
            Some(&format!("{thief}{API}/accounts?$deltatoken=1")),
        )
        .await,
    );
    refused(dv.get(&format!("{org}/other/path")).await);

    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the other host saw a request"
    );
}

mod property {
    use proptest::prelude::*;
    use tgb_clients::origin::same_origin;
    use url::Url;

    fn root() -> Url {
        Url::parse("https://org.crm.dynamics.com/api/data/v9.2/").unwrap()
    }

    /// Whatever follows the root's text, a link that passes stays under the root.
    fn accepted_links_stay_under_the_root(link: &str) {
        if let Ok(url) = same_origin(&root(), link) {
            assert_eq!(url.origin(), root().origin(), "{link}");
            assert!(
                url.username().is_empty() && url.password().is_none(),
                "{link}"
            );
            assert!(
                url.path() == "/api/data/v9.2" || url.path().starts_with("/api/data/v9.2/"),
                "{link} -> {url}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn arbitrary_text_never_panics_and_never_escapes(link in ".{0,80}") {
            accepted_links_stay_under_the_root(&link);
        }

        #[test]
        fn suffixes_of_the_root_never_escape(
            prefix in prop::sample::select(vec![
                "https://org.crm.dynamics.com",
                "https://org.crm.dynamics.com/api/data/v9.2",
                "https://org.crm.dynamics.com/api/data/v9.2/",
                "https://org.crm.dynamics.com:443",
                "HTTPS://ORG.crm.dynamics.com/api/data",
            ]),
            suffix in "[a-z0-9./%@:?#\\\\-]{0,40}",
        ) {
            accepted_links_stay_under_the_root(&format!("{prefix}{suffix}"));
        }
    }
}
