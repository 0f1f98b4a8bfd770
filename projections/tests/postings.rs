//! Property: over random event histories the books always balance and
//! receivables equal the sum of unpaid invoices.

use accrue_core::events::{LedgerEvent, Plan};
use accrue_core::{
    decide, AccountState, BillingFrequency, Command, Context, InvoiceStatus, OpenAccount,
    PaymentOutcome, UsageInput,
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

fn legal() -> &'static accrue_core::tax::Legal {
    static L: std::sync::OnceLock<accrue_core::tax::Legal> = std::sync::OnceLock::new();
    L.get_or_init(|| accrue_core::tax::Legal {
        issuer: None,
        rates: accrue_core::tax::TaxTable::new(vec![
            ("DE".into(), Decimal::new(19, 0)),
            ("US-CA".into(), Decimal::new(725, 2)),
        ])
        .unwrap(),
    })
}

/// `tax`: 0 none, 1 German standard 19 %, 2 Californian 7.25 %, 3 reverse charge.
fn history(ops: &[(u8, u16)], tax: u8) -> ReadModels {
    let mut now: DateTime<Utc> = "2026-01-31T00:00:00Z".parse().unwrap();
    let mut state = AccountState::default();
    let mut models = ReadModels::default();
    let mut pos = 0u64;
    let mut seq = 0u64;
    let mut run =
        |state: &mut AccountState, models: &mut ReadModels, cmd: Command, now: DateTime<Utc>| {
            let ctx = Context {
                legal: Some(legal()),
                ..Context::at(now)
            };
            if let Ok(events) = decide(state, cmd, &ctx) {
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
        tax: (tax > 0).then(|| accrue_core::tax::TaxProfile {
            country: if tax == 2 { "US-CA" } else { "DE" }.into(),
            customer_tax_id: Some("DE123456789".into()),
            treatment: if tax == 3 {
                accrue_core::tax::TaxTreatment::ReverseCharge
            } else {
                accrue_core::tax::TaxTreatment::Standard
            },
            exempt_reason: None,
        }),
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
        let cmd = match op % 8 {
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
                outcome: if n % 3 != 0 {
                    PaymentOutcome::Succeeded
                } else {
                    PaymentOutcome::Failed { reason: None }
                },
            },
            6 => Command::IssueCreditNote {
                invoice_number: pick(),
                reason: "test".into(),
                lines: (n % 4 != 0).then(|| {
                    vec![accrue_core::events::CreditNoteLine {
                        description: "part".into(),
                        amount: Decimal::new(i64::from(*n) + 1, 2),
                        usage_id: None,
                    }]
                }),
            },
            7 => Command::RecordPayment {
                invoice_number: pick(),
                reference: format!("r{i}"),
                outcome: PaymentOutcome::Refunded {
                    amount: Decimal::new(i64::from(*n) + 1, 2),
                },
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
    fn books_balance_and_receivables_match_unpaid_invoices(ops in prop::collection::vec((0u8..8, 0u16..2000), 1..80), tax in 0u8..4) {
        let models = history(&ops, tax);
        let tb = trial_balance(&models.postings, None);
        prop_assert!(tb.balanced(), "{:?}", tb);
        // Receivables: what every invoice billed, less its credit notes and
        // payments, plus what was refunded (a void is fully credited).
        let st = &models.accounts["p"];
        let receivable: Decimal = st.invoices.values().map(|i| i.total - i.credited - i.paid + i.refunded).sum();
        prop_assert_eq!(tb.balance_of("accounts_receivable"), receivable);
        let cash: Decimal = st.invoices.values().map(|i| i.paid - i.refunded).sum();
        prop_assert_eq!(tb.balance_of("cash"), cash);
        // Tax payable: what was invoiced in tax less what credit notes
        // credited of it (a credit balance).
        let tax_of = |f: fn(&accrue_core::account::InvoiceTaxState) -> Decimal| -> Decimal {
            st.invoices.values().filter_map(|i| i.tax.as_deref()).map(f).sum()
        };
        let invoiced_tax = tax_of(|t| t.facts.tax_total());
        let credited_tax = tax_of(|t| t.credited_tax);
        prop_assert_eq!(-tb.balance_of("tax_payable"), invoiced_tax - credited_tax);
        prop_assert!(credited_tax <= invoiced_tax);
        if tax == 0 || tax == 3 { prop_assert!(invoiced_tax.is_zero()); }
        // Contra revenue: every credit note's net (its total less its tax).
        let credited: Decimal = st.invoices.values().map(|i| i.credited).sum();
        prop_assert_eq!(tb.balance_of("credit_notes") + tb.balance_of("invoice_voids"), credited - credited_tax);
        // Every invoice: the total is its net plus its tax.
        for i in st.invoices.values() {
            if let Some(t) = i.tax.as_deref() {
                prop_assert_eq!(i.total, t.facts.net + t.facts.tax_total());
            }
        }
        // A status agrees with the amounts.
        for r in models.invoices.values() {
            let i = st.invoices.get(&r.issued.number).unwrap();
            prop_assert_eq!(r.status, i.status);
            if i.status == InvoiceStatus::Paid { prop_assert!(i.amount_due().is_zero()); }
            if i.status == InvoiceStatus::Unpaid { prop_assert!(i.credited.is_zero()); }
        }
    }
}
