//! Memory that does not grow with history (SPEC §12): the usage index's
//! large runs go to the store beside the log, behind Bloom filters, and
//! every retry of an old id is still a duplicate — live, after a restart
//! from a snapshot and after a replay from position 0 — on both stores.
//! Small thresholds (set before the ledger starts, in this test process
//! only) make a few thousand events spill.

use std::sync::Arc;
use std::time::{Duration, Instant};

use accrue_core::events::Plan;
use accrue_core::period::BillingFrequency;
use accrue_core::{Command, OpenAccount, UsageInput};
use accrue_ledger::idempotency::{key, store_fingerprint};
use accrue_ledger::{ClockMode, Ledger, UsageItem, UsageOutcome};
use accrue_store::sqlite::SqliteStore;
use accrue_store::EventStore;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn open_cmd(id: &str) -> Command {
    Command::Open(Box::new(OpenAccount {
        account_id: id.into(),
        name: format!("Customer {id}"),
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
        base_credits: dec!(100000),
        credit_limit: Some(dec!(500)),
        invoice_number: String::new(),
        tax: None,
    }))
}

fn usage(id: &str, amount: Decimal) -> UsageItem {
    UsageItem::Valid {
        account_id: "acme".into(),
        input: UsageInput {
            usage_id: id.into(),
            amount,
            occurred_at: at("2026-01-15T00:00:00Z"),
            product: None,
            feature: None,
            metadata: None,
        },
        occurred_at_given: true,
    }
}

const N: usize = 6_000;

fn ingest(ledger: &Ledger, ids: std::ops::Range<usize>, amount: Decimal) -> Vec<UsageOutcome> {
    let mut out = Vec::new();
    let ids: Vec<usize> = ids.collect();
    for chunk in ids.chunks(500) {
        let items = chunk
            .iter()
            .map(|i| usage(&format!("u{i}"), amount))
            .collect();
        out.extend(ledger.ingest_blocking(items).unwrap());
    }
    out
}

fn spilled(store: &dyn EventStore, id: &str) -> bool {
    !store
        .usage_key_positions(store_fingerprint(key("acme", id)))
        .unwrap()
        .is_empty()
}

fn open(store: &Arc<dyn EventStore>) -> Ledger {
    Ledger::open(store.clone(), ClockMode::Manual(at("2026-01-15T00:00:00Z"))).unwrap()
}

fn old_ids_stay_duplicates(open_store: &dyn Fn() -> Arc<dyn EventStore>) {
    // Fold the recent keys every 500, spill runs of 1,000 or more.
    std::env::set_var("ACCRUE_USAGE_FREEZE_KEYS", "500");
    std::env::set_var("ACCRUE_USAGE_SPILL_KEYS", "1000");
    accrue_ledger::snapshot::set_policy(2_000, 3600);
    let store = open_store();
    let ledger = open(&store);
    ledger.execute_blocking("acme", open_cmd("acme")).unwrap();
    let first = ingest(&ledger, 0..N, dec!(0.01));
    assert!(
        first.iter().all(|o| *o == UsageOutcome::Accepted),
        "{first:?}"
    );
    // The oldest keys reach the store (written beside the log, in the
    // background), and are found there.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !spilled(store.as_ref(), "u0") {
        assert!(Instant::now() < deadline, "no run was spilled");
        // Folds and spills happen between groups: keep the writer busy.
        ingest(&ledger, N..N + 1, dec!(0.01));
        std::thread::sleep(Duration::from_millis(20));
    }
    let check = |ledger: &Ledger, what: &str| {
        // Every retry, old or new, is a duplicate; changed content is a
        // conflict; a fresh id is accepted exactly once.
        let again = ingest(ledger, 0..N, dec!(0.01));
        let not_dup: Vec<_> = again
            .iter()
            .enumerate()
            .filter(|(_, o)| **o != UsageOutcome::Duplicate)
            .take(3)
            .collect();
        assert!(
            not_dup.is_empty(),
            "{what}: retries not duplicates: {not_dup:?}"
        );
        let changed = ingest(ledger, 0..50, dec!(0.02));
        assert!(
            changed.iter().all(|o| matches!(
                o,
                UsageOutcome::Rejected {
                    reason: "id_conflict",
                    ..
                }
            )),
            "{what}: {changed:?}"
        );
    };
    check(&ledger, "live");
    // A snapshot taken after the spill (its index lists spilled runs, so a
    // restart from it relies on the filter): more fresh events, then wait.
    let before = store
        .snapshot_positions()
        .unwrap()
        .into_iter()
        .max()
        .unwrap_or(0);
    ingest(&ledger, 3 * N..3 * N + 2_500, dec!(0.01));
    let deadline = Instant::now() + Duration::from_secs(30);
    while store
        .snapshot_positions()
        .unwrap()
        .into_iter()
        .max()
        .unwrap_or(0)
        <= before
    {
        assert!(Instant::now() < deadline, "no snapshot after the spill");
        std::thread::sleep(Duration::from_millis(20));
    }
    ledger.shutdown();
    drop(ledger);
    drop(store);

    // A restart (from the snapshot the policy wrote, and the tail), first
    // while its usage key filter is still to be loaded (every fresh key
    // looked up in the store), then once it is.
    accrue_ledger::snapshot::hold_filter_loads(true);
    let store = open_store();
    let ledger = open(&store);
    check(&ledger, "after a restart, the filter pending");
    // Fresh ids while it is pending: their runs spill meanwhile, and
    // join the filter when it is loaded.
    let during = ingest(&ledger, 4 * N..4 * N + 3_000, dec!(0.01));
    assert!(during.iter().all(|o| *o == UsageOutcome::Accepted));
    std::thread::sleep(Duration::from_millis(300));
    accrue_ledger::snapshot::hold_filter_loads(false);
    std::thread::sleep(Duration::from_millis(300));
    check(&ledger, "after a restart");
    let again = ingest(&ledger, 4 * N..4 * N + 3_000, dec!(0.01));
    assert!(
        again.iter().all(|o| *o == UsageOutcome::Duplicate),
        "ids taken while the filter was pending are duplicates"
    );
    let fresh = ingest(&ledger, 2 * N..2 * N + 10, dec!(0.01));
    assert!(
        fresh.iter().all(|o| *o == UsageOutcome::Accepted),
        "{fresh:?}"
    );
    ledger.shutdown();
    drop(ledger);
    drop(store);

    // The snapshot path and a replay from position 0 find the same
    // candidates for every key (the spilled ones read from the store).
    let store = open_store();
    let (a, _) = accrue_ledger::snapshot::loaded_digest(store.as_ref(), true).unwrap();
    let (b, _) = accrue_ledger::snapshot::loaded_digest(store.as_ref(), false).unwrap();
    assert_eq!(
        a, b,
        "the snapshot path and the replay find the same candidates"
    );
    drop(store);
}

#[test]
fn a_failed_read_of_spilled_keys_refuses_the_batch_and_never_takes_a_retry_as_new() {
    use accrue_store::faulty::FaultyStore;
    std::env::set_var("ACCRUE_USAGE_FREEZE_KEYS", "500");
    std::env::set_var("ACCRUE_USAGE_SPILL_KEYS", "1000");
    let dir = tempfile::tempdir().unwrap();
    let sqlite: Arc<dyn EventStore> =
        Arc::new(SqliteStore::open(dir.path().join("ledger.db")).unwrap());
    let faulty = Arc::new(FaultyStore::new(sqlite));
    let store: Arc<dyn EventStore> = faulty.clone();
    let ledger = open(&store);
    ledger.execute_blocking("acme", open_cmd("acme")).unwrap();
    ingest(&ledger, 0..N, dec!(0.01));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !spilled(store.as_ref(), "u0") {
        assert!(Instant::now() < deadline, "no run was spilled");
        ingest(&ledger, N..N + 1, dec!(0.01));
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let the spill settle (the run leaves memory between groups).
    for i in 0..20 {
        ingest(&ledger, N + 1 + i..N + 2 + i, dec!(0.01));
    }
    faulty.fail_key_reads(true);
    let retry = ledger.ingest_blocking(vec![usage("u0", dec!(0.01)), usage("u1", dec!(0.01))]);
    assert!(
        matches!(retry, Err(accrue_ledger::LedgerError::Unavailable(_))),
        "a retry of spilled ids while their store cannot be read: {retry:?}"
    );
    assert!(faulty.injected.load(std::sync::atomic::Ordering::SeqCst) > 0);
    faulty.fail_key_reads(false);
    let retry = ledger
        .ingest_blocking(vec![usage("u0", dec!(0.01)), usage("u1", dec!(0.01))])
        .unwrap();
    assert_eq!(
        retry,
        vec![UsageOutcome::Duplicate, UsageOutcome::Duplicate]
    );
    ledger.shutdown();
}

#[test]
fn spilled_usage_keys_keep_every_retry_a_duplicate_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    old_ids_stay_duplicates(&move || Arc::new(SqliteStore::open(&path).unwrap()));
}

#[test]
fn spilled_usage_keys_keep_every_retry_a_duplicate_on_postgresql() {
    use accrue_store::postgres::{schema_for, test_url, PgStore};
    let dir = tempfile::tempdir().unwrap();
    let schema = schema_for(dir.path());
    old_ids_stay_duplicates(&move || {
        Arc::new(PgStore::open_in_schema(&test_url(), &schema).unwrap())
    });
}
