//! The embedded SQLite backend: one file in the data folder, WAL journal,
//! `synchronous=FULL` (an acknowledged append survives `kill -9` and power
//! loss), one writer connection and a small pool of readers.
//!
//! **The stream index.** A per-stream B-tree index written on every append
//! touches one random page per stream per commit, which caps a 1,000-account
//! workload near 30,000 rows/s. The log itself carries `stream` and `version`,
//! so the `(stream, version) → pos` index is derived data: it is kept in
//! memory per stream as a *run* of positions and written as one row per
//! stream (`stream_runs`) every [`INDEX_FLUSH_EVENTS`] events, inside an
//! append's transaction; the not-yet-written tail is rebuilt from the log at
//! open. Reads of a stream combine both.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use parking_lot::{Condvar, Mutex};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::hash::GENESIS;
use crate::{Appended, EventStore, RecordedEvent, StoreError, StreamAppend, StreamHead};

/// Unindexed events kept in memory (8 bytes each) before the stream index
/// is flushed.
pub const INDEX_FLUSH_EVENTS: usize = 500_000;

const SCHEMA: &str = concat!(
    include_str!("../../../migrations/sqlite/0001_events.sql"),
    include_str!("../../../migrations/sqlite/0002_stream_runs.sql"),
);
const READERS: usize = 4;
/// SQLite page caches (KiB): the OS page cache holds the file as well.
const WRITER_CACHE_KB: i64 = 2_000;
const READER_CACHE_KB: i64 = 2_000;

/// A stream's consecutive versions `first_version..` and their positions.
#[derive(Debug, Clone)]
struct Run {
    first_version: u64,
    positions: Vec<u64>,
}

struct Writer {
    conn: Connection,
    heads: HashMap<String, StreamHead>,
    /// Events past the stream index, per stream.
    unindexed: HashMap<String, Run>,
    unindexed_events: usize,
    /// Flush the index once this many events are unindexed.
    index_flush: usize,
    head_position: u64,
    /// The global chain hash of the event at `head_position`.
    head_chain: [u8; 32],
}

impl Writer {
    fn index(&mut self, stream: &str, version: u64, position: u64) {
        match self.unindexed.get_mut(stream) {
            Some(run) => run.positions.push(position),
            None => {
                self.unindexed.insert(
                    stream.to_string(),
                    Run {
                        first_version: version,
                        positions: vec![position],
                    },
                );
            }
        }
        self.unindexed_events += 1;
    }
}

/// LEB128: the first position absolute, then the (positive) deltas.
fn encode_positions(positions: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(positions.len() * 2 + 8);
    let mut prev = 0u64;
    for p in positions {
        let mut v = p - prev;
        prev = *p;
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
    }
    out
}

fn decode_positions(bytes: &[u8]) -> Result<Vec<u64>, StoreError> {
    let mut out = Vec::with_capacity(bytes.len());
    let (mut prev, mut v, mut shift) = (0u64, 0u64, 0u32);
    for b in bytes {
        if shift > 63 {
            return Err(StoreError::Corrupt("stream run varint too long".into()));
        }
        v |= u64::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            prev = prev
                .checked_add(v)
                .ok_or_else(|| StoreError::Corrupt("stream run position overflows".into()))?;
            out.push(prev);
            v = 0;
            shift = 0;
        }
    }
    if shift != 0 {
        return Err(StoreError::Corrupt(
            "stream run ends inside a varint".into(),
        ));
    }
    Ok(out)
}

pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Writer>,
    readers: Vec<Mutex<Connection>>,
    /// The head, for followers (`wait_for`).
    head: Mutex<u64>,
    appended: Condvar,
    checkpointer: Checkpointer,
    /// Snapshots live in a file of their own beside the log
    /// (`<file>.snapshots`): SQLite has one writer per file, and writing a
    /// snapshot must never hold up an append.
    snapshots: Mutex<Connection>,
    /// The usage keys' file (`<file>.keys`): one connection spills, one
    /// looks up (WAL: a lookup never waits for a spill). Opened on first use.
    keys_w: Mutex<Option<Connection>>,
    keys_r: Mutex<Option<Connection>>,
    _lock: File,
}

/// Bytes appended between two background checkpoints (about 1,000 pages,
/// SQLite's own autocheckpoint distance).
const CHECKPOINT_BYTES: usize = 4 << 20;
/// Under continuous appends a background checkpoint never catches the last
/// frames, and SQLite only starts the WAL over once one has. So every this
/// many bytes the writer runs one itself between two appends (cheap: the
/// background has copied nearly everything), which bounds the WAL.
const CHECKPOINT_INLINE_BYTES: usize = 32 << 20;

/// Copies the WAL back into the database file on its own thread and
/// connection (SQLite's automatic checkpoint would run inside the append
/// that crosses the threshold, on the ingest path). Durability does not
/// depend on it: an append is durable once its WAL frames are synced.
struct Checkpointer {
    wake: Option<crossbeam_channel::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Bytes appended since the writer last started the WAL over.
    behind: std::sync::atomic::AtomicUsize,
}

impl Checkpointer {
    fn start(path: &Path) -> Result<Checkpointer, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "busy_timeout", 5000)?;
        let (tx, rx) = crossbeam_channel::bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name("accrue-checkpoint".into())
            .spawn(move || {
                crate::priority::lower_current_thread();
                for () in rx {
                    let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                }
            })
            .map_err(|e| StoreError::Backend(format!("cannot start the checkpointer: {e}")))?;
        Ok(Checkpointer {
            wake: Some(tx),
            thread: Some(thread),
            behind: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Counts `bytes` appended; true when the writer should checkpoint
    /// inline because the background ones fall behind.
    fn appended(&self, bytes: usize) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let behind = self.behind.fetch_add(bytes, Relaxed) + bytes;
        if behind >= CHECKPOINT_INLINE_BYTES {
            // Counted down only once a restart succeeded (`restarted`): one
            // that found the checkpointer busy is tried again next append,
            // so a starved background thread cannot let the WAL grow.
            return true;
        }
        if behind % CHECKPOINT_BYTES < bytes {
            if let Some(w) = &self.wake {
                let _ = w.try_send(());
            }
        }
        false
    }

    /// The writer started the WAL over.
    fn restarted(&self) {
        self.behind.store(0, std::sync::atomic::Ordering::Relaxed);
    }

    fn stop(&mut self) {
        self.wake = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_micros(us: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(us).single().unwrap_or_default()
}

fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "busy_timeout", 5000)?;
    // Appends touch the right edge of the log's B-tree and a few index
    // pages; 2 MB holds them (8 and 32 MB measured no faster, and count in
    // RSS). Readers look events up by position.
    conn.pragma_update(None, "cache_size", -WRITER_CACHE_KB)?;
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`. A lock file beside it
    /// keeps a second process out: the in-memory stream heads make this
    /// process the only writer.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::Backend(e.to_string()))?;
            }
        }
        let lock_path = path.with_extension("lock");
        let lock = File::create(&lock_path).map_err(|e| StoreError::Backend(e.to_string()))?;
        lock.try_lock()
            .map_err(|_| StoreError::Locked(lock_path.display().to_string()))?;

        let conn = Connection::open(&path)?;
        configure(&conn)?;
        // Checkpoints run on their own thread (see `Checkpointer`); a WAL
        // that was started over is cut back to this size.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.pragma_update(None, "journal_size_limit", CHECKPOINT_INLINE_BYTES as i64)?;
        conn.execute_batch(SCHEMA)?;
        add_global_chain(&conn)?;
        drop_old_stream_index(&conn)?;
        let mut writer = Writer {
            conn,
            heads: HashMap::new(),
            unindexed: HashMap::new(),
            unindexed_events: 0,
            index_flush: INDEX_FLUSH_EVENTS,
            head_position: 0,
            head_chain: GENESIS,
        };
        load_heads(&mut writer)?;
        if writer.unindexed_events >= writer.index_flush {
            let tx = writer.conn.unchecked_transaction()?;
            flush_index(&tx, &writer.unindexed, writer.head_position)?;
            tx.commit()?;
            writer.unindexed.clear();
            writer.unindexed_events = 0;
        }
        let head = writer.head_position;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let r = Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_ONLY
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX
                    | OpenFlags::SQLITE_OPEN_URI,
            )?;
            r.pragma_update(None, "busy_timeout", 5000)?;
            r.pragma_update(None, "cache_size", -READER_CACHE_KB)?;
            readers.push(Mutex::new(r));
        }
        let checkpointer = Checkpointer::start(&path)?;
        let snapshots = open_snapshots(&path)?;
        Ok(SqliteStore {
            path,
            writer: Mutex::new(writer),
            readers,
            head: Mutex::new(head),
            appended: Condvar::new(),
            checkpointer,
            snapshots: Mutex::new(snapshots),
            keys_w: Mutex::new(None),
            keys_r: Mutex::new(None),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn reader(&self) -> parking_lot::MutexGuard<'_, Connection> {
        for r in &self.readers {
            if let Some(g) = r.try_lock() {
                return g;
            }
        }
        self.readers[0].lock()
    }

    /// The first column of a query on the usage keys' own reading
    /// connection (opened on first use).
    fn query_keys(&self, sql: &str, params: &[i64]) -> Result<Vec<i64>, StoreError> {
        let mut guard = self.keys_r.lock();
        if guard.is_none() {
            *guard = Some(open_keys(&self.path)?);
        }
        let Some(c) = guard.as_mut() else {
            return Err(StoreError::Backend("usage keys unavailable".into()));
        };
        let mut stmt = c.prepare_cached(sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(params), |r| r.get::<_, i64>(0))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r?);
        }
        Ok(out)
    }

    /// Writes the in-memory tail of the stream index now (e.g. when idle).
    pub fn flush_index(&self) -> Result<(), StoreError> {
        let mut w = self.writer.lock();
        if w.unindexed.is_empty() {
            return Ok(());
        }
        let tx = w.conn.unchecked_transaction()?;
        flush_index(&tx, &w.unindexed, w.head_position)?;
        tx.commit()?;
        w.unindexed.clear();
        w.unindexed_events = 0;
        Ok(())
    }

    /// Flush the stream index every `events` unindexed events instead of
    /// [`INDEX_FLUSH_EVENTS`] (tests use small values to cross flushes).
    pub fn with_index_flush(self, events: usize) -> Self {
        self.writer.lock().index_flush = events.max(1);
        self
    }
}

impl Drop for SqliteStore {
    /// Folds the WAL back into the database file on a clean close, so the
    /// file alone holds everything (the readers' connections are read-only
    /// and could not do it when they close last).
    fn drop(&mut self) {
        self.checkpointer.stop();
        let w = self.writer.lock();
        let _ = w.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
    }
}

const GLOBAL_CHAIN: &str = include_str!("../../../migrations/sqlite/0003_global_chain.sql");
const SNAPSHOTS: &str = include_str!("../../../migrations/sqlite/0004_snapshots.sql");

/// The snapshot file of the log at `path`.
pub fn snapshots_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".snapshots");
    PathBuf::from(p)
}

const USAGE_KEYS: &str = include_str!("../../../migrations/sqlite/0005_usage_keys.sql");

/// The usage keys' file of the log at `path`.
pub fn keys_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".keys");
    PathBuf::from(p)
}

fn open_keys(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(keys_path(path))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // As durable as the log: once a run is reported stored, the index
    // drops it from memory and a snapshot relies on it.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "busy_timeout", 5000)?;
    conn.execute_batch(USAGE_KEYS)?;
    Ok(conn)
}

fn open_snapshots(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(snapshots_path(path))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "busy_timeout", 5000)?;
    conn.execute_batch(SNAPSHOTS)?;
    Ok(conn)
}
const NO_UPDATE_TRIGGER: &str =
    "CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;";

/// Migration 3 (the `chain` column), once: in one transaction with the
/// chain of every event already stored, computed in log order (the only
/// time an event row is ever updated, with the append-only trigger lifted
/// for that transaction alone).
fn add_global_chain(conn: &Connection) -> Result<(), StoreError> {
    let has: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('events') WHERE name = 'chain'",
        [],
        |r| r.get(0),
    )?;
    if has {
        return Ok(());
    }
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch(GLOBAL_CHAIN)?;
    tx.execute_batch("DROP TRIGGER IF EXISTS events_no_update;")?;
    {
        let mut read = tx.prepare("SELECT pos, hash FROM events ORDER BY pos")?;
        let mut write = tx.prepare("UPDATE events SET chain = ?1 WHERE pos = ?2")?;
        let mut rows = read.query([])?;
        let mut chain = GENESIS;
        while let Some(r) = rows.next()? {
            let pos: i64 = r.get(0)?;
            let hash = crate::hash::from_stored(&r.get::<_, Vec<u8>>(1)?);
            chain = crate::hash::chain_hash(&chain, pos as u64, &hash);
            write.execute(params![&chain[..], pos])?;
        }
    }
    tx.execute_batch(NO_UPDATE_TRIGGER)?;
    tx.commit()?;
    Ok(())
}

fn meta_value(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?)
}

/// A store written before the runs existed: its `stream_index` rows are
/// derived data, so they are dropped and the runs rebuilt from the log.
fn drop_old_stream_index(conn: &Connection) -> Result<(), StoreError> {
    let old: bool = conn.query_row("SELECT EXISTS (SELECT 1 FROM stream_index)", [], |r| {
        r.get(0)
    })?;
    if old {
        let tx = conn.unchecked_transaction()?;
        tx.execute("DELETE FROM stream_index", [])?;
        tx.execute("DELETE FROM stream_runs", [])?;
        tx.execute("DELETE FROM meta WHERE key = 'stream_index_pos'", [])?;
        tx.commit()?;
    }
    Ok(())
}

/// Rebuilds stream heads from the runs and the log tail past them.
fn load_heads(w: &mut Writer) -> Result<(), StoreError> {
    let indexed: u64 = meta_value(&w.conn, "stream_index_pos")?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    {
        // SQLite takes the bare columns from the row holding the MAX.
        let mut stmt = w.conn.prepare(
            "SELECT stream, MAX(first_version), last_version, positions FROM stream_runs GROUP BY stream",
        )?;
        let mut hash_at = w.conn.prepare("SELECT hash FROM events WHERE pos = ?1")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Vec<u8>>(3)?,
            ))
        })?;
        for row in rows {
            let (stream, version, positions) = row?;
            let last = *decode_positions(&positions)?
                .last()
                .ok_or_else(|| StoreError::Corrupt(format!("empty stream run for {stream}")))?;
            let hash: Vec<u8> = hash_at
                .query_row([last as i64], |r| r.get(0))
                .optional()?
                .ok_or_else(|| {
                    StoreError::Corrupt(format!("stream run of {stream} points past the log"))
                })?;
            w.heads.insert(
                stream,
                StreamHead {
                    version: version as u64,
                    hash: to_hash(&hash)?,
                },
            );
        }
    }
    let mut stmt = w
        .conn
        .prepare("SELECT pos, stream, version, hash FROM events WHERE pos > ?1 ORDER BY pos")?;
    let rows = stmt.query_map([indexed as i64], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, Vec<u8>>(3)?,
        ))
    })?;
    let mut tail: Vec<(String, u64, u64)> = Vec::new();
    for row in rows {
        let (pos, stream, version, hash) = row?;
        let expected = w.heads.get(&stream).map_or(0, |h| h.version) + 1;
        if version as u64 != expected {
            return Err(StoreError::Corrupt(format!(
                "stream {stream} jumps to version {version} at position {pos}, expected {expected}"
            )));
        }
        let head = StreamHead {
            version: version as u64,
            hash: to_hash(&hash)?,
        };
        match w.heads.get_mut(&stream) {
            Some(h) => *h = head,
            None => {
                w.heads.insert(stream.clone(), head);
            }
        }
        tail.push((stream, version as u64, pos as u64));
    }
    drop(stmt);
    for (stream, version, pos) in tail {
        w.index(&stream, version, pos);
    }
    w.head_position = w
        .conn
        .query_row("SELECT COALESCE(MAX(pos), 0) FROM events", [], |r| {
            r.get::<_, i64>(0)
        })? as u64;
    if w.head_position > 0 {
        let chain: Option<Vec<u8>> = w.conn.query_row(
            "SELECT chain FROM events WHERE pos = ?1",
            [w.head_position as i64],
            |r| r.get(0),
        )?;
        w.head_chain = to_hash(&chain.unwrap_or_default())?;
    }
    Ok(())
}

fn to_hash(bytes: &[u8]) -> Result<[u8; 32], StoreError> {
    bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("hash of {} bytes", bytes.len())))
}

const INSERT_RUN: &str =
    "INSERT INTO stream_runs (stream, first_version, last_version, positions) VALUES (?1, ?2, ?3, ?4)";

fn flush_index<'a>(
    conn: &Connection,
    runs: impl IntoIterator<Item = (&'a String, &'a Run)>,
    upto: u64,
) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(INSERT_RUN)?;
    for (stream, run) in runs {
        write_run(&mut stmt, stream, run.first_version, &run.positions)?;
    }
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('stream_index_pos', ?1)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [upto.to_string()],
    )?;
    Ok(())
}

fn write_run(
    stmt: &mut rusqlite::CachedStatement<'_>,
    stream: &str,
    first_version: u64,
    positions: &[u64],
) -> Result<(), StoreError> {
    if positions.is_empty() {
        return Ok(());
    }
    let last_version = first_version + positions.len() as u64 - 1;
    stmt.execute(params![
        stream,
        first_version as i64,
        last_version as i64,
        encode_positions(positions)
    ])?;
    Ok(())
}

/// Appends the positions of `run`'s versions from `next_version` on, up to
/// `limit` in all, and moves `next_version` past them.
fn take_from(run: &Run, next_version: &mut u64, limit: usize, out: &mut Vec<u64>) {
    if *next_version < run.first_version {
        return; // a gap cannot happen; never return events out of order
    }
    let skip = (*next_version - run.first_version) as usize;
    for p in run.positions.iter().skip(skip) {
        if out.len() >= limit {
            return;
        }
        out.push(*p);
        *next_version += 1;
    }
}

fn row_to_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<RecordedEvent> {
    let h = crate::hash::from_stored(&r.get::<_, Vec<u8>>(8)?);
    Ok(RecordedEvent {
        position: r.get::<_, i64>(0)? as u64,
        stream: r.get(1)?,
        version: r.get::<_, i64>(2)? as u64,
        type_name: r.get(3)?,
        schema: r.get::<_, i64>(4)? as u32,
        occurred_at: from_micros(r.get(5)?),
        recorded_at: from_micros(r.get(6)?),
        payload: r.get(7)?,
        hash: h,
        chain: crate::hash::from_stored(&r.get::<_, Option<Vec<u8>>>(9)?.unwrap_or_default()),
    })
}

const COLUMNS: &str =
    "pos, stream, version, type, schema, occurred_us, recorded_us, payload, hash, chain";

impl EventStore for SqliteStore {
    fn append(
        &self,
        batch: &[StreamAppend],
        recorded_at: DateTime<Utc>,
    ) -> Result<Appended, StoreError> {
        let mut guard = self.writer.lock();
        let w = &mut *guard;
        let start = w.head_position;
        let heads = &w.heads;
        let (placed, new_heads) =
            crate::place(batch, start, w.head_chain, micros(recorded_at), |s| {
                heads.get(s).copied().unwrap_or(crate::EMPTY_HEAD)
            })?;
        let recorded_us = micros(recorded_at);
        let pos = placed.last().map_or(start, |p| p.position);
        let tx = w.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO events (pos, stream, version, type, schema, occurred_us, recorded_us, payload, hash, chain)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            for p in &placed {
                stmt.execute(params![
                    p.position as i64,
                    p.stream,
                    p.version as i64,
                    p.event.type_name,
                    p.event.schema,
                    p.occurred_us,
                    recorded_us,
                    p.event.payload,
                    &p.hash[..],
                    &p.chain[..],
                ])?;
            }
        }
        let flush = w.unindexed_events + placed.len() >= w.index_flush;
        if flush {
            // Index the tail and this batch in this same transaction: the
            // tail's runs, then one run per stream append of the batch.
            flush_index(&tx, &w.unindexed, pos)?;
            let mut stmt = tx.prepare_cached(INSERT_RUN)?;
            let mut i = 0;
            for s in batch {
                let n = s.events.len();
                let run = &placed[i..i + n];
                if let Some(first) = run.first() {
                    let positions: Vec<u64> = run.iter().map(|p| p.position).collect();
                    write_run(&mut stmt, &s.stream, first.version, &positions)?;
                }
                i += n;
            }
        }
        // On any error above, `tx` rolls back on drop and nothing in memory changed.
        tx.commit()?;
        for (s, h) in new_heads {
            match w.heads.get_mut(s) {
                Some(head) => *head = h,
                None => {
                    w.heads.insert(s.to_string(), h);
                }
            }
        }
        if flush {
            w.unindexed.clear();
            w.unindexed_events = 0;
        } else {
            for p in &placed {
                w.index(p.stream, p.version, p.position);
            }
        }
        w.head_position = pos;
        if let Some(last) = placed.last() {
            w.head_chain = last.chain;
        }
        let bytes: usize = placed
            .iter()
            .map(|p| p.event.payload.len() + p.stream.len() + 96)
            .sum();
        if self.checkpointer.appended(bytes) {
            // (busy, frames in the WAL, frames checkpointed): busy = 0 when
            // the WAL was started over.
            let busy = w
                .conn
                .query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get::<_, i64>(0));
            if busy == Ok(0) {
                self.checkpointer.restarted();
            }
        }
        drop(guard);
        *self.head.lock() = pos;
        self.appended.notify_all();
        Ok(Appended {
            first_position: if pos > start { start + 1 } else { 0 },
            last_position: pos,
        })
    }

    fn read_stream(
        &self,
        stream: &str,
        after_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        // The in-memory tail first (a snapshot under the writer lock): a
        // flush right after it moves these into the runs read below, where
        // they are found again and skipped as already seen.
        let tail: Option<Run> = {
            let w = self.writer.lock();
            w.unindexed.get(stream).cloned()
        };
        let conn = self.reader();
        let mut wanted: Vec<u64> = Vec::new();
        let mut next_version = after_version + 1;
        {
            let mut stmt = conn.prepare_cached(
                "SELECT first_version, positions FROM stream_runs
                 WHERE stream = ?1 AND last_version > ?2 ORDER BY first_version",
            )?;
            let mut rows = stmt.query(params![stream, after_version as i64])?;
            while let Some(r) = rows.next()? {
                if wanted.len() >= limit {
                    break;
                }
                let run = Run {
                    first_version: r.get::<_, i64>(0)? as u64,
                    positions: decode_positions(&r.get::<_, Vec<u8>>(1)?)?,
                };
                take_from(&run, &mut next_version, limit, &mut wanted);
            }
        }
        if let Some(run) = &tail {
            take_from(run, &mut next_version, limit, &mut wanted);
        }
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {COLUMNS} FROM events WHERE pos = ?1"))?;
        let mut out = Vec::with_capacity(wanted.len());
        for p in wanted {
            match stmt.query_row([p as i64], row_to_event).optional()? {
                Some(e) => out.push(e),
                None => {
                    return Err(StoreError::Corrupt(format!(
                        "the stream index of {stream} points at missing position {p}"
                    )))
                }
            }
        }
        Ok(out)
    }

    fn read_all(
        &self,
        after_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM events WHERE pos > ?1 ORDER BY pos LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![after_position as i64, limit as i64], row_to_event)?;
        let mut out = Vec::with_capacity(limit.min(10_000));
        for r in rows {
            out.push(r?);
        }
        Ok(out)
    }

    fn read_at(&self, position: u64) -> Result<Option<RecordedEvent>, StoreError> {
        let conn = self.reader();
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {COLUMNS} FROM events WHERE pos = ?1"))?;
        Ok(stmt.query_row([position as i64], row_to_event).optional()?)
    }

    fn head_position(&self) -> Result<u64, StoreError> {
        Ok(*self.head.lock())
    }

    fn stream_head(&self, stream: &str) -> Result<StreamHead, StoreError> {
        Ok(self
            .writer
            .lock()
            .heads
            .get(stream)
            .copied()
            .unwrap_or(StreamHead {
                version: 0,
                hash: GENESIS,
            }))
    }

    fn wait_for(&self, after_position: u64, timeout: Duration) -> Result<u64, StoreError> {
        let mut head = self.head.lock();
        if *head <= after_position {
            let _ = self.appended.wait_for(&mut head, timeout);
        }
        Ok(*head)
    }

    fn checkpoint(&self, name: &str) -> Result<u64, StoreError> {
        let conn = self.reader();
        let v: Option<i64> = conn
            .query_row("SELECT pos FROM checkpoints WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(v.unwrap_or(0) as u64)
    }

    fn set_checkpoint(&self, name: &str, position: u64) -> Result<(), StoreError> {
        let w = self.writer.lock();
        w.conn.execute(
            "INSERT INTO checkpoints (name, pos) VALUES (?1, ?2)
             ON CONFLICT(name) DO UPDATE SET pos = MAX(pos, excluded.pos)",
            params![name, position as i64],
        )?;
        Ok(())
    }

    fn meta_get(&self, key: &str) -> Result<Option<String>, StoreError> {
        meta_value(&self.reader(), key)
    }

    fn meta_put(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let w = self.writer.lock();
        w.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    fn meta_list(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT key, value FROM meta WHERE substr(key, 1, length(?1)) = ?1 ORDER BY key",
        )?;
        let rows = stmt.query_map([prefix], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r?);
        }
        Ok(out)
    }

    fn put_snapshot(&self, position: u64, bytes: &[u8], keep: usize) -> Result<(), StoreError> {
        let mut c = self.snapshots.lock();
        let tx = c.transaction()?;
        tx.execute(
            "INSERT INTO snapshots (pos, created_us, bytes) VALUES (?1, ?2, ?3) \
             ON CONFLICT(pos) DO UPDATE SET created_us = excluded.created_us, bytes = excluded.bytes",
            params![position as i64, Utc::now().timestamp_micros(), bytes],
        )?;
        tx.execute(
            "DELETE FROM snapshots WHERE pos NOT IN \
             (SELECT pos FROM snapshots ORDER BY pos DESC LIMIT ?1)",
            params![keep.max(1) as i64],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn snapshot_positions(&self) -> Result<Vec<u64>, StoreError> {
        let c = self.snapshots.lock();
        let mut stmt = c.prepare_cached("SELECT pos FROM snapshots ORDER BY pos DESC")?;
        let rows = stmt.query_map([], |r| r.get::<_, i64>(0))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r? as u64);
        }
        Ok(out)
    }

    fn put_usage_keys(&self, keys: &[(u32, u64)]) -> Result<(), StoreError> {
        let mut guard = self.keys_w.lock();
        if guard.is_none() {
            *guard = Some(open_keys(&self.path)?);
        }
        let Some(c) = guard.as_mut() else {
            return Err(StoreError::Backend("usage keys unavailable".into()));
        };
        // One transaction: the run is stored whole or not at all.
        let tx = c.transaction()?;
        {
            let mut stmt =
                tx.prepare_cached("INSERT OR IGNORE INTO usage_keys (fp, pos) VALUES (?1, ?2)")?;
            for (fp, pos) in keys {
                stmt.execute(rusqlite::params![i64::from(*fp), *pos as i64])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn usage_key_positions(&self, fp: u32) -> Result<Vec<u64>, StoreError> {
        let found =
            self.query_keys("SELECT pos FROM usage_keys WHERE fp = ?1", &[i64::from(fp)])?;
        Ok(found.into_iter().map(|n| n as u64).collect())
    }

    fn usage_key_fingerprints(&self, from: u32, to: u32) -> Result<Vec<u32>, StoreError> {
        let found = self.query_keys(
            "SELECT fp FROM usage_keys WHERE fp BETWEEN ?1 AND ?2",
            &[i64::from(from), i64::from(to)],
        )?;
        Ok(found.into_iter().map(|n| n as u32).collect())
    }

    fn read_snapshot(&self, position: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let c = self.snapshots.lock();
        let mut stmt = c.prepare_cached("SELECT bytes FROM snapshots WHERE pos = ?1")?;
        let mut rows = stmt.query([position as i64])?;
        Ok(match rows.next()? {
            Some(r) => Some(r.get(0)?),
            None => None,
        })
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}

/// The physical bound for benchmarks: inserts `rows` (stream, payload) into
/// a fresh `events` table at `path` with the same schema and durability, in
/// transactions of `batch` rows, with no domain logic and no hashing.
/// Returns rows per second.
pub fn raw_insert_rows_per_s(
    path: &Path,
    rows: impl Iterator<Item = (String, Vec<u8>)>,
    batch: usize,
) -> Result<f64, StoreError> {
    let conn = Connection::open(path)?;
    configure(&conn)?;
    conn.execute_batch(SCHEMA)?;
    add_global_chain(&conn)?;
    let started = std::time::Instant::now();
    let hash = [0u8; 32];
    let mut pos = 0i64;
    let mut rows = rows.peekable();
    while rows.peek().is_some() {
        let tx = conn.unchecked_transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO events (pos, stream, version, type, schema, occurred_us, recorded_us, payload, hash, chain)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            for (stream, payload) in rows.by_ref().take(batch.max(1)) {
                pos += 1;
                stmt.execute(params![
                    pos,
                    stream,
                    pos,
                    "CreditsConsumed",
                    1,
                    pos,
                    pos,
                    payload,
                    &hash[..],
                    &hash[..]
                ])?;
            }
        }
        tx.commit()?;
    }
    Ok(pos as f64 / started.elapsed().as_secs_f64().max(1e-9))
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::conformance_suite!(
        |dir: &std::path::Path| SqliteStore::open(dir.join("ledger.db"))
            .unwrap()
            .with_index_flush(1000)
    );

    /// Background checkpoints keep the WAL from growing with the log.
    #[test]
    fn the_wal_stays_small_while_the_log_grows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let s = SqliteStore::open(&path).unwrap();
        let payload = vec![b'x'; 1000];
        for round in 0..400u64 {
            let batch = vec![StreamAppend {
                stream: "account-a".into(),
                expected: crate::ExpectedVersion::Exact(round * 300),
                events: (0..300)
                    .map(|_| crate::NewEvent {
                        type_name: "CreditsConsumed",
                        schema: 1,
                        occurred_at: crate::conformance::t(1),
                        payload: payload.clone(),
                    })
                    .collect(),
            }];
            s.append(&batch, crate::conformance::t(2)).unwrap();
        }
        let wal = std::fs::metadata(path.with_extension("db-wal"))
            .unwrap()
            .len();
        let db = std::fs::metadata(&path).unwrap().len();
        assert!(db > 100 << 20, "the database file holds the log: {db}");
        // Bounded by the restart distance, twice over: a restart that finds
        // the background checkpoint busy is retried at the next append.
        assert!(
            wal <= 2 * CHECKPOINT_INLINE_BYTES as u64,
            "130 MB appended, WAL at {wal} bytes"
        );
    }

    #[test]
    fn positions_round_trip_through_varints() {
        for v in [
            vec![1u64],
            vec![1, 2, 3, 4],
            vec![5, 130, 16_500, 2_100_000, u64::MAX >> 1],
            (1..5000).map(|i| i * 997).collect(),
        ] {
            assert_eq!(decode_positions(&encode_positions(&v)).unwrap(), v);
        }
        assert!(
            decode_positions(&[0x80]).is_err(),
            "a cut varint is corrupt"
        );
    }

    /// Streams interleaved unevenly, flushed several times, reopened with a
    /// tail past the last flush: every stream reads back whole and chained,
    /// and appends go on at the right versions.
    #[test]
    fn runs_and_tail_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let mut versions = std::collections::HashMap::new();
        {
            let s = SqliteStore::open(&path).unwrap().with_index_flush(300);
            for i in 0..1_234u64 {
                let stream = format!("account-{}", (i * i) % 17);
                let v = versions.entry(stream.clone()).or_insert(0u64);
                crate::conformance::append_n(&s, &stream, *v, 1 + i % 3);
                *v += 1 + i % 3;
            }
        }
        let s = SqliteStore::open(&path).unwrap().with_index_flush(300);
        assert!(
            s.writer.lock().unindexed_events > 0,
            "a tail is left to rebuild"
        );
        for (stream, v) in &versions {
            assert_eq!(s.stream_head(stream).unwrap().version, *v);
            let events = s.read_stream(stream, 0, 100_000).unwrap();
            assert_eq!(
                events.iter().map(|e| e.version).collect::<Vec<_>>(),
                (1..=*v).collect::<Vec<_>>()
            );
            let mut prev = GENESIS;
            for e in &events {
                assert_eq!(crate::hash::recorded_hash(&prev, e), e.hash);
                prev = e.hash;
            }
            crate::conformance::append_n(&s, stream, *v, 1);
        }
    }

    /// A store from before the runs (rows in `stream_index`) reopens with
    /// its index rebuilt as runs from the log.
    #[test]
    fn an_old_stream_index_is_rebuilt_as_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        {
            let s = SqliteStore::open(&path).unwrap();
            crate::conformance::append_n(&s, "account-a", 0, 5);
            crate::conformance::append_n(&s, "account-b", 0, 2);
            let w = s.writer.lock();
            // What the old flush wrote: one row per event and a high-water mark.
            w.conn
                .execute_batch(
                    "INSERT INTO stream_index (stream, version, pos)
                       SELECT stream, version, pos FROM events;
                     INSERT INTO meta (key, value) VALUES ('stream_index_pos', '7');",
                )
                .unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        let old: i64 = s
            .writer
            .lock()
            .conn
            .query_row("SELECT COUNT(*) FROM stream_index", [], |r| r.get(0))
            .unwrap();
        assert_eq!(old, 0);
        assert_eq!(s.read_stream("account-a", 2, 10).unwrap().len(), 3);
        assert_eq!(s.stream_head("account-b").unwrap().version, 2);
        s.flush_index().unwrap();
        drop(s);
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.writer.lock().unindexed_events, 0);
        assert_eq!(s.read_stream("account-a", 0, 10).unwrap().len(), 5);
    }

    #[test]
    fn a_second_process_cannot_open_the_same_store() {
        let dir = tempfile::tempdir().unwrap();
        let _a = SqliteStore::open(dir.path().join("l.db")).unwrap();
        assert!(matches!(
            SqliteStore::open(dir.path().join("l.db")),
            Err(StoreError::Locked(_))
        ));
    }

    #[test]
    fn the_log_refuses_updates_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path().join("l.db")).unwrap();
        crate::conformance::append_n(&s, "account-a", 0, 1);
        let w = s.writer.lock();
        assert!(w
            .conn
            .execute("UPDATE events SET payload = x'00'", [])
            .is_err());
        assert!(w.conn.execute("DELETE FROM events", []).is_err());
    }
}
