//! Tampering with the stored log, done to a real SQLite file and a real
//! PostgreSQL schema the way an attacker with database access would (the
//! append-only triggers lifted), is detected by `verify` with an anchor —
//! also when the attacker recomputes every hash with the public algorithm.

use std::sync::Arc;

use accrue_core::events::Plan;
use accrue_core::period::BillingFrequency;
use accrue_core::{Command, OpenAccount, UsageInput};
use accrue_ledger::audit::{verify, verify_with, Anchor, AnchorKey};
use accrue_ledger::{ClockMode, Ledger, UsageItem};
use accrue_store::hash::{chain_hash, recorded_hash, GENESIS};
use accrue_store::postgres::{schema_for, test_url, PgStore};
use accrue_store::sqlite::SqliteStore;
use accrue_store::{EventStore, RecordedEvent};
use chrono::Utc;
use rust_decimal_macros::dec;

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
    fn schema(&self) -> String {
        schema_for(self.dir.path())
    }
    fn store(&self) -> Arc<dyn EventStore> {
        match self.backend {
            Backend::Sqlite => {
                Arc::new(SqliteStore::open(self.dir.path().join("ledger.db")).unwrap())
            }
            Backend::Postgres => {
                Arc::new(PgStore::open_in_schema(&test_url(), &self.schema()).unwrap())
            }
        }
    }
    /// Runs SQL as the attacker: directly on the database, triggers lifted.
    fn attack(&self, sql: &str) {
        match self.backend {
            Backend::Sqlite => {
                let c = rusqlite::Connection::open(self.dir.path().join("ledger.db")).unwrap();
                c.execute_batch(
                    "DROP TRIGGER IF EXISTS events_no_update; DROP TRIGGER IF EXISTS events_no_delete;",
                )
                .unwrap();
                c.execute_batch(sql).unwrap();
            }
            Backend::Postgres => {
                let mut c = postgres::Client::connect(&test_url(), postgres::NoTls).unwrap();
                c.batch_execute(&format!(
                    "SET search_path TO {}; ALTER TABLE events DISABLE TRIGGER events_no_change; {sql}",
                    self.schema()
                ))
                .unwrap();
            }
        }
    }
    /// SQL that appends one byte to the payload at `pos`.
    fn rewrite_payload(&self, pos: u64) -> String {
        match self.backend {
            Backend::Sqlite => {
                format!(
                    "UPDATE events SET payload = CAST(payload || ' ' AS BLOB) WHERE pos = {pos};"
                )
            }
            Backend::Postgres => {
                format!("UPDATE events SET payload = payload || '\\x20'::bytea WHERE pos = {pos};")
            }
        }
    }
    /// Recomputes every stored hash and chain from the rows as they are now
    /// (what an attacker who read hash.rs does to cover the tracks).
    fn recompute_hashes(&self) {
        let mut all: Vec<RecordedEvent> = match self.backend {
            // Read the rows raw: the store itself may refuse the tampered log.
            Backend::Sqlite => {
                let c = rusqlite::Connection::open(self.dir.path().join("ledger.db")).unwrap();
                let mut st = c
                    .prepare("SELECT pos, stream, version, type, schema, occurred_us, recorded_us, payload FROM events ORDER BY pos")
                    .unwrap();
                let rows = st
                    .query_map([], |r| {
                        Ok(RecordedEvent {
                            position: r.get::<_, i64>(0)? as u64,
                            stream: r.get(1)?,
                            version: r.get::<_, i64>(2)? as u64,
                            type_name: r.get(3)?,
                            schema: r.get::<_, i64>(4)? as u32,
                            occurred_at: chrono::DateTime::from_timestamp_micros(r.get(5)?)
                                .unwrap(),
                            recorded_at: chrono::DateTime::from_timestamp_micros(r.get(6)?)
                                .unwrap(),
                            payload: r.get(7)?,
                            hash: GENESIS,
                            chain: GENESIS,
                        })
                    })
                    .unwrap();
                rows.map(|r| r.unwrap()).collect()
            }
            Backend::Postgres => {
                let store = self.store();
                let mut all = Vec::new();
                let mut after = 0;
                loop {
                    let page = store.read_all(after, 10_000).unwrap();
                    let Some(last) = page.last() else { break };
                    after = last.position;
                    all.extend(page);
                }
                all
            }
        };
        let mut heads: std::collections::HashMap<String, (u64, [u8; 32])> = Default::default();
        let mut chain = GENESIS;
        let mut sql = String::new();
        for (i, e) in all.iter_mut().enumerate() {
            let (v, prev) = heads.get(&e.stream).copied().unwrap_or((0, GENESIS));
            e.version = v + 1;
            let new_pos = i as u64 + 1;
            let h = recorded_hash(&prev, e);
            chain = chain_hash(&chain, new_pos, &h);
            heads.insert(e.stream.clone(), (e.version, h));
            let (hx, cx) = (hex(&h), hex(&chain));
            sql.push_str(&match self.backend {
                Backend::Sqlite => format!(
                    "UPDATE events SET pos = {new_pos}, version = {}, hash = X'{hx}', chain = X'{cx}' WHERE pos = {};",
                    e.version, e.position
                ),
                Backend::Postgres => format!(
                    "UPDATE events SET pos = {new_pos}, version = {}, hash = '\\x{hx}', chain = '\\x{cx}' WHERE pos = {};",
                    e.version, e.position
                ),
            });
        }
        // SQLite keeps a derived stream index; a careful attacker drops it too.
        if let Backend::Sqlite = self.backend {
            sql.push_str(
                "DELETE FROM stream_runs; DELETE FROM meta WHERE key = 'stream_index_pos';",
            );
        }
        // Versions are unique per stream in PostgreSQL: make room first.
        if let Backend::Postgres = self.backend {
            sql = format!(
                "UPDATE events SET version = -version, pos = -pos; {}",
                sql.replace("WHERE pos = ", "WHERE pos = -")
            );
        }
        self.attack(&sql);
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Backend::Postgres = self.backend {
            accrue_store::postgres::drop_schema(&test_url(), &self.schema());
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
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

fn usage(account: &str, id: &str) -> UsageItem {
    UsageItem::Valid {
        account_id: account.into(),
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

/// Two accounts, usage, one close (so both streams, the sequence and the
/// clock stream have events); returns a signed anchor of the head.
fn seed(db: &Db) -> Anchor {
    let ledger = Ledger::open(
        db.store(),
        ClockMode::Manual("2026-01-15T00:00:00Z".parse().unwrap()),
    )
    .unwrap();
    for a in ["acme", "beta"] {
        ledger.execute_blocking(a, open_cmd(a)).unwrap();
        ledger
            .ingest_blocking((0..3).map(|i| usage(a, &format!("{a}{i}"))).collect())
            .unwrap();
    }
    ledger
        .advance_clock_blocking("2026-02-15T00:00:00Z".parse().unwrap())
        .unwrap();
    let key = AnchorKey::from_seed([7u8; 32]);
    let a = key.anchor(ledger.store().as_ref(), Utc::now()).unwrap();
    let clean = verify_with(ledger.store().as_ref(), Some(&a), |_, _| {}).unwrap();
    assert!(clean.ok, "{clean:?}");
    assert_eq!(clean.anchor_ok, Some(true));
    ledger.shutdown();
    a
}

fn detected(db: &Db, anchor: &Anchor, what: &str) {
    // A store that refuses to open a log it finds inconsistent has seen it.
    if let Backend::Sqlite = db.backend {
        if let Err(e) = SqliteStore::open(db.dir.path().join("ledger.db")) {
            assert!(e.to_string().contains("corrupt"), "{what}: {e}");
            return;
        }
    }
    let store = db.store();
    let r = verify_with(store.as_ref(), Some(anchor), |_, _| {}).unwrap();
    assert!(!r.ok, "{what} on {:?} went unnoticed: {r:?}", db.backend);
}

fn max_pos(db: &Db, stream: &str) -> u64 {
    let store = db.store();
    let mut after = 0;
    let mut best = 0;
    loop {
        let page = store.read_all(after, 10_000).unwrap();
        let Some(last) = page.last() else { break };
        after = last.position;
        for e in &page {
            if e.stream == stream {
                best = best.max(e.position);
            }
        }
    }
    best
}

/// One way of tampering with the stored log.
type Tampering = Box<dyn Fn(&Db)>;

fn each_tampering(backend: Backend) {
    let cases: Vec<(&str, Tampering)> = vec![
        (
            "deleting a stream's last event",
            Box::new(|db: &Db| {
                let p = max_pos(db, "account-acme");
                db.attack(&format!("DELETE FROM events WHERE pos = {p};"));
            }),
        ),
        (
            "deleting a whole account stream",
            Box::new(|db: &Db| {
                db.attack("DELETE FROM events WHERE stream = 'account-beta';");
            }),
        ),
        (
            "deleting the newest invoice-sequence events",
            Box::new(|db: &Db| {
                let p = max_pos(db, "invoice-sequence");
                db.attack(&format!(
                    "DELETE FROM events WHERE stream = 'invoice-sequence' AND pos >= {p};"
                ));
            }),
        ),
        (
            "deleting the newest events of the log",
            Box::new(|db: &Db| {
                let store = db.store();
                let head = store.head_position().unwrap();
                drop(store);
                db.attack(&format!("DELETE FROM events WHERE pos > {};", head - 2));
            }),
        ),
        (
            "rewriting a payload",
            Box::new(|db: &Db| {
                db.attack(&db.rewrite_payload(3));
            }),
        ),
        (
            "moving an event to another stream",
            Box::new(|db: &Db| {
                let p = max_pos(db, "account-acme");
                db.attack(&format!(
                "UPDATE events SET stream = 'account-beta', version = version + 1000 WHERE pos = {p};"
            ));
            }),
        ),
    ];
    for (what, tamper) in &cases {
        // Each tampering plain, and again with every hash recomputed.
        for recompute in [false, true] {
            let db = Db::new(backend);
            let anchor = seed(&db);
            tamper(&db);
            if recompute {
                db.recompute_hashes();
            }
            detected(
                &db,
                &anchor,
                &format!("{what} (hashes recomputed: {recompute})"),
            );
        }
    }
    // Appending a forged event after the anchor with correct hashes: the
    // log grew, but the anchor's prefix held; a payload rewritten before
    // the anchor with every later hash recomputed is caught.
    let db = Db::new(backend);
    let anchor = seed(&db);
    db.attack(&db.rewrite_payload(2));
    db.recompute_hashes();
    let store = db.store();
    let plain = verify(store.as_ref(), |_, _| {}).unwrap();
    assert!(
        plain.ok,
        "recomputed hashes pass without an anchor: {plain:?}"
    );
    drop(store);
    detected(&db, &anchor, "a rewrite with recomputed hashes");
}

#[test]
fn sqlite_tampering_is_detected_with_an_anchor() {
    each_tampering(Backend::Sqlite);
}

#[test]
fn postgres_tampering_is_detected_with_an_anchor() {
    each_tampering(Backend::Postgres);
}

/// After the newest `invoice-sequence` events are deleted, a restart
/// refuses to open instead of issuing a number again.
fn cut_sequence_refuses_to_open(backend: Backend) {
    let db = Db::new(backend);
    seed(&db);
    let p = max_pos(&db, "invoice-sequence");
    db.attack(&format!(
        "DELETE FROM events WHERE stream = 'invoice-sequence' AND pos >= {p};"
    ));
    let r = Ledger::open(
        db.store(),
        ClockMode::Manual("2026-02-15T00:00:00Z".parse().unwrap()),
    );
    match r {
        Err(e) => assert!(e.to_string().contains("invoice-number sequence"), "{e}"),
        Ok(_) => panic!("a ledger whose invoice sequence was cut opened"),
    }
}

#[test]
fn sqlite_cut_invoice_sequence_refuses_to_open() {
    cut_sequence_refuses_to_open(Backend::Sqlite);
}

#[test]
fn postgres_cut_invoice_sequence_refuses_to_open() {
    cut_sequence_refuses_to_open(Backend::Postgres);
}

#[test]
fn an_anchor_with_a_forged_signature_is_refused() {
    let db = Db::new(Backend::Sqlite);
    let mut anchor = seed(&db);
    anchor.head_hash = "00".repeat(32);
    let store = db.store();
    let r = verify_with(store.as_ref(), Some(&anchor), |_, _| {}).unwrap();
    assert!(!r.ok);
    assert_eq!(r.anchor_ok, Some(false));
    let reason = r.first_broken.unwrap().reason;
    assert!(reason.contains("signature"), "{reason}");
}
