//! `tgb_service::entra::credential`: the configuration's Entra credential, loaded and used to
//! obtain a token from the sandbox's token endpoint over loopback.

use std::path::Path;

use tgb_clients::credential::ClientCredential;
use tgb_clients::oauth::{ClientCredentials, TokenCache};
use tgb_runtime::Config;
use tgb_sandbox::{Sandbox, SandboxConfig};

/// A self-signed certificate and its RSA key, PEM, made for this test.
fn test_certificate() -> (String, String) {
    use rsa::pkcs8::{EncodePrivateKey as _, LineEnding};
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
    let key = key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
    let pair = rcgen::KeyPair::from_pem_and_sign_algo(&key, &rcgen::PKCS_RSA_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["tg-bridge.test".into()])
        .unwrap()
        .self_signed(&pair)
        .unwrap()
        .pem();
    (cert, key)
}

fn config(sb: &Sandbox, extra: &[(&str, &str)]) -> Config {
    let empty = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    let mut env = vec![
        ("TGB_AZURE_AUTHORITY".to_owned(), sb.azure_authority()),
        ("TGB_AZURE_TENANT_ID".to_owned(), "tenant".to_owned()),
        ("TGB_AZURE_CLIENT_ID".to_owned(), "tgb-bridge".to_owned()),
    ];
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    Config::load_from(Some(empty.path()), env).unwrap()
}

async fn token_with(sb: &Sandbox, credential: ClientCredential) {
    let url = format!("{}/tenant/oauth2/v2.0/token", sb.azure_authority());
    let mut c = ClientCredentials::new(url.parse().unwrap(), "tgb-bridge", credential);
    c.scope = Some("https://graph.microsoft.com/.default".into());
    TokenCache::new(reqwest::Client::new(), c)
        .token()
        .await
        .expect("the sandbox issues a token");
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_configured_certificate_and_key_log_in() {
    let sb = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let (cert, key) = test_certificate();
    sb.identity()
        .register_entra_certificate("tgb-bridge", &cert);
    let dir = tempfile::tempdir().unwrap();
    // Separate files (a Kubernetes TLS secret: tls.crt, tls.key), then one PEM bundle.
    let crt = write(dir.path(), "tls.crt", &cert);
    let tls_key = write(dir.path(), "tls.key", &key);
    let separate = config(
        &sb,
        &[
            ("TGB_AZURE_CLIENT_CERTIFICATE_PATH", &crt),
            ("TGB_AZURE_CLIENT_CERTIFICATE_KEY_PATH", &tls_key),
        ],
    );
    let credential = tgb_service::entra::credential(&separate, "planner-adapter").unwrap();
    assert!(matches!(credential, ClientCredential::Certificate(_)));
    token_with(&sb, credential).await;

    let bundle = write(dir.path(), "bundle.pem", &format!("{cert}{key}"));
    let together = config(
        &sb,
        &[
            ("TGB_AZURE_CLIENT_CERTIFICATE_PATH", &bundle),
            ("TGB_AZURE_CLIENT_ASSERTION_ALGORITHM", "RS256"),
        ],
    );
    let credential = tgb_service::entra::credential(&together, "planner-adapter").unwrap();
    token_with(&sb, credential).await;
}

#[tokio::test]
async fn a_key_of_another_certificate_stops_the_start_naming_the_setting() {
    let sb = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let (cert, _) = test_certificate();
    let (_, other_key) = test_certificate();
    let dir = tempfile::tempdir().unwrap();
    let crt = write(dir.path(), "tls.crt", &cert);
    let key = write(dir.path(), "tls.key", &other_key);
    let c = config(
        &sb,
        &[
            ("TGB_AZURE_CLIENT_CERTIFICATE_PATH", &crt),
            ("TGB_AZURE_CLIENT_CERTIFICATE_KEY_PATH", &key),
        ],
    );
    let error = format!(
        "{:#}",
        tgb_service::entra::credential(&c, "dynamics-adapter").unwrap_err()
    );
    assert!(
        error.contains("TGB_AZURE_CLIENT_CERTIFICATE_PATH"),
        "{error}"
    );
    assert!(
        error.contains("does not belong to the certificate"),
        "{error}"
    );
    assert!(
        !error.contains(other_key.lines().nth(1).unwrap()),
        "{error}"
    );
}

#[tokio::test]
async fn workload_identity_variables_alone_log_in_with_the_federated_token() {
    let sb = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "azure-identity-token",
        "eyJhbGciOiJSUzI1NiJ9.e30.c2ln",
    );
    sb.identity()
        .set_entra_federated_tokens("tgb-bridge", &["eyJhbGciOiJSUzI1NiJ9.e30.c2ln"]);
    let empty = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    // Exactly what AKS workload identity injects, and nothing of ours but the URLs.
    let c = Config::load_from(
        Some(empty.path()),
        [
            ("AZURE_CLIENT_ID", "tgb-bridge"),
            ("AZURE_TENANT_ID", "tenant"),
            ("AZURE_AUTHORITY_HOST", sb.azure_authority().as_str()),
            ("AZURE_FEDERATED_TOKEN_FILE", file.as_str()),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    )
    .unwrap();
    assert_eq!(c.settings.azure_client_id.as_deref(), Some("tgb-bridge"));
    let credential = tgb_service::entra::credential(&c, "planner-adapter").unwrap();
    assert!(matches!(
        credential,
        ClientCredential::FederatedTokenFile(_)
    ));
    token_with(&sb, credential).await;
}

#[tokio::test]
async fn no_credential_at_all_names_the_three_choices() {
    let sb = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let error = tgb_service::entra::credential(&config(&sb, &[]), "planner-adapter")
        .unwrap_err()
        .to_string();
    assert!(error.contains("required by planner-adapter"), "{error}");
    for name in [
        "TGB_AZURE_CLIENT_SECRET",
        "TGB_AZURE_CLIENT_CERTIFICATE_PATH",
        "AZURE_FEDERATED_TOKEN_FILE",
    ] {
        assert!(error.contains(name), "{error}");
    }
}
