//! Double-entry postings: every money event becomes balanced entries in a
//! small chart of accounts. Debits equal credits per event, so always in
//! total.
//!
//! Revenue is recognised when invoiced (fees in advance, AI credits in
//! arrears, as the invoice bills them):
//! - `InvoiceIssued`: debit accounts receivable with each line; credit the
//!   revenue account of the line's kind (a negative line — a downgrade
//!   credit — posts the other way round).
//!   With tax (SPEC §14) receivables are also debited with the tax, which
//!   is credited to `tax_payable` (owed to the tax office): receivables
//!   hold the gross, revenue the net.
//! - `PaymentSucceeded`: debit cash, credit accounts receivable.
//! - `InvoiceVoided`: debit invoice voids (contra-revenue), credit receivables
//!   with what no credit note credited yet (a void today issues a full
//!   credit note first, so this is 0; older logs voided without one).
//! - `CreditNoteIssued`: debit credit notes (contra-revenue) with its net
//!   and `tax_payable` with its tax, credit receivables with its total.
//! - `PaymentRefunded`: debit receivables, credit cash (the money goes back;
//!   what the customer was owed after a credit note is settled).

use accrue_core::events::{InvoiceIssued, LineKind};
use accrue_core::AccountEvent;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

/// The chart of accounts, in report order.
pub const CHART: [(&str, &str); 8] = [
    ("accounts_receivable", "asset"),
    ("cash", "asset"),
    ("revenue_subscription", "revenue"),
    ("revenue_ai_credits", "revenue"),
    ("proration_adjustments", "revenue"),
    ("invoice_voids", "contra-revenue"),
    ("credit_notes", "contra-revenue"),
    ("tax_payable", "liability"),
];

/// One balanced entry: `amount` debited to one chart account and credited
/// to another by the event at `position`. Compact (40 bytes, no strings):
/// there is one per invoice line, payment and void for the life of the
/// ledger; the event at `position` tells the invoice and the account.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Posting {
    pub position: u64,
    pub recorded_at: DateTime<Utc>,
    /// ≥ 0.
    pub amount: Decimal,
    /// Indexes into [`CHART`].
    debit: u8,
    credit: u8,
}

fn chart_index(account: &str) -> u8 {
    CHART
        .iter()
        .position(|(a, _)| *a == account)
        .expect("postings name chart accounts") as u8
}

impl Posting {
    pub fn new(
        position: u64,
        recorded_at: DateTime<Utc>,
        debit: &'static str,
        credit: &'static str,
        amount: Decimal,
    ) -> Posting {
        Posting {
            position,
            recorded_at,
            amount,
            debit: chart_index(debit),
            credit: chart_index(credit),
        }
    }
    /// The chart account debited.
    pub fn debit_account(&self) -> &'static str {
        CHART[self.debit as usize].0
    }
    /// The chart account credited.
    pub fn credit_account(&self) -> &'static str {
        CHART[self.credit as usize].0
    }
}

fn revenue_account(kind: LineKind) -> &'static str {
    match kind {
        LineKind::Subscription => "revenue_subscription",
        LineKind::AiCredits => "revenue_ai_credits",
        LineKind::Proration => "proration_adjustments",
    }
}

/// The entries of one event (empty for events that move no money).
/// `uncredited` gives an invoice's total less its credit notes.
pub fn entries(
    event: &AccountEvent,
    uncredited: impl Fn(&str) -> Option<Decimal>,
) -> Vec<(&'static str, &'static str, Decimal)> {
    // (debit account, credit account, amount ≥ 0)
    let pair = |dr: &'static str, cr: &'static str, amount: Decimal| {
        if amount < Decimal::ZERO {
            (cr, dr, -amount)
        } else {
            (dr, cr, amount)
        }
    };
    match event {
        AccountEvent::InvoiceIssued(InvoiceIssued { lines, legal, .. }) => {
            let tax = legal
                .as_ref()
                .and_then(|l| l.tax.as_ref())
                .map_or(Decimal::ZERO, |t| t.tax_total());
            lines
                .iter()
                .filter(|l| !l.amount.is_zero())
                .map(|l| pair("accounts_receivable", revenue_account(l.kind), l.amount))
                .chain((!tax.is_zero()).then(|| pair("accounts_receivable", "tax_payable", tax)))
                .collect()
        }
        AccountEvent::PaymentSucceeded(p) => vec![pair("cash", "accounts_receivable", p.amount)],
        AccountEvent::InvoiceVoided(v) => uncredited(&v.number)
            .filter(|t| !t.is_zero())
            .map(|t| vec![pair("invoice_voids", "accounts_receivable", t)])
            .unwrap_or_default(),
        AccountEvent::CreditNoteIssued(c) => {
            let tax = c
                .legal
                .as_ref()
                .and_then(|l| l.tax.as_ref())
                .map_or(Decimal::ZERO, |t| t.tax_total());
            let mut v = vec![pair("credit_notes", "accounts_receivable", c.total - tax)];
            if !tax.is_zero() {
                v.push(pair("tax_payable", "accounts_receivable", tax));
            }
            v
        }
        AccountEvent::PaymentRefunded(r) => {
            vec![pair("accounts_receivable", "cash", r.amount)]
        }
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
        // Rows are in chart order.
        rows[p.debit as usize].debits += p.amount;
        rows[p.credit as usize].credits += p.amount;
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
