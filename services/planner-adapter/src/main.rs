//! Thin entry point: configuration, telemetry and signals, then [`planner_adapter::serve`].

fn main() -> anyhow::Result<()> {
    tgb_service::main(
        planner_adapter::NAME,
        planner_adapter::DEFAULT_HTTP_ADDR,
        planner_adapter::serve,
    )
}
