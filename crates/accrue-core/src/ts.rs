//! Event timestamps on the hot path (usage events): exactly the text chrono's
//! serde writes (`to_rfc3339_opts(SecondsFormat::AutoSi, true)`, e.g.
//! `2026-01-15T00:00:00.125Z`), written and read without chrono's format
//! machinery, which took a third of a usage event's decoding time. Anything
//! outside the fast path (other years, offsets, leap seconds) goes through
//! chrono, so what is accepted is unchanged.

use std::fmt;

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, SecondsFormat, Timelike, Utc};
use serde::{de, Deserializer, Serializer};

/// Writes `t` as chrono would.
pub fn format(t: &DateTime<Utc>) -> String {
    let mut buf = [0u8; 30];
    match format_into(t, &mut buf) {
        Some(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        None => t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
    }
}

fn format_into(t: &DateTime<Utc>, buf: &mut [u8; 30]) -> Option<usize> {
    let year = t.year();
    let nanos = t.nanosecond();
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        return None;
    }
    let mut put = |at: usize, v: u32, width: usize| {
        let mut v = v;
        for i in (0..width).rev() {
            buf[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year as u32, 4);
    put(5, t.month(), 2);
    put(8, t.day(), 2);
    put(11, t.hour(), 2);
    put(14, t.minute(), 2);
    put(17, t.second(), 2);
    let (frac, digits) = if nanos == 0 {
        (0, 0)
    } else if nanos.is_multiple_of(1_000_000) {
        (nanos / 1_000_000, 3)
    } else if nanos.is_multiple_of(1_000) {
        (nanos / 1_000, 6)
    } else {
        (nanos, 9)
    };
    if digits > 0 {
        put(20, frac, digits);
    }
    buf[4] = b'-';
    buf[7] = b'-';
    buf[10] = b'T';
    buf[13] = b':';
    buf[16] = b':';
    let mut n = 19;
    if digits > 0 {
        buf[19] = b'.';
        n = 20 + digits;
    }
    buf[n] = b'Z';
    Some(n + 1)
}

/// Reads what chrono's serde reads.
pub fn parse(s: &str) -> Option<DateTime<Utc>> {
    parse_fast(s.as_bytes()).or_else(|| {
        s.parse::<DateTime<FixedOffset>>()
            .ok()
            .map(|d| d.with_timezone(&Utc))
    })
}

/// `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z`, seconds 00–59.
fn parse_fast(b: &[u8]) -> Option<DateTime<Utc>> {
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<u32> {
        b[from..to].iter().try_fold(0u32, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if second > 59 {
        return None;
    }
    let nanos = match b[19] {
        b'Z' if b.len() == 20 => 0,
        b'.' if b.len() >= 22 && b.len() <= 30 && b[b.len() - 1] == b'Z' => {
            let digits = b.len() - 21;
            num(20, 20 + digits)? * 10u32.pow(9 - digits as u32)
        }
        _ => return None,
    };
    let date = NaiveDate::from_ymd_opt(year as i32, month, day)?;
    let time = date.and_hms_nano_opt(hour, minute, second, nanos)?;
    Some(time.and_utc())
}

pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; 30];
    match format_into(t, &mut buf) {
        Some(n) => {
            s.serialize_str(std::str::from_utf8(&buf[..n]).map_err(serde::ser::Error::custom)?)
        }
        None => s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
    }
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    struct V;
    impl de::Visitor<'_> for V {
        type Value = DateTime<Utc>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an RFC 3339 timestamp")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            parse(s).ok_or_else(|| E::custom(format!("not an RFC 3339 timestamp: {s:?}")))
        }
    }
    d.deserialize_str(V)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    proptest! {
        /// Byte for byte what chrono writes, and read back exactly.
        #[test]
        fn same_text_as_chrono_and_round_trips(
            secs in -62_000_000_000i64..260_000_000_000i64,
            nanos in prop_oneof![Just(0u32), (0u32..1000).prop_map(|m| m * 1_000_000),
                                 (0u32..1_000_000).prop_map(|u| u * 1000), 0u32..1_000_000_000],
        ) {
            let t = Utc.timestamp_opt(secs, nanos).unwrap();
            let ours = format(&t);
            let chrono_json = serde_json::to_string(&t).unwrap();
            prop_assert_eq!(format!("\"{ours}\""), chrono_json);
            prop_assert_eq!(parse(&ours), Some(t));
        }
    }

    #[test]
    fn other_forms_go_through_chrono() {
        let t = Utc.with_ymd_and_hms(2026, 1, 15, 8, 30, 0).unwrap();
        assert_eq!(parse("2026-01-15T09:30:00+01:00"), Some(t));
        assert_eq!(
            parse("2026-01-15T08:30:00.5Z"),
            Some(t + chrono::Duration::milliseconds(500))
        );
        for bad in [
            "",
            "2026-01-15",
            "2026-13-15T08:30:00Z",
            "2026-01-15T08:30:00",
            "2026-01-15T08:30:00.Z",
            "２０２６-01-15T08:30:00Z",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
