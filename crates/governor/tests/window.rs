//! The token bucket keeps every sliding window under the target's limit (real clock).

use std::time::{Duration, Instant};

use tgb_governor::{Governor, GovernorConfig};

#[tokio::test]
async fn no_sliding_window_holds_more_than_the_limit() {
    let limit = 20usize;
    let window = Duration::from_millis(1000);
    let g = Governor::new(
        "test",
        GovernorConfig {
            requests_per_window: limit as u32,
            window_secs: window.as_secs_f64(),
            headroom: 0.5,
            max_concurrent: 8,
        },
    );
    let mut sent = Vec::new();
    for _ in 0..(limit * 2) {
        let _p = g.acquire().await;
        sent.push(Instant::now());
    }
    for (i, start) in sent.iter().enumerate() {
        let in_window = sent[i..]
            .iter()
            .take_while(|t| **t - *start < window)
            .count();
        assert!(
            in_window <= limit,
            "{in_window} requests within one window starting at #{i}"
        );
    }
    // And it did not simply stall: 40 requests at 10/s after a burst of 10 take about 3 s.
    assert!(sent.last().unwrap().duration_since(sent[0]) < Duration::from_secs(6));
}
