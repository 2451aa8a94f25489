use tgb::system::{System, UpOptions};

/// A whole tg-bridge on free ports with its own NATS store, plus the temporary directory that
/// holds it.
pub async fn system(extra_env: &[(&str, &str)]) -> (System, tempfile::TempDir) {
    tgb_testkit::init_test_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = UpOptions::ephemeral(dir.path());
    opts.extra_env = extra_env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let system = System::start(opts).await.expect("tgb up starts");
    system
        .wait_ready(tgb_testkit::HANG_GUARD)
        .await
        .expect("every service ready");
    (system, dir)
}
