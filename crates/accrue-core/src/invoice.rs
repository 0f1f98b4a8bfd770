//! Invoice computation: lines at full precision, each rounded half-up to
//! cents, the total the sum of the rounded lines.

use chrono::{DateTime, Duration, DurationRound, Utc};
use rust_decimal::Decimal;

use crate::account::{AccountState, Context};
use crate::events::{DocumentLegal, InvoiceIssued, InvoiceLine, LineKind, Plan};
use crate::money::{display, round_cents};
use crate::period::Period;

/// Days between issue and due date ("Net 14").
pub const PAYMENT_TERMS_DAYS: i64 = 14;

fn day(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d").to_string()
}

/// The last day inside a period (its end is exclusive).
fn last_day(p: Period) -> String {
    day(p.end - Duration::days(1))
}

fn line(
    kind: LineKind,
    description: String,
    quantity: Decimal,
    unit_price: Decimal,
    exact: Decimal,
) -> InvoiceLine {
    InvoiceLine {
        kind,
        description,
        quantity,
        unit_price,
        amount: round_cents(exact),
        prorated: None,
    }
}

/// The fee lines for one billing period of the account's plan, in advance.
/// Prices are per billing period (a yearly account's prices are yearly).
pub fn subscription_lines(state: &AccountState, billing: Period) -> Vec<InvoiceLine> {
    let plan = match state.plan() {
        Some(p) => p,
        None => return vec![],
    };
    let span = format!("{} – {}", day(billing.start), last_day(billing));
    let mut lines = Vec::new();
    if plan.full_seats > 0 && !plan.full_seat_price.is_zero() {
        let q = Decimal::from(plan.full_seats);
        lines.push(line(
            LineKind::Subscription,
            format!("Full seats, {span}"),
            q,
            plan.full_seat_price,
            q * plan.full_seat_price,
        ));
    }
    if plan.viewer_seats > 0 && !plan.viewer_seat_price.is_zero() {
        let q = Decimal::from(plan.viewer_seats);
        lines.push(line(
            LineKind::Subscription,
            format!("Viewer seats, {span}"),
            q,
            plan.viewer_seat_price,
            q * plan.viewer_seat_price,
        ));
    }
    if plan.data_management && !plan.data_management_price.is_zero() {
        lines.push(line(
            LineKind::Subscription,
            format!("Data Management add-on, {span}"),
            Decimal::ONE,
            plan.data_management_price,
            plan.data_management_price,
        ));
    }
    lines
}

/// The AI-credit line for a closed credit period: only what was used beyond
/// the base credits, in arrears.
pub fn credit_line(period: Period, charge: Decimal) -> InvoiceLine {
    line(
        LineKind::AiCredits,
        format!(
            "AI credits beyond base, {} – {} (used {})",
            day(period.start),
            last_day(period),
            display(charge)
        ),
        Decimal::ONE,
        charge,
        charge,
    )
}

/// Prorated lines for a plan change at `at` inside `billing`: for each
/// component that changed, the difference times remaining days / days in the
/// period. The day of the change counts as remaining. A downgrade gives a
/// negative (credit) line.
pub fn proration_lines(
    previous: &Plan,
    plan: &Plan,
    billing: Period,
    at: DateTime<Utc>,
) -> Vec<InvoiceLine> {
    let today = at.duration_trunc(Duration::days(1)).unwrap_or(at);
    let days = billing.days().max(1);
    let remaining = (billing.end - today).num_days().clamp(0, days);
    if remaining == 0 {
        return vec![];
    }
    let ratio = Decimal::from(remaining) / Decimal::from(days);
    let note = format!("prorated {remaining}/{days} days from {}", day(today));
    let mut lines = Vec::new();
    let mut component = |name: &str, old_q: u32, old_p: Decimal, new_q: u32, new_p: Decimal| {
        let old_fee = Decimal::from(old_q) * old_p;
        let new_fee = Decimal::from(new_q) * new_p;
        if old_fee == new_fee {
            return;
        }
        let (quantity, unit_price) = if old_p == new_p {
            (Decimal::from(new_q) - Decimal::from(old_q), new_p)
        } else {
            (Decimal::ONE, new_fee - old_fee)
        };
        let kind = if new_fee > old_fee {
            "upgrade"
        } else {
            "downgrade credit"
        };
        let mut l = line(
            LineKind::Proration,
            format!("{name} {old_q} → {new_q}, {kind}, {note}"),
            quantity,
            unit_price,
            (new_fee - old_fee) * ratio,
        );
        l.prorated = Some(crate::events::Prorated {
            remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
            days: u32::try_from(days).unwrap_or(u32::MAX),
        });
        lines.push(l);
    };
    component(
        "Full seats",
        previous.full_seats,
        previous.full_seat_price,
        plan.full_seats,
        plan.full_seat_price,
    );
    component(
        "Viewer seats",
        previous.viewer_seats,
        previous.viewer_seat_price,
        plan.viewer_seats,
        plan.viewer_seat_price,
    );
    let dm = |p: &Plan| if p.data_management { 1 } else { 0 };
    component(
        "Data Management add-on",
        dm(previous),
        previous.data_management_price,
        dm(plan),
        plan.data_management_price,
    );
    lines
}

/// Builds the invoice if it does not total 0.00, dated `ctx.now`. The
/// lines are net; with a tax profile the tax is added at issue and `total`
/// is the gross. The issuer, the tax and the language become part of the
/// fact (layout 2).
pub fn issue(
    state: &AccountState,
    number: String,
    ctx: &Context,
    credit_period: Option<Period>,
    billing_period: Option<Period>,
    lines: Vec<InvoiceLine>,
) -> Option<InvoiceIssued> {
    let info = state.info.as_ref()?;
    let issued_at = ctx.now;
    let net: Decimal = lines.iter().map(|l| round_cents(l.amount)).sum();
    if net.is_zero() {
        return None;
    }
    let mut net = net;
    net.rescale(2);
    let tax = info
        .tax
        .as_deref()
        .map(|p| crate::tax::compute(p, ctx.rates(), net));
    let legal = document_legal(state, ctx, tax);
    let mut total = legal.tax.as_ref().map_or(net, |t| t.gross());
    total.rescale(2);
    Some(InvoiceIssued {
        number,
        issued_at,
        due_date: issued_at + Duration::days(PAYMENT_TERMS_DAYS),
        credit_period,
        billing_period,
        lines,
        total,
        currency: info.currency.to_string(),
        customer_name: info.name.clone(),
        customer_address: info.address.clone(),
        serial_number: info.serial_number.clone(),
        legal: Some(Box::new(legal)),
    })
}

/// The legal facts of a document issued now for `state`: the issuer in
/// force, the account's language, and `tax`.
pub(crate) fn document_legal(
    state: &AccountState,
    ctx: &Context,
    tax: Option<crate::tax::InvoiceTax>,
) -> DocumentLegal {
    DocumentLegal {
        layout: DocumentLegal::LAYOUT,
        language: state.language().to_string(),
        issuer: ctx.legal.and_then(|l| l.issuer.clone()),
        tax,
    }
}

/// `INV-YYYY-NNNNNN`.
pub fn format_number(year: i32, seq: u64) -> String {
    format!("INV-{year}-{seq:06}")
}
