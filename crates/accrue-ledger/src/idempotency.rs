//! The usage idempotency index: `(account, usage id)` → where the event is.
//!
//! Keys are unique per account forever. The index is derived from the log
//! (rebuilt at start by replay), so it can never disagree with what is
//! stored: a retry after a crash finds exactly the events that were
//! committed. To stay small it keeps a 64-bit hash of the key and the event's
//! position; a hit is confirmed against the stored event itself, and the rare
//! hash collision goes to an exact side table.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

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

/// Keys in `recent` before they are folded into `frozen`.
const FREEZE_AT: usize = 1 << 20;

#[derive(Default)]
pub struct IdempotencyIndex {
    /// The newest keys (and every pending one): hash → packed slot.
    recent: HashMap<u64, u64, BuildHasherDefault<IdentityHasher>>,
    /// Older committed keys, compact (16 bytes a key instead of a hash
    /// map's ~29 with its load factor).
    frozen: Frozen,
    /// Keys whose hash collided with another key's.
    exact: HashMap<(String, String), u64>,
}

/// Committed keys sorted by hash, with their positions, and a directory by
/// the hash's top 16 bits so a lookup searches one small bucket.
#[derive(Default)]
struct Frozen {
    hashes: Vec<u64>,
    positions: Vec<u64>,
    /// `dir[b]..dir[b + 1]`: the entries whose hash starts with `b`.
    dir: Vec<u32>,
}

const DIR_BITS: u32 = 16;

impl Frozen {
    fn get(&self, hash: u64) -> Option<u64> {
        if self.hashes.is_empty() {
            return None;
        }
        let b = (hash >> (64 - DIR_BITS)) as usize;
        let (from, to) = (self.dir[b] as usize, self.dir[b + 1] as usize);
        let i = self.hashes[from..to].binary_search(&hash).ok()?;
        Some(self.positions[from + i])
    }

    /// Merges committed (hash, position) pairs in; no hash may be present.
    fn merge(&mut self, mut new: Vec<(u64, u64)>) {
        new.sort_unstable_by_key(|(h, _)| *h);
        let n = self.hashes.len() + new.len();
        let (mut hashes, mut positions) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let mut old = self
            .hashes
            .iter()
            .copied()
            .zip(self.positions.iter().copied())
            .peekable();
        let mut new = new.into_iter().peekable();
        loop {
            let take_old = match (old.peek(), new.peek()) {
                (Some(o), Some(n)) => o.0 < n.0,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let (h, p) = if take_old { old.next() } else { new.next() }.expect("peeked");
            hashes.push(h);
            positions.push(p);
        }
        let mut dir = Vec::with_capacity((1 << DIR_BITS) + 1);
        let mut i = 0usize;
        for b in 0..=(1u64 << DIR_BITS) {
            while i < hashes.len() && (hashes[i] >> (64 - DIR_BITS)) < b {
                i += 1;
            }
            dir.push(i as u32);
        }
        *self = Frozen {
            hashes,
            positions,
            dir,
        };
    }
}

impl IdempotencyIndex {
    pub fn len(&self) -> usize {
        self.recent.len() + self.frozen.hashes.len() + self.exact.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The slot stored under the key's hash (which may belong to another key:
    /// the caller confirms with [`IdempotencyIndex::exact`] on mismatch).
    pub fn by_hash(&self, hash: u64) -> Option<Slot> {
        match self.recent.get(&hash) {
            Some(v) => Some(unpack(*v)),
            None => self.frozen.get(hash).map(Slot::Committed),
        }
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

    /// Folds the recent keys into the compact table once there are many.
    /// Only when nothing is pending (between groups).
    pub fn compact(&mut self) {
        if self.recent.len() < FREEZE_AT {
            return;
        }
        if self.recent.values().any(|v| v & PENDING != 0) {
            return;
        }
        let recent: Vec<(u64, u64)> = self.recent.drain().collect();
        self.recent.shrink_to(FREEZE_AT);
        self.frozen.merge(recent);
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
        let keys: Vec<u64> = (0..(FREEZE_AT as u64 + 500))
            .map(|i| key("acme", &format!("u{i}")))
            .collect();
        for (i, h) in keys.iter().enumerate() {
            idx.insert_hash(*h, Slot::Committed(i as u64 + 1));
        }
        idx.compact();
        assert_eq!(idx.recent.len(), 0, "folded");
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
            assert_eq!(idx.by_hash(*h), Some(Slot::Committed(i as u64 + 1)));
        }
        assert_eq!(
            idx.by_hash(late),
            Some(Slot::Pending {
                stream: 0,
                event: 3
            })
        );
        for i in 0..2000 {
            assert_eq!(idx.by_hash(key("acme", &format!("other{i}"))), None);
        }
        // The extremes of the hash space land in the first and last buckets.
        let mut f = Frozen::default();
        f.merge(vec![(u64::MAX, 7), (0, 5), (1 << 63, 6)]);
        assert_eq!(f.get(0), Some(5));
        assert_eq!(f.get(1 << 63), Some(6));
        assert_eq!(f.get(u64::MAX), Some(7));
        assert_eq!(f.get(12345), None);
    }

    #[test]
    fn keys_differ_by_account_and_id() {
        assert_ne!(key("a", "1"), key("b", "1"));
        assert_ne!(key("a", "1"), key("a", "2"));
        assert_ne!(key("ab", "c"), key("a", "bc"));
    }
}
