//! Thin entry point: configuration, telemetry and signals, then [`tg_ingress::serve`].

fn main() -> anyhow::Result<()> {
    tgb_service::main(
        tg_ingress::NAME,
        tg_ingress::DEFAULT_HTTP_ADDR,
        tg_ingress::serve,
    )
}
