//! Thin entry point: configuration, telemetry and signals, then [`tg_egress::serve`].

fn main() -> anyhow::Result<()> {
    tgb_service::main(
        tg_egress::NAME,
        tg_egress::DEFAULT_HTTP_ADDR,
        tg_egress::serve,
    )
}
