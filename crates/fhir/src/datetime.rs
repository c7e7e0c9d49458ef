//! FHIR `dateTime`/`instant` values as search ranges (R4 §3.1.1.5.7): a value
//! of lower precision stands for the whole interval it names.

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

/// Half-open interval `[start, end)` in microseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstantRange {
    pub start: i64,
    pub end: i64,
}

fn micros(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000) as i64
}

fn num<T: std::str::FromStr>(s: &str, len: usize) -> Option<T> {
    (s.len() == len && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// Parses `YYYY`, `YYYY-MM`, `YYYY-MM-DD` or `YYYY-MM-DDThh:mm[:ss[.f+]](Z|±hh:mm)`.
pub fn parse_range(text: &str) -> Result<InstantRange, String> {
    let bad = || {
        format!(
            "{text:?} is not a FHIR dateTime; use YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss with a zone (Z or +hh:mm)"
        )
    };
    let (date_part, time_part) = match text.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (text, None),
    };
    let mut pieces = date_part.split('-');
    let year: i32 = pieces.next().and_then(|y| num(y, 4)).ok_or_else(bad)?;
    let month: Option<u8> = match pieces.next() {
        Some(m) => Some(num(m, 2).ok_or_else(bad)?),
        None => None,
    };
    let day: Option<u8> = match pieces.next() {
        Some(d) => Some(num(d, 2).ok_or_else(bad)?),
        None => None,
    };
    if pieces.next().is_some() {
        return Err(bad());
    }
    let month_value = Month::try_from(month.unwrap_or(1)).map_err(|_| bad())?;
    let date = Date::from_calendar_date(year, month_value, day.unwrap_or(1)).map_err(|_| bad())?;
    let Some(time_text) = time_part else {
        let start = PrimitiveDateTime::new(date, Time::MIDNIGHT).assume_utc();
        let end = match (month, day) {
            (None, _) => Date::from_calendar_date(year + 1, Month::January, 1).ok(),
            (Some(_), None) => {
                let (y, m) = if month_value == Month::December {
                    (year + 1, Month::January)
                } else {
                    (year, month_value.next())
                };
                Date::from_calendar_date(y, m, 1).ok()
            }
            (Some(_), Some(_)) => date.next_day(),
        }
        .ok_or_else(bad)?;
        let end = PrimitiveDateTime::new(end, Time::MIDNIGHT).assume_utc();
        return Ok(InstantRange {
            start: micros(start),
            end: micros(end),
        });
    };
    if day.is_none() {
        return Err(bad());
    }
    // Split the zone off: Z, +hh:mm or -hh:mm.
    let (clock, offset) = if let Some(c) = time_text.strip_suffix('Z') {
        (c, UtcOffset::UTC)
    } else if time_text.len() > 6
        && matches!(time_text.as_bytes()[time_text.len() - 6], b'+' | b'-')
    {
        let (c, z) = time_text.split_at(time_text.len() - 6);
        let sign: i8 = if z.starts_with('-') { -1 } else { 1 };
        let (h, m) = z[1..].split_once(':').ok_or_else(bad)?;
        let h: i8 = num(h, 2).ok_or_else(bad)?;
        let m: i8 = num(m, 2).ok_or_else(bad)?;
        (
            c,
            UtcOffset::from_hms(sign * h, sign * m, 0).map_err(|_| bad())?,
        )
    } else {
        return Err(format!("{} (the time has no zone)", bad()));
    };
    let mut parts = clock.split(':');
    let hour: u8 = parts.next().and_then(|h| num(h, 2)).ok_or_else(bad)?;
    let minute: u8 = parts.next().and_then(|m| num(m, 2)).ok_or_else(bad)?;
    let (second, fraction) = match parts.next() {
        Some(s) => match s.split_once('.') {
            Some((sec, frac)) => (Some(num::<u8>(sec, 2).ok_or_else(bad)?), Some(frac)),
            None => (Some(num::<u8>(s, 2).ok_or_else(bad)?), None),
        },
        None => (None, None),
    };
    if parts.next().is_some() {
        return Err(bad());
    }
    let (nanos, step_micros) = match fraction {
        Some(f) if !f.is_empty() && f.len() <= 9 && f.bytes().all(|b| b.is_ascii_digit()) => {
            let scale = 10u32.pow(9 - f.len() as u32);
            let nanos: u32 = f.parse::<u32>().map_err(|_| bad())? * scale;
            (nanos, (i64::from(scale) / 1_000).max(1))
        }
        Some(_) => return Err(bad()),
        None if second.is_some() => (0, 1_000_000),
        None => (0, 60_000_000),
    };
    let clock = Time::from_hms_nano(hour, minute, second.unwrap_or(0), nanos).map_err(|_| bad())?;
    let start = PrimitiveDateTime::new(date, clock).assume_offset(offset);
    let start = micros(start);
    Ok(InstantRange {
        start,
        end: start + step_micros,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000_000;

    #[test]
    fn partial_dates_cover_their_whole_interval() {
        let y = parse_range("2024").unwrap();
        assert_eq!(y.end - y.start, 366 * DAY);
        let m = parse_range("2024-02").unwrap();
        assert_eq!(m.end - m.start, 29 * DAY);
        let dec = parse_range("2023-12").unwrap();
        assert_eq!(dec.end, parse_range("2024").unwrap().start);
        let d = parse_range("2024-02-29").unwrap();
        assert_eq!(d.end - d.start, DAY);
    }

    #[test]
    fn times_need_a_zone_and_honour_it() {
        let utc = parse_range("2024-01-01T10:00:00Z").unwrap();
        let plus = parse_range("2024-01-01T12:00:00+02:00").unwrap();
        assert_eq!(utc, plus);
        assert_eq!(utc.end - utc.start, 1_000_000);
        let ms = parse_range("2024-01-01T10:00:00.123Z").unwrap();
        assert_eq!(ms.start - utc.start, 123_000);
        assert_eq!(ms.end - ms.start, 1_000);
        assert!(parse_range("2024-01-01T10:00:00").is_err());
        assert_eq!(
            parse_range("2024-01-01T10:00Z").unwrap().end - utc.start,
            60_000_000
        );
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            "",
            "24",
            "2024-13",
            "2024-02-30",
            "2024-1-01",
            "yesterday",
            "2024-01T10:00Z",
            "2024-01-01T25:00Z",
        ] {
            assert!(parse_range(bad).is_err(), "{bad}");
        }
    }
}
