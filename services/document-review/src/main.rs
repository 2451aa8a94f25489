//! Thin entry point: configuration, telemetry and signals, then [`document_review::serve`].

fn main() -> anyhow::Result<()> {
    tgb_service::main(
        document_review::NAME,
        document_review::DEFAULT_HTTP_ADDR,
        document_review::serve,
    )
}
