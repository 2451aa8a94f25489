//! Configuration: layering, validation errors that name their key, secrets, sections.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tgb_runtime::config::{BusSettings, Config, ConfigError, LogFormat};
use tgb_runtime::secret::ExposeSecret as _;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn toml_file(content: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(content.as_bytes()).unwrap();
    file
}

fn load(file: &Path, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::load_from(Some(file), env(pairs))
}

fn load_err(file: &Path, pairs: &[(&str, &str)]) -> String {
    load(file, pairs)
        .expect_err("the configuration is invalid")
        .to_string()
}

#[test]
fn defaults_apply_when_the_default_file_is_missing_and_env_is_empty() {
    // The crate directory has no config/tg-bridge.toml: a missing default file is fine.
    let config = Config::load_from(None, env(&[("PATH", "/usr/bin")])).unwrap();
    let s = &config.settings;
    assert_eq!(s.nats_url, "nats://127.0.0.1:4222");
    assert_eq!(s.nats_creds, None);
    assert_eq!(s.http_addr, None);
    assert_eq!(
        s.worker_threads, 1,
        "a service runs on one thread unless told otherwise"
    );
    assert_eq!(
        s.azure_authority.as_str(),
        "https://login.microsoftonline.com/"
    );
    assert_eq!(s.graph_url.as_str(), "https://graph.microsoft.com/");
    assert_eq!(s.log_format, LogFormat::Pretty);
    assert!(s.tg_webhook_secrets.is_empty());
    assert_eq!(s.bus, BusSettings::default());
    assert_eq!(s.bus.replicas, 1);
    assert_eq!(s.bus.duplicate_window_secs, 3600);
    assert_eq!(s.bus.max_age_days, 7);
    assert_eq!(s.bus.dlq_max_age_days, 30);
    assert_eq!(s.bus.max_deliver, 20);
    assert_eq!(s.bus.backoff_max_secs, 300);
    assert_eq!(s.bus.ack_wait_secs, 30);
    assert_eq!(s.bus.concurrency, 16);
}

#[test]
fn file_overrides_defaults_and_env_overrides_file() {
    let file = toml_file(
        r#"
        nats_url = "nats://from-file:4222"
        graph_url = "https://graph.example.test"
        log_format = "json"
        [bus]
        replicas = 3
        max_deliver = 5
        "#,
    );
    let config = load(
        file.path(),
        &[
            ("TGB_NATS_URL", "nats://from-env:4222"),
            ("TGB_BUS__MAX_DELIVER", "9"),
            ("TGB_HTTP_ADDR", "127.0.0.1:8081"),
        ],
    )
    .unwrap();
    let s = &config.settings;
    assert_eq!(s.nats_url, "nats://from-env:4222", "env beats file");
    assert_eq!(s.bus.max_deliver, 9, "env beats file in a nested table");
    assert_eq!(s.bus.replicas, 3, "file beats default");
    assert_eq!(
        s.graph_url.as_str(),
        "https://graph.example.test/",
        "file beats default"
    );
    assert_eq!(s.log_format, LogFormat::Json);
    assert_eq!(s.bus.concurrency, 16, "default where nobody says otherwise");
    assert_eq!(s.http_addr, Some("127.0.0.1:8081".parse().unwrap()));
}

#[test]
fn tgb_config_in_the_environment_names_the_file() {
    let file = toml_file("[bus]\nconcurrency = 4\n");
    let path = file.path().to_str().unwrap();
    let config = Config::load_from(None, env(&[("TGB_CONFIG", path)])).unwrap();
    assert_eq!(config.settings.bus.concurrency, 4);
}

#[test]
fn missing_explicit_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.toml");
    let err = Config::load_from(Some(&missing), env(&[])).unwrap_err();
    assert!(matches!(err, ConfigError::MissingFile { .. }), "{err:?}");
    assert!(err.to_string().contains("absent.toml"), "{err}");
}

#[test]
fn missing_file_named_by_tgb_config_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.toml");
    let err =
        Config::load_from(None, env(&[("TGB_CONFIG", missing.to_str().unwrap())])).unwrap_err();
    assert!(matches!(err, ConfigError::MissingFile { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("TGB_CONFIG") && text.contains("absent.toml"),
        "{text}"
    );
}

#[test]
fn nats_url_that_is_not_a_nats_url_names_its_key() {
    let file = toml_file("");
    for bad in [
        "http://127.0.0.1:4222",
        "not a url",
        "nats://127.0.0.1:4222,",
    ] {
        let text = load_err(file.path(), &[("TGB_NATS_URL", bad)]);
        assert!(text.starts_with("TGB_NATS_URL:"), "{bad}: {text}");
    }
}

#[test]
fn nats_url_accepts_several_servers_and_tls() {
    let file = toml_file("");
    let config = load(
        file.path(),
        &[("TGB_NATS_URL", "nats://a:4222, tls://b:4222,wss://c")],
    )
    .unwrap();
    assert_eq!(
        config.settings.nats_url,
        "nats://a:4222, tls://b:4222,wss://c"
    );
}

#[test]
fn nats_url_in_the_file_is_named_by_its_key_and_file() {
    let file = toml_file("nats_url = \"localhost:4222\"\n");
    let text = load_err(file.path(), &[]);
    assert!(text.starts_with("nats_url (in "), "{text}");
    assert!(text.contains(file.path().to_str().unwrap()), "{text}");
}

#[test]
fn duplicate_window_below_one_hour_names_its_key() {
    let file = toml_file("[bus]\nduplicate_window_secs = 60\n");
    let text = load_err(file.path(), &[]);
    assert!(text.starts_with("bus.duplicate_window_secs (in "), "{text}");
    assert!(text.contains("3600"), "{text}");

    let text = load_err(
        toml_file("").path(),
        &[("TGB_BUS__DUPLICATE_WINDOW_SECS", "3599")],
    );
    assert!(
        text.starts_with("TGB_BUS__DUPLICATE_WINDOW_SECS:"),
        "{text}"
    );
}

#[test]
fn out_of_range_bus_settings_name_their_keys() {
    let file = toml_file("");
    for (var, value) in [
        ("TGB_BUS__REPLICAS", "0"),
        ("TGB_BUS__REPLICAS", "6"),
        ("TGB_BUS__MAX_DELIVER", "0"),
        ("TGB_BUS__MAX_DELIVER", "-1"),
        ("TGB_BUS__ACK_WAIT_SECS", "0"),
        ("TGB_BUS__CONCURRENCY", "0"),
        ("TGB_BUS__MAX_AGE_DAYS", "0"),
        ("TGB_BUS__DLQ_MAX_AGE_DAYS", "0"),
        ("TGB_BUS__GATHER_MS", "1001"),
    ] {
        let text = load_err(file.path(), &[(var, value)]);
        assert!(
            text.starts_with(&format!("{var}:")),
            "{var}={value}: {text}"
        );
    }
}

#[test]
fn a_value_of_the_wrong_type_names_its_key() {
    let text = load_err(toml_file("").path(), &[("TGB_BUS__REPLICAS", "three")]);
    assert!(text.starts_with("TGB_BUS__REPLICAS:"), "{text}");

    let text = load_err(toml_file("[bus]\nconcurrency = \"many\"\n").path(), &[]);
    assert!(text.starts_with("bus.concurrency (in "), "{text}");

    let text = load_err(toml_file("").path(), &[("TGB_HTTP_ADDR", "localhost")]);
    assert!(text.starts_with("TGB_HTTP_ADDR:"), "{text}");

    let text = load_err(toml_file("").path(), &[("TGB_LOG_FORMAT", "xml")]);
    assert!(text.starts_with("TGB_LOG_FORMAT:"), "{text}");
}

#[test]
fn malformed_url_names_its_key() {
    let file = toml_file("");
    let text = load_err(
        file.path(),
        &[("TGB_DATAVERSE_URL", "org.crm.dynamics.com")],
    );
    assert!(text.starts_with("TGB_DATAVERSE_URL:"), "{text}");

    let text = load_err(
        file.path(),
        &[("TGB_GRAPH_URL", "ftp://graph.example.test")],
    );
    assert!(text.starts_with("TGB_GRAPH_URL:"), "{text}");
    assert!(text.contains("http or https"), "{text}");
}

#[test]
fn unknown_key_in_the_bus_table_is_rejected() {
    let text = load_err(toml_file("[bus]\nreplica = 3\n").path(), &[]);
    assert!(text.contains("replica"), "{text}");
    assert!(text.contains("unknown field"), "{text}");
}

#[test]
fn malformed_toml_names_the_file() {
    let file = toml_file("[bus\nreplicas = 1\n");
    let text = load_err(file.path(), &[]);
    assert!(text.contains(file.path().to_str().unwrap()), "{text}");
}

#[test]
fn webhook_secrets_are_split_on_commas() {
    let config = load(
        toml_file("").path(),
        &[(
            "TGB_TG_WEBHOOK_SECRETS",
            "whsec_b25l, whsec_dHdv,,whsec_dGhyZWU=",
        )],
    )
    .unwrap();
    let secrets: Vec<&str> = config
        .settings
        .tg_webhook_secrets
        .iter()
        .map(|s| s.expose_secret())
        .collect();
    assert_eq!(secrets, ["whsec_b25l", "whsec_dHdv", "whsec_dGhyZWU="]);
}

#[test]
fn webhook_secrets_may_be_a_list_in_the_file() {
    let file = toml_file("tg_webhook_secrets = [\"whsec_b25l\", \"whsec_dHdv\"]\n");
    let config = load(file.path(), &[]).unwrap();
    assert_eq!(config.settings.tg_webhook_secrets.len(), 2);
}

#[test]
fn webhook_secret_without_its_prefix_is_rejected_without_echoing_it() {
    let text = load_err(
        toml_file("").path(),
        &[("TGB_TG_WEBHOOK_SECRETS", "whsec_b25l,hunter2-plain")],
    );
    assert!(text.starts_with("TGB_TG_WEBHOOK_SECRETS:"), "{text}");
    assert!(text.contains("entry 2"), "{text}");
    assert!(!text.contains("hunter2"), "the secret leaked: {text}");
}

#[test]
fn secret_of_the_wrong_type_is_not_echoed() {
    let text = load_err(toml_file("tg_client_secret = 987654321\n").path(), &[]);
    assert!(text.starts_with("tg_client_secret (in "), "{text}");
    assert!(!text.contains("987654321"), "the secret leaked: {text}");
}

#[test]
fn debug_output_never_contains_a_secret() {
    let config = load(
        toml_file("").path(),
        &[
            ("TGB_TG_CLIENT_SECRET", "tg-client-secret-value"),
            ("TGB_TG_WEBHOOK_SECRETS", "whsec_d2ViaG9vay1zZWNyZXQ="),
            (
                "TGB_DATAVERSE_WEBHOOK_KEY",
                "dataverse-key-value-of-at-least-32-bytes",
            ),
            ("TGB_AZURE_CLIENT_SECRET", "azure-secret-value"),
            ("TGB_NATS_URL", "nats://bridge:nats-password@127.0.0.1:4222"),
            (
                "TGB_TG_API_URL",
                "https://user:url-password@tg.example.test/api",
            ),
        ],
    )
    .unwrap();
    for printed in [
        format!("{:?}", config.settings),
        format!("{:#?}", config.settings),
        format!("{config:?}"),
    ] {
        for secret in [
            "tg-client-secret-value",
            "d2ViaG9vay1zZWNyZXQ",
            "dataverse-key-value",
            "azure-secret-value",
            "nats-password",
            "url-password",
        ] {
            assert!(!printed.contains(secret), "{secret} leaked in {printed}");
        }
        assert!(printed.contains("[REDACTED]"), "{printed}");
        assert!(
            printed.contains("127.0.0.1:4222"),
            "non-secret parts stay: {printed}"
        );
    }
    // The values are there for whoever asks explicitly.
    let s = &config.settings;
    assert_eq!(
        s.tg_client_secret.as_ref().unwrap().expose_secret(),
        "tg-client-secret-value"
    );
}

#[test]
fn empty_environment_values_count_as_unset() {
    let config = load(
        toml_file("").path(),
        &[("TGB_DATAVERSE_URL", ""), ("TGB_NATS_URL", "  ")],
    )
    .unwrap();
    assert_eq!(config.settings.dataverse_url, None);
    assert_eq!(config.settings.nats_url, "nats://127.0.0.1:4222");
}

#[test]
fn numeric_looking_ids_stay_strings() {
    let config = load(toml_file("").path(), &[("TGB_TG_CLIENT_ID", "0042")]).unwrap();
    assert_eq!(config.settings.tg_client_id.as_deref(), Some("0042"));
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Routing {
    default_plan: String,
    #[serde(default)]
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize, PartialEq)]
struct Rule {
    partner: String,
    bucket: String,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
struct Sla {
    warn_after_mins: u32,
}

#[test]
fn section_of_a_present_table_is_deserialized() {
    let file = toml_file(
        r#"
        [routing]
        default_plan = "plan-ops"
        rules = [{ partner = "ZZ:ACME", bucket = "logistics" }]
        [sla]
        warn_after_mins = 30
        "#,
    );
    let config = load(file.path(), &[("TGB_SLA__WARN_AFTER_MINS", "45")]).unwrap();
    let routing: Routing = config.section("routing").unwrap();
    assert_eq!(
        routing,
        Routing {
            default_plan: "plan-ops".into(),
            rules: vec![Rule {
                partner: "ZZ:ACME".into(),
                bucket: "logistics".into()
            }],
        }
    );
    let sla: Sla = config.section("sla").unwrap();
    assert_eq!(
        sla.warn_after_mins, 45,
        "the environment overrides a section too"
    );
}

#[test]
fn section_of_an_absent_table_is_its_default() {
    let config = load(toml_file("[bus]\nreplicas = 1\n").path(), &[]).unwrap();
    let routing: Routing = config.section("routing").unwrap();
    assert_eq!(routing, Routing::default());
}

#[test]
fn section_with_a_bad_value_names_the_key_path() {
    let file = toml_file("[sla]\nwarn_after_mins = \"soon\"\n");
    let config = load(file.path(), &[]).unwrap();
    let text = config.section::<Sla>("sla").unwrap_err().to_string();
    assert!(text.starts_with("sla.warn_after_mins (in "), "{text}");

    let config = load(
        toml_file("").path(),
        &[("TGB_SLA__WARN_AFTER_MINS", "soon")],
    )
    .unwrap();
    let text = config.section::<Sla>("sla").unwrap_err().to_string();
    assert!(text.starts_with("TGB_SLA__WARN_AFTER_MINS:"), "{text}");

    let file = toml_file("[routing]\nrules = []\n");
    let config = load(file.path(), &[]).unwrap();
    let text = config
        .section::<Routing>("routing")
        .unwrap_err()
        .to_string();
    assert!(text.contains("routing.default_plan"), "{text}");
}

#[test]
fn require_names_the_variable_and_the_service() {
    let config = load(toml_file("").path(), &[]).unwrap();
    let err = config
        .require(
            &config.settings.dataverse_url,
            "TGB_DATAVERSE_URL",
            "dynamics-adapter",
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "TGB_DATAVERSE_URL is required by dynamics-adapter"
    );

    let config = load(
        toml_file("").path(),
        &[("TGB_DATAVERSE_URL", "https://org.crm.dynamics.com")],
    )
    .unwrap();
    let url = config
        .require(
            &config.settings.dataverse_url,
            "TGB_DATAVERSE_URL",
            "dynamics-adapter",
        )
        .unwrap();
    assert_eq!(url.host_str(), Some("org.crm.dynamics.com"));
}

#[test]
fn repository_default_file_loads_with_the_documented_defaults() {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "..",
        "..",
        "config",
        "tg-bridge.toml",
    ]
    .iter()
    .collect();
    let config = Config::load_from(Some(&path), env(&[])).unwrap();
    assert_eq!(config.settings.bus, BusSettings::default());
    // The services' own sections are theirs to validate (each service has a test that the
    // shipped file passes its validation); here they only have to be tables.
    for section in ["routing", "sla", "documents", "onboarding", "dynamics"] {
        let value = config
            .section::<Option<serde_json::Map<String, serde_json::Value>>>(section)
            .unwrap();
        assert!(value.is_some(), "[{section}] is in the default file");
    }
}

#[test]
fn http_limits_come_from_the_http_table_and_zero_names_its_key() {
    let config = load(
        toml_file("[http]\nrequest_timeout_ms = 1500\n").path(),
        &[("TGB_HTTP__MAX_CONCURRENT_REQUESTS", "7")],
    )
    .unwrap();
    let limits = config.settings.http.limits();
    assert_eq!(
        limits.request_timeout,
        std::time::Duration::from_millis(1500)
    );
    assert_eq!(limits.max_concurrent_requests, 7);
    let file = toml_file("");
    for var in [
        "TGB_HTTP__HEADER_READ_TIMEOUT_MS",
        "TGB_HTTP__REQUEST_TIMEOUT_MS",
        "TGB_HTTP__MAX_CONCURRENT_REQUESTS",
    ] {
        let text = load_err(file.path(), &[(var, "0")]);
        assert!(text.starts_with(&format!("{var}:")), "{var}=0: {text}");
    }
}

#[test]
fn a_short_or_empty_dataverse_webhook_key_is_refused_without_echoing_it() {
    let text = load_err(
        toml_file("").path(),
        &[(
            "TGB_DATAVERSE_WEBHOOK_KEY",
            "short-key-31-bytes-long-xxxxxxx",
        )],
    );
    assert!(text.starts_with("TGB_DATAVERSE_WEBHOOK_KEY:"), "{text}");
    assert!(text.contains("at least 32 bytes"), "{text}");
    assert!(!text.contains("short-key"), "the key leaked: {text}");
    let file = toml_file("dataverse_webhook_key = \"\"\n");
    let text = load_err(file.path(), &[]);
    assert!(text.contains("dataverse_webhook_key"), "{text}");
    let long = "k".repeat(32);
    let config = load(
        toml_file("").path(),
        &[("TGB_DATAVERSE_WEBHOOK_KEY", long.as_str())],
    )
    .unwrap();
    assert_eq!(
        config
            .settings
            .dataverse_webhook_key
            .unwrap()
            .expose_secret()
            .len(),
        32
    );
}

#[test]
fn workload_identity_variables_fill_the_entra_settings() {
    let file = toml_file("");
    let token = tempfile::NamedTempFile::new().unwrap();
    let path = token.path().to_str().unwrap();
    let config = load(
        file.path(),
        &[
            ("AZURE_CLIENT_ID", "11111111-2222-3333-4444-555555555555"),
            ("AZURE_TENANT_ID", "tenant-guid"),
            ("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.us/"),
            ("AZURE_FEDERATED_TOKEN_FILE", path),
        ],
    )
    .unwrap();
    let s = &config.settings;
    assert_eq!(
        s.azure_client_id.as_deref(),
        Some("11111111-2222-3333-4444-555555555555")
    );
    assert_eq!(s.azure_tenant_id.as_deref(), Some("tenant-guid"));
    assert_eq!(
        s.azure_authority.as_str(),
        "https://login.microsoftonline.us/"
    );
    assert_eq!(s.azure_federated_token_file.as_deref(), Some(token.path()));
    // The TGB_ name wins when both say the same thing.
    let config = load(
        file.path(),
        &[("AZURE_CLIENT_ID", "same"), ("TGB_AZURE_CLIENT_ID", "same")],
    )
    .unwrap();
    assert_eq!(config.settings.azure_client_id.as_deref(), Some("same"));
}

#[test]
fn a_workload_identity_variable_that_disagrees_with_its_tgb_twin_is_refused() {
    let file = toml_file("");
    let error = load_err(
        file.path(),
        &[("AZURE_CLIENT_ID", "one"), ("TGB_AZURE_CLIENT_ID", "two")],
    );
    assert!(
        error.contains("TGB_AZURE_CLIENT_ID, AZURE_CLIENT_ID"),
        "{error}"
    );
    assert!(error.contains("different values"), "{error}");
}

#[test]
fn two_entra_credentials_at_once_are_refused_naming_both() {
    let file = toml_file("");
    let token = tempfile::NamedTempFile::new().unwrap();
    let error = load_err(
        file.path(),
        &[
            ("TGB_AZURE_CLIENT_SECRET", "hunter2-secret-value"),
            ("AZURE_FEDERATED_TOKEN_FILE", token.path().to_str().unwrap()),
        ],
    );
    assert!(error.contains("TGB_AZURE_CLIENT_SECRET"), "{error}");
    assert!(error.contains("AZURE_FEDERATED_TOKEN_FILE"), "{error}");
    assert!(error.contains("set exactly one"), "{error}");
    assert!(!error.contains("hunter2"), "{error}");

    let cert = tempfile::NamedTempFile::new().unwrap();
    let error = load_err(
        file.path(),
        &[
            ("TGB_AZURE_CLIENT_SECRET", "hunter2-secret-value"),
            (
                "TGB_AZURE_CLIENT_CERTIFICATE_PATH",
                cert.path().to_str().unwrap(),
            ),
        ],
    );
    assert!(
        error.contains("TGB_AZURE_CLIENT_SECRET, TGB_AZURE_CLIENT_CERTIFICATE_PATH"),
        "{error}"
    );
}

#[test]
fn an_incomplete_certificate_configuration_is_refused() {
    let file = toml_file("");
    let key = tempfile::NamedTempFile::new().unwrap();
    let error = load_err(
        file.path(),
        &[(
            "TGB_AZURE_CLIENT_CERTIFICATE_KEY_PATH",
            key.path().to_str().unwrap(),
        )],
    );
    assert!(
        error.starts_with(
            "TGB_AZURE_CLIENT_CERTIFICATE_KEY_PATH: a certificate key without a certificate"
        ),
        "{error}"
    );
    let error = load_err(
        file.path(),
        &[("TGB_AZURE_CLIENT_CERTIFICATE_PATH", "/nonexistent/tls.crt")],
    );
    assert!(
        error.starts_with(
            "TGB_AZURE_CLIENT_CERTIFICATE_PATH: file /nonexistent/tls.crt does not exist"
        ),
        "{error}"
    );
    let error = load_err(
        file.path(),
        &[("TGB_AZURE_CLIENT_ASSERTION_ALGORITHM", "HS256")],
    );
    assert!(
        error.starts_with("TGB_AZURE_CLIENT_ASSERTION_ALGORITHM"),
        "{error}"
    );
}

#[test]
fn nats_tls_files_come_from_the_environment_and_a_half_client_certificate_names_the_other_key() {
    let pem = toml_file("-----BEGIN CERTIFICATE-----\n");
    let path = pem.path().to_str().unwrap();
    let config = load(
        toml_file("").path(),
        &[
            ("TGB_NATS_TLS_CA", path),
            ("TGB_NATS_TLS_CERT", path),
            ("TGB_NATS_TLS_KEY", path),
        ],
    )
    .unwrap();
    assert_eq!(config.settings.nats_tls_ca.as_deref(), Some(pem.path()));
    assert_eq!(config.settings.nats_tls_key.as_deref(), Some(pem.path()));

    let err = load_err(toml_file("").path(), &[("TGB_NATS_TLS_CERT", path)]);
    assert!(
        err.contains("TGB_NATS_TLS_KEY") && err.contains("nats_tls_cert"),
        "{err}"
    );

    let err = load_err(
        toml_file("").path(),
        &[("TGB_NATS_TLS_CA", "/nonexistent/ca.pem")],
    );
    assert!(
        err.contains("TGB_NATS_TLS_CA") && err.contains("/nonexistent/ca.pem does not exist"),
        "{err}"
    );
}

#[test]
fn tgb_worker_threads_sets_the_threads_of_a_service() {
    let config = Config::load_from(None, env(&[("TGB_WORKER_THREADS", "4")])).unwrap();
    assert_eq!(config.settings.worker_threads, 4);
    let err = Config::load_from(None, env(&[("TGB_WORKER_THREADS", "many")]))
        .expect_err("not a number")
        .to_string();
    assert!(
        err.contains("worker_threads") || err.contains("TGB_WORKER_THREADS"),
        "{err}"
    );
}

#[test]
fn gathered_delivery_is_each_services_choice_unless_configured() {
    use std::time::Duration;
    let chosen = Duration::from_millis(50);
    let file = toml_file("");
    let unset = load(file.path(), &[]).unwrap().settings.bus;
    assert_eq!(unset.gather(chosen), Some(chosen));
    assert_eq!(
        unset.gather(Duration::ZERO),
        None,
        "a service that chose none"
    );
    let off = load(file.path(), &[("TGB_BUS__GATHER_MS", "0")])
        .unwrap()
        .settings
        .bus;
    assert_eq!(off.gather(chosen), None);
    let set = load(file.path(), &[("TGB_BUS__GATHER_MS", "20")])
        .unwrap()
        .settings
        .bus;
    assert_eq!(set.gather(Duration::ZERO), Some(Duration::from_millis(20)));
}
