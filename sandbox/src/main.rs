//! `tgb-sandbox --config FILE --listen ADDR`: serves the emulators and prints their URLs.

use anyhow::{Context as _, bail};
use tgb_sandbox::{Sandbox, SandboxConfig};

const USAGE: &str = "usage: tgb-sandbox [--config FILE] [--listen ADDR]";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    let mut config_path = None;
    let mut listen = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" => config_path = Some(args.next().context(USAGE)?),
            "--listen" => listen = Some(args.next().context(USAGE)?),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument '{other}'\n{USAGE}"),
        }
    }
    let mut config = match &config_path {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
            SandboxConfig::from_toml(&text).with_context(|| format!("parsing {path}"))?
        }
        None => SandboxConfig::default(),
    };
    if let Some(addr) = listen {
        config.listen = addr
            .parse()
            .with_context(|| format!("--listen {addr}: not a socket address"))?;
    }

    let sandbox = Sandbox::start(config).await?;
    println!("sandbox:           {}", sandbox.base_url());
    println!("TGB_TG_API_URL=    {}", sandbox.tg_api_url());
    println!("TGB_TG_TOKEN_URL=  {}", sandbox.tg_token_url());
    println!("TGB_AZURE_AUTHORITY={}", sandbox.azure_authority());
    println!("TGB_DATAVERSE_URL= {}", sandbox.dataverse_url());
    println!("TGB_GRAPH_URL=     {}", sandbox.graph_url());
    println!("inspection:        {}/_sandbox/state", sandbox.base_url());

    tokio::signal::ctrl_c().await?;
    sandbox.shutdown().await;
    Ok(())
}
