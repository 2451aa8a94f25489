use std::future::Future;
use std::time::Duration;

/// How long a test waits for an event before it calls the wait a hang. Tests wait on the event
/// itself; this deadline only turns a hang into a failure that names what was awaited. It is
/// generous on purpose: CI runs on two shared cores, often with every core busy, and a test must
/// not fail because the machine is slow. Nextest's own guard (`slow-timeout`) is longer still.
pub const HANG_GUARD: Duration = Duration::from_secs(120);

/// A condition did not hold before its deadline.
#[derive(Debug, thiserror::Error)]
#[error("condition {what:?} did not hold within {within:?}")]
pub struct WaitTimeout {
    /// What was waited for.
    pub what: String,
    /// The deadline.
    pub within: Duration,
}

/// Polls `check` until it returns `Some(value)` or `within` runs out. The poll interval starts at
/// 5 ms and doubles up to 100 ms. This waits for a state, it does not guess a duration: pass
/// [`HANG_GUARD`] as `within` unless a shorter bound is itself what the test asserts.
pub async fn eventually<T, F, Fut>(
    what: &str,
    within: Duration,
    mut check: F,
) -> Result<T, WaitTimeout>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    let mut interval = Duration::from_millis(5);
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(WaitTimeout {
                what: what.to_owned(),
                within,
            });
        }
        tokio::time::sleep(interval).await;
        interval = (interval * 2).min(Duration::from_millis(100));
    }
}
