//! accrue-store: the [`EventStore`] trait, its backends, and one conformance
//! suite ([`conformance`]) that every backend runs.
//!
//! Events are opaque here: a type name, a schema version, two instants and a
//! payload. The store assigns the global position and the stream version and
//! chains every event to its stream's previous one with SHA-256 over a
//! canonical encoding ([`hash::event_hash`]).

pub mod conformance;
pub mod hash;
pub mod postgres;
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
    pub hash: [u8; 32],
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

    /// A short name of the backend, for reports.
    fn backend(&self) -> &'static str;
}
