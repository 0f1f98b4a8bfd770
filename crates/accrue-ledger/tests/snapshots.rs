//! Snapshots (SPEC §12): a restart from the newest snapshot and the log's
//! tail loads exactly what a replay from position 0 loads, for random
//! histories snapshotted at random points; a snapshot that does not check
//! out is skipped, never trusted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use accrue_core::correction::PaymentOutcome;
use accrue_core::events::Plan;
use accrue_core::period::BillingFrequency;
use accrue_core::{Command, OpenAccount, UsageInput};
use accrue_ledger::snapshot::{loaded_digest, set_policy};
use accrue_ledger::{ClockMode, Ledger, UsageItem};
use accrue_store::sqlite::SqliteStore;
use accrue_store::EventStore;
use chrono::{DateTime, Duration as Days, Utc};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

/// A small deterministic generator (xorshift64*): each seed is one history.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn open_cmd(id: &str, base: Decimal) -> Command {
    Command::Open(Box::new(OpenAccount {
        account_id: id.into(),
        name: format!("Customer {id}"),
        serial_number: format!("SN-{id}"),
        billing_email: format!("billing@{id}.test"),
        email_language: "de".into(),
        address: None,
        currency: "EUR".into(),
        billing_frequency: BillingFrequency::Monthly,
        anchor_day: None,
        plan: Plan {
            full_seats: 2,
            full_seat_price: dec!(19.5),
            viewer_seats: 1,
            viewer_seat_price: dec!(3),
            data_management: false,
            data_management_price: dec!(0),
        },
        base_credits: base,
        credit_limit: Some(dec!(40)),
        invoice_number: String::new(),
        tax: None,
    }))
}

fn usage(account: &str, id: &str, amount: Decimal, t: DateTime<Utc>) -> UsageItem {
    UsageItem::Valid {
        account_id: account.into(),
        input: UsageInput {
            usage_id: id.into(),
            amount,
            occurred_at: t,
            product: None,
            feature: None,
            metadata: None,
        },
        occurred_at_given: true,
    }
}

type Open = Box<dyn Fn() -> Arc<dyn EventStore>>;

/// The load from snapshots equals the load from position 0; on a
/// difference, the first differing line or read model (the whole is long).
fn assert_loads_alike(store: &dyn EventStore, what: &str) {
    let (snap, snap_read) = loaded_digest(store, true).unwrap();
    let (zero, zero_read) = loaded_digest(store, false).unwrap();
    if snap != zero {
        let (i, (a, b)) = snap
            .lines()
            .zip(zero.lines())
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .unwrap_or((0, ("(a prefix)", "(a prefix)")));
        panic!(
            "{what}: writer line {i} differs\n  from the snapshot: {a}\n  from position 0:   {b}"
        );
    }
    if snap_read != zero_read {
        let differs = |x: bool| if x { "same" } else { "DIFFERENT" };
        panic!(
            "{what}: read models differ: position {} vs {}; accounts {}, invoices {}, postings {} ({} vs {}), credit notes {}, dunning {}, tokens {}, webhooks {}",
            snap_read.position,
            zero_read.position,
            differs(snap_read.accounts == zero_read.accounts),
            differs(snap_read.invoices == zero_read.invoices),
            differs(snap_read.postings == zero_read.postings),
            snap_read.postings.len(),
            zero_read.postings.len(),
            differs(snap_read.credit_notes == zero_read.credit_notes),
            differs(snap_read.in_dunning == zero_read.in_dunning),
            differs(snap_read.tokens == zero_read.tokens),
            differs(snap_read.webhook_endpoints == zero_read.webhook_endpoints),
        );
    }
}

/// Plays `steps` random steps of history on a ledger over `store`.
fn play(ledger: &Ledger, rng: &mut Rng, now: &mut DateTime<Utc>, steps: usize, accounts: usize) {
    for step in 0..steps {
        let a = format!("acct{}", rng.below(accounts as u64));
        match rng.below(20) {
            0 => {
                // A month or a few days pass: periods close, invoices issue.
                *now += Days::days(if rng.below(2) == 0 { 31 } else { 3 });
                ledger.advance_clock_blocking(*now).unwrap();
            }
            1 => {
                // Pay (or fail to pay) the newest invoice of someone.
                let numbers: Vec<String> = ledger.read().invoices.keys().cloned().collect();
                if let Some(n) = numbers.get(rng.below(numbers.len().max(1) as u64) as usize) {
                    let outcome = if rng.below(3) == 0 {
                        PaymentOutcome::Failed {
                            reason: Some("card_declined".into()),
                        }
                    } else {
                        PaymentOutcome::Succeeded
                    };
                    let _ = ledger.execute_for_invoice_blocking(
                        n,
                        Command::RecordPayment {
                            invoice_number: n.clone(),
                            reference: format!("ch_{}", rng.below(40)),
                            outcome,
                        },
                    );
                }
            }
            2 => {
                let _ = ledger.execute_blocking(
                    &a,
                    Command::SetCreditLimit {
                        limit: Decimal::new(rng.below(5000) as i64, 2),
                    },
                );
            }
            _ => {
                // Usage, often retried (an id seen before: a duplicate).
                let n = 1 + rng.below(6) as usize;
                let items = (0..n)
                    .map(|i| {
                        let id = format!("u{}", rng.below((step as u64 + 1) * 3 + i as u64));
                        let amount = Decimal::new(1 + rng.below(900) as i64, 2);
                        usage(&a, &id, amount, *now)
                    })
                    .collect();
                ledger.ingest_blocking(items).unwrap();
            }
        }
    }
}

/// Waits until a snapshot at or after `at_least` is stored.
fn wait_for_snapshot(store: &dyn EventStore, at_least: u64) -> u64 {
    let started = Instant::now();
    loop {
        let newest = store.snapshot_positions().unwrap().first().copied();
        if let Some(p) = newest.filter(|p| *p >= at_least) {
            return p;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no snapshot at or after {at_least} was written (newest: {newest:?})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn histories_restart_from_snapshots_as_from_zero(open: Open, seeds: std::ops::Range<u64>) {
    for seed in seeds {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (seed + 1));
        let accounts = 2 + rng.below(4) as usize;
        let mut now = at("2026-01-15T00:00:00Z");
        // Snapshots every few events: taken at random points of the history.
        set_policy(5 + rng.below(60), 600);
        let store = open();
        let ledger = Ledger::open(store.clone(), ClockMode::Manual(now)).unwrap();
        for i in 0..accounts {
            let a = format!("acct{i}");
            ledger.execute_blocking(&a, open_cmd(&a, dec!(5))).unwrap();
        }
        let steps = 60 + rng.below(120) as usize;
        play(&ledger, &mut rng, &mut now, steps, accounts);
        let head = store.head_position().unwrap();
        wait_for_snapshot(store.as_ref(), 1);
        ledger.shutdown();
        drop(ledger);
        let snap = store.snapshot_positions().unwrap()[0];
        assert!(snap <= head);
        assert_loads_alike(
            store.as_ref(),
            &format!("seed {seed}: the snapshot at {snap} of {head} events plus the tail"),
        );
        // A restart from that snapshot decides on: more history, then the
        // same comparison (snapshots taken on top of a loaded snapshot).
        let ledger = Ledger::open(store.clone(), ClockMode::Manual(now)).unwrap();
        let steps = 40 + rng.below(80) as usize;
        play(&ledger, &mut rng, &mut now, steps, accounts);
        let head2 = store.head_position().unwrap();
        ledger.shutdown();
        drop(ledger);
        assert_loads_alike(
            store.as_ref(),
            &format!(
                "seed {seed}: after a restart from a snapshot and {} more events",
                head2 - head
            ),
        );
    }
    // The policy is process-wide and the other tests here run beside this
    // one: it is left small (any value keeps the loads alike).
}

fn sqlite_opener() -> (tempfile::TempDir, Open) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let open: Open = Box::new(move || Arc::new(SqliteStore::open(&path).unwrap()));
    (dir, open)
}

#[test]
fn random_histories_restart_from_snapshots_as_from_zero_on_sqlite() {
    for seed in 0..6 {
        let (_dir, open) = sqlite_opener();
        histories_restart_from_snapshots_as_from_zero(open, seed..seed + 1);
    }
}

#[test]
fn random_histories_restart_from_snapshots_as_from_zero_on_postgresql() {
    use accrue_store::postgres::{schema_for, test_url, PgStore};
    for seed in 10..13 {
        let dir = tempfile::tempdir().unwrap();
        let schema = schema_for(dir.path());
        let open: Open =
            Box::new(move || Arc::new(PgStore::open_in_schema(&test_url(), &schema).unwrap()));
        histories_restart_from_snapshots_as_from_zero(open, seed..seed + 1);
    }
}

/// Builds a short history with one snapshot; returns the snapshot position.
fn history_with_snapshot(store: &Arc<dyn EventStore>) -> u64 {
    short_history(store, "a", "u", 30, dec!(0.5), dec!(5));
    let ledger =
        Ledger::open(store.clone(), ClockMode::Manual(at("2026-01-15T00:00:00Z"))).unwrap();
    ledger
        .advance_clock_blocking(at("2026-02-16T00:00:00Z"))
        .unwrap();
    ledger.shutdown();
    drop(ledger);
    accrue_ledger::snapshot::write_now(store.as_ref()).unwrap()
}

/// One account opened with `base` credits and `n` usage events of `amount`
/// (ids `prefix0..`), all at the opening instant.
fn short_history(
    store: &Arc<dyn EventStore>,
    account: &str,
    prefix: &str,
    n: usize,
    amount: Decimal,
    base: Decimal,
) {
    let t = at("2026-01-15T00:00:00Z");
    let ledger = Ledger::open(store.clone(), ClockMode::Manual(t)).unwrap();
    ledger
        .execute_blocking(account, open_cmd(account, base))
        .unwrap();
    for i in 0..n {
        ledger
            .ingest_blocking(vec![usage(account, &format!("{prefix}{i}"), amount, t)])
            .unwrap();
    }
    ledger.shutdown();
}

#[test]
fn a_corrupt_or_foreign_snapshot_is_skipped_and_the_log_replayed() {
    let (dir, open) = sqlite_opener();
    let store = open();
    let p = history_with_snapshot(&store);
    assert!(p > 30);
    assert_loads_alike(store.as_ref(), "a fresh snapshot");

    // One flipped byte in the stored snapshot: its hash no longer matches.
    let mut bytes = store.read_snapshot(p).unwrap().unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    store.put_snapshot(p, &bytes, 2).unwrap();
    assert_loads_alike(store.as_ref(), "a snapshot with a flipped byte");

    // A well-formed snapshot of another log (different events at the same
    // positions): the chain hashes it recorded are not this log's.
    let (_other_dir, other_open) = sqlite_opener();
    let other = other_open();
    short_history(&other, "b", "x", 60, dec!(0.1), dec!(9));
    let foreign_at = accrue_ledger::snapshot::write_now(other.as_ref()).unwrap();
    assert!(foreign_at >= p);
    let foreign = other.read_snapshot(foreign_at).unwrap().unwrap();
    store.put_snapshot(p, &foreign, 2).unwrap();
    assert_loads_alike(store.as_ref(), "another log's snapshot");

    // And the ledger opens and works on it: nothing lost, a retry is a
    // duplicate, a new id counts.
    drop(store);
    let store = open();
    let ledger =
        Ledger::open(store.clone(), ClockMode::Manual(at("2026-02-16T00:00:00Z"))).unwrap();
    let out = ledger
        .ingest_blocking(vec![
            usage("a", "u3", dec!(0.5), at("2026-01-15T00:00:00Z")),
            usage("a", "fresh", dec!(0.5), at("2026-02-16T00:00:00Z")),
        ])
        .unwrap();
    assert_eq!(
        out,
        vec![
            accrue_ledger::UsageOutcome::Duplicate,
            accrue_ledger::UsageOutcome::Accepted
        ]
    );
    ledger.shutdown();
    drop(dir);
}

#[test]
fn a_snapshot_ahead_of_a_cut_log_is_never_used() {
    // The log loses its tail after the snapshot was taken (a restore from
    // an older backup): the snapshot claims a position the log does not
    // reach and must not resurrect what the log no longer holds.
    let (_dir, open) = sqlite_opener();
    let store = open();
    let p = history_with_snapshot(&store);
    let bytes = store.read_snapshot(p).unwrap().unwrap();
    let (_dir2, open2) = sqlite_opener();
    let short = open2();
    {
        let ledger =
            Ledger::open(short.clone(), ClockMode::Manual(at("2026-01-15T00:00:00Z"))).unwrap();
        ledger
            .execute_blocking("a", open_cmd("a", dec!(5)))
            .unwrap();
        ledger.shutdown();
    }
    short.put_snapshot(p, &bytes, 2).unwrap();
    assert_loads_alike(short.as_ref(), "a snapshot ahead of the log");
}
