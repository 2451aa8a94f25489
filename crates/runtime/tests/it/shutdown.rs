//! Signals: SIGTERM cancels the shutdown token (and does not kill the process).

use crate::support::DEADLINE;

#[cfg(unix)]
#[tokio::test]
async fn sigterm_cancels_the_shutdown_token() {
    let token = tgb_runtime::shutdown::on_signals();
    assert!(!token.is_cancelled());
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("kill -TERM {}", std::process::id()))
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::timeout(DEADLINE, token.cancelled())
        .await
        .expect("SIGTERM cancels the token");
}
