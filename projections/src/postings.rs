//! Double-entry postings: every money event becomes balanced entries in a
//! small chart of accounts. Debits equal credits per event, so always in
//! total.
//!
//! Revenue is recognised when invoiced (fees in advance, AI credits in
//! arrears, as the invoice bills them):
//! - `InvoiceIssued`: debit accounts receivable with each line; credit the
//!   revenue account of the line's kind (a negative line — a downgrade
//!   credit — posts the other way round).
//! - `PaymentSucceeded`: debit cash, credit accounts receivable.
//! - `InvoiceVoided`: debit invoice voids (contra-revenue), credit receivables.

use accrue_core::events::{InvoiceIssued, LineKind};
use accrue_core::AccountEvent;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

/// The chart of accounts, in report order.
pub const CHART: [(&str, &str); 6] = [
    ("accounts_receivable", "asset"),
    ("cash", "asset"),
    ("revenue_subscription", "revenue"),
    ("revenue_ai_credits", "revenue"),
    ("proration_adjustments", "revenue"),
    ("invoice_voids", "contra-revenue"),
];

#[derive(Debug, Clone, PartialEq)]
pub struct Posting {
    pub position: u64,
    pub recorded_at: DateTime<Utc>,
    pub account: &'static str,
    pub debit: Decimal,
    pub credit: Decimal,
    pub invoice: String,
    pub account_id: String,
}

fn revenue_account(kind: LineKind) -> &'static str {
    match kind {
        LineKind::Subscription => "revenue_subscription",
        LineKind::AiCredits => "revenue_ai_credits",
        LineKind::Proration => "proration_adjustments",
    }
}

/// The entries of one event (empty for events that move no money).
pub fn entries(
    event: &AccountEvent,
    invoice_total: impl Fn(&str) -> Option<Decimal>,
) -> Vec<(&'static str, &'static str, Decimal, String)> {
    // (debit account, credit account, amount ≥ 0, invoice)
    let pair = |dr: &'static str, cr: &'static str, amount: Decimal, inv: &str| {
        if amount < Decimal::ZERO {
            (cr, dr, -amount, inv.to_string())
        } else {
            (dr, cr, amount, inv.to_string())
        }
    };
    match event {
        AccountEvent::InvoiceIssued(InvoiceIssued { number, lines, .. }) => lines
            .iter()
            .filter(|l| !l.amount.is_zero())
            .map(|l| {
                pair(
                    "accounts_receivable",
                    revenue_account(l.kind),
                    l.amount,
                    number,
                )
            })
            .collect(),
        AccountEvent::PaymentSucceeded(p) => vec![pair(
            "cash",
            "accounts_receivable",
            p.amount,
            &p.invoice_number,
        )],
        AccountEvent::InvoiceVoided(v) => invoice_total(&v.number)
            .map(|t| vec![pair("invoice_voids", "accounts_receivable", t, &v.number)])
            .unwrap_or_default(),
        _ => vec![],
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BalanceRow {
    pub account: &'static str,
    pub kind: &'static str,
    pub debits: Decimal,
    pub credits: Decimal,
    /// Debits minus credits.
    pub balance: Decimal,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrialBalance {
    pub rows: Vec<BalanceRow>,
    pub total_debits: Decimal,
    pub total_credits: Decimal,
}

impl TrialBalance {
    pub fn balanced(&self) -> bool {
        self.total_debits == self.total_credits
    }
    pub fn balance_of(&self, account: &str) -> Decimal {
        self.rows
            .iter()
            .find(|r| r.account == account)
            .map_or(Decimal::ZERO, |r| r.balance)
    }
}

/// Sums the postings recorded at or before `as_of` (all when `None`).
pub fn trial_balance(postings: &[Posting], as_of: Option<DateTime<Utc>>) -> TrialBalance {
    let mut rows: Vec<BalanceRow> = CHART
        .iter()
        .map(|(a, k)| BalanceRow {
            account: a,
            kind: k,
            debits: Decimal::ZERO,
            credits: Decimal::ZERO,
            balance: Decimal::ZERO,
        })
        .collect();
    for p in postings
        .iter()
        .filter(|p| as_of.is_none_or(|t| p.recorded_at <= t))
    {
        if let Some(r) = rows.iter_mut().find(|r| r.account == p.account) {
            r.debits += p.debit;
            r.credits += p.credit;
        }
    }
    for r in &mut rows {
        r.balance = r.debits - r.credits;
    }
    let total_debits = rows.iter().map(|r| r.debits).sum();
    let total_credits = rows.iter().map(|r| r.credits).sum();
    TrialBalance {
        rows,
        total_debits,
        total_credits,
    }
}
