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
//! never waits for it) and only a Bloom filter of it stays in memory, about
//! 1.25 bytes a key instead of 6. A lookup whose filter says "maybe" reads
//! the key's candidates from the store once ([`IdempotencyIndex::fetch`],
//! before the decision, where a store error can still answer 503), and a
//! fresh id — the common case — touches no disk.

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

/// A run this large is written to the store and leaves memory (a Bloom
/// filter of it stays): 2^21 keys, 12 MB in a run, 2.6 MB as a filter.
pub const SPILL_KEYS: usize = 1 << 21;

/// Fetched candidates kept across batches, until this many (a batch may
/// add more: it is trimmed only before the next batch's prefetch).
const CACHE_MAX: usize = 65_536;

#[derive(Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct IdempotencyIndex {
    /// The newest keys (and every pending one): hash → packed slot.
    recent: HashMap<u64, u64, BuildHasherDefault<IdentityHasher>>,
    /// Older committed keys in compact runs (6 bytes a key instead of a
    /// hash map's ~29 with its load factor), largest first.
    frozen: Vec<Run>,
    /// Fold when `recent` holds this many keys.
    fold_at: usize,
    /// Keys whose hash collided with another key's.
    exact: HashMap<(String, String), u64>,
    /// Runs written to the store: only their filters stay in memory.
    #[serde(default)]
    spilled: Vec<Bloom>,
    /// Where runs are written (none: everything stays in memory).
    #[serde(skip)]
    spill: Option<Spill>,
    /// Candidates read from the store, by fingerprint (see `fetch`).
    #[serde(skip)]
    cache: HashMap<u32, Vec<u64>>,
}

/// A run to write, and where the spill thread reports: the run's filter
/// (built there, not on the writer), then the status.
type SpillJob = (Run, Arc<SpillDone>);

/// What the spill thread hands back for one run.
#[derive(Default)]
struct SpillDone {
    status: AtomicU8,
    filter: parking_lot::Mutex<Option<Bloom>>,
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
    fn new(store: &Arc<dyn EventStore>, at: usize) -> Spill {
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
                        Some(store) => store.put_usage_keys(&keys),
                        None => Err(StoreError::Backend("the ledger is closed".into())),
                    };
                    let status = match put {
                        Ok(()) => {
                            *done.filter.lock() = Some(Bloom::new(&keys));
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

/// A Bloom filter over the 32-bit fingerprints of a spilled run (10 bits
/// and 7 probes a key: about 1 % of fresh ids read the store once).
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Bloom {
    bits: Vec<u64>,
    keys: u64,
    /// A few of the run's (fingerprint, position) pairs: a snapshot whose
    /// spilled keys the store no longer holds is not used.
    #[serde(default)]
    samples: Vec<(u32, u64)>,
}

impl Bloom {
    fn probes(fp: u32) -> (u64, u64) {
        // splitmix64 of the fingerprint: two independent 32-bit halves.
        let mut z = u64::from(fp).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z & 0xffff_ffff, (z >> 32) | 1)
    }

    fn new(entries: &[(u32, u64)]) -> Bloom {
        let n = entries.len().max(1) as u64;
        let words = (n * 10).div_ceil(64).max(1);
        let step = (entries.len() / 4).max(1);
        let mut samples: Vec<(u32, u64)> = entries.iter().step_by(step).take(4).copied().collect();
        // The last entry too: a store that lost the end of a run is caught.
        samples.extend(entries.last().copied());
        let mut b = Bloom {
            bits: vec![0; words as usize],
            keys: entries.len() as u64,
            samples,
        };
        let m = words * 64;
        for (fp, _) in entries {
            let (h1, h2) = Bloom::probes(*fp);
            for i in 0..7u64 {
                let bit = h1.wrapping_add(i.wrapping_mul(h2)) % m;
                b.bits[(bit / 64) as usize] |= 1 << (bit % 64);
            }
        }
        b
    }

    fn may_contain(&self, fp: u32) -> bool {
        let m = self.bits.len() as u64 * 64;
        let (h1, h2) = Bloom::probes(fp);
        (0..7u64).all(|i| {
            let bit = h1.wrapping_add(i.wrapping_mul(h2)) % m;
            self.bits[(bit / 64) as usize] & (1 << (bit % 64)) != 0
        })
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
    fps: Vec<u16>,
    positions: Vec<u32>,
    /// `dir[b]..dir[b + 1]`: the entries whose hash starts with `b`.
    dir: Vec<u32>,
    /// Being written to the store (`SPILLING`, then `SPILLED` or
    /// `SPILL_FAILED`); not part of a snapshot — a run loaded from one is
    /// spilled again (storing a key twice is a no-op).
    #[serde(skip)]
    status: Option<Arc<SpillDone>>,
}

const DIR_BITS: u32 = 16;

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
        self.spill = Some(Spill::new(&store, at.max(1)));
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
        if self.cache.contains_key(&fp) || !self.spilled.iter().any(|b| b.may_contain(fp)) {
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
        if self.spilled.iter().any(|b| b.may_contain(fp)) {
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
                    filter: parking_lot::Mutex::new(None),
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

    /// Replaces every run the store has taken by its filter; a run the
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
                    let filter = run.status.as_ref().and_then(|s| s.filter.lock().take());
                    match filter {
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

    #[test]
    fn a_spilled_runs_filter_knows_its_keys_and_rarely_others() {
        let entries: Vec<(u32, u64)> = (0..100_000u64)
            .map(|i| (fp32(key("acme", &format!("u{i}"))), i + 1))
            .collect();
        let b = Bloom::new(&entries);
        assert!(
            entries.iter().all(|(fp, _)| b.may_contain(*fp)),
            "no false negative"
        );
        let fresh = (0..50_000)
            .filter(|i| b.may_contain(fp32(key("acme", &format!("fresh{i}")))))
            .count();
        // 10 bits and 7 probes a key: ~0.8 % expected.
        assert!(
            fresh < 50_000 / 50,
            "{fresh} of 50,000 fresh ids would read the store"
        );
        assert_eq!(b.bits.len() * 64, 1_000_000, "1.25 bytes a key");
        assert_eq!(b.samples.len(), 5);
        assert_eq!(b.samples.last(), entries.last());
        // A run's entries come back as they went in.
        let run = Run::new(
            entries
                .iter()
                .take(1000)
                .map(|(fp, p)| ((u64::from(*fp)) << 32, *p as u32))
                .collect(),
        );
        let mut back = run.entries();
        back.sort_unstable();
        let mut want: Vec<(u32, u64)> = entries.iter().take(1000).copied().collect();
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
        idx.spilled.push(Bloom::new(&[(fp32(old), 7)]));
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
