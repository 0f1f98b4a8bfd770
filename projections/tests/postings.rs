//! Property: over random event histories the books always balance and
//! receivables equal the sum of unpaid invoices.

use accrue_core::events::{LedgerEvent, Plan};
use accrue_core::{
    decide, AccountState, BillingFrequency, Command, Context, InvoiceStatus, OpenAccount,
    UsageInput,
};
use accrue_projections::postings::trial_balance;
use accrue_projections::ReadModels;
use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use rust_decimal::Decimal;

fn plan(full: u32, viewer: u32, dm: bool) -> Plan {
    Plan {
        full_seats: full,
        full_seat_price: Decimal::new(1999, 2),
        viewer_seats: viewer,
        viewer_seat_price: Decimal::new(333, 2),
        data_management: dm,
        data_management_price: Decimal::new(4999, 2),
    }
}

fn history(ops: &[(u8, u16)]) -> ReadModels {
    let mut now: DateTime<Utc> = "2026-01-31T00:00:00Z".parse().unwrap();
    let mut state = AccountState::default();
    let mut models = ReadModels::default();
    let mut pos = 0u64;
    let mut seq = 0u64;
    let mut run =
        |state: &mut AccountState, models: &mut ReadModels, cmd: Command, now: DateTime<Utc>| {
            if let Ok(events) = decide(state, cmd, &Context { now }) {
                for e in events {
                    state.apply(&e);
                    pos += 1;
                    models.apply(pos, "account-p", now, &LedgerEvent::Account(e));
                }
            }
        };
    let mut number = || {
        seq += 1;
        format!("INV-2026-{seq:06}")
    };
    let open = OpenAccount {
        account_id: "p".into(),
        name: "P".into(),
        serial_number: "S".into(),
        billing_email: "p@p.test".into(),
        email_language: "en".into(),
        address: None,
        currency: "USD".into(),
        billing_frequency: BillingFrequency::Monthly,
        anchor_day: None,
        plan: plan(3, 7, true),
        base_credits: Decimal::new(100, 2),
        credit_limit: Some(Decimal::new(5000, 2)),
        invoice_number: number(),
    };
    run(&mut state, &mut models, Command::Open(Box::new(open)), now);
    for (i, (op, n)) in ops.iter().enumerate() {
        let invoices: Vec<String> = state.invoices.keys().cloned().collect();
        let pick = || {
            invoices
                .get(*n as usize % invoices.len().max(1))
                .cloned()
                .unwrap_or_default()
        };
        let cmd = match op % 6 {
            0 | 1 => Command::Consume(UsageInput {
                usage_id: format!("u{i}"),
                amount: Decimal::new(i64::from(*n) + 1, 4),
                occurred_at: now,
                product: None,
                feature: None,
                metadata: None,
            }),
            2 => {
                now = state.period_end().unwrap();
                Command::ClosePeriod {
                    invoice_number: number(),
                }
            }
            3 => Command::RecordPayment {
                invoice_number: pick(),
                reference: format!("r{i}"),
                succeeded: n % 3 != 0,
                failure_reason: None,
            },
            4 => Command::VoidInvoice {
                number: pick(),
                reason: "test".into(),
            },
            _ => {
                now += Duration::days(i64::from(*n % 9));
                if now >= state.period_end().unwrap() {
                    now = state.period_end().unwrap() - Duration::hours(1);
                }
                Command::ChangePlan(plan(3 + u32::from(*n % 4), u32::from(*n % 11), n % 2 == 0))
            }
        };
        run(&mut state, &mut models, cmd, now);
    }
    models
}

proptest! {
    #[test]
    fn books_balance_and_receivables_match_unpaid_invoices(ops in prop::collection::vec((0u8..6, 0u16..2000), 1..80)) {
        let models = history(&ops);
        let tb = trial_balance(&models.postings, None);
        prop_assert!(tb.balanced(), "{:?}", tb);
        let unpaid: Decimal = models.invoices.values().filter(|r| r.status == InvoiceStatus::Unpaid).map(|r| r.issued.total).sum();
        prop_assert_eq!(tb.balance_of("accounts_receivable"), unpaid);
        let paid: Decimal = models.invoices.values().filter(|r| r.status == InvoiceStatus::Paid).map(|r| r.issued.total).sum();
        prop_assert_eq!(tb.balance_of("cash"), paid);
    }
}
