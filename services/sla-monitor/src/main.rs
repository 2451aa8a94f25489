//! Thin entry point: configuration, telemetry and signals, then [`sla_monitor::serve`].

fn main() -> anyhow::Result<()> {
    tgb_service::main(
        sla_monitor::NAME,
        sla_monitor::DEFAULT_HTTP_ADDR,
        sla_monitor::serve,
    )
}
