//! Thin entry point: configuration, telemetry and signals, then [`dynamics_adapter::serve`].

fn main() -> anyhow::Result<()> {
    tgb_service::main(
        dynamics_adapter::NAME,
        dynamics_adapter::DEFAULT_HTTP_ADDR,
        dynamics_adapter::serve,
    )
}
