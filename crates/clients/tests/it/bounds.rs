//! Answers are read with a cap: an oversized document (declared or chunked) is refused without
//! being held whole, and a collection that never ends is not collected forever.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use secrecy::SecretString;
use serde_json::json;
use tgb_clients::dataverse::{
    DataverseClient, DataverseError, DataverseSettings, MAX_GET_ALL_ROWS,
};
use tgb_clients::oauth::{ClientCredentials, TokenCache};
use tgb_clients::tg::{TgClient, TgError};
use tgb_governor::{Governor, GovernorConfig};

const MIB: usize = 1 << 20;
/// Turns a hang into a failure (the clients crate does not depend on the testkit).
const HANG_GUARD: Duration = Duration::from_secs(120);

/// A stand-in serving a token, documents and an endless Dataverse collection; counts pages.
async fn server() -> (String, Arc<AtomicUsize>) {
    let pages = Arc::new(AtomicUsize::new(0));
    let counted = pages.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let next = format!("{base}/api/data/v9.2/rows?page=next");
    let app = axum::Router::new()
        .route(
            "/token",
            axum::routing::post(|| async {
                axum::Json(json!({"access_token": "t", "token_type": "Bearer", "expires_in": 3600}))
            }),
        )
        // 8 MiB with its length declared.
        .route(
            "/v1/documents/declared/content",
            axum::routing::get(|| async { vec![b'x'; 8 * MIB] }),
        )
        // 8 MiB in 64 KiB chunks, no length.
        .route(
            "/v1/documents/chunked/content",
            axum::routing::get(|| async {
                let chunks = (0..128).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 64 * 1024]));
                Body::from_stream(futures::stream::iter(chunks))
            }),
        )
        .route(
            "/v1/documents/small/content",
            axum::routing::get(|| async { vec![b'x'; 1000] }),
        )
        .route(
            "/api/data/v9.2/rows",
            axum::routing::get(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                let next = next.clone();
                async move {
                    let value = vec![json!({}); 10_000];
                    axum::Json(json!({"value": value, "@odata.nextLink": next}))
                }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, pages)
}

fn tg(base: &str) -> TgClient {
    let http = TgClient::http_client(Duration::from_secs(30));
    let tokens = TokenCache::new(
        http.clone(),
        ClientCredentials::new(
            format!("{base}/token").parse().unwrap(),
            "me",
            SecretString::from("s"),
        ),
    );
    TgClient::new(http, base.parse().unwrap(), Arc::new(tokens))
}

#[tokio::test]
async fn documents_over_the_cap_are_refused_declared_or_chunked() {
    let (base, _) = server().await;
    let tg = tg(&base);
    for id in ["declared", "chunked"] {
        match tg.document_content(id, MIB as u64).await {
            Err(TgError::TooLarge { limit, .. }) => assert_eq!(limit, MIB as u64),
            other => panic!(
                "{id}: expected TooLarge, got {:?}",
                other.map(|c| c.bytes.len())
            ),
        }
    }
    let small = tg.document_content("small", MIB as u64).await.unwrap();
    assert_eq!(small.bytes.len(), 1000);
}

#[tokio::test]
async fn a_collection_that_never_ends_is_not_collected_forever() {
    let (base, pages) = server().await;
    let dv = DataverseClient::new(
        &DataverseSettings {
            org_url: base.parse().unwrap(),
            request_timeout: Duration::from_secs(30),
            throttle_retries: 0,
        },
        ClientCredentials::new(
            format!("{base}/token").parse().unwrap(),
            "me",
            SecretString::from("s"),
        ),
        Governor::new("dataverse:bounds", GovernorConfig::unlimited(4)),
    )
    .unwrap();
    let got = tokio::time::timeout(HANG_GUARD, dv.get_all("rows", 5000)).await;
    match got.expect("get_all returns") {
        Err(DataverseError::Invalid { message, .. }) => {
            assert!(message.contains(&MAX_GET_ALL_ROWS.to_string()), "{message}")
        }
        other => panic!("expected a refusal, got {:?}", other.map(|r| r.len())),
    }
    println!(
        "get_all stopped after {} pages of 10000 rows",
        pages.load(Ordering::SeqCst)
    );
}

/// Peak resident set size of this process, KiB (Linux; 0 elsewhere).
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A stand-in change-tracking table of `rows` rows (about 600 bytes each), served in pages of
/// 1000 generated on the fly (the stand-in holds none of them); counts the pages served.
async fn tracked_table(rows: usize) -> (String, Arc<AtomicUsize>) {
    let served = Arc::new(AtomicUsize::new(0));
    let counted = served.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let api = format!("{base}/api/data/v9.2");
    let app = axum::Router::new()
        .route(
            "/token",
            axum::routing::post(|| async {
                axum::Json(json!({"access_token": "t", "token_type": "Bearer", "expires_in": 3600}))
            }),
        )
        .route(
            "/api/data/v9.2/incidents",
            axum::routing::get(
                move |axum::extract::Query(q): axum::extract::Query<
                    std::collections::HashMap<String, String>,
                >| {
                    let page: usize = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(0);
                    counted.fetch_add(1, Ordering::SeqCst);
                    let api = api.clone();
                    async move {
                        let first = page * 1000;
                        let value: Vec<_> = (first..(first + 1000).min(rows))
                            .map(|i| {
                                json!({
                                    "incidentid": format!("00000000-0000-4000-8000-{i:012}"),
                                    "title": format!("{i:0>200}"),
                                    "description": "x".repeat(300),
                                    "versionnumber": i,
                                })
                            })
                            .collect();
                        let mut body = json!({ "value": value });
                        if first + 1000 < rows {
                            body["@odata.nextLink"] =
                                json!(format!("{api}/incidents?page={}", page + 1));
                        } else {
                            body["@odata.deltaLink"] =
                                json!(format!("{api}/incidents?$deltatoken=1"));
                        }
                        axum::Json(body)
                    }
                },
            ),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, served)
}

fn dataverse(base: &str) -> DataverseClient {
    DataverseClient::new(
        &DataverseSettings {
            org_url: base.parse().unwrap(),
            request_timeout: Duration::from_secs(30),
            throttle_retries: 0,
        },
        ClientCredentials::new(
            format!("{base}/token").parse().unwrap(),
            "me",
            SecretString::from("s"),
        ),
        Governor::new("dataverse:pages", GovernorConfig::unlimited(4)),
    )
    .unwrap()
}

#[tokio::test]
async fn a_fifty_thousand_row_baseline_is_read_one_page_at_a_time() {
    let (base, served) = tracked_table(50_000).await;
    let dv = dataverse(&base);

    let mut pages = dv.change_pages("incidents", "", None);
    let first = pages.next_page().await.unwrap().unwrap();
    assert_eq!(first.rows.len(), 1000);
    assert_eq!(
        served.load(Ordering::SeqCst),
        1,
        "the first page is handed over before the next is asked for"
    );
    let before = peak_rss_kib();
    let (mut rows, mut link) = (first.rows.len(), String::new());
    while let Some(page) = pages.next_page().await.unwrap() {
        rows += page.rows.len();
        if !page.delta_link.is_empty() {
            link = page.delta_link;
        }
    }
    let paged = peak_rss_kib();
    assert_eq!(rows, 50_000);
    assert!(link.ends_with("$deltatoken=1"), "{link}");

    // The same baseline collected whole, as `changes` (and the poll, before) does.
    let all = dv.changes("incidents", "", None).await.unwrap();
    let collected = peak_rss_kib();
    assert_eq!(all.rows.len(), 50_000);
    println!(
        "50000-row baseline: peak RSS {before} KiB after the first page, {paged} KiB after \
         reading it page by page (+{} KiB), {collected} KiB after collecting it whole (+{} KiB)",
        paged.saturating_sub(before),
        collected.saturating_sub(paged)
    );
}
