//! accrue-core: the pure domain of the ledger.
//!
//! No I/O, no clock reads, no randomness: `now`, ids and serial numbers arrive
//! in commands or the [`Context`]. Everything here is a function of its inputs,
//! which is what makes replay, as-of queries and audits possible.

pub mod account;
pub mod correction;
pub mod error;
pub mod events;
pub mod invoice;
pub mod license;
pub mod money;
pub mod period;
pub mod processor;
pub mod tax;
pub mod ts;

pub use account::{
    decide, evolve, total_of, AccountState, Command, Context, InvoiceState, OpenAccount,
    PaymentRef, PaymentStatus, PlanChange, SeatsInUse, UsageInput, FUTURE_TOLERANCE_SECS,
};
pub use correction::{DunningPolicy, PaymentOutcome};
pub use error::DomainError;
pub use events::{
    AccountEvent, InvoiceLine, InvoiceStatus, LedgerEvent, LineKind, Plan, CLOCK_STREAM,
    CREDIT_NOTE_SEQUENCE_STREAM, INVOICE_SEQUENCE_STREAM, MAIL_STREAM, SCHEMA_VERSION,
    TOKENS_STREAM,
};
pub use money::{parse_money, round_cents, Money, MoneyError, MAX_LIMIT_USD};
pub use period::{add_months, period_containing, BillingFrequency, Period};

use std::fmt;

/// A validated account id: `[a-z0-9][a-z0-9_-]{0,63}`.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct AccountId(String);

impl AccountId {
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        let bytes = s.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= 64
            && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
            && bytes[1..]
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-');
        if ok {
            Ok(AccountId(s.to_string()))
        } else {
            Err(DomainError::Invalid(format!(
                "account id {s:?} must match [a-z0-9][a-z0-9_-]{{0,63}}"
            )))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The name of this account's event stream.
    pub fn stream(&self) -> String {
        format!("account-{}", self.0)
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Email languages with templates; anything else falls back to English.
pub const EMAIL_LANGUAGES: [&str; 5] = ["en", "de", "fr", "es", "ja"];

/// Normalises a requested email language to one with templates (unknown → `en`).
pub fn email_language(requested: &str) -> &'static str {
    let lower = requested.trim().to_ascii_lowercase();
    let primary = lower.split(['-', '_']).next().unwrap_or("");
    EMAIL_LANGUAGES
        .iter()
        .find(|l| **l == primary)
        .copied()
        .unwrap_or("en")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids_follow_the_pattern() {
        assert!(AccountId::parse("acme").is_ok());
        assert!(AccountId::parse("0-a_b").is_ok());
        assert!(AccountId::parse(&"a".repeat(64)).is_ok());
        assert!(AccountId::parse(&"a".repeat(65)).is_err());
        assert!(AccountId::parse("").is_err());
        assert!(AccountId::parse("-acme").is_err());
        assert!(AccountId::parse("Acme").is_err());
        assert!(AccountId::parse("acme corp").is_err());
    }

    #[test]
    fn unknown_languages_fall_back_to_english() {
        assert_eq!(email_language("de"), "de");
        assert_eq!(email_language("ja-JP"), "ja");
        assert_eq!(email_language("pt"), "en");
        assert_eq!(email_language(""), "en");
    }
}
