//! The events of an account stream. Past tense, one enum per stream, each
//! variant a struct of its own so the store can keep the type in its own
//! column and decode the payload without a tag lookup. A shipped variant is
//! never edited: a new shape gets a new schema version and an upcaster.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::period::{BillingFrequency, Period};

/// Schema version written with every event of this crate's shapes.
pub const SCHEMA_VERSION: u32 = 1;

/// What an account is licensed for, and at what prices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub full_seats: u32,
    pub full_seat_price: Decimal,
    pub viewer_seats: u32,
    pub viewer_seat_price: Decimal,
    pub data_management: bool,
    pub data_management_price: Decimal,
}

impl Plan {
    /// The subscription fee for one month of this plan.
    pub fn monthly_fee(&self) -> Decimal {
        Decimal::from(self.full_seats) * self.full_seat_price
            + Decimal::from(self.viewer_seats) * self.viewer_seat_price
            + if self.data_management {
                self.data_management_price
            } else {
                Decimal::ZERO
            }
    }
}

/// One line of an invoice, as issued. `amount` is already rounded to cents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceLine {
    pub kind: LineKind,
    pub description: String,
    pub quantity: Decimal,
    pub unit_price: Decimal,
    pub amount: Decimal,
    /// A proration line's share of the billing period (`remaining/days`),
    /// so the document can print `16/31 × 2 × 49.00 = 50.58`. Absent on
    /// other lines and on lines issued before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prorated: Option<Prorated>,
}

/// The days of a billing period a proration covers: `remaining` of `days`
/// (the day of the change counts as remaining).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prorated {
    pub remaining: u32,
    pub days: u32,
}

/// What a line bills, so postings can credit the right revenue account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    Subscription,
    AiCredits,
    Proration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceStatus {
    #[default]
    Unpaid,
    Paid,
    Void,
    /// Credit notes cover the whole total.
    Credited,
    /// Credit notes cover part of the total and the rest is not yet paid.
    PartiallyCredited,
}

impl InvoiceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            InvoiceStatus::Unpaid => "unpaid",
            InvoiceStatus::Paid => "paid",
            InvoiceStatus::Void => "void",
            InvoiceStatus::Credited => "credited",
            InvoiceStatus::PartiallyCredited => "partially_credited",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountOpened {
    pub account_id: String,
    pub name: String,
    pub serial_number: String,
    pub billing_email: String,
    /// One of the supported languages (`email_language`); boxed, so the
    /// shared struct fits the allocator's 320-byte class.
    pub email_language: Box<str>,
    #[serde(default)]
    pub address: Option<String>,
    /// Boxed like `email_language`, to leave room for `tax`.
    pub currency: Box<str>,
    pub billing_frequency: BillingFrequency,
    pub anchor_day: u32,
    pub opened_at: DateTime<Utc>,
    pub credit_period: Period,
    pub billing_period: Period,
    pub plan: Plan,
    pub base_credits: Decimal,
    /// Tax country, customer tax id and treatment (SPEC §14), if set.
    /// Boxed: most accounts of older logs have none, and the struct must
    /// stay in its allocation class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tax: Option<Box<crate::tax::TaxProfile>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreditLimitSet {
    pub limit: Decimal,
    pub previous_limit: Decimal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreditUnsubscribed {
    /// The start of the next credit period, from which the limit is 0.
    pub effective_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreditsConsumed {
    pub usage_id: String,
    pub amount: Decimal,
    #[serde(with = "crate::ts")]
    pub occurred_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature: Option<String>,
    /// Canonical JSON text of the producer's metadata, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
    /// Usage of the current credit period after this event (a resulting figure for finance).
    pub period_used: Decimal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreditThresholdReached {
    pub percent: u8,
    pub period_start: DateTime<Utc>,
    pub used: Decimal,
    pub capacity: Decimal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeatsInUseReported {
    pub full: u32,
    pub viewer: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanChanged {
    pub previous: Plan,
    pub plan: Plan,
    pub effective_at: DateTime<Utc>,
    /// Prorated lines for the rest of the billing period, billed on the next invoice.
    pub proration: Vec<InvoiceLine>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeriodClosed {
    pub period: Period,
    pub base: Decimal,
    pub limit: Decimal,
    pub used: Decimal,
    /// `max(0, used - base)` at full precision.
    pub charge: Decimal,
    pub next_period: Period,
    pub next_limit: Decimal,
    /// Set when this close also started a new billing period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_billing_period: Option<Period>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvoiceIssued {
    pub number: String,
    pub issued_at: DateTime<Utc>,
    pub due_date: DateTime<Utc>,
    /// The credit period whose usage is billed, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credit_period: Option<Period>,
    /// The billing period whose subscription fee is billed in advance, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing_period: Option<Period>,
    pub lines: Vec<InvoiceLine>,
    pub total: Decimal,
    pub currency: String,
    /// The customer as printed on the invoice.
    pub customer_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_address: Option<String>,
    pub serial_number: String,
    /// The legal facts as issued (SPEC §14). All absent on invoices issued
    /// before them: such an invoice renders in layout 1, byte for byte as
    /// it did. With any of them the layout is 2 (see `projections::pdf`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legal: Option<Box<DocumentLegal>>,
}

/// What SPEC §14 adds to an issued invoice or credit note: the issuer then
/// configured, the tax computed at issue (when the account has a tax
/// profile), and the language the document is printed in. `total` is then
/// the gross (`tax.net + tax`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentLegal {
    /// The layout the document was issued with (3 today; 2 before its
    /// figures were made checkable, see `accrue_projections::pdf`).
    pub layout: u32,
    /// One of the email languages.
    pub language: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<crate::tax::Issuer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tax: Option<crate::tax::InvoiceTax>,
}

impl DocumentLegal {
    /// The layout version of this document's PDF.
    pub const LAYOUT: u32 = 3;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvoicePdfRendered {
    pub number: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentMethodReplaced {
    pub billing_email: String,
    pub email_language: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub token: String,
    pub brand: String,
    pub last4: String,
    pub exp_month: u32,
    pub exp_year: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentSucceeded {
    pub invoice_number: String,
    pub reference: String,
    pub amount: Decimal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentFailed {
    pub invoice_number: String,
    pub reference: String,
    pub amount_due: Decimal,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvoiceVoided {
    pub number: String,
    pub reason: String,
}

/// An admin corrected an account's details. Only the fields that changed
/// are set; each is the new value. Applied to the account's facts (the
/// overview, invoices issued later, mails) from this event on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountDetailsChanged {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing_email: Option<String>,
    /// `Some(None)` is not used: an address is replaced, never removed here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_language: Option<String>,
    /// A new tax profile (SPEC §14), applied to invoices issued from now on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tax: Option<crate::tax::TaxProfile>,
}

/// One line of a credit note: a positive amount credited (a negative one
/// offsets, as when a close nets a charge against a larger credit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditNoteLine {
    pub description: String,
    pub amount: Decimal,
    /// The cancelled usage event this line credits, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_id: Option<String>,
}

/// A credit note (`CN-YYYY-NNNNNN`): a correction of an issued invoice, a
/// document of its own; the invoice is never edited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreditNoteIssued {
    pub number: String,
    /// The invoice it credits.
    pub invoice_number: String,
    pub issued_at: DateTime<Utc>,
    pub reason: String,
    pub lines: Vec<CreditNoteLine>,
    pub total: Decimal,
    pub currency: String,
    pub customer_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_address: Option<String>,
    pub serial_number: String,
    /// As on `InvoiceIssued`: the issuer, the language, and the tax at the
    /// rate and treatment of the invoice credited. Absent on older notes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legal: Option<Box<DocumentLegal>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreditNotePdfRendered {
    pub number: String,
    pub sha256: String,
}

/// A usage event stops counting. In the open period its credits are
/// available again at once; in an invoiced period `credit` (what the
/// invoice charged for it) is credited on the next close.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageCancelled {
    pub usage_id: String,
    pub amount: Decimal,
    #[serde(with = "crate::ts")]
    pub occurred_at: DateTime<Utc>,
    pub reason: String,
    /// The invoice that billed the usage's period, when it was invoiced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoice_number: Option<String>,
    /// What will be credited on the next close (0 in the open period, or
    /// when the usage was within the base credits).
    pub credit: Decimal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentRefunded {
    pub invoice_number: String,
    pub reference: String,
    pub amount: Decimal,
}

/// The first failed payment of an invoice starts dunning: the retry dates
/// and the suspension date are fixed here, by the policy then in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DunningStarted {
    pub invoice_number: String,
    pub first_failed_at: DateTime<Utc>,
    pub retries: Vec<DateTime<Utc>>,
    pub suspends_at: DateTime<Utc>,
}

/// Unpaid past the grace period: usage is refused, the license says
/// `suspended`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LicenseSuspended {
    pub invoice_numbers: Vec<String>,
    pub suspended_at: DateTime<Utc>,
}

/// Every overdue invoice is settled: the suspension ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LicenseReinstated {
    pub reinstated_at: DateTime<Utc>,
}

/// Every event of an `account-<id>` stream.
// Usage events dominate; boxing the large, rare variants is not worth an
// indirection in every match.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum AccountEvent {
    /// Shared: the writer's state and the read models hold the same facts.
    AccountOpened(std::sync::Arc<AccountOpened>),
    CreditLimitSet(CreditLimitSet),
    CreditUnsubscribed(CreditUnsubscribed),
    CreditsConsumed(CreditsConsumed),
    CreditThresholdReached(CreditThresholdReached),
    SeatsInUseReported(SeatsInUseReported),
    PlanChanged(PlanChanged),
    PeriodClosed(PeriodClosed),
    InvoiceIssued(InvoiceIssued),
    InvoicePdfRendered(InvoicePdfRendered),
    PaymentMethodReplaced(PaymentMethodReplaced),
    PaymentSucceeded(PaymentSucceeded),
    PaymentFailed(PaymentFailed),
    InvoiceVoided(InvoiceVoided),
    // The license server (SPEC §7), see `crate::license`.
    ControlNumberIssued(crate::license::ControlNumberIssued),
    LicenseTermChanged(crate::license::LicenseTermChanged),
    LicenseExpired(crate::license::LicenseExpired),
    LicenseReactivated(crate::license::LicenseReactivated),
    ActivationCreated(crate::license::ActivationCreated),
    ActivationReleased(crate::license::ActivationReleased),
    ActivationsReset(crate::license::ActivationsReset),
    LicenseSynced(crate::license::LicenseSynced),
    SessionsReported(crate::license::SessionsReported),
    AccountDetailsChanged(AccountDetailsChanged),
    // Corrections and dunning (SPEC §8, §9), see `crate::correction`.
    CreditNoteIssued(CreditNoteIssued),
    CreditNotePdfRendered(CreditNotePdfRendered),
    UsageCancelled(UsageCancelled),
    PaymentRefunded(PaymentRefunded),
    DunningStarted(DunningStarted),
    LicenseSuspended(LicenseSuspended),
    LicenseReinstated(LicenseReinstated),
}

macro_rules! event_codec {
    ($($v:ident),* $(,)?) => {
        impl AccountEvent {
            /// The event's type name, as stored in the `type` column.
            pub fn type_name(&self) -> &'static str {
                match self { $(AccountEvent::$v(_) => stringify!($v),)* }
            }
            /// The payload as JSON bytes (without the type tag).
            pub fn encode_payload(&self) -> Vec<u8> {
                let r = match self { $(AccountEvent::$v(e) => serde_json::to_vec(e),)* };
                r.expect("events serialise: they hold no maps with non-string keys")
            }
            /// Decodes a stored payload. `schema` selects an upcaster once a
            /// variant has more than one version.
            pub fn decode(type_name: &str, schema: u32, payload: &[u8]) -> Result<Self, DecodeError> {
                if schema != SCHEMA_VERSION {
                    return Err(DecodeError::Schema { type_name: type_name.to_string(), schema });
                }
                match type_name {
                    $(stringify!($v) => serde_json::from_slice(payload)
                        .map(AccountEvent::$v)
                        .map_err(|e| DecodeError::Payload { type_name: type_name.to_string(), error: e.to_string() }),)*
                    other => Err(DecodeError::UnknownType(other.to_string())),
                }
            }
        }
    };
}

event_codec!(
    AccountOpened,
    CreditLimitSet,
    CreditUnsubscribed,
    CreditsConsumed,
    CreditThresholdReached,
    SeatsInUseReported,
    PlanChanged,
    PeriodClosed,
    InvoiceIssued,
    InvoicePdfRendered,
    PaymentMethodReplaced,
    PaymentSucceeded,
    PaymentFailed,
    InvoiceVoided,
    ControlNumberIssued,
    LicenseTermChanged,
    LicenseExpired,
    LicenseReactivated,
    ActivationCreated,
    ActivationReleased,
    ActivationsReset,
    LicenseSynced,
    SessionsReported,
    AccountDetailsChanged,
    CreditNoteIssued,
    CreditNotePdfRendered,
    UsageCancelled,
    PaymentRefunded,
    DunningStarted,
    LicenseSuspended,
    LicenseReinstated,
);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown event type {0}")]
    UnknownType(String),
    #[error("no upcaster for {type_name} schema {schema}")]
    Schema { type_name: String, schema: u32 },
    #[error("bad payload for {type_name}: {error}")]
    Payload { type_name: String, error: String },
}

/// Ledger-wide events outside account streams.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvoiceNumberAssigned {
    pub number: String,
    pub year: i32,
    pub sequence: u64,
    pub account_id: String,
}

/// A credit note's number, from its own gapless series (the same mechanism
/// as invoice numbers, in the `credit-note-sequence` stream).
pub type CreditNoteNumberAssigned = InvoiceNumberAssigned;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClockAdvanced {
    pub now: DateTime<Utc>,
}

/// An API token was issued. Only its SHA-256 is recorded (the token itself
/// is shown once); the chain then covers every token, so a token row added
/// to the store behind the ledger's back is reported by `verify`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenIssued {
    pub token_hash: String,
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
}

/// A mail was refused for good (an SMTP 5xx, or an address that cannot be
/// used): recorded so the mailer moves on and finance and support see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MailBounced {
    pub account_id: String,
    /// The global position of the event that caused the mail.
    pub cause_position: u64,
    pub kind: String,
    pub to: String,
    pub reason: String,
}

/// A bounced mail was sent again after the account's address was
/// corrected (at most once per bounced mail).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MailResent {
    pub account_id: String,
    /// The global position of the event whose mail bounced.
    pub cause_position: u64,
    pub kind: String,
    pub to: String,
}

/// An outgoing webhook endpoint was registered (SPEC §11). Its signing
/// secret is derived from a server secret, never stored in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEndpointRegistered {
    pub id: String,
    pub url: String,
    /// The event types it receives (`invoice.issued`, …).
    pub events: Vec<String>,
    pub registered_at: DateTime<Utc>,
}

/// An endpoint failed every delivery for 3 days and receives no more.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEndpointDisabled {
    pub id: String,
    pub reason: String,
    pub disabled_at: DateTime<Utc>,
}

/// The stream that holds the outgoing webhook endpoints.
pub const WEBHOOKS_STREAM: &str = "webhooks";

/// The stream that holds bounced mails.
pub const MAIL_STREAM: &str = "mail";

/// The stream that holds issued API tokens.
pub const TOKENS_STREAM: &str = "tokens";

/// The stream that holds the invoice-number sequence.
pub const INVOICE_SEQUENCE_STREAM: &str = "invoice-sequence";
/// The stream that holds the credit-note-number sequence.
pub const CREDIT_NOTE_SEQUENCE_STREAM: &str = "credit-note-sequence";
/// The stream that holds the manual clock's position.
pub const CLOCK_STREAM: &str = "clock";

/// Any event of the ledger, decoded.
// Nearly every event is an account event; boxing it would allocate once more
// per event on the ingest and replay paths to save memory on the rare others.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum LedgerEvent {
    Account(AccountEvent),
    InvoiceNumberAssigned(InvoiceNumberAssigned),
    CreditNoteNumberAssigned(CreditNoteNumberAssigned),
    ClockAdvanced(ClockAdvanced),
    TokenIssued(TokenIssued),
    MailBounced(MailBounced),
    MailResent(MailResent),
    WebhookEndpointRegistered(WebhookEndpointRegistered),
    WebhookEndpointDisabled(WebhookEndpointDisabled),
}

impl LedgerEvent {
    pub fn decode(type_name: &str, schema: u32, payload: &[u8]) -> Result<Self, DecodeError> {
        let bad = |e: serde_json::Error| DecodeError::Payload {
            type_name: type_name.to_string(),
            error: e.to_string(),
        };
        match type_name {
            "InvoiceNumberAssigned" => serde_json::from_slice(payload)
                .map(LedgerEvent::InvoiceNumberAssigned)
                .map_err(bad),
            "CreditNoteNumberAssigned" => serde_json::from_slice(payload)
                .map(LedgerEvent::CreditNoteNumberAssigned)
                .map_err(bad),
            "ClockAdvanced" => serde_json::from_slice(payload)
                .map(LedgerEvent::ClockAdvanced)
                .map_err(bad),
            "TokenIssued" => serde_json::from_slice(payload)
                .map(LedgerEvent::TokenIssued)
                .map_err(bad),
            "MailBounced" => serde_json::from_slice(payload)
                .map(LedgerEvent::MailBounced)
                .map_err(bad),
            "MailResent" => serde_json::from_slice(payload)
                .map(LedgerEvent::MailResent)
                .map_err(bad),
            "WebhookEndpointRegistered" => serde_json::from_slice(payload)
                .map(LedgerEvent::WebhookEndpointRegistered)
                .map_err(bad),
            "WebhookEndpointDisabled" => serde_json::from_slice(payload)
                .map(LedgerEvent::WebhookEndpointDisabled)
                .map_err(bad),
            _ => AccountEvent::decode(type_name, schema, payload).map(LedgerEvent::Account),
        }
    }
    pub fn type_name(&self) -> &'static str {
        match self {
            LedgerEvent::Account(e) => e.type_name(),
            LedgerEvent::InvoiceNumberAssigned(_) => "InvoiceNumberAssigned",
            LedgerEvent::CreditNoteNumberAssigned(_) => "CreditNoteNumberAssigned",
            LedgerEvent::ClockAdvanced(_) => "ClockAdvanced",
            LedgerEvent::TokenIssued(_) => "TokenIssued",
            LedgerEvent::MailBounced(_) => "MailBounced",
            LedgerEvent::MailResent(_) => "MailResent",
            LedgerEvent::WebhookEndpointRegistered(_) => "WebhookEndpointRegistered",
            LedgerEvent::WebhookEndpointDisabled(_) => "WebhookEndpointDisabled",
        }
    }
    pub fn encode_payload(&self) -> Vec<u8> {
        match self {
            LedgerEvent::Account(e) => e.encode_payload(),
            LedgerEvent::InvoiceNumberAssigned(e) => serde_json::to_vec(e).expect("serialisable"),
            LedgerEvent::CreditNoteNumberAssigned(e) => {
                serde_json::to_vec(e).expect("serialisable")
            }
            LedgerEvent::ClockAdvanced(e) => serde_json::to_vec(e).expect("serialisable"),
            LedgerEvent::TokenIssued(e) => serde_json::to_vec(e).expect("serialisable"),
            LedgerEvent::MailBounced(e) => serde_json::to_vec(e).expect("serialisable"),
            LedgerEvent::MailResent(e) => serde_json::to_vec(e).expect("serialisable"),
            LedgerEvent::WebhookEndpointRegistered(e) => {
                serde_json::to_vec(e).expect("serialisable")
            }
            LedgerEvent::WebhookEndpointDisabled(e) => serde_json::to_vec(e).expect("serialisable"),
        }
    }
}
