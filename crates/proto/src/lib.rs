//! tg-bridge event contracts.
//!
//! The prost types are generated at build time from `proto/tgbridge/v1`. [`SUBJECTS`] is the one
//! table that maps each subject to its message type; [`Event`] is the closed set of events with
//! decoding by subject.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/tgbridge.v1.rs"));
}

pub use v1::*;

pub mod timestamps;

/// The compiled `FileDescriptorSet` of every contract (for reflection and drift checks).
pub const DESCRIPTOR: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));

/// The prost-generated Rust source, as compiled into this crate.
pub const GENERATED_SOURCE: &str = include_str!(concat!(env!("OUT_DIR"), "/tgbridge.v1.rs"));

/// Every subject starts with this.
pub const SUBJECT_PREFIX: &str = "tgb.v1.";

/// Why bytes on a subject are not an event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("no message type is registered for subject {0:?}")]
    UnknownSubject(String),
    #[error("bytes on {subject} are not a valid {message}: {source}")]
    Protobuf {
        subject: String,
        message: &'static str,
        source: prost::DecodeError,
    },
    #[error("{message} on {subject} is invalid: {reason}")]
    Invalid {
        subject: String,
        message: &'static str,
        reason: String,
    },
}

/// A message that travels on exactly one subject and carries an [`EventMeta`].
pub trait BusEvent: prost::Message + Default + Clone + Send + Sync + 'static {
    /// The subject this message type is published on.
    const SUBJECT: &'static str;
    /// The protobuf message name.
    const NAME: &'static str;
    /// The metadata, if set.
    fn meta(&self) -> Option<&EventMeta>;
    /// The metadata, created empty when missing.
    fn meta_mut(&mut self) -> &mut EventMeta;
}

macro_rules! subjects {
    ($( $subject:literal => $ty:ident ),* $(,)?) => {
        $(
            impl BusEvent for $ty {
                const SUBJECT: &'static str = $subject;
                const NAME: &'static str = stringify!($ty);
                fn meta(&self) -> Option<&EventMeta> {
                    self.meta.as_ref()
                }
                fn meta_mut(&mut self) -> &mut EventMeta {
                    self.meta.get_or_insert_with(Default::default)
                }
            }

            impl From<$ty> for Event {
                fn from(m: $ty) -> Self {
                    Event::$ty(m)
                }
            }
        )*

        /// The subject table: every subject and the message type carried on it.
        pub const SUBJECTS: &[(&str, &str)] = &[$(($subject, stringify!($ty))),*];

        /// Every event tg-bridge exchanges, one variant per subject.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Event {
            $(
                #[doc = concat!("`", $subject, "`")]
                $ty($ty),
            )*
        }

        impl Event {
            /// Decodes `bytes` as the message type registered for `subject` and checks its meta.
            pub fn decode(subject: &str, bytes: &[u8]) -> Result<Event, DecodeError> {
                let event = match subject {
                    $(
                        $subject => <$ty as prost::Message>::decode(bytes)
                            .map(Event::$ty)
                            .map_err(|source| DecodeError::Protobuf {
                                subject: subject.to_owned(),
                                message: stringify!($ty),
                                source,
                            })?,
                    )*
                    _ => return Err(DecodeError::UnknownSubject(subject.to_owned())),
                };
                event.validate()?;
                Ok(event)
            }

            /// An empty message of the type registered for `subject`, with a fresh meta.
            pub fn empty_for(subject: &str) -> Option<Event> {
                match subject {
                    $(
                        $subject => {
                            let mut m = $ty::default();
                            *m.meta_mut() = EventMeta::new(origin_of(subject));
                            Some(Event::$ty(m))
                        }
                    )*
                    _ => None,
                }
            }

            /// The subject this event is published on.
            pub fn subject(&self) -> &'static str {
                match self {
                    $(Event::$ty(_) => $subject,)*
                }
            }

            /// The protobuf message name.
            pub fn name(&self) -> &'static str {
                match self {
                    $(Event::$ty(_) => stringify!($ty),)*
                }
            }

            /// The event's metadata.
            pub fn meta(&self) -> Option<&EventMeta> {
                match self {
                    $(Event::$ty(m) => m.meta.as_ref(),)*
                }
            }

            /// The event's metadata, created empty when missing.
            pub fn meta_mut(&mut self) -> &mut EventMeta {
                match self {
                    $(Event::$ty(m) => m.meta_mut(),)*
                }
            }

            /// Protobuf bytes.
            pub fn encode_to_vec(&self) -> Vec<u8> {
                match self {
                    $(Event::$ty(m) => prost::Message::encode_to_vec(m),)*
                }
            }
        }
    };
}

subjects! {
    "tgb.v1.tg.case.opened" => TgCaseOpened,
    "tgb.v1.tg.case.updated" => TgCaseUpdated,
    "tgb.v1.tg.case.comment_added" => TgCommentAdded,
    "tgb.v1.tg.document.uploaded" => TgDocumentUploaded,
    "tgb.v1.tg.onboarding.updated" => TgOnboardingUpdated,
    "tgb.v1.tg.discussion.action_item" => TgActionItemFlagged,
    "tgb.v1.tg.dispute.opened" => TgDisputeOpened,
    "tgb.v1.tg.dispute.updated" => TgDisputeUpdated,
    "tgb.v1.tg.partner.updated" => TgPartnerUpdated,
    "tgb.v1.tg.unknown.received" => TgUnknownEvent,
    "tgb.v1.dyn.case.status_changed" => DynCaseStatusChanged,
    "tgb.v1.dyn.case.note_added" => DynCaseNoteAdded,
    "tgb.v1.dyn.case.resolved" => DynCaseResolved,
    "tgb.v1.dyn.exception.raised" => DynExceptionRaised,
    "tgb.v1.dyn.exception.updated" => DynExceptionUpdated,
    "tgb.v1.dyn.account.verified" => DynAccountVerified,
    "tgb.v1.dyn.account.updated" => DynAccountUpdated,
    "tgb.v1.dyn.order.milestone" => DynOrderMilestone,
    "tgb.v1.dyn.invoice.status_changed" => DynInvoiceStatusChanged,
    "tgb.v1.dyn.kpi.snapshot" => DynKpiSnapshot,
    "tgb.v1.planner.task.created" => PlannerTaskCreated,
    "tgb.v1.planner.task.progressed" => PlannerTaskProgressed,
    "tgb.v1.planner.exception.completed" => PlannerExceptionCompleted,
    "tgb.v1.sla.case.warning" => SlaWarning,
    "tgb.v1.sla.case.breached" => SlaBreached,
    "tgb.v1.review.document.requested" => ReviewRequested,
    "tgb.v1.review.document.completed" => ReviewCompleted,
    "tgb.v1.review.document.refused" => ReviewIntakeRefused,
    "tgb.v1.onboarding.steps.requested" => OnboardingStepsRequested,
    "tgb.v1.onboarding.partner.status" => OnboardingStatus,
}

impl Event {
    /// Checks what every event must carry: a meta with a ULID event id and an origin that
    /// matches the subject.
    pub fn validate(&self) -> Result<(), DecodeError> {
        let invalid = |reason: String| DecodeError::Invalid {
            subject: self.subject().to_owned(),
            message: self.name(),
            reason,
        };
        let meta = self
            .meta()
            .ok_or_else(|| invalid("meta is missing".into()))?;
        ulid::Ulid::from_string(&meta.event_id).map_err(|e| {
            invalid(format!(
                "meta.event_id {:?} is not a ULID: {e}",
                meta.event_id
            ))
        })?;
        let expected = origin_of(self.subject());
        if meta.origin() != expected {
            return Err(invalid(format!(
                "meta.origin is {:?}, the subject says {:?}",
                meta.origin(),
                expected
            )));
        }
        Ok(())
    }

    /// The key that serialises handling: events with the same key are never handled at once.
    pub fn entity_key(&self) -> String {
        self.meta().map(EventMeta::entity_key).unwrap_or_default()
    }
}

/// The origin named by the second part of a subject (`tgb.v1.<origin>.…`).
pub fn origin_of(subject: &str) -> Origin {
    match subject
        .strip_prefix(SUBJECT_PREFIX)
        .and_then(|s| s.split('.').next())
    {
        Some("tg") => Origin::Tg,
        Some("dyn") => Origin::Dyn,
        Some("planner") => Origin::Planner,
        Some("sla") => Origin::Sla,
        Some("review") => Origin::Review,
        Some("onboarding") => Origin::Onboarding,
        _ => Origin::Unspecified,
    }
}

impl EventMeta {
    /// A meta with a fresh ULID and the current time.
    pub fn new(origin: Origin) -> Self {
        let now = std::time::SystemTime::now();
        EventMeta {
            event_id: ulid::Ulid::new().to_string(),
            occurred_at: Some(prost_types::Timestamp::from(now)),
            origin: origin as i32,
            ..Default::default()
        }
    }

    /// A meta for an event caused by `cause`: same correlation and partner, causation = its id.
    pub fn caused_by(origin: Origin, cause: &EventMeta) -> Self {
        EventMeta {
            correlation_id: cause.correlation_id.clone(),
            causation_id: cause.event_id.clone(),
            partner: cause.partner.clone(),
            ..EventMeta::new(origin)
        }
    }

    /// `system:kind:id` of the entity, or the correlation id when no entity is set.
    pub fn entity_key(&self) -> String {
        match &self.entity {
            Some(e) if !e.id.is_empty() => format!("{}:{}:{}", e.system, e.kind, e.id),
            _ => self.correlation_id.clone(),
        }
    }

    /// The partner key `QUALIFIER:ID`, if a partner is set.
    pub fn partner_key(&self) -> Option<String> {
        self.partner.as_ref().map(PartnerRef::key)
    }
}

impl PartnerRef {
    /// The partner key `QUALIFIER:ID`.
    pub fn key(&self) -> String {
        format!("{}:{}", self.qualifier, self.id)
    }
}

impl EntityRef {
    /// A reference to `system`/`kind`/`id`.
    pub fn new(system: &str, kind: &str, id: impl Into<String>) -> Self {
        EntityRef {
            system: system.to_owned(),
            kind: kind.to_owned(),
            id: id.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subject_is_unique_and_well_formed() {
        let mut seen = std::collections::BTreeSet::new();
        for (subject, ty) in SUBJECTS {
            assert!(seen.insert(*subject), "{subject} twice");
            assert_eq!(
                subject.split('.').count(),
                5,
                "{subject}: tgb.v1.<origin>.<aggregate>.<event>"
            );
            assert_ne!(
                origin_of(subject),
                Origin::Unspecified,
                "{subject}: unknown origin"
            );
            let ev = Event::empty_for(subject).unwrap();
            assert_eq!(ev.name(), *ty);
            assert_eq!(ev.subject(), *subject);
        }
    }

    #[test]
    fn decode_checks_meta_and_origin() {
        let mut ev = TgCaseOpened::default();
        let err = Event::decode(TgCaseOpened::SUBJECT, &prost::Message::encode_to_vec(&ev));
        assert!(matches!(err, Err(DecodeError::Invalid { .. })), "{err:?}");
        *ev.meta_mut() = EventMeta::new(Origin::Dyn);
        let err = Event::decode(TgCaseOpened::SUBJECT, &prost::Message::encode_to_vec(&ev));
        assert!(format!("{}", err.unwrap_err()).contains("origin"));
        *ev.meta_mut() = EventMeta::new(Origin::Tg);
        let ok = Event::decode(TgCaseOpened::SUBJECT, &prost::Message::encode_to_vec(&ev)).unwrap();
        assert_eq!(ok, Event::TgCaseOpened(ev));
    }

    #[test]
    fn garbage_is_a_protobuf_error_not_a_panic() {
        let err = Event::decode(TgCaseOpened::SUBJECT, &[0xff, 0xff, 0xff]).unwrap_err();
        assert!(matches!(err, DecodeError::Protobuf { .. }));
        let err = Event::decode("tgb.v1.nope.x.y", b"").unwrap_err();
        assert!(matches!(err, DecodeError::UnknownSubject(_)));
    }
}
