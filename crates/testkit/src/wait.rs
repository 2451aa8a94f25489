use std::future::Future;
use std::time::Duration;

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
/// 5 ms and doubles up to 100 ms. This waits for a state, it does not guess a duration.
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
