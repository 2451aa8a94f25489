//! tgb-clients against a stand-in token endpoint over loopback.

mod bounds;
mod coalesce;
mod credential;
mod literals;
mod oauth;
mod origin;
mod parsers;
mod token_failures;
mod trace;
mod unavailable;

/// Runs `test` on a runtime of this thread with a metrics recorder of this thread only (the
/// client's own tasks included), so the counts are the test's; answers what it rendered.
fn metrics_of<F: std::future::Future<Output = ()>>(test: impl FnOnce() -> F) -> String {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || runtime.block_on(test()));
    handle.render()
}
