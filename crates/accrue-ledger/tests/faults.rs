//! Fail-stop, proven over a fault-injecting store on both real backends:
//! after every injected fault and a restart there is no double count, no
//! lost acknowledged event, invoice numbers stay gapless, and the live read
//! models equal a rebuild.

use std::sync::Arc;

use accrue_core::events::Plan;
use accrue_core::period::BillingFrequency;
use accrue_core::{Command, OpenAccount, UsageInput};
use accrue_ledger::{ClockMode, Ledger, LedgerError, UsageItem, UsageOutcome};
use accrue_projections::ReadModels;
use accrue_store::faulty::{FaultyStore, When};
use accrue_store::postgres::{schema_for, test_url, PgStore};
use accrue_store::sqlite::SqliteStore;
use accrue_store::EventStore;
use chrono::{DateTime, Utc};
use rust_decimal_macros::dec;

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

struct Db {
    backend: Backend,
    dir: tempfile::TempDir,
}

impl Db {
    fn new(backend: Backend) -> Db {
        Db {
            backend,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn store(&self) -> Arc<dyn EventStore> {
        match self.backend {
            Backend::Sqlite => {
                Arc::new(SqliteStore::open(self.dir.path().join("ledger.db")).unwrap())
            }
            Backend::Postgres => Arc::new(
                PgStore::open_in_schema(&test_url(), &schema_for(self.dir.path())).unwrap(),
            ),
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Backend::Postgres = self.backend {
            accrue_store::postgres::drop_schema(&test_url(), &schema_for(self.dir.path()));
        }
    }
}

fn open_cmd(id: &str) -> Command {
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
        base_credits: dec!(0),
        credit_limit: Some(dec!(100)),
        invoice_number: String::new(),
        tax: None,
    }))
}

fn usage(id: &str) -> UsageItem {
    UsageItem::Valid {
        account_id: "acme".into(),
        input: UsageInput {
            usage_id: id.into(),
            amount: dec!(0.25),
            occurred_at: Utc::now(),
            product: None,
            feature: None,
            metadata: None,
        },
        occurred_at_given: false,
    }
}

fn open(store: Arc<dyn EventStore>) -> Ledger {
    Ledger::open(store, ClockMode::Manual(at("2026-01-15T00:00:00Z"))).unwrap()
}

fn assert_rebuild_equals_live(ledger: &Ledger) {
    let live = ledger.read().clone();
    let mut rebuilt = ReadModels::default();
    accrue_ledger::replay_into(ledger.store().as_ref(), &mut rebuilt, |_, _| {}).unwrap();
    assert_eq!(rebuilt, live, "live read models equal a rebuild");
}

fn invoice_numbers(ledger: &Ledger) -> Vec<String> {
    let mut n: Vec<String> = ledger.read().invoices.keys().cloned().collect();
    n.sort();
    n
}

fn assert_gapless(numbers: &[String]) {
    for (i, n) in numbers.iter().enumerate() {
        assert_eq!(n, &format!("INV-2026-{:06}", i + 1), "{numbers:?}");
    }
}

/// An append that fails (before or after it is durable) stops the writer:
/// the request is not acknowledged, later writes are refused, and after a
/// restart a retry of everything counts each event exactly once.
fn failed_append_stops_the_writer(backend: Backend, when: When) {
    let db = Db::new(backend);
    let faulty = Arc::new(FaultyStore::new(db.store()));
    let ledger = open(faulty.clone());
    ledger.execute_blocking("acme", open_cmd("acme")).unwrap();
    let acked = ledger
        .ingest_blocking((0..10).map(|i| usage(&format!("a{i}"))).collect())
        .unwrap();
    assert!(acked.iter().all(|o| *o == UsageOutcome::Accepted));

    faulty.fail_append(1, when);
    let r = ledger.ingest_blocking((0..10).map(|i| usage(&format!("b{i}"))).collect());
    assert!(matches!(r, Err(LedgerError::Failed(_))), "{r:?}");
    assert!(!ledger.is_ready(), "not ready after a fault");
    // Fail-stop: nothing more is taken, even though the store works again.
    let r = ledger.ingest_blocking(vec![usage("c0")]);
    assert!(matches!(r, Err(LedgerError::Failed(_))), "{r:?}");
    let r = ledger.execute_blocking("beta", open_cmd("beta"));
    assert!(matches!(r, Err(LedgerError::Failed(_))), "{r:?}");
    ledger.shutdown();
    drop(ledger);

    // Restart on the truth; the producer retries everything it sent.
    let again = open(faulty.inner().clone());
    let retry = again
        .ingest_blocking(
            (0..10)
                .map(|i| usage(&format!("a{i}")))
                .chain((0..10).map(|i| usage(&format!("b{i}"))))
                .collect(),
        )
        .unwrap();
    assert!(retry[..10].iter().all(|o| *o == UsageOutcome::Duplicate));
    let expected_b = match when {
        When::BeforeDurable => UsageOutcome::Accepted,
        When::AfterDurable => UsageOutcome::Duplicate,
    };
    assert!(retry[10..].iter().all(|o| *o == expected_b), "{retry:?}");
    // 20 events of 0.25, each counted once.
    assert_eq!(again.read().accounts["acme"].used, dec!(5.00));
    assert_rebuild_equals_live(&again);
    again.shutdown();
}

#[test]
fn sqlite_append_failing_before_durable_stops_the_writer() {
    failed_append_stops_the_writer(Backend::Sqlite, When::BeforeDurable);
}

#[test]
fn sqlite_append_failing_after_durable_stops_the_writer() {
    failed_append_stops_the_writer(Backend::Sqlite, When::AfterDurable);
}

#[test]
fn postgres_append_failing_before_durable_stops_the_writer() {
    failed_append_stops_the_writer(Backend::Postgres, When::BeforeDurable);
}

#[test]
fn postgres_append_failing_after_durable_stops_the_writer() {
    failed_append_stops_the_writer(Backend::Postgres, When::AfterDurable);
}

/// A store error while confirming an idempotency key answers "unavailable"
/// for that request with nothing decided; it is never a second acceptance.
fn lookup_error_is_never_a_second_acceptance(backend: Backend) {
    let db = Db::new(backend);
    let faulty = Arc::new(FaultyStore::new(db.store()));
    let ledger = open(faulty.clone());
    ledger.execute_blocking("acme", open_cmd("acme")).unwrap();
    assert_eq!(
        ledger.ingest_blocking(vec![usage("u1")]).unwrap(),
        vec![UsageOutcome::Accepted]
    );
    // Make sure u1 is committed, not in flight, so its lookup reads the store.
    ledger.ingest_blocking(vec![usage("u2")]).unwrap();
    faulty.fail_reads(true);
    let r = ledger.ingest_blocking(vec![usage("u3"), usage("u1")]);
    assert!(matches!(r, Err(LedgerError::Unavailable(_))), "{r:?}");
    faulty.fail_reads(false);
    // Only a lookup failed: the ledger still takes writes.
    assert!(ledger.is_ready());
    assert_eq!(
        ledger
            .ingest_blocking(vec![usage("u3"), usage("u1")])
            .unwrap(),
        vec![UsageOutcome::Accepted, UsageOutcome::Duplicate]
    );
    assert_eq!(ledger.read().accounts["acme"].used, dec!(0.75));
    assert_rebuild_equals_live(&ledger);
    ledger.shutdown();
}

#[test]
fn sqlite_lookup_error_is_never_a_second_acceptance() {
    lookup_error_is_never_a_second_acceptance(Backend::Sqlite);
}

#[test]
fn postgres_lookup_error_is_never_a_second_acceptance() {
    lookup_error_is_never_a_second_acceptance(Backend::Postgres);
}

/// A fault in the middle of a clock move's closes: after a restart every
/// close is finished exactly once and invoice numbers stay gapless.
fn fault_during_closes_keeps_invoice_numbers_gapless(backend: Backend, when: When) {
    let db = Db::new(backend);
    let faulty = Arc::new(FaultyStore::new(db.store()));
    let ledger = open(faulty.clone());
    for a in ["acme", "beta", "gamma"] {
        ledger.execute_blocking(a, open_cmd(a)).unwrap();
    }
    // 3 opening invoices so far. The clock move appends ClockAdvanced, then
    // the closes: fail the closes' group.
    faulty.fail_append(2, when);
    let r = ledger.advance_clock_blocking(at("2026-02-15T00:00:00Z"));
    assert!(r.is_err(), "{r:?}");
    ledger.shutdown();
    drop(ledger);
    let again = open(faulty.inner().clone());
    // The stored clock is at 02-15 (ClockAdvanced was durable): the closes
    // were finished at start.
    let numbers = invoice_numbers(&again);
    assert_eq!(numbers.len(), 6, "{numbers:?}");
    assert_gapless(&numbers);
    again
        .advance_clock_blocking(at("2026-03-15T00:00:00Z"))
        .unwrap();
    let numbers = invoice_numbers(&again);
    assert_eq!(numbers.len(), 9, "{numbers:?}");
    assert_gapless(&numbers);
    assert_rebuild_equals_live(&again);
    again.shutdown();
}

#[test]
fn sqlite_fault_during_closes_keeps_numbers_gapless() {
    fault_during_closes_keeps_invoice_numbers_gapless(Backend::Sqlite, When::BeforeDurable);
    fault_during_closes_keeps_invoice_numbers_gapless(Backend::Sqlite, When::AfterDurable);
}

#[test]
fn postgres_fault_during_closes_keeps_numbers_gapless() {
    fault_during_closes_keeps_invoice_numbers_gapless(Backend::Postgres, When::BeforeDurable);
    fault_during_closes_keeps_invoice_numbers_gapless(Backend::Postgres, When::AfterDurable);
}

/// A slow store delays; it never loses or doubles what it acknowledged.
#[test]
fn a_slow_store_loses_nothing_acknowledged() {
    let db = Db::new(Backend::Sqlite);
    let faulty = Arc::new(FaultyStore::new(db.store()));
    let ledger = open(faulty.clone());
    ledger.execute_blocking("acme", open_cmd("acme")).unwrap();
    faulty.delay_appends(std::time::Duration::from_millis(20));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let l = ledger.clone();
            std::thread::spawn(move || {
                for i in 0..5 {
                    let o = l.ingest_blocking(vec![usage(&format!("{t}-{i}"))]).unwrap();
                    assert_eq!(o, vec![UsageOutcome::Accepted]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    ledger.shutdown();
    drop(ledger);
    let again = open(faulty.inner().clone());
    assert_eq!(again.read().accounts["acme"].used, dec!(5.00));
    again.shutdown();
}
