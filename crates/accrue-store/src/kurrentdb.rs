//! The KurrentDB (EventStoreDB) backend, behind the `kurrentdb` feature.
//! Compiled and linted here, never run: no server can be installed on the
//! project's machines (README, `ops/kurrentdb/`). The mapping and what it
//! cannot guarantee are argued in ARCHITECTURE.md, "KurrentDB backend
//! (unverified)". In short:
//!
//! - Every batch is ONE append to the log stream `{prefix}-log`, with the
//!   expected revision of the head this store knows: KurrentDB appends to one
//!   stream atomically, so the batch is all or nothing, and the log stream's
//!   revision + 1 is accrue's gapless global position (`$all` positions are
//!   not gapless). Stream, version, schema, both instants and both hashes
//!   travel in each event's custom metadata; the payload is its data.
//! - Per-stream expected versions are checked by accrue ([`crate::place`])
//!   against an index of the log this store keeps in memory, complete up to
//!   the expected revision: an append at that revision can only succeed if
//!   nobody appended since, so the check is as strong as the SQL stores'.
//! - Event ids are UUIDv5 of (prefix, stream, version, event hash): a retry
//!   of a lost acknowledgement sends the same ids at the same expected
//!   revision and the server's idempotency answers it without duplicating;
//!   a different event at the same place has a different id and is refused.
//! - One writer per ledger through a lease stream (`{prefix}-writer`),
//!   renewed in the background; a writer that lost it gets
//!   [`StoreError::Locked`] on its next append.
//! - Checkpoints and meta values are one stream per name with `$maxCount`
//!   1; snapshots are chunked streams with a completion marker and an index
//!   stream; usage keys go to 65,536 bucket streams.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use kurrentdb::{
    AppendToStreamOptions, Client, ClientSettings, DeleteStreamOptions, EventData,
    ReadStreamOptions, StreamMetadata, StreamPosition, StreamState, SubscribeToStreamOptions,
};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::hash::GENESIS;
use crate::{
    Appended, EventStore, RecordedEvent, StoreError, StreamAppend, StreamHead, EMPTY_HEAD,
};

/// How long one call to the server may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Events per read page when catching the index up with the log.
const PAGE: usize = 1000;
/// Snapshot bytes per event (and per append: the server's default
/// `MaxAppendSize` is 1 MiB).
const CHUNK: usize = 512 * 1024;
/// The writer lease: how long it lasts without renewal, how often it is renewed.
const LEASE_TTL: Duration = Duration::from_secs(10);
const LEASE_RENEW: Duration = Duration::from_secs(3);
/// How long `open` waits for another writer's lease to end.
const LEASE_WAIT: Duration = Duration::from_secs(15);
/// The prefix of every stream of a ledger unless `open_with_prefix` says otherwise.
pub const DEFAULT_PREFIX: &str = "accrue";
const META_MAGIC: &[u8] = b"accrue-kdb-1";

fn kerr(what: &str, e: kurrentdb::Error) -> StoreError {
    StoreError::Backend(format!("KurrentDB {what}: {e}"))
}

fn from_micros(us: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(us).single().unwrap_or_default()
}

/// The namespace of accrue's event ids (UUIDv5 of a fixed name).
fn namespace() -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_URL, b"urn:accrue:kurrentdb:event")
}

/// The id of the event at (`stream`, `version`) with hash `hash`.
pub fn event_id(prefix: &str, stream: &str, version: u64, hash: &[u8; 32]) -> Uuid {
    let mut name = Vec::with_capacity(prefix.len() + stream.len() + 56);
    for part in [prefix.as_bytes(), stream.as_bytes()] {
        name.extend_from_slice(&(part.len() as u64).to_be_bytes());
        name.extend_from_slice(part);
    }
    name.extend_from_slice(&version.to_be_bytes());
    name.extend_from_slice(hash);
    Uuid::new_v5(&namespace(), &name)
}

/// What an event of the log carries besides its type and payload.
struct LogMeta {
    stream: String,
    version: u64,
    schema: u32,
    occurred_us: i64,
    recorded_us: i64,
    hash: [u8; 32],
    chain: [u8; 32],
}

fn encode_meta(m: &LogMeta) -> Vec<u8> {
    let mut b = Vec::with_capacity(META_MAGIC.len() + m.stream.len() + 100);
    b.extend_from_slice(META_MAGIC);
    b.extend_from_slice(&(m.stream.len() as u32).to_be_bytes());
    b.extend_from_slice(m.stream.as_bytes());
    b.extend_from_slice(&m.version.to_be_bytes());
    b.extend_from_slice(&m.schema.to_be_bytes());
    b.extend_from_slice(&m.occurred_us.to_be_bytes());
    b.extend_from_slice(&m.recorded_us.to_be_bytes());
    b.extend_from_slice(&m.hash);
    b.extend_from_slice(&m.chain);
    b
}

/// A cursor over bytes that never panics: a short read is `None`.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn arr<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N).and_then(|s| s.try_into().ok())
    }
    fn u32(&mut self) -> Option<u32> {
        self.arr().map(u32::from_be_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.arr().map(u64::from_be_bytes)
    }
    fn i64(&mut self) -> Option<i64> {
        self.arr().map(i64::from_be_bytes)
    }
}

fn decode_meta(b: &[u8]) -> Option<LogMeta> {
    let mut c = Cursor(b);
    if c.take(META_MAGIC.len())? != META_MAGIC {
        return None;
    }
    let len = c.u32()? as usize;
    let stream = String::from_utf8(c.take(len)?.to_vec()).ok()?;
    let m = LogMeta {
        stream,
        version: c.u64()?,
        schema: c.u32()?,
        occurred_us: c.i64()?,
        recorded_us: c.i64()?,
        hash: c.arr()?,
        chain: c.arr()?,
    };
    c.0.is_empty().then_some(m)
}

/// An event of the log stream as an accrue event.
fn to_event(log: &str, e: &kurrentdb::RecordedEvent) -> Result<RecordedEvent, StoreError> {
    let m = decode_meta(&e.custom_metadata).ok_or_else(|| {
        StoreError::Corrupt(format!(
            "event {} of {log} has no accrue metadata",
            e.revision
        ))
    })?;
    Ok(RecordedEvent {
        position: e.revision + 1,
        stream: m.stream,
        version: m.version,
        type_name: e.event_type.clone(),
        schema: m.schema,
        occurred_at: from_micros(m.occurred_us),
        recorded_at: from_micros(m.recorded_us),
        payload: e.data.to_vec(),
        hash: m.hash,
        chain: m.chain,
    })
}

/// One stream's place in the log.
#[derive(Default)]
struct StreamIndex {
    head: Option<StreamHead>,
    /// Global positions of its events, by version - 1.
    positions: Vec<u64>,
}

/// The log as far as this store has read it: every stream's head and the
/// positions of its events (8 bytes an event), the head and its chain.
struct Index {
    at: u64,
    chain: [u8; 32],
    streams: HashMap<String, StreamIndex>,
}

impl Index {
    fn head(&self, stream: &str) -> StreamHead {
        self.streams
            .get(stream)
            .and_then(|s| s.head)
            .unwrap_or(EMPTY_HEAD)
    }

    /// Adds the next event of the log; refuses one out of place.
    fn push(&mut self, log: &str, e: &RecordedEvent) -> Result<(), StoreError> {
        let s = self.streams.entry(e.stream.clone()).or_default();
        if e.position != self.at + 1 || e.version != s.positions.len() as u64 + 1 {
            return Err(StoreError::Corrupt(format!(
                "{log}: event at position {} is {}#{} after position {} and version {}",
                e.position,
                e.stream,
                e.version,
                self.at,
                s.positions.len()
            )));
        }
        s.positions.push(e.position);
        s.head = Some(StreamHead {
            version: e.version,
            hash: e.hash,
        });
        self.at = e.position;
        self.chain = e.chain;
        Ok(())
    }
}

/// The writer lease this store holds.
struct Lease {
    owner: Uuid,
    /// Revision of our last lease event on the lease stream.
    revision: AtomicU64,
    /// Set when another writer took the lease or renewal failed too long.
    lost: AtomicBool,
}

/// The KurrentDB store. Blocking: every call runs on a runtime of its own
/// (on a scoped thread when called from inside another tokio runtime).
pub struct KurrentStore {
    rt: Option<tokio::runtime::Runtime>,
    client: Client,
    prefix: String,
    log: String,
    index: Mutex<Index>,
    lease: Option<Arc<Lease>>,
    renewer: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for KurrentStore {
    fn drop(&mut self) {
        if let Some(h) = self.renewer.take() {
            h.abort();
        }
        if let Some(lease) = self.lease.take() {
            if !lease.lost.load(Ordering::SeqCst) {
                // Best effort: the next writer need not wait for expiry.
                let rev = lease.revision.load(Ordering::SeqCst);
                let ev = lease_event("WriterReleased", lease.owner);
                let stream = format!("{}-writer", self.prefix);
                let client = &self.client;
                let _ = self.block(async move {
                    let release =
                        append(client, &stream, StreamState::StreamRevision(rev), vec![ev]);
                    tokio::time::timeout(Duration::from_secs(2), release)
                        .await
                        .unwrap_or(Ok(0))
                });
            }
        }
        if let Some(rt) = self.rt.take() {
            // Never blocks, so it is safe inside another runtime.
            rt.shutdown_background();
        }
    }
}

/// Runs `fut` on `rt`, from a scoped thread when the caller is itself on a
/// tokio runtime (where `block_on` would panic).
fn block_on<T: Send>(
    rt: &tokio::runtime::Runtime,
    fut: impl Future<Output = Result<T, StoreError>> + Send,
) -> Result<T, StoreError> {
    let timed = async move {
        match tokio::time::timeout(CALL_TIMEOUT, fut).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Backend(format!(
                "KurrentDB: no answer within {}s",
                CALL_TIMEOUT.as_secs()
            ))),
        }
    };
    if tokio::runtime::Handle::try_current().is_err() {
        return rt.block_on(timed);
    }
    std::thread::scope(|s| match s.spawn(move || rt.block_on(timed)).join() {
        Ok(v) => v,
        Err(_) => Err(StoreError::Backend("KurrentDB call thread panicked".into())),
    })
}

fn lease_event(kind: &'static str, owner: Uuid) -> EventData {
    let mut data = owner.as_bytes().to_vec();
    data.extend_from_slice(&(LEASE_TTL.as_millis() as u64).to_be_bytes());
    EventData::binary(kind, data.into()).id(Uuid::new_v4())
}

async fn append(
    client: &Client,
    stream: &str,
    state: StreamState,
    events: Vec<EventData>,
) -> Result<u64, StoreError> {
    let opts = AppendToStreamOptions::default().stream_state(state);
    match client.append_to_stream(stream, &opts, events).await {
        Ok(w) => Ok(w.next_expected_version),
        Err(e) => Err(kerr(&format!("append to {stream}"), e)),
    }
}

/// Whether an append failed on its expected revision.
fn is_wrong_version(e: &kurrentdb::Error) -> bool {
    matches!(e, kurrentdb::Error::WrongExpectedVersion { .. })
}

/// Reads up to `max` events of `stream` from revision `from` in `dir`
/// order; a stream that does not exist (or was deleted) reads empty.
async fn read(
    client: &Client,
    stream: &str,
    from: StreamPosition<u64>,
    max: usize,
    backwards: bool,
) -> Result<Vec<kurrentdb::RecordedEvent>, StoreError> {
    if max == 0 {
        return Ok(Vec::new());
    }
    let mut opts = ReadStreamOptions::default().position(from).max_count(max);
    opts = if backwards {
        opts.backwards()
    } else {
        opts.forwards()
    };
    let mut out = Vec::new();
    let mut r = match client.read_stream(stream, &opts).await {
        Ok(r) => r,
        Err(kurrentdb::Error::ResourceNotFound | kurrentdb::Error::ResourceDeleted) => {
            return Ok(out)
        }
        Err(e) => return Err(kerr(&format!("read {stream}"), e)),
    };
    loop {
        match r.next().await {
            Ok(Some(e)) => {
                if let Some(ev) = e.event {
                    out.push(ev);
                }
                if out.len() >= max {
                    break;
                }
            }
            Ok(None) => break,
            Err(kurrentdb::Error::ResourceNotFound | kurrentdb::Error::ResourceDeleted) => break,
            Err(e) => return Err(kerr(&format!("read {stream}"), e)),
        }
    }
    Ok(out)
}

async fn last(
    client: &Client,
    stream: &str,
) -> Result<Option<kurrentdb::RecordedEvent>, StoreError> {
    Ok(read(client, stream, StreamPosition::End, 1, true)
        .await?
        .into_iter()
        .next())
}

async fn set_max_count(client: &Client, stream: &str, n: u64) -> Result<(), StoreError> {
    let meta = StreamMetadata::builder().max_count(n).build();
    client
        .set_stream_metadata(stream, &AppendToStreamOptions::default(), &meta)
        .await
        .map(|_| ())
        .map_err(|e| kerr(&format!("set metadata of {stream}"), e))
}

fn expected_after(revision_count: u64) -> StreamState {
    match revision_count {
        0 => StreamState::NoStream,
        n => StreamState::StreamRevision(n - 1),
    }
}

impl KurrentStore {
    /// Opens the ledger under [`DEFAULT_PREFIX`] as its writer.
    /// `url`: `kurrentdb://host:2113?tls=false`, `esdb://…` (the client's
    /// connection strings, clusters and `+discover` included).
    pub fn open(url: &str) -> Result<KurrentStore, StoreError> {
        Self::open_with_prefix(url, DEFAULT_PREFIX)
    }

    /// Opens the ledger whose streams start with `prefix`: one database can
    /// hold several ledgers, and each test gets a fresh one.
    pub fn open_with_prefix(url: &str, prefix: &str) -> Result<KurrentStore, StoreError> {
        if prefix.is_empty() || prefix.starts_with('$') {
            return Err(StoreError::Backend(format!(
                "KurrentDB stream prefix {prefix:?} must be non-empty and not start with '$'"
            )));
        }
        // rustls panics on a default config when both ring (lettre) and
        // aws-lc-rs (the client's tonic) are built in and no provider was
        // chosen: choose ring, as the rest of accrue does. An error means
        // one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let settings: ClientSettings = url
            .parse()
            .map_err(|e| StoreError::Backend(format!("KurrentDB connection string: {e}")))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("accrue-kurrentdb")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend(format!("KurrentDB runtime: {e}")))?;
        let client = Client::with_runtime_handle(rt.handle().clone(), settings)
            .map_err(|e| StoreError::Backend(format!("KurrentDB client: {e}")))?;
        let mut store = KurrentStore {
            rt: Some(rt),
            client,
            prefix: prefix.to_string(),
            log: format!("{prefix}-log"),
            index: Mutex::new(Index {
                at: 0,
                chain: GENESIS,
                streams: HashMap::new(),
            }),
            lease: None,
            renewer: None,
        };
        store.acquire_lease()?;
        store.catch_up(&mut store.index.lock())?;
        Ok(store)
    }

    fn rt(&self) -> Result<&tokio::runtime::Runtime, StoreError> {
        self.rt
            .as_ref()
            .ok_or_else(|| StoreError::Backend("KurrentDB store is closed".into()))
    }

    fn block<T: Send>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>> + Send,
    ) -> Result<T, StoreError> {
        block_on(self.rt()?, fut)
    }

    fn stream(&self, kind: &str, name: &str) -> String {
        format!("{}-{kind}-{name}", self.prefix)
    }

    /// Takes the writer lease: waits up to [`LEASE_WAIT`] for another
    /// writer's to be released or expire, then renews it in the background.
    fn acquire_lease(&mut self) -> Result<(), StoreError> {
        let stream = format!("{}-writer", self.prefix);
        let owner = Uuid::new_v4();
        let deadline = Instant::now() + LEASE_WAIT;
        let revision = loop {
            let client = &self.client;
            let prev = self.block(last(client, &stream))?;
            let free = match &prev {
                None => true,
                Some(e) => {
                    let mut c = Cursor(&e.data);
                    let holder = c.arr::<16>().map(Uuid::from_bytes);
                    let ttl = c.u64().unwrap_or(0);
                    let ttl = chrono::TimeDelta::try_milliseconds(ttl.min(3_600_000) as i64);
                    let expires = e.created + ttl.unwrap_or_default();
                    e.event_type == "WriterReleased"
                        || holder == Some(owner)
                        || expires < Utc::now()
                }
            };
            if free {
                let state = expected_after(prev.as_ref().map_or(0, |e| e.revision + 1));
                let ev = lease_event("WriterLease", owner);
                match self.block(async {
                    let opts = AppendToStreamOptions::default().stream_state(state);
                    match client.append_to_stream(stream.as_str(), &opts, ev).await {
                        Ok(w) => Ok(Ok(w.next_expected_version)),
                        Err(e) if is_wrong_version(&e) => Ok(Err(())),
                        Err(e) => Err(kerr("take the writer lease", e)),
                    }
                })? {
                    Ok(rev) => break rev,
                    Err(()) => continue, // someone else moved first: look again
                }
            }
            if Instant::now() >= deadline {
                return Err(StoreError::Locked(format!(
                    "KurrentDB ledger {:?} (another accrue process holds its writer lease)",
                    self.prefix
                )));
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        if revision == 0 {
            self.block(set_max_count(&self.client, &stream, 100))?;
        }
        let lease = Arc::new(Lease {
            owner,
            revision: AtomicU64::new(revision),
            lost: AtomicBool::new(false),
        });
        let task = {
            let lease = lease.clone();
            let client = self.client.clone();
            async move {
                let mut renewed = Instant::now();
                loop {
                    tokio::time::sleep(LEASE_RENEW).await;
                    let rev = lease.revision.load(Ordering::SeqCst);
                    let opts = AppendToStreamOptions::default()
                        .stream_state(StreamState::StreamRevision(rev));
                    let ev = lease_event("WriterLease", lease.owner);
                    match client.append_to_stream(stream.as_str(), &opts, ev).await {
                        Ok(w) => {
                            lease
                                .revision
                                .store(w.next_expected_version, Ordering::SeqCst);
                            renewed = Instant::now();
                        }
                        Err(e) if is_wrong_version(&e) => {
                            lease.lost.store(true, Ordering::SeqCst);
                            return;
                        }
                        // Retried at the next tick; given up once it expired.
                        Err(_) => {
                            if renewed.elapsed() >= LEASE_TTL {
                                lease.lost.store(true, Ordering::SeqCst);
                                return;
                            }
                        }
                    }
                }
            }
        };
        self.renewer = Some(self.rt()?.spawn(task));
        self.lease = Some(lease);
        Ok(())
    }

    fn check_lease(&self) -> Result<(), StoreError> {
        match &self.lease {
            Some(l) if l.lost.load(Ordering::SeqCst) => Err(StoreError::Locked(format!(
                "KurrentDB ledger {:?} (this process lost its writer lease)",
                self.prefix
            ))),
            _ => Ok(()),
        }
    }

    /// Reads the log after the index's head into the index.
    fn catch_up(&self, idx: &mut Index) -> Result<(), StoreError> {
        loop {
            let page = self.block(read(
                &self.client,
                &self.log,
                StreamPosition::Position(idx.at),
                PAGE,
                false,
            ))?;
            for e in &page {
                idx.push(&self.log, &to_event(&self.log, e)?)?;
            }
            if page.len() < PAGE {
                return Ok(());
            }
        }
    }

    /// Log events at positions `from..from + n`, in order.
    fn read_log(&self, from: u64, n: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        if from == 0 || n == 0 {
            return Ok(Vec::new());
        }
        let raw = self.block(read(
            &self.client,
            &self.log,
            StreamPosition::Position(from - 1),
            n,
            false,
        ))?;
        raw.iter().map(|e| to_event(&self.log, e)).collect()
    }
}

impl EventStore for KurrentStore {
    fn append(
        &self,
        batch: &[StreamAppend],
        recorded_at: DateTime<Utc>,
    ) -> Result<Appended, StoreError> {
        self.check_lease()?;
        let mut idx = self.index.lock();
        let recorded_us = recorded_at.timestamp_micros();
        // A few rounds: a foreign append (a writer that has not yet seen
        // that it lost the lease, or a lost acknowledgement) moves the head.
        for _ in 0..3 {
            let (placed, _) = crate::place(batch, idx.at, idx.chain, recorded_us, |s| idx.head(s))?;
            if placed.is_empty() {
                return Ok(Appended {
                    first_position: 0,
                    last_position: idx.at,
                });
            }
            let mut events = Vec::with_capacity(placed.len());
            let mut ids = Vec::with_capacity(placed.len());
            let mut recorded = Vec::with_capacity(placed.len());
            for p in &placed {
                let id = event_id(&self.prefix, p.stream, p.version, &p.hash);
                let meta = LogMeta {
                    stream: p.stream.to_string(),
                    version: p.version,
                    schema: p.event.schema,
                    occurred_us: p.occurred_us,
                    recorded_us,
                    hash: p.hash,
                    chain: p.chain,
                };
                events.push(
                    EventData::binary(p.event.type_name, p.event.payload.clone().into())
                        .id(id)
                        .metadata(encode_meta(&meta).into()),
                );
                ids.push(id);
                recorded.push(RecordedEvent {
                    position: p.position,
                    stream: p.stream.to_string(),
                    version: p.version,
                    type_name: p.event.type_name.to_string(),
                    schema: p.event.schema,
                    occurred_at: from_micros(p.occurred_us),
                    recorded_at: from_micros(recorded_us),
                    payload: p.event.payload.clone(),
                    hash: p.hash,
                    chain: p.chain,
                });
            }
            let state = expected_after(idx.at);
            let client = &self.client;
            let log = self.log.as_str();
            // Ok(Ok): written; Ok(Err(msg)): outcome unknown or refused
            // on the revision, to be reconciled from the log.
            let outcome = self.block(async {
                let opts = AppendToStreamOptions::default().stream_state(state);
                let mut last_err = String::new();
                for attempt in 0..3u32 {
                    match client.append_to_stream(log, &opts, events.clone()).await {
                        Ok(_) => return Ok(Ok(())),
                        Err(e) if is_wrong_version(&e) => return Ok(Err(e.to_string())),
                        // Same ids at the same revision: the server's
                        // idempotency makes the retry safe.
                        Err(e) => {
                            last_err = e.to_string();
                            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                        }
                    }
                }
                Ok(Err(last_err))
            })?;
            let first = idx.at + 1;
            if let Err(why) = outcome {
                // Did our events land (a lost acknowledgement)?
                let there = self.block(read(
                    client,
                    log,
                    StreamPosition::Position(idx.at),
                    ids.len(),
                    false,
                ))?;
                if there.is_empty() {
                    return Err(StoreError::Backend(format!(
                        "KurrentDB append to {log}: {why}"
                    )));
                }
                if there.len() != ids.len() || there.iter().zip(&ids).any(|(e, id)| e.id != *id) {
                    // Someone else appended: learn their events, check again.
                    self.check_lease()?;
                    self.catch_up(&mut idx)?;
                    continue;
                }
            }
            for e in &recorded {
                idx.push(&self.log, e)?;
            }
            return Ok(Appended {
                first_position: first,
                last_position: idx.at,
            });
        }
        Err(StoreError::Backend(format!(
            "KurrentDB append to {}: the log kept moving under this writer",
            self.log
        )))
    }

    fn read_stream(
        &self,
        stream: &str,
        after_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let wanted: Vec<u64> = {
            let mut idx = self.index.lock();
            self.catch_up(&mut idx)?;
            match idx.streams.get(stream) {
                None => return Ok(Vec::new()),
                Some(s) => s
                    .positions
                    .iter()
                    .skip(after_version.min(usize::MAX as u64) as usize)
                    .take(limit)
                    .copied()
                    .collect(),
            }
        };
        // Runs of nearby positions are read in one call and filtered;
        // scattered ones one run at a time.
        let mut out = Vec::with_capacity(wanted.len());
        let mut i = 0;
        while i < wanted.len() {
            let start = wanted[i];
            let mut j = i + 1;
            while j < wanted.len() && wanted[j] - start < 4 * (j - i + 1) as u64 + 16 {
                j += 1;
            }
            let span = (wanted[j - 1] - start + 1) as usize;
            let run = &wanted[i..j];
            for e in self.read_log(start, span)? {
                if run.binary_search(&e.position).is_ok() {
                    if e.stream != stream {
                        return Err(StoreError::Corrupt(format!(
                            "{}: position {} is {} in the index, {} in the log",
                            self.log, e.position, stream, e.stream
                        )));
                    }
                    out.push(e);
                }
            }
            i = j;
        }
        if out.len() != wanted.len() {
            return Err(StoreError::Corrupt(format!(
                "{}: {} of {} events of {stream} are missing",
                self.log,
                wanted.len() - out.len(),
                wanted.len()
            )));
        }
        Ok(out)
    }

    fn read_all(
        &self,
        after_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_log(after_position.saturating_add(1), limit)
    }

    fn read_at(&self, position: u64) -> Result<Option<RecordedEvent>, StoreError> {
        Ok(self
            .read_log(position, 1)?
            .into_iter()
            .next()
            .filter(|e| e.position == position))
    }

    fn head_position(&self) -> Result<u64, StoreError> {
        let mut idx = self.index.lock();
        self.catch_up(&mut idx)?;
        Ok(idx.at)
    }

    fn stream_head(&self, stream: &str) -> Result<StreamHead, StoreError> {
        let mut idx = self.index.lock();
        self.catch_up(&mut idx)?;
        Ok(idx.head(stream))
    }

    fn wait_for(&self, after_position: u64, timeout: Duration) -> Result<u64, StoreError> {
        let head = self.head_position()?;
        if head > after_position || timeout.is_zero() {
            return Ok(head);
        }
        // A subscription to the log from `after_position`: the server
        // pushes the next event, local or not.
        let from = match after_position {
            0 => StreamPosition::Start,
            p => StreamPosition::Position(p - 1),
        };
        let client = &self.client;
        let log = self.log.as_str();
        let wait = timeout.min(CALL_TIMEOUT - Duration::from_secs(1));
        self.block(async move {
            let opts = SubscribeToStreamOptions::default().start_from(from);
            let mut sub = client.subscribe_to_stream(log, &opts).await;
            // Timing out is the normal outcome; an error is reported.
            match tokio::time::timeout(wait, sub.next()).await {
                Ok(Err(e)) => Err(kerr(&format!("subscribe to {log}"), e)),
                _ => Ok(()),
            }
        })?;
        self.head_position()
    }

    fn checkpoint(&self, name: &str) -> Result<u64, StoreError> {
        let stream = self.stream("checkpoint", name);
        let e = self.block(last(&self.client, &stream))?;
        Ok(e.and_then(|e| Cursor(&e.data).u64()).unwrap_or(0))
    }

    fn set_checkpoint(&self, name: &str, position: u64) -> Result<(), StoreError> {
        let stream = self.stream("checkpoint", name);
        let client = &self.client;
        self.block(async {
            // Read, compare, write at that revision: never backwards, even
            // with two projectors racing.
            for _ in 0..10 {
                let prev = last(client, &stream).await?;
                let (old, state) = match &prev {
                    None => (0, StreamState::NoStream),
                    Some(e) => (
                        Cursor(&e.data).u64().unwrap_or(0),
                        StreamState::StreamRevision(e.revision),
                    ),
                };
                if position <= old {
                    return Ok(());
                }
                let opts = AppendToStreamOptions::default().stream_state(state);
                let ev = EventData::binary("Checkpoint", position.to_be_bytes().to_vec().into())
                    .id(Uuid::new_v4());
                match client.append_to_stream(stream.as_str(), &opts, ev).await {
                    Ok(_) => {
                        if prev.is_none() {
                            set_max_count(client, &stream, 1).await?;
                        }
                        return Ok(());
                    }
                    Err(e) if is_wrong_version(&e) => continue,
                    Err(e) => return Err(kerr(&format!("append to {stream}"), e)),
                }
            }
            Err(StoreError::Backend(format!(
                "KurrentDB {stream}: too many concurrent writers"
            )))
        })
    }

    fn meta_get(&self, key: &str) -> Result<Option<String>, StoreError> {
        let stream = self.stream("meta", key);
        let e = self.block(last(&self.client, &stream))?;
        match e {
            None => Ok(None),
            Some(e) => String::from_utf8(e.data.to_vec())
                .map(Some)
                .map_err(|_| StoreError::Corrupt(format!("{stream}: value is not UTF-8"))),
        }
    }

    fn meta_put(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let stream = self.stream("meta", key);
        // Not `{prefix}-meta-keys`: that is the value stream of key "keys".
        let keys = format!("{}-metakeys", self.prefix);
        let client = &self.client;
        self.block(async {
            let prev = last(client, &stream).await?;
            if prev.is_none() {
                // The key is listed before its value exists: a crash in
                // between leaves a listed key without value, skipped by
                // meta_list, never a value that cannot be listed.
                let ev =
                    EventData::binary("MetaKey", key.as_bytes().to_vec().into()).id(Uuid::new_v4());
                append(client, &keys, StreamState::Any, vec![ev]).await?;
            }
            let ev =
                EventData::binary("MetaValue", value.as_bytes().to_vec().into()).id(Uuid::new_v4());
            append(client, &stream, StreamState::Any, vec![ev]).await?;
            if prev.is_none() {
                set_max_count(client, &stream, 1).await?;
            }
            Ok(())
        })
    }

    fn meta_list(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        let keys_stream = format!("{}-metakeys", self.prefix);
        let raw = self.block(read(
            &self.client,
            &keys_stream,
            StreamPosition::Start,
            usize::MAX,
            false,
        ))?;
        let mut keys: Vec<String> = raw
            .iter()
            .filter_map(|e| String::from_utf8(e.data.to_vec()).ok())
            .filter(|k| k.starts_with(prefix))
            .collect();
        keys.sort();
        keys.dedup();
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(v) = self.meta_get(&k)? {
                out.push((k, v));
            }
        }
        Ok(out)
    }

    fn put_snapshot(&self, position: u64, bytes: &[u8], keep: usize) -> Result<(), StoreError> {
        let stream = self.stream("snapshot", &position.to_string());
        let index = format!("{}-snapshots", self.prefix);
        let prefix = self.prefix.as_str();
        let client = &self.client;
        self.block(async {
            // Chunks, one append each (under the server's append limit),
            // then a marker naming them; a reader trusts only a marker.
            let mut first = None;
            for chunk in bytes
                .chunks(CHUNK)
                .chain(bytes.is_empty().then_some(&[][..]))
            {
                let ev =
                    EventData::binary("SnapshotChunk", chunk.to_vec().into()).id(Uuid::new_v4());
                let next = append(client, &stream, StreamState::Any, vec![ev]).await?;
                first.get_or_insert(next);
            }
            let first = first.unwrap_or(0);
            let count = bytes.len().div_ceil(CHUNK).max(1) as u64;
            let mut marker = first.to_be_bytes().to_vec();
            marker.extend_from_slice(&count.to_be_bytes());
            marker.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
            marker.extend_from_slice(&Sha256::digest(bytes));
            let ev = EventData::binary("SnapshotComplete", marker.into()).id(Uuid::new_v4());
            append(client, &stream, StreamState::Any, vec![ev]).await?;
            if first > 0 {
                // Older versions of this snapshot may be scavenged.
                let meta = StreamMetadata::builder().truncate_before(first).build();
                client
                    .set_stream_metadata(stream.as_str(), &AppendToStreamOptions::default(), &meta)
                    .await
                    .map_err(|e| kerr(&format!("set metadata of {stream}"), e))?;
            }
            // The index: its last event lists the kept positions.
            for _ in 0..10 {
                let prev = last(client, &index).await?;
                let mut kept = prev
                    .as_ref()
                    .map(|e| positions_of(&e.data))
                    .unwrap_or_default();
                if !kept.contains(&position) {
                    kept.push(position);
                }
                kept.sort_unstable_by(|a, b| b.cmp(a));
                let dropped = kept.split_off(keep.min(kept.len()));
                let data: Vec<u8> = kept.iter().flat_map(|p| p.to_be_bytes()).collect();
                let state = expected_after(prev.as_ref().map_or(0, |e| e.revision + 1));
                let opts = AppendToStreamOptions::default().stream_state(state);
                let ev = EventData::binary("Snapshots", data.into()).id(Uuid::new_v4());
                match client.append_to_stream(index.as_str(), &opts, ev).await {
                    Ok(_) => {
                        if prev.is_none() {
                            set_max_count(client, &index, 10).await?;
                        }
                        for p in dropped {
                            let s = format!("{prefix}-snapshot-{p}");
                            match client
                                .delete_stream(s.as_str(), &DeleteStreamOptions::default())
                                .await
                            {
                                Ok(_)
                                | Err(kurrentdb::Error::ResourceNotFound)
                                | Err(kurrentdb::Error::ResourceDeleted) => {}
                                Err(e) => return Err(kerr(&format!("delete {s}"), e)),
                            }
                        }
                        return Ok(());
                    }
                    Err(e) if is_wrong_version(&e) => continue,
                    Err(e) => return Err(kerr(&format!("append to {index}"), e)),
                }
            }
            Err(StoreError::Backend(format!(
                "KurrentDB {index}: too many concurrent writers"
            )))
        })
    }

    fn snapshot_positions(&self) -> Result<Vec<u64>, StoreError> {
        let index = format!("{}-snapshots", self.prefix);
        let e = self.block(last(&self.client, &index))?;
        Ok(e.map(|e| positions_of(&e.data)).unwrap_or_default())
    }

    fn read_snapshot(&self, position: u64) -> Result<Option<Vec<u8>>, StoreError> {
        if !self.snapshot_positions()?.contains(&position) {
            return Ok(None);
        }
        let stream = self.stream("snapshot", &position.to_string());
        let client = &self.client;
        self.block(async {
            // The newest marker, then the chunks it names.
            let mut from = StreamPosition::End;
            let marker = loop {
                let page = read(client, &stream, from, 64, true).await?;
                let full = page.len() == 64;
                let oldest = page.last().map(|e| e.revision);
                if let Some(m) = page
                    .into_iter()
                    .find(|e| e.event_type == "SnapshotComplete")
                {
                    break m;
                }
                match oldest {
                    Some(r) if r > 0 && full => from = StreamPosition::Position(r - 1),
                    _ => return Ok(None),
                }
            };
            let mut c = Cursor(&marker.data);
            let bad = || StoreError::Corrupt(format!("{stream}: bad snapshot marker"));
            let first = c.u64().ok_or_else(bad)?;
            let count = c.u64().ok_or_else(bad)? as usize;
            let len = c.u64().ok_or_else(bad)? as usize;
            let digest: [u8; 32] = c.arr().ok_or_else(bad)?;
            let chunks = read(
                client,
                &stream,
                StreamPosition::Position(first),
                count,
                false,
            )
            .await?;
            let mut bytes = Vec::with_capacity(len);
            for e in chunks.iter().filter(|e| e.event_type == "SnapshotChunk") {
                bytes.extend_from_slice(&e.data);
            }
            if bytes.len() != len || <[u8; 32]>::from(Sha256::digest(&bytes)) != digest {
                return Err(StoreError::Corrupt(format!(
                    "{stream}: the chunks do not match their marker"
                )));
            }
            Ok(Some(bytes))
        })
    }

    /// Pairs go to one of 65,536 bucket streams by the fingerprint's high
    /// 16 bits, 12 bytes a pair, in events small enough for one append.
    fn put_usage_keys(&self, keys: &[(u32, u64)]) -> Result<(), StoreError> {
        let mut buckets: HashMap<u16, Vec<u8>> = HashMap::new();
        for (fp, pos) in keys {
            let b = buckets.entry((fp >> 16) as u16).or_default();
            b.extend_from_slice(&fp.to_be_bytes());
            b.extend_from_slice(&pos.to_be_bytes());
        }
        let client = &self.client;
        let prefix = self.prefix.as_str();
        self.block(async {
            for (bucket, pairs) in &buckets {
                let stream = format!("{prefix}-usage-{bucket:04x}");
                for part in pairs.chunks(12 * 40_000) {
                    let ev =
                        EventData::binary("UsageKeys", part.to_vec().into()).id(Uuid::new_v4());
                    append(client, &stream, StreamState::Any, vec![ev]).await?;
                }
            }
            Ok(())
        })
    }

    fn usage_key_positions(&self, fp: u32) -> Result<Vec<u64>, StoreError> {
        Ok(self
            .usage_pairs(fp, fp)?
            .into_iter()
            .map(|(_, p)| p)
            .collect())
    }

    fn usage_key_fingerprints(&self, from: u32, to: u32) -> Result<Vec<u32>, StoreError> {
        Ok(self
            .usage_pairs(from, to)?
            .into_iter()
            .map(|(f, _)| f)
            .collect())
    }

    fn backend(&self) -> &'static str {
        "kurrentdb"
    }
}

impl KurrentStore {
    /// The usage key pairs with a fingerprint in `from..=to`, read from the
    /// bucket streams the range spans; a pair stored twice counts once, as
    /// in the SQL stores' keyed tables.
    fn usage_pairs(&self, from: u32, to: u32) -> Result<Vec<(u32, u64)>, StoreError> {
        let mut pairs: Vec<(u32, u64)> = Vec::new();
        for bucket in (from >> 16)..=(to >> 16) {
            let stream = format!("{}-usage-{bucket:04x}", self.prefix);
            let raw = self.block(read(
                &self.client,
                &stream,
                StreamPosition::Start,
                usize::MAX,
                false,
            ))?;
            for e in &raw {
                for c in e.data.chunks_exact(12) {
                    let mut c = Cursor(c);
                    if let (Some(f), Some(p)) = (c.u32(), c.u64()) {
                        if (from..=to).contains(&f) {
                            pairs.push((f, p));
                        }
                    }
                }
            }
        }
        pairs.sort_unstable();
        pairs.dedup();
        Ok(pairs)
    }
}

fn positions_of(data: &[u8]) -> Vec<u64> {
    data.chunks_exact(8)
        .filter_map(|c| c.try_into().ok().map(u64::from_be_bytes))
        .collect()
}

/// The database the ignored tests use: `ACCRUE_KURRENTDB_URL`.
pub fn test_url() -> String {
    std::env::var("ACCRUE_KURRENTDB_URL").unwrap_or_default()
}

/// A stream prefix unique to a test folder (the conformance factory gets
/// one), so every test has a fresh ledger on one server.
pub fn prefix_for(dir: &std::path::Path) -> String {
    let d = Sha256::digest(dir.to_string_lossy().as_bytes());
    format!("accrue-t-{}", hex::encode(&d[..12]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_and_refuses_short_input() {
        let m = LogMeta {
            stream: "account-α".into(),
            version: 7,
            schema: 2,
            occurred_us: -5,
            recorded_us: 1_767_225_600_000_000,
            hash: [1; 32],
            chain: [2; 32],
        };
        let b = encode_meta(&m);
        let d = decode_meta(&b).unwrap();
        assert_eq!(
            (
                d.stream.as_str(),
                d.version,
                d.schema,
                d.occurred_us,
                d.recorded_us,
                d.hash,
                d.chain
            ),
            (
                "account-α",
                7,
                2,
                -5,
                1_767_225_600_000_000,
                [1; 32],
                [2; 32]
            )
        );
        for n in 0..b.len() {
            assert!(decode_meta(&b[..n]).is_none());
        }
        let mut long = b.clone();
        long.push(0);
        assert!(decode_meta(&long).is_none());
    }

    #[test]
    fn event_ids_are_deterministic_and_distinct() {
        let a = event_id("accrue", "account-a", 1, &[0; 32]);
        assert_eq!(a, event_id("accrue", "account-a", 1, &[0; 32]));
        assert_eq!(a.get_version_num(), 5);
        assert_ne!(a, event_id("accrue", "account-a", 2, &[0; 32]));
        assert_ne!(a, event_id("accrue", "account-a", 1, &[1; 32]));
        assert_ne!(a, event_id("accrue", "account-b", 1, &[0; 32]));
        // Length prefixes: moving bytes between prefix and stream changes the id.
        assert_ne!(
            event_id("ab", "c", 1, &[0; 32]),
            event_id("a", "bc", 1, &[0; 32])
        );
    }

    #[test]
    fn a_bad_connection_string_is_an_error_not_a_panic() {
        assert!(matches!(
            KurrentStore::open("kurrentdb://"),
            Err(StoreError::Backend(_))
        ));
    }

    /// The shared suite against a real server, one fresh prefix per test.
    /// Run: see ops/kurrentdb/README.md.
    mod server {
        use super::super::*;
        crate::conformance_suite!(
            #[ignore = "needs a KurrentDB server: ACCRUE_KURRENTDB_URL"]
            |dir: &std::path::Path| KurrentStore::open_with_prefix(&test_url(), &prefix_for(dir))
                .unwrap()
        );
    }
}
