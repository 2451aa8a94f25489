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
            ..GovernorConfig::default()
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
    // How long the 40 took (about 3 s: a burst of 10, then 10/s) is a figure, not a condition:
    // a busy machine only makes it longer. That the bucket refills at its rate rather than
    // stalling is what the window check above cannot see, so it is printed for the report.
    eprintln!(
        "FIGURE 40 acquisitions at 20 / 1 s with headroom 0.5 took {:?}",
        sent.last().unwrap().duration_since(sent[0])
    );
}
