//! The usage idempotency index: `(account, usage id)` → where the event is.
//!
//! Keys are unique per account forever. The index is derived from the log
//! (rebuilt at start by replay), so it can never disagree with what is
//! stored: a retry after a crash finds exactly the events that were
//! committed. To stay small it keeps a hash of the key and the event's
//! position (the newest keys in a hash map, older ones as 32-bit fingerprints
//! and 32-bit positions in sorted runs, 6 bytes a key); every hit is
//! confirmed against the stored event itself, and a key whose hash another
//! key holds goes to an exact side table.
//!
//! Memory that does not grow with history (SPEC §12): once a run holds
//! [`SPILL_KEYS`] keys it is written to the store beside the log
//! ([`EventStore::put_usage_keys`], by a thread of its own, so the writer
//! never waits for it) and its keys join one filter over every spilled key
//! (blocked Bloom filters in 4,096 buckets by fingerprint prefix), about
//! 1.3 bytes a key instead of 6. A lookup asks one bucket however many
//! runs were spilled; a "maybe" reads the key's candidates from the store
//! once ([`IdempotencyIndex::fetch`], before the decision, where a store
//! error can still answer 503), and a fresh id — the common case — touches
//! no disk.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use accrue_store::{EventStore, StoreError};

/// The key is already a hash: use it as is.
#[derive(Default)]
pub struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Where a usage event is: committed at a position, or pending in the
/// current group (stream index, event index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Committed(u64),
    Pending { stream: u32, event: u32 },
}

const PENDING: u64 = 1 << 63;

fn pack(s: Slot) -> u64 {
    match s {
        Slot::Committed(p) => p,
        Slot::Pending { stream, event } => PENDING | (u64::from(stream) << 32) | u64::from(event),
    }
}

fn unpack(v: u64) -> Slot {
    if v & PENDING != 0 {
        Slot::Pending {
            stream: ((v & !PENDING) >> 32) as u32,
            event: v as u32,
        }
    } else {
        Slot::Committed(v)
    }
}

pub fn key(account: &str, usage_id: &str) -> u64 {
    // SipHash with fixed keys: stable within a build, and the index is
    // rebuilt at every start, so it never needs to be stable across builds.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    account.hash(&mut h);
    usage_id.hash(&mut h);
    h.finish()
}

/// Keys in `recent` before they are folded into a frozen run: with the
/// pending keys of one group on top (< 30,000) they still fit a hash table
/// of 2^18 buckets (7/8 full at most), which never doubles.
const FREEZE_AT: usize = 190_000;

/// [`FREEZE_AT`], or `ACCRUE_USAGE_FREEZE_KEYS` (read once; for tests that
/// spill with small histories).
fn freeze_at() -> usize {
    static AT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *AT.get_or_init(|| {
        std::env::var("ACCRUE_USAGE_FREEZE_KEYS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(FREEZE_AT)
    })
}

/// The 32 bits of a key's hash that spilled keys are stored under.
pub fn store_fingerprint(hash: u64) -> u32 {
    fp32(hash)
}

/// Committed positions a frozen run can hold; keys at later positions stay
/// in `recent` (16 bytes more a key, past four billion events).
const FROZEN_MAX_POSITION: u64 = u32::MAX as u64 - 1;

/// A run this large is written to the store and leaves memory (its keys
/// join the filter): 2^21 keys, 12 MB in a run, ~2.6 MB in the filter.
pub const SPILL_KEYS: usize = 1 << 21;

/// Fetched candidates kept across batches, until this many (a batch may
/// add more: it is trimmed only before the next batch's prefetch).
const CACHE_MAX: usize = 65_536;

#[derive(Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct IdempotencyIndex {
    /// The newest keys (and every pending one): hash → packed slot.
    #[serde(with = "packed::map")]
    recent: HashMap<u64, u64, BuildHasherDefault<IdentityHasher>>,
    /// Older committed keys in compact runs (6 bytes a key instead of a
    /// hash map's ~29 with its load factor), largest first.
    frozen: Vec<Run>,
    /// Fold when `recent` holds this many keys.
    fold_at: usize,
    /// Keys whose hash collided with another key's.
    exact: HashMap<(String, String), u64>,
    /// Runs written to the store: only their sizes and samples stay in
    /// memory, their keys are in `filter`.
    spilled: Vec<SpilledRun>,
    /// One filter over every spilled key (shared with the spill thread,
    /// which adds each run to it once the store has the run). A clone of
    /// the index shares it: the one clone made is a snapshot's, which only
    /// reads it (a copy read while a run is added holds more keys, never
    /// fewer); a clone must never be given a spill thread of its own.
    /// Stored apart in a snapshot ([`IdempotencyIndex::filter_section`])
    /// and loaded after the ledger is up: until then it is *pending* and
    /// says "maybe" to every key, so each fresh key is looked up in the
    /// store (slower, never wrong).
    #[serde(skip, default = "Filter::pending")]
    filter: Filter,
    /// Where runs are written (none: everything stays in memory).
    #[serde(skip)]
    spill: Option<Spill>,
    /// Candidates read from the store, by fingerprint (see `fetch`).
    #[serde(skip)]
    cache: HashMap<u32, Vec<u64>>,
}

/// A run to write, and where the spill thread reports: the run's size and
/// samples (its keys are in the filter by then), then the status.
type SpillJob = (Run, Arc<SpillDone>);

/// What the spill thread hands back for one run.
#[derive(Default)]
struct SpillDone {
    status: AtomicU8,
    run: parking_lot::Mutex<Option<SpilledRun>>,
}

/// The store runs are written to, and the thread that writes them. Both
/// hold it weakly: the ledger owns its store, and a closed ledger's store
/// (its lock file) is released at once.
#[derive(Clone)]
struct Spill {
    store: std::sync::Weak<dyn EventStore>,
    /// Runs at least this large are spilled.
    at: usize,
    tx: std::sync::mpsc::Sender<SpillJob>,
}

const SPILLING: u8 = 1;
const SPILLED: u8 = 2;
const SPILL_FAILED: u8 = 3;

impl Spill {
    fn new(store: &Arc<dyn EventStore>, at: usize, filter: Filter) -> Spill {
        let (tx, rx) = std::sync::mpsc::channel::<SpillJob>();
        let store = Arc::downgrade(store);
        let writer = store.clone();
        let _ = std::thread::Builder::new()
            .name("accrue-keys".into())
            .spawn(move || {
                while let Ok((run, done)) = rx.recv() {
                    let keys = run.entries();
                    drop(run);
                    let put = match writer.upgrade() {
                        Some(store) => store.put_usage_keys(&keys).map(|()| {
                            // Stored first: a bucket the run outgrows is
                            // rebuilt from the store, the run included.
                            filter.add(&keys, store.as_ref());
                        }),
                        None => Err(StoreError::Backend("the ledger is closed".into())),
                    };
                    let status = match put {
                        Ok(()) => {
                            *done.run.lock() = Some(SpilledRun::of(&keys));
                            SPILLED
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, keys = keys.len(), "usage keys stay in memory: the store did not take them");
                            SPILL_FAILED
                        }
                    };
                    done.status.store(status, Ordering::Release);
                    // The run's copy and its entries were this thread's:
                    // hand their pages back rather than keep them resident.
                    crate::idle::idle();
                }
            });
        Spill { store, at, tx }
    }
}

/// What stays in memory of a spilled run: its size, and a few of its
/// (fingerprint, position) pairs, so that a snapshot whose spilled keys
/// the store no longer holds is not used.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct SpilledRun {
    keys: u64,
    samples: Vec<(u32, u64)>,
}

impl SpilledRun {
    fn of(entries: &[(u32, u64)]) -> SpilledRun {
        let step = (entries.len() / 4).max(1);
        let mut samples: Vec<(u32, u64)> = entries.iter().step_by(step).take(4).copied().collect();
        // The last entry too: a store that lost the end of a run is caught.
        samples.extend(entries.last().copied());
        SpilledRun {
            keys: entries.len() as u64,
            samples,
        }
    }
}

/// The filter's buckets: a fingerprint's top 12 bits choose one of 4,096.
const FILTER_BUCKET_BITS: u32 = 12;
/// Bits a key in a bucket at its capacity (6 probes: ~2.5 % false
/// positives then); a bucket that would go past it is rebuilt from the
/// store 1.5 to 1.75 times as large (12 to 14 bits a key, ~0.3 %), so a
/// bucket holds 8 to 14 bits a key, ~1.3 bytes on average, whatever the
/// number of runs.
const FILTER_BITS_AT_CAPACITY: u64 = 8;
const FILTER_PROBES: u32 = 6;

/// One cache line of a blocked Bloom filter: a key's probes all fall in
/// one block, so a lookup costs one memory access.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Block([u64; 8]);

/// One bucket: a blocked Bloom filter over the 32-bit fingerprints of the
/// spilled keys whose fingerprint starts with the bucket's 12 bits.
#[derive(Default)]
struct Bucket {
    blocks: Vec<Block>,
    keys: u64,
    capacity: u64,
}

impl Bucket {
    fn with_capacity(keys: u64) -> Bucket {
        let blocks = keys
            .clamp(1, 1 << 32)
            .saturating_mul(FILTER_BITS_AT_CAPACITY)
            .div_ceil(512);
        Bucket {
            blocks: vec![Block::default(); blocks as usize],
            keys: 0,
            capacity: blocks * 512 / FILTER_BITS_AT_CAPACITY,
        }
    }

    /// The block (by a 32-bit multiply-shift of the hash's high half) and
    /// the probes' bits within it (9 bits each, from a second mix).
    fn probes(&self, fp: u32) -> (usize, u64) {
        let mix = |mut z: u64| {
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let z = mix(u64::from(fp).wrapping_add(0x9e37_79b9_7f4a_7c15));
        let block = ((z >> 32) * self.blocks.len() as u64) >> 32;
        (block as usize, mix(z))
    }

    fn insert(&mut self, fp: u32) {
        if self.blocks.is_empty() {
            *self = Bucket::with_capacity(64);
        }
        let (b, bits) = self.probes(fp);
        let block = &mut self.blocks[b].0;
        for i in 0..FILTER_PROBES {
            let bit = (bits >> (9 * i)) & 511;
            block[(bit >> 6) as usize] |= 1 << (bit & 63);
        }
        self.keys = self.keys.saturating_add(1);
    }

    fn may_contain(&self, fp: u32) -> bool {
        if self.blocks.is_empty() {
            return false;
        }
        let (b, bits) = self.probes(fp);
        let block = &self.blocks[b].0;
        (0..FILTER_PROBES).all(|i| {
            let bit = (bits >> (9 * i)) & 511;
            block[(bit >> 6) as usize] & (1 << (bit & 63)) != 0
        })
    }
}

fn filter_bucket(fp: u32) -> usize {
    (fp >> (32 - FILTER_BUCKET_BITS)) as usize
}

/// One filter over every spilled key, in buckets by fingerprint prefix:
/// a fresh id asks one bucket (one cache line) however many runs were
/// spilled, and false positives stay ~1 % instead of adding up per run.
/// A Bloom filter cannot grow, so a bucket that a run would fill past its
/// capacity is rebuilt from the store (`usage_key_fingerprints` over its
/// range, the new run included) on the spill thread; the writer keeps
/// asking the old one until the new one is swapped in. Shared, behind a
/// lock per bucket: the spill thread adds, the writer asks, a snapshot
/// copies (a copy taken while a run is added holds more keys, never
/// fewer, of the runs it lists as spilled).
#[derive(Clone)]
pub(crate) struct Filter {
    buckets: Arc<Vec<parking_lot::RwLock<Bucket>>>,
    /// False while the filter is being loaded: every key may be there.
    ready: Arc<std::sync::atomic::AtomicBool>,
    /// Fingerprints of runs spilled while the filter was pending, added
    /// when it is installed (under this lock, so none is lost).
    pending_adds: Arc<parking_lot::Mutex<Vec<u32>>>,
}

impl Default for Filter {
    fn default() -> Filter {
        Filter {
            buckets: Arc::new(
                (0..1usize << FILTER_BUCKET_BITS)
                    .map(|_| parking_lot::RwLock::new(Bucket::default()))
                    .collect(),
            ),
            ready: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            pending_adds: Arc::default(),
        }
    }
}

impl Filter {
    /// A filter still to be loaded: "maybe" to every key until then.
    fn pending() -> Filter {
        let f = Filter::default();
        f.ready.store(false, Ordering::Release);
        f
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn may_contain(&self, fp: u32) -> bool {
        !self.is_ready() || self.buckets[filter_bucket(fp)].read().may_contain(fp)
    }

    /// Takes `loaded`'s buckets, adds the runs spilled meanwhile, and
    /// answers from them from now on.
    fn install(&self, loaded: Filter) {
        let mut queued = self.pending_adds.lock();
        for (mine, theirs) in self.buckets.iter().zip(loaded.buckets.iter()) {
            *mine.write() = std::mem::take(&mut *theirs.write());
        }
        for fp in queued.drain(..) {
            self.buckets[filter_bucket(fp)].write().insert(fp);
        }
        self.ready.store(true, Ordering::Release);
    }

    /// A filter of every key the store holds, bucket by bucket (given up
    /// once `stop` is set).
    fn from_store(
        store: &dyn EventStore,
        stop: &std::sync::atomic::AtomicBool,
    ) -> Result<Filter, StoreError> {
        let f = Filter::default();
        let span = (1u32 << (32 - FILTER_BUCKET_BITS)) - 1;
        for (b, bucket) in f.buckets.iter().enumerate() {
            if stop.load(Ordering::Relaxed) {
                return Err(StoreError::Backend("the ledger is closing".into()));
            }
            let from = (b as u32) << (32 - FILTER_BUCKET_BITS);
            let fps = store.usage_key_fingerprints(from, from | span)?;
            if fps.is_empty() {
                continue;
            }
            let n = fps.len() as u64;
            let mut fresh = Bucket::with_capacity(n + n / 2 + n * (b as u64 % 8) / 32);
            for fp in &fps {
                fresh.insert(*fp);
            }
            fresh.keys = n;
            *bucket.write() = fresh;
        }
        Ok(f)
    }

    /// Adds a run the store has just taken. While the filter is pending
    /// the run's fingerprints are queued and added when it is installed
    /// (a pending filter says "maybe" to them meanwhile).
    fn add(&self, keys: &[(u32, u64)], store: &dyn EventStore) {
        {
            let mut queued = self.pending_adds.lock();
            if !self.is_ready() {
                queued.extend(keys.iter().map(|(fp, _)| *fp));
                return;
            }
        }
        let mut fps: Vec<u32> = keys.iter().map(|(fp, _)| *fp).collect();
        fps.sort_unstable();
        let span = (1u32 << (32 - FILTER_BUCKET_BITS)) - 1;
        let mut not_rebuilt: Option<(StoreError, usize)> = None;
        for part in fps.chunk_by(|a, b| filter_bucket(*a) == filter_bucket(*b)) {
            let b = filter_bucket(part[0]);
            let (keys_now, capacity) = {
                let g = self.buckets[b].read();
                (g.keys, g.capacity)
            };
            let n = part.len() as u64;
            if keys_now > 0 && keys_now.saturating_add(n) > capacity {
                let from = (b as u32) << (32 - FILTER_BUCKET_BITS);
                match store.usage_key_fingerprints(from, from | span) {
                    Ok(stored) => {
                        // The store is the truth (`keys` counts a key
                        // offered again twice). Growth by 1.5 to 1.75,
                        // by bucket: buckets fill at the same pace, and
                        // must not all be rebuilt on the same run.
                        let all = (stored.len() as u64).max(n);
                        let grow = all / 2 + all * (b as u64 % 8) / 32;
                        let mut fresh = Bucket::with_capacity(all + grow);
                        for fp in stored.iter().chain(part) {
                            fresh.insert(*fp);
                        }
                        fresh.keys = all;
                        *self.buckets[b].write() = fresh;
                        continue;
                    }
                    // Correct still, only less selective: the keys go into
                    // the bucket as it is.
                    Err(e) => {
                        let count = not_rebuilt.as_ref().map_or(0, |(_, c)| *c);
                        not_rebuilt = Some((e, count + 1));
                    }
                }
            }
            let mut g = self.buckets[b].write();
            if g.blocks.is_empty() {
                *g = Bucket::with_capacity(n + n / 2);
            }
            for fp in part {
                g.insert(*fp);
            }
        }
        if let Some((e, buckets)) = not_rebuilt {
            tracing::warn!(error = %e, buckets, "usage key filter buckets not rebuilt");
        }
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.buckets
            .iter()
            .map(|b| b.read().blocks.len() * 64)
            .sum()
    }
}

/// A bucket as a snapshot stores it.
#[derive(serde::Serialize, serde::Deserialize)]
struct BucketBytes {
    keys: u64,
    capacity: u64,
    /// Eight little-endian words a block.
    #[serde(with = "packed")]
    words: Vec<Block>,
}

/// [`BucketBytes`] borrowing the blocks (a snapshot copies none).
#[derive(serde::Serialize)]
struct BucketRef<'a> {
    keys: u64,
    capacity: u64,
    #[serde(serialize_with = "blocks_packed")]
    words: &'a [Block],
}

fn blocks_packed<S: serde::Serializer>(b: &&[Block], s: S) -> Result<S::Ok, S::Error> {
    packed::serialize(b, s)
}

impl packed::Le for Block {
    const N: usize = 64;
    fn put(self, out: &mut Vec<u8>) {
        for w in self.0 {
            out.extend_from_slice(&w.to_le_bytes());
        }
    }
    fn get(b: &[u8]) -> Self {
        let mut a = [0u64; 8];
        for (w, c) in a.iter_mut().zip(b.chunks_exact(8)) {
            let mut x = [0u8; 8];
            x.copy_from_slice(c);
            *w = u64::from_le_bytes(x);
        }
        Block(a)
    }
}

impl serde::Serialize for Filter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeSeq};
        if !self.is_ready() {
            return Err(S::Error::custom("the usage key filter is still loading"));
        }
        let mut seq = s.serialize_seq(Some(self.buckets.len()))?;
        for b in self.buckets.iter() {
            let g = b.read();
            seq.serialize_element(&BucketRef {
                keys: g.keys,
                capacity: g.capacity,
                words: &g.blocks,
            })?;
        }
        seq.end()
    }
}

impl<'de> serde::Deserialize<'de> for Filter {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Filter, D::Error> {
        use serde::de::Error;
        let buckets: Vec<BucketBytes> = serde::Deserialize::deserialize(d)?;
        if buckets.len() != 1 << FILTER_BUCKET_BITS {
            return Err(D::Error::custom("a usage key filter of the wrong size"));
        }
        let mut out = Vec::with_capacity(buckets.len());
        for b in buckets {
            if b.keys > 0 && b.words.is_empty() {
                return Err(D::Error::custom(
                    "a usage key filter bucket of the wrong shape",
                ));
            }
            let blocks = b.words;
            let capacity = blocks.len() as u64 * 512 / FILTER_BITS_AT_CAPACITY;
            if b.capacity != capacity {
                return Err(D::Error::custom(
                    "a usage key filter bucket of another build",
                ));
            }
            out.push(parking_lot::RwLock::new(Bucket {
                keys: b.keys,
                blocks,
                capacity,
            }));
        }
        Ok(Filter {
            buckets: Arc::new(out),
            ready: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            pending_adds: Arc::default(),
        })
    }
}

/// Loads a pending filter ([`IdempotencyIndex::filter_load`]).
pub struct FilterLoad {
    filter: Filter,
    /// Fingerprints the filter must know (the spilled runs' samples).
    samples: Vec<u32>,
}

impl FilterLoad {
    /// The same load again (for a retry).
    pub fn clone_handle(&self) -> FilterLoad {
        FilterLoad {
            filter: self.filter.clone(),
            samples: self.samples.clone(),
        }
    }

    /// From a snapshot's section (CBOR, already hash-checked by the
    /// caller), if it decodes and knows every sample; else (or without
    /// one) rebuilt from the keys the store holds, which is never wrong.
    /// Until it returns `Ok` the filter stays pending (correct, slower).
    pub fn run(self, section: Option<&[u8]>, store: &dyn EventStore) -> Result<(), StoreError> {
        self.run_until(section, store, &std::sync::atomic::AtomicBool::new(false))
    }

    /// [`FilterLoad::run`], given up (an error) once `stop` is set.
    pub fn run_until(
        self,
        section: Option<&[u8]>,
        store: &dyn EventStore,
        stop: &std::sync::atomic::AtomicBool,
    ) -> Result<(), StoreError> {
        if self.filter.is_ready() {
            return Ok(());
        }
        let from_snapshot = section.and_then(|b| {
            let loaded: Filter = ciborium::from_reader(b)
                .map_err(|e| tracing::warn!(error = %e, "the snapshot's usage key filter is unreadable; rebuilding it from the store"))
                .ok()?;
            let knows = self.samples.iter().all(|fp| loaded.may_contain(*fp));
            if !knows {
                tracing::warn!("the snapshot's usage key filter does not know its runs; rebuilding it from the store");
            }
            knows.then_some(loaded)
        });
        let loaded = match from_snapshot {
            Some(f) => f,
            None => Filter::from_store(store, stop)?,
        };
        self.filter.install(loaded);
        Ok(())
    }
}

/// The 32 bits of a key's hash the runs and the store key on.
fn fp32(hash: u64) -> u32 {
    (hash >> (64 - DIR_BITS - 16)) as u32
}

/// Committed keys as 32-bit fingerprints (the hash's top 16 bits select a
/// bucket in `dir`, the next 16 are stored) with 32-bit positions, sorted:
/// 6 bytes a key. Keys may share a fingerprint: a lookup returns every
/// match and the caller confirms each against the stored event (with 10M
/// keys about one new key in 400 costs one extra read of a stored event).
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Run {
    #[serde(with = "packed")]
    fps: Vec<u16>,
    #[serde(with = "packed")]
    positions: Vec<u32>,
    /// `dir[b]..dir[b + 1]`: the entries whose hash starts with `b`.
    #[serde(with = "packed")]
    dir: Vec<u32>,
    /// Being written to the store (`SPILLING`, then `SPILLED` or
    /// `SPILL_FAILED`); not part of a snapshot — a run loaded from one is
    /// spilled again (storing a key twice is a no-op).
    #[serde(skip)]
    status: Option<Arc<SpillDone>>,
}

const DIR_BITS: u32 = 16;

/// Arrays of integers as one little-endian byte string (in a snapshot:
/// a memory copy to read, where CBOR would decode one integer at a time).
mod packed {
    use std::marker::PhantomData;

    use serde::de::{Error, Visitor};
    use serde::{Deserializer, Serializer};

    pub trait Le: Copy {
        const N: usize;
        fn put(self, out: &mut Vec<u8>);
        fn get(b: &[u8]) -> Self;
    }

    macro_rules! le {
        ($($t:ty),*) => {$(
            impl Le for $t {
                const N: usize = std::mem::size_of::<$t>();
                fn put(self, out: &mut Vec<u8>) {
                    out.extend_from_slice(&self.to_le_bytes());
                }
                fn get(b: &[u8]) -> Self {
                    let mut a = [0u8; std::mem::size_of::<$t>()];
                    a.copy_from_slice(b);
                    <$t>::from_le_bytes(a)
                }
            }
        )*};
    }
    le!(u16, u32, u64);

    pub fn serialize<S: Serializer, T: Le>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
        let mut out = Vec::with_capacity(v.len() * T::N);
        for x in v {
            x.put(&mut out);
        }
        s.serialize_bytes(&out)
    }

    struct Bytes<T>(PhantomData<T>);

    impl<T: Le> Visitor<'_> for Bytes<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "a byte string of {}-byte integers", T::N)
        }
        fn visit_bytes<E: Error>(self, b: &[u8]) -> Result<Vec<T>, E> {
            if !b.len().is_multiple_of(T::N) {
                return Err(E::custom("a packed array of the wrong length"));
            }
            Ok(b.chunks_exact(T::N).map(T::get).collect())
        }
        fn visit_byte_buf<E: Error>(self, b: Vec<u8>) -> Result<Vec<T>, E> {
            self.visit_bytes(&b)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Le>(d: D) -> Result<Vec<T>, D::Error> {
        // `byte_buf`, not `bytes`: ciborium reads a long byte string
        // only into a buffer of its own.
        d.deserialize_byte_buf(Bytes(PhantomData))
    }

    /// A map of `u64` to `u64` as its pairs, packed.
    pub mod map {
        use std::collections::HashMap;
        use std::hash::BuildHasher;

        use serde::{Deserializer, Serializer};

        pub fn serialize<S: Serializer, H>(
            m: &HashMap<u64, u64, H>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            let flat: Vec<u64> = m.iter().flat_map(|(k, v)| [*k, *v]).collect();
            super::serialize(&flat, s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>, H: BuildHasher + Default>(
            d: D,
        ) -> Result<HashMap<u64, u64, H>, D::Error> {
            let flat: Vec<u64> = super::deserialize(d)?;
            if !flat.len().is_multiple_of(2) {
                return Err(serde::de::Error::custom("a packed map of an odd length"));
            }
            let mut m = HashMap::with_capacity_and_hasher(flat.len() / 2, H::default());
            for pair in flat.chunks_exact(2) {
                m.insert(pair[0], pair[1]);
            }
            Ok(m)
        }
    }
}

fn bucket(hash: u64) -> usize {
    (hash >> (64 - DIR_BITS)) as usize
}

fn fingerprint(hash: u64) -> u16 {
    (hash >> (64 - DIR_BITS - 16)) as u16
}

impl Run {
    fn len(&self) -> usize {
        self.fps.len()
    }

    /// Every position stored under the hash's fingerprint.
    fn each(&self, hash: u64, mut f: impl FnMut(u64)) {
        let b = bucket(hash);
        let (from, to) = (self.dir[b] as usize, self.dir[b + 1] as usize);
        let fps = &self.fps[from..to];
        let fp = fingerprint(hash);
        let first = fps.partition_point(|x| *x < fp);
        for (i, x) in fps[first..].iter().enumerate() {
            if *x != fp {
                break;
            }
            f(u64::from(self.positions[from + first + i]));
        }
    }

    /// A run of (hash, position) pairs; positions fit in 32 bits.
    fn new(mut keys: Vec<(u64, u32)>) -> Run {
        keys.sort_unstable_by_key(|(h, _)| *h >> (64 - DIR_BITS - 16));
        let mut dir = Vec::with_capacity((1 << DIR_BITS) + 1);
        let mut i = 0usize;
        for b in 0..=(1usize << DIR_BITS) {
            while i < keys.len() && bucket(keys[i].0) < b {
                i += 1;
            }
            dir.push(i as u32);
        }
        Run {
            fps: keys.iter().map(|(h, _)| fingerprint(*h)).collect(),
            positions: keys.iter().map(|(_, p)| *p).collect(),
            dir,
            status: None,
        }
    }

    /// Every entry as (32-bit fingerprint, position).
    fn entries(&self) -> Vec<(u32, u64)> {
        let mut out = Vec::with_capacity(self.len());
        for b in 0..(1usize << DIR_BITS) {
            for i in self.dir[b] as usize..self.dir[b + 1] as usize {
                let fp = ((b as u32) << 16) | u32::from(self.fps[i]);
                out.push((fp, u64::from(self.positions[i])));
            }
        }
        out
    }

    /// Both runs' entries in one run.
    fn merge(a: &Run, b: &Run) -> Run {
        let n = a.len() + b.len();
        let (mut fps, mut positions) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let mut dir = Vec::with_capacity((1 << DIR_BITS) + 1);
        dir.push(0u32);
        for k in 0..(1usize << DIR_BITS) {
            let (mut i, ie) = (a.dir[k] as usize, a.dir[k + 1] as usize);
            let (mut j, je) = (b.dir[k] as usize, b.dir[k + 1] as usize);
            while i < ie || j < je {
                let take_a = j == je || (i < ie && a.fps[i] <= b.fps[j]);
                if take_a {
                    fps.push(a.fps[i]);
                    positions.push(a.positions[i]);
                    i += 1;
                } else {
                    fps.push(b.fps[j]);
                    positions.push(b.positions[j]);
                    j += 1;
                }
            }
            dir.push(fps.len() as u32);
        }
        Run {
            fps,
            positions,
            dir,
            status: None,
        }
    }
}

impl IdempotencyIndex {
    /// Keys held in memory and in spilled runs.
    pub fn len(&self) -> usize {
        self.recent.len()
            + self.frozen.iter().map(Run::len).sum::<usize>()
            + self.exact.len()
            + self.spilled.iter().map(|b| b.keys as usize).sum::<usize>()
    }

    /// Writes runs of at least `at` keys to `store` from now on (and those
    /// already that large at the next `compact`).
    pub fn spill_to(&mut self, store: Arc<dyn EventStore>, at: usize) {
        self.spill = Some(Spill::new(&store, at.max(1), self.filter.clone()));
    }

    /// Whether the runs are shaped as this build makes them and the filter
    /// knows every spilled run's samples (a snapshot's bytes are
    /// hash-checked; this keeps a lookup in bounds, and refuses a filter
    /// another build hashed differently, even under the same format).
    pub fn well_formed(&self) -> bool {
        // A pending filter is checked when it is loaded (`FilterLoad`).
        let samples_known = self
            .spilled
            .iter()
            .flat_map(|r| &r.samples)
            .all(|(fp, _)| self.filter.may_contain(*fp));
        let dir_len = (1usize << DIR_BITS) + 1;
        self.frozen.iter().all(|r| {
            r.dir.len() == dir_len
                && r.dir[0] == 0
                && r.dir.windows(2).all(|w| w[0] <= w[1])
                && r.dir[dir_len - 1] as usize == r.fps.len()
                && r.fps.len() == r.positions.len()
        }) && samples_known
    }

    /// The filter as a snapshot stores it, apart from the rest (CBOR).
    /// Fails while the filter is still loading.
    pub fn filter_section(&self) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        ciborium::into_writer(&self.filter, &mut out).map_err(|e| e.to_string())?;
        Ok(out)
    }

    /// What loads this index's pending filter (from a snapshot's section,
    /// else from the store): run it on any thread; the writer asks the
    /// store for every key until it is done.
    pub fn filter_load(&self) -> FilterLoad {
        FilterLoad {
            filter: self.filter.clone(),
            samples: self
                .spilled
                .iter()
                .flat_map(|r| r.samples.iter().map(|(fp, _)| *fp))
                .collect(),
        }
    }

    /// Whether the filter is loaded (no snapshot is taken until it is).
    pub fn filter_ready(&self) -> bool {
        self.filter.is_ready()
    }

    /// Whether the store still holds the spilled runs this index (loaded
    /// from a snapshot) relies on: each run's samples are looked up.
    pub fn spilled_in(&self, store: &dyn EventStore) -> Result<bool, StoreError> {
        for b in &self.spilled {
            for (fp, pos) in &b.samples {
                if !store.usage_key_positions(*fp)?.contains(pos) {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Reads from the store the candidates of `hash` that spilled runs may
    /// hold, so that [`IdempotencyIndex::by_hash`] includes them. Call it
    /// before deciding on the key: a store error then refuses the request
    /// instead of taking a retry for a new key.
    pub fn fetch(&mut self, hash: u64) -> Result<(), StoreError> {
        let fp = fp32(hash);
        if self.spilled.is_empty() || self.cache.contains_key(&fp) || !self.filter.may_contain(fp) {
            return Ok(());
        }
        let Some(spill) = &self.spill else {
            return Err(StoreError::Backend(
                "the usage index has spilled keys but no store to read them from".into(),
            ));
        };
        let Some(store) = spill.store.upgrade() else {
            return Err(StoreError::Backend("the ledger is closed".into()));
        };
        let positions = store.usage_key_positions(fp)?;
        // Never evicted here: a batch's decisions read what its prefetch
        // fetched (see `trim_cache`).
        self.cache.insert(fp, positions);
        Ok(())
    }

    /// Drops the fetched candidates once there are many. Only before a
    /// batch's prefetch, never between a prefetch and its decisions (a key
    /// whose candidates vanished in between would look new).
    pub fn trim_cache(&mut self) {
        if self.cache.len() >= CACHE_MAX {
            self.cache.clear();
        }
    }

    /// Whether the hash map of recent keys holds `hash` (for another key:
    /// the caller found none for its own). Only then must a new key go to
    /// the exact table; runs and the store keep any number of keys under
    /// one fingerprint, each confirmed against its stored event.
    pub fn recent_holds(&self, hash: u64) -> bool {
        self.recent.contains_key(&hash)
    }

    /// Every candidate of `hash`, the spilled ones read from `store` (a
    /// test aid: a full lookup without the cache), in a stable order.
    pub fn all_candidates(
        &self,
        hash: u64,
        store: &dyn EventStore,
    ) -> Result<Vec<Slot>, StoreError> {
        let mut found = self.by_hash(hash);
        let fp = fp32(hash);
        if !self.spilled.is_empty() && self.filter.may_contain(fp) {
            for p in store.usage_key_positions(fp)? {
                found.push(Slot::Committed(p));
            }
        }
        found.sort_by_key(|s| format!("{s:?}"));
        found.dedup();
        Ok(found)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every slot stored under the key's hash, newest first. They may
    /// belong to other keys: the caller confirms each against the stored
    /// event, then looks in [`IdempotencyIndex::exact`].
    pub fn by_hash(&self, hash: u64) -> Vec<Slot> {
        let mut found = Vec::new();
        if let Some(v) = self.recent.get(&hash) {
            found.push(unpack(*v));
        }
        for run in self.frozen.iter().rev() {
            run.each(hash, |p| found.push(Slot::Committed(p)));
        }
        if let Some(spilled) = self.cache.get(&fp32(hash)) {
            for p in spilled {
                let s = Slot::Committed(*p);
                if !found.contains(&s) {
                    found.push(s);
                }
            }
        }
        found
    }

    pub fn exact(&self, account: &str, usage_id: &str) -> Option<Slot> {
        self.exact
            .get(&(account.to_string(), usage_id.to_string()))
            .copied()
            .map(unpack)
    }

    /// Puts a key known to be new, whose hash no other key holds, under its
    /// hash (or moves it from pending to committed).
    pub fn insert_hash(&mut self, hash: u64, slot: Slot) {
        self.recent.insert(hash, pack(slot));
    }

    /// Folds the recent committed keys into a frozen run once there are
    /// many, and merges runs of equal size (so there are at most log2 of
    /// them). Only when nothing is pending (between groups).
    pub fn compact(&mut self) {
        self.settle_spills();
        if self.recent.len() < self.fold_at.max(freeze_at()) {
            return;
        }
        if self.recent.values().any(|v| v & PENDING != 0) {
            return;
        }
        let mut keys = Vec::with_capacity(self.recent.len());
        self.recent.retain(|h, v| {
            if *v <= FROZEN_MAX_POSITION {
                keys.push((*h, *v as u32));
                false
            } else {
                true
            }
        });
        self.recent.shrink_to(FREEZE_AT);
        self.fold_at = self.recent.len() + freeze_at();
        if keys.is_empty() {
            return;
        }
        self.frozen.push(Run::new(keys));
        while let [.., a, b] = self.frozen.as_slice() {
            // Runs of about equal size merge (a fold's size varies a
            // little), so there are O(log n) runs and O(n log n) moves.
            if a.len() > b.len() + b.len() / 2 {
                break;
            }
            // A run on its way to the store is not merged again.
            if a.status.is_some() || b.status.is_some() {
                break;
            }
            let merged = Run::merge(a, b);
            self.frozen.truncate(self.frozen.len() - 2);
            self.frozen.push(merged);
        }
        self.start_spills();
    }

    /// Hands every run of at least the spill size to the spill thread.
    fn start_spills(&mut self) {
        let Some(spill) = &self.spill else {
            return;
        };
        for run in &mut self.frozen {
            if run.status.is_none() && run.len() >= spill.at {
                let done = Arc::new(SpillDone {
                    status: AtomicU8::new(SPILLING),
                    run: parking_lot::Mutex::new(None),
                });
                // A copy of the run (a memcpy); its entries, the store
                // write and the filter are the spill thread's work.
                let copy = Run {
                    status: None,
                    ..run.clone()
                };
                if spill.tx.send((copy, done.clone())).is_ok() {
                    run.status = Some(done);
                }
            }
        }
    }

    /// Replaces every run the store has taken by its size and samples (its
    /// keys are in the filter by then); a run the
    /// store refused stays in memory (and is offered again later).
    fn settle_spills(&mut self) {
        if !self.frozen.iter().any(|r| r.status.is_some()) {
            return;
        }
        let mut kept = Vec::with_capacity(self.frozen.len());
        let mut settled = false;
        for mut run in std::mem::take(&mut self.frozen) {
            match run
                .status
                .as_ref()
                .map(|s| s.status.load(Ordering::Acquire))
            {
                Some(SPILLED) => {
                    let spilled = run.status.as_ref().and_then(|s| s.run.lock().take());
                    match spilled {
                        Some(f) => {
                            self.spilled.push(f);
                            settled = true;
                        }
                        None => {
                            run.status = None;
                            kept.push(run);
                        }
                    }
                }
                Some(SPILL_FAILED) => {
                    run.status = None;
                    kept.push(run);
                }
                _ => kept.push(run),
            }
        }
        self.frozen = kept;
        if settled {
            // Candidates read before may miss the keys just spilled.
            self.cache.clear();
        }
    }

    /// Waits (bounded) until the runs handed to the spill thread are in the
    /// store and settled (for tests and a clean stop).
    pub fn finish_spills(&mut self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            self.settle_spills();
            let busy = self.frozen.iter().any(|r| {
                r.status
                    .as_ref()
                    .is_some_and(|s| s.status.load(Ordering::Acquire) == SPILLING)
            });
            if !busy {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    /// Puts a key whose hash another key already holds in the exact table.
    pub fn insert_exact(&mut self, account: &str, usage_id: &str, slot: Slot) {
        self.exact
            .insert((account.to_string(), usage_id.to_string()), pack(slot));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_pack_and_unpack() {
        for s in [
            Slot::Committed(0),
            Slot::Committed(123_456_789),
            Slot::Pending {
                stream: 7,
                event: 9999,
            },
            Slot::Pending {
                stream: u32::MAX >> 1,
                event: u32::MAX,
            },
        ] {
            assert_eq!(unpack(pack(s)), s);
        }
    }

    #[test]
    fn frozen_keys_are_found_and_others_are_not() {
        let mut idx = IdempotencyIndex::default();
        let n = 5 * FREEZE_AT as u64 + 500;
        let keys: Vec<u64> = (0..n).map(|i| key("acme", &format!("u{i}"))).collect();
        for (i, h) in keys.iter().enumerate() {
            idx.insert_hash(*h, Slot::Committed(i as u64 + 1));
            if i % 1000 == 999 {
                idx.compact();
            }
        }
        idx.compact();
        assert!(idx.recent.len() < FREEZE_AT, "folded");
        assert!(idx.frozen.len() <= 3, "runs merged: {}", idx.frozen.len());
        assert_eq!(idx.len(), keys.len());
        // More keys after the fold, one still pending: no fold then.
        let late = key("acme", "late");
        idx.insert_hash(
            late,
            Slot::Pending {
                stream: 0,
                event: 3,
            },
        );
        idx.compact();
        for (i, h) in keys.iter().enumerate().step_by(997) {
            assert!(idx.by_hash(*h).contains(&Slot::Committed(i as u64 + 1)));
        }
        assert_eq!(
            idx.by_hash(late),
            vec![Slot::Pending {
                stream: 0,
                event: 3
            }]
        );
        // Other keys' lookups almost never find a candidate (a 32-bit
        // fingerprint shared with one of 1.3M keys: ~0.03% of lookups).
        let false_hits = (0..20_000)
            .filter(|i| !idx.by_hash(key("acme", &format!("other{i}"))).is_empty())
            .count();
        assert!(false_hits < 40, "{false_hits} false candidates");
    }

    #[test]
    fn runs_keep_both_keys_of_a_shared_fingerprint_and_the_hash_extremes() {
        // Two hashes that differ only below the fingerprint bits.
        let (a, b) = (0x1234_5678_9abc_0001u64, 0x1234_5678_9abc_ffffu64);
        assert_eq!(fingerprint(a), fingerprint(b));
        let r1 = Run::new(vec![(a, 10), (u64::MAX, 7), (0, 5)]);
        let r2 = Run::new(vec![(b, 11), (1 << 63, 6)]);
        let r = Run::merge(&r1, &r2);
        let all = |h: u64| {
            let mut v = vec![];
            r.each(h, |p| v.push(p));
            v.sort_unstable();
            v
        };
        assert_eq!(all(a), vec![10, 11]);
        assert_eq!(all(0), vec![5]);
        assert_eq!(all(1 << 63), vec![6]);
        assert_eq!(all(u64::MAX), vec![7]);
        assert!(all(12345 << 20).is_empty());
        assert_eq!(r.dir[1 << DIR_BITS] as usize, r.len());
    }

    #[test]
    fn keys_beyond_32_bit_positions_stay_in_the_hash_map() {
        let mut idx = IdempotencyIndex::default();
        for i in 0..FREEZE_AT as u64 {
            idx.insert_hash(
                key("a", &format!("{i}")),
                Slot::Committed(FROZEN_MAX_POSITION + i),
            );
        }
        idx.compact();
        assert_eq!(idx.frozen.iter().map(Run::len).sum::<usize>(), 1);
        assert_eq!(idx.recent.len(), FREEZE_AT - 1);
        let far = key("a", &format!("{}", FREEZE_AT - 1));
        assert_eq!(
            idx.by_hash(far),
            vec![Slot::Committed(FROZEN_MAX_POSITION + FREEZE_AT as u64 - 1)]
        );
        // No fold again until another FREEZE_AT keys arrive.
        idx.compact();
        assert_eq!(idx.recent.len(), FREEZE_AT - 1);
    }

    fn run_of(prefix: &str, n: u64, first: u64) -> Vec<(u32, u64)> {
        (0..n)
            .map(|i| (fp32(key("acme", &format!("{prefix}{i}"))), first + i))
            .collect()
    }

    impl Filter {
        /// An empty filter's section (knows no key).
        fn default_section() -> Vec<u8> {
            let mut out = Vec::new();
            ciborium::into_writer(&Filter::default(), &mut out).unwrap();
            out
        }
    }

    fn fresh_hits(f: &Filter) -> usize {
        (0..50_000)
            .filter(|i| f.may_contain(fp32(key("acme", &format!("fresh{i}")))))
            .count()
    }

    #[test]
    fn a_pending_filter_says_maybe_until_loaded_from_its_section_or_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let shared =
            Arc::new(accrue_store::sqlite::SqliteStore::open(dir.path().join("l.db")).unwrap());
        let store = shared.as_ref();
        let run = run_of("p-", 30_000, 1);
        store.put_usage_keys(&run).unwrap();
        let mut idx = IdempotencyIndex::default();
        idx.filter.add(&run, store);
        idx.spilled.push(SpilledRun::of(&run));
        let section = idx.filter_section().unwrap();
        // What a snapshot's index is on load: its filter pending.
        let mut cbor = Vec::new();
        ciborium::into_writer(&idx, &mut cbor).unwrap();
        let back: IdempotencyIndex = ciborium::from_reader(cbor.as_slice()).unwrap();
        assert!(!back.filter_ready());
        assert!(
            back.well_formed(),
            "a pending filter is checked when loaded"
        );
        // Every key may be there (so each is looked up in the store), and
        // a snapshot cannot be taken of it.
        assert_eq!(fresh_hits(&back.filter), 50_000);
        assert!(back.filter_section().is_err());
        // From its section: the keys, and few others.
        back.filter_load().run(Some(&section), store).unwrap();
        assert!(back.filter_ready());
        assert!(run.iter().all(|(fp, _)| back.filter.may_contain(*fp)));
        assert!(fresh_hits(&back.filter) < 1_500);
        // A section that does not decode, or does not know the spilled
        // runs' samples: rebuilt from the store, the keys all there.
        for bad in [b"not cbor".to_vec(), Filter::default_section()] {
            let again: IdempotencyIndex = ciborium::from_reader(cbor.as_slice()).unwrap();
            again.filter_load().run(Some(&bad), store).unwrap();
            assert!(again.filter_ready());
            assert!(run.iter().all(|(fp, _)| again.filter.may_contain(*fp)));
            assert!(fresh_hits(&again.filter) < 1_500);
        }
        // A spill during the load lands in the loaded filter.
        let waiting: IdempotencyIndex = ciborium::from_reader(cbor.as_slice()).unwrap();
        let more = run_of("q-", 1_000, 40_000);
        store.put_usage_keys(&more).unwrap();
        let (f, st) = (waiting.filter.clone(), shared.clone());
        let adder = std::thread::spawn(move || {
            f.add(&more, st.as_ref());
            more
        });
        // An add into a pending filter does not wait: it is queued, and
        // joins the filter when it is installed.
        let more = adder.join().unwrap();
        assert!(!waiting.filter_ready());
        waiting.filter_load().run(Some(&section), store).unwrap();
        assert!(more
            .iter()
            .chain(&run)
            .all(|(fp, _)| waiting.filter.may_contain(*fp)));
    }

    #[test]
    fn the_filter_knows_every_spilled_key_and_rarely_others_however_many_runs() {
        let dir = tempfile::tempdir().unwrap();
        let store = accrue_store::sqlite::SqliteStore::open(dir.path().join("l.db")).unwrap();
        let f = Filter::default();
        let mut all = Vec::new();
        let mut rates = Vec::new();
        // Twelve runs: every bucket is rebuilt from the store several times.
        for r in 0..12u64 {
            let run = run_of(&format!("r{r}-"), 40_000, 1 + r * 40_000);
            store.put_usage_keys(&run).unwrap();
            f.add(&run, &store);
            all.extend(run);
            assert!(
                all.iter().all(|(fp, _)| f.may_contain(*fp)),
                "a false negative after run {r}"
            );
            rates.push(fresh_hits(&f));
        }
        // 8 to 14 bits a key, 6 probes in one block: ~1–2.5 %, and not
        // growing with the number of runs (a filter per run: 12 × ~0.8 %).
        for (r, hits) in rates.iter().enumerate() {
            assert!(
                *hits < 50_000 * 3 / 100,
                "run {r}: {hits} of 50,000 fresh ids would read the store"
            );
        }
        assert!(
            f.buckets.iter().any(|b| b.read().capacity > 64),
            "no bucket was rebuilt from the store"
        );
        let bytes = f.bytes() as f64 / all.len() as f64;
        assert!((0.9..1.9).contains(&bytes), "{bytes:.2} bytes a key");
        // A snapshot's copy answers the same.
        let mut cbor = Vec::new();
        ciborium::into_writer(&f, &mut cbor).unwrap();
        let back: Filter = ciborium::from_reader(cbor.as_slice()).unwrap();
        assert!(all.iter().all(|(fp, _)| back.may_contain(*fp)));
        assert_eq!(fresh_hits(&back), *rates.last().unwrap());
        // A bucket far larger than the decoder's scratch buffer comes
        // back too (one bucket, 100,000 keys: ~120 KB).
        let one: Vec<(u32, u64)> = (0..100_000u32).map(|i| (i * 7, u64::from(i) + 1)).collect();
        store.put_usage_keys(&one).unwrap();
        f.add(&one, &store);
        let mut cbor = Vec::new();
        ciborium::into_writer(&f, &mut cbor).unwrap();
        let back: Filter = ciborium::from_reader(cbor.as_slice()).unwrap();
        assert!(one.iter().chain(&all).all(|(fp, _)| back.may_contain(*fp)));
        // A bucket count or shape this build does not make is refused.
        let wrong = vec![BucketBytes {
            keys: 1,
            capacity: 64,
            words: vec![],
        }];
        let mut cbor = Vec::new();
        ciborium::into_writer(&wrong, &mut cbor).unwrap();
        assert!(ciborium::from_reader::<Filter, _>(cbor.as_slice()).is_err());
        let s = SpilledRun::of(&all);
        assert_eq!(s.samples.len(), 5);
        assert_eq!(s.samples.last(), all.last());
    }

    #[test]
    fn an_index_whose_filter_does_not_know_its_spilled_runs_is_not_well_formed() {
        let dir = tempfile::tempdir().unwrap();
        let store = accrue_store::sqlite::SqliteStore::open(dir.path().join("l.db")).unwrap();
        let run = run_of("u", 5_000, 1);
        let mut idx = IdempotencyIndex::default();
        idx.spilled.push(SpilledRun::of(&run));
        assert!(!idx.well_formed(), "an empty filter with a spilled run");
        idx.filter.add(&run, &store);
        assert!(idx.well_formed());
    }

    #[test]
    fn a_filter_the_store_cannot_rebuild_still_knows_every_key() {
        let dir = tempfile::tempdir().unwrap();
        let inner = accrue_store::sqlite::SqliteStore::open(dir.path().join("l.db")).unwrap();
        let store = accrue_store::faulty::FaultyStore::new(Arc::new(inner));
        store.fail_key_reads(true);
        let f = Filter::default();
        let mut all = Vec::new();
        for r in 0..4u64 {
            let run = run_of(&format!("r{r}-"), 20_000, 1 + r * 20_000);
            f.add(&run, &store);
            all.extend(run);
        }
        assert!(
            all.iter().all(|(fp, _)| f.may_contain(*fp)),
            "no false negative"
        );
        assert!(
            f.buckets.iter().all(|b| b.read().capacity <= 64),
            "a bucket was rebuilt though the store could not be read"
        );
    }

    #[test]
    fn a_runs_entries_come_back_as_they_went_in() {
        let entries = run_of("u", 1000, 1);
        // A run's entries come back as they went in.
        let run = Run::new(
            entries
                .iter()
                .map(|(fp, p)| ((u64::from(*fp)) << 32, *p as u32))
                .collect(),
        );
        let mut back = run.entries();
        back.sort_unstable();
        let mut want: Vec<(u32, u64)> = entries.to_vec();
        want.sort_unstable();
        assert_eq!(back, want);
    }

    #[test]
    fn a_fetch_never_evicts_what_the_batch_already_fetched() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn EventStore> =
            Arc::new(accrue_store::sqlite::SqliteStore::open(dir.path().join("l.db")).unwrap());
        let mut idx = IdempotencyIndex::default();
        idx.spill_to(store.clone(), 1);
        let old = key("acme", "old");
        store.put_usage_keys(&[(fp32(old), 7)]).unwrap();
        idx.filter.add(&[(fp32(old), 7)], store.as_ref());
        idx.spilled.push(SpilledRun::of(&[(fp32(old), 7)]));
        // The cache is over its size, as after many batches.
        for i in 0..CACHE_MAX as u32 + 10 {
            idx.cache.insert(i.wrapping_mul(2_654_435_761), vec![]);
        }
        let before = idx.cache.len();
        idx.fetch(old).unwrap();
        assert_eq!(idx.cache.len(), before + 1, "fetch evicted nothing");
        assert!(idx.by_hash(old).contains(&Slot::Committed(7)));
        // Trimming happens only where the writer asks, before a batch.
        idx.trim_cache();
        assert!(idx.cache.is_empty());
        idx.fetch(old).unwrap();
        assert!(idx.by_hash(old).contains(&Slot::Committed(7)));
    }

    #[test]
    fn keys_differ_by_account_and_id() {
        assert_ne!(key("a", "1"), key("b", "1"));
        assert_ne!(key("a", "1"), key("a", "2"));
        assert_ne!(key("ab", "c"), key("a", "bc"));
    }
}
