//! Given/when/then over `decide`: rule violations as much as happy paths.

use super::*;
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
    Context { now: at(now) }
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
        succeeded: false,
        failure_reason: Some("card declined".into()),
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
        succeeded,
        failure_reason: None,
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
        })
    };
    assert_eq!(
        g.when(
            Command::ChangeDetails(AccountDetailsChanged {
                name: Some("Acme".into()),
                billing_email: None,
                address: None,
                email_language: Some("en".into()),
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
        let c = Context { now };
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
                    &Context { now },
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
            unit_price: Decimal::new(*a, 4), amount: round_cents(Decimal::new(*a, 4)),
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
        status: InvoiceStatus::Unpaid,
        pdf_recorded: false,
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
