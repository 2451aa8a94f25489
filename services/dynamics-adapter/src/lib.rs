//! dynamics-adapter: flows D1–D8 against the Dataverse Web API.
//!
//! Aggregates decide, executors act. One module per kind of row, each with a pure `plan`
//! (no I/O, no clock) and its unit tests: [`incident`] (D1), [`notes`] (D1, D2, D4),
//! [`account`] (D3, D8), [`contact`] (D8), [`invoice`] (D6), [`exception`] (D2), [`order`]
//! (D5), [`kpi`] (D7). They build on [`schema`] (tables, option sets), [`odata`] (every query
//! string and write shape), [`ids`], [`state`] and [`change`]. The executors:
//!
//! - [`inbound`]: `tg.*`, `review.*`, `onboarding.*` events → Dataverse writes (upserts at
//!   deterministic UUIDv5 ids, keys in the body, coalesced into `$batch` change sets by
//!   [`batcher`]).
//! - [`detect`]: Dataverse changes → `dyn.*` events, from the webhook
//!   (`POST /webhooks/dataverse`) and from a change-tracking poll (delta links in
//!   `tgb_cursors`, re-baselined when Dataverse says the token expired), run by one replica
//!   at a time (the lease [`LEASE_KEY`]) and written with compare-and-set
//!   ([`tgb_bus::cursor::Cursor`]).
//!
//! Dependencies run one way: executors → aggregates → shared pure modules; [`adapter`] holds
//! the I/O both executors share.
//!
//! Without `TGB_DATAVERSE_URL` the service only serves health and metrics.

pub mod account;
pub mod adapter;
pub mod batcher;
pub mod change;
pub mod contact;
pub mod detect;
pub mod exception;
pub mod ids;
pub mod inbound;
pub mod incident;
pub mod invoice;
pub mod kpi;
pub mod notes;
pub mod odata;
pub mod order;
pub mod schema;
pub mod settings;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret;
use tgb_bus::cursor::{Cursor, CursorError};
use tgb_clients::dataverse::{DataverseClient, DataverseError, DataverseSettings, entra_token_url};
use tgb_clients::oauth::ClientCredentials;
use tgb_runtime::Config;
use tokio_util::sync::CancellationToken;

pub use adapter::Adapter;
pub use settings::DynamicsSettings;

/// The service's name: its NATS connection name, telemetry service name and consumer prefix.
pub const NAME: &str = tgb_service::registry::DYNAMICS_ADAPTER.name;

/// The durable consumer of what Dynamics must apply.
pub const CONSUMER: &str = "dynamics-adapter-in";

/// The key of the change-tracking poller's lease in `tgb_sync`: one replica polls at a time.
pub const LEASE_KEY: &str = "dataverse-poller.leader";

/// Where it listens when `TGB_HTTP_ADDR` is not set.
pub const DEFAULT_HTTP_ADDR: SocketAddr = tgb_service::registry::DYNAMICS_ADAPTER.default_addr();

/// Runs the service on `listener` (tests pass one bound to port 0).
pub async fn serve(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let settings: DynamicsSettings = config.section("dynamics")?;
    settings.validate().map_err(anyhow::Error::msg)?;
    let bus = tgb_service::connect(NAME, &config).await?;
    let mut workers = tgb_service::Workers::new(&shutdown);
    let s = &config.settings;
    let Some(org_url) = s.dataverse_url.clone() else {
        tracing::warn!("TGB_DATAVERSE_URL is not set: the Dynamics flows are off");
        return tgb_service::run(
            NAME,
            &config,
            listener,
            axum::Router::new(),
            bus,
            shutdown,
            workers,
        )
        .await;
    };
    let tenant = config.require(&s.azure_tenant_id, "TGB_AZURE_TENANT_ID", NAME)?;
    let client_id = config.require(&s.azure_client_id, "TGB_AZURE_CLIENT_ID", NAME)?;
    let credential = tgb_service::entra::credential(&config, NAME)?;
    let mut credentials = ClientCredentials::new(
        entra_token_url(&s.azure_authority, tenant).context("TGB_AZURE_AUTHORITY")?,
        client_id.clone(),
        credential,
    );
    credentials.refresh_margin = std::time::Duration::from_secs(settings.token_refresh_margin_secs);
    let governor =
        tgb_governor::Governor::new(format!("dataverse:{client_id}"), settings.governor.clone());
    if settings.fleet {
        // Before the first request: the lane's limits are the whole fleet's.
        workers
            .fleet(
                &bus,
                governor.clone(),
                settings.fleet_ttl(),
                settings.fleet_renew(),
            )
            .await?;
    }
    let dv = DataverseClient::new(
        &DataverseSettings {
            org_url,
            request_timeout: settings.request_timeout(),
            throttle_retries: settings.throttle_retries,
        },
        credentials,
        governor,
    )?;
    let app_user = loop {
        match dv.who_am_i().await {
            Ok(id) => break id,
            Err(e) if e.is_transient() && !shutdown.is_cancelled() => {
                tracing::warn!(error = %e, "WhoAmI failed, retrying");
                tokio::select! {
                    _ = tokio::time::sleep(e.retry_after().unwrap_or(std::time::Duration::from_secs(1))) => {}
                    _ = shutdown.cancelled() => return Ok(()),
                }
            }
            Err(e) => return Err(anyhow::Error::new(e).context("WhoAmI (the application user)")),
        }
    };
    tracing::info!(app_user = %app_user, "Dataverse application user");
    if let Some(ms) = settings.batch_linger_ms {
        tracing::warn!(
            batch_linger_ms = ms,
            "[dynamics] batch_linger_ms is retired and ignored: writes gather only behind a $batch in flight"
        );
    }
    let batcher = batcher::Batcher::start(dv.clone(), settings.batch_max_requests);
    let adapter = Arc::new(Adapter::new(
        dv,
        batcher,
        tgb_bus::links::Links::new(bus.kv(tgb_bus::names::KV_LINKS).await?),
        state::States::new(bus.kv(tgb_bus::names::KV_SYNC).await?),
        bus.kv(tgb_bus::names::KV_CURSORS).await?,
        bus.publisher(),
        settings,
        app_user,
    ));
    workers.consumer(
        &bus,
        tgb_service::consumer_spec(&config, CONSUMER, inbound::SUBJECTS),
        Arc::new(inbound::Writer(adapter.clone())),
    );
    let lease = tgb_bus::lease::Lease::new(
        bus.kv(tgb_bus::names::KV_SYNC).await?,
        LEASE_KEY,
        NAME,
        adapter.settings.poller_lease_ttl(),
        adapter.settings.poller_lease_renew(),
    );
    let poller = adapter.clone();
    for outcome in ["ok", "stopped"] {
        metrics::counter!("tgb_dynamics_poll_rounds_total", "outcome" => outcome).increment(0);
    }
    workers.spawn(move |shutdown| async move {
        lease
            .lead(&shutdown, |stop| poll_loop(poller.clone(), stop))
            .await;
        Ok(())
    });
    let hook = Webhook {
        adapter,
        key: s.dataverse_webhook_key.clone(),
    };
    let routes = axum::Router::new()
        .route("/webhooks/dataverse", axum::routing::post(webhook))
        .with_state(Arc::new(hook));
    tgb_service::run(NAME, &config, listener, routes, bus, shutdown, workers).await
}

struct Webhook {
    adapter: Arc<Adapter>,
    key: Option<secrecy::SecretString>,
}

fn answer(status: StatusCode, outcome: &'static str, message: &str) -> Response {
    metrics::counter!("tgb_webhooks_received_total", "source" => "dataverse", "outcome" => outcome)
        .increment(1);
    (
        status,
        axum::Json(serde_json::json!({"error": {"code": outcome, "message": message}})),
    )
        .into_response()
}

async fn webhook(
    State(hook): State<Arc<Webhook>>,
    Query(query): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(expected) = &hook.key else {
        return answer(
            StatusCode::UNAUTHORIZED,
            "rejected",
            "no webhook key is configured (TGB_DATAVERSE_WEBHOOK_KEY)",
        );
    };
    let presented = presented_key(&hook.adapter.settings, &headers, &query);
    let ok = presented.is_some_and(|p| {
        use subtle::ConstantTimeEq;
        p.as_bytes()
            .ct_eq(expected.expose_secret().as_bytes())
            .into()
    });
    if !ok {
        return answer(
            StatusCode::UNAUTHORIZED,
            "rejected",
            &format!(
                "missing or wrong webhook key (expected in the {} header)",
                hook.adapter.settings.webhook_key_header
            ),
        );
    }
    match detect::webhook_body(&hook.adapter, &body).await {
        Ok(()) => {
            metrics::counter!("tgb_webhooks_received_total", "source" => "dataverse", "outcome" => "published").increment(1);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(detect::WebhookFailure::Invalid(m)) => answer(StatusCode::BAD_REQUEST, "invalid", &m),
        Err(detect::WebhookFailure::Failed(m)) => {
            tracing::warn!(error = %m, "Dataverse webhook not taken");
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "failed",
                "could not record the change; retry",
            )
        }
    }
}

/// The key a webhook call presents: the configured header, or `?code=` only when
/// `webhook_key_in_query` allows it.
fn presented_key(
    settings: &settings::DynamicsSettings,
    headers: &HeaderMap,
    query: &std::collections::HashMap<String, String>,
) -> Option<String> {
    let header = headers
        .get(settings.webhook_key_header.as_str())
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match header {
        Some(key) => Some(key),
        None if settings.webhook_key_in_query => query.get("code").cloned(),
        None => None,
    }
}

/// The reconciling path: change tracking of every configured table, delta links in KV. Runs
/// while this replica holds the poller lease; `stop` ends it (the lease was lost or the
/// service stops), also in the middle of a round: a round cut short writes no cursor.
async fn poll_loop(adapter: Arc<Adapter>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(adapter.settings.poll_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let mut outcome = "ok";
        for table in adapter.settings.poll_tables.clone() {
            let round = tokio::select! {
                r = poll_table(&adapter, &table) => r,
                _ = stop.cancelled() => return,
            };
            if round.is_err() {
                outcome = "stopped";
            }
            match round {
                Ok(_) => {}
                Err(PollError::Cursor(CursorError::Moved { .. })) => {
                    // Another replica polled this table since this round read the cursor (it
                    // holds the lease now, or held it a moment ago): its cursor stands, and
                    // what this round published carries the same event ids as its own.
                    metrics::counter!("tgb_dynamics_cursor_moved_total", "table" => table.clone())
                        .increment(1);
                    tracing::info!(
                        table,
                        "the delta link moved under this round (another replica polled); round ended"
                    );
                    break;
                }
                Err(e) => {
                    tracing::warn!(table, error = %e, "change-tracking poll failed; next round retries");
                }
            }
        }
        metrics::counter!("tgb_dynamics_poll_rounds_total", "outcome" => outcome).increment(1);
    }
}

/// Why a change-tracking round of one table stopped.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// Reading or writing the delta link (`CursorError::Moved`: another replica wrote it).
    #[error(transparent)]
    Cursor(#[from] CursorError),
    /// Dataverse refused or failed the read.
    #[error(transparent)]
    Dataverse(#[from] DataverseError),
    /// A change could not be handled (published or recorded).
    #[error("handling a change: {0}")]
    Handling(String),
}

impl From<Tracking> for PollError {
    fn from(t: Tracking) -> Self {
        match t {
            Tracking::Dataverse(e) => PollError::Dataverse(e),
            Tracking::Handling(m) => PollError::Handling(m),
        }
    }
}

/// The key of `table`'s delta link in `tgb_cursors`.
pub fn cursor_key(table: &str) -> String {
    format!("dataverse.{table}")
}

/// Refusals of one stored delta link in a row after which the table is re-baselined.
pub const MAX_LINK_FAILURES: u32 = 5;

/// Counts one more refusal of `link`; true once it reached [`MAX_LINK_FAILURES`].
fn failing_link(adapter: &Adapter, table: &str, link: &str) -> bool {
    let mut failures = adapter.link_failures.lock().unwrap();
    let entry = failures
        .entry(table.to_owned())
        .or_insert_with(|| (link.to_owned(), 0));
    if entry.0 != link {
        *entry = (link.to_owned(), 0);
    }
    entry.1 += 1;
    entry.1 >= MAX_LINK_FAILURES
}

/// One change-tracking round of `table`: reads the delta link and its revision, hands the
/// changes to the adapter, and stores the next delta link at that revision
/// ([`tgb_bus::cursor::Cursor`]): a replica overtaken by another gets `CursorError::Moved`
/// and cannot move the link back.
pub async fn poll_table(adapter: &Adapter, table: &str) -> Result<usize, PollError> {
    let cursor = Cursor::new(adapter.cursors.clone(), cursor_key(table));
    let (link, revision) = match cursor.load().await? {
        Some((b, rev)) => (Some(String::from_utf8_lossy(&b).into_owned()), Some(rev)),
        None => (None, None),
    };
    // A first baseline only sets the starting point; after an expiry every row is checked
    // (the version and fingerprint filters drop what was already handled).
    let tracked = match &link {
        Some(l) => match track(adapter, table, Some(l), true).await {
            Ok(tracked) => {
                adapter.link_failures.lock().unwrap().remove(table);
                tracked
            }
            Err(Tracking::Dataverse(DataverseError::DeltaExpired { .. })) => {
                metrics::counter!("tgb_dynamics_rebaselines_total", "table" => table.to_owned(), "reason" => "expired")
                    .increment(1);
                tracing::warn!(table, "change-tracking token expired: re-baselining");
                adapter.link_failures.lock().unwrap().remove(table);
                track(adapter, table, None, true).await?
            }
            Err(Tracking::Dataverse(e)) if !e.is_transient() && failing_link(adapter, table, l) => {
                // The same stored link refused again and again (a token Dataverse no longer
                // reads, whatever the code it answers): start from a new baseline rather than
                // never polling this table again.
                metrics::counter!("tgb_dynamics_rebaselines_total", "table" => table.to_owned(), "reason" => "failing_link")
                    .increment(1);
                tracing::warn!(table, error = %e, failures = MAX_LINK_FAILURES, "the stored delta link keeps failing: re-baselining");
                adapter.link_failures.lock().unwrap().remove(table);
                track(adapter, table, None, true).await?
            }
            Err(e) => return Err(e.into()),
        },
        None => track(adapter, table, None, false).await?,
    };
    cursor
        .store(tracked.delta_link.into_bytes().into(), revision)
        .await?;
    Ok(tracked.seen)
}

/// What a change-tracking read of one table gave: changes handled, and the next delta link.
struct Tracked {
    seen: usize,
    delta_link: String,
}

/// Why a change-tracking read stopped.
#[derive(Debug, thiserror::Error)]
enum Tracking {
    #[error(transparent)]
    Dataverse(#[from] DataverseError),
    #[error("{0}")]
    Handling(String),
}

/// Reads the changes of `table` since `link` (a baseline when `None`) page by page, handing
/// each row to the adapter when `handle` (a first baseline only needs its delta link), so at
/// most one page (1000 rows) is held, however large the table.
async fn track(
    adapter: &Adapter,
    table: &str,
    link: Option<&str>,
    handle: bool,
) -> Result<Tracked, Tracking> {
    let mut pages = adapter.dv.change_pages(schema::set(table), "", link);
    let mut tracked = Tracked {
        seen: 0,
        delta_link: String::new(),
    };
    while let Some(page) = pages.next_page().await? {
        if handle {
            for row in &page.rows {
                if let Some(change) = detect::from_row(table, row) {
                    adapter
                        .on_change(change)
                        .await
                        .map_err(|e| Tracking::Handling(e.to_string()))?;
                    tracked.seen += 1;
                }
            }
        }
        if !page.delta_link.is_empty() {
            tracked.delta_link = page.delta_link;
        }
    }
    Ok(tracked)
}
