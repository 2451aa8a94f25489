//! How a client proves who it is to a token endpoint (the client-credentials grant).
//!
//! Three forms, as Microsoft Entra ID accepts them:
//! - a client secret (`client_secret`);
//! - a certificate: a client assertion JWT signed with the certificate's private key
//!   (`client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`), header
//!   `alg` PS256 (or RS256), `typ` JWT and `x5t#S256` (the base64url SHA-256 thumbprint of the
//!   DER certificate); claims `aud` = the token endpoint, `iss` = `sub` = the client id, a
//!   unique `jti`, `nbf`/`iat` now and `exp` a few minutes later (Microsoft identity platform,
//!   "application authentication certificate credentials");
//! - a federated token file (workload identity federation, e.g. AKS workload identity's
//!   `AZURE_FEDERATED_TOKEN_FILE`): the file's content is the client assertion, read again at
//!   each token request because the platform rotates it.
//!
//! Key material never appears in `Debug` output or in error messages.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::SecretString;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

/// `client_assertion_type` of a JWT client assertion (RFC 7523).
pub const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Lifetime of a certificate client assertion: Microsoft asks for a short one ("5-10 minutes
/// after nbf" at most).
pub const ASSERTION_LIFETIME: Duration = Duration::from_secs(5 * 60);

/// The credential a client presents to the token endpoint.
#[derive(Clone)]
pub enum ClientCredential {
    /// A client secret.
    Secret(SecretString),
    /// A certificate: each token request carries a freshly signed client assertion.
    Certificate(Arc<Certificate>),
    /// A file holding a token issued by a federated identity provider; read at each request.
    FederatedTokenFile(PathBuf),
}

impl std::fmt::Debug for ClientCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientCredential::Secret(_) => f.write_str("Secret([REDACTED])"),
            ClientCredential::Certificate(c) => f
                .debug_tuple("Certificate")
                .field(&c.thumbprint_s256())
                .finish(),
            ClientCredential::FederatedTokenFile(p) => {
                f.debug_tuple("FederatedTokenFile").field(p).finish()
            }
        }
    }
}

impl From<SecretString> for ClientCredential {
    fn from(secret: SecretString) -> Self {
        ClientCredential::Secret(secret)
    }
}

impl ClientCredential {
    /// What kind of credential this is, for logs: `secret`, `certificate`, `federated token`.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientCredential::Secret(_) => "secret",
            ClientCredential::Certificate(_) => "certificate",
            ClientCredential::FederatedTokenFile(_) => "federated token",
        }
    }
}

/// The signature algorithm of a certificate client assertion.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AssertionAlgorithm {
    /// RSASSA-PSS with SHA-256: what Microsoft's documentation asks for today.
    #[default]
    Ps256,
    /// RSASSA-PKCS1-v1_5 with SHA-256: what older Entra documentation and libraries use.
    Rs256,
}

impl AssertionAlgorithm {
    fn jwt(self) -> Algorithm {
        match self {
            AssertionAlgorithm::Ps256 => Algorithm::PS256,
            AssertionAlgorithm::Rs256 => Algorithm::RS256,
        }
    }
}

/// Why a credential could not be loaded or used. Never holds key material.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// A file could not be read.
    #[error("cannot read {}: {reason}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// The certificate or key is not usable.
    #[error("client certificate: {0}")]
    Certificate(String),
    /// The federated token file is empty.
    #[error("federated token file {} is empty", .0.display())]
    EmptyFederatedToken(PathBuf),
    /// Signing the assertion failed.
    #[error("signing the client assertion failed: {0}")]
    Sign(String),
}

/// A certificate and its RSA private key, ready to sign client assertions.
pub struct Certificate {
    thumbprint_s256: String,
    key: EncodingKey,
    algorithm: AssertionAlgorithm,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("x5t#S256", &self.thumbprint_s256)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    aud: &'a str,
    iss: &'a str,
    sub: &'a str,
    jti: String,
    nbf: u64,
    iat: u64,
    exp: u64,
}

impl Certificate {
    /// Reads the certificate (PEM, the first `CERTIFICATE` block) from `certificate` and the
    /// private key (PEM, `PRIVATE KEY` or `RSA PRIVATE KEY`) from `key`, or from the
    /// certificate's file when `key` is `None` (a PEM bundle holding both).
    pub fn from_files(
        certificate: &Path,
        key: Option<&Path>,
        algorithm: AssertionAlgorithm,
    ) -> Result<Self, CredentialError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| CredentialError::Unreadable {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
        };
        let certificate_pem = read(certificate)?;
        let key_pem = match key {
            Some(path) => read(path)?,
            None => certificate_pem.clone(),
        };
        Self::from_pem(&certificate_pem, &key_pem, algorithm)
    }

    /// The certificate and key from PEM text. Checks that the key belongs to the certificate.
    pub fn from_pem(
        certificate_pem: &[u8],
        key_pem: &[u8],
        algorithm: AssertionAlgorithm,
    ) -> Result<Self, CredentialError> {
        let bad = |m: &str| CredentialError::Certificate(m.to_owned());
        // Error messages name PEM labels only: a parser's message could quote key bytes.
        let blocks =
            pem::parse_many(certificate_pem).map_err(|_| bad("the certificate file is not PEM"))?;
        let certificate = blocks
            .iter()
            .find(|b| b.tag() == "CERTIFICATE")
            .ok_or_else(|| bad("no `-----BEGIN CERTIFICATE-----` block in the certificate file"))?;
        let keys = pem::parse_many(key_pem).map_err(|_| bad("the key file is not PEM"))?;
        if keys.iter().any(|b| b.tag() == "ENCRYPTED PRIVATE KEY") {
            return Err(bad(
                "the private key is encrypted; give an unencrypted PKCS#8 or PKCS#1 RSA key (keep it in a secret store, mounted read-only)",
            ));
        }
        let key = keys
            .iter()
            .find(|b| matches!(b.tag(), "PRIVATE KEY" | "RSA PRIVATE KEY"))
            .ok_or_else(|| {
                bad("no `-----BEGIN PRIVATE KEY-----` or `-----BEGIN RSA PRIVATE KEY-----` block in the key file")
            })?;
        let encoding = EncodingKey::from_rsa_pem(pem::encode(key).as_bytes())
            .map_err(|_| bad("the private key is not an RSA key (PS256 and RS256 need RSA)"))?;
        let decoding = DecodingKey::from_rsa_pem(pem::encode(certificate).as_bytes())
            .map_err(|_| bad("the certificate's public key is not an RSA key"))?;
        let thumbprint_s256 = URL_SAFE_NO_PAD.encode(Sha256::digest(certificate.contents()));
        let cert = Certificate {
            thumbprint_s256,
            key: encoding,
            algorithm,
        };
        // A key that is not the certificate's would be refused by Entra at every token
        // request; say so at start instead.
        let probe = cert.assertion("urn:tgb:probe", "probe")?;
        let mut validation = Validation::new(algorithm.jwt());
        validation.set_audience(&["urn:tgb:probe"]);
        use secrecy::ExposeSecret as _;
        jsonwebtoken::decode::<serde_json::Value>(probe.expose_secret(), &decoding, &validation)
            .map_err(|_| bad("the private key does not belong to the certificate"))?;
        Ok(cert)
    }

    /// The base64url SHA-256 thumbprint of the DER certificate (`x5t#S256`).
    pub fn thumbprint_s256(&self) -> &str {
        &self.thumbprint_s256
    }

    /// A fresh client assertion for `audience` (the token endpoint) and `client_id`.
    pub fn assertion(
        &self,
        audience: &str,
        client_id: &str,
    ) -> Result<SecretString, CredentialError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut header = Header::new(self.algorithm.jwt());
        header.typ = Some("JWT".into());
        header.x5t_s256 = Some(self.thumbprint_s256.clone());
        let claims = AssertionClaims {
            aud: audience,
            iss: client_id,
            sub: client_id,
            jti: uuid::Uuid::new_v4().to_string(),
            nbf: now,
            iat: now,
            exp: now + ASSERTION_LIFETIME.as_secs(),
        };
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map(SecretString::from)
            .map_err(|e| CredentialError::Sign(e.to_string()))
    }
}

/// The federated token in `path`, read now (the platform rotates the file).
pub async fn read_federated_token(path: &Path) -> Result<SecretString, CredentialError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| CredentialError::Unreadable {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(CredentialError::EmptyFederatedToken(path.to_path_buf()));
    }
    Ok(SecretString::from(token.to_owned()))
}
