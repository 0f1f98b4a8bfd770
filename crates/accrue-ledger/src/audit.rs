//! Audit checks over the raw log.

use std::collections::HashMap;

use accrue_store::hash::{recorded_hash, GENESIS};
use accrue_store::EventStore;
use sha2::{Digest, Sha256};

use crate::LedgerError;

/// The first event whose stored hash does not match its recomputation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenEvent {
    pub position: u64,
    pub stream: String,
    pub version: u64,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub ok: bool,
    pub events: u64,
    pub streams: u64,
    /// SHA-256 over every stream's (name, version, head hash), streams in
    /// name order: one digest that commits to the whole ledger.
    pub head_hash: String,
    pub first_broken: Option<BrokenEvent>,
}

/// Recomputes every stream's hash chain from the stored bytes.
pub fn verify(
    store: &dyn EventStore,
    mut progress: impl FnMut(u64, u64),
) -> Result<VerifyReport, LedgerError> {
    let head = store.head_position()?;
    let mut heads: HashMap<String, (u64, [u8; 32])> = HashMap::new();
    let mut first_broken = None;
    let mut events = 0u64;
    let mut after = 0u64;
    loop {
        let page = store.read_all(after, 10_000)?;
        if page.is_empty() {
            break;
        }
        for e in &page {
            events += 1;
            after = e.position;
            let (version, prev) = heads.get(&e.stream).copied().unwrap_or((0, GENESIS));
            let broken = if e.version != version + 1 {
                Some(format!("version {} follows {version}", e.version))
            } else if recorded_hash(&prev, e) != e.hash {
                Some("stored hash does not match the recomputed hash".to_string())
            } else {
                None
            };
            if let (Some(reason), None) = (broken, &first_broken) {
                first_broken = Some(BrokenEvent {
                    position: e.position,
                    stream: e.stream.clone(),
                    version: e.version,
                    reason,
                });
            }
            // Keep chaining from the stored hash so one break is reported once.
            heads.insert(e.stream.clone(), (e.version, e.hash));
        }
        progress(after, head);
    }
    let mut names: Vec<&String> = heads.keys().collect();
    names.sort();
    let mut h = Sha256::new();
    for n in names {
        let (v, hash) = heads[n];
        h.update((n.len() as u64).to_be_bytes());
        h.update(n.as_bytes());
        h.update(v.to_be_bytes());
        h.update(hash);
    }
    Ok(VerifyReport {
        ok: first_broken.is_none(),
        events,
        streams: heads.len() as u64,
        head_hash: hex::encode(h.finalize()),
        first_broken,
    })
}
