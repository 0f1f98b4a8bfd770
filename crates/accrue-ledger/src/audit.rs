//! Audit checks over the raw log: every stream's hash chain, the global
//! chain over the whole log, contiguous positions and versions, stream
//! heads, and signed **anchors** that prove the log has neither changed at
//! or before a position nor shrunk since.

use std::collections::HashMap;
use std::path::Path;

use accrue_store::hash::{chain_hash, recorded_hash, GENESIS};
use accrue_store::EventStore;
use base64::Engine;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::LedgerError;

/// The first event that breaks a chain, or the anchor check that failed.
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
    /// The global chain hash of the last event (hex; zeros for an empty
    /// log): one digest that commits to the whole log, and what an anchor
    /// signs.
    pub head_hash: String,
    pub head_position: u64,
    pub first_broken: Option<BrokenEvent>,
    /// Whether an anchor was checked, and held.
    pub anchor_ok: Option<bool>,
}

/// Recomputes every stream's hash chain and the global chain from the
/// stored bytes.
pub fn verify(
    store: &dyn EventStore,
    progress: impl FnMut(u64, u64),
) -> Result<VerifyReport, LedgerError> {
    verify_with(store, None, progress)
}

/// [`verify`], and checks `anchor` as well: its signature, that the event
/// at its position still has its chain hash (so nothing at or before it
/// changed: the chain is recomputed from the first event), and that the
/// log did not shrink below it.
pub fn verify_with(
    store: &dyn EventStore,
    anchor: Option<&Anchor>,
    mut progress: impl FnMut(u64, u64),
) -> Result<VerifyReport, LedgerError> {
    let head = store.head_position()?;
    let mut heads: HashMap<String, (u64, [u8; 32])> = HashMap::new();
    let mut first_broken: Option<BrokenEvent> = None;
    let mut events = 0u64;
    let mut after = 0u64;
    let mut chain = GENESIS;
    let mut anchor_seen: Option<[u8; 32]> = None;
    let mut tokens: std::collections::HashSet<String> = Default::default();
    let note = |b: BrokenEvent, first: &mut Option<BrokenEvent>| {
        if first.is_none() {
            *first = Some(b);
        }
    };
    // The log as it stood when the check began: a live ledger may append
    // while it runs, and those events are the next check's.
    let mut done = false;
    while !done {
        let page = store.read_all(after, 10_000)?;
        if page.is_empty() {
            break;
        }
        for e in &page {
            if e.position > head {
                done = true;
                break;
            }
            events += 1;
            let (version, prev) = heads.get(&e.stream).copied().unwrap_or((0, GENESIS));
            let reason = if e.position != after + 1 {
                Some(format!(
                    "position {} follows {after}: events are missing",
                    e.position
                ))
            } else if e.version != version + 1 {
                Some(format!("version {} follows {version}", e.version))
            } else if recorded_hash(&prev, e) != e.hash {
                Some("stored hash does not match the recomputed hash".to_string())
            } else if chain_hash(&chain, e.position, &e.hash) != e.chain {
                Some("global chain hash does not match the recomputed one".to_string())
            } else {
                None
            };
            if let Some(reason) = reason {
                note(
                    BrokenEvent {
                        position: e.position,
                        stream: e.stream.clone(),
                        version: e.version,
                        reason,
                    },
                    &mut first_broken,
                );
            }
            // Keep chaining from the stored hashes so one break is reported once.
            after = e.position;
            chain = e.chain;
            heads.insert(e.stream.clone(), (e.version, e.hash));
            if anchor.is_some_and(|a| a.position == e.position) {
                anchor_seen = Some(e.chain);
            }
            if e.type_name == "TokenIssued" {
                if let Ok(t) =
                    serde_json::from_slice::<accrue_core::events::TokenIssued>(&e.payload)
                {
                    tokens.insert(t.token_hash);
                }
            }
        }
        progress(after, head);
    }
    if after != head {
        note(
            BrokenEvent {
                position: after,
                stream: String::new(),
                version: 0,
                reason: format!("the store's head is {head} but the log ends at {after}"),
            },
            &mut first_broken,
        );
    }
    // The store's own idea of each stream's head (what the writer appends
    // after) must be where its chain ends.
    let mut names: Vec<&String> = heads.keys().collect();
    names.sort();
    for n in names {
        let (v, hash) = heads[n];
        let h = store.stream_head(n)?;
        // Appended while the check ran: the stream's later events must all
        // lie beyond the checked head and chain on from where it ended.
        let appended_since = h.version > v && {
            let later = store.read_stream(n, v, (h.version - v) as usize)?;
            let mut prev = hash;
            let ok = later.iter().all(|e| {
                let fits = e.position > head && recorded_hash(&prev, e) == e.hash;
                prev = e.hash;
                fits
            });
            ok && later
                .last()
                .is_some_and(|e| e.version == h.version && e.hash == h.hash)
        };
        if !appended_since && (h.version != v || h.hash != hash) {
            note(
                BrokenEvent {
                    position: after,
                    stream: n.clone(),
                    version: v,
                    reason: format!(
                        "the store's head of {n} is version {}, its chain ends at {v}",
                        h.version
                    ),
                },
                &mut first_broken,
            );
        }
    }
    // Every stored token hash must come from a TokenIssued event: a row
    // added behind the ledger's back would be a working credential.
    for (key, _) in store.meta_list("token:")? {
        let h = key.trim_start_matches("token:");
        if !tokens.contains(h) {
            note(
                BrokenEvent {
                    position: 0,
                    stream: "tokens".into(),
                    version: 0,
                    reason: format!(
                        "a stored token ({}…) was not created by any TokenIssued event",
                        &h[..h.len().min(12)]
                    ),
                },
                &mut first_broken,
            );
        }
    }
    let anchor_ok = anchor.map(|a| {
        let problem = match a.check_signature() {
            Err(e) => Some(e),
            Ok(()) if head < a.position => Some(format!(
                "the log shrank: the anchor is at position {}, the log ends at {head}",
                a.position
            )),
            Ok(()) => match anchor_seen {
                None => Some(format!("no event at the anchor's position {}", a.position)),
                Some(c) if hex::encode(c) != a.head_hash => Some(format!(
                    "the log at or before position {} changed since the anchor",
                    a.position
                )),
                Some(_) => None,
            },
        };
        match problem {
            None => true,
            Some(reason) => {
                note(
                    BrokenEvent {
                        position: a.position,
                        stream: String::new(),
                        version: 0,
                        reason: format!("anchor: {reason}"),
                    },
                    &mut first_broken,
                );
                false
            }
        }
    });
    Ok(VerifyReport {
        ok: first_broken.is_none(),
        events,
        streams: heads.len() as u64,
        head_hash: hex::encode(chain),
        head_position: after,
        first_broken,
        anchor_ok,
    })
}

/// A signed checkpoint of the log that finance keeps outside accrue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Anchor {
    pub position: u64,
    /// The global chain hash at `position` (hex).
    pub head_hash: String,
    pub at: DateTime<Utc>,
    /// Ed25519 public key (base64url, no padding) the anchor is signed with.
    pub public_key: String,
    /// Ed25519 signature (base64url) over [`Anchor::message`].
    pub signature: String,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

impl Anchor {
    fn message(position: u64, head_hash: &str, at: &DateTime<Utc>) -> Vec<u8> {
        format!(
            "accrue-anchor-v1\n{position}\n{head_hash}\n{}",
            at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        )
        .into_bytes()
    }

    /// Whether the signature is the public key's over the other fields.
    pub fn check_signature(&self) -> Result<(), String> {
        let key: [u8; 32] = b64()
            .decode(&self.public_key)
            .ok()
            .and_then(|k| k.try_into().ok())
            .ok_or("the public key is not 32 bytes of base64url")?;
        let key = VerifyingKey::from_bytes(&key).map_err(|e| format!("public key: {e}"))?;
        let sig: [u8; 64] = b64()
            .decode(&self.signature)
            .ok()
            .and_then(|s| s.try_into().ok())
            .ok_or("the signature is not 64 bytes of base64url")?;
        let sig = ed25519_dalek::Signature::from_bytes(&sig);
        key.verify(
            &Self::message(self.position, &self.head_hash, &self.at),
            &sig,
        )
        .map_err(|_| "the signature does not match".to_string())
    }
}

/// The Ed25519 key that signs anchors, kept in the data folder (mode 0600).
pub struct AnchorKey {
    key: SigningKey,
}

impl AnchorKey {
    /// Loads `dir/anchor.key` (a 32-byte seed), creating it on first use.
    pub fn load_or_create(dir: &Path) -> std::io::Result<AnchorKey> {
        let path = dir.join("anchor.key");
        let seed: [u8; 32] = match std::fs::read(&path) {
            Ok(b) => b.try_into().map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is not a 32-byte key", path.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut seed = [0u8; 32];
                seed[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
                seed[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
                write_private(&path, &seed)?;
                seed
            }
            Err(e) => return Err(e),
        };
        Ok(AnchorKey {
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// Loads `dir/anchor.key` only if it exists.
    pub fn load_existing(dir: &Path) -> std::io::Result<AnchorKey> {
        let b = std::fs::read(dir.join("anchor.key"))?;
        let seed: [u8; 32] = b.try_into().map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "not a 32-byte key")
        })?;
        Ok(AnchorKey::from_seed(seed))
    }

    pub fn from_seed(seed: [u8; 32]) -> AnchorKey {
        AnchorKey {
            key: SigningKey::from_bytes(&seed),
        }
    }

    pub fn public_key(&self) -> String {
        b64().encode(self.key.verifying_key().as_bytes())
    }

    /// Signs the log's current head.
    pub fn anchor(&self, store: &dyn EventStore, at: DateTime<Utc>) -> Result<Anchor, LedgerError> {
        let position = store.head_position()?;
        let chain = match position {
            0 => GENESIS,
            p => {
                store
                    .read_at(p)?
                    .ok_or_else(|| LedgerError::Corrupt(format!("no event at the head {p}")))?
                    .chain
            }
        };
        let head_hash = hex::encode(chain);
        let sig = self.key.sign(&Anchor::message(position, &head_hash, &at));
        Ok(Anchor {
            position,
            head_hash,
            at,
            public_key: self.public_key(),
            signature: b64().encode(sig.to_bytes()),
        })
    }

    /// Writes an anchor of the current head to `dir/anchors/` (one file per
    /// position; the newest also as `latest.json`).
    pub fn write_anchor(
        &self,
        store: &dyn EventStore,
        dir: &Path,
        at: DateTime<Utc>,
    ) -> Result<Anchor, LedgerError> {
        let a = self.anchor(store, at)?;
        let io = |e: std::io::Error| LedgerError::Corrupt(format!("writing an anchor: {e}"));
        let dir = dir.join("anchors");
        std::fs::create_dir_all(&dir).map_err(io)?;
        let text = serde_json::to_string_pretty(&a).unwrap_or_default();
        std::fs::write(dir.join(format!("anchor-{:012}.json", a.position)), &text).map_err(io)?;
        std::fs::write(dir.join("latest.json"), &text).map_err(io)?;
        Ok(a)
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}
