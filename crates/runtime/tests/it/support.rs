//! Helpers shared by the tests.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tgb_runtime::CancellationToken;
use tgb_runtime::http::{HttpLimits, Readiness};
use tokio::task::JoinHandle;

/// Longest any test waits for a condition.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// A service started in-process on port 0.
pub struct App {
    pub addr: SocketAddr,
    pub base: String,
    pub shutdown: CancellationToken,
    pub server: JoinHandle<std::io::Result<()>>,
}

impl App {
    pub async fn spawn(routes: Router, readiness: Arc<dyn Readiness>) -> App {
        Self::spawn_with(routes, readiness, HttpLimits::default()).await
    }

    pub async fn spawn_with(
        routes: Router,
        readiness: Arc<dyn Readiness>,
        limits: HttpLimits,
    ) -> App {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(tgb_runtime::http::serve_with(
            listener,
            routes,
            readiness,
            limits,
            shutdown.clone(),
        ));
        App {
            addr,
            base: format!("http://{addr}"),
            shutdown,
            server,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Cancels the token and waits for `serve` to return.
    pub async fn stop(self) -> std::io::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(DEADLINE, self.server)
            .await
            .expect("serve returns after the token is cancelled")
            .expect("serve task did not panic")
    }
}

/// Polls `condition` until it holds, or panics after [`DEADLINE`].
pub async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let polled = tokio::time::timeout(DEADLINE, async {
        while !condition().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(polled.is_ok(), "timed out waiting until {what}");
}
