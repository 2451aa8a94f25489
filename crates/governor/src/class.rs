//! How a failed call is to be treated, once for every client and every consumer.
//!
//! Each client error says its [`ErrorClass`] through [`Classify`]; the consumer runner acts on
//! it (nak with a delay, dead-letter, or stop the worker) without knowing which API failed.
//! [`parse_retry_after`] is the one reading of a `Retry-After` header.

use std::time::{Duration, SystemTime};

/// What a failure means for the work that met it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Worth trying again later (a 429, a 5xx, a timeout, a moved row); `retry_after` when the
    /// other side said how long to wait.
    Transient {
        /// The wait the other side asked for.
        retry_after: Option<Duration>,
    },
    /// Trying again cannot help (a 400, a 404 on a record that must exist, invalid content).
    Permanent,
    /// Nothing this worker does can succeed until someone acts (a refused secret, a missing
    /// permission): stop the worker instead of failing every message.
    Fatal,
}

impl ErrorClass {
    /// Transient with no wait given.
    pub const TRANSIENT: ErrorClass = ErrorClass::Transient { retry_after: None };

    /// The snake_case name (`transient`, `permanent`, `fatal`).
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorClass::Transient { .. } => "transient",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Fatal => "fatal",
        }
    }
}

/// An error that knows its [`ErrorClass`].
pub trait Classify: std::error::Error {
    /// How the work that met this error is to be treated.
    fn class(&self) -> ErrorClass;
}

/// Reads a `Retry-After` value: delta-seconds (a fraction is tolerated and rounded up to the
/// millisecond) or an HTTP date (the time left until it; a past date is no wait). `None` when
/// the value is neither.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// [`parse_retry_after`] of an optional header value, as HTTP clients hand it over: missing or
/// unreadable is `None`.
pub fn retry_after_header(value: Option<&[u8]>) -> Option<Duration> {
    parse_retry_after(std::str::from_utf8(value?).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_fractions_and_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 2 "), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after(""), None);
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO),
            "a date in the past is no wait"
        );
        let later = SystemTime::now() + Duration::from_secs(120);
        let wait = parse_retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!(wait <= Duration::from_secs(120) && wait >= Duration::from_secs(100));
        assert_eq!(retry_after_header(Some(b"3")), Some(Duration::from_secs(3)));
        assert_eq!(retry_after_header(Some(&[0xff])), None);
        assert_eq!(retry_after_header(None), None);
    }
}
