//! Snapshots (SPEC §12): what the log folds to at a position, so that a
//! restart replays only the tail.
//!
//! A snapshot holds two parts taken at the same moment in the writer: the
//! writer's decision state (accounts, the idempotency index, sequences,
//! stream versions, payment references, the stored clock) as of the group
//! it has just sealed, at position `P1`, and a copy of the read models as
//! the committer has applied them, at `P2 ≤ P1`. The indexes the writer
//! derives from accounts (due closes, invoice owners, license and dunning
//! deadlines) are not stored: they are rebuilt from the accounts on load.
//!
//! Bytes: `ACCRUESN`, the format version (u32 LE), a probe of the
//! idempotency hash (u64 LE: the index is only valid for a build that
//! hashes keys the same way), the SHA-256 of the body, then the body (CBOR).
//! Format 3 stores an account the read models hold exactly as the writer
//! does once (by name in the read part), the usage index's arrays as
//! packed little-endian byte strings, not one CBOR integer per element,
//! and the body as two CBOR documents of about equal size (the writer's
//! part with half its accounts, its length first; then the read models
//! with the other half) that a load decodes on two threads:
//! at 100,000 accounts decoding is what a restart spends its time on.
//! Format 4 puts the usage key filter (which grows with history, ~1.3
//! bytes a spilled key) after the body with a hash of its own (the body's
//! length comes before the body): a load opens the ledger without it and
//! loads it on a thread of its own, the writer asking the store for every
//! key meanwhile; a filter that does not check out is rebuilt from the
//! store.
//! On load a snapshot is used only if all of that checks out **and** the
//! log still holds, at `P1` and at `P2`, the events whose global chain
//! hashes the snapshot recorded; anything else falls back to an older
//! snapshot, then to the whole log. A snapshot is written on a thread of
//! its own, after its group is durable, into a table (SQLite: a file)
//! beside the log, so appends never wait for it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use accrue_core::AccountState;
use accrue_projections::ReadModels;
use accrue_store::EventStore;
use chrono::{DateTime, Utc};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::idempotency::{self, IdempotencyIndex};
use crate::writer::{Series, State};
use crate::{LedgerError, Shared};

const MAGIC: &[u8; 8] = b"ACCRUESN";
/// Bump when any part's shape changes: an older snapshot is then skipped
/// (and the log replayed once), never misread.
pub const FORMAT: u32 = 4;
/// Snapshots kept: the newest, and one before it in case it is unreadable.
const KEEP: usize = 2;

static EVERY_EVENTS: AtomicU64 = AtomicU64::new(1_000_000);
static EVERY_SECS: AtomicU64 = AtomicU64::new(600);

/// When the writer snapshots: after `every_events` events since the last
/// one, or after `every_secs` seconds if any event came since (0 events:
/// never).
pub fn set_policy(every_events: u64, every_secs: u64) {
    EVERY_EVENTS.store(every_events, Relaxed);
    EVERY_SECS.store(every_secs.max(1), Relaxed);
}

/// The writer's part.
#[derive(Serialize, Deserialize)]
pub(crate) struct WriterPart {
    pub position: u64,
    pub accounts: HashMap<String, Box<AccountState>>,
    pub idem: IdempotencyIndex,
    pub seq: Vec<(Series, i32, u64)>,
    pub globals: HashMap<String, u64>,
    pub payment_refs: HashMap<String, String>,
    pub clock: Option<DateTime<Utc>>,
}

struct Body {
    writer: WriterPart,
    /// The global chain hash of the event at `writer.position`.
    writer_chain: [u8; 32],
    /// The read models, without the accounts they hold exactly as the
    /// writer does (most of them, most of the time): those are named in
    /// `read_same` and stored once, in the writer's part.
    read: ReadModels,
    read_same: Vec<String>,
    read_chain: [u8; 32],
    /// Half of the writer's accounts, stored in the read models' half of
    /// the body so that the two halves take about as long to decode.
    writer_rest: HashMap<String, Box<AccountState>>,
}

impl Body {
    /// Moves the read models' accounts that equal the writer's out of the
    /// read part (each account is stored once, not twice), and half of the
    /// writer's accounts to the other half of the body.
    fn new(
        mut writer: WriterPart,
        writer_chain: [u8; 32],
        mut read: ReadModels,
        read_chain: [u8; 32],
    ) -> Body {
        let mut read_same = Vec::new();
        read.accounts.retain(|id, r| {
            let same = writer.accounts.get(id).is_some_and(|w| w == r);
            if same {
                read_same.push(id.clone());
            }
            !same
        });
        read_same.sort_unstable();
        let mut writer_rest = HashMap::new();
        let half = writer.accounts.len() / 2;
        writer.accounts.retain(|id, a| {
            if writer_rest.len() < half {
                writer_rest.insert(id.clone(), std::mem::take(a));
                false
            } else {
                true
            }
        });
        Body {
            writer,
            writer_chain,
            read,
            read_same,
            read_chain,
            writer_rest,
        }
    }

    /// The read models whole again: the accounts named in `read_same` are
    /// copies of the writer's (sharing what they share in a running
    /// ledger, such as the opening event).
    fn into_loaded(self) -> Result<(WriterPart, ReadModels), String> {
        let Body {
            mut writer,
            mut read,
            read_same,
            writer_rest,
            ..
        } = self;
        writer.accounts.reserve(writer_rest.len());
        for (id, a) in writer_rest {
            if writer.accounts.insert(id, a).is_some() {
                return Err("its halves hold the same writer account twice".into());
            }
        }
        read.accounts.reserve(read_same.len());
        for id in read_same {
            let Some(a) = writer.accounts.get(&id) else {
                return Err(format!(
                    "its read models name account {id}, which its writer part lacks"
                ));
            };
            read.accounts.insert(id, a.clone());
        }
        Ok((writer, read))
    }
}

/// A snapshot that checked out, ready to be replayed onto.
pub(crate) struct Loaded {
    pub writer: WriterPart,
    pub read: ReadModels,
    /// The usage key filter's section, loaded after the ledger is up.
    pub filter: FilterSection,
}

/// A snapshot's usage key filter: the snapshot's bytes and where the
/// section lies in them (its hash first). Read after the ledger is up,
/// so a restart does not wait for a filter that grows with history.
pub(crate) struct FilterSection {
    bytes: Vec<u8>,
    at: std::ops::Range<usize>,
}

impl FilterSection {
    /// The section's CBOR if its hash matches, else `None` (the filter is
    /// then rebuilt from the store).
    pub(crate) fn checked(&self) -> Option<&[u8]> {
        let s = self.bytes.get(self.at.clone())?;
        let (hash, cbor) = (s.get(..32)?, s.get(32..)?);
        if Sha256::digest(cbor).as_slice() == hash {
            Some(cbor)
        } else {
            tracing::warn!("the snapshot's usage key filter does not match its hash; rebuilding it from the store");
            None
        }
    }
}

fn probe() -> u64 {
    idempotency::key("accrue-snapshot", "probe")
}

/// The writer's half of a body, then the read models' half.
type WriterHalf = (WriterPart, [u8; 32]);
type ReadHalf = (
    ReadModels,
    Vec<String>,
    [u8; 32],
    HashMap<String, Box<AccountState>>,
);

fn encode(body: &Body) -> Result<Vec<u8>, String> {
    // Two CBOR documents, the first's length before them: a load decodes
    // them on two threads.
    let mut writer = Vec::new();
    ciborium::into_writer(&(&body.writer, &body.writer_chain), &mut writer)
        .map_err(|e| e.to_string())?;
    let mut cbor = Vec::with_capacity(writer.len() * 2 + 8);
    cbor.extend_from_slice(&(writer.len() as u64).to_le_bytes());
    cbor.extend_from_slice(&writer);
    drop(writer);
    let read = (
        &body.read,
        &body.read_same,
        &body.read_chain,
        &body.writer_rest,
    );
    ciborium::into_writer(&read, &mut cbor).map_err(|e| e.to_string())?;
    // The usage key filter last, with a hash of its own: a load reads the
    // rest, opens the ledger, then checks and loads the filter.
    let filter = body.writer.idem.filter_section()?;
    let mut out = Vec::with_capacity(cbor.len() + filter.len() + 100);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(&probe().to_le_bytes());
    out.extend_from_slice(&Sha256::digest(&cbor));
    out.extend_from_slice(&(cbor.len() as u64).to_le_bytes());
    out.extend_from_slice(&cbor);
    out.extend_from_slice(&Sha256::digest(&filter));
    out.extend_from_slice(&filter);
    Ok(out)
}

/// The body, and where the filter's section lies in `bytes`.
fn decode(bytes: &[u8]) -> Result<(Body, std::ops::Range<usize>), String> {
    let header = 8 + 4 + 8 + 32 + 8;
    if bytes.len() < header || &bytes[..8] != MAGIC {
        return Err("not a snapshot".into());
    }
    let format = u32::from_le_bytes(bytes[8..12].try_into().map_err(|_| "short")?);
    if format != FORMAT {
        return Err(format!("format {format}, this build reads {FORMAT}"));
    }
    let p = u64::from_le_bytes(bytes[12..20].try_into().map_err(|_| "short")?);
    if p != probe() {
        return Err("made by a build that hashes usage ids differently".into());
    }
    let len = u64::from_le_bytes(bytes[52..60].try_into().map_err(|_| "short")?);
    let end = usize::try_from(len)
        .ok()
        .and_then(|l| header.checked_add(l))
        .filter(|e| e.checked_add(32).is_some_and(|x| x <= bytes.len()))
        .ok_or("its parts do not add up")?;
    let body = &bytes[header..end];
    if Sha256::digest(body).as_slice() != &bytes[20..52] {
        return Err("its hash does not match its bytes".into());
    }
    let split = body
        .get(..8)
        .and_then(|l| l.try_into().ok())
        .map(|l| u64::from_le_bytes(l) as usize)
        .filter(|n| *n <= body.len() - 8)
        .ok_or("its halves do not add up")?;
    let (writer, read) = body[8..].split_at(split);
    let unreadable = |e: ciborium::de::Error<std::io::Error>| format!("unreadable: {e}");
    let read_half = |b: &[u8]| ciborium::from_reader::<ReadHalf, _>(b).map_err(unreadable);
    let ((writer, writer_chain), (read, read_same, read_chain, writer_rest)) =
        std::thread::scope(|s| {
            // The read models' half on a second thread (if one can be had).
            let other = std::thread::Builder::new()
                .name("accrue-snapshot-load".into())
                .spawn_scoped(s, || read_half(read));
            let w = ciborium::from_reader::<WriterHalf, _>(writer).map_err(unreadable);
            let r = match other {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err("its decoder failed".into())),
                Err(_) => read_half(read),
            };
            Ok::<_, String>((w?, r?))
        })?;
    Ok((
        Body {
            writer,
            writer_chain,
            read,
            read_same,
            read_chain,
            writer_rest,
        },
        end..bytes.len(),
    ))
}

/// [`decode`], reporting how long reading and decoding took.
fn decode_timed(
    position: u64,
    bytes: &[u8],
    started: Instant,
) -> Result<(Body, std::ops::Range<usize>), String> {
    let read_ms = started.elapsed().as_millis() as u64;
    let body = decode(bytes);
    tracing::info!(
        position,
        bytes = bytes.len(),
        read_ms,
        decode_ms = started.elapsed().as_millis() as u64 - read_ms,
        "snapshot read"
    );
    body
}

/// The global chain hash at `position` (the genesis hash at 0), if the log
/// holds an event there.
fn chain_at(store: &dyn EventStore, position: u64) -> Result<Option<[u8; 32]>, LedgerError> {
    if position == 0 {
        return Ok(Some(accrue_store::hash::GENESIS));
    }
    Ok(store.read_at(position)?.map(|e| e.chain))
}

/// The newest snapshot that checks out against the log, if any. Snapshots
/// that do not are reported and skipped.
pub(crate) fn load_newest(store: &dyn EventStore) -> Result<Option<Loaded>, LedgerError> {
    let head = store.head_position()?;
    for position in store.snapshot_positions()? {
        let started = Instant::now();
        let why = match store.read_snapshot(position)? {
            None => continue,
            Some(bytes) => match decode_timed(position, &bytes, started) {
                Err(e) => e,
                Ok((body, filter_at)) => {
                    let w = body.writer.position;
                    let r = body.read.position;
                    if w != position || r > w || w > head {
                        format!("it claims position {w} (read models {r}), the log ends at {head}")
                    } else if chain_at(store, w)? != Some(body.writer_chain)
                        || chain_at(store, r)? != Some(body.read_chain)
                    {
                        "the log no longer holds the events it was taken from".into()
                    } else if !body.writer.idem.well_formed() {
                        "its usage index is not shaped as this build makes it".into()
                    } else if !body.writer.idem.spilled_in(store)? {
                        "the store no longer holds the usage keys it spilled".into()
                    } else {
                        match body.into_loaded() {
                            Ok((writer, read)) => {
                                return Ok(Some(Loaded {
                                    writer,
                                    read,
                                    filter: FilterSection {
                                        bytes,
                                        at: filter_at,
                                    },
                                }))
                            }
                            Err(e) => e,
                        }
                    }
                }
            },
        };
        tracing::warn!(position, "snapshot skipped: {why}; replaying further back");
    }
    Ok(None)
}

/// A snapshot on its way to the store.
pub(crate) struct Job {
    writer: WriterPart,
    read: ReadModels,
}

/// The writer's side: decides when a snapshot is due and hands the copies
/// to the snapshot thread (if it is busy with the previous one, later).
pub(crate) struct Snapshotter {
    tx: Option<Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    last_position: u64,
    last_at: Instant,
}

impl Snapshotter {
    pub(crate) fn start(shared: Arc<Shared>, from: u64) -> Result<Snapshotter, LedgerError> {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(1);
        let thread = std::thread::Builder::new()
            .name("accrue-snapshot".into())
            .spawn(move || {
                crate::priority::lower_current_thread();
                run(&shared, &rx);
            })
            .map_err(|e| LedgerError::Corrupt(format!("cannot start the snapshot thread: {e}")))?;
        Ok(Snapshotter {
            tx: Some(tx),
            thread: Some(thread),
            last_position: from,
            last_at: Instant::now(),
        })
    }

    /// Whether a snapshot of the state at `head` is due.
    pub(crate) fn due(&self, head: u64) -> bool {
        let every = EVERY_EVENTS.load(Relaxed);
        let busy = self.tx.as_ref().is_none_or(|t| t.is_full());
        if every == 0 || head <= self.last_position || busy {
            return false;
        }
        head - self.last_position >= every
            || self.last_at.elapsed() >= Duration::from_secs(EVERY_SECS.load(Relaxed))
    }

    /// Takes the copies (the writer's state as of `head`, no group pending)
    /// and hands them over.
    pub(crate) fn take(&mut self, state: &State, head: u64, read: &ReadModels) {
        let job = Job {
            writer: state.snapshot_part(head),
            read: read.clone(),
        };
        let Some(tx) = &self.tx else {
            return;
        };
        match tx.try_send(job) {
            Ok(()) => {
                self.last_position = head;
                self.last_at = Instant::now();
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

impl Snapshotter {
    /// Lets the snapshot in progress finish (its group is durable by now)
    /// and ends the thread, so the store can be opened again at once.
    pub(crate) fn stop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(shared: &Shared, jobs: &Receiver<Job>) {
    while let Ok(job) = jobs.recv() {
        let started = Instant::now();
        let position = job.writer.position;
        match write(shared, job) {
            Ok(Some(bytes)) => {
                shared.metrics.snapshots_written.fetch_add(1, Relaxed);
                shared.metrics.snapshot_position.store(position, Relaxed);
                tracing::info!(
                    position,
                    bytes,
                    ms = started.elapsed().as_millis() as u64,
                    "snapshot written"
                );
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(position, "snapshot not written: {e}"),
        }
    }
}

/// Waits until the snapshot's group is durable, then stores it. `None`
/// when the ledger failed first (the group may never be stored).
fn write(shared: &Shared, job: Job) -> Result<Option<usize>, String> {
    let store = shared.store.as_ref();
    let position = job.writer.position;
    loop {
        if shared.health.failed().is_some() {
            return Ok(None);
        }
        let head = store
            .wait_for(position.saturating_sub(1), Duration::from_millis(500))
            .map_err(|e| e.to_string())?;
        if head >= position {
            break;
        }
    }
    let chain = |p| match chain_at(store, p) {
        Ok(Some(c)) => Ok(c),
        Ok(None) => Err(format!("no event at {p}")),
        Err(e) => Err(e.to_string()),
    };
    let (writer_chain, read_chain) = (chain(position)?, chain(job.read.position)?);
    let body = Body::new(job.writer, writer_chain, job.read, read_chain);
    let bytes = encode(&body)?;
    store
        .put_snapshot(position, &bytes, KEEP)
        .map_err(|e| e.to_string())?;
    Ok(Some(bytes.len()))
}

/// Writes a snapshot of the log as it is now, from a replay (for
/// `accrue snapshot` and tests).
pub fn write_now(store: &dyn EventStore) -> Result<u64, LedgerError> {
    let (state, read, _) = crate::writer::load(store)?;
    let head = store.head_position()?;
    let writer_chain = chain_at(store, head)?.unwrap_or(accrue_store::hash::GENESIS);
    let read_chain = chain_at(store, read.position)?.unwrap_or(accrue_store::hash::GENESIS);
    let body = Body::new(state.snapshot_part(head), writer_chain, read, read_chain);
    let bytes = encode(&body).map_err(LedgerError::Corrupt)?;
    store.put_snapshot(head, &bytes, KEEP)?;
    Ok(head)
}

#[doc(hidden)]
pub use crate::writer::hold_filter_loads;

/// What a load produced, in a form two loads can be compared by: the
/// writer state as text in a stable order (idempotency lookups of every
/// usage id in the log included) and the read models. Loads with or
/// without snapshots.
#[doc(hidden)]
pub fn loaded_digest(
    store: &dyn EventStore,
    use_snapshots: bool,
) -> Result<(String, ReadModels), LedgerError> {
    let (state, read, clock) = crate::writer::load_with(store, use_snapshots, None)?;
    let mut usage = Vec::new();
    crate::replay::for_each_decoded(store, 0, |page| {
        for d in page {
            if let accrue_core::events::LedgerEvent::Account(
                accrue_core::AccountEvent::CreditsConsumed(c),
            ) = &d.event
            {
                if let Some(a) = d.stream.strip_prefix("account-") {
                    usage.push((a.to_string(), c.usage_id.clone()));
                }
            }
        }
    })?;
    Ok((
        format!("{}\nclock {clock:?}", state.digest(&usage, Some(store))),
        read,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> Body {
        Body {
            writer: WriterPart {
                position: 3,
                accounts: HashMap::new(),
                idem: IdempotencyIndex::default(),
                seq: vec![(Series::Invoice, 2026, 7)],
                globals: HashMap::from([("invoice-sequence".to_string(), 7)]),
                payment_refs: HashMap::new(),
                clock: None,
            },
            writer_chain: [1; 32],
            read: ReadModels::default(),
            read_same: Vec::new(),
            read_chain: [2; 32],
            writer_rest: HashMap::new(),
        }
    }

    #[test]
    fn accounts_the_read_models_hold_as_the_writer_does_are_stored_once() {
        let account = |version| {
            Box::new(AccountState {
                version,
                ..AccountState::default()
            })
        };
        let mut b = body();
        b.writer.accounts.insert("same".into(), account(4));
        b.writer.accounts.insert("behind".into(), account(9));
        b.writer.accounts.insert("new".into(), account(1));
        let mut read = ReadModels::default();
        read.accounts.insert("same".into(), account(4));
        read.accounts.insert("behind".into(), account(7));
        let b = Body::new(b.writer, [1; 32], read, [2; 32]);
        assert_eq!(b.read_same, vec!["same".to_string()]);
        assert_eq!(
            b.writer_rest.len(),
            1,
            "half the writer's accounts in the other half"
        );
        assert_eq!(
            b.read.accounts.len(),
            1,
            "only the differing account is stored twice"
        );
        let (writer, read) = decode(&encode(&b).unwrap())
            .unwrap()
            .0
            .into_loaded()
            .unwrap();
        assert_eq!(read.accounts.len(), 2);
        assert_eq!(read.accounts["same"].version, 4);
        assert_eq!(read.accounts["behind"].version, 7);
        assert!(!read.accounts.contains_key("new"));
        assert_eq!(writer.accounts.len(), 3);
        // A read part naming an account the writer part lacks is refused.
        let (mut bad, _) = decode(&encode(&b).unwrap()).unwrap();
        bad.read_same.push("ghost".into());
        assert!(bad.into_loaded().is_err());
    }

    #[test]
    fn a_snapshot_round_trips_and_any_flipped_byte_is_refused() {
        let bytes = encode(&body()).unwrap();
        let (back, filter_at) = decode(&bytes).unwrap();
        assert_eq!(back.writer.seq, vec![(Series::Invoice, 2026, 7)]);
        assert_eq!(back.writer_chain, [1; 32]);
        assert!(filter_at.end == bytes.len() && filter_at.len() > 32);
        let section = |b: &[u8], at: std::ops::Range<usize>| FilterSection {
            bytes: b.to_vec(),
            at,
        };
        assert!(section(&bytes, filter_at.clone()).checked().is_some());
        // The body's bytes: the snapshot is refused.
        for i in [0, 9, 13, 30, 55, filter_at.start - 1] {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad).is_err(), "byte {i} flipped was accepted");
        }
        // The filter's: the snapshot is used, its filter rebuilt from the store.
        for i in [filter_at.start, filter_at.start + 40, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            let (_, at) = decode(&bad).unwrap();
            assert!(section(&bad, at).checked().is_none(), "filter byte {i}");
        }
        assert!(decode(&bytes[..filter_at.start + 31]).is_err());
        assert!(decode(b"ACCRUESN").is_err());
    }
}
