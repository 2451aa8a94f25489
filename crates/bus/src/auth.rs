//! How tg-bridge proves who it is to NATS and secures the connection: a credentials file (JWT
//! and nkey seed), TLS with a private CA, a client certificate. And the one rule for NATS URLs in
//! errors and logs: a user and password embedded in a URL (`nats://user:pass@host`) never show.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Credentials and TLS files of a NATS connection. Every field is optional; a TLS file given
/// makes TLS required (the connection is refused rather than made in the clear).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatsAuth {
    /// Credentials file (`.creds`: a user JWT and its nkey seed).
    pub creds: Option<PathBuf>,
    /// PEM file of the CA(s) that signed the servers' certificates (a private CA).
    pub tls_ca: Option<PathBuf>,
    /// PEM file of this client's certificate (servers with `verify: true` ask for it).
    pub tls_cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    pub tls_key: Option<PathBuf>,
}

/// The files of a [`NatsAuth`] are unusable.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{what} {}: {reason}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("a TLS client certificate needs both tls_cert and tls_key; only {given} is set")]
    HalfClientCertificate { given: &'static str },
}

impl NatsAuth {
    /// Only a credentials file.
    pub fn creds(creds: Option<&Path>) -> NatsAuth {
        NatsAuth {
            creds: creds.map(Path::to_path_buf),
            ..NatsAuth::default()
        }
    }

    /// Whether any TLS file is set.
    pub fn uses_tls(&self) -> bool {
        self.tls_ca.is_some() || self.tls_cert.is_some() || self.tls_key.is_some()
    }

    /// Connect options named `name` for `urls`, with these credentials and TLS files; each
    /// file is read here, so a missing or unreadable one is named before any connection is
    /// tried. A user and password (or a token) in the first URL are used when no credentials
    /// file is given (the client library does not read them from the URL itself).
    pub async fn connect_options(
        &self,
        name: &str,
        urls: &str,
    ) -> Result<async_nats::ConnectOptions, AuthError> {
        let mut options = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(Duration::from_secs(5));
        if self.creds.is_none() {
            match url_userinfo(urls) {
                Some((user, Some(password))) => {
                    options = options.user_and_password(user, password);
                }
                Some((token, None)) => options = options.token(token),
                None => {}
            }
        }
        if let Some(creds) = &self.creds {
            options = options
                .credentials_file(creds)
                .await
                .map_err(|e| AuthError::File {
                    what: "NATS credentials file",
                    path: creds.clone(),
                    reason: e.to_string(),
                })?;
        }
        if let Some(ca) = &self.tls_ca {
            readable("TLS CA file", ca)?;
            options = options.add_root_certificates(ca.clone());
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                readable("TLS client certificate", cert)?;
                readable("TLS client key", key)?;
                options = options.add_client_certificate(cert.clone(), key.clone());
            }
            (Some(_), None) => return Err(AuthError::HalfClientCertificate { given: "tls_cert" }),
            (None, Some(_)) => return Err(AuthError::HalfClientCertificate { given: "tls_key" }),
            (None, None) => {}
        }
        if self.uses_tls() {
            options = options.require_tls(true);
        }
        Ok(options)
    }
}

fn readable(what: &'static str, path: &Path) -> Result<(), AuthError> {
    std::fs::metadata(path)
        .map_err(|e| AuthError::File {
            what,
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
        .map(|_| ())
}

/// The user and password (or the token) of the first URL that has them.
fn url_userinfo(urls: &str) -> Option<(String, Option<String>)> {
    urls.split(',').find_map(|url| {
        let rest = url.trim().split_once("://").map_or(url.trim(), |(_, r)| r);
        let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
        let (userinfo, _) = authority.rsplit_once('@')?;
        Some(match userinfo.split_once(':') {
            Some((user, password)) => (user.to_owned(), Some(password.to_owned())),
            None => (userinfo.to_owned(), None),
        })
    })
}

/// `urls` (one NATS URL or several, comma-separated) with any user and password replaced by
/// `REDACTED`, for errors and logs. A token-only URL (`nats://token@host`) is redacted too.
pub fn redact_url(urls: &str) -> String {
    urls.split(',')
        .map(|url| {
            let url = url.trim();
            let (scheme, rest) = match url.split_once("://") {
                Some((scheme, rest)) => (Some(scheme), rest),
                None => (None, url),
            };
            let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let (authority, tail) = rest.split_at(authority_end);
            let host = match authority.rsplit_once('@') {
                Some((_, host)) => format!("REDACTED@{host}"),
                None => authority.to_owned(),
            };
            match scheme {
                Some(scheme) => format!("{scheme}://{host}{tail}"),
                None => format!("{host}{tail}"),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `urls` without their user, password or token: what the client library is given once
/// [`NatsAuth::connect_options`] has taken them, since it logs the addresses it connects to.
pub fn without_userinfo(urls: &str) -> String {
    urls.split(',')
        .map(|url| {
            let url = url.trim();
            let (scheme, rest) = match url.split_once("://") {
                Some((scheme, rest)) => (Some(scheme), rest),
                None => (None, url),
            };
            let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let (authority, tail) = rest.split_at(authority_end);
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            match scheme {
                Some(scheme) => format!("{scheme}://{host}{tail}"),
                None => format!("{host}{tail}"),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The servers of `urls` (one NATS URL or several, comma-separated), each parsed on its own; the
/// client library takes a single string as one address. An error names the position of the
/// server that is not an address, never its text (it may carry credentials).
pub fn server_addrs(urls: &str) -> Result<Vec<async_nats::ServerAddr>, String> {
    let servers: Vec<&str> = urls.split(',').map(str::trim).collect();
    let count = servers.len();
    servers
        .into_iter()
        .enumerate()
        .map(|(i, server)| {
            if server.is_empty() {
                return Err(format!("server {} of {count} is empty", i + 1));
            }
            server.parse::<async_nats::ServerAddr>().map_err(|e| {
                format!(
                    "server {} of {count} is not a NATS address: {}",
                    i + 1,
                    scrub(&e.to_string(), server)
                )
            })
        })
        .collect()
}

/// `text` with every user, password or token embedded in `urls` replaced by `REDACTED`: for the
/// text of a client error, which may repeat the address it was given.
pub fn scrub(text: &str, urls: &str) -> String {
    let mut out = text.to_owned();
    for url in urls.split(',') {
        let rest = url.trim().split_once("://").map_or(url.trim(), |(_, r)| r);
        let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            out = out.replace(userinfo, "REDACTED");
            for part in userinfo.split(':').filter(|p| p.len() >= 3) {
                out = out.replace(part, "REDACTED");
            }
        }
    }
    out
}

/// Why a connection failed, in words an operator can act on; never the URL's credentials.
pub fn explain_connect_error(e: &async_nats::ConnectError, url: &str, auth: &NatsAuth) -> String {
    use std::error::Error as _;
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = s.source();
    }
    // rustls reports the server's refusal as an alert, which reaches us as an IO error.
    let hint = if text.contains("CertificateRequired") && auth.tls_cert.is_none() {
        "; the server requires a TLS client certificate: give tls_cert and tls_key \
         (TGB_NATS_TLS_CERT and TGB_NATS_TLS_KEY)"
    } else if (text.contains("UnknownIssuer") || text.contains("invalid peer certificate"))
        && auth.tls_ca.is_none()
    {
        "; the server's certificate is not signed by a public CA: give the private CA's \
         certificate as tls_ca (TGB_NATS_TLS_CA)"
    } else if matches!(e.kind(), async_nats::ConnectErrorKind::Tls) {
        "; check tls_ca, tls_cert and tls_key (TGB_NATS_TLS_CA, TGB_NATS_TLS_CERT, \
         TGB_NATS_TLS_KEY)"
    } else if matches!(
        e.kind(),
        async_nats::ConnectErrorKind::AuthorizationViolation
            | async_nats::ConnectErrorKind::Authentication
    ) {
        "; check the credentials (creds, TGB_NATS_CREDS, or the user in the URL)"
    } else {
        ""
    };
    scrub(&format!("{text}{hint}"), url)
}

#[cfg(test)]
mod tests {
    use super::{redact_url, scrub, server_addrs, url_userinfo, without_userinfo};

    #[test]
    fn credentials_are_taken_out_of_urls_before_the_client_library_sees_them() {
        let urls = "nats://svc:pw@a:4222/x,tls://b:4222";
        assert_eq!(without_userinfo(urls), "nats://a:4222/x,tls://b:4222");
        assert_eq!(
            url_userinfo(urls),
            Some(("svc".to_owned(), Some("pw".to_owned())))
        );
        assert_eq!(
            url_userinfo("nats://tok@a:4222"),
            Some(("tok".to_owned(), None))
        );
        assert_eq!(url_userinfo("nats://a:4222"), None);
    }

    #[test]
    fn every_server_of_a_comma_separated_list_is_an_address() {
        let servers = server_addrs("nats://127.0.0.1:4222, nats://127.0.0.1:4223,tls://b:4224")
            .expect("three addresses");
        let ports: Vec<u16> = servers.iter().map(|s| s.port()).collect();
        assert_eq!(ports, [4222, 4223, 4224]);
        assert_eq!(server_addrs("nats://a:4222").expect("one").len(), 1);
        let err = server_addrs("nats://a:4222,,nats://b:4222").expect_err("an empty entry");
        assert_eq!(err, "server 2 of 3 is empty");
        let err = server_addrs("nats://a:4222,nats://b:notaport").expect_err("a bad port");
        assert!(
            err.starts_with("server 2 of 2 is not a NATS address"),
            "{err}"
        );
    }

    #[test]
    fn users_passwords_and_tokens_in_urls_are_redacted() {
        assert_eq!(
            redact_url("nats://svc:s3cret@nats.example:4222"),
            "nats://REDACTED@nats.example:4222"
        );
        assert_eq!(
            redact_url("tls://tok3n@a:4222, nats://b:4222"),
            "tls://REDACTED@a:4222,nats://b:4222"
        );
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(redact_url("u:p@host:4222"), "REDACTED@host:4222");
    }

    #[test]
    fn an_error_repeating_the_url_loses_its_credentials() {
        let text = "failed to connect to nats://svc:s3cret@h:4222 (user svc, password s3cret)";
        let scrubbed = scrub(text, "nats://svc:s3cret@h:4222");
        assert!(
            !scrubbed.contains("s3cret") && !scrubbed.contains("svc"),
            "{scrubbed}"
        );
    }
}
