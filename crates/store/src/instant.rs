//! Server timestamps: microseconds since the epoch in the database, FHIR
//! `instant` text (millisecond precision, UTC) in resources.

use time::format_description::FormatItem;
use time::macros::format_description;
use time::OffsetDateTime;

const INSTANT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// The current time, truncated to whole milliseconds so that the stored value
/// and the `meta.lastUpdated` text are the same instant.
pub fn now_micros() -> i64 {
    let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
    let millis = nanos / 1_000_000;
    (millis * 1_000) as i64
}

/// Formats microseconds since the epoch as a FHIR `instant`.
pub fn format_micros(micros: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .ok()
        .and_then(|t| t.format(INSTANT).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00.000Z".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_milliseconds_in_utc() {
        assert_eq!(format_micros(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_micros(1_700_000_000_123_000),
            "2023-11-14T22:13:20.123Z"
        );
    }

    #[test]
    fn now_is_whole_milliseconds() {
        assert_eq!(now_micros() % 1_000, 0);
    }
}
