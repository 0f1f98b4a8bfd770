//! Credit- and billing-period math. Periods start at 00:00 UTC on the anchor
//! day; an anchor past a month's end (29–31) clamps to its last day.

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BillingFrequency {
    Monthly,
    Yearly,
}

impl BillingFrequency {
    pub fn months(self) -> u32 {
        match self {
            BillingFrequency::Monthly => 1,
            BillingFrequency::Yearly => 12,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            BillingFrequency::Monthly => "monthly",
            BillingFrequency::Yearly => "yearly",
        }
    }
}

/// A half-open interval `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Period {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Period {
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.start <= t && t < self.end
    }
    /// Whole days in the period (periods start and end at midnight UTC).
    pub fn days(&self) -> i64 {
        (self.end - self.start).num_days()
    }
}

fn days_in_month(year: i32, month: u32) -> u32 {
    let (ny, nm) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    NaiveDate::from_ymd_opt(ny, nm, 1)
        .and_then(|d| d.pred_opt())
        .map(|d| d.day())
        .unwrap_or(28)
}

/// Midnight UTC of the anchor day in the given month (clamped to month end).
pub fn anchor_in_month(year: i32, month: u32, anchor_day: u32) -> DateTime<Utc> {
    let day = anchor_day.clamp(1, 31).min(days_in_month(year, month));
    Utc.with_ymd_and_hms(year, month, day, 0, 0, 0)
        .single()
        .expect("a clamped calendar day always exists")
}

/// `months` months after the anchor-month of `t`, keeping the anchor day.
pub fn add_months(year: i32, month: u32, months: i32) -> (i32, u32) {
    let total = year * 12 + (month as i32 - 1) + months;
    (total.div_euclid(12), (total.rem_euclid(12) + 1) as u32)
}

/// The monthly period (by anchor day) that contains `t`.
pub fn period_containing(anchor_day: u32, t: DateTime<Utc>) -> Period {
    let this = anchor_in_month(t.year(), t.month(), anchor_day);
    let (start_ym, end_ym) = if this <= t {
        ((t.year(), t.month()), add_months(t.year(), t.month(), 1))
    } else {
        (add_months(t.year(), t.month(), -1), (t.year(), t.month()))
    };
    Period {
        start: anchor_in_month(start_ym.0, start_ym.1, anchor_day),
        end: anchor_in_month(end_ym.0, end_ym.1, anchor_day),
    }
}

/// The period of `months` months that starts at `start` (itself an anchor
/// instant).
pub fn period_from(anchor_day: u32, start: DateTime<Utc>, months: u32) -> Period {
    let (y, m) = add_months(start.year(), start.month(), months as i32);
    Period {
        start,
        end: anchor_in_month(y, m, anchor_day),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn anchor_31_clamps_to_month_end() {
        let p = period_containing(31, at("2026-01-31T00:00:00Z"));
        assert_eq!(p.end, at("2026-02-28T00:00:00Z"));
        let p = period_containing(31, p.end);
        assert_eq!(p.end, at("2026-03-31T00:00:00Z"));
        let p = period_containing(31, p.end);
        assert_eq!(p.end, at("2026-04-30T00:00:00Z"));
        let leap = period_containing(31, at("2028-02-01T00:00:00Z"));
        assert_eq!(leap.end, at("2028-02-29T00:00:00Z"));
    }

    #[test]
    fn a_period_starts_on_the_anchor_day_at_midnight() {
        let p = period_containing(15, at("2026-01-15T00:00:00Z"));
        assert_eq!(p.start, at("2026-01-15T00:00:00Z"));
        assert_eq!(p.end, at("2026-02-15T00:00:00Z"));
        let p = period_containing(15, at("2026-01-14T23:59:59Z"));
        assert_eq!(p.start, at("2025-12-15T00:00:00Z"));
    }

    #[test]
    fn yearly_periods_span_twelve_months() {
        let p = period_from(31, at("2026-01-31T00:00:00Z"), 12);
        assert_eq!(p.end, at("2027-01-31T00:00:00Z"));
    }

    proptest! {
        // Periods are contiguous (no gap, no overlap) for every anchor day over ten years.
        #[test]
        fn periods_are_contiguous(anchor in 1u32..=31, year in 2000i32..2090) {
            let mut p = period_containing(anchor, anchor_in_month(year, 1, anchor));
            for _ in 0..120 {
                let next = period_containing(anchor, p.end);
                prop_assert_eq!(next.start, p.end);
                prop_assert!(next.end > next.start);
                prop_assert!((28..=31).contains(&next.days()));
                prop_assert!(next.contains(next.start) && !next.contains(next.end));
                p = next;
            }
        }

        #[test]
        fn every_instant_is_in_its_period(anchor in 1u32..=31, secs in 0i64..4_000_000_000) {
            let t = Utc.timestamp_opt(secs, 0).unwrap();
            let p = period_containing(anchor, t);
            prop_assert!(p.contains(t));
        }
    }
}
