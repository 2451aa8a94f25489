//! The three Entra credentials against the sandbox's token endpoint, over loopback HTTP.

use std::sync::Arc;

use secrecy::{ExposeSecret as _, SecretString};
use tgb_clients::credential::{AssertionAlgorithm, Certificate, ClientCredential};
use tgb_clients::oauth::{ClientCredentials, OAuthError, TokenCache};
use tgb_governor::{Classify as _, ErrorClass};
use tgb_sandbox::{Sandbox, SandboxConfig};

const CLIENT: &str = "tgb-bridge";

/// A self-signed certificate and its RSA key, both PEM, made for this test.
struct TestCertificate {
    certificate: String,
    key: String,
}

fn test_certificate() -> TestCertificate {
    use rsa::pkcs8::{EncodePrivateKey as _, LineEnding};
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
    let key = key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
    let pair = rcgen::KeyPair::from_pem_and_sign_algo(&key, &rcgen::PKCS_RSA_SHA256).unwrap();
    let certificate = rcgen::CertificateParams::new(vec!["tg-bridge.test".into()])
        .unwrap()
        .self_signed(&pair)
        .unwrap()
        .pem();
    TestCertificate { certificate, key }
}

/// A token shaped as AKS workload identity mounts one (a JWT from the cluster's issuer for
/// the pod's service account); `n` tells rotations apart.
fn federated_token(n: u32) -> String {
    use base64::Engine as _;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    format!(
        "{}.{}.signature-{n}",
        b64(serde_json::json!({"alg": "RS256", "kid": "cluster-key"})),
        b64(serde_json::json!({
            "iss": "https://oidc.aks.test/tenant/cluster/",
            "sub": "system:serviceaccount:tgb:dynamics-adapter",
            "aud": ["api://AzureADTokenExchange"],
            "jti": format!("rotation-{n}"),
        })),
    )
}

async fn sandbox() -> Sandbox {
    Sandbox::start(SandboxConfig::default()).await.unwrap()
}

fn cache(sb: &Sandbox, credential: ClientCredential) -> TokenCache {
    let url = format!("{}/tenant/oauth2/v2.0/token", sb.azure_authority());
    let mut c = ClientCredentials::new(url.parse().unwrap(), CLIENT, credential);
    c.scope = Some(format!("{}/.default", sb.dataverse_url()));
    TokenCache::new(reqwest::Client::new(), c)
}

fn certificate(cert: &TestCertificate, algorithm: AssertionAlgorithm) -> ClientCredential {
    ClientCredential::Certificate(Arc::new(
        Certificate::from_pem(cert.certificate.as_bytes(), cert.key.as_bytes(), algorithm).unwrap(),
    ))
}

fn assert_refused(error: OAuthError, code: &str) {
    match &error {
        OAuthError::Refused { status: 401, body } => {
            assert!(body.contains("invalid_client"), "{body}");
            assert!(body.contains(code), "{body}");
        }
        other => panic!("expected a 401 refusal with {code}, got {other:?}"),
    }
    assert_eq!(error.class(), ErrorClass::Fatal);
}

#[tokio::test]
async fn a_certificate_assertion_obtains_a_token_with_ps256_and_rs256() {
    let sb = sandbox().await;
    let cert = test_certificate();
    sb.identity()
        .register_entra_certificate(CLIENT, &cert.certificate);
    for algorithm in [AssertionAlgorithm::Ps256, AssertionAlgorithm::Rs256] {
        let tokens = cache(&sb, certificate(&cert, algorithm));
        let token = tokens.token().await.unwrap();
        // The token is one the sandbox issued for this client and audience.
        let caller = sb
            .identity()
            .validate(
                token.expose_secret(),
                tgb_sandbox::identity::Audience::Dataverse,
            )
            .unwrap();
        assert_eq!(caller.kind, "application");
    }
}

#[tokio::test]
async fn a_certificate_the_app_registration_does_not_know_is_refused() {
    let sb = sandbox().await;
    let registered = test_certificate();
    let other = test_certificate();
    sb.identity()
        .register_entra_certificate(CLIENT, &registered.certificate);
    let error = cache(&sb, certificate(&other, AssertionAlgorithm::Ps256))
        .token()
        .await
        .unwrap_err();
    assert_refused(error, "AADSTS700027");
}

#[test]
fn a_key_that_is_not_the_certificates_is_refused_when_loaded_without_showing_it() {
    let a = test_certificate();
    let b = test_certificate();
    let error = Certificate::from_pem(
        a.certificate.as_bytes(),
        b.key.as_bytes(),
        AssertionAlgorithm::Ps256,
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("does not belong to the certificate"),
        "{error}"
    );
    let key_body: String = b.key.lines().nth(1).unwrap().to_owned();
    assert!(!error.contains(&key_body), "{error}");
    // Neither the credential nor the cache prints key material.
    let credential = certificate(&a, AssertionAlgorithm::Ps256);
    let shown = format!("{credential:?}");
    assert!(!shown.contains(a.key.lines().nth(1).unwrap()), "{shown}");
    assert!(shown.contains("Certificate"), "{shown}");
}

#[tokio::test]
async fn a_federated_token_file_obtains_a_token_and_is_read_again_after_it_rotates() {
    let sb = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("azure-identity-token");
    let (one, two) = (federated_token(1), federated_token(2));
    std::fs::write(&file, format!("{one}\n")).unwrap();
    sb.identity().set_entra_federated_tokens(CLIENT, &[&one]);
    let tokens = cache(&sb, ClientCredential::FederatedTokenFile(file.clone()));
    let first = tokens.token().await.unwrap();

    // The platform rotates the token: the old one is no longer accepted...
    sb.identity().set_entra_federated_tokens(CLIENT, &[&two]);
    tokens.invalidate(&first).await;
    assert_refused(tokens.token().await.unwrap_err(), "AADSTS70021");
    // ...and once the file holds the new one, the next request reads and sends it.
    std::fs::write(&file, format!("{two}\n")).unwrap();
    let second = tokens.token().await.unwrap();
    assert_ne!(first.expose_secret(), second.expose_secret());
}

#[tokio::test]
async fn a_missing_federated_token_file_is_a_clear_fatal_error() {
    let sb = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-mounted");
    let error = cache(&sb, ClientCredential::FederatedTokenFile(file.clone()))
        .token()
        .await
        .unwrap_err();
    assert!(matches!(error, OAuthError::Credential(_)), "{error:?}");
    assert!(error.to_string().contains("not-mounted"), "{error}");
    assert_eq!(error.class(), ErrorClass::Fatal);
}

#[tokio::test]
async fn a_client_secret_still_obtains_a_token() {
    let sb = sandbox().await;
    let tokens = cache(
        &sb,
        ClientCredential::Secret(SecretString::from("tgb-bridge-secret")),
    );
    tokens.token().await.unwrap();
    let wrong = cache(&sb, ClientCredential::Secret(SecretString::from("nope")));
    assert_refused(wrong.token().await.unwrap_err(), "AADSTS7000215");
}
