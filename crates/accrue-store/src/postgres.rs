//! The PostgreSQL backend: the same log in a table, appended in one
//! transaction per batch under a transaction-scoped advisory lock, so global
//! positions stay gapless and expected versions are checked against the
//! database even when several processes share it. Durability is PostgreSQL's
//! (`synchronous_commit = on` by default).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use parking_lot::{Condvar, Mutex};
use postgres::{Client, NoTls, Row};

use crate::hash::GENESIS;
use crate::{Appended, EventStore, RecordedEvent, StoreError, StreamAppend, StreamHead};

const SCHEMA: &str = include_str!("../../../migrations/postgres/0001_events.sql");
const GLOBAL_CHAIN: &str = include_str!("../../../migrations/postgres/0002_global_chain.sql");
const SNAPSHOTS: &str = include_str!("../../../migrations/postgres/0003_snapshots.sql");
const USAGE_KEYS: &str = include_str!("../../../migrations/postgres/0004_usage_keys.sql");
/// The class of the session advisory lock one writer holds per ledger (the
/// second key is the schema's name hashed), for the store's lifetime.
pub(crate) const WRITER_LOCK_CLASS: i32 = 0x6163_6372;
/// The advisory lock key for migrations (one per database).
const MIGRATE_LOCK: i64 = 0x6163_6372_7565_0001;
/// The class of the transaction lock that serialises appends to one
/// ledger (second key: the schema's name hashed), so the ledgers of a
/// cluster's partitions in one database append side by side.
const APPEND_LOCK_CLASS: i32 = 0x6163_6373;
/// How long `open` waits for a writer that just exited to let go.
const WRITER_WAIT: Duration = Duration::from_secs(15);
const COLUMNS: &str =
    "pos, stream, version, type, schema, occurred_us, recorded_us, payload, hash, chain";

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

/// Stream heads as of a known global head. Valid only while nobody else
/// appended: every append checks `MAX(pos)` against `at` under the lock.
#[derive(Default)]
struct HeadCache {
    at: u64,
    heads: HashMap<String, StreamHead>,
}

pub struct PgInner {
    writer: Mutex<Client>,
    cache: Mutex<HeadCache>,
    reader: Mutex<Client>,
    /// Snapshots have their own session: writing one never holds the
    /// appends' connection.
    snapshots: Mutex<Client>,
    /// The usage keys' sessions (one spills, one looks up), opened on
    /// first use: most ledgers never spill.
    keys_w: Mutex<Option<Client>>,
    keys_r: Mutex<Option<Client>>,
    url: String,
    schema: Option<String>,
    /// Wakes local followers after a local append; remote appends are polled.
    appended: Condvar,
    appended_at: Mutex<u64>,
}

pub(crate) fn connect(url: &str, schema: Option<&str>) -> Result<Client, StoreError> {
    let mut c = Client::connect(url, NoTls)?;
    if let Some(s) = schema {
        c.batch_execute(&format!("SET search_path TO {s}"))?;
    }
    Ok(c)
}

fn from_micros(us: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(us).single().unwrap_or_default()
}

fn to_event(r: &Row) -> RecordedEvent {
    let h = crate::hash::from_stored(&r.get::<_, Vec<u8>>(8));
    RecordedEvent {
        position: r.get::<_, i64>(0) as u64,
        stream: r.get(1),
        version: r.get::<_, i64>(2) as u64,
        type_name: r.get(3),
        schema: r.get::<_, i32>(4) as u32,
        occurred_at: from_micros(r.get(5)),
        recorded_at: from_micros(r.get(6)),
        payload: r.get(7),
        hash: h,
        chain: crate::hash::from_stored(&r.get::<_, Option<Vec<u8>>>(9).unwrap_or_default()),
    }
}

/// The PostgreSQL store. The `postgres` client blocks on a runtime of its
/// own, which panics when called from inside a tokio runtime (an async
/// handler, a `#[tokio::test]`): every call made from such a context runs
/// on a scoped thread of its own instead. The ledger's threads (writer,
/// committer, projectors, `spawn_blocking`) call it directly.
pub struct PgStore(std::mem::ManuallyDrop<PgInner>);

impl std::ops::Deref for PgStore {
    type Target = PgInner;
    fn deref(&self) -> &PgInner {
        &self.0
    }
}

impl Drop for PgStore {
    /// The clients own runtimes, which must not be dropped inside another.
    // Unsafe: ManuallyDrop::take moves the clients out to drop them on a
    // thread of their own (a field cannot be moved out of `&mut self`).
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: taken once, here, and never used again.
        let inner = unsafe { std::mem::ManuallyDrop::take(&mut self.0) };
        off_runtime(move || drop(inner));
    }
}

pub(crate) fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    })
}

impl EventStore for PgStore {
    fn append(
        &self,
        batch: &[StreamAppend],
        recorded_at: DateTime<Utc>,
    ) -> Result<Appended, StoreError> {
        off_runtime(|| self.0.append(batch, recorded_at))
    }
    fn read_stream(
        &self,
        stream: &str,
        after_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        off_runtime(|| self.0.read_stream(stream, after_version, limit))
    }
    fn read_all(
        &self,
        after_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        off_runtime(|| self.0.read_all(after_position, limit))
    }
    fn read_at(&self, position: u64) -> Result<Option<RecordedEvent>, StoreError> {
        off_runtime(|| self.0.read_at(position))
    }
    fn head_position(&self) -> Result<u64, StoreError> {
        off_runtime(|| self.0.head_position())
    }
    fn stream_head(&self, stream: &str) -> Result<StreamHead, StoreError> {
        off_runtime(|| self.0.stream_head(stream))
    }
    fn wait_for(&self, after_position: u64, timeout: Duration) -> Result<u64, StoreError> {
        off_runtime(|| self.0.wait_for(after_position, timeout))
    }
    fn checkpoint(&self, name: &str) -> Result<u64, StoreError> {
        off_runtime(|| self.0.checkpoint(name))
    }
    fn set_checkpoint(&self, name: &str, position: u64) -> Result<(), StoreError> {
        off_runtime(|| self.0.set_checkpoint(name, position))
    }
    fn meta_get(&self, key: &str) -> Result<Option<String>, StoreError> {
        off_runtime(|| self.0.meta_get(key))
    }
    fn meta_put(&self, key: &str, value: &str) -> Result<(), StoreError> {
        off_runtime(|| self.0.meta_put(key, value))
    }
    fn meta_list(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        off_runtime(|| self.0.meta_list(prefix))
    }
    fn put_snapshot(&self, position: u64, bytes: &[u8], keep: usize) -> Result<(), StoreError> {
        off_runtime(|| self.0.put_snapshot(position, bytes, keep))
    }
    fn snapshot_positions(&self) -> Result<Vec<u64>, StoreError> {
        off_runtime(|| self.0.snapshot_positions())
    }
    fn read_snapshot(&self, position: u64) -> Result<Option<Vec<u8>>, StoreError> {
        off_runtime(|| self.0.read_snapshot(position))
    }
    fn put_usage_keys(&self, keys: &[(u32, u64)]) -> Result<(), StoreError> {
        off_runtime(|| self.0.put_usage_keys(keys))
    }
    fn usage_key_positions(&self, fp: u32) -> Result<Vec<u64>, StoreError> {
        off_runtime(|| self.0.usage_key_positions(fp))
    }
    fn usage_key_fingerprints(&self, from: u32, to: u32) -> Result<Vec<u32>, StoreError> {
        off_runtime(|| self.0.usage_key_fingerprints(from, to))
    }
    fn backend(&self) -> &'static str {
        "postgres"
    }
}

impl PgStore {
    /// Opens the store in the connection's default schema, creating tables
    /// if needed. `url`: `postgres://user@host:port/db` or a key=value string.
    pub fn open(url: &str) -> Result<PgStore, StoreError> {
        off_runtime(|| Self::open_in(url, None, Some(WRITER_WAIT)))
    }

    /// Opens the store in its own schema (created if needed): one database
    /// can hold several ledgers, and each test gets a fresh one.
    pub fn open_in_schema(url: &str, schema: &str) -> Result<PgStore, StoreError> {
        Self::try_open_in_schema(url, schema, WRITER_WAIT)
    }

    /// [`PgStore::open_in_schema`], waiting at most `wait` for the writer
    /// lock: `StoreError::Locked` while another process holds it. The lock
    /// is a cluster partition's lease (`accrue serve --partitions`): held by
    /// the session that appends, so it is lost exactly when that session is.
    pub fn try_open_in_schema(
        url: &str,
        schema: &str,
        wait: Duration,
    ) -> Result<PgStore, StoreError> {
        let ok = !schema.is_empty()
            && schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !ok {
            return Err(StoreError::Backend(format!(
                "schema name {schema:?} must be [a-z0-9_]+"
            )));
        }
        off_runtime(|| {
            let mut c = connect(url, None)?;
            c.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))?;
            Self::open_in(url, Some(schema), Some(wait))
        })
    }

    /// Opens without taking the writer lock: for tests that prove the
    /// database's own checks with two appenders, and for a cluster node's
    /// reads of the home partition's tokens. `serve` never appends with it.
    pub fn open_in_schema_unlocked(url: &str, schema: &str) -> Result<PgStore, StoreError> {
        off_runtime(|| Self::open_in_schema_inner(url, schema))
    }

    fn open_in_schema_inner(url: &str, schema: &str) -> Result<PgStore, StoreError> {
        let mut c = connect(url, None)?;
        c.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))?;
        Self::open_in(url, Some(schema), None)
    }

    /// `exclusive`: take the writer lock, waiting at most this long.
    fn open_in(
        url: &str,
        schema: Option<&str>,
        exclusive: Option<Duration>,
    ) -> Result<PgStore, StoreError> {
        let mut writer = connect(url, schema)?;
        if let Some(wait) = exclusive {
            // One writer per ledger: its in-memory heads and the ledger's
            // single-writer decisions depend on it. Held by this session
            // until the store is dropped (or the connection is lost, and
            // then every append fails and the ledger stops).
            // A writer that just exited may still hold it for a moment
            // (its session ends after its socket closes): wait briefly.
            let deadline = Instant::now() + wait;
            let got = loop {
                let got: bool = writer
                    .query_one(
                        "SELECT pg_try_advisory_lock($1, hashtext(current_schema()))",
                        &[&WRITER_LOCK_CLASS],
                    )?
                    .get(0);
                if got || Instant::now() >= deadline {
                    break got;
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            if !got {
                let schema: String = writer.query_one("SELECT current_schema()", &[])?.get(0);
                return Err(StoreError::Locked(format!(
                    "PostgreSQL schema {schema:?} (another accrue process is its writer)"
                )));
            }
        }
        writer.execute("SELECT pg_advisory_lock($1)", &[&MIGRATE_LOCK])?;
        let migrated = writer
            .batch_execute(SCHEMA)
            .map_err(StoreError::from)
            .and_then(|_| add_global_chain(&mut writer))
            .and_then(|_| Ok(writer.batch_execute(SNAPSHOTS)?))
            .and_then(|_| Ok(writer.batch_execute(USAGE_KEYS)?));
        writer.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATE_LOCK])?;
        migrated?;
        let reader = connect(url, schema)?;
        let snapshots = connect(url, schema)?;
        Ok(PgStore(std::mem::ManuallyDrop::new(PgInner {
            writer: Mutex::new(writer),
            cache: Mutex::new(HeadCache::default()),
            reader: Mutex::new(reader),
            snapshots: Mutex::new(snapshots),
            keys_w: Mutex::new(None),
            keys_r: Mutex::new(None),
            url: url.to_string(),
            schema: schema.map(str::to_string),
            appended: Condvar::new(),
            appended_at: Mutex::new(0),
        })))
    }
}

impl PgInner {
    /// A query on the usage keys' own reading session (opened on first use).
    fn query_keys(
        &self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<postgres::Row>, StoreError> {
        let mut guard = self.keys_r.lock();
        if guard.is_none() {
            *guard = Some(connect(&self.url, self.schema.as_deref())?);
        }
        let Some(c) = guard.as_mut() else {
            return Err(StoreError::Backend("usage keys unavailable".into()));
        };
        Ok(c.query(sql, params)?)
    }
}

impl EventStore for PgInner {
    fn append(
        &self,
        batch: &[StreamAppend],
        recorded_at: DateTime<Utc>,
    ) -> Result<Appended, StoreError> {
        let mut c = self.writer.lock();
        let mut tx = c.transaction()?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))",
            &[&APPEND_LOCK_CLASS],
        )?;
        let last = tx.query_opt(
            "SELECT pos, chain FROM events ORDER BY pos DESC LIMIT 1",
            &[],
        )?;
        let (start, prev_chain): (i64, [u8; 32]) = match last {
            None => (0, GENESIS),
            Some(r) => (
                r.get(0),
                crate::hash::from_stored(&r.get::<_, Option<Vec<u8>>>(1).unwrap_or_default()),
            ),
        };
        let mut cache = self.cache.lock();
        if cache.at != start as u64 {
            // Another process appended since we last did: our heads may be stale.
            cache.heads.clear();
            cache.at = start as u64;
        }
        let mut names: Vec<&str> = batch
            .iter()
            .map(|s| s.stream.as_str())
            .filter(|s| !cache.heads.contains_key(*s))
            .collect();
        names.sort_unstable();
        names.dedup();
        let mut heads: HashMap<String, StreamHead> = HashMap::new();
        if !names.is_empty() {
            for r in tx.query(
                "SELECT DISTINCT ON (stream) stream, version, hash FROM events WHERE stream = ANY($1) ORDER BY stream, version DESC",
                &[&names],
            )? {
                let h = crate::hash::from_stored(&r.get::<_, Vec<u8>>(2));
                heads.insert(r.get(0), StreamHead { version: r.get::<_, i64>(1) as u64, hash: h });
            }
        }
        for s in batch {
            if !heads.contains_key(&s.stream) {
                let h = cache.heads.get(&s.stream).copied().unwrap_or(StreamHead {
                    version: 0,
                    hash: GENESIS,
                });
                heads.insert(s.stream.clone(), h);
            }
        }
        let recorded_us = recorded_at.timestamp_micros();
        let (placed, new_heads) =
            crate::place(batch, start as u64, prev_chain, recorded_us, |s| {
                heads.get(s).copied().unwrap_or(crate::EMPTY_HEAD)
            })?;
        let n = placed.len();
        let pos: Vec<i64> = placed.iter().map(|p| p.position as i64).collect();
        let stream: Vec<&str> = placed.iter().map(|p| p.stream).collect();
        let version: Vec<i64> = placed.iter().map(|p| p.version as i64).collect();
        let type_: Vec<&str> = placed.iter().map(|p| p.event.type_name).collect();
        let schema: Vec<i32> = placed.iter().map(|p| p.event.schema as i32).collect();
        let occ: Vec<i64> = placed.iter().map(|p| p.occurred_us).collect();
        let rec: Vec<i64> = vec![recorded_us; n];
        let payload: Vec<&[u8]> = placed.iter().map(|p| p.event.payload.as_slice()).collect();
        let hash: Vec<&[u8]> = placed.iter().map(|p| &p.hash[..]).collect();
        let chain: Vec<&[u8]> = placed.iter().map(|p| &p.chain[..]).collect();
        let p = placed.last().map_or(start, |p| p.position as i64);
        if n > 0 {
            tx.execute(
                "INSERT INTO events (pos, stream, version, type, schema, occurred_us, recorded_us, payload, hash, chain)
                 SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::int[], $6::bigint[], $7::bigint[], $8::bytea[], $9::bytea[], $10::bytea[])",
                &[&pos, &stream, &version, &type_, &schema, &occ, &rec, &payload, &hash, &chain],
            )?;
        }
        tx.commit()?;
        let last = p as u64;
        cache.at = last;
        for (s, h) in new_heads {
            cache.heads.insert(s.to_string(), h);
        }
        drop(cache);
        drop(c);
        *self.appended_at.lock() = last;
        self.appended.notify_all();
        Ok(Appended {
            first_position: if n > 0 { start as u64 + 1 } else { 0 },
            last_position: last,
        })
    }

    fn read_stream(
        &self,
        stream: &str,
        after_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = self.reader.lock().query(
            &format!("SELECT {COLUMNS} FROM events WHERE stream = $1 AND version > $2 ORDER BY version LIMIT $3"),
            &[&stream, &(after_version as i64), &(limit as i64)],
        )?;
        Ok(rows.iter().map(to_event).collect())
    }

    fn read_all(
        &self,
        after_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = self.reader.lock().query(
            &format!("SELECT {COLUMNS} FROM events WHERE pos > $1 ORDER BY pos LIMIT $2"),
            &[&(after_position as i64), &(limit as i64)],
        )?;
        Ok(rows.iter().map(to_event).collect())
    }

    fn read_at(&self, position: u64) -> Result<Option<RecordedEvent>, StoreError> {
        let row = self.reader.lock().query_opt(
            &format!("SELECT {COLUMNS} FROM events WHERE pos = $1"),
            &[&(position as i64)],
        )?;
        Ok(row.as_ref().map(to_event))
    }

    fn head_position(&self) -> Result<u64, StoreError> {
        let v: i64 = self
            .reader
            .lock()
            .query_one("SELECT COALESCE(MAX(pos), 0) FROM events", &[])?
            .get(0);
        Ok(v as u64)
    }

    fn stream_head(&self, stream: &str) -> Result<StreamHead, StoreError> {
        let row = self.reader.lock().query_opt(
            "SELECT version, hash FROM events WHERE stream = $1 ORDER BY version DESC LIMIT 1",
            &[&stream],
        )?;
        Ok(match row {
            None => StreamHead {
                version: 0,
                hash: GENESIS,
            },
            Some(r) => {
                let h = crate::hash::from_stored(&r.get::<_, Vec<u8>>(1));
                StreamHead {
                    version: r.get::<_, i64>(0) as u64,
                    hash: h,
                }
            }
        })
    }

    fn wait_for(&self, after_position: u64, timeout: Duration) -> Result<u64, StoreError> {
        // Local appends wake us at once; appends by other processes are seen
        // by polling every 50 ms.
        let deadline = Instant::now() + timeout;
        loop {
            let head = self.head_position()?;
            let now = Instant::now();
            if head > after_position || now >= deadline {
                return Ok(head);
            }
            let mut g = self.appended_at.lock();
            let _ = self
                .appended
                .wait_for(&mut g, (deadline - now).min(Duration::from_millis(50)));
        }
    }

    fn checkpoint(&self, name: &str) -> Result<u64, StoreError> {
        let row = self
            .reader
            .lock()
            .query_opt("SELECT pos FROM checkpoints WHERE name = $1", &[&name])?;
        Ok(row.map_or(0, |r| r.get::<_, i64>(0) as u64))
    }

    fn set_checkpoint(&self, name: &str, position: u64) -> Result<(), StoreError> {
        self.writer.lock().execute(
            "INSERT INTO checkpoints (name, pos) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET pos = GREATEST(checkpoints.pos, excluded.pos)",
            &[&name, &(position as i64)],
        )?;
        Ok(())
    }

    fn meta_get(&self, key: &str) -> Result<Option<String>, StoreError> {
        let row = self
            .reader
            .lock()
            .query_opt("SELECT value FROM meta WHERE key = $1", &[&key])?;
        Ok(row.map(|r| r.get(0)))
    }

    fn meta_put(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.writer.lock().execute(
            "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&key, &value],
        )?;
        Ok(())
    }

    fn meta_list(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        let rows = self.reader.lock().query(
            "SELECT key, value FROM meta WHERE left(key, length($1)) = $1 ORDER BY key",
            &[&prefix],
        )?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn put_usage_keys(&self, keys: &[(u32, u64)]) -> Result<(), StoreError> {
        let mut guard = self.keys_w.lock();
        if guard.is_none() {
            *guard = Some(connect(&self.url, self.schema.as_deref())?);
        }
        let Some(c) = guard.as_mut() else {
            return Err(StoreError::Backend("usage keys unavailable".into()));
        };
        // One transaction: the run is stored whole or not at all.
        let mut tx = c.transaction()?;
        for chunk in keys.chunks(50_000) {
            let fps: Vec<i64> = chunk.iter().map(|(f, _)| i64::from(*f)).collect();
            let positions: Vec<i64> = chunk.iter().map(|(_, p)| *p as i64).collect();
            tx.execute(
                "INSERT INTO usage_keys (fp, pos) SELECT * FROM unnest($1::bigint[], $2::bigint[]) \
                 ON CONFLICT DO NOTHING",
                &[&fps, &positions],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn usage_key_positions(&self, fp: u32) -> Result<Vec<u64>, StoreError> {
        let rows = self.query_keys(
            "SELECT pos FROM usage_keys WHERE fp = $1",
            &[&i64::from(fp)],
        )?;
        Ok(rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect())
    }

    fn usage_key_fingerprints(&self, from: u32, to: u32) -> Result<Vec<u32>, StoreError> {
        let rows = self.query_keys(
            "SELECT fp FROM usage_keys WHERE fp BETWEEN $1 AND $2",
            &[&i64::from(from), &i64::from(to)],
        )?;
        Ok(rows.iter().map(|r| r.get::<_, i64>(0) as u32).collect())
    }

    fn put_snapshot(&self, position: u64, bytes: &[u8], keep: usize) -> Result<(), StoreError> {
        let mut c = self.snapshots.lock();
        let mut tx = c.transaction()?;
        let pos = position as i64;
        let now = Utc::now().timestamp_micros();
        tx.execute(
            "INSERT INTO snapshots (pos, created_us, bytes) VALUES ($1, $2, $3) \
             ON CONFLICT (pos) DO UPDATE SET created_us = excluded.created_us, bytes = excluded.bytes",
            &[&pos, &now, &bytes],
        )?;
        tx.execute(
            "DELETE FROM snapshots WHERE pos NOT IN \
             (SELECT pos FROM snapshots ORDER BY pos DESC LIMIT $1)",
            &[&(keep.max(1) as i64)],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn snapshot_positions(&self) -> Result<Vec<u64>, StoreError> {
        let rows = self
            .snapshots
            .lock()
            .query("SELECT pos FROM snapshots ORDER BY pos DESC", &[])?;
        Ok(rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect())
    }

    fn read_snapshot(&self, position: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let row = self.snapshots.lock().query_opt(
            "SELECT bytes FROM snapshots WHERE pos = $1",
            &[&(position as i64)],
        )?;
        Ok(row.map(|r| r.get(0)))
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }
}

/// Migration 2 (the `chain` column), once, under the migration lock: in one
/// transaction with the chain of every event already stored, computed in
/// log order (the append-only trigger is lifted for that transaction only).
fn add_global_chain(c: &mut Client) -> Result<(), StoreError> {
    let has: bool = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = 'events' AND column_name = 'chain')",
            &[],
        )?
        .get(0);
    if has {
        return Ok(());
    }
    let mut tx = c.transaction()?;
    tx.batch_execute(GLOBAL_CHAIN)?;
    tx.batch_execute("ALTER TABLE events DISABLE TRIGGER events_no_change")?;
    let rows = tx.query("SELECT pos, hash FROM events ORDER BY pos", &[])?;
    let mut chain = GENESIS;
    for r in rows {
        let pos: i64 = r.get(0);
        let hash = crate::hash::from_stored(&r.get::<_, Vec<u8>>(1));
        chain = crate::hash::chain_hash(&chain, pos as u64, &hash);
        tx.execute(
            "UPDATE events SET chain = $1 WHERE pos = $2",
            &[&&chain[..], &pos],
        )?;
    }
    tx.batch_execute("ALTER TABLE events ENABLE TRIGGER events_no_change")?;
    tx.commit()?;
    Ok(())
}

/// The physical bound for benchmarks: the same rows as multi-row inserts
/// (one `UNNEST` insert per batch, one transaction each) into a fresh
/// `events` table in `schema`, no domain logic, no hashing. Rows per second.
pub fn raw_insert_rows_per_s(
    url: &str,
    schema: &str,
    rows: impl Iterator<Item = (String, Vec<u8>)>,
    batch: usize,
) -> Result<f64, StoreError> {
    let store = PgStore::open_in_schema(url, schema)?;
    let mut c = store.writer.lock();
    let started = Instant::now();
    let mut rows = rows.peekable();
    let mut p = 0i64;
    let hash = vec![0u8; 32];
    while rows.peek().is_some() {
        let chunk: Vec<(String, Vec<u8>)> = rows.by_ref().take(batch.max(1)).collect();
        let pos: Vec<i64> = chunk
            .iter()
            .map(|_| {
                p += 1;
                p
            })
            .collect();
        let stream: Vec<&str> = chunk.iter().map(|r| r.0.as_str()).collect();
        let payload: Vec<&[u8]> = chunk.iter().map(|r| r.1.as_slice()).collect();
        let types: Vec<&str> = vec!["CreditsConsumed"; chunk.len()];
        let schemas: Vec<i32> = vec![1; chunk.len()];
        let hashes: Vec<&[u8]> = vec![hash.as_slice(); chunk.len()];
        let mut tx = c.transaction()?;
        tx.execute(
            "INSERT INTO events (pos, stream, version, type, schema, occurred_us, recorded_us, payload, hash, chain)
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $1::bigint[], $3::text[], $4::int[], $1::bigint[], $1::bigint[], $5::bytea[], $6::bytea[], $6::bytea[])",
            &[&pos, &stream, &types, &schemas, &payload, &hashes],
        )?;
        tx.commit()?;
    }
    Ok(p as f64 / started.elapsed().as_secs_f64().max(1e-9))
}

/// The PostgreSQL the tests use: `ACCRUE_TEST_PG`, else the machine's local
/// server (127.0.0.1:5432, trust auth, user postgres).
pub fn test_url() -> String {
    std::env::var("ACCRUE_TEST_PG")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=postgres".to_string())
}

/// A schema name unique to a test folder (the conformance factory gets
/// one): a digest of the whole path, so `…/tmpA/data` and `…/tmpB/data`
/// never share a schema.
pub fn schema_for(dir: &std::path::Path) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(dir.to_string_lossy().as_bytes());
    format!("accrue_t_{}", hex::encode(&d[..12]))
}

/// Drops a test schema and everything in it (tests call it when done, so
/// no `accrue_t_…` schema is left behind). Errors are ignored: a schema
/// that was never created is already gone.
pub fn drop_schema(url: &str, schema: &str) {
    let ok = !schema.is_empty()
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !ok {
        return;
    }
    off_runtime(|| {
        if let Ok(mut c) = Client::connect(url, NoTls) {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ExpectedVersion;

    crate::conformance_suite!(|dir: &std::path::Path| PgStore::open_in_schema(
        &test_url(),
        &schema_for(dir)
    )
    .unwrap());

    #[test]
    fn the_log_refuses_updates_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let s = PgStore::open_in_schema(&test_url(), &schema_for(dir.path())).unwrap();
        crate::conformance::append_n(&s, "account-a", 0, 1);
        let mut c = s.writer.lock();
        assert!(c
            .execute("UPDATE events SET payload = '\\x00'", &[])
            .is_err());
        assert!(c.execute("DELETE FROM events", &[]).is_err());
    }

    #[test]
    fn two_stores_on_one_database_never_reuse_a_position_or_version() {
        let dir = tempfile::tempdir().unwrap();
        let schema = schema_for(dir.path());
        let a = PgStore::open_in_schema(&test_url(), &schema).unwrap();
        // A second appender (the writer lock refuses a second `serve`): the
        // database itself still checks positions and versions.
        let b = PgStore::open_in_schema_unlocked(&test_url(), &schema).unwrap();
        crate::conformance::append_n(&a, "account-x", 0, 2);
        // b has never seen account-x: its expectation is checked in the database.
        let r = b.append(
            &[StreamAppend {
                stream: "account-x".into(),
                expected: ExpectedVersion::Exact(0),
                events: vec![crate::conformance::event(1)],
            }],
            crate::conformance::t(0),
        );
        assert!(
            matches!(r, Err(StoreError::WrongExpectedVersion { actual: 2, .. })),
            "{r:?}"
        );
        crate::conformance::append_n(&b, "account-x", 2, 1);
        assert_eq!(a.head_position().unwrap(), 3);
        assert_eq!(a.stream_head("account-x").unwrap().version, 3);
    }
}
