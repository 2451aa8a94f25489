use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::eventually;

/// The streams every service provisions on start (`tgb_bus::names`; this crate cannot depend on
/// tgb-bus, whose tests depend on it).
pub const PROVISIONED_STREAMS: [&str; 2] = ["TGB_EVENTS", "TGB_DLQ"];

/// How long a service may take to become ready, and to stop once shutdown is asked.
const DEADLINE: Duration = crate::HANG_GUARD;

/// A tg-bridge service running in-process on a loopback port, started by
/// [`RunningService::start`] after the checks every service must pass; [`RunningService::stop`]
/// asserts it stops cleanly. Dropped without `stop` (a failed test), it only asks the service to
/// shut down.
pub struct RunningService {
    base: String,
    http: reqwest::Client,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), String>>>,
}

impl RunningService {
    /// Binds `127.0.0.1:0`, spawns `serve(listener, shutdown)` and asserts what every service
    /// does on start: `/readyz` answers 200 within 20 s, `/healthz` and `/metrics` answer 200,
    /// and [`PROVISIONED_STREAMS`] exist on the nats-server at `nats_url`. Panics otherwise.
    ///
    /// `serve` is the service's `serve` with its `Config` already built by the caller, e.g.
    /// `|listener, shutdown| tg_ingress::serve(config, listener, shutdown)`.
    pub async fn start<F, Fut, E>(nats_url: &str, serve: F) -> RunningService
    where
        F: FnOnce(tokio::net::TcpListener, CancellationToken) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Debug,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let base = format!("http://{}", listener.local_addr().expect("local address"));
        let shutdown = CancellationToken::new();
        let served = serve(listener, shutdown.clone());
        let task = tokio::spawn(async move { served.await.map_err(|e| format!("{e:?}")) });
        let service = RunningService {
            base,
            http: reqwest::Client::new(),
            shutdown,
            task: Some(task),
        };

        eventually("/readyz answers 200", DEADLINE, || async {
            let r = service.get("/readyz").await.ok()?;
            (r.status() == 200).then_some(())
        })
        .await
        .unwrap();
        for path in ["/healthz", "/metrics"] {
            let status = service
                .get(path)
                .await
                .unwrap_or_else(|e| panic!("GET {path}: {e}"))
                .status();
            assert_eq!(status, 200, "GET {path}");
        }

        let client = async_nats::connect(nats_url)
            .await
            .unwrap_or_else(|e| panic!("connect to {nats_url}: {e}"));
        let js = async_nats::jetstream::new(client);
        for stream in PROVISIONED_STREAMS {
            if let Err(e) = js.get_stream(stream).await {
                panic!("the service did not provision {stream}: {e}");
            }
        }
        service
    }

    /// `http://127.0.0.1:<port>`, the service's address.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// An HTTP client for further requests.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `GET <base><path>`.
    pub async fn get(&self, path: &str) -> reqwest::Result<reqwest::Response> {
        self.http.get(format!("{}{path}", self.base)).send().await
    }

    /// Waits up to 20 s for a line of `/metrics` that satisfies `line`; panics naming `what`.
    pub async fn wait_for_metric(&self, what: &str, line: impl Fn(&str) -> bool) {
        eventually(what, DEADLINE, || async {
            let text = self.get("/metrics").await.ok()?.text().await.ok()?;
            text.lines().any(&line).then_some(())
        })
        .await
        .unwrap();
    }

    /// Cancels the shutdown token and asserts the service returns `Ok` within 20 s.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let task = self.task.take().expect("stopped once");
        match tokio::time::timeout(DEADLINE, task).await {
            Err(_) => panic!("the service did not stop within {DEADLINE:?} of shutdown"),
            Ok(Err(join)) => panic!("the service task failed: {join}"),
            Ok(Ok(Err(e))) => panic!("the service stopped with an error: {e}"),
            Ok(Ok(Ok(()))) => {}
        }
    }
}

impl Drop for RunningService {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
