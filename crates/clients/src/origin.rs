//! The one check before a client follows an absolute URL an API handed it (`@odata.nextLink`,
//! `@odata.deltaLink`, a cursor read back from KV): the client's bearer token goes with the
//! request, so the URL must lead under the API root the client was configured with: same
//! scheme, host and port, no user info, and a path inside the root's path.

use url::Url;

/// Why an absolute URL is not followed. The messages name the origin, never the whole URL
/// (its query may carry a token).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    /// Not an absolute URL.
    #[error("is not an absolute URL")]
    NotAUrl,
    /// Another scheme, host or port than the API's.
    #[error("leads to {found}, not to {expected}")]
    OtherOrigin {
        /// The origin the URL leads to.
        found: String,
        /// The API's origin.
        expected: String,
    },
    /// Carries a user name or password.
    #[error("carries user info")]
    UserInfo,
    /// Same origin, but outside the API root's path.
    #[error("leaves the API root {0}")]
    OutsideRoot(String),
}

/// `link` parsed, if it leads under `root` (see the module doc); `root`'s path is taken as a
/// directory whether or not it ends with `/`. Dot segments are resolved by the parser before
/// the path is compared, so `root/../x` is outside.
pub fn same_origin(root: &Url, link: &str) -> Result<Url, OriginError> {
    let url = Url::parse(link.trim()).map_err(|_| OriginError::NotAUrl)?;
    if !url.origin().is_tuple() || url.origin() != root.origin() {
        return Err(OriginError::OtherOrigin {
            found: url.origin().ascii_serialization(),
            expected: root.origin().ascii_serialization(),
        });
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(OriginError::UserInfo);
    }
    let dir = root.path().trim_end_matches('/');
    let inside = url.path() == dir
        || url
            .path()
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'));
    if !inside {
        return Err(OriginError::OutsideRoot(format!("{dir}/")));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> Url {
        Url::parse("https://org.crm.dynamics.com/api/data/v9.2/").unwrap()
    }

    #[test]
    fn links_under_the_root_are_followed() {
        for link in [
            "https://org.crm.dynamics.com/api/data/v9.2/accounts?$skiptoken=x",
            "https://ORG.crm.dynamics.com:443/api/data/v9.2/incidents?$deltatoken=1",
            "https://org.crm.dynamics.com/api/data/v9.2",
        ] {
            assert!(same_origin(&root(), link).is_ok(), "{link}");
        }
    }

    #[test]
    fn links_elsewhere_are_refused() {
        for (link, why) in [
            ("https://evil.example/api/data/v9.2/accounts", "other"),
            (
                "http://org.crm.dynamics.com/api/data/v9.2/accounts",
                "other",
            ),
            ("https://org.crm.dynamics.com:8443/api/data/v9.2/x", "other"),
            (
                "https://org.crm.dynamics.com.evil.example/api/data/v9.2/x",
                "other",
            ),
            (
                "https://org.crm.dynamics.com@evil.example/api/data/v9.2/x",
                "other",
            ),
            (
                "https://user:pw@org.crm.dynamics.com/api/data/v9.2/x",
                "userinfo",
            ),
            (
                "https://org.crm.dynamics.com/api/data/v9.2/../../../x",
                "outside",
            ),
            (
                "https://org.crm.dynamics.com/api/data/v9.2/%2e%2e/v8/x",
                "outside",
            ),
            ("https://org.crm.dynamics.com/api/data/v9.20/x", "outside"),
            ("https://org.crm.dynamics.com/", "outside"),
            ("/api/data/v9.2/accounts", "url"),
            ("data:text/plain,hi", "other"),
        ] {
            let e = same_origin(&root(), link).unwrap_err();
            let matched = match why {
                "other" => matches!(e, OriginError::OtherOrigin { .. }),
                "userinfo" => e == OriginError::UserInfo,
                "outside" => matches!(e, OriginError::OutsideRoot(_)),
                _ => e == OriginError::NotAUrl,
            };
            assert!(matched, "{link}: {e}");
        }
    }
}
