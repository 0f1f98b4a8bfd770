//! Money after the invoice (SPEC §8, §9): credit notes, usage
//! cancellations, refunds, the upcoming invoice, and dunning (retries,
//! suspension, reinstatement). An issued invoice is never edited: every
//! correction is a new document or fact, decided here from the account's
//! state with `now` and the dunning policy passed in.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;

use crate::account::{AccountState, Context};
use crate::error::DomainError;
use crate::events::*;
use crate::money::round_cents;
use crate::period::Period;

/// `serve --dunning 1,3,7 --grace-days 14`: retries this many days after
/// the first failure, suspension after the grace period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DunningPolicy {
    pub retry_days: &'static [u32],
    pub grace_days: u32,
}

pub const DEFAULT_DUNNING: DunningPolicy = DunningPolicy {
    retry_days: &[1, 3, 7],
    grace_days: 14,
};

impl Default for DunningPolicy {
    fn default() -> Self {
        DEFAULT_DUNNING
    }
}

/// One invoice in dunning.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DunningCase {
    pub invoice_number: String,
    pub first_failed_at: DateTime<Utc>,
    /// Failed payments so far.
    pub failures: u32,
    pub retries: Vec<DateTime<Utc>>,
    pub suspends_at: DateTime<Utc>,
}

impl DunningCase {
    /// The number of the next payment attempt (the first charge was 1).
    pub fn attempt(&self) -> u32 {
        self.failures + 1
    }
    /// When the next retry is due; `None` once the schedule is used up.
    pub fn next_retry_at(&self) -> Option<DateTime<Utc>> {
        let i = self.failures.max(1) as usize - 1;
        self.retries.get(i).copied()
    }
}

/// What an account holds of corrections and dunning. Boxed in the state:
/// most accounts never have any.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Corrections {
    /// Usage ids cancelled (a second cancellation is a duplicate).
    pub cancelled: BTreeSet<String>,
    /// Credit for cancelled usage of invoiced periods, issued on the next
    /// close: (invoice credited, line).
    pub pending_credits: Vec<(String, CreditNoteLine)>,
    /// Invoices in dunning, oldest first.
    pub dunning: Vec<DunningCase>,
    pub suspended: bool,
    /// Credit notes issued, in order (number, invoice, total, whether its
    /// PDF's hash is recorded).
    pub credit_notes: Vec<(String, String, Decimal, bool)>,
}

impl AccountState {
    pub fn corrections(&self) -> Option<&Corrections> {
        self.corrections.as_deref()
    }
    fn corrections_mut(&mut self) -> &mut Corrections {
        self.corrections.get_or_insert_with(Box::default)
    }
    pub fn suspended(&self) -> bool {
        self.corrections().is_some_and(|c| c.suspended)
    }
    /// The oldest invoice in dunning.
    pub fn dunning(&self) -> Option<&DunningCase> {
        self.corrections().and_then(|c| c.dunning.first())
    }
    /// When the clock must next look at this account for a suspension.
    pub fn next_suspension(&self) -> Option<DateTime<Utc>> {
        let c = self.corrections()?;
        if c.suspended {
            return None;
        }
        c.dunning.iter().map(|d| d.suspends_at).min()
    }
    pub fn usage_cancelled(&self, usage_id: &str) -> bool {
        self.corrections()
            .is_some_and(|c| c.cancelled.contains(usage_id))
    }
}

/// Folds a correction or dunning event (called from `AccountState::apply`).
pub(crate) fn apply(state: &mut AccountState, event: &AccountEvent) {
    match event {
        AccountEvent::CreditNoteIssued(cn) => {
            if let Some(i) = state.invoices.get_mut(&cn.invoice_number) {
                i.credited += cn.total;
                let tax = cn.legal.as_ref().and_then(|l| l.tax.as_ref());
                if let (Some(t), Some(facts)) = (i.tax.as_deref_mut(), tax) {
                    t.credited_net += facts.net;
                    t.credited_tax += facts.tax_total();
                }
                i.refresh_status();
            }
            state.corrections_mut().credit_notes.push((
                cn.number.clone(),
                cn.invoice_number.clone(),
                cn.total,
                false,
            ));
            settle(state);
        }
        AccountEvent::CreditNotePdfRendered(r) => {
            if let Some(c) = state
                .corrections_mut()
                .credit_notes
                .iter_mut()
                .find(|c| c.0 == r.number)
            {
                c.3 = true;
            }
        }
        AccountEvent::UsageCancelled(u) => {
            let open = state
                .credit_period
                .is_some_and(|p| u.occurred_at >= p.start);
            if open {
                state.used = (state.used - u.amount).max(Decimal::ZERO);
            }
            if let (Some(n), false) = (&u.invoice_number, u.credit.is_zero()) {
                if let Some(i) = state.invoices.get_mut(n) {
                    i.usage_credited += u.credit;
                }
                state.corrections_mut().pending_credits.push((
                    n.clone(),
                    CreditNoteLine {
                        description: format!(
                            "Cancelled usage {} of {} ({})",
                            u.usage_id,
                            u.occurred_at.format("%Y-%m-%d"),
                            u.reason
                        ),
                        amount: u.credit,
                        usage_id: Some(u.usage_id.clone()),
                    },
                ));
            }
            state.corrections_mut().cancelled.insert(u.usage_id.clone());
        }
        AccountEvent::PaymentRefunded(r) => {
            if let Some(i) = state.invoices.get_mut(&r.invoice_number) {
                i.refunded += r.amount;
            }
        }
        AccountEvent::DunningStarted(d) => {
            state.corrections_mut().dunning.push(DunningCase {
                invoice_number: d.invoice_number.clone(),
                first_failed_at: d.first_failed_at,
                failures: 0,
                retries: d.retries.clone(),
                suspends_at: d.suspends_at,
            });
        }
        AccountEvent::LicenseSuspended(_) => state.corrections_mut().suspended = true,
        AccountEvent::LicenseReinstated(_) => state.corrections_mut().suspended = false,
        _ => {}
    }
}

/// A failed payment counts against its dunning case.
pub(crate) fn count_failure(state: &mut AccountState, invoice_number: &str) {
    if let Some(c) = state.corrections.as_deref_mut() {
        if let Some(d) = c
            .dunning
            .iter_mut()
            .find(|d| d.invoice_number == invoice_number)
        {
            d.failures += 1;
        }
    }
}

/// Ends the dunning of every invoice that no longer has an amount due.
pub(crate) fn settle(state: &mut AccountState) {
    let Some(c) = state.corrections.as_deref_mut() else {
        return;
    };
    let invoices = &state.invoices;
    c.dunning.retain(|d| {
        invoices
            .get(&d.invoice_number)
            .is_some_and(|i| i.status != InvoiceStatus::Void && !i.amount_due().is_zero())
    });
}

/// Appends `LicenseReinstated` when the events end a suspension: the
/// account is suspended and, after them, no invoice is left in dunning.
pub(crate) fn with_reinstatement(
    state: &AccountState,
    mut events: Vec<AccountEvent>,
    now: DateTime<Utc>,
) -> Vec<AccountEvent> {
    if !state.suspended() || events.is_empty() {
        return events;
    }
    let mut after = state.clone();
    for e in &events {
        after.apply(e);
    }
    if after.corrections().is_some_and(|c| c.dunning.is_empty()) {
        events.push(AccountEvent::LicenseReinstated(LicenseReinstated {
            reinstated_at: now,
        }));
    }
    events
}

fn customer(state: &AccountState) -> (String, Option<String>, String, String) {
    let info = state.info.as_ref().expect("an open account has details");
    (
        info.name.clone(),
        info.address.clone(),
        info.serial_number.clone(),
        info.currency.to_string(),
    )
}

/// A credit note against `invoice_number` dated `ctx.now`, numbered by the
/// writer as it stages it (the number is left empty here). Its lines are
/// net, like the invoice's: an invoice issued with tax is credited with
/// tax at its own rate and treatment, and `total` is the gross.
pub fn credit_note(
    state: &AccountState,
    invoice_number: &str,
    reason: String,
    lines: Vec<CreditNoteLine>,
    ctx: &Context,
) -> CreditNoteIssued {
    let (customer_name, customer_address, serial_number, currency) = customer(state);
    let mut net: Decimal = lines.iter().map(|l| l.amount).sum();
    net.rescale(2);
    let invoice_tax = state.invoices.get(invoice_number).and_then(|i| {
        i.tax.as_deref().map(|t| {
            (
                t,
                (i.uncredited_net(), t.facts.tax_total() - t.credited_tax),
            )
        })
    });
    let tax = invoice_tax.map(|(t, rest)| crate::tax::credit(&t.facts, net, rest));
    let legal = crate::invoice::document_legal(state, ctx, tax);
    let mut total = legal.tax.as_ref().map_or(net, |t| t.gross());
    total.rescale(2);
    CreditNoteIssued {
        number: String::new(),
        invoice_number: invoice_number.to_string(),
        issued_at: ctx.now,
        reason,
        lines,
        total,
        currency,
        customer_name,
        customer_address,
        serial_number,
        legal: Some(Box::new(legal)),
    }
}

/// `POST /v1/invoices/{number}/credit-notes`: `lines: None` credits all
/// that is not credited yet.
pub(crate) fn issue_credit_note(
    state: &AccountState,
    invoice_number: String,
    reason: String,
    lines: Option<Vec<CreditNoteLine>>,
    ctx: &Context,
) -> Result<Vec<AccountEvent>, DomainError> {
    let invoice = state
        .invoices
        .get(&invoice_number)
        .ok_or(DomainError::UnknownInvoice)?;
    if reason.trim().is_empty() {
        return Err(DomainError::Invalid("reason must not be empty".into()));
    }
    let available = invoice.uncredited_net();
    let lines = match lines {
        None => vec![CreditNoteLine {
            description: format!("Full credit of invoice {invoice_number}"),
            amount: available,
            usage_id: None,
        }],
        Some(lines) => {
            if lines.is_empty() {
                return Err(DomainError::Invalid(
                    "a credit note needs lines, or full: true".into(),
                ));
            }
            let mut out = Vec::with_capacity(lines.len());
            for mut l in lines {
                if l.description.trim().is_empty() {
                    return Err(DomainError::Invalid(
                        "every line needs a description".into(),
                    ));
                }
                if l.amount <= Decimal::ZERO {
                    return Err(DomainError::Invalid(
                        "every line amount must be positive".into(),
                    ));
                }
                if round_cents(l.amount) != l.amount {
                    return Err(DomainError::Invalid(
                        "line amounts are in cents (at most 2 decimals)".into(),
                    ));
                }
                l.amount.rescale(2);
                out.push(l);
            }
            out
        }
    };
    let requested: Decimal = lines.iter().map(|l| l.amount).sum();
    if requested.is_zero() || requested > available {
        return Err(DomainError::ExceedsInvoice {
            number: invoice_number,
            requested,
            available,
        });
    }
    let cn = credit_note(state, &invoice_number, reason, lines, ctx);
    Ok(with_reinstatement(
        state,
        vec![AccountEvent::CreditNoteIssued(cn)],
        ctx.now,
    ))
}

/// `POST /v1/invoices/{number}/void`: a full credit note for what is not
/// credited yet, then the void. Only an invoice nothing was paid on.
pub(crate) fn void_invoice(
    state: &AccountState,
    number: String,
    reason: String,
    ctx: &Context,
) -> Result<Vec<AccountEvent>, DomainError> {
    let invoice = state
        .invoices
        .get(&number)
        .ok_or(DomainError::UnknownInvoice)?;
    let voidable = matches!(
        invoice.status,
        InvoiceStatus::Unpaid | InvoiceStatus::PartiallyCredited
    ) && invoice.paid.is_zero();
    if !voidable {
        return Err(DomainError::InvoiceNotPayable {
            number,
            status: invoice.status.as_str().to_string(),
        });
    }
    let mut events = Vec::new();
    let rest = invoice.uncredited_net();
    if rest > Decimal::ZERO {
        let line = CreditNoteLine {
            description: format!("Void of invoice {number}"),
            amount: rest,
            usage_id: None,
        };
        events.push(AccountEvent::CreditNoteIssued(credit_note(
            state,
            &number,
            reason.clone(),
            vec![line],
            ctx,
        )));
    }
    events.push(AccountEvent::InvoiceVoided(InvoiceVoided {
        number,
        reason,
    }));
    Ok(with_reinstatement(state, events, ctx.now))
}

/// `POST /v1/usage/cancellations`: `found` is the usage event the writer
/// looked up by id (`None` when no such event was accepted).
pub(crate) fn cancel_usage(
    state: &AccountState,
    usage_id: String,
    reason: String,
    found: Option<CreditsConsumed>,
) -> Result<Vec<AccountEvent>, DomainError> {
    if state.usage_cancelled(&usage_id) {
        return Err(DomainError::AlreadyCancelled { usage_id });
    }
    let Some(usage) = found else {
        return Err(DomainError::UnknownUsage { usage_id });
    };
    let period = state.credit_period.expect("an open account has a period");
    let (invoice_number, credit) = if usage.occurred_at >= period.start {
        (None, Decimal::ZERO)
    } else {
        // The invoice that billed the usage's credit period: it charged
        // `max(0, used − base)`, so cancelling credits at most what is left
        // of that charge.
        match state.invoices.iter().find(|(_, i)| {
            i.credit_period
                .is_some_and(|p| p.contains(usage.occurred_at))
        }) {
            Some((n, i)) => {
                let left = (i.usage_charge - i.usage_credited).max(Decimal::ZERO);
                let mut credit = round_cents(usage.amount.min(left));
                credit.rescale(2);
                (Some(n.clone()), credit)
            }
            None => (None, Decimal::ZERO),
        }
    };
    Ok(vec![AccountEvent::UsageCancelled(UsageCancelled {
        usage_id,
        amount: usage.amount,
        occurred_at: usage.occurred_at,
        reason,
        invoice_number,
        credit,
    })])
}

/// What a payment says happened.
#[derive(Debug, Clone, PartialEq)]
pub enum PaymentOutcome {
    Succeeded,
    Failed {
        reason: Option<String>,
    },
    Refunded {
        amount: Decimal,
    },
    /// A refund stated as the charge's refunds so far, as a processor's
    /// `charge.refunded` carries it: what this state has not recorded yet
    /// is refunded. Decided in the writer's order, so two deliveries racing
    /// each other can never refund more than the processor did.
    RefundedTo {
        total: Decimal,
    },
}

impl PaymentOutcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            PaymentOutcome::Succeeded => "succeeded",
            PaymentOutcome::Failed { .. } => "failed",
            PaymentOutcome::Refunded { .. } | PaymentOutcome::RefundedTo { .. } => "refunded",
        }
    }
}

pub(crate) fn record_payment(
    state: &AccountState,
    invoice_number: String,
    reference: String,
    outcome: PaymentOutcome,
    ctx: &Context,
) -> Result<Vec<AccountEvent>, DomainError> {
    let invoice = state
        .invoices
        .get(&invoice_number)
        .ok_or(DomainError::UnknownInvoice)?;
    if let Some(seen) = state.payment_references.get(&reference) {
        if seen.invoice_number == invoice_number && seen.outcome == outcome.as_str() {
            // The processor retried an outcome we already recorded.
            return Ok(vec![]);
        }
        // The same reference for another invoice or another outcome is not
        // a retry: answering "done" would hide it from the processor.
        return Err(DomainError::ReferenceConflict {
            reference,
            invoice_number: seen.invoice_number.clone(),
            outcome: seen.outcome,
        });
    }
    let outcome = match outcome {
        PaymentOutcome::RefundedTo { total } => {
            let amount = total - invoice.refunded;
            if amount <= Decimal::ZERO {
                // Every refund of the charge is recorded already.
                return Ok(vec![]);
            }
            PaymentOutcome::Refunded { amount }
        }
        other => other,
    };
    if let PaymentOutcome::Refunded { amount } = outcome {
        let refundable = invoice.paid - invoice.refunded;
        if amount <= Decimal::ZERO || round_cents(amount) != amount {
            return Err(DomainError::Invalid(
                "a refund amount must be positive, in cents".into(),
            ));
        }
        if amount > refundable {
            return Err(DomainError::ExceedsPayment {
                number: invoice_number,
                requested: amount,
                refundable,
            });
        }
        let mut amount = amount;
        amount.rescale(2);
        return Ok(vec![AccountEvent::PaymentRefunded(PaymentRefunded {
            invoice_number,
            reference,
            amount,
        })]);
    }
    let due = invoice.amount_due();
    let payable = matches!(
        invoice.status,
        InvoiceStatus::Unpaid | InvoiceStatus::PartiallyCredited
    ) && !due.is_zero();
    if !payable {
        return Err(DomainError::InvoiceNotPayable {
            number: invoice_number,
            status: invoice.status.as_str().to_string(),
        });
    }
    let events = match outcome {
        PaymentOutcome::Succeeded => vec![AccountEvent::PaymentSucceeded(PaymentSucceeded {
            invoice_number,
            reference,
            amount: due,
        })],
        PaymentOutcome::Failed { reason } => {
            let mut events = Vec::new();
            let in_dunning = state
                .corrections()
                .is_some_and(|c| c.dunning.iter().any(|d| d.invoice_number == invoice_number));
            if !in_dunning {
                let p = ctx.dunning;
                events.push(AccountEvent::DunningStarted(DunningStarted {
                    invoice_number: invoice_number.clone(),
                    first_failed_at: ctx.now,
                    retries: p
                        .retry_days
                        .iter()
                        .map(|d| ctx.now + Duration::days(i64::from(*d)))
                        .collect(),
                    suspends_at: ctx.now + Duration::days(i64::from(p.grace_days)),
                }));
            }
            events.push(AccountEvent::PaymentFailed(PaymentFailed {
                invoice_number,
                reference,
                amount_due: due,
                reason: reason.unwrap_or_else(|| "payment declined".to_string()),
            }));
            events
        }
        PaymentOutcome::Refunded { .. } | PaymentOutcome::RefundedTo { .. } => {
            unreachable!("handled above")
        }
    };
    Ok(with_reinstatement(state, events, ctx.now))
}

/// The clock reached a suspension date: suspend if an invoice in dunning
/// is still unpaid past it. At the deadline itself, like a period close.
pub(crate) fn suspend_due(
    state: &AccountState,
    ctx: &Context,
) -> Result<Vec<AccountEvent>, DomainError> {
    let Some(c) = state.corrections() else {
        return Ok(vec![]);
    };
    if c.suspended {
        return Ok(vec![]);
    }
    let overdue: Vec<&DunningCase> = c
        .dunning
        .iter()
        .filter(|d| d.suspends_at <= ctx.now)
        .collect();
    let Some(at) = overdue.iter().map(|d| d.suspends_at).min() else {
        return Ok(vec![]);
    };
    Ok(vec![AccountEvent::LicenseSuspended(LicenseSuspended {
        invoice_numbers: overdue.iter().map(|d| d.invoice_number.clone()).collect(),
        suspended_at: at,
    })])
}

/// Credit notes a close issues: the credit for usage cancelled in invoiced
/// periods (one note per invoice credited), and — when the close's lines
/// total below zero, as after a downgrade — a note for the difference
/// instead of a negative invoice, against the newest invoices that still
/// have something to credit.
pub(crate) fn close_credit_notes(
    state: &AccountState,
    negative: Option<&[InvoiceLine]>,
    ctx: &Context,
) -> Vec<AccountEvent> {
    let mut events = Vec::new();
    // What is left to credit per invoice, as the notes of this close use it.
    let mut left: Vec<(String, Decimal)> = state
        .invoices
        .iter()
        .filter(|(_, i)| i.status != InvoiceStatus::Void)
        .map(|(n, i)| (n.clone(), i.uncredited_net()))
        .collect();
    let mut take = |number: &str, want: Decimal| -> Decimal {
        match left.iter_mut().find(|(n, _)| n == number) {
            Some((_, l)) => {
                let t = want.min(*l).max(Decimal::ZERO);
                *l -= t;
                t
            }
            None => Decimal::ZERO,
        }
    };
    if let Some(c) = state.corrections() {
        let mut by_invoice: Vec<(String, Vec<CreditNoteLine>)> = Vec::new();
        for (n, line) in &c.pending_credits {
            let amount = take(n, line.amount);
            if amount.is_zero() {
                continue;
            }
            let mut line = line.clone();
            line.amount = amount;
            match by_invoice.iter_mut().find(|(k, _)| k == n) {
                Some((_, ls)) => ls.push(line),
                None => by_invoice.push((n.clone(), vec![line])),
            }
        }
        for (n, lines) in by_invoice {
            events.push(AccountEvent::CreditNoteIssued(credit_note(
                state,
                &n,
                "Cancelled usage".to_string(),
                lines,
                ctx,
            )));
        }
    }
    if let Some(lines) = negative {
        let mut owed = -crate::account::total_of(lines);
        let mut newest: Vec<String> = state.invoices.keys().cloned().collect();
        newest.reverse();
        let mut notes: Vec<(String, Decimal)> = Vec::new();
        for n in &newest {
            if owed <= Decimal::ZERO {
                break;
            }
            let t = take(n, owed);
            if !t.is_zero() {
                notes.push((n.clone(), t));
                owed -= t;
            }
        }
        // Nothing left to credit anywhere (should not happen: a downgrade
        // credit is at most what was billed in advance): the newest
        // invoice carries the rest.
        if owed > Decimal::ZERO {
            match (notes.first_mut(), newest.first()) {
                (Some((_, t)), _) => *t += owed,
                (None, Some(n)) => notes.push((n.clone(), owed)),
                (None, None) => {}
            }
        }
        let single = notes.len() == 1;
        for (n, amount) in notes {
            let lines = if single {
                lines
                    .iter()
                    .filter(|l| !l.amount.is_zero())
                    .map(|l| CreditNoteLine {
                        description: l.description.clone(),
                        amount: -l.amount,
                        usage_id: None,
                    })
                    .collect()
            } else {
                vec![CreditNoteLine {
                    description: "Credit from a period close below zero".into(),
                    amount,
                    usage_id: None,
                }]
            };
            events.push(AccountEvent::CreditNoteIssued(credit_note(
                state,
                &n,
                "Period close below zero (plan change credit)".to_string(),
                lines,
                ctx,
            )));
        }
    }
    events
}

/// The invoice the next close would issue if it ran now, not stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Upcoming {
    pub issued_at: DateTime<Utc>,
    pub credit_period: Period,
    pub billing_period: Option<Period>,
    pub lines: Vec<InvoiceLine>,
    /// The sum of the rounded lines.
    pub net: Decimal,
    /// The tax the close would add (SPEC §14), with the rates in force.
    pub tax: Option<crate::tax::InvoiceTax>,
    /// The gross.
    pub total: Decimal,
    pub currency: String,
}

/// `rates`: the tax-rate table in force (the close will tax with it).
pub fn upcoming(state: &AccountState, rates: &crate::tax::TaxTable) -> Option<Upcoming> {
    let info = state.info.as_ref()?;
    let period = state.credit_period?;
    let (lines, next_billing_period) = crate::account::close_lines(state, period);
    let mut net = crate::account::total_of(&lines);
    net.rescale(2);
    let tax = info
        .tax
        .as_deref()
        .filter(|_| net > Decimal::ZERO)
        .map(|p| crate::tax::compute(p, rates, net));
    let mut total = tax.as_ref().map_or(net, |t| t.gross());
    total.rescale(2);
    Some(Upcoming {
        net,
        tax,
        issued_at: period.end,
        credit_period: period,
        billing_period: next_billing_period,
        lines,
        total,
        currency: info.currency.to_string(),
    })
}
