//! What a handler answers: an [`Outcome`] (the decision, the flow, the record and its answer) or
//! a classified [`HandlerError`]. The consumer runner turns either into the ack, the ledger
//! entry, the flow metric and the latency, once for every service.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

pub use tgb_governor::{Classify, ErrorClass};

use crate::ledger::Decision;

/// What handling one message did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct Outcome {
    /// The decision: applied, echo, stale, duplicate, conflict or skipped.
    pub decision: Decision,
    /// The flow it belongs to (`D1` … `D8`, `P1` … `P7`), for `tgb_flow_events_total`; `None`
    /// when the event is not part of a flow for this consumer.
    pub flow: Option<&'static str>,
    /// Why, in words (e.g. "the incident already has revision 4").
    pub detail: String,
    /// The record written or considered (`dataverse:incident:<id>`), if any.
    pub target: String,
    /// What the target answered (`204`, `412 → re-read → 200`).
    pub response: String,
}

impl Outcome {
    fn new(decision: Decision, flow: Option<&'static str>, detail: impl Into<String>) -> Self {
        Outcome {
            decision,
            flow,
            detail: detail.into(),
            target: String::new(),
            response: String::new(),
        }
    }

    /// The effect was made.
    pub fn applied(flow: &'static str) -> Self {
        Outcome::new(Decision::Applied, Some(flow), "")
    }

    /// A change tg-bridge made itself came back: dropped.
    pub fn echo(flow: &'static str, detail: impl Into<String>) -> Self {
        Outcome::new(Decision::Echo, Some(flow), detail)
    }

    /// Older than what the target already has: dropped.
    pub fn stale(flow: &'static str, detail: impl Into<String>) -> Self {
        Outcome::new(Decision::Stale, Some(flow), detail)
    }

    /// Already applied: nothing to do.
    pub fn duplicate(flow: &'static str, detail: impl Into<String>) -> Self {
        Outcome::new(Decision::Duplicate, Some(flow), detail)
    }

    /// Both sides changed the same thing; `detail` says which side won.
    pub fn conflict(flow: &'static str, detail: impl Into<String>) -> Self {
        Outcome::new(Decision::Conflict, Some(flow), detail)
    }

    /// Nothing to do for this consumer; `why` names the reason (`no_tg_case`).
    pub fn skipped(flow: &'static str, why: impl Into<String>) -> Self {
        Outcome::new(Decision::Skipped, Some(flow), why)
    }

    /// Nothing to do, and the event is outside any flow of this consumer.
    pub fn ignored(why: impl Into<String>) -> Self {
        Outcome::new(Decision::Skipped, None, why)
    }

    /// The same outcome, outside any flow (a consumer that only watches events, such as the
    /// SLA clocks, keeps its decisions out of `tgb_flow_events_total`).
    pub fn outside_flows(mut self) -> Self {
        self.flow = None;
        self
    }

    /// The same outcome, in `flow` (a handler shared by several flows learns it last).
    pub fn in_flow(mut self, flow: &'static str) -> Self {
        self.flow = Some(flow);
        self
    }

    /// The same outcome, with the record it wrote or considered and the record's answer.
    pub fn target(mut self, record: impl Into<String>, response: impl Into<String>) -> Self {
        self.target = record.into();
        self.response = response.into();
        self
    }

    /// The same outcome, explained.
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }
}

type Source = Box<dyn StdError + Send + Sync + 'static>;

/// Why a handler failed, with its class (what the runner does with the message) and the error
/// chain that caused it.
#[derive(Debug)]
pub struct HandlerError {
    class: ErrorClass,
    message: String,
    source: Option<Source>,
}

impl HandlerError {
    fn with_class(class: ErrorClass, message: impl fmt::Display) -> Self {
        HandlerError {
            class,
            message: message.to_string(),
            source: None,
        }
    }

    /// Worth retrying later with the consumer's backoff.
    pub fn transient(reason: impl fmt::Display) -> Self {
        HandlerError::with_class(ErrorClass::TRANSIENT, reason)
    }

    /// Worth retrying after `delay` (e.g. a `Retry-After`).
    pub fn retry_after(reason: impl fmt::Display, delay: Duration) -> Self {
        HandlerError::with_class(
            ErrorClass::Transient {
                retry_after: Some(delay),
            },
            reason,
        )
    }

    /// Retrying cannot help: dead-letter the message.
    pub fn permanent(reason: impl fmt::Display) -> Self {
        HandlerError::with_class(ErrorClass::Permanent, reason)
    }

    /// The worker cannot go on: stop it and report why on `/readyz`.
    pub fn fatal(reason: impl fmt::Display) -> Self {
        HandlerError::with_class(ErrorClass::Fatal, reason)
    }

    /// `error` with the class it gives itself, keeping it as the source.
    pub fn classified<E: Classify + Send + Sync + 'static>(error: E) -> Self {
        HandlerError {
            class: error.class(),
            message: error.to_string(),
            source: Some(Box::new(error)),
        }
    }

    /// `error` as a transient failure, keeping it as the source (for errors that carry no
    /// class of their own: a KV write, a publish).
    pub fn transient_from<E: StdError + Send + Sync + 'static>(error: E) -> Self {
        HandlerError {
            class: ErrorClass::TRANSIENT,
            message: error.to_string(),
            source: Some(Box::new(error)),
        }
    }

    /// `error` as a permanent failure, keeping it as the source.
    pub fn permanent_from<E: StdError + Send + Sync + 'static>(error: E) -> Self {
        HandlerError {
            class: ErrorClass::Permanent,
            message: error.to_string(),
            source: Some(Box::new(error)),
        }
    }

    /// The same error, its message prefixed with what was being done.
    pub fn context(mut self, doing: impl fmt::Display) -> Self {
        self.message = format!("{doing}: {}", self.message);
        self
    }

    /// The same error in another class (e.g. a 404 that, for this record, means "not yet").
    pub fn reclassify(mut self, class: ErrorClass) -> Self {
        self.class = class;
        self
    }

    /// Its class.
    pub fn class(&self) -> ErrorClass {
        self.class
    }

    /// Transient?
    pub fn is_transient(&self) -> bool {
        matches!(self.class, ErrorClass::Transient { .. })
    }

    /// The wait asked for, if transient with one.
    pub fn retry_after_delay(&self) -> Option<Duration> {
        match self.class {
            ErrorClass::Transient { retry_after } => retry_after,
            _ => None,
        }
    }

    /// The message and every cause below the source, one line (for the DLQ and the ledger).
    pub fn reason(&self) -> String {
        let mut out = self.message.clone();
        let mut cause = self.source.as_deref().and_then(StdError::source);
        while let Some(c) = cause {
            let text = c.to_string();
            if !out.contains(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            cause = c.source();
        }
        out
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class.as_str(), self.reason())
    }
}

impl StdError for HandlerError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}

impl<E: Classify + Send + Sync + 'static> From<E> for HandlerError {
    fn from(error: E) -> Self {
        HandlerError::classified(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("Graph refused the token")]
    struct Refused(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("invalid_client: secret expired")]
    struct Inner;

    impl Classify for Refused {
        fn class(&self) -> ErrorClass {
            ErrorClass::Fatal
        }
    }

    #[test]
    fn a_classified_error_keeps_its_class_and_its_chain() {
        let e: HandlerError = Refused(Inner).into();
        assert_eq!(e.class(), ErrorClass::Fatal);
        assert_eq!(
            e.reason(),
            "Graph refused the token: invalid_client: secret expired"
        );
        assert_eq!(
            e.to_string(),
            "fatal: Graph refused the token: invalid_client: secret expired"
        );
        let source = StdError::source(&e).unwrap();
        assert_eq!(source.to_string(), "Graph refused the token");
        assert!(source.source().is_some());
        let e = e.context("creating the triage task");
        assert!(
            e.reason()
                .starts_with("creating the triage task: Graph refused")
        );
    }

    #[test]
    fn constructors_set_the_class() {
        assert!(HandlerError::transient("x").is_transient());
        assert_eq!(
            HandlerError::retry_after("x", Duration::from_secs(3)).retry_after_delay(),
            Some(Duration::from_secs(3))
        );
        assert_eq!(HandlerError::permanent("x").class(), ErrorClass::Permanent);
        assert_eq!(HandlerError::fatal("x").class(), ErrorClass::Fatal);
        assert_eq!(
            HandlerError::permanent("x")
                .reclassify(ErrorClass::TRANSIENT)
                .class(),
            ErrorClass::TRANSIENT
        );
    }
}
