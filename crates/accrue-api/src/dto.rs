//! Wire types. Money is a decimal string both ways; a JSON number where money
//! is expected fails deserialisation (→ 422).

use std::fmt;

use accrue_core::money::display;
use accrue_core::{parse_money, AccountState, PaymentStatus};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use utoipa::ToSchema;

/// A money amount as a decimal string (`"12.50"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ToSchema)]
#[schema(value_type = String, example = "12.50")]
pub struct Money(pub Decimal);

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&display(self.0))
    }
}

/// Accepts only strings: `"12.50"`, never `12.5`.
struct StrOnly;

impl Visitor<'_> for StrOnly {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("money as a decimal string such as \"12.50\" (not a JSON number)")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = d.deserialize_str(StrOnly)?;
        parse_money(&s).map(Money).map_err(de::Error::custom)
    }
}

/// A money string whose value is checked later (per usage event), so that a
/// bad value rejects one event and not the whole batch. Numbers still fail
/// the whole request.
#[derive(Debug, Clone, PartialEq, Eq, ToSchema)]
#[schema(value_type = String, example = "0.0125")]
pub struct RawMoney(pub String);

impl<'de> Deserialize<'de> for RawMoney {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrOnly).map(RawMoney)
    }
}

pub fn money(d: Decimal) -> Money {
    Money(d)
}

/// The account room's request types live beside their handlers and
/// validation (`routes/accounts.rs`); re-exported so `crate::dto::…` holds.
pub use crate::routes::{AnchorDto, CreateAccount, LimitDto, PlanChangeDto, PlanDto, SeatsDto};

/// An account's tax facts: `{"country": "DE", "customer_tax_id":
/// "DE123456789", "treatment": "reverse_charge"}`; `standard` takes the
/// country's rate from the configured table, `exempt` needs a reason.
#[derive(Debug, Clone, Deserialize, serde::Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaxDto {
    /// ISO 3166 code, optionally with a subdivision: `DE`, `US-CA`.
    pub country: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_tax_id: Option<String>,
    /// `standard`, `reverse_charge` or `exempt`.
    pub treatment: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exempt_reason: Option<String>,
}

impl TryFrom<TaxDto> for accrue_core::tax::TaxProfile {
    type Error = crate::error::ApiError;
    /// The shape; the rate table is checked by the ledger's decision.
    fn try_from(t: TaxDto) -> Result<Self, Self::Error> {
        let bad =
            |e: accrue_core::DomainError| crate::error::ApiError::unprocessable(e.to_string());
        if let Some(r) = &t.exempt_reason {
            if r.len() > 200 || r.chars().any(char::is_control) {
                return Err(crate::error::ApiError::unprocessable(
                    "exempt_reason: at most 200 characters, no control characters",
                ));
            }
        }
        Ok(accrue_core::tax::TaxProfile {
            country: t.country.trim().to_ascii_uppercase(),
            customer_tax_id: t
                .customer_tax_id
                .map(|i| i.replace(' ', "").to_ascii_uppercase()),
            treatment: accrue_core::tax::TaxTreatment::parse(&t.treatment).map_err(bad)?,
            exempt_reason: t.exempt_reason.map(|r| r.trim().to_string()),
        })
    }
}

impl From<&accrue_core::tax::TaxProfile> for TaxDto {
    fn from(t: &accrue_core::tax::TaxProfile) -> TaxDto {
        TaxDto {
            country: t.country.clone(),
            customer_tax_id: t.customer_tax_id.clone(),
            treatment: t.treatment.as_str().to_string(),
            exempt_reason: t.exempt_reason.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClockDto {
    pub now: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ClockResponse {
    pub now: DateTime<Utc>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub role: crate::auth::Role,
    #[serde(default)]
    pub account_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TokenResponse {
    pub token: String,
    pub role: crate::auth::Role,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PeriodDto {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl From<accrue_core::Period> for PeriodDto {
    fn from(p: accrue_core::Period) -> Self {
        PeriodDto {
            start: p.start,
            end: p.end,
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CreditsDto {
    pub base: Money,
    pub additional_limit: Money,
    pub used: Money,
    pub available: Money,
    pub additional_used: Money,
    pub pending_unsubscribe: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_from_next_period: Option<Money>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PlanView {
    pub full_seats: u32,
    pub full_seat_price: Money,
    pub viewer_seats: u32,
    pub viewer_seat_price: Money,
    pub data_management: bool,
    pub data_management_price: Money,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SeatCount {
    pub licensed: u32,
    pub in_use: u32,
    pub remaining: u32,
}

/// What an ingest token is told after a seats report: only what it sent.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SeatsReported {
    pub full: u32,
    pub viewer: u32,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SeatsView {
    pub full: SeatCount,
    pub viewer: SeatCount,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MethodView {
    pub brand: String,
    pub last4: String,
    pub exp_month: u32,
    pub exp_year: u32,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PaymentView {
    /// `ok`, or `failed` after a failed payment (the overview turns red).
    pub status: &'static str,
    pub method: Option<MethodView>,
    /// The oldest invoice in dunning, if any (SPEC §8).
    pub dunning: Option<DunningView>,
    /// Unpaid past the grace period: usage is refused until every overdue
    /// invoice is paid.
    pub suspended: bool,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DunningView {
    pub invoice: String,
    /// The number of the next payment attempt (the first charge was 1).
    pub attempt: u32,
    /// `null` once every scheduled retry has been used.
    pub next_retry_at: Option<DateTime<Utc>>,
    pub suspends_at: DateTime<Utc>,
}

/// The license overview.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Overview {
    pub id: String,
    pub name: String,
    pub serial_number: String,
    pub billing_email: String,
    pub email_language: String,
    pub currency: String,
    pub billing_frequency: &'static str,
    pub period_anchor: u32,
    pub current_period: PeriodDto,
    pub billing_period: PeriodDto,
    pub next_credit_reset: DateTime<Utc>,
    pub credits: CreditsDto,
    pub plan: PlanView,
    pub seats: SeatsView,
    pub payment: PaymentView,
    /// Mails the relay refused for good (SPEC §4 alerts): support sees
    /// them; a corrected billing email gets them again.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mail_bounces: Vec<BounceView>,
    /// The account's tax facts, if set (SPEC §14).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tax: Option<TaxDto>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_of: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BounceView {
    pub kind: String,
    pub to: String,
    pub reason: String,
    /// The global position of the event whose mail bounced.
    pub cause_position: u64,
    /// Sent again since, to a corrected address.
    pub resent: bool,
}

fn seat(licensed: u32, in_use: u32) -> SeatCount {
    SeatCount {
        licensed,
        in_use,
        remaining: licensed.saturating_sub(in_use),
    }
}

/// Builds the overview from an account's state (live or as of an instant).
pub fn overview(s: &AccountState, as_of: Option<DateTime<Utc>>) -> Option<Overview> {
    let info = s.info.as_ref()?;
    let period = s.credit_period?;
    let billing = s.billing_period?;
    let plan = s.plan()?;
    Some(Overview {
        id: info.account_id.clone(),
        name: info.name.clone(),
        serial_number: info.serial_number.clone(),
        billing_email: s
            .payment_method
            .as_ref()
            .map_or(info.billing_email.clone(), |m| m.billing_email.clone()),
        email_language: s
            .payment_method
            .as_ref()
            .map_or(info.email_language.to_string(), |m| {
                m.email_language.clone()
            }),
        currency: info.currency.to_string(),
        billing_frequency: info.billing_frequency.as_str(),
        period_anchor: info.anchor_day,
        current_period: period.into(),
        billing_period: billing.into(),
        next_credit_reset: period.end,
        credits: CreditsDto {
            base: money(s.base),
            additional_limit: money(s.limit),
            used: money(s.used),
            available: money(s.available()),
            additional_used: money(s.additional_used()),
            pending_unsubscribe: s.pending_unsubscribe,
            limit_from_next_period: s.pending_unsubscribe.then(|| money(Decimal::ZERO)),
        },
        plan: PlanView {
            full_seats: plan.full_seats,
            full_seat_price: money(plan.full_seat_price),
            viewer_seats: plan.viewer_seats,
            viewer_seat_price: money(plan.viewer_seat_price),
            data_management: plan.data_management,
            data_management_price: money(plan.data_management_price),
        },
        seats: SeatsView {
            full: seat(plan.full_seats, s.seats_in_use.full),
            viewer: seat(plan.viewer_seats, s.seats_in_use.viewer),
        },
        payment: PaymentView {
            status: match s.payment_status {
                PaymentStatus::Ok => "ok",
                PaymentStatus::Failed => "failed",
            },
            method: s.payment_method.as_ref().map(|m| MethodView {
                brand: m.brand.clone(),
                last4: m.last4.clone(),
                exp_month: m.exp_month,
                exp_year: m.exp_year,
            }),
            dunning: s.dunning().map(|d| DunningView {
                invoice: d.invoice_number.clone(),
                attempt: d.attempt(),
                next_retry_at: d.next_retry_at(),
                suspends_at: d.suspends_at,
            }),
            suspended: s.suspended(),
        },
        mail_bounces: Vec::new(),
        tax: info.tax.as_deref().map(TaxDto::from),
        as_of,
    })
}

/// One usage event as sent. Optional fields are checked per event so that
/// a missing or bad value rejects that event only.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageEventDto {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub account_id: Option<String>,
    #[serde(default)]
    pub occurred_at: Option<String>,
    #[serde(default)]
    pub amount: Option<RawMoney>,
    #[serde(default)]
    pub product: Option<String>,
    #[serde(default)]
    pub feature: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageBatch {
    pub events: Vec<UsageEventDto>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UsageResult {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `accepted`, `duplicate` or `rejected`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UsageResponse {
    pub accepted: usize,
    pub duplicate: usize,
    pub rejected: usize,
    pub results: Vec<UsageResult>,
}
