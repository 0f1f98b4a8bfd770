//! The injected clock. The system clock reads the wall time; the manual clock
//! (like a payment provider's test clock) only moves through the API, and its
//! position is stored in the ledger so a restart never runs time backwards.

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use parking_lot::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockMode {
    System,
    /// Starts at the later of this instant and the stored position.
    Manual(DateTime<Utc>),
}

pub struct Clock {
    manual: Option<Mutex<DateTime<Utc>>>,
}

/// Instants are kept to the microsecond, as the store keeps them.
pub fn truncate(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(TimeDelta::microseconds(1)).unwrap_or(t)
}

impl Clock {
    pub fn new(mode: ClockMode, stored: Option<DateTime<Utc>>) -> Clock {
        match mode {
            ClockMode::System => Clock { manual: None },
            ClockMode::Manual(flag) => {
                if let Some(s) = stored.filter(|s| *s > flag) {
                    // The stored position wins: time never runs backwards.
                    tracing::warn!(
                        requested = %flag.to_rfc3339(),
                        stored = %s.to_rfc3339(),
                        "--clock is earlier than the ledger's stored clock; starting at the stored position"
                    );
                }
                let start = stored.map_or(flag, |s| s.max(flag));
                Clock {
                    manual: Some(Mutex::new(truncate(start))),
                }
            }
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        match &self.manual {
            Some(m) => *m.lock(),
            None => truncate(Utc::now()),
        }
    }

    pub fn is_manual(&self) -> bool {
        self.manual.is_some()
    }

    /// Sets the manual clock; the caller has checked it moves forward.
    pub(crate) fn set(&self, now: DateTime<Utc>) {
        if let Some(m) = &self.manual {
            let mut g = m.lock();
            if now > *g {
                *g = now;
            }
        }
    }
}
