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
        tax: None,
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
    ledger
        .execute_blocking("acme", open_cmd("acme", dec!(1), Some(dec!(9.99))))
        .unwrap();
    // 8 clients × 200 events × 0.0137 = 21.92 asked for; 10.99 available.
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let l = ledger.clone();
            std::thread::spawn(move || {
                let mut accepted = Decimal::ZERO;
                for chunk in 0..20 {
                    let items = (0..10)
                        .map(|i| usage("acme", &format!("t{t}-{chunk}-{i}"), dec!(0.0137)))
                        .collect();
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
    assert_eq!(
        used, accepted,
        "the read model matches the acknowledgements"
    );
    assert!(used <= dec!(10.99));
    // 10.99 / 0.0137 = 802.19…: exactly 802 fit.
    assert_eq!(used, dec!(0.0137) * Decimal::from(802));
}

#[test]
fn retries_are_counted_once_and_conflicts_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open_ledger(dir.path(), "2026-01-15T00:00:00Z");
    ledger
        .execute_blocking("acme", open_cmd("acme", dec!(100), None))
        .unwrap();
    let out = ledger
        .ingest_blocking(vec![
            usage("acme", "a", dec!(1)),
            usage("acme", "a", dec!(1)),
            usage("acme", "a", dec!(2)),
        ])
        .unwrap();
    assert_eq!(out[0], UsageOutcome::Accepted);
    assert_eq!(out[1], UsageOutcome::Duplicate);
    assert!(matches!(
        out[2],
        UsageOutcome::Rejected {
            reason: "id_conflict",
            ..
        }
    ));
    // Against the committed event, and after a restart.
    assert_eq!(
        ledger
            .ingest_blocking(vec![usage("acme", "a", dec!(1))])
            .unwrap()[0],
        UsageOutcome::Duplicate
    );
    ledger.shutdown();
    drop(ledger);
    let ledger = open_ledger(dir.path(), "2026-01-15T00:00:00Z");
    let out = ledger
        .ingest_blocking(vec![
            usage("acme", "a", dec!(1)),
            usage("acme", "a", dec!(3)),
            usage("other", "a", dec!(1)),
        ])
        .unwrap();
    assert_eq!(out[0], UsageOutcome::Duplicate);
    assert!(matches!(
        out[1],
        UsageOutcome::Rejected {
            reason: "id_conflict",
            ..
        }
    ));
    assert!(matches!(
        out[2],
        UsageOutcome::Rejected {
            reason: "unknown_account",
            ..
        }
    ));
    assert_eq!(ledger.read().accounts["acme"].used, dec!(1));
}

/// Retries race their originals: each batch is sent by two clients at once,
/// so the second copy is often decided while the first is still being
/// written (in the group in flight). Every id is accepted exactly once, the
/// other copy is a duplicate, and a changed copy is a conflict.
#[test]
fn retries_racing_their_originals_in_flight_are_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open_ledger(dir.path(), "2026-01-15T00:00:00Z");
    ledger
        .execute_blocking("acme", open_cmd("acme", dec!(100000), None))
        .unwrap();
    let batches = 60;
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let l = ledger.clone();
            std::thread::spawn(move || {
                let (mut accepted, mut duplicate, mut conflict) = (0, 0, 0);
                // Clients 0 and 1 send the same batches; 2 and 3 too, with
                // client 3 changing one amount per batch.
                for b in 0..batches {
                    let items = (0..200)
                        .map(|i| {
                            let amount = if t == 3 && i == 0 { dec!(2) } else { dec!(1) };
                            usage("acme", &format!("p{}-{b}-{i}", t / 2), amount)
                        })
                        .collect();
                    for o in l.ingest_blocking(items).unwrap() {
                        match o {
                            UsageOutcome::Accepted => accepted += 1,
                            UsageOutcome::Duplicate => duplicate += 1,
                            UsageOutcome::Rejected { reason, .. } => {
                                assert_eq!(reason, "id_conflict");
                                conflict += 1
                            }
                        }
                    }
                }
                (accepted, duplicate, conflict)
            })
        })
        .collect();
    let (mut accepted, mut duplicate, mut conflict) = (0, 0, 0);
    for t in threads {
        let (a, d, c) = t.join().unwrap();
        accepted += a;
        duplicate += d;
        conflict += c;
    }
    let ids = 2 * batches * 200;
    assert_eq!(accepted, ids, "every id once");
    assert_eq!(
        duplicate + conflict,
        ids,
        "every second copy refused or counted once"
    );
    assert_eq!(
        conflict, batches,
        "one changed amount per batch of pair 2/3"
    );
    let used = ledger.read().accounts["acme"].used;
    assert!(
        used >= Decimal::from(ids) && used <= Decimal::from(ids + batches),
        "{used}"
    );
    // The log agrees: one CreditsConsumed per id.
    let consumed = ledger
        .store()
        .read_stream("account-acme", 0, 1_000_000)
        .unwrap()
        .iter()
        .filter(|e| e.type_name == "CreditsConsumed")
        .count();
    assert_eq!(consumed, ids);
}

#[test]
fn a_rebuild_from_position_zero_equals_the_live_read_models() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open_ledger(dir.path(), "2026-01-15T00:00:00Z");
    for a in ["a", "b", "c"] {
        ledger
            .execute_blocking(a, open_cmd(a, dec!(1), Some(dec!(20))))
            .unwrap();
    }
    for i in 0..300 {
        let a = ["a", "b", "c"][i % 3];
        ledger
            .ingest_blocking(vec![usage(a, &format!("u{i}"), dec!(0.1))])
            .unwrap();
    }
    ledger
        .advance_clock_blocking(at("2026-03-20T00:00:00Z"))
        .unwrap();
    ledger
        .ingest_blocking(vec![usage("a", "late", dec!(0.5))])
        .unwrap();
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
    ledger
        .advance_clock_blocking(at("2026-02-01T00:00:00Z"))
        .unwrap();
    assert!(ledger
        .advance_clock_blocking(at("2026-01-20T00:00:00Z"))
        .is_err());
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
        ledger
            .execute_blocking(a, open_cmd(a, dec!(0), None))
            .unwrap();
    }
    ledger
        .advance_clock_blocking(at("2027-02-16T00:00:00Z"))
        .unwrap();
    let read = ledger.read();
    let mut by_year: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    let mut numbers: Vec<_> = read.invoices.keys().cloned().collect();
    numbers.sort();
    for n in &numbers {
        let (y, s) = n.trim_start_matches("INV-").split_once('-').unwrap();
        by_year
            .entry(y.to_string())
            .or_default()
            .push(s.parse().unwrap());
    }
    // 4 opening + 4 × (Dec 15) = 8 in 2026; 4 × (Jan 15, Feb 15) = 8 in 2027.
    assert_eq!(by_year["2026"], (1..=8).collect::<Vec<_>>());
    assert_eq!(by_year["2027"], (1..=8).collect::<Vec<_>>());
}

#[test]
fn a_crash_in_the_middle_of_a_close_is_finished_exactly_once_at_start() {
    use accrue_core::events::{ClockAdvanced, LedgerEvent};
    use accrue_store::{ExpectedVersion, NewEvent, StreamAppend};
    let dir = tempfile::tempdir().unwrap();
    {
        let ledger = open_ledger(dir.path(), "2026-01-15T00:00:00Z");
        for a in ["a", "b", "c"] {
            ledger
                .execute_blocking(a, open_cmd(a, dec!(0), None))
                .unwrap();
        }
        ledger.shutdown();
    }
    // What a crash right after the clock moved, before any close, leaves behind.
    {
        let store = SqliteStore::open(dir.path().join("ledger.db")).unwrap();
        let now = at("2026-03-01T00:00:00Z");
        let e = LedgerEvent::ClockAdvanced(ClockAdvanced { now });
        store
            .append(
                &[StreamAppend {
                    stream: "clock".into(),
                    expected: ExpectedVersion::Any,
                    events: vec![NewEvent {
                        type_name: e.type_name(),
                        schema: 1,
                        occurred_at: now,
                        payload: e.encode_payload(),
                    }],
                }],
                now,
            )
            .unwrap();
    }
    let ledger = open_ledger(dir.path(), "2026-01-15T00:00:00Z");
    assert_eq!(ledger.now(), at("2026-03-01T00:00:00Z"));
    let numbers = |l: &Ledger| {
        let mut n: Vec<String> = l.read().invoices.keys().cloned().collect();
        n.sort();
        n
    };
    let expected: Vec<String> = (1..=6).map(|i| format!("INV-2026-{i:06}")).collect();
    assert_eq!(numbers(&ledger), expected, "3 opening + 3 closes on Feb 15");
    ledger.shutdown();
    drop(ledger);
    // Starting again closes nothing twice.
    let ledger = open_ledger(dir.path(), "2026-01-15T00:00:00Z");
    assert_eq!(numbers(&ledger), expected);
    assert_eq!(
        ledger.read().accounts["a"].credit_period.unwrap().start,
        at("2026-02-15T00:00:00Z")
    );
}

#[test]
fn concurrent_opens_and_clock_moves_keep_numbers_gapless() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open_ledger(dir.path(), "2026-01-01T00:00:00Z");
    let openers: Vec<_> = (0..8)
        .map(|t| {
            let l = ledger.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    let id = format!("t{t}-{i}");
                    l.execute_blocking(&id, open_cmd(&id, dec!(0), None))
                        .unwrap();
                }
            })
        })
        .collect();
    let clock = {
        let l = ledger.clone();
        std::thread::spawn(move || {
            for day in 2..=28 {
                l.advance_clock_blocking(at(&format!("2026-01-{day:02}T00:00:00Z")))
                    .unwrap();
            }
            for m in 2..=4 {
                l.advance_clock_blocking(at(&format!("2026-{m:02}-28T00:00:00Z")))
                    .unwrap();
            }
        })
    };
    for t in openers {
        t.join().unwrap();
    }
    clock.join().unwrap();
    let read = ledger.read();
    let mut seqs: Vec<u64> = read
        .invoices
        .keys()
        .map(|n| n[9..].parse().unwrap())
        .collect();
    seqs.sort();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "gapless and never reused"
    );
    // Each account: one opening invoice + one per closed month.
    assert!(seqs.len() >= 200 * 3);
    // Numbers increase with issue time.
    let mut by_number: Vec<_> = read
        .invoices
        .values()
        .map(|r| (r.issued.number.clone(), r.issued.issued_at))
        .collect();
    by_number.sort();
    assert!(by_number.windows(2).all(|w| w[0].1 <= w[1].1));
}

#[test]
fn a_yearly_account_pays_its_fee_every_twelve_months_and_credits_monthly() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open_ledger(dir.path(), "2026-01-31T00:00:00Z");
    let mut cmd = open_cmd("y", dec!(0), Some(dec!(10)));
    if let Command::Open(o) = &mut cmd {
        o.billing_frequency = BillingFrequency::Yearly;
    }
    ledger.execute_blocking("y", cmd).unwrap();
    ledger
        .ingest_blocking(vec![usage("y", "u1", dec!(2.5))])
        .unwrap();
    ledger
        .advance_clock_blocking(at("2027-02-01T00:00:00Z"))
        .unwrap();
    let read = ledger.read();
    let mut invs: Vec<_> = read
        .invoices
        .values()
        .map(|r| (r.issued.issued_at, r.issued.total))
        .collect();
    invs.sort();
    // Opening fee, then the Feb 28 close with the 2.50 credit charge only, then the next fee a year on.
    assert_eq!(invs[0], (at("2026-01-31T00:00:00Z"), dec!(10.00)));
    assert_eq!(invs[1], (at("2026-02-28T00:00:00Z"), dec!(2.50)));
    assert_eq!(invs[2], (at("2027-01-31T00:00:00Z"), dec!(10.00)));
    assert_eq!(invs.len(), 3, "no invoice for months that total 0.00");
    let s = &read.accounts["y"];
    assert_eq!(s.billing_period.unwrap().end, at("2028-01-31T00:00:00Z"));
    assert_eq!(s.credit_period.unwrap().start, at("2027-01-31T00:00:00Z"));
}

#[test]
fn the_pdf_projector_writes_each_invoice_and_records_its_hash_once() {
    use std::sync::atomic::AtomicBool;
    let dir = tempfile::tempdir().unwrap();
    let ledger = open_ledger(dir.path(), "2026-01-15T00:00:00Z");
    ledger
        .execute_blocking("a", open_cmd("a", dec!(0), None))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let h = accrue_ledger::projectors::spawn_pdf_writer(
        ledger.clone(),
        dir.path().join("pdf"),
        stop.clone(),
    )
    .unwrap();
    // Wait (bounded) for the projector to catch up with the log.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while ledger.read().invoices["INV-2026-000001"]
        .pdf_sha256
        .is_none()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the projector never recorded the hash"
        );
        ledger
            .store()
            .wait_for(
                ledger.store().head_position().unwrap(),
                std::time::Duration::from_millis(50),
            )
            .unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    h.join().unwrap();
    let file = std::fs::read(dir.path().join("pdf/INV-2026-000001.pdf")).unwrap();
    let recorded = ledger.read().invoices["INV-2026-000001"]
        .pdf_sha256
        .clone()
        .unwrap();
    assert_eq!(accrue_projections::pdf::sha256_hex(&file), recorded);
    // Recording again changes nothing.
    let evs = ledger
        .execute_blocking(
            "a",
            Command::RecordPdf {
                number: "INV-2026-000001".into(),
                sha256: "x".into(),
            },
        )
        .unwrap();
    assert!(evs.is_empty());
}

#[test]
fn the_ledger_runs_the_same_on_postgresql() {
    use accrue_store::postgres::{schema_for, test_url, PgStore};
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        let store: Arc<dyn EventStore> =
            Arc::new(PgStore::open_in_schema(&test_url(), &schema_for(dir.path())).unwrap());
        Ledger::open(store, ClockMode::Manual(at("2026-01-15T00:00:00Z"))).unwrap()
    };
    let ledger = open();
    ledger
        .execute_blocking("acme", open_cmd("acme", dec!(1), Some(dec!(2))))
        .unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let l = ledger.clone();
            std::thread::spawn(move || {
                (0..10)
                    .map(|i| {
                        l.ingest_blocking(vec![usage("acme", &format!("{t}-{i}"), dec!(0.07))])
                            .unwrap()[0]
                            .clone()
                    })
                    .filter(|o| *o == UsageOutcome::Accepted)
                    .count()
            })
        })
        .collect();
    let accepted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    // 3.00 / 0.07 = 42.86: exactly 42 fit.
    assert_eq!(accepted, 42);
    ledger
        .advance_clock_blocking(at("2026-02-15T00:00:00Z"))
        .unwrap();
    let live = ledger.read().clone();
    ledger.shutdown();
    drop(ledger);
    let again = open();
    assert_eq!(
        *again.read(),
        live,
        "a restart replays to the same read models"
    );
    assert_eq!(
        again
            .ingest_blocking(vec![usage("acme", "0-0", dec!(0.07))])
            .unwrap()[0],
        UsageOutcome::Duplicate
    );
    let report = accrue_ledger::audit::verify(again.store().as_ref(), |_, _| {}).unwrap();
    assert!(report.ok);
}
