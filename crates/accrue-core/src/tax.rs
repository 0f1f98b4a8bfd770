//! Tax and the issuer (SPEC §14): what makes an invoice a legal document.
//!
//! An account has a [`TaxProfile`] (tax country, the customer's tax id, a
//! treatment). At issue the invoice's net lines are taxed here — one rate
//! per invoice, from the configured [`TaxTable`], rounded half-up to cents
//! — and the result is written into the `InvoiceIssued` fact as an
//! [`InvoiceTax`], together with the [`Issuer`] then configured: changing
//! the configuration later never changes an issued invoice.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::error::DomainError;
use crate::money::round_cents;

/// How an account's invoices are taxed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaxTreatment {
    /// The rate of the tax country, from the configured table.
    Standard,
    /// No tax charged: the recipient accounts for it (EU B2B across borders).
    ReverseCharge,
    /// No tax charged, for a stated reason.
    Exempt,
}

impl TaxTreatment {
    pub fn as_str(self) -> &'static str {
        match self {
            TaxTreatment::Standard => "standard",
            TaxTreatment::ReverseCharge => "reverse_charge",
            TaxTreatment::Exempt => "exempt",
        }
    }
    pub fn parse(s: &str) -> Result<TaxTreatment, DomainError> {
        match s {
            "standard" => Ok(TaxTreatment::Standard),
            "reverse_charge" => Ok(TaxTreatment::ReverseCharge),
            "exempt" => Ok(TaxTreatment::Exempt),
            other => Err(DomainError::Invalid(format!(
                "tax treatment {other:?} must be standard, reverse_charge or exempt"
            ))),
        }
    }
}

/// An account's tax facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaxProfile {
    /// ISO 3166-1 alpha-2, optionally with a subdivision (`DE`, `US-CA`).
    pub country: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_tax_id: Option<String>,
    pub treatment: TaxTreatment,
    /// Why an `exempt` account pays no tax (printed on the invoice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exempt_reason: Option<String>,
}

impl TaxProfile {
    /// Checks the profile's shape and, for `standard`, that the table has a
    /// rate for its country.
    pub fn validate(&self, table: &TaxTable) -> Result<(), DomainError> {
        if !valid_country(&self.country) {
            return Err(DomainError::Invalid(format!(
                "tax country {:?} must be an ISO 3166 code like DE or US-CA",
                self.country
            )));
        }
        if let Some(id) = &self.customer_tax_id {
            let ok = !id.is_empty()
                && id.len() <= 32
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if !ok {
                return Err(DomainError::Invalid(
                    "customer_tax_id must be 1–32 letters, digits or '-'".into(),
                ));
            }
        }
        match self.treatment {
            TaxTreatment::Exempt => {
                if self
                    .exempt_reason
                    .as_deref()
                    .is_none_or(|r| r.trim().is_empty())
                {
                    return Err(DomainError::Invalid(
                        "an exempt tax treatment needs an exempt_reason".into(),
                    ));
                }
            }
            TaxTreatment::ReverseCharge => {
                if self.customer_tax_id.is_none() {
                    return Err(DomainError::Invalid(
                        "reverse charge needs the customer's tax id (customer_tax_id)".into(),
                    ));
                }
            }
            TaxTreatment::Standard => {
                if table.rate(&self.country).is_none() {
                    return Err(DomainError::Invalid(format!(
                        "no tax rate is configured for {:?}",
                        self.country
                    )));
                }
            }
        }
        Ok(())
    }
}

fn valid_country(c: &str) -> bool {
    let (cc, sub) = match c.split_once('-') {
        Some((a, b)) => (a, Some(b)),
        None => (c, None),
    };
    cc.len() == 2
        && cc.bytes().all(|b| b.is_ascii_uppercase())
        && sub.is_none_or(|s| {
            (1..=3).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        })
}

/// Tax rates in percent by country or subdivision (`DE` → 19, `US-CA` →
/// 7.25), from the configuration; no network.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaxTable(Vec<(String, Decimal)>);

impl TaxTable {
    pub const EMPTY: TaxTable = TaxTable(Vec::new());
    pub fn new(mut rates: Vec<(String, Decimal)>) -> Result<TaxTable, DomainError> {
        for (c, r) in &rates {
            if !valid_country(c) {
                return Err(DomainError::Invalid(format!("tax country {c:?}")));
            }
            if r.is_sign_negative() || *r >= Decimal::ONE_HUNDRED {
                return Err(DomainError::Invalid(format!("tax rate {r} for {c}")));
            }
        }
        rates.sort_by(|a, b| a.0.cmp(&b.0));
        rates.dedup_by(|a, b| a.0 == b.0);
        Ok(TaxTable(rates))
    }
    /// The rate of `country`: the subdivision's if listed, else the country's.
    pub fn rate(&self, country: &str) -> Option<Decimal> {
        let find = |c: &str| {
            self.0
                .binary_search_by(|(k, _)| k.as_str().cmp(c))
                .ok()
                .map(|i| self.0[i].1)
        };
        find(country).or_else(|| country.split_once('-').and_then(|(cc, _)| find(cc)))
    }
    pub fn iter(&self) -> impl Iterator<Item = &(String, Decimal)> {
        self.0.iter()
    }
}

/// Who issues the invoices, as printed on them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issuer {
    pub legal_name: String,
    /// Postal address lines.
    pub address: Vec<String>,
    /// ISO 3166-1 alpha-2 of the seat (the e-invoice needs it).
    pub country: String,
    /// VAT id (`DE123456789`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tax_id: Option<String>,
    /// Commercial register entry (`Amtsgericht München HRB 12345`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<String>,
    /// Bank details / how to pay (`IBAN DE89 3704 0044 0532 0130 00, BIC …`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_instructions: Option<String>,
    /// IBAN alone, for the e-invoice's payment means (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iban: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The logo, a PNG (at most 64 KiB, checked when the configuration is
    /// read), base64: part of each issued fact like every other detail, so
    /// a new logo never changes an issued invoice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logo_png: Option<String>,
}

/// The legal configuration in force (set once when `serve` starts).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Legal {
    pub issuer: Option<Issuer>,
    pub rates: TaxTable,
}

/// One rate's share of an invoice's tax.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaxAmount {
    /// Percent (`19`, `7.25`; `0` for reverse charge and exempt).
    pub rate: Decimal,
    /// The net amount taxed at this rate.
    pub taxable: Decimal,
    pub amount: Decimal,
}

/// The tax facts of an issued invoice or credit note.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceTax {
    pub treatment: TaxTreatment,
    pub country: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_tax_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exempt_reason: Option<String>,
    /// Sum of the (rounded) net lines.
    pub net: Decimal,
    /// Tax per rate (one rate per document today).
    pub rates: Vec<TaxAmount>,
}

impl InvoiceTax {
    /// Total tax over all rates.
    pub fn tax_total(&self) -> Decimal {
        self.rates.iter().map(|r| r.amount).sum()
    }
    /// The rate charged (percent).
    pub fn rate(&self) -> Decimal {
        self.rates.first().map_or(Decimal::ZERO, |r| r.rate)
    }
    /// `net + tax`.
    pub fn gross(&self) -> Decimal {
        self.net + self.tax_total()
    }
}

fn cents(mut d: Decimal) -> Decimal {
    d = round_cents(d);
    d.rescale(2);
    d
}

/// The rate a profile pays under `table` (0 for reverse charge and exempt;
/// 0 too when a standard country lost its configured rate since it was
/// validated — the invoice then says 0 % rather than stopping the close).
pub fn rate_for(profile: &TaxProfile, table: &TaxTable) -> Decimal {
    match profile.treatment {
        TaxTreatment::Standard => table.rate(&profile.country).unwrap_or(Decimal::ZERO),
        TaxTreatment::ReverseCharge | TaxTreatment::Exempt => Decimal::ZERO,
    }
}

/// Taxes `net` (already the sum of rounded lines) at `rate` percent,
/// half-up to cents.
pub fn tax_of(net: Decimal, rate: Decimal) -> Decimal {
    cents(net * rate / Decimal::ONE_HUNDRED)
}

/// The tax facts of a document with net total `net` for `profile`.
pub fn compute(profile: &TaxProfile, table: &TaxTable, net: Decimal) -> InvoiceTax {
    let rate = rate_for(profile, table);
    with_rate(profile, rate, net)
}

fn with_rate(profile: &TaxProfile, rate: Decimal, net: Decimal) -> InvoiceTax {
    let net = cents(net);
    InvoiceTax {
        treatment: profile.treatment,
        country: profile.country.clone(),
        customer_tax_id: profile.customer_tax_id.clone(),
        exempt_reason: profile.exempt_reason.clone(),
        net,
        rates: vec![TaxAmount {
            rate: rate.normalize(),
            taxable: net,
            amount: tax_of(net, rate),
        }],
    }
}

/// The tax facts of a credit note of `net` against an invoice taxed as
/// `invoice`: the same treatment and rate. `rest` is what of the
/// invoice's (net, tax) is not credited yet: crediting all the net left
/// credits all the tax left, so a full credit reverses the tax exactly.
pub fn credit(invoice: &InvoiceTax, net: Decimal, rest: (Decimal, Decimal)) -> InvoiceTax {
    let (rest_net, rest_tax) = rest;
    let mut t = InvoiceTax {
        treatment: invoice.treatment,
        country: invoice.country.clone(),
        customer_tax_id: invoice.customer_tax_id.clone(),
        exempt_reason: invoice.exempt_reason.clone(),
        net: cents(net),
        rates: vec![],
    };
    let rate = invoice.rate();
    let amount = if t.net == rest_net {
        rest_tax
    } else {
        tax_of(t.net, rate).min(rest_tax).max(Decimal::ZERO)
    };
    t.rates.push(TaxAmount {
        rate,
        taxable: t.net,
        amount: cents(amount),
    });
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rust_decimal_macros::dec;

    fn table() -> TaxTable {
        TaxTable::new(vec![
            ("DE".into(), dec!(19)),
            ("FR".into(), dec!(20)),
            ("US-CA".into(), dec!(7.25)),
            ("US".into(), dec!(0)),
        ])
        .unwrap()
    }

    fn profile(country: &str, treatment: TaxTreatment) -> TaxProfile {
        TaxProfile {
            country: country.into(),
            customer_tax_id: Some("DE123456789".into()),
            treatment,
            exempt_reason: (treatment == TaxTreatment::Exempt).then(|| "charity".into()),
        }
    }

    #[test]
    fn a_standard_rate_comes_from_the_table_and_rounds_half_up() {
        let t = compute(
            &profile("DE", TaxTreatment::Standard),
            &table(),
            dec!(145.00),
        );
        assert_eq!(t.rate(), dec!(19));
        assert_eq!(t.tax_total().to_string(), "27.55");
        assert_eq!(t.gross().to_string(), "172.55");
        // 0.05 × 7.25 % = 0.003625 → 0.00; 10.00 × 7.25 % = 0.725 → 0.73.
        let ca = profile("US-CA", TaxTreatment::Standard);
        assert_eq!(compute(&ca, &table(), dec!(10)).tax_total(), dec!(0.73));
        assert_eq!(compute(&ca, &table(), dec!(0.05)).tax_total(), dec!(0.00));
        // A subdivision without its own rate takes the country's.
        assert_eq!(table().rate("US-NY"), Some(dec!(0)));
        assert_eq!(table().rate("ES"), None);
    }

    #[test]
    fn reverse_charge_and_exempt_charge_no_tax_and_keep_their_facts() {
        let rc = compute(
            &profile("DE", TaxTreatment::ReverseCharge),
            &table(),
            dec!(100),
        );
        assert_eq!(rc.tax_total(), dec!(0));
        assert_eq!(rc.gross(), dec!(100));
        assert_eq!(rc.customer_tax_id.as_deref(), Some("DE123456789"));
        let ex = compute(&profile("FR", TaxTreatment::Exempt), &table(), dec!(100));
        assert_eq!(ex.tax_total(), dec!(0));
        assert_eq!(ex.exempt_reason.as_deref(), Some("charity"));
    }

    #[test]
    fn profiles_are_checked() {
        let t = table();
        assert!(profile("DE", TaxTreatment::Standard).validate(&t).is_ok());
        assert!(profile("ES", TaxTreatment::Standard).validate(&t).is_err());
        assert!(profile("de", TaxTreatment::Standard).validate(&t).is_err());
        assert!(profile("US-CA", TaxTreatment::Standard)
            .validate(&t)
            .is_ok());
        let mut ex = profile("FR", TaxTreatment::Exempt);
        ex.exempt_reason = None;
        assert!(ex.validate(&t).is_err());
        let mut rc = profile("AT", TaxTreatment::ReverseCharge);
        assert!(rc.validate(&t).is_ok(), "no rate needed for reverse charge");
        rc.customer_tax_id = None;
        assert!(rc.validate(&t).is_err());
    }

    #[test]
    fn a_full_credit_reverses_the_tax_exactly() {
        let inv = compute(
            &profile("DE", TaxTreatment::Standard),
            &table(),
            dec!(10.05),
        );
        assert_eq!(inv.tax_total(), dec!(1.91)); // 1.9095
        let part = credit(&inv, dec!(5.00), (inv.net, inv.tax_total()));
        assert_eq!(part.tax_total(), dec!(0.95));
        let rest = credit(&inv, dec!(5.05), (dec!(5.05), dec!(0.96)));
        assert_eq!(rest.tax_total(), dec!(0.96));
        assert_eq!(part.tax_total() + rest.tax_total(), inv.tax_total());
    }

    proptest! {
        /// Net + tax = gross, the tax is the net at the rate to the cent,
        /// and everything is in cents.
        #[test]
        fn net_plus_tax_is_gross(cents_net in 0i64..10_000_000, rate_bp in 0i64..3000) {
            let rate = Decimal::new(rate_bp, 2);
            let net = Decimal::new(cents_net, 2);
            let t = with_rate(&profile("DE", TaxTreatment::Standard), rate, net);
            prop_assert_eq!(t.net + t.tax_total(), t.gross());
            prop_assert_eq!(t.gross().scale(), 2);
            let exact = net * rate / Decimal::ONE_HUNDRED;
            prop_assert!((t.tax_total() - exact).abs() <= dec!(0.005));
        }
    }
}
