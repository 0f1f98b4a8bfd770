use rust_decimal::Decimal;

/// A rule of the domain said no. Each variant carries the figures a client
/// needs to understand why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("account already exists")]
    AccountExists,
    #[error("unknown account")]
    UnknownAccount,
    #[error("credit limit exceeded: {requested} requested, {available} available")]
    CreditLimitExceeded {
        available: Decimal,
        requested: Decimal,
    },
    #[error("usage occurred at {occurred_at} before the current period started at {period_start}")]
    PeriodClosed {
        occurred_at: String,
        period_start: String,
    },
    #[error("usage occurred at {occurred_at}, more than 5 minutes ahead of the clock ({now})")]
    Future { occurred_at: String, now: String },
    #[error("limit {limit} is below the additional credits already used this period ({used_additional})")]
    LimitBelowUsage {
        limit: Decimal,
        used_additional: Decimal,
    },
    #[error("no active credit subscription")]
    NotSubscribed,
    #[error("seat limit exceeded: {role} seats in use {in_use} > licensed {licensed}")]
    SeatLimitExceeded {
        role: &'static str,
        in_use: u32,
        licensed: u32,
    },
    #[error("unknown invoice")]
    UnknownInvoice,
    #[error("invoice {number} is {status}")]
    InvoiceNotPayable { number: String, status: String },
    /// A rule of the license server (SPEC §7).
    #[error(transparent)]
    License(crate::license::LicenseError),
    #[error("payment reference {reference:?} was already recorded for invoice {invoice_number} as {outcome}")]
    ReferenceConflict {
        reference: String,
        invoice_number: String,
        outcome: &'static str,
    },
    #[error("a credit note of {requested} exceeds what is left to credit on invoice {number} ({available})")]
    ExceedsInvoice {
        number: String,
        requested: Decimal,
        available: Decimal,
    },
    #[error("a refund of {requested} exceeds what was paid on invoice {number} and not refunded ({refundable})")]
    ExceedsPayment {
        number: String,
        requested: Decimal,
        refundable: Decimal,
    },
    #[error("usage event {usage_id:?} is already cancelled")]
    AlreadyCancelled { usage_id: String },
    #[error("no usage event {usage_id:?} was accepted for this account")]
    UnknownUsage { usage_id: String },
    #[error("the license is suspended for an unpaid invoice")]
    LicenseSuspended,
}

impl DomainError {
    /// The stable machine-readable reason, used in API responses and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            DomainError::Invalid(_) => "invalid",
            DomainError::AccountExists => "account_exists",
            DomainError::UnknownAccount => "unknown_account",
            DomainError::CreditLimitExceeded { .. } => "credit_limit_exceeded",
            DomainError::PeriodClosed { .. } => "period_closed",
            DomainError::Future { .. } => "future",
            DomainError::LimitBelowUsage { .. } => "limit_below_usage",
            DomainError::NotSubscribed => "not_subscribed",
            DomainError::SeatLimitExceeded { .. } => "seat_limit_exceeded",
            DomainError::UnknownInvoice => "unknown_invoice",
            DomainError::InvoiceNotPayable { .. } => "invoice_not_payable",
            DomainError::License(e) => e.reason(),
            DomainError::ReferenceConflict { .. } => "reference_conflict",
            DomainError::ExceedsInvoice { .. } => "exceeds_invoice",
            DomainError::ExceedsPayment { .. } => "exceeds_payment",
            DomainError::AlreadyCancelled { .. } => "duplicate",
            DomainError::UnknownUsage { .. } => "unknown_event",
            DomainError::LicenseSuspended => "license_suspended",
        }
    }
}
