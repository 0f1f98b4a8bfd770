//! accrue-store: the [`EventStore`] trait, its backends, and one conformance
//! suite ([`conformance`]) that every backend runs.
//!
//! Events are opaque here: a type name, a schema version, two instants and a
//! payload. The store assigns the global position and the stream version and
//! chains every event to its stream's previous one with SHA-256 over a
//! canonical encoding ([`hash::event_hash`]).

pub mod cluster;
pub mod conformance;
pub mod faulty;
pub mod hash;
#[cfg(feature = "kurrentdb")]
pub mod kurrentdb;
pub mod postgres;
pub mod priority;
pub mod sqlite;

use chrono::{DateTime, Utc};

/// An event to append. Positions, versions and hashes are the store's to assign.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub type_name: &'static str,
    pub schema: u32,
    pub occurred_at: DateTime<Utc>,
    pub payload: Vec<u8>,
}

/// What a stream must look like for an append to go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// The stream has exactly this many events (0: it does not exist yet).
    Exact(u64),
    /// No check: only for streams with a single writer by construction.
    Any,
}

/// The events to append to one stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamAppend {
    pub stream: String,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    /// Global position, 1-based, gapless, strictly increasing.
    pub position: u64,
    pub stream: String,
    /// Version within the stream, 1-based.
    pub version: u64,
    pub type_name: String,
    pub schema: u32,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    pub payload: Vec<u8>,
    /// Chained to the stream's previous event ([`hash::event_hash`]).
    pub hash: [u8; 32],
    /// Chained to the previous event of the global order ([`hash::chain_hash`]).
    pub chain: [u8; 32],
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("wrong expected version for {stream}: expected {expected}, actual {actual}")]
    WrongExpectedVersion {
        stream: String,
        expected: u64,
        actual: u64,
    },
    #[error("the data folder is in use by another accrue process: {0}")]
    Locked(String),
    #[error("storage failure: {0}")]
    Backend(String),
    #[error("corrupt store: {0}")]
    Corrupt(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

/// The result of a successful append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// Position of the first appended event (0 if the batch was empty).
    pub first_position: u64,
    /// Position of the last appended event (the store's head).
    pub last_position: u64,
}

/// The head of one stream: how many events it has and the hash of the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHead {
    pub version: u64,
    pub hash: [u8; 32],
}

/// One event of a batch, placed by [`place`]: where it goes and its hash.
pub struct Placed<'a> {
    pub position: u64,
    pub stream: &'a str,
    pub version: u64,
    pub event: &'a NewEvent,
    pub occurred_us: i64,
    pub hash: [u8; 32],
    pub chain: [u8; 32],
}

/// What every backend does before writing a batch, in one place: check each
/// stream's expectation against `head_of`, then assign positions after
/// `start`, versions, stream hashes and global chain hashes (after
/// `prev_chain`, the chain of the event at `start`) in batch order. Returns
/// the placed events and each touched stream's new head.
pub fn place<'a>(
    batch: &'a [StreamAppend],
    start: u64,
    prev_chain: [u8; 32],
    recorded_us: i64,
    head_of: impl Fn(&str) -> StreamHead,
) -> Result<
    (
        Vec<Placed<'a>>,
        std::collections::HashMap<&'a str, StreamHead>,
    ),
    StoreError,
> {
    for s in batch {
        if let ExpectedVersion::Exact(expected) = s.expected {
            let actual = head_of(&s.stream).version;
            if actual != expected {
                return Err(StoreError::WrongExpectedVersion {
                    stream: s.stream.clone(),
                    expected,
                    actual,
                });
            }
        }
    }
    let mut heads: std::collections::HashMap<&str, StreamHead> = std::collections::HashMap::new();
    let mut placed = Vec::with_capacity(batch.iter().map(|s| s.events.len()).sum());
    let mut position = start;
    let mut chain = prev_chain;
    for s in batch {
        let mut head = heads
            .get(s.stream.as_str())
            .copied()
            .unwrap_or_else(|| head_of(&s.stream));
        for e in &s.events {
            position += 1;
            head.version += 1;
            let occurred_us = e.occurred_at.timestamp_micros();
            head.hash = hash::event_hash(
                &head.hash,
                &hash::HashInput {
                    stream: &s.stream,
                    version: head.version,
                    type_name: e.type_name,
                    schema: e.schema,
                    occurred_at_us: occurred_us,
                    recorded_at_us: recorded_us,
                    payload: &e.payload,
                },
            );
            chain = hash::chain_hash(&chain, position, &head.hash);
            placed.push(Placed {
                position,
                stream: &s.stream,
                version: head.version,
                event: e,
                occurred_us,
                hash: head.hash,
                chain,
            });
        }
        heads.insert(s.stream.as_str(), head);
    }
    Ok((placed, heads))
}

/// The head of a stream that does not exist yet.
pub const EMPTY_HEAD: StreamHead = StreamHead {
    version: 0,
    hash: hash::GENESIS,
};

/// One event store. Blocking by design: the ledger calls it from its single
/// writer thread and projections from their own threads; async backends
/// block on their runtime inside.
pub trait EventStore: Send + Sync {
    /// Appends all streams' events atomically (all or none), durably, after
    /// checking each stream's expected version.
    fn append(
        &self,
        batch: &[StreamAppend],
        recorded_at: DateTime<Utc>,
    ) -> Result<Appended, StoreError>;

    /// Events of one stream with version > `after_version`, oldest first.
    fn read_stream(
        &self,
        stream: &str,
        after_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Events in global order with position > `after_position`.
    fn read_all(&self, after_position: u64, limit: usize)
        -> Result<Vec<RecordedEvent>, StoreError>;

    /// One event by global position.
    fn read_at(&self, position: u64) -> Result<Option<RecordedEvent>, StoreError>;

    /// The last assigned global position (0 when empty).
    fn head_position(&self) -> Result<u64, StoreError>;

    /// The head of a stream (version 0 when it does not exist).
    fn stream_head(&self, stream: &str) -> Result<StreamHead, StoreError>;

    /// Blocks until the head passes `after_position` or the timeout passes;
    /// returns the head. This is how projections follow new events.
    fn wait_for(
        &self,
        after_position: u64,
        timeout: std::time::Duration,
    ) -> Result<u64, StoreError>;

    /// A projector's durable checkpoint (0 if never set).
    fn checkpoint(&self, name: &str) -> Result<u64, StoreError>;

    /// Stores a projector's checkpoint; never moves backwards.
    fn set_checkpoint(&self, name: &str, position: u64) -> Result<(), StoreError>;

    /// A small durable key/value area for operational facts that are not
    /// business events (API token hashes, outbox bookkeeping).
    fn meta_get(&self, key: &str) -> Result<Option<String>, StoreError>;
    fn meta_put(&self, key: &str, value: &str) -> Result<(), StoreError>;
    fn meta_list(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError>;

    /// Stores a snapshot of derived state as of global `position` and drops
    /// all but the `keep` newest. A snapshot is not an event: it is a cache
    /// of what the log folds to, written beside the log so that appends
    /// never wait for it, and checked by its reader before use.
    fn put_snapshot(&self, position: u64, bytes: &[u8], keep: usize) -> Result<(), StoreError>;

    /// The positions of the stored snapshots, newest first.
    fn snapshot_positions(&self) -> Result<Vec<u64>, StoreError>;

    /// The snapshot stored at `position`, if any.
    fn read_snapshot(&self, position: u64) -> Result<Option<Vec<u8>>, StoreError>;

    /// Stores older keys of the usage idempotency index — a 32-bit
    /// fingerprint of the key's hash and its event's position — so that
    /// the writer's memory does not grow with history (SPEC §12). Derived
    /// data, not events; storing a pair again is a no-op. Written beside
    /// the log, never holding up an append. A backend that cannot keep
    /// them says so, and the index keeps them in memory.
    fn put_usage_keys(&self, keys: &[(u32, u64)]) -> Result<(), StoreError> {
        let _ = keys;
        Err(StoreError::Backend(format!(
            "{} keeps no usage keys",
            self.backend()
        )))
    }

    /// The positions stored under fingerprint `fp` by
    /// [`EventStore::put_usage_keys`], in any order.
    fn usage_key_positions(&self, fp: u32) -> Result<Vec<u64>, StoreError> {
        let _ = fp;
        Ok(Vec::new())
    }

    /// The fingerprints stored by [`EventStore::put_usage_keys`] in
    /// `from..=to` (one per stored pair, in any order): what the usage
    /// index's filter is rebuilt from when a part of it grows.
    fn usage_key_fingerprints(&self, from: u32, to: u32) -> Result<Vec<u32>, StoreError> {
        let _ = (from, to);
        Err(StoreError::Backend(format!(
            "{} keeps no usage keys",
            self.backend()
        )))
    }

    /// A short name of the backend, for reports.
    fn backend(&self) -> &'static str;
}
