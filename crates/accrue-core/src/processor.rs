//! A payment processor's events mapped to payment outcomes (SPEC §11),
//! pure: the edge verifies the signature and parses the JSON into a
//! [`ProcessorEvent`], reads what the ledger knows of the invoice into
//! [`InvoiceFacts`], and [`map_stripe`] decides. No I/O here.
//!
//! Amounts arrive in the currency's minor units (Stripe: `amount_refunded:
//! 4000` is 40.00 USD, but 4000 JPY, and 4.000 KWD), so the currency's
//! exponent decides the decimal point; see [`minor_unit_exponent`].

use rust_decimal::Decimal;

use crate::PaymentOutcome;

/// The longest failure reason kept from a processor.
pub const MAX_FAILURE_REASON_CHARS: usize = 500;

/// What the edge read from one processor event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcessorEvent {
    /// The processor's event id: the payment's reference, so a redelivery
    /// of the same event changes nothing.
    pub id: String,
    /// `invoice.paid`, `invoice.payment_failed`, `charge.refunded`, …
    pub kind: String,
    /// The accrue invoice number (`metadata.accrue_invoice`).
    pub invoice: Option<String>,
    /// A failed payment's message, if the processor gave one.
    pub failure_message: Option<String>,
    /// `charge.refunded`: the charge's refunds so far, in minor units.
    pub amount_refunded_minor: Option<i64>,
    /// The object's currency, as the processor writes it (`"usd"`).
    pub currency: Option<String>,
}

/// What the ledger knows of the event's invoice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceFacts {
    /// The invoice's currency (`"USD"`).
    pub currency: String,
    /// Refunds already recorded against it.
    pub refunded: Decimal,
    /// Whether this event's id is already recorded as a payment reference.
    pub reference_seen: bool,
}

/// What to do with an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Mapping {
    /// Record this outcome on the invoice, with the event id as reference.
    Record {
        invoice: String,
        outcome: PaymentOutcome,
    },
    /// A redelivery of an event already recorded: nothing changes.
    Duplicate,
    /// Nothing for accrue in it; why.
    Ignored(&'static str),
}

/// Why an event cannot be mapped (the edge answers 422, or 404 for
/// [`ProcessorError::UnknownInvoice`]); nothing is recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcessorError {
    #[error("the event has no id")]
    NoId,
    #[error("{kind} without {field}")]
    Missing {
        kind: &'static str,
        field: &'static str,
    },
    #[error("currency {0:?} is not a three-letter ISO 4217 code")]
    BadCurrency(String),
    #[error("a negative amount_refunded ({0})")]
    NegativeAmount(i64),
    #[error("a refund in {refund} for invoice {invoice} billed in {invoice_currency}")]
    CurrencyMismatch {
        invoice: String,
        refund: String,
        invoice_currency: String,
    },
    #[error("no invoice {0:?}")]
    UnknownInvoice(String),
}

/// Digits after the decimal point of a currency's minor unit, as the
/// processor counts amounts: 0 for the zero-decimal currencies (JPY, KRW,
/// …), 3 for the Gulf and Tunisian dinars, else 2.
pub fn minor_unit_exponent(currency: &str) -> u32 {
    const ZERO: [&str; 16] = [
        "BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "UGX", "VND", "VUV",
        "XAF", "XOF", "XPF",
    ];
    const THREE: [&str; 5] = ["BHD", "JOD", "KWD", "OMR", "TND"];
    let code = currency.to_ascii_uppercase();
    if ZERO.contains(&code.as_str()) {
        0
    } else if THREE.contains(&code.as_str()) {
        3
    } else {
        2
    }
}

/// A three-letter currency code, upper case.
pub fn currency_code(currency: &str) -> Result<String, ProcessorError> {
    if currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(currency.to_ascii_uppercase())
    } else {
        Err(ProcessorError::BadCurrency(
            currency.chars().take(16).collect(),
        ))
    }
}

/// `minor` units of `currency` as a decimal amount (`4000`, `"usd"` → 40.00).
pub fn from_minor_units(minor: i64, currency: &str) -> Decimal {
    Decimal::new(minor, minor_unit_exponent(currency))
}

/// Maps one of Stripe's events to what accrue records. `facts` is `None`
/// when the invoice is not known (or the event names none).
pub fn map_stripe(
    event: &ProcessorEvent,
    facts: Option<&InvoiceFacts>,
) -> Result<Mapping, ProcessorError> {
    if event.id.is_empty() {
        return Err(ProcessorError::NoId);
    }
    let Some(invoice) = event.invoice.clone() else {
        return Ok(Mapping::Ignored("no metadata.accrue_invoice on the object"));
    };
    let outcome = match event.kind.as_str() {
        "invoice.paid" => PaymentOutcome::Succeeded,
        "invoice.payment_failed" => PaymentOutcome::Failed {
            reason: event
                .failure_message
                .as_ref()
                .map(|m| m.chars().take(MAX_FAILURE_REASON_CHARS).collect()),
        },
        "charge.refunded" => {
            let kind = "charge.refunded";
            let minor = event.amount_refunded_minor.ok_or(ProcessorError::Missing {
                kind,
                field: "amount_refunded",
            })?;
            let currency =
                currency_code(event.currency.as_deref().ok_or(ProcessorError::Missing {
                    kind,
                    field: "currency",
                })?)?;
            if minor < 0 {
                return Err(ProcessorError::NegativeAmount(minor));
            }
            let facts = facts.ok_or_else(|| ProcessorError::UnknownInvoice(invoice.clone()))?;
            if facts.reference_seen {
                return Ok(Mapping::Duplicate);
            }
            if !facts.currency.eq_ignore_ascii_case(&currency) {
                return Err(ProcessorError::CurrencyMismatch {
                    invoice,
                    refund: currency,
                    invoice_currency: facts.currency.clone(),
                });
            }
            // `amount_refunded` is the charge's refunds so far: the writer
            // records what it has not yet (the read model here may lag it,
            // so the difference is not taken here).
            let total = from_minor_units(minor, &currency);
            if total <= facts.refunded {
                return Ok(Mapping::Ignored("every refund of this charge is recorded"));
            }
            PaymentOutcome::RefundedTo { total }
        }
        _ => return Ok(Mapping::Ignored("an event type accrue does not use")),
    };
    Ok(Mapping::Record { invoice, outcome })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    fn refund(id: &str, minor: i64, currency: &str) -> ProcessorEvent {
        ProcessorEvent {
            id: id.into(),
            kind: "charge.refunded".into(),
            invoice: Some("INV-2026-000001".into()),
            amount_refunded_minor: Some(minor),
            currency: Some(currency.into()),
            ..Default::default()
        }
    }

    fn facts(currency: &str, refunded: Decimal, seen: bool) -> InvoiceFacts {
        InvoiceFacts {
            currency: currency.into(),
            refunded,
            reference_seen: seen,
        }
    }

    fn refunded(m: Mapping) -> Decimal {
        match m {
            Mapping::Record {
                outcome: PaymentOutcome::RefundedTo { total },
                ..
            } => total,
            other => panic!("not a refund: {other:?}"),
        }
    }

    #[test]
    fn minor_units_follow_the_currency_exponent() {
        assert_eq!(from_minor_units(4000, "usd"), dec!(40.00));
        assert_eq!(from_minor_units(4000, "EUR"), dec!(40.00));
        assert_eq!(from_minor_units(4000, "jpy"), dec!(4000));
        assert_eq!(from_minor_units(1234, "krw"), dec!(1234));
        assert_eq!(from_minor_units(4000, "kwd"), dec!(4.000));
        assert_eq!(from_minor_units(1, "bhd"), dec!(0.001));
        for c in ["JOD", "OMR", "TND"] {
            assert_eq!(minor_unit_exponent(c), 3, "{c}");
        }
        assert_eq!(minor_unit_exponent("VND"), 0);
        assert_eq!(minor_unit_exponent("CHF"), 2);
        // The scale is kept: 40.00 prints as two decimals, 4.000 as three.
        assert_eq!(from_minor_units(4000, "usd").to_string(), "40.00");
        assert_eq!(from_minor_units(4000, "kwd").to_string(), "4.000");
    }

    #[test]
    fn a_refund_records_what_is_not_recorded_yet() {
        let m = map_stripe(
            &refund("evt_3", 4000, "usd"),
            Some(&facts("USD", dec!(0), false)),
        );
        assert_eq!(refunded(m.unwrap()), dec!(40.00));
        // The charge refunded 140.00 in all; 40.00 of it is recorded: the
        // writer gets the total and records the difference in its order.
        let m = map_stripe(
            &refund("evt_4", 14000, "usd"),
            Some(&facts("USD", dec!(40), false)),
        );
        assert_eq!(refunded(m.unwrap()), dec!(140.00));
        // Nothing new: ignored, not a zero refund.
        let m = map_stripe(
            &refund("evt_5", 14000, "usd"),
            Some(&facts("USD", dec!(140), false)),
        );
        assert_eq!(
            m,
            Ok(Mapping::Ignored("every refund of this charge is recorded"))
        );
    }

    #[test]
    fn zero_and_three_decimal_currencies_refund_the_right_amount() {
        let m = map_stripe(
            &refund("evt_j", 5000, "jpy"),
            Some(&facts("JPY", dec!(0), false)),
        );
        assert_eq!(refunded(m.unwrap()), dec!(5000));
        let m = map_stripe(
            &refund("evt_k", 2500, "kwd"),
            Some(&facts("KWD", dec!(1), false)),
        );
        assert_eq!(refunded(m.unwrap()), dec!(2.500));
    }

    #[test]
    fn a_refund_in_another_currency_than_the_invoice_is_refused() {
        let m = map_stripe(
            &refund("evt_e", 4000, "eur"),
            Some(&facts("USD", dec!(0), false)),
        );
        assert_eq!(
            m,
            Err(ProcessorError::CurrencyMismatch {
                invoice: "INV-2026-000001".into(),
                refund: "EUR".into(),
                invoice_currency: "USD".into(),
            })
        );
    }

    #[test]
    fn a_redelivery_changes_nothing() {
        // The same event id again, even after other refunds moved the total.
        let m = map_stripe(
            &refund("evt_3", 4000, "usd"),
            Some(&facts("USD", dec!(140), true)),
        );
        assert_eq!(m, Ok(Mapping::Duplicate));
    }

    #[test]
    fn malformed_refunds_are_refused_with_a_reason() {
        let f = facts("USD", dec!(0), false);
        let mut e = refund("evt_m", 4000, "usd");
        e.amount_refunded_minor = None;
        assert!(matches!(
            map_stripe(&e, Some(&f)),
            Err(ProcessorError::Missing {
                field: "amount_refunded",
                ..
            })
        ));
        let mut e = refund("evt_m", 4000, "usd");
        e.currency = None;
        assert!(matches!(
            map_stripe(&e, Some(&f)),
            Err(ProcessorError::Missing {
                field: "currency",
                ..
            })
        ));
        for bad in ["us", "usdd", "u$d", ""] {
            assert!(
                matches!(
                    map_stripe(&refund("evt_m", 1, bad), Some(&f)),
                    Err(ProcessorError::BadCurrency(_))
                ),
                "{bad}"
            );
        }
        assert_eq!(
            map_stripe(&refund("evt_m", -1, "usd"), Some(&f)),
            Err(ProcessorError::NegativeAmount(-1))
        );
        assert_eq!(
            map_stripe(&refund("evt_m", 1, "usd"), None),
            Err(ProcessorError::UnknownInvoice("INV-2026-000001".into()))
        );
        assert_eq!(
            map_stripe(&refund("", 1, "usd"), Some(&f)),
            Err(ProcessorError::NoId)
        );
    }

    #[test]
    fn paid_failed_and_other_events() {
        let base = ProcessorEvent {
            id: "evt_1".into(),
            invoice: Some("INV-1".into()),
            ..Default::default()
        };
        let paid = ProcessorEvent {
            kind: "invoice.paid".into(),
            ..base.clone()
        };
        assert_eq!(
            map_stripe(&paid, None),
            Ok(Mapping::Record {
                invoice: "INV-1".into(),
                outcome: PaymentOutcome::Succeeded
            })
        );
        let failed = ProcessorEvent {
            kind: "invoice.payment_failed".into(),
            failure_message: Some("x".repeat(2000)),
            ..base.clone()
        };
        let Ok(Mapping::Record {
            outcome: PaymentOutcome::Failed { reason: Some(r) },
            ..
        }) = map_stripe(&failed, None)
        else {
            panic!("not a failure")
        };
        assert_eq!(r.chars().count(), MAX_FAILURE_REASON_CHARS);
        let other = ProcessorEvent {
            kind: "customer.created".into(),
            ..base.clone()
        };
        assert!(matches!(map_stripe(&other, None), Ok(Mapping::Ignored(_))));
        let no_invoice = ProcessorEvent {
            kind: "invoice.paid".into(),
            invoice: None,
            ..base
        };
        assert!(matches!(
            map_stripe(&no_invoice, None),
            Ok(Mapping::Ignored(_))
        ));
    }
}
