use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

use tgb_sandbox::SandboxConfig;

use crate::common::*;

const SHIPPED: &str = include_str!("../../../config/sandbox.toml");

#[test]
fn shipped_config_file_holds_the_defaults() {
    let file = SandboxConfig::from_toml(SHIPPED).expect("config/sandbox.toml parses");
    let default = SandboxConfig::default();
    // Only `listen` differs: the file names a fixed port for the demo.
    let mut file_json = serde_json::to_value(&file).unwrap();
    let mut default_json = serde_json::to_value(&default).unwrap();
    file_json["listen"] = serde_json::Value::Null;
    default_json["listen"] = serde_json::Value::Null;
    assert_eq!(file_json, default_json);
    assert_eq!(file.listen.port(), 8600);
}

#[test]
fn unknown_config_key_is_an_error_naming_it() {
    let err = SandboxConfig::from_toml("[identity]\ntoken_lifetime = 5\n").unwrap_err();
    assert!(err.to_string().contains("token_lifetime"), "{err}");
}

#[tokio::test]
async fn sandbox_serves_its_urls_on_a_free_port() {
    let sb = start().await;
    let base = sb.base_url();
    assert!(base.starts_with("http://127.0.0.1:"));
    assert_ne!(sb.addr().port(), 0);
    assert_eq!(sb.tg_api_url(), format!("{base}/tg"));
    assert_eq!(sb.tg_token_url(), format!("{base}/tg/oauth2/token"));
    assert_eq!(sb.azure_authority(), format!("{base}/entra"));
    assert_eq!(sb.dataverse_url(), format!("{base}/dataverse"));
    assert_eq!(sb.graph_url(), format!("{base}/graph"));
    let state: serde_json::Value = http()
        .get(format!("{base}/_sandbox/state"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(state["tg"]["partners"]["ZZ:ACME01"].is_object());
    assert!(state.get("dataverse").is_some() && state.get("planner").is_some());
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let sb = start().await;
    let url = format!("{}/_sandbox/state", sb.base_url());
    assert!(http().get(&url).send().await.unwrap().status().is_success());
    sb.shutdown().await;
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    assert!(fresh.get(&url).send().await.is_err());
}

#[test]
fn binary_prints_the_urls_it_serves() {
    let dir = std::env::temp_dir().join(format!("tgb-sandbox-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sandbox.toml");
    std::fs::write(&path, SHIPPED).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tgb-sandbox"))
        .args([
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let second = lines.next().unwrap().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let base = first.split_whitespace().last().unwrap().to_owned();
    assert!(
        base.starts_with("http://127.0.0.1:") && !base.ends_with(":0"),
        "{first}"
    );
    assert_eq!(
        second.split_whitespace().last().unwrap(),
        format!("{base}/tg")
    );
}

#[test]
fn binary_rejects_an_unknown_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_tgb-sandbox"))
        .arg("--bogus")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bogus"));
}
