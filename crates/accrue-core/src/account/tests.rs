//! Given/when/then over `decide`: rule violations as much as happy paths.

use super::*;
use crate::correction::PaymentOutcome;
use crate::period::BillingFrequency;
use proptest::prelude::*;
use rust_decimal_macros::dec;

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn plan(full: u32, viewer: u32) -> Plan {
    Plan {
        full_seats: full,
        full_seat_price: dec!(10.00),
        viewer_seats: viewer,
        viewer_seat_price: dec!(2.00),
        data_management: false,
        data_management_price: dec!(50.00),
    }
}

fn open_cmd(base: Decimal, limit: Option<Decimal>) -> Command {
    Command::Open(Box::new(OpenAccount {
        account_id: "acme".into(),
        name: "Acme".into(),
        serial_number: "ACR-1".into(),
        billing_email: "billing@acme.test".into(),
        email_language: "en".into(),
        address: None,
        currency: "USD".into(),
        billing_frequency: BillingFrequency::Monthly,
        anchor_day: None,
        plan: plan(5, 20),
        base_credits: base,
        credit_limit: limit,
        invoice_number: "INV-2026-000001".into(),
        tax: None,
    }))
}

/// A tiny given/when/then harness over decide.
struct Given(AccountState);

impl Given {
    fn events(events: Vec<AccountEvent>) -> Self {
        Given(events.iter().fold(AccountState::default(), evolve))
    }
    fn opened(base: Decimal, limit: Option<Decimal>, now: &str) -> Self {
        let evs = decide(&AccountState::default(), open_cmd(base, limit), &ctx(now)).unwrap();
        Given::events(evs)
    }
    fn when(&self, cmd: Command, now: &str) -> Result<Vec<AccountEvent>, DomainError> {
        decide(&self.0, cmd, &ctx(now))
    }
    fn and(mut self, cmd: Command, now: &str) -> Self {
        let evs = self.when(cmd, now).unwrap();
        for e in &evs {
            self.0.apply(e);
        }
        self
    }
}

fn ctx(now: &str) -> Context {
    Context::at(at(now))
}

fn usage(id: &str, amount: Decimal, occurred: &str) -> Command {
    Command::Consume(UsageInput {
        usage_id: id.into(),
        amount,
        occurred_at: at(occurred),
        product: Some("chat".into()),
        feature: None,
        metadata: None,
    })
}

const T0: &str = "2026-01-15T00:00:00Z";

#[test]
fn opening_bills_the_first_fee_and_starts_the_period_on_the_day() {
    let evs = decide(
        &AccountState::default(),
        open_cmd(dec!(0), Some(dec!(12))),
        &ctx("2026-01-15T10:04:07Z"),
    )
    .unwrap();
    let AccountEvent::AccountOpened(o) = &evs[0] else {
        panic!("{evs:?}")
    };
    assert_eq!(o.credit_period.start, at(T0));
    assert_eq!(o.credit_period.end, at("2026-02-15T00:00:00Z"));
    assert!(matches!(evs[1], AccountEvent::CreditLimitSet(_)));
    let AccountEvent::InvoiceIssued(inv) = &evs[2] else {
        panic!("{evs:?}")
    };
    // 5 full × 10.00 + 20 viewer × 2.00
    assert_eq!(inv.total, dec!(90.00));
}

#[test]
fn an_open_account_cannot_be_opened_again() {
    let g = Given::opened(dec!(0), None, T0);
    assert_eq!(
        g.when(open_cmd(dec!(0), None), T0),
        Err(DomainError::AccountExists)
    );
}

#[test]
fn usage_within_the_limit_is_consumed_and_beyond_it_rejected_whole() {
    let g = Given::opened(dec!(0), Some(dec!(12)), T0).and(usage("u1", dec!(5), T0), T0);
    assert_eq!(g.0.used, dec!(5));
    assert_eq!(g.0.available(), dec!(7));
    let err = g.when(usage("u2", dec!(7.01), T0), T0).unwrap_err();
    assert_eq!(
        err,
        DomainError::CreditLimitExceeded {
            available: dec!(7),
            requested: dec!(7.01)
        }
    );
    // Exactly the rest is fine, and reaching 100% emits the threshold event.
    let evs = g.when(usage("u3", dec!(7), T0), T0).unwrap();
    assert!(evs
        .iter()
        .any(|e| matches!(e, AccountEvent::CreditThresholdReached(t) if t.percent == 100)));
}

#[test]
fn the_80_percent_threshold_is_reached_once() {
    let g = Given::opened(dec!(0), Some(dec!(10)), T0).and(usage("a", dec!(8), T0), T0);
    assert_eq!(g.0.thresholds_reached, 1);
    let evs = g.when(usage("b", dec!(0.5), T0), T0).unwrap();
    assert_eq!(evs.len(), 1, "no second 80% alert");
}

#[test]
fn usage_before_the_period_or_far_in_the_future_is_refused() {
    let g = Given::opened(dec!(10), None, T0);
    assert!(matches!(
        g.when(usage("u", dec!(1), "2026-01-14T23:59:59Z"), T0),
        Err(DomainError::PeriodClosed { .. })
    ));
    assert!(matches!(
        g.when(usage("u", dec!(1), "2026-01-15T00:05:01Z"), T0),
        Err(DomainError::Future { .. })
    ));
    assert!(g
        .when(usage("u", dec!(1), "2026-01-15T00:05:00Z"), T0)
        .is_ok());
}

#[test]
fn usage_on_an_unknown_account_is_refused() {
    assert_eq!(
        decide(&AccountState::default(), usage("u", dec!(1), T0), &ctx(T0)),
        Err(DomainError::UnknownAccount)
    );
}

#[test]
fn limits_must_be_in_range_and_not_below_additional_usage() {
    let g = Given::opened(dec!(2), Some(dec!(12)), T0).and(usage("u", dec!(7), T0), T0);
    assert!(matches!(
        g.when(Command::SetCreditLimit { limit: dec!(0) }, T0),
        Err(DomainError::Invalid(_))
    ));
    assert!(matches!(
        g.when(
            Command::SetCreditLimit {
                limit: dec!(500.01)
            },
            T0
        ),
        Err(DomainError::Invalid(_))
    ));
    assert!(g
        .when(
            Command::SetCreditLimit {
                limit: dec!(500.00)
            },
            T0
        )
        .is_ok());
    // 5 additional used (7 - base 2): a limit of 4.99 is refused, 5 is fine.
    assert_eq!(
        g.when(Command::SetCreditLimit { limit: dec!(4.99) }, T0),
        Err(DomainError::LimitBelowUsage {
            limit: dec!(4.99),
            used_additional: dec!(5)
        })
    );
    assert!(g
        .when(Command::SetCreditLimit { limit: dec!(5) }, T0)
        .is_ok());
}

#[test]
fn unsubscribe_keeps_the_limit_until_the_period_closes() {
    let g = Given::opened(dec!(0), Some(dec!(12)), T0).and(Command::Unsubscribe, T0);
    assert!(g.0.pending_unsubscribe);
    assert_eq!(g.0.limit, dec!(12));
    let g = g.and(
        Command::ClosePeriod {
            invoice_number: "INV-2026-000002".into(),
        },
        "2026-02-15T00:00:00Z",
    );
    assert_eq!(g.0.limit, dec!(0));
    assert!(!g.0.pending_unsubscribe);
    assert_eq!(
        g.when(Command::Unsubscribe, "2026-02-15T00:00:00Z"),
        Err(DomainError::NotSubscribed)
    );
}

#[test]
fn a_close_bills_only_usage_beyond_base_plus_the_next_fee() {
    let g = Given::opened(dec!(0), Some(dec!(12)), T0).and(usage("u", dec!(5), T0), T0);
    let evs = g
        .when(
            Command::ClosePeriod {
                invoice_number: "INV-2026-000002".into(),
            },
            "2026-02-15T00:00:00Z",
        )
        .unwrap();
    let AccountEvent::PeriodClosed(c) = &evs[0] else {
        panic!()
    };
    assert_eq!(c.charge, dec!(5));
    let AccountEvent::InvoiceIssued(inv) = &evs[1] else {
        panic!()
    };
    assert_eq!(inv.lines[0].amount, dec!(5.00));
    assert_eq!(inv.total, dec!(95.00));
    // Not before the period ends.
    assert!(g
        .when(
            Command::ClosePeriod {
                invoice_number: "x".into()
            },
            "2026-02-14T23:59:59Z"
        )
        .is_err());
}

#[test]
fn seats_in_use_above_the_licence_are_refused() {
    let g = Given::opened(dec!(0), None, T0);
    assert!(g
        .when(
            Command::ReportSeats(SeatsInUse {
                full: 5,
                viewer: 20
            }),
            T0
        )
        .is_ok());
    assert_eq!(
        g.when(Command::ReportSeats(SeatsInUse { full: 6, viewer: 0 }), T0),
        Err(DomainError::SeatLimitExceeded {
            role: "full",
            in_use: 6,
            licensed: 5
        })
    );
    let g = g.and(Command::ReportSeats(SeatsInUse { full: 3, viewer: 0 }), T0);
    assert!(matches!(
        g.when(Command::ChangePlan(plan(2, 20)), T0),
        Err(DomainError::SeatLimitExceeded { .. })
    ));
}

#[test]
fn a_mid_period_upgrade_is_prorated_by_the_day() {
    // Period 2026-01-15 .. 2026-02-15 has 31 days; the change on 2026-01-30
    // leaves 16 days (the 30th included). 3 more full seats at 10.00:
    // 3 × 10.00 × 16/31 = 15.4838… → 15.48.
    let g = Given::opened(dec!(0), None, T0);
    let evs = g
        .when(Command::ChangePlan(plan(8, 20)), "2026-01-30T12:00:00Z")
        .unwrap();
    let AccountEvent::PlanChanged(pc) = &evs[0] else {
        panic!()
    };
    assert_eq!(pc.proration.len(), 1);
    assert_eq!(pc.proration[0].amount, dec!(15.48));
    assert_eq!(pc.proration[0].quantity, dec!(3));
}

#[test]
fn a_downgrade_gives_a_credit_line_on_the_next_invoice() {
    // 20 → 10 viewer seats at 2.00 with 16/31 days left: -20 × 16/31 = -10.3225… → -10.32.
    let g = Given::opened(dec!(0), None, T0)
        .and(Command::ChangePlan(plan(5, 10)), "2026-01-30T00:00:00Z");
    let evs = g
        .when(
            Command::ClosePeriod {
                invoice_number: "INV-2026-000002".into(),
            },
            "2026-02-15T00:00:00Z",
        )
        .unwrap();
    let AccountEvent::InvoiceIssued(inv) = &evs[1] else {
        panic!()
    };
    assert!(inv.lines.iter().any(|l| l.amount == dec!(-10.32)));
    // 5 × 10 + 10 × 2 = 70 for the next month, minus the credit.
    assert_eq!(inv.total, dec!(59.68));
}

#[test]
fn a_payment_retry_changes_nothing_twice() {
    let g = Given::opened(dec!(0), None, T0);
    let pay = || Command::RecordPayment {
        invoice_number: "INV-2026-000001".into(),
        reference: "ch_1".into(),
        outcome: PaymentOutcome::Failed {
            reason: Some("card declined".into()),
        },
    };
    let g = g.and(pay(), T0);
    assert_eq!(g.0.payment_status, PaymentStatus::Failed);
    assert_eq!(g.when(pay(), T0), Ok(vec![]));
}

#[test]
fn a_payment_reference_used_for_another_outcome_or_invoice_conflicts() {
    let pay = |invoice: &str, succeeded: bool| Command::RecordPayment {
        invoice_number: invoice.into(),
        reference: "ch_1".into(),
        outcome: if succeeded {
            PaymentOutcome::Succeeded
        } else {
            PaymentOutcome::Failed { reason: None }
        },
    };
    let g = Given::opened(dec!(0), None, T0).and(pay("INV-2026-000001", false), T0);
    assert_eq!(g.when(pay("INV-2026-000001", false), T0), Ok(vec![]));
    assert!(matches!(
        g.when(pay("INV-2026-000001", true), T0),
        Err(DomainError::ReferenceConflict { .. })
    ));
    // Another invoice of this account (unknown here, so looked up first).
    assert_eq!(
        g.when(pay("INV-2026-000009", false), T0),
        Err(DomainError::UnknownInvoice)
    );
}

#[test]
fn partial_plan_changes_merge_against_the_current_plan() {
    let g = Given::opened(dec!(0), None, T0)
        .and(
            Command::ChangePlanPartial(PlanChange {
                full_seats: Some(7),
                ..PlanChange::default()
            }),
            T0,
        )
        .and(
            Command::ChangePlanPartial(PlanChange {
                viewer_seats: Some(30),
                ..PlanChange::default()
            }),
            T0,
        );
    let p = g.0.plan().unwrap();
    assert_eq!((p.full_seats, p.viewer_seats), (7, 30));
}

#[test]
fn details_change_records_only_what_differs_and_applies_everywhere() {
    let g = Given::opened(dec!(0), None, T0);
    let change = |name: &str| {
        Command::ChangeDetails(AccountDetailsChanged {
            name: Some(name.into()),
            billing_email: None,
            address: None,
            email_language: Some("de-DE".into()),
            tax: None,
        })
    };
    assert_eq!(
        g.when(
            Command::ChangeDetails(AccountDetailsChanged {
                name: Some("Acme".into()),
                billing_email: None,
                address: None,
                email_language: Some("en".into()),
                tax: None,
            }),
            T0
        ),
        Ok(vec![])
    );
    let g = g.and(change("Acme GmbH"), T0);
    let info = g.0.info.as_ref().unwrap();
    assert_eq!(info.name, "Acme GmbH");
    assert_eq!(&*info.email_language, "de");
    assert_eq!(g.when(change("Acme GmbH"), T0), Ok(vec![]));
}

fn arb_history() -> impl Strategy<Value = Vec<(u8, u32)>> {
    prop::collection::vec((0u8..6, 1u32..2_000), 1..120)
}

fn run(ops: &[(u8, u32)]) -> (AccountState, Vec<AccountEvent>) {
    let mut state = AccountState::default();
    let mut log = Vec::new();
    let mut now = at(T0);
    let mut seq = 1;
    let apply = |state: &mut AccountState,
                 log: &mut Vec<AccountEvent>,
                 r: Result<Vec<AccountEvent>, DomainError>| {
        if let Ok(evs) = r {
            for e in evs {
                state.apply(&e);
                log.push(e);
            }
        }
    };
    let r = decide(&state, open_cmd(dec!(3), Some(dec!(10))), &ctx(T0));
    apply(&mut state, &mut log, r);
    for (i, (op, n)) in ops.iter().enumerate() {
        let amount = Decimal::new(*n as i64, 2);
        let c = Context::at(now);
        let r = match op {
            0..=2 => decide(
                &state,
                usage(&format!("u{i}"), amount, &now.to_rfc3339()),
                &c,
            ),
            3 => decide(&state, Command::SetCreditLimit { limit: amount }, &c),
            4 => decide(&state, Command::Unsubscribe, &c),
            _ => {
                now = state.period_end().unwrap();
                seq += 1;
                decide(
                    &state,
                    Command::ClosePeriod {
                        invoice_number: format!("INV-2026-{seq:06}"),
                    },
                    &Context::at(now),
                )
            }
        };
        apply(&mut state, &mut log, r);
        assert!(state.used <= state.capacity(), "usage above base + limit");
    }
    (state, log)
}

proptest! {
    #[test]
    fn usage_never_exceeds_base_plus_limit(ops in arb_history()) {
        let (state, _) = run(&ops);
        prop_assert!(state.used <= state.capacity());
        prop_assert!(state.used >= Decimal::ZERO);
    }

    #[test]
    fn replaying_the_events_gives_the_live_state(ops in arb_history()) {
        let (live, log) = run(&ops);
        let replayed = log.iter().fold(AccountState::default(), evolve);
        prop_assert_eq!(replayed, live);
    }

    #[test]
    fn events_round_trip_through_their_encoding(ops in arb_history()) {
        let (_, log) = run(&ops);
        for e in &log {
            let back = AccountEvent::decode(e.type_name(), crate::SCHEMA_VERSION, &e.encode_payload()).unwrap();
            prop_assert_eq!(&back, e);
        }
    }

    #[test]
    fn invoice_totals_are_the_sum_of_rounded_lines(amounts in prop::collection::vec(-100_000i64..1_000_000, 1..20)) {
        let lines: Vec<InvoiceLine> = amounts.iter().map(|a| InvoiceLine {
            kind: LineKind::AiCredits, description: String::new(), quantity: Decimal::ONE,
            unit_price: Decimal::new(*a, 4), amount: round_cents(Decimal::new(*a, 4)), prorated: None,
        }).collect();
        let total = total_of(&lines);
        prop_assert_eq!(total, lines.iter().map(|l| l.amount).sum::<Decimal>());
        prop_assert!(lines.iter().all(|l| l.amount.scale() <= 2));
    }
}

#[test]
fn the_invoice_book_keeps_number_order_and_replaces_in_place() {
    let st = |total: i64| InvoiceState {
        total: Decimal::from(total),
        ..Default::default()
    };
    let mut book = InvoiceBook::default();
    for (n, t) in [
        ("INV-2026-000003", 3),
        ("INV-2026-000001", 1),
        ("INV-2027-000001", 4),
    ] {
        assert!(book.insert(n.into(), st(t)).is_none());
    }
    assert_eq!(book.insert("INV-2026-000002".into(), st(2)), None);
    assert_eq!(
        book.insert("INV-2026-000003".into(), st(30))
            .map(|s| s.total),
        Some(Decimal::from(3))
    );
    assert_eq!(
        book.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "INV-2026-000001",
            "INV-2026-000002",
            "INV-2026-000003",
            "INV-2027-000001"
        ]
    );
    assert_eq!(
        book.get("INV-2026-000003").map(|s| s.total),
        Some(Decimal::from(30))
    );
    assert!(book.get("INV-2026-000004").is_none());
    book.get_mut("INV-2026-000001").unwrap().status = InvoiceStatus::Paid;
    assert_eq!(
        book.values()
            .filter(|s| s.status == InvoiceStatus::Unpaid)
            .count(),
        3
    );
    assert_eq!(book.len(), 4);
}

/// The shared `AccountOpened` (with its `Arc` counts) fits mimalloc's
/// 320-byte class; one field more and every account costs 64 bytes more.
#[cfg(target_pointer_width = "64")]
#[test]
fn account_opened_fits_its_allocation_class() {
    assert!(std::mem::size_of::<crate::events::AccountOpened>() + 16 <= 320);
}

// ------------------------------------------------ corrections and dunning

fn fail(reference: &str) -> Command {
    Command::RecordPayment {
        invoice_number: "INV-2026-000001".into(),
        reference: reference.into(),
        outcome: PaymentOutcome::Failed {
            reason: Some("card declined".into()),
        },
    }
}

fn credit(lines: Option<Vec<(&str, Decimal)>>) -> Command {
    Command::IssueCreditNote {
        invoice_number: "INV-2026-000001".into(),
        reason: "goodwill".into(),
        lines: lines.map(|ls| {
            ls.into_iter()
                .map(|(d, a)| crate::events::CreditNoteLine {
                    description: d.into(),
                    amount: a,
                    usage_id: None,
                })
                .collect()
        }),
    }
}

fn invoice(g: &Given) -> &InvoiceState {
    g.0.invoices.get("INV-2026-000001").unwrap()
}

#[test]
fn credit_notes_credit_up_to_the_invoice_and_set_its_status() {
    // The opening invoice: 5 × 10 + 20 × 2 = 90.00.
    let g = Given::opened(dec!(0), None, T0).and(credit(Some(vec![("seat", dec!(30.00))])), T0);
    assert_eq!(invoice(&g).status, InvoiceStatus::PartiallyCredited);
    assert_eq!(invoice(&g).amount_due(), dec!(60.00));
    assert!(matches!(
        g.when(credit(Some(vec![("too much", dec!(60.01))])), T0),
        Err(DomainError::ExceedsInvoice { .. })
    ));
    let evs = g.when(credit(None), T0).unwrap();
    let AccountEvent::CreditNoteIssued(cn) = &evs[0] else {
        panic!("a credit note: {evs:?}")
    };
    assert_eq!(cn.total, dec!(60.00));
    let g = g.and(credit(None), T0);
    assert_eq!(invoice(&g).status, InvoiceStatus::Credited);
    assert_eq!(invoice(&g).amount_due(), Decimal::ZERO);
    assert!(matches!(
        g.when(credit(None), T0),
        Err(DomainError::ExceedsInvoice { .. })
    ));
}

#[test]
fn a_void_is_a_full_credit_note_then_the_void() {
    let g = Given::opened(dec!(0), None, T0).and(credit(Some(vec![("x", dec!(10))])), T0);
    let evs = g
        .when(
            Command::VoidInvoice {
                number: "INV-2026-000001".into(),
                reason: "duplicate".into(),
            },
            T0,
        )
        .unwrap();
    assert!(matches!(&evs[0], AccountEvent::CreditNoteIssued(c) if c.total == dec!(80.00)));
    assert!(matches!(&evs[1], AccountEvent::InvoiceVoided(_)));
}

#[test]
fn dunning_retries_then_suspends_and_a_payment_reinstates() {
    let g = Given::opened(dec!(0), Some(dec!(10)), T0);
    let evs = g.when(fail("ch_1"), T0).unwrap();
    let AccountEvent::DunningStarted(d) = &evs[0] else {
        panic!("dunning starts: {evs:?}")
    };
    assert_eq!(
        d.retries,
        vec![
            at("2026-01-16T00:00:00Z"),
            at("2026-01-18T00:00:00Z"),
            at("2026-01-22T00:00:00Z")
        ]
    );
    assert_eq!(d.suspends_at, at("2026-01-29T00:00:00Z"));
    let g = g.and(fail("ch_1"), T0);
    let case = g.0.dunning().unwrap();
    assert_eq!(
        (case.attempt(), case.next_retry_at()),
        (2, Some(d.retries[0]))
    );
    // A second failure counts, it does not start again.
    let g = g.and(fail("ch_2"), "2026-01-16T00:00:00Z");
    assert_eq!(g.0.dunning().unwrap().attempt(), 3);
    assert_eq!(g.0.dunning().unwrap().next_retry_at(), Some(d.retries[1]));
    assert_eq!(
        g.when(Command::SuspendDue, "2026-01-28T23:59:59Z"),
        Ok(vec![])
    );
    let g = g.and(Command::SuspendDue, "2026-01-29T00:00:00Z");
    assert!(g.0.suspended());
    assert_eq!(
        g.when(
            usage("u1", dec!(1), "2026-01-29T00:00:00Z"),
            "2026-01-29T00:00:00Z"
        ),
        Err(DomainError::LicenseSuspended)
    );
    let paid = g
        .when(
            Command::RecordPayment {
                invoice_number: "INV-2026-000001".into(),
                reference: "ch_3".into(),
                outcome: PaymentOutcome::Succeeded,
            },
            "2026-01-30T00:00:00Z",
        )
        .unwrap();
    assert!(matches!(
        paid.last(),
        Some(AccountEvent::LicenseReinstated(_))
    ));
}

#[test]
fn refunds_are_bounded_by_what_was_paid() {
    let pay = |reference: &str, outcome: PaymentOutcome| Command::RecordPayment {
        invoice_number: "INV-2026-000001".into(),
        reference: reference.into(),
        outcome,
    };
    let g = Given::opened(dec!(0), None, T0);
    assert!(matches!(
        g.when(
            pay("re_0", PaymentOutcome::Refunded { amount: dec!(1) }),
            T0
        ),
        Err(DomainError::ExceedsPayment { .. })
    ));
    let g = g.and(pay("ch_1", PaymentOutcome::Succeeded), T0).and(
        pay("re_1", PaymentOutcome::Refunded { amount: dec!(40) }),
        T0,
    );
    assert_eq!(invoice(&g).refunded, dec!(40));
    assert_eq!(
        g.when(
            pay("re_1", PaymentOutcome::Refunded { amount: dec!(40) }),
            T0
        ),
        Ok(vec![])
    );
    assert!(matches!(
        g.when(
            pay(
                "re_2",
                PaymentOutcome::Refunded {
                    amount: dec!(50.01)
                }
            ),
            T0
        ),
        Err(DomainError::ExceedsPayment { .. })
    ));
}

#[test]
fn a_processors_cumulative_refunds_are_recorded_once_whatever_order_they_arrive_in() {
    let pay = |reference: &str, outcome: PaymentOutcome| Command::RecordPayment {
        invoice_number: "INV-2026-000001".into(),
        reference: reference.into(),
        outcome,
    };
    let g = Given::opened(dec!(0), None, T0).and(pay("ch_1", PaymentOutcome::Succeeded), T0);
    // Two partial refunds of one charge, each saying the total so far —
    // decided one after the other, as the writer does, even if both
    // webhooks were read against a state that had neither.
    let g = g.and(
        pay("evt_1", PaymentOutcome::RefundedTo { total: dec!(10) }),
        T0,
    );
    assert_eq!(invoice(&g).refunded, dec!(10));
    let g = g.and(
        pay("evt_2", PaymentOutcome::RefundedTo { total: dec!(25) }),
        T0,
    );
    assert_eq!(invoice(&g).refunded, dec!(25), "25 refunded in all, not 35");
    // A late, older delivery records nothing; so does the same total again.
    assert_eq!(
        g.when(
            pay("evt_0", PaymentOutcome::RefundedTo { total: dec!(5) }),
            T0
        ),
        Ok(vec![])
    );
    assert_eq!(
        g.when(
            pay("evt_3", PaymentOutcome::RefundedTo { total: dec!(25) }),
            T0
        ),
        Ok(vec![])
    );
    // Beyond what was paid is refused like any refund.
    assert!(matches!(
        g.when(
            pay(
                "evt_4",
                PaymentOutcome::RefundedTo {
                    total: dec!(100000)
                }
            ),
            T0
        ),
        Err(DomainError::ExceedsPayment { .. })
    ));
}

fn consumed(g: &Given, id: &str) -> Option<CreditsConsumed> {
    // What the writer would look up: here, rebuilt from the decision.
    let _ = g;
    Some(CreditsConsumed {
        usage_id: id.into(),
        amount: dec!(30),
        occurred_at: at("2026-01-20T00:00:00Z"),
        product: None,
        feature: None,
        metadata: None,
        period_used: dec!(30),
    })
}

fn cancel(id: &str, found: Option<CreditsConsumed>) -> Command {
    Command::CancelUsage {
        usage_id: id.into(),
        reason: "wrong meter".into(),
        found,
    }
}

#[test]
fn a_cancellation_in_the_open_period_gives_the_credits_back_at_once() {
    let g = Given::opened(dec!(10), Some(dec!(100)), T0).and(
        usage("u1", dec!(30), "2026-01-20T00:00:00Z"),
        "2026-01-20T00:00:00Z",
    );
    assert_eq!(g.0.available(), dec!(80));
    let found = consumed(&g, "u1");
    let g = g.and(cancel("u1", found.clone()), "2026-01-21T00:00:00Z");
    assert_eq!(g.0.available(), dec!(110));
    assert_eq!(
        g.when(cancel("u1", found), "2026-01-21T00:00:00Z"),
        Err(DomainError::AlreadyCancelled {
            usage_id: "u1".into()
        })
    );
    assert_eq!(
        g.when(cancel("nope", None), "2026-01-21T00:00:00Z"),
        Err(DomainError::UnknownUsage {
            usage_id: "nope".into()
        })
    );
}

#[test]
fn a_cancellation_in_an_invoiced_period_is_credited_on_the_next_close() {
    let close = |n: &str| Command::ClosePeriod {
        invoice_number: n.into(),
    };
    let g = Given::opened(dec!(10), Some(dec!(100)), T0)
        .and(
            usage("u1", dec!(30), "2026-01-20T00:00:00Z"),
            "2026-01-20T00:00:00Z",
        )
        .and(close("INV-2026-000002"), "2026-02-15T00:00:00Z");
    // Charged 30 − 10 base = 20; cancelling the 30 credits the 20.
    let found = consumed(&g, "u1");
    let g = g.and(cancel("u1", found), "2026-02-16T00:00:00Z");
    let evs = g
        .when(close("INV-2026-000003"), "2026-03-15T00:00:00Z")
        .unwrap();
    let cn = evs
        .iter()
        .find_map(|e| match e {
            AccountEvent::CreditNoteIssued(c) => Some(c),
            _ => None,
        })
        .expect("a credit note on the next close");
    assert_eq!(cn.invoice_number, "INV-2026-000002");
    assert_eq!(cn.total, dec!(20.00));
    assert_eq!(cn.lines[0].usage_id.as_deref(), Some("u1"));
}

#[test]
fn a_close_below_zero_issues_a_credit_note_not_a_negative_invoice() {
    // Yearly, so the close after the downgrade bills no new fee.
    let mut open = open_cmd(dec!(0), None);
    if let Command::Open(o) = &mut open {
        o.billing_frequency = BillingFrequency::Yearly;
    }
    let g = Given::events(decide(&AccountState::default(), open, &ctx(T0)).unwrap());
    let g = g.and(Command::ChangePlan(plan(0, 0)), "2026-01-20T00:00:00Z");
    let evs = g
        .when(
            Command::ClosePeriod {
                invoice_number: "INV-2026-000002".into(),
            },
            "2026-02-15T00:00:00Z",
        )
        .unwrap();
    assert!(!evs
        .iter()
        .any(|e| matches!(e, AccountEvent::InvoiceIssued(_))));
    let cn = evs
        .iter()
        .find_map(|e| match e {
            AccountEvent::CreditNoteIssued(c) => Some(c),
            _ => None,
        })
        .expect("a credit note for the difference");
    assert!(cn.total > Decimal::ZERO);
    assert_eq!(cn.invoice_number, "INV-2026-000001");
}

proptest! {
    /// The preview taken just before a close is the invoice it issues.
    #[test]
    fn the_upcoming_invoice_is_what_the_close_issues(
        amounts in proptest::collection::vec(1u32..5_000, 0..12),
        seats in 0u32..8,
    ) {
        let mut g = Given::opened(dec!(10), Some(dec!(500)), T0);
        for (i, a) in amounts.iter().enumerate() {
            let cmd = usage(&format!("u{i}"), Decimal::new(i64::from(*a), 2), "2026-01-20T00:00:00Z");
            if let Ok(evs) = g.when(cmd, "2026-01-20T00:00:00Z") {
                for e in &evs { g.0.apply(e); }
            }
        }
        if seats > 0 {
            g = g.and(Command::ChangePlan(plan(5 + seats, 20)), "2026-01-25T00:00:00Z");
        }
        let preview = crate::correction::upcoming(&g.0, &crate::tax::TaxTable::EMPTY).unwrap();
        let evs = g.when(Command::ClosePeriod { invoice_number: "INV-2026-000002".into() }, "2026-02-15T00:00:00Z").unwrap();
        let issued = evs.iter().find_map(|e| match e {
            AccountEvent::InvoiceIssued(i) => Some(i.clone()),
            _ => None,
        }).unwrap();
        prop_assert_eq!(preview.lines, issued.lines);
        prop_assert_eq!(preview.total, issued.total);
        prop_assert_eq!(preview.issued_at, issued.issued_at);
    }
}

// ------------------------------------------------ tax and the issuer (SPEC §14)

fn legal() -> &'static crate::tax::Legal {
    use std::sync::OnceLock;
    static L: OnceLock<crate::tax::Legal> = OnceLock::new();
    L.get_or_init(|| crate::tax::Legal {
        issuer: Some(crate::tax::Issuer {
            logo_png: None,
            legal_name: "Muster GmbH".into(),
            address: vec!["Hauptstr. 1".into(), "80331 München".into()],
            country: "DE".into(),
            tax_id: Some("DE111111111".into()),
            registration: None,
            payment_instructions: None,
            iban: None,
            email: None,
        }),
        rates: crate::tax::TaxTable::new(vec![
            ("DE".into(), dec!(19)),
            ("US-CA".into(), dec!(7.25)),
        ])
        .unwrap(),
    })
}

fn taxed_open(treatment: crate::tax::TaxTreatment, country: &str) -> Command {
    let Command::Open(mut o) = open_cmd(dec!(0), Some(dec!(12))) else {
        unreachable!()
    };
    o.tax = Some(crate::tax::TaxProfile {
        country: country.into(),
        customer_tax_id: Some("DE123456789".into()),
        treatment,
        exempt_reason: (treatment == crate::tax::TaxTreatment::Exempt)
            .then(|| "Charity, §4 Nr. 18 UStG".into()),
    });
    Command::Open(o)
}

fn legal_ctx(now: &str) -> Context {
    Context {
        legal: Some(legal()),
        ..ctx(now)
    }
}

fn issued(events: &[AccountEvent]) -> &InvoiceIssued {
    events
        .iter()
        .find_map(|e| match e {
            AccountEvent::InvoiceIssued(i) => Some(i),
            _ => None,
        })
        .expect("an invoice")
}

#[test]
fn a_standard_invoice_adds_the_countrys_rate_to_the_net_and_records_the_issuer() {
    let ev = decide(
        &AccountState::default(),
        taxed_open(crate::tax::TaxTreatment::Standard, "DE"),
        &legal_ctx("2026-01-15T00:00:00Z"),
    )
    .unwrap();
    let inv = issued(&ev);
    let legal = inv.legal.as_deref().unwrap();
    let tax = legal.tax.as_ref().unwrap();
    // 5 × 10 + 20 × 2 = 90.00 net, 19 % = 17.10, gross 107.10.
    assert_eq!(tax.net, dec!(90.00));
    assert_eq!(tax.tax_total(), dec!(17.10));
    assert_eq!(inv.total.to_string(), "107.10");
    assert_eq!(legal.issuer.as_ref().unwrap().legal_name, "Muster GmbH");
    assert_eq!(legal.language, "en");
    assert_eq!(legal.layout, 3);
}

#[test]
fn reverse_charge_and_exempt_invoices_carry_no_tax_but_their_facts() {
    for (t, c) in [
        (crate::tax::TaxTreatment::ReverseCharge, "DE"),
        (crate::tax::TaxTreatment::Exempt, "FR"),
    ] {
        let ev = decide(
            &AccountState::default(),
            taxed_open(t, c),
            &legal_ctx("2026-01-15T00:00:00Z"),
        )
        .unwrap();
        let inv = issued(&ev);
        let tax = inv.legal.as_deref().unwrap().tax.as_ref().unwrap();
        assert_eq!(tax.treatment, t);
        assert_eq!(tax.tax_total(), dec!(0));
        assert_eq!(inv.total, dec!(90.00));
    }
    // Standard needs a configured rate; exempt needs a reason.
    assert!(matches!(
        decide(
            &AccountState::default(),
            taxed_open(crate::tax::TaxTreatment::Standard, "ES"),
            &legal_ctx("2026-01-15T00:00:00Z"),
        ),
        Err(DomainError::Invalid(_))
    ));
}

#[test]
fn credit_notes_carry_the_invoices_rate_and_a_full_credit_reverses_all_its_tax() {
    let c = legal_ctx("2026-01-16T00:00:00Z");
    let mut st = decide(
        &AccountState::default(),
        taxed_open(crate::tax::TaxTreatment::Standard, "US-CA"),
        &legal_ctx("2026-01-15T00:00:00Z"),
    )
    .map(|ev| Given::events(ev).0)
    .unwrap();
    // 90.00 net, 7.25 % = 6.525 → 6.53, gross 96.53.
    assert_eq!(
        st.invoices.get("INV-2026-000001").unwrap().total,
        dec!(96.53)
    );
    let part = decide(
        &st,
        Command::IssueCreditNote {
            invoice_number: "INV-2026-000001".into(),
            reason: "goodwill".into(),
            lines: Some(vec![CreditNoteLine {
                description: "goodwill".into(),
                amount: dec!(10.00),
                usage_id: None,
            }]),
        },
        &c,
    )
    .unwrap();
    for e in &part {
        st.apply(e);
    }
    let AccountEvent::CreditNoteIssued(cn) = &part[0] else {
        panic!("{part:?}")
    };
    assert_eq!(cn.total, dec!(10.73), "10.00 + 0.725 → 0.73");
    let full = decide(
        &st,
        Command::IssueCreditNote {
            invoice_number: "INV-2026-000001".into(),
            reason: "cancel".into(),
            lines: None,
        },
        &c,
    )
    .unwrap();
    for e in &full {
        st.apply(e);
    }
    let i = st.invoices.get("INV-2026-000001").unwrap();
    let t = i.tax.as_deref().unwrap();
    assert_eq!(t.credited_tax, t.facts.tax_total());
    assert_eq!(i.credited, i.total);
    assert_eq!(i.status, InvoiceStatus::Credited);
}

#[test]
fn invoices_without_a_configuration_keep_total_equal_to_net() {
    let ev = decide(
        &AccountState::default(),
        open_cmd(dec!(0), None),
        &ctx("2026-01-15T00:00:00Z"),
    )
    .unwrap();
    let inv = issued(&ev);
    let legal = inv.legal.as_deref().unwrap();
    assert!(legal.issuer.is_none() && legal.tax.is_none());
    assert_eq!(inv.total, dec!(90.00));
}

proptest! {
    /// The invoice rule with tax: the net is the sum of the rounded lines,
    /// the tax the net at the rate half-up to cents, the total net + tax.
    #[test]
    fn net_plus_tax_is_the_gross_total(amounts in prop::collection::vec(1i64..1_000_000, 1..12)) {
        let mut st = decide(
            &AccountState::default(),
            taxed_open(crate::tax::TaxTreatment::Standard, "US-CA"),
            &legal_ctx("2026-01-15T00:00:00Z"),
        ).map(|ev| Given::events(ev).0).unwrap();
        st.pending_proration = amounts.iter().map(|a| InvoiceLine {
            kind: LineKind::Proration, description: String::new(), quantity: Decimal::ONE,
            unit_price: Decimal::new(*a, 4), amount: round_cents(Decimal::new(*a, 4)), prorated: None,
        }).collect();
        let ev = decide(&st, Command::ClosePeriod { invoice_number: "INV-2026-000002".into() },
            &legal_ctx("2026-02-15T00:00:00Z")).unwrap();
        let inv = issued(&ev);
        let tax = inv.legal.as_deref().unwrap().tax.as_ref().unwrap();
        prop_assert_eq!(tax.net, total_of(&inv.lines));
        prop_assert_eq!(tax.tax_total(), round_cents(tax.net * dec!(7.25) / dec!(100)));
        prop_assert_eq!(inv.total, tax.net + tax.tax_total());
        prop_assert_eq!(inv.total.scale(), 2);
    }
}
