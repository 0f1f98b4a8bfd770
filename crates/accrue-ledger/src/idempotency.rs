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

#[derive(Default)]
pub struct IdempotencyIndex {
    by_hash: HashMap<u64, u64, BuildHasherDefault<IdentityHasher>>,
    /// Keys whose hash collided with another key's.
    exact: HashMap<(String, String), u64>,
}

impl IdempotencyIndex {
    pub fn len(&self) -> usize {
        self.by_hash.len() + self.exact.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The slot stored under the key's hash (which may belong to another key:
    /// the caller confirms with [`IdempotencyIndex::exact`] on mismatch).
    pub fn by_hash(&self, hash: u64) -> Option<Slot> {
        self.by_hash.get(&hash).copied().map(unpack)
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
        self.by_hash.insert(hash, pack(slot));
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
    fn keys_differ_by_account_and_id() {
        assert_ne!(key("a", "1"), key("b", "1"));
        assert_ne!(key("a", "1"), key("a", "2"));
        assert_ne!(key("ab", "c"), key("a", "bc"));
    }
}
