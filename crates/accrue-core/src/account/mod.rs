//! The account aggregate: `decide` turns a command into events (or a rule
//! violation), `evolve` folds an event into the state. Both are pure.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;

use crate::error::DomainError;
use crate::events::*;
use crate::invoice;
use crate::money::{round_cents, MAX_LIMIT_USD};
use crate::period::{period_containing, period_from, BillingFrequency, Period};

/// Usage may be stamped at most this far ahead of the clock.
pub const FUTURE_TOLERANCE_SECS: i64 = 300;

/// What the caller knows that the domain must not find out by itself.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    pub now: DateTime<Utc>,
    /// The dunning policy in force (`serve --dunning`, `--grace-days`).
    pub dunning: crate::correction::DunningPolicy,
    /// The issuer and the tax-rate table in force (SPEC §14), set once
    /// when `serve` starts; `None` → no issuer, no rates.
    pub legal: Option<&'static crate::tax::Legal>,
}

impl Context {
    /// At `now`, with the default dunning policy.
    pub fn at(now: DateTime<Utc>) -> Context {
        Context {
            now,
            dunning: crate::correction::DEFAULT_DUNNING,
            legal: None,
        }
    }
    /// The tax-rate table in force (empty without a configuration).
    pub fn rates(&self) -> &crate::tax::TaxTable {
        static NONE: crate::tax::TaxTable = crate::tax::TaxTable::EMPTY;
        self.legal.map_or(&NONE, |l| &l.rates)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct SeatsInUse {
    pub full: u32,
    pub viewer: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum PaymentStatus {
    #[default]
    Ok,
    Failed,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OpenAccount {
    pub account_id: String,
    pub name: String,
    pub serial_number: String,
    pub billing_email: String,
    pub email_language: String,
    pub address: Option<String>,
    pub currency: String,
    pub billing_frequency: BillingFrequency,
    /// Day of month periods start on; `None` → the day the account opens.
    pub anchor_day: Option<u32>,
    pub plan: Plan,
    pub base_credits: Decimal,
    /// The limit to subscribe with at once, if any.
    pub credit_limit: Option<Decimal>,
    /// The number for the opening invoice, used only if one is due.
    pub invoice_number: String,
    /// Tax country, customer tax id and treatment (SPEC §14).
    pub tax: Option<crate::tax::TaxProfile>,
}

/// A usage event already parsed at the edge.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageInput {
    pub usage_id: String,
    pub amount: Decimal,
    pub occurred_at: DateTime<Utc>,
    pub product: Option<String>,
    pub feature: Option<String>,
    pub metadata: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Open(Box<OpenAccount>),
    SetCreditLimit {
        limit: Decimal,
    },
    Unsubscribe,
    Consume(UsageInput),
    ReportSeats(SeatsInUse),
    ChangePlan(Plan),
    /// Close the current credit period (its end must have passed). The number
    /// is used only if an invoice is due.
    ClosePeriod {
        invoice_number: String,
    },
    RecordPdf {
        number: String,
        sha256: String,
    },
    ReplacePaymentMethod(Box<PaymentMethodReplaced>),
    RecordPayment {
        invoice_number: String,
        reference: String,
        outcome: crate::correction::PaymentOutcome,
    },
    VoidInvoice {
        number: String,
        reason: String,
    },
    /// The license server's commands (SPEC §7).
    License(crate::license::LicenseCommand),
    /// A partial plan change: fields left `None` keep the current value,
    /// merged here against the state the writer holds, so two concurrent
    /// partial changes each keep the other's fields.
    ChangePlanPartial(PlanChange),
    /// Correct the account's details; `None` keeps a field.
    ChangeDetails(AccountDetailsChanged),
    /// A credit note against an issued invoice; `lines: None` credits all
    /// that is left (SPEC §9).
    IssueCreditNote {
        invoice_number: String,
        reason: String,
        lines: Option<Vec<CreditNoteLine>>,
    },
    RecordCreditNotePdf {
        number: String,
        sha256: String,
    },
    /// Cancel a usage event; `found` is the event the writer looked up.
    CancelUsage {
        usage_id: String,
        reason: String,
        found: Option<CreditsConsumed>,
    },
    /// The clock passed a suspension date (SPEC §8).
    SuspendDue,
}

/// The fields of a plan change that were given.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PlanChange {
    pub full_seats: Option<u32>,
    pub full_seat_price: Option<Decimal>,
    pub viewer_seats: Option<u32>,
    pub viewer_seat_price: Option<Decimal>,
    pub data_management: Option<bool>,
    pub data_management_price: Option<Decimal>,
}

impl PlanChange {
    /// This change over `current`.
    pub fn over(&self, current: &Plan) -> Plan {
        Plan {
            full_seats: self.full_seats.unwrap_or(current.full_seats),
            full_seat_price: self.full_seat_price.unwrap_or(current.full_seat_price),
            viewer_seats: self.viewer_seats.unwrap_or(current.viewer_seats),
            viewer_seat_price: self.viewer_seat_price.unwrap_or(current.viewer_seat_price),
            data_management: self.data_management.unwrap_or(current.data_management),
            data_management_price: self
                .data_management_price
                .unwrap_or(current.data_management_price),
        }
    }
}

/// What a payment reference was first recorded as.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PaymentRef {
    pub invoice_number: String,
    /// `succeeded`, `failed` or `refunded`.
    pub outcome: &'static str,
}

/// A [`PaymentRef`] as a snapshot stores it.
#[derive(serde::Deserialize)]
struct PaymentRefWire {
    invoice_number: String,
    outcome: String,
}

impl<'de> serde::Deserialize<'de> for PaymentRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<PaymentRef, D::Error> {
        let w = PaymentRefWire::deserialize(d)?;
        let outcome = ["succeeded", "failed", "refunded"]
            .into_iter()
            .find(|o| *o == w.outcome)
            .ok_or_else(|| {
                serde::de::Error::custom(format!("unknown payment outcome {:?}", w.outcome))
            })?;
        Ok(PaymentRef {
            invoice_number: w.invoice_number,
            outcome,
        })
    }
}

/// An invoice as the aggregate needs to know it to decide payments.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct InvoiceState {
    pub total: Decimal,
    pub status: InvoiceStatus,
    /// Whether its PDF's hash is recorded (the hash itself is in the log
    /// and the read models).
    pub pdf_recorded: bool,
    /// Credit notes against it, in total.
    pub credited: Decimal,
    /// Payments received (before refunds).
    pub paid: Decimal,
    pub refunded: Decimal,
    /// The credit period it billed usage of, and what it charged for it
    /// (its AI-credit lines), so a cancellation credits at most that.
    pub credit_period: Option<Period>,
    pub usage_charge: Decimal,
    pub usage_credited: Decimal,
    /// Its tax facts and what credit notes credited of them (SPEC §14);
    /// `None` for an invoice issued without tax (its net is its total).
    pub tax: Option<Box<InvoiceTaxState>>,
}

/// An invoice's tax as issued and as credited since.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InvoiceTaxState {
    pub facts: crate::tax::InvoiceTax,
    pub credited_net: Decimal,
    pub credited_tax: Decimal,
}

impl InvoiceState {
    /// `total − credited − paid`, never below zero.
    pub fn amount_due(&self) -> Decimal {
        if self.status == InvoiceStatus::Void {
            return Decimal::ZERO;
        }
        (self.total - self.credited - self.paid).max(Decimal::ZERO)
    }
    /// What credit notes may still credit.
    pub fn uncredited(&self) -> Decimal {
        if self.status == InvoiceStatus::Void {
            return Decimal::ZERO;
        }
        (self.total - self.credited).max(Decimal::ZERO)
    }
    /// The net that credit notes may still credit (their lines are net,
    /// like the invoice's; tax is added at the invoice's rate).
    pub fn uncredited_net(&self) -> Decimal {
        if self.status == InvoiceStatus::Void {
            return Decimal::ZERO;
        }
        match &self.tax {
            Some(t) => (t.facts.net - t.credited_net).max(Decimal::ZERO),
            None => self.uncredited(),
        }
    }
    /// The status from the amounts (a void stays void).
    pub fn refresh_status(&mut self) {
        if self.status == InvoiceStatus::Void {
            return;
        }
        self.status = if self.credited >= self.total {
            InvoiceStatus::Credited
        } else if self.amount_due().is_zero() {
            InvoiceStatus::Paid
        } else if self.credited > Decimal::ZERO {
            InvoiceStatus::PartiallyCredited
        } else {
            InvoiceStatus::Unpaid
        };
    }
}

/// An account's invoices by number, in number order. A sorted vector, not a
/// `BTreeMap`: most accounts hold a few invoices, and a map's first node
/// alone is about 800 bytes (two copies per account, writer and read model).
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct InvoiceBook(Vec<(String, InvoiceState)>);

impl InvoiceBook {
    fn find(&self, number: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(n, _)| n.as_str().cmp(number))
    }
    pub fn get(&self, number: &str) -> Option<&InvoiceState> {
        self.find(number).ok().map(|i| &self.0[i].1)
    }
    pub fn get_mut(&mut self, number: &str) -> Option<&mut InvoiceState> {
        self.find(number).ok().map(|i| &mut self.0[i].1)
    }
    /// Inserts or replaces; returns the replaced state.
    pub fn insert(&mut self, number: String, state: InvoiceState) -> Option<InvoiceState> {
        match self.find(&number) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, state)),
            Err(i) => {
                if self.0.len() == self.0.capacity() {
                    // Grow 1, 2, 4, … rather than starting at 4.
                    self.0.reserve_exact(self.0.len().max(1));
                }
                self.0.insert(i, (number, state));
                None
            }
        }
    }
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(n, _)| n)
    }
    pub fn values(&self) -> impl Iterator<Item = &InvoiceState> {
        self.0.iter().map(|(_, s)| s)
    }
    pub fn iter(&self) -> impl Iterator<Item = (&String, &InvoiceState)> {
        self.0.iter().map(|(n, s)| (n, s))
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct AccountState {
    /// `None` until `AccountOpened`.
    pub info: Option<std::sync::Arc<AccountOpened>>,
    /// Events applied so far (the stream version).
    pub version: u64,
    pub credit_period: Option<Period>,
    pub billing_period: Option<Period>,
    pub base: Decimal,
    pub limit: Decimal,
    pub used: Decimal,
    pub pending_unsubscribe: bool,
    pub thresholds_reached: u8,
    /// The plan when it differs from the one the account opened with
    /// (see [`AccountState::plan`]): most accounts never change it.
    pub changed_plan: Option<Box<Plan>>,
    pub seats_in_use: SeatsInUse,
    pub pending_proration: Vec<InvoiceLine>,
    pub payment_status: PaymentStatus,
    pub payment_method: Option<Box<PaymentMethodReplaced>>,
    pub invoices: InvoiceBook,
    /// Every payment reference recorded, with its invoice and outcome: a
    /// retry of the same outcome changes nothing, any other use conflicts.
    pub payment_references: BTreeMap<String, PaymentRef>,
    /// The license (control number, term, activations, sessions), once
    /// its control number is issued. Boxed: one pointer for accounts
    /// that never activate a server.
    pub license: Option<Box<crate::license::LicenseState>>,
    /// Credit notes, cancellations and dunning (SPEC §8, §9), once any.
    pub corrections: Option<Box<crate::correction::Corrections>>,
}

impl AccountState {
    pub fn is_open(&self) -> bool {
        self.info.is_some()
    }
    /// The current plan: the last `PlanChanged`, else the opening one.
    pub fn plan(&self) -> Option<&Plan> {
        self.changed_plan
            .as_deref()
            .or(self.info.as_ref().map(|i| &i.plan))
    }
    pub fn capacity(&self) -> Decimal {
        self.base + self.limit
    }
    pub fn available(&self) -> Decimal {
        (self.capacity() - self.used).max(Decimal::ZERO)
    }
    /// Additional (beyond-base) credits used this period.
    pub fn additional_used(&self) -> Decimal {
        (self.used - self.base).max(Decimal::ZERO)
    }
    /// The language documents and mails are in: the saved payment
    /// method's, else the one the account opened with.
    pub fn language(&self) -> &str {
        match (&self.payment_method, &self.info) {
            (Some(m), _) => crate::email_language(&m.email_language),
            (None, Some(i)) => &i.email_language,
            (None, None) => "en",
        }
    }
    /// When the current credit period ends (the next reset).
    pub fn period_end(&self) -> Option<DateTime<Utc>> {
        self.credit_period.map(|p| p.end)
    }

    /// Folds one event into the state, asserting what the event claims.
    pub fn apply(&mut self, event: &AccountEvent) {
        self.version += 1;
        match event {
            AccountEvent::AccountOpened(e) => {
                self.credit_period = Some(e.credit_period);
                self.billing_period = Some(e.billing_period);
                self.base = e.base_credits;
                self.changed_plan = None;
                self.info = Some(e.clone());
            }
            AccountEvent::CreditLimitSet(e) => {
                self.limit = e.limit;
                self.pending_unsubscribe = false;
            }
            AccountEvent::CreditUnsubscribed(_) => self.pending_unsubscribe = true,
            AccountEvent::CreditsConsumed(e) => {
                self.used += e.amount;
                debug_assert_eq!(
                    self.used, e.period_used,
                    "recorded period usage must replay"
                );
            }
            AccountEvent::CreditThresholdReached(e) => {
                self.thresholds_reached |= threshold_bit(e.percent);
            }
            AccountEvent::SeatsInUseReported(e) => {
                self.seats_in_use = SeatsInUse {
                    full: e.full,
                    viewer: e.viewer,
                };
            }
            AccountEvent::PlanChanged(e) => {
                self.changed_plan = Some(Box::new(e.plan.clone()));
                self.pending_proration.extend(e.proration.iter().cloned());
            }
            AccountEvent::PeriodClosed(e) => {
                self.credit_period = Some(e.next_period);
                if let Some(b) = e.next_billing_period {
                    self.billing_period = Some(b);
                }
                self.used = Decimal::ZERO;
                self.limit = e.next_limit;
                self.pending_unsubscribe = false;
                self.thresholds_reached = 0;
                self.pending_proration.clear();
                // The close issues their credit notes in the same decision.
                if let Some(c) = self.corrections.as_deref_mut() {
                    c.pending_credits.clear();
                }
            }
            AccountEvent::InvoiceIssued(e) => {
                self.invoices.insert(
                    e.number.clone(),
                    InvoiceState {
                        total: e.total,
                        status: InvoiceStatus::Unpaid,
                        pdf_recorded: false,
                        credited: Decimal::ZERO,
                        paid: Decimal::ZERO,
                        refunded: Decimal::ZERO,
                        credit_period: e.credit_period,
                        usage_charge: e
                            .lines
                            .iter()
                            .filter(|l| l.kind == LineKind::AiCredits)
                            .map(|l| l.amount)
                            .sum(),
                        usage_credited: Decimal::ZERO,
                        tax: e.legal.as_ref().and_then(|l| l.tax.clone()).map(|facts| {
                            Box::new(InvoiceTaxState {
                                facts,
                                credited_net: Decimal::ZERO,
                                credited_tax: Decimal::ZERO,
                            })
                        }),
                    },
                );
                // The opening invoice carries pending prorations too.
                self.pending_proration.clear();
            }
            AccountEvent::InvoicePdfRendered(e) => {
                if let Some(i) = self.invoices.get_mut(&e.number) {
                    i.pdf_recorded = true;
                }
            }
            AccountEvent::PaymentMethodReplaced(e) => {
                self.payment_method = Some(Box::new(e.clone()))
            }
            AccountEvent::PaymentSucceeded(e) => {
                self.payment_references.insert(
                    e.reference.clone(),
                    PaymentRef {
                        invoice_number: e.invoice_number.clone(),
                        outcome: "succeeded",
                    },
                );
                if let Some(i) = self.invoices.get_mut(&e.invoice_number) {
                    i.paid += e.amount;
                    i.refresh_status();
                }
                crate::correction::settle(self);
                self.payment_status = if self.dunning().is_some() {
                    PaymentStatus::Failed
                } else {
                    PaymentStatus::Ok
                };
            }
            AccountEvent::PaymentFailed(e) => {
                self.payment_references.insert(
                    e.reference.clone(),
                    PaymentRef {
                        invoice_number: e.invoice_number.clone(),
                        outcome: "failed",
                    },
                );
                crate::correction::count_failure(self, &e.invoice_number);
                self.payment_status = PaymentStatus::Failed;
            }
            AccountEvent::InvoiceVoided(e) => {
                if let Some(i) = self.invoices.get_mut(&e.number) {
                    i.status = InvoiceStatus::Void;
                }
                crate::correction::settle(self);
                if !self
                    .invoices
                    .values()
                    .any(|i| i.status == InvoiceStatus::Unpaid)
                    && self.dunning().is_none()
                {
                    self.payment_status = PaymentStatus::Ok;
                }
            }
            AccountEvent::ControlNumberIssued(_)
            | AccountEvent::LicenseTermChanged(_)
            | AccountEvent::LicenseExpired(_)
            | AccountEvent::LicenseReactivated(_)
            | AccountEvent::ActivationCreated(_)
            | AccountEvent::ActivationReleased(_)
            | AccountEvent::ActivationsReset(_)
            | AccountEvent::LicenseSynced(_)
            | AccountEvent::SessionsReported(_) => crate::license::apply(self, event),
            AccountEvent::PaymentRefunded(e) => {
                self.payment_references.insert(
                    e.reference.clone(),
                    PaymentRef {
                        invoice_number: e.invoice_number.clone(),
                        outcome: "refunded",
                    },
                );
                crate::correction::apply(self, event);
            }
            AccountEvent::CreditNoteIssued(_)
            | AccountEvent::CreditNotePdfRendered(_)
            | AccountEvent::UsageCancelled(_)
            | AccountEvent::DunningStarted(_)
            | AccountEvent::LicenseSuspended(_)
            | AccountEvent::LicenseReinstated(_) => {
                crate::correction::apply(self, event);
                if matches!(event, AccountEvent::CreditNoteIssued(_))
                    && self.dunning().is_none()
                    && !self
                        .invoices
                        .values()
                        .any(|i| i.status == InvoiceStatus::Unpaid)
                {
                    self.payment_status = PaymentStatus::Ok;
                }
            }
            AccountEvent::AccountDetailsChanged(e) => {
                if let Some(info) = self.info.as_mut() {
                    let info = std::sync::Arc::make_mut(info);
                    if let Some(n) = &e.name {
                        info.name = n.clone();
                    }
                    if let Some(m) = &e.billing_email {
                        info.billing_email = m.clone();
                    }
                    if let Some(a) = &e.address {
                        info.address = Some(a.clone());
                    }
                    if let Some(l) = &e.email_language {
                        info.email_language = l.as_str().into();
                    }
                    if let Some(t) = &e.tax {
                        info.tax = Some(Box::new(t.clone()));
                    }
                }
                // The saved payment method carries its own email and
                // language (what mails and the overview use): the newer fact wins.
                if let Some(m) = self.payment_method.as_mut() {
                    if let Some(v) = &e.billing_email {
                        m.billing_email = v.clone();
                    }
                    if let Some(l) = &e.email_language {
                        m.email_language = l.clone();
                    }
                }
            }
        }
        if crate::license::changes_claims(event) {
            if let Some(l) = self.license.as_deref_mut() {
                l.definition_version = self.version;
            }
        }
    }
}

fn threshold_bit(percent: u8) -> u8 {
    if percent >= 100 {
        2
    } else {
        1
    }
}

/// `evolve(State, &Event) -> State`.
pub fn evolve(mut state: AccountState, event: &AccountEvent) -> AccountState {
    state.apply(event);
    state
}

/// `decide(&State, Command, &Context) -> Result<Vec<Event>, DomainError>`.
pub fn decide(
    state: &AccountState,
    command: Command,
    ctx: &Context,
) -> Result<Vec<AccountEvent>, DomainError> {
    if let Command::Open(open) = command {
        return open_account(state, *open, ctx);
    }
    if !state.is_open() {
        return Err(DomainError::UnknownAccount);
    }
    match command {
        Command::Open(_) => unreachable!("handled above"),
        Command::SetCreditLimit { limit } => set_limit(state, limit),
        Command::Unsubscribe => unsubscribe(state),
        Command::Consume(usage) => consume(state, usage, ctx),
        Command::ReportSeats(seats) => report_seats(state, seats),
        Command::ChangePlan(plan) => change_plan(state, plan, ctx),
        Command::ClosePeriod { invoice_number } => close_period(state, invoice_number, ctx),
        Command::RecordPdf { number, sha256 } => record_pdf(state, number, sha256),
        Command::ReplacePaymentMethod(m) => Ok(vec![AccountEvent::PaymentMethodReplaced(*m)]),
        Command::RecordPayment {
            invoice_number,
            reference,
            outcome,
        } => crate::correction::record_payment(state, invoice_number, reference, outcome, ctx),
        Command::VoidInvoice { number, reason } => {
            crate::correction::void_invoice(state, number, reason, ctx)
        }
        Command::IssueCreditNote {
            invoice_number,
            reason,
            lines,
        } => crate::correction::issue_credit_note(state, invoice_number, reason, lines, ctx),
        Command::RecordCreditNotePdf { number, sha256 } => {
            let note = state
                .corrections()
                .and_then(|c| c.credit_notes.iter().find(|c| c.0 == number));
            match note {
                None => Err(DomainError::UnknownInvoice),
                // The hash is recorded once, when first rendered.
                Some(c) if c.3 => Ok(vec![]),
                Some(_) => Ok(vec![AccountEvent::CreditNotePdfRendered(
                    CreditNotePdfRendered { number, sha256 },
                )]),
            }
        }
        Command::CancelUsage {
            usage_id,
            reason,
            found,
        } => crate::correction::cancel_usage(state, usage_id, reason, found),
        Command::SuspendDue => crate::correction::suspend_due(state, ctx),
        Command::License(c) => crate::license::decide(state, c, ctx),
        Command::ChangePlanPartial(change) => {
            let current = state.plan().expect("an open account has a plan");
            let plan = change.over(current);
            change_plan(state, plan, ctx)
        }
        Command::ChangeDetails(change) => change_details(state, change, ctx),
    }
}

fn validate_plan(plan: &Plan) -> Result<(), DomainError> {
    for (name, price) in [
        ("full_seat_price", plan.full_seat_price),
        ("viewer_seat_price", plan.viewer_seat_price),
        ("data_management_price", plan.data_management_price),
    ] {
        if price.is_sign_negative() && !price.is_zero() {
            return Err(DomainError::Invalid(format!("{name} must not be negative")));
        }
    }
    Ok(())
}

fn validate_limit(limit: Decimal) -> Result<(), DomainError> {
    if limit <= Decimal::ZERO || limit > MAX_LIMIT_USD {
        return Err(DomainError::Invalid(format!(
            "limit must be above 0 and at most {MAX_LIMIT_USD}, got {limit}"
        )));
    }
    Ok(())
}

fn open_account(
    state: &AccountState,
    open: OpenAccount,
    ctx: &Context,
) -> Result<Vec<AccountEvent>, DomainError> {
    if state.is_open() {
        return Err(DomainError::AccountExists);
    }
    validate_plan(&open.plan)?;
    if open.base_credits.is_sign_negative() && !open.base_credits.is_zero() {
        return Err(DomainError::Invalid(
            "base_credits must not be negative".into(),
        ));
    }
    if let Some(l) = open.credit_limit {
        validate_limit(l)?;
    }
    if let Some(t) = &open.tax {
        t.validate(ctx.rates())?;
    }
    let anchor_day = open
        .anchor_day
        .unwrap_or_else(|| chrono::Datelike::day(&ctx.now));
    if !(1..=31).contains(&anchor_day) {
        return Err(DomainError::Invalid(
            "period anchor day must be 1..=31".into(),
        ));
    }
    let credit_period = period_containing(anchor_day, ctx.now);
    let billing_period = period_from(
        anchor_day,
        credit_period.start,
        open.billing_frequency.months(),
    );
    let opened = AccountOpened {
        account_id: open.account_id,
        name: open.name,
        serial_number: open.serial_number,
        billing_email: open.billing_email,
        email_language: crate::email_language(&open.email_language).into(),
        address: open.address,
        currency: open.currency.into(),
        billing_frequency: open.billing_frequency,
        anchor_day,
        opened_at: ctx.now,
        credit_period,
        billing_period,
        plan: open.plan,
        base_credits: open.base_credits,
        tax: open.tax.map(Box::new),
    };
    let mut events = vec![AccountEvent::AccountOpened(std::sync::Arc::new(opened))];
    if let Some(limit) = open.credit_limit {
        events.push(AccountEvent::CreditLimitSet(CreditLimitSet {
            limit,
            previous_limit: Decimal::ZERO,
        }));
    }
    let mut after = state.clone();
    for e in &events {
        after.apply(e);
    }
    let lines = invoice::subscription_lines(&after, billing_period);
    if let Some(issued) = invoice::issue(
        &after,
        open.invoice_number,
        ctx,
        None,
        Some(billing_period),
        lines,
    ) {
        events.push(AccountEvent::InvoiceIssued(issued));
    }
    Ok(events)
}

fn set_limit(state: &AccountState, limit: Decimal) -> Result<Vec<AccountEvent>, DomainError> {
    validate_limit(limit)?;
    let used_additional = state.additional_used();
    if limit < used_additional {
        return Err(DomainError::LimitBelowUsage {
            limit,
            used_additional,
        });
    }
    Ok(vec![AccountEvent::CreditLimitSet(CreditLimitSet {
        limit,
        previous_limit: state.limit,
    })])
}

fn unsubscribe(state: &AccountState) -> Result<Vec<AccountEvent>, DomainError> {
    if state.limit.is_zero() {
        return Err(DomainError::NotSubscribed);
    }
    if state.pending_unsubscribe {
        // Already pending: asking again changes nothing.
        return Ok(vec![]);
    }
    let effective_at = state.period_end().expect("an open account has a period");
    Ok(vec![AccountEvent::CreditUnsubscribed(CreditUnsubscribed {
        effective_at,
    })])
}

fn consume(
    state: &AccountState,
    usage: UsageInput,
    ctx: &Context,
) -> Result<Vec<AccountEvent>, DomainError> {
    let period = state.credit_period.expect("an open account has a period");
    crate::license::check_usage(state)?;
    if state.suspended() {
        return Err(DomainError::LicenseSuspended);
    }
    if usage.amount <= Decimal::ZERO {
        return Err(DomainError::Invalid("amount must be positive".into()));
    }
    if usage.occurred_at < period.start {
        return Err(DomainError::PeriodClosed {
            occurred_at: usage.occurred_at.to_rfc3339(),
            period_start: period.start.to_rfc3339(),
        });
    }
    if usage.occurred_at > ctx.now + Duration::seconds(FUTURE_TOLERANCE_SECS) {
        return Err(DomainError::Future {
            occurred_at: usage.occurred_at.to_rfc3339(),
            now: ctx.now.to_rfc3339(),
        });
    }
    let available = state.capacity() - state.used;
    if usage.amount > available {
        return Err(DomainError::CreditLimitExceeded {
            available: available.max(Decimal::ZERO),
            requested: usage.amount,
        });
    }
    let period_used = state.used + usage.amount;
    let mut events = vec![AccountEvent::CreditsConsumed(CreditsConsumed {
        usage_id: usage.usage_id,
        amount: usage.amount,
        occurred_at: usage.occurred_at,
        product: usage.product,
        feature: usage.feature,
        metadata: usage.metadata,
        period_used,
    })];
    let capacity = state.capacity();
    for percent in [80u8, 100] {
        let bit = threshold_bit(percent);
        // used ≥ capacity × percent / 100, without a division on the hot path.
        if capacity > Decimal::ZERO
            && state.thresholds_reached & bit == 0
            && period_used * Decimal::ONE_HUNDRED >= capacity * Decimal::from(percent)
        {
            events.push(AccountEvent::CreditThresholdReached(
                CreditThresholdReached {
                    percent,
                    period_start: period.start,
                    used: period_used,
                    capacity,
                },
            ));
        }
    }
    Ok(events)
}

fn report_seats(state: &AccountState, seats: SeatsInUse) -> Result<Vec<AccountEvent>, DomainError> {
    let plan = state.plan().expect("an open account has a plan");
    check_seats(plan, seats)?;
    Ok(vec![AccountEvent::SeatsInUseReported(SeatsInUseReported {
        full: seats.full,
        viewer: seats.viewer,
    })])
}

fn check_seats(plan: &Plan, seats: SeatsInUse) -> Result<(), DomainError> {
    if seats.full > plan.full_seats {
        return Err(DomainError::SeatLimitExceeded {
            role: "full",
            in_use: seats.full,
            licensed: plan.full_seats,
        });
    }
    if seats.viewer > plan.viewer_seats {
        return Err(DomainError::SeatLimitExceeded {
            role: "viewer",
            in_use: seats.viewer,
            licensed: plan.viewer_seats,
        });
    }
    Ok(())
}

fn change_plan(
    state: &AccountState,
    plan: Plan,
    ctx: &Context,
) -> Result<Vec<AccountEvent>, DomainError> {
    validate_plan(&plan)?;
    check_seats(&plan, state.seats_in_use)?;
    let previous = state.plan().cloned().expect("an open account has a plan");
    if previous == plan {
        return Ok(vec![]);
    }
    let billing = state
        .billing_period
        .expect("an open account has a billing period");
    let proration = invoice::proration_lines(&previous, &plan, billing, ctx.now);
    Ok(vec![AccountEvent::PlanChanged(PlanChanged {
        previous,
        plan,
        effective_at: ctx.now,
        proration,
    })])
}

fn close_period(
    state: &AccountState,
    invoice_number: String,
    ctx: &Context,
) -> Result<Vec<AccountEvent>, DomainError> {
    let period = state.credit_period.expect("an open account has a period");
    if ctx.now < period.end {
        return Err(DomainError::Invalid(format!(
            "the credit period ends at {}, not yet closable",
            period.end.to_rfc3339()
        )));
    }
    let info = state.info.as_ref().expect("open");
    let next_period = period_containing(info.anchor_day, period.end);
    let charge = (state.used - state.base).max(Decimal::ZERO);
    let (lines, next_billing_period) = close_lines(state, period);
    let next_limit = if state.pending_unsubscribe {
        Decimal::ZERO
    } else {
        state.limit
    };
    let closed = PeriodClosed {
        period,
        base: state.base,
        limit: state.limit,
        used: state.used,
        charge,
        next_period,
        next_limit,
        next_billing_period,
    };
    // A close that totals below zero (a downgrade's credit larger than
    // what else it bills) issues a credit note, never a negative invoice.
    let negative = total_of(&lines) < Decimal::ZERO;
    // The documents of a close are dated at its end.
    let at_end = Context {
        now: period.end,
        ..*ctx
    };
    let credit_notes =
        crate::correction::close_credit_notes(state, negative.then_some(lines.as_slice()), &at_end);
    let issued = if negative {
        None
    } else {
        invoice::issue(
            state,
            invoice_number,
            &at_end,
            Some(period),
            next_billing_period,
            lines,
        )
    };
    let mut events = vec![AccountEvent::PeriodClosed(closed)];
    if let Some(i) = issued {
        events.push(AccountEvent::InvoiceIssued(i));
    }
    events.extend(credit_notes);
    Ok(crate::correction::with_reinstatement(
        state, events, period.end,
    ))
}

/// The lines a close of `period` issues, and the billing period it starts
/// (if it starts one). Shared by the close and the upcoming invoice.
pub(crate) fn close_lines(
    state: &AccountState,
    period: Period,
) -> (Vec<InvoiceLine>, Option<Period>) {
    let info = state.info.as_ref().expect("open");
    let billing = state.billing_period.expect("open");
    let next_billing_period = (billing.end <= period.end).then(|| {
        period_from(
            info.anchor_day,
            billing.end,
            info.billing_frequency.months(),
        )
    });
    let charge = (state.used - state.base).max(Decimal::ZERO);
    let mut lines = Vec::new();
    if !charge.is_zero() {
        lines.push(invoice::credit_line(period, charge));
    }
    lines.extend(state.pending_proration.iter().cloned());
    if let Some(b) = next_billing_period {
        // No fee after the license term's end (prorated if it ends inside).
        let fee = invoice::subscription_lines(state, b);
        lines.extend(crate::license::limit_to_term(state, b, fee));
    }
    (lines, next_billing_period)
}

fn record_pdf(
    state: &AccountState,
    number: String,
    sha256: String,
) -> Result<Vec<AccountEvent>, DomainError> {
    match state.invoices.get(&number) {
        None => Err(DomainError::UnknownInvoice),
        // The hash is recorded once, when first rendered.
        Some(i) if i.pdf_recorded => Ok(vec![]),
        Some(_) => Ok(vec![AccountEvent::InvoicePdfRendered(InvoicePdfRendered {
            number,
            sha256,
        })]),
    }
}

/// Keeps only the fields that differ from the current details; nothing
/// differs → no event.
fn change_details(
    state: &AccountState,
    change: AccountDetailsChanged,
    ctx: &Context,
) -> Result<Vec<AccountEvent>, DomainError> {
    let info = state.info.as_ref().expect("an open account has details");
    let method = state.payment_method.as_deref();
    let email_now = method.map_or(info.billing_email.as_str(), |m| m.billing_email.as_str());
    let lang_now = method.map_or(&*info.email_language, |m| m.email_language.as_str());
    let name = change.name.filter(|n| *n != info.name);
    if name.as_deref().is_some_and(|n| n.trim().is_empty()) {
        return Err(DomainError::Invalid("name must not be empty".into()));
    }
    let changed = AccountDetailsChanged {
        name,
        billing_email: change.billing_email.filter(|m| m != email_now),
        address: change
            .address
            .filter(|a| info.address.as_deref() != Some(a.as_str())),
        email_language: change
            .email_language
            .map(|l| crate::email_language(&l).to_string())
            .filter(|l| l != lang_now),
        tax: change.tax.filter(|t| info.tax.as_deref() != Some(t)),
    };
    if let Some(t) = &changed.tax {
        t.validate(ctx.rates())?;
    }
    if changed.name.is_none()
        && changed.billing_email.is_none()
        && changed.address.is_none()
        && changed.email_language.is_none()
        && changed.tax.is_none()
    {
        return Ok(vec![]);
    }
    Ok(vec![AccountEvent::AccountDetailsChanged(changed)])
}

/// Rounds every line and sums the rounded amounts (the invoice rule).
pub fn total_of(lines: &[InvoiceLine]) -> Decimal {
    lines.iter().map(|l| round_cents(l.amount)).sum()
}

#[cfg(test)]
mod tests;
