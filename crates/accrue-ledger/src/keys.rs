//! Ed25519 signing keys for license definitions (ed25519-dalek, the
//! compact JWS written by `accrue_license::jws`). The key file is JSON,
//! created at first start with mode 0600: the newest key signs; a rotated
//! key stays in the JWKS until every definition it signed has expired
//! (`retired_at` + the definition lifetime), then it is dropped.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use accrue_license::jws::{self, Claims, Header, Jwk, Jwks, DEFINITION_TTL_SECS};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use ed25519_dalek::{Signer, SigningKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {path}: {error}")]
    Io { path: PathBuf, error: String },
    #[error("key file {path} is not a key file: {error}")]
    Format { path: PathBuf, error: String },
}

#[derive(Clone, Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    /// The 32-byte seed, base64url.
    seed: String,
    created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retired_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Serialize, Deserialize, Default)]
struct KeyFile {
    keys: Vec<StoredKey>,
}

struct Key {
    kid: String,
    signing: SigningKey,
    retired_at: Option<DateTime<Utc>>,
}

/// The keys in use: the newest signs, all not yet expired verify.
pub struct KeyRing {
    keys: Vec<Key>,
    /// Where they came from, and its modification time when read.
    source: Option<(PathBuf, Option<SystemTime>)>,
}

fn random_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    seed[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    seed[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    seed
}

fn kid_of(key: &SigningKey) -> String {
    hex::encode(&Sha256::digest(key.verifying_key().as_bytes())[..8])
}

fn new_stored(now: DateTime<Utc>) -> StoredKey {
    let seed = random_seed();
    StoredKey {
        kid: kid_of(&SigningKey::from_bytes(&seed)),
        seed: B64.encode(seed),
        created_at: now,
        retired_at: None,
    }
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn read_file(path: &Path) -> Result<KeyFile, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|e| KeyError::Io {
        path: path.into(),
        error: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| KeyError::Format {
        path: path.into(),
        error: e.to_string(),
    })
}

fn write_file(path: &Path, f: &KeyFile) -> Result<(), KeyError> {
    use std::io::Write;
    let io = |e: std::io::Error| KeyError::Io {
        path: path.into(),
        error: e.to_string(),
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = opts.open(&tmp).map_err(io)?;
    file.write_all(&serde_json::to_vec_pretty(f).expect("serialisable"))
        .map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn ring_of(f: &KeyFile, path: Option<&Path>) -> Result<KeyRing, KeyError> {
    let mut keys = Vec::new();
    for k in &f.keys {
        let seed: [u8; 32] = B64
            .decode(&k.seed)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| KeyError::Format {
                path: path.map(Into::into).unwrap_or_default(),
                error: format!("key {} has no 32-byte seed", k.kid),
            })?;
        let signing = SigningKey::from_bytes(&seed);
        keys.push(Key {
            kid: kid_of(&signing),
            signing,
            retired_at: k.retired_at,
        });
    }
    if keys.iter().all(|k| k.retired_at.is_some()) {
        return Err(KeyError::Format {
            path: path.map(Into::into).unwrap_or_default(),
            error: "no current key".into(),
        });
    }
    Ok(KeyRing {
        keys,
        source: path.map(|p| (p.to_path_buf(), mtime(p))),
    })
}

impl KeyRing {
    /// A key ring that lives only in memory (tests, a ledger not wired to
    /// a data folder).
    pub fn ephemeral() -> KeyRing {
        let f = KeyFile {
            keys: vec![new_stored(Utc::now())],
        };
        ring_of(&f, None).expect("a fresh key")
    }

    /// Loads the key file, creating it (0600) with one key if absent.
    pub fn load_or_create(path: &Path) -> Result<KeyRing, KeyError> {
        if !path.exists() {
            write_file(
                path,
                &KeyFile {
                    keys: vec![new_stored(Utc::now())],
                },
            )?;
        }
        ring_of(&read_file(path)?, Some(path))
    }

    /// `accrue keys rotate`: retires the current key, adds a new one, and
    /// drops keys whose last definitions have expired. Returns the new kid.
    pub fn rotate(path: &Path, now: DateTime<Utc>) -> Result<String, KeyError> {
        let mut f = if path.exists() {
            read_file(path)?
        } else {
            KeyFile::default()
        };
        let ttl = Duration::seconds(DEFINITION_TTL_SECS);
        f.keys
            .retain(|k| k.retired_at.is_none_or(|r| r + ttl > now));
        for k in f.keys.iter_mut().filter(|k| k.retired_at.is_none()) {
            k.retired_at = Some(now);
        }
        let new = new_stored(now);
        let kid = new.kid.clone();
        f.keys.push(new);
        write_file(path, &f)?;
        Ok(kid)
    }

    /// The key file changed on disk since it was read (a rotation while
    /// serving): the caller reloads.
    pub fn changed_on_disk(&self) -> Option<&Path> {
        match &self.source {
            Some((p, m)) if mtime(p) != *m => Some(p),
            _ => None,
        }
    }

    fn current(&self) -> &Key {
        self.keys
            .iter()
            .rev()
            .find(|k| k.retired_at.is_none())
            .expect("a key ring has a current key")
    }

    pub fn current_kid(&self) -> &str {
        &self.current().kid
    }

    /// Signs claims as a compact JWS with the current key.
    pub fn sign(&self, claims: &Claims) -> String {
        let k = self.current();
        let header = Header {
            alg: "EdDSA".into(),
            typ: "JWT".into(),
            kid: k.kid.clone(),
        };
        jws::encode(&header, claims, |input| k.signing.sign(input).to_bytes())
    }

    /// Every key that may still verify a definition at `now` (wall time).
    pub fn jwks(&self, now: DateTime<Utc>) -> Jwks {
        let ttl = Duration::seconds(DEFINITION_TTL_SECS);
        Jwks {
            keys: self
                .keys
                .iter()
                .filter(|k| k.retired_at.is_none_or(|r| r + ttl > now))
                .map(|k| Jwk::ed25519(&k.kid, &k.signing.verifying_key()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            iss: "accrue".into(),
            sub: "ACR-1".into(),
            account_id: "acme".into(),
            activation_id: None,
            server_id: None,
            status: "active".into(),
            term_end: None,
            seats: jws::Seats { full: 1, viewer: 2 },
            data_management: false,
            credits: jws::Credits {
                base: "0.00".into(),
                additional_limit: "0.00".into(),
            },
            billing_frequency: "monthly".into(),
            version: 3,
            iat: 0,
            exp: 1,
        }
    }

    #[test]
    fn a_rotated_key_verifies_until_its_definitions_expired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing-keys.json");
        let ring = KeyRing::load_or_create(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let old = ring.sign(&claims());
        let now = Utc::now();
        let new_kid = KeyRing::rotate(&path, now).unwrap();
        let ring = KeyRing::load_or_create(&path).unwrap();
        assert_eq!(ring.current_kid(), new_kid);
        let jwks = ring.jwks(now);
        assert_eq!(jwks.keys.len(), 2);
        assert_eq!(jws::verify(&old, &jwks).unwrap(), claims());
        assert!(jws::verify(&ring.sign(&claims()), &jwks).is_ok());
        // Eight days later the old key is gone and its definitions fail.
        let later = now + Duration::days(8);
        let jwks = ring.jwks(later);
        assert_eq!(jwks.keys.len(), 1);
        assert!(matches!(
            jws::verify(&old, &jwks),
            Err(jws::VerifyError::UnknownKey(_))
        ));
        // A tampered claim fails.
        let mut parts: Vec<String> = ring.sign(&claims()).split('.').map(String::from).collect();
        let mut c = claims();
        c.seats.full = 100;
        parts[1] = B64.encode(serde_json::to_vec(&c).unwrap());
        assert_eq!(
            jws::verify(&parts.join("."), &jwks),
            Err(jws::VerifyError::Signature)
        );
    }
}
