//! The ledger against a real SQLite store in a temporary folder.

use std::sync::Arc;

use accrue_core::events::Plan;
use accrue_core::period::BillingFrequency;
use accrue_core::{Command, OpenAccount, UsageInput};
use accrue_ledger::{ClockMode, Ledger, UsageItem, UsageOutcome};
use accrue_projections::ReadModels;
use accrue_store::sqlite::SqliteStore;
use accrue_store::EventStore;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn open_ledger(dir: &std::path::Path, now: &str) -> Ledger {
    let store: Arc<dyn EventStore> = Arc::new(SqliteStore::open(dir.join("ledger.db")).unwrap());
    Ledger::open(store, ClockMode::Manual(at(now))).unwrap()
}

fn open_cmd(id: &str, base: Decimal, limit: Option<Decimal>) -> Command {
    Command::Open(Box::new(OpenAccount {
        account_id: id.into(),
        name: id.into(),
        serial_number: format!("SN-{id}"),
        billing_email: format!("billing@{id}.test"),
        email_language: "en".into(),
        address: None,
        currency: "USD".into(),
        billing_frequency: BillingFrequency::Monthly,
        anchor_day: None,
        plan: Plan {
            full_seats: 1,
            full_seat_price: dec!(10),
            viewer_seats: 0,
            viewer_seat_price: dec!(0),
            data_management: false,
            data_management_price: dec!(0),
        },
        base_credits: base,
        credit_limit: limit,
        invoice_number: String::new(),
    }))
}

fn usage(account: &str, id: &str, amount: Decimal) -> UsageItem {
    UsageItem::Valid {
        account_id: account.into(),
        input: UsageInput {
            usage_id: id.into(),
            amount,
            occurred_at: Utc::now(),
            product: None,
            feature: None,
            metadata: None,
        },
        occurred_at_given: false,
    }
}

#[test]
fn concurrent_clients_never_overdraw_and_the_total_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open_ledger(dir.path(), "2026-01-15T00:00:00Z");
    ledger.execute_blocking("acme", open_cmd("acme", dec!(1), Some(dec!(9.99)))).unwrap();
    // 8 clients × 200 events × 0.0137 = 21.92 asked for; 10.99 available.
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let l = ledger.clone();
            std::thread::spawn(move || {
                let mut accepted = Decimal::ZERO;
                for chunk in 0..20 {
                    let items = (0..10).map(|i| usage("acme", &format!("t{t}-{chunk}-{i}"), dec!(0.0137))).collect();
                    for o in l.ingest_blocking(items).unwrap() {
                        if o == UsageOutcome::Accepted {
                            accepted += dec!(0.0137);
                        }
                    }
                }
                accepted
            })
        })
        .collect();
    let accepted: Decimal = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let used = ledger.read().accounts["acme"].used;
    assert_eq!(used, accepted, "the read model matches the acknowledgements");
    assert!(used <= dec!(10.99));
    // 10.99 / 0.0137 = 802.19…: exactly 802 fit.
    assert_eq!(used, dec!(0.0137) * Decimal::from(802));
}

#[test]
fn retries_are_counted_once_and_conflicts_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open_ledger(dir.path(), "2026-01-15T00:00:00Z");
    ledger.execute_blocking("acme", open_cmd("acme", dec!(100), None)).unwrap();
    let out = ledger
        .ingest_blocking(vec![usage("acme", "a", dec!(1)), usage("acme", "a", dec!(1)), usage("acme", "a", dec!(2))])
        .unwrap();
    assert_eq!(out[0], UsageOutcome::Accepted);
    assert_eq!(out[1], UsageOutcome::Duplicate);
    assert!(matches!(out[2], UsageOutcome::Rejected { reason: "id_conflict", .. }));
    // Against the committed event, and after a restart.
    assert_eq!(ledger.ingest_blocking(vec![usage("acme", "a", dec!(1))]).unwrap()[0], UsageOutcome::Duplicate);
    ledger.shutdown();
    drop(ledger);
    let ledger = open_ledger(dir.path(), "2026-01-15T00:00:00Z");
    let out = ledger.ingest_blocking(vec![usage("acme", "a", dec!(1)), usage("acme", "a", dec!(3)), usage("other", "a", dec!(1))]).unwrap();
    assert_eq!(out[0], UsageOutcome::Duplicate);
    assert!(matches!(out[1], UsageOutcome::Rejected { reason: "id_conflict", .. }));
    assert!(matches!(out[2], UsageOutcome::Rejected { reason: "unknown_account", .. }));
    assert_eq!(ledger.read().accounts["acme"].used, dec!(1));
}

#[test]
fn a_rebuild_from_position_zero_equals_the_live_read_models() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open_ledger(dir.path(), "2026-01-15T00:00:00Z");
    for a in ["a", "b", "c"] {
        ledger.execute_blocking(a, open_cmd(a, dec!(1), Some(dec!(20)))).unwrap();
    }
    for i in 0..300 {
        let a = ["a", "b", "c"][i % 3];
        ledger.ingest_blocking(vec![usage(a, &format!("u{i}"), dec!(0.1))]).unwrap();
    }
    ledger.advance_clock_blocking(at("2026-03-20T00:00:00Z")).unwrap();
    ledger.ingest_blocking(vec![usage("a", "late", dec!(0.5))]).unwrap();
    let live = ledger.read().clone();
    let mut rebuilt = ReadModels::default();
    accrue_ledger::replay_into(ledger.store().as_ref(), &mut rebuilt, |_, _| {}).unwrap();
    assert_eq!(rebuilt, live);
    assert_eq!(live.accounts["a"].used, dec!(0.5));
}

#[test]
fn the_manual_clock_never_runs_backwards_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open_ledger(dir.path(), "2026-01-15T00:00:00Z");
    ledger.advance_clock_blocking(at("2026-02-01T00:00:00Z")).unwrap();
    assert!(ledger.advance_clock_blocking(at("2026-01-20T00:00:00Z")).is_err());
    ledger.shutdown();
    drop(ledger);
    let ledger = open_ledger(dir.path(), "2026-01-15T00:00:00Z");
    assert_eq!(ledger.now(), at("2026-02-01T00:00:00Z"));
}

#[test]
fn invoice_numbers_are_gapless_across_closes_and_years() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open_ledger(dir.path(), "2026-11-15T00:00:00Z");
    for a in ["a", "b", "c", "d"] {
        ledger.execute_blocking(a, open_cmd(a, dec!(0), None)).unwrap();
    }
    ledger.advance_clock_blocking(at("2027-02-16T00:00:00Z")).unwrap();
    let read = ledger.read();
    let mut by_year: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    let mut numbers: Vec<_> = read.invoices.keys().cloned().collect();
    numbers.sort();
    for n in &numbers {
        let (y, s) = n.trim_start_matches("INV-").split_once('-').unwrap();
        by_year.entry(y.to_string()).or_default().push(s.parse().unwrap());
    }
    // 4 opening + 4 × (Dec 15) = 8 in 2026; 4 × (Jan 15, Feb 15) = 8 in 2027.
    assert_eq!(by_year["2026"], (1..=8).collect::<Vec<_>>());
    assert_eq!(by_year["2027"], (1..=8).collect::<Vec<_>>());
}
