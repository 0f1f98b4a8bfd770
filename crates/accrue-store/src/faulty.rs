//! Test support: an [`EventStore`] wrapper that injects faults, so the
//! ledger's fail-stop behaviour can be proven against a real backend.
//!
//! - the Nth append (1-based, counted from when the fault is armed) fails
//!   **before** it reaches the store (nothing stored) or **after** it is
//!   durable (stored, but the caller gets an error, as when a connection
//!   drops during the commit acknowledgement);
//! - reads fail while `fail_reads` is on;
//! - every append can be delayed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;

use crate::{Appended, EventStore, RecordedEvent, StoreError, StreamAppend, StreamHead};

/// When an injected append failure strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Nothing of the batch is stored.
    BeforeDurable,
    /// The batch is stored; the caller is told it failed.
    AfterDurable,
}

pub struct FaultyStore {
    inner: Arc<dyn EventStore>,
    /// (appends left before the faulty one, when).
    append_fault: Mutex<Option<(u64, When)>>,
    fail_reads: AtomicBool,
    fail_key_reads: AtomicBool,
    delay_ms: AtomicU64,
    /// Appends that failed by injection.
    pub injected: AtomicU64,
}

fn injected(what: &str) -> StoreError {
    StoreError::Backend(format!("injected fault: {what}"))
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn EventStore>) -> FaultyStore {
        FaultyStore {
            inner,
            append_fault: Mutex::new(None),
            fail_reads: AtomicBool::new(false),
            fail_key_reads: AtomicBool::new(false),
            delay_ms: AtomicU64::new(0),
            injected: AtomicU64::new(0),
        }
    }

    /// The store underneath (what a restart opens).
    pub fn inner(&self) -> &Arc<dyn EventStore> {
        &self.inner
    }

    /// Fails the `n`th append from now (1: the next one).
    pub fn fail_append(&self, n: u64, when: When) {
        *self.append_fault.lock() = Some((n.max(1), when));
    }

    /// Lookups of spilled usage keys fail while on (other reads work).
    pub fn fail_key_reads(&self, on: bool) {
        self.fail_key_reads.store(on, SeqCst);
    }

    pub fn fail_reads(&self, on: bool) {
        self.fail_reads.store(on, SeqCst);
    }

    pub fn delay_appends(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, SeqCst);
    }

    fn read_check(&self) -> Result<(), StoreError> {
        if self.fail_reads.load(SeqCst) {
            return Err(injected("read"));
        }
        Ok(())
    }

    /// Counts this append down; `Some(when)` if it is the faulty one.
    fn take_fault(&self) -> Option<When> {
        let mut f = self.append_fault.lock();
        let (left, when) = (*f)?;
        if left <= 1 {
            *f = None;
            Some(when)
        } else {
            *f = Some((left - 1, when));
            None
        }
    }
}

impl EventStore for FaultyStore {
    fn append(
        &self,
        batch: &[StreamAppend],
        recorded_at: DateTime<Utc>,
    ) -> Result<Appended, StoreError> {
        let delay = self.delay_ms.load(SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        match self.take_fault() {
            None => self.inner.append(batch, recorded_at),
            Some(When::BeforeDurable) => {
                self.injected.fetch_add(1, SeqCst);
                Err(injected("append before it was durable"))
            }
            Some(When::AfterDurable) => {
                self.inner.append(batch, recorded_at)?;
                self.injected.fetch_add(1, SeqCst);
                Err(injected("append after it was durable"))
            }
        }
    }

    fn read_stream(
        &self,
        stream: &str,
        after_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_check()?;
        self.inner.read_stream(stream, after_version, limit)
    }

    fn read_all(
        &self,
        after_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_check()?;
        self.inner.read_all(after_position, limit)
    }

    fn read_at(&self, position: u64) -> Result<Option<RecordedEvent>, StoreError> {
        self.read_check()?;
        self.inner.read_at(position)
    }

    fn head_position(&self) -> Result<u64, StoreError> {
        self.read_check()?;
        self.inner.head_position()
    }

    fn stream_head(&self, stream: &str) -> Result<StreamHead, StoreError> {
        self.read_check()?;
        self.inner.stream_head(stream)
    }

    fn wait_for(&self, after_position: u64, timeout: Duration) -> Result<u64, StoreError> {
        self.inner.wait_for(after_position, timeout)
    }

    fn checkpoint(&self, name: &str) -> Result<u64, StoreError> {
        self.inner.checkpoint(name)
    }

    fn set_checkpoint(&self, name: &str, position: u64) -> Result<(), StoreError> {
        self.inner.set_checkpoint(name, position)
    }

    fn meta_get(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.inner.meta_get(key)
    }

    fn meta_put(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.inner.meta_put(key, value)
    }

    fn meta_list(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.inner.meta_list(prefix)
    }

    fn put_snapshot(&self, position: u64, bytes: &[u8], keep: usize) -> Result<(), StoreError> {
        self.inner.put_snapshot(position, bytes, keep)
    }

    fn snapshot_positions(&self) -> Result<Vec<u64>, StoreError> {
        self.inner.snapshot_positions()
    }

    fn read_snapshot(&self, position: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.read_snapshot(position)
    }

    fn put_usage_keys(&self, keys: &[(u32, u64)]) -> Result<(), StoreError> {
        self.inner.put_usage_keys(keys)
    }

    fn usage_key_positions(&self, fp: u32) -> Result<Vec<u64>, StoreError> {
        self.read_check()?;
        if self.fail_key_reads.load(SeqCst) {
            self.injected.fetch_add(1, SeqCst);
            return Err(injected("usage key read"));
        }
        self.inner.usage_key_positions(fp)
    }

    fn usage_key_fingerprints(&self, from: u32, to: u32) -> Result<Vec<u32>, StoreError> {
        self.read_check()?;
        if self.fail_key_reads.load(SeqCst) {
            self.injected.fetch_add(1, SeqCst);
            return Err(injected("usage key read"));
        }
        self.inner.usage_key_fingerprints(from, to)
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}
