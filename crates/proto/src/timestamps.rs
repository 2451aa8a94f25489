//! The one conversion between the contracts' `google.protobuf.Timestamp`, `time`'s
//! [`OffsetDateTime`], [`SystemTime`] and RFC 3339 text. Every service converts through here.
//!
//! A `Timestamp` is seconds and nanoseconds since the Unix epoch, nanos in `0..1e9` for a
//! normalised value; a pre-epoch instant has negative seconds and positive nanos
//! (`-0.5 s` = `{seconds: -1, nanos: 500_000_000}`). Reading is tolerant (any nanos, normalised
//! by their sum); writing is always normalised.

use std::time::SystemTime;

use prost_types::Timestamp;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const NANOS_PER_SECOND: i128 = 1_000_000_000;

/// The instant of a timestamp; `None` outside `time`'s range (±9999 years).
pub fn to_time(t: &Timestamp) -> Option<OffsetDateTime> {
    let nanos = i128::from(t.seconds) * NANOS_PER_SECOND + i128::from(t.nanos);
    OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}

/// [`to_time`] of an optional field (`None` when unset or out of range).
pub fn time_of(t: Option<&Timestamp>) -> Option<OffsetDateTime> {
    t.and_then(to_time)
}

/// The timestamp of an instant, normalised.
pub fn timestamp(t: OffsetDateTime) -> Timestamp {
    let nanos = t.unix_timestamp_nanos();
    let seconds = nanos.div_euclid(NANOS_PER_SECOND);
    let nanos = nanos.rem_euclid(NANOS_PER_SECOND);
    Timestamp {
        // `time`'s range fits in i64 seconds, and the remainder in i32.
        seconds: i64::try_from(seconds).unwrap_or(if seconds < 0 { i64::MIN } else { i64::MAX }),
        nanos: i32::try_from(nanos).unwrap_or(0),
    }
}

/// The timestamp of a system time.
pub fn from_system(t: SystemTime) -> Timestamp {
    timestamp(OffsetDateTime::from(t))
}

/// The system time of a timestamp; `None` outside `time`'s range.
pub fn to_system(t: &Timestamp) -> Option<SystemTime> {
    to_time(t).map(SystemTime::from)
}

/// RFC 3339 text in UTC (`2026-03-10T08:15:00.5Z`); empty for an instant RFC 3339 cannot
/// write (a year outside 0..=9999).
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// The instant of RFC 3339 text (any offset); `None` when it is not RFC 3339.
pub fn parse_rfc3339(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text.trim(), &Rfc3339).ok()
}

/// The timestamp of RFC 3339 text.
pub fn timestamp_from_rfc3339(text: &str) -> Option<Timestamp> {
    parse_rfc3339(text).map(timestamp)
}

/// RFC 3339 text of a timestamp; `None` when out of range.
pub fn timestamp_to_rfc3339(t: &Timestamp) -> Option<String> {
    to_time(t).map(rfc3339).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn an_instant_round_trips_through_a_timestamp_with_its_nanos() {
        for t in [
            datetime!(2026-03-10 08:15:00.123_456_789 UTC),
            datetime!(1970-01-01 00:00:00 UTC),
            datetime!(1969-12-31 23:59:59.5 UTC),
            datetime!(1900-01-01 00:00:00.000_000_001 UTC),
            datetime!(9999-12-31 23:59:59.999_999_999 UTC),
        ] {
            let ts = timestamp(t);
            assert!((0..1_000_000_000).contains(&ts.nanos), "{ts:?} normalised");
            assert_eq!(to_time(&ts), Some(t));
        }
    }

    #[test]
    fn a_pre_epoch_instant_has_negative_seconds_and_positive_nanos() {
        let ts = timestamp(datetime!(1969-12-31 23:59:59.75 UTC));
        assert_eq!(
            ts,
            Timestamp {
                seconds: -1,
                nanos: 750_000_000
            }
        );
        // Read tolerantly: the same instant written with negative nanos.
        let denormal = Timestamp {
            seconds: 0,
            nanos: -250_000_000,
        };
        assert_eq!(
            to_time(&denormal),
            Some(datetime!(1969-12-31 23:59:59.75 UTC))
        );
    }

    #[test]
    fn a_timestamp_out_of_range_is_none_not_a_panic() {
        let far = Timestamp {
            seconds: i64::MAX,
            nanos: 999_999_999,
        };
        assert_eq!(to_time(&far), None);
        assert_eq!(to_system(&far), None);
        assert_eq!(timestamp_to_rfc3339(&far), None);
        assert_eq!(time_of(None), None);
    }

    #[test]
    fn rfc3339_text_round_trips_and_is_written_in_utc() {
        let t = parse_rfc3339("2026-03-10T10:15:00.25+02:00").unwrap();
        assert_eq!(rfc3339(t), "2026-03-10T08:15:00.25Z");
        assert_eq!(
            timestamp_from_rfc3339("2026-03-10T08:15:00.25Z"),
            Some(timestamp(t))
        );
        assert_eq!(
            timestamp_to_rfc3339(&timestamp(t)).as_deref(),
            Some("2026-03-10T08:15:00.25Z")
        );
        assert_eq!(parse_rfc3339("10/03/2026"), None);
        assert_eq!(
            parse_rfc3339(" 1969-12-31T23:59:59Z "),
            Some(datetime!(1969-12-31 23:59:59 UTC))
        );
    }

    #[test]
    fn system_time_converts_both_ways() {
        let now = SystemTime::now();
        let ts = from_system(now);
        assert_eq!(ts, Timestamp::from(now), "agrees with prost-types");
        assert_eq!(to_system(&ts), Some(now));
        let before = SystemTime::UNIX_EPOCH - std::time::Duration::from_millis(1500);
        assert_eq!(
            from_system(before),
            Timestamp {
                seconds: -2,
                nanos: 500_000_000
            }
        );
    }
}
