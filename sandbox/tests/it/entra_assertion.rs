//! The Entra token endpoint's client assertions: certificate JWTs checked against the
//! registered certificate, federated tokens against the configured ones.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Digest as _;

use crate::common::*;

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A self-signed certificate (PEM), its DER thumbprint and its RSA key, made for this test.
struct TestCertificate {
    pem: String,
    thumbprint: String,
    key: EncodingKey,
}

fn test_certificate() -> TestCertificate {
    use rsa::pkcs8::{EncodePrivateKey as _, LineEnding};
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
    let key_pem = key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
    let pair = rcgen::KeyPair::from_pem_and_sign_algo(&key_pem, &rcgen::PKCS_RSA_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["client.test".into()])
        .unwrap()
        .self_signed(&pair)
        .unwrap();
    TestCertificate {
        pem: cert.pem(),
        thumbprint: URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(cert.der())),
        key: EncodingKey::from_rsa_pem(key_pem.as_bytes()).unwrap(),
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn token_url(sb: &tgb_sandbox::Sandbox) -> String {
    format!("{}/tenant-1/oauth2/v2.0/token", sb.azure_authority())
}

/// An assertion with the claims Microsoft documents, changed by `edit`.
fn assertion(
    sb: &tgb_sandbox::Sandbox,
    signer: &TestCertificate,
    thumbprint: &str,
    edit: impl FnOnce(&mut Value),
) -> String {
    let mut header = Header::new(Algorithm::PS256);
    header.x5t_s256 = Some(thumbprint.to_owned());
    let mut claims = json!({
        "aud": token_url(sb),
        "iss": ENTRA_CLIENT.0,
        "sub": ENTRA_CLIENT.0,
        "jti": uuid_like(),
        "nbf": now(),
        "iat": now(),
        "exp": now() + 300,
    });
    edit(&mut claims);
    jsonwebtoken::encode(&header, &claims, &signer.key).unwrap()
}

fn uuid_like() -> String {
    format!("{:032x}", rand::random::<u128>())
}

async fn present(sb: &tgb_sandbox::Sandbox, assertion: &str) -> (StatusCode, Value) {
    let r = http()
        .post(token_url(sb))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", ENTRA_CLIENT.0),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", assertion),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap())
}

fn assert_refused(answer: (StatusCode, Value), code: &str, words: &str) {
    let (status, body) = answer;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"], "invalid_client", "{body}");
    let description = body["error_description"].as_str().unwrap();
    assert!(description.starts_with(code), "{description}");
    assert!(description.contains(words), "{description}");
}

#[tokio::test]
async fn a_certificate_assertion_with_the_documented_claims_gets_a_token() {
    let sb = start().await;
    let cert = test_certificate();
    sb.identity()
        .register_entra_certificate(ENTRA_CLIENT.0, &cert.pem);
    let (status, body) = present(&sb, &assertion(&sb, &cert, &cert.thumbprint, |_| {})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
}

#[tokio::test]
async fn a_certificate_assertion_is_refused_for_each_documented_fault() {
    let sb = start().await;
    let cert = test_certificate();
    let other = test_certificate();
    sb.identity()
        .register_entra_certificate(ENTRA_CLIENT.0, &cert.pem);

    let wrong_audience = assertion(&sb, &cert, &cert.thumbprint, |c| {
        c["aud"] = json!("https://login.microsoftonline.com/other/oauth2/v2.0/token")
    });
    assert_refused(
        present(&sb, &wrong_audience).await,
        "AADSTS50027",
        "audience",
    );

    let expired = assertion(&sb, &cert, &cert.thumbprint, |c| {
        c["nbf"] = json!(now() - 7200);
        c["exp"] = json!(now() - 3600);
    });
    assert_refused(present(&sb, &expired).await, "AADSTS700024", "time range");

    let wrong_subject = assertion(&sb, &cert, &cert.thumbprint, |c| {
        c["sub"] = json!("someone-else")
    });
    assert_refused(present(&sb, &wrong_subject).await, "AADSTS50027", "'sub'");

    // Signed by another key while naming the registered certificate.
    let forged = assertion(&sb, &other, &cert.thumbprint, |_| {});
    assert_refused(present(&sb, &forged).await, "AADSTS700027", "signature");

    // Signed by a certificate the app registration does not have.
    let unknown = assertion(&sb, &other, &other.thumbprint, |_| {});
    assert_refused(
        present(&sb, &unknown).await,
        "AADSTS700027",
        "key was not found",
    );

    assert_refused(present(&sb, "not-a-jwt").await, "AADSTS50027", "malformed");
}

#[tokio::test]
async fn a_federated_assertion_is_accepted_only_when_configured() {
    let sb = start().await;
    let b64 = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let token = format!(
        "{}.{}.sig",
        b64(json!({"alg": "RS256"})),
        b64(
            json!({"iss": "https://oidc.test/", "sub": "system:serviceaccount:tgb:x", "aud": "api://AzureADTokenExchange"})
        )
    );
    assert_refused(
        present(&sb, &token).await,
        "AADSTS70021",
        "system:serviceaccount:tgb:x",
    );
    sb.identity()
        .set_entra_federated_tokens(ENTRA_CLIENT.0, &[&token]);
    let (status, body) = present(&sb, &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_request_with_neither_secret_nor_assertion_is_refused() {
    let sb = start().await;
    let r = http()
        .post(token_url(&sb))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", ENTRA_CLIENT.0),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .unwrap();
    assert_refused(
        (r.status(), r.json().await.unwrap()),
        "AADSTS7000218",
        "client_assertion",
    );
}
