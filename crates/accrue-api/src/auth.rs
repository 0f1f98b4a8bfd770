//! Bearer tokens and roles. Tokens are random, shown once, and stored only
//! as SHA-256 hashes: each issue is a `TokenIssued` event (so the chain
//! covers it and `verify` reports a token row no event created), and a row
//! in the store's meta area for a fast start.

use std::collections::HashMap;
use std::sync::Arc;

use accrue_store::EventStore;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::AppState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Ingest,
    Auditor,
    Account,
    /// A product server, bound to one activation (SPEC §7): its own
    /// license only.
    Server,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
}

impl Principal {
    /// 403 unless the role is one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            Err(ApiError::forbidden())
        }
    }

    /// Reads of one account: admin and auditor see all; an account token
    /// sees only its own (others are "not found", not "forbidden", so ids do
    /// not leak).
    pub fn may_read_account(&self, account_id: &str) -> Result<(), ApiError> {
        match self.role {
            Role::Admin | Role::Auditor => Ok(()),
            Role::Account if self.account_id.as_deref() == Some(account_id) => Ok(()),
            Role::Account => Err(ApiError::not_found(format!("no account {account_id:?}"))),
            Role::Ingest | Role::Server => Err(ApiError::forbidden()),
        }
    }
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

pub fn new_token() -> String {
    format!(
        "acr_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

pub struct Tokens {
    store: Arc<dyn EventStore>,
    ledger: accrue_ledger::Ledger,
    cache: RwLock<HashMap<String, Principal>>,
    admin_hash: Option<String>,
    /// Looks up `server` tokens (derived per activation, never stored).
    pub server_lookup: std::sync::OnceLock<ServerLookup>,
    /// In a cluster, the home partition's store (read only): a token this
    /// partition did not issue is looked up there, so an ingest or auditor
    /// token works on every partition ([`Tokens::with_home`]).
    home: std::sync::OnceLock<Arc<dyn EventStore>>,
    /// Tokens home did not know, and when it was asked: a bad token is
    /// looked up at most once per [`MISS_TTL`], not on every request.
    home_misses: parking_lot::Mutex<HashMap<String, std::time::Instant>>,
}

/// How long an unknown token stays unknown before home is asked again.
const MISS_TTL: std::time::Duration = std::time::Duration::from_secs(2);
/// Most unknown tokens remembered (the table is cleared when full).
const MAX_MISSES: usize = 10_000;

pub type ServerLookup = Box<dyn Fn(&str) -> Option<Principal> + Send + Sync>;

impl Tokens {
    /// Loads issued tokens. The admin token is `admin_token` if given
    /// (from `ACCRUE_ADMIN_TOKEN`); otherwise one is generated at the first
    /// start and returned here, once, to be printed.
    pub fn load(
        ledger: &accrue_ledger::Ledger,
        admin_token: Option<&str>,
    ) -> Result<(Tokens, Option<String>), ApiError> {
        let store = ledger.store().clone();
        let mut cache = HashMap::new();
        for (k, v) in store
            .meta_list("token:")
            .map_err(|e| ApiError::internal(e.to_string()))?
        {
            let h = k.trim_start_matches("token:").to_string();
            // Only tokens the log says were issued (`verify` reports the rest).
            if !ledger.read().tokens.contains(&h) {
                tracing::warn!(
                    token = &h[..h.len().min(12)],
                    "a stored token no TokenIssued event created is ignored"
                );
                continue;
            }
            if let Ok(p) = serde_json::from_str::<Principal>(&v) {
                cache.insert(h, p);
            }
        }
        let mut generated = None;
        let admin_hash = match admin_token.filter(|t| !t.is_empty()) {
            Some(t) => Some(hash(t)),
            None => {
                if store
                    .meta_get("admin_token_generated")
                    .map_err(|e| ApiError::internal(e.to_string()))?
                    .is_none()
                {
                    let t = new_token();
                    let p = Principal {
                        role: Role::Admin,
                        account_id: None,
                    };
                    let h = hash(&t);
                    ledger
                        .record_blocking(accrue_core::LedgerEvent::TokenIssued(issued_event(
                            &h, &p,
                        )))
                        .map_err(ApiError::from)?;
                    store
                        .meta_put(
                            &format!("token:{h}"),
                            &serde_json::to_string(&p).unwrap_or_default(),
                        )
                        .and_then(|_| store.meta_put("admin_token_generated", "1"))
                        .map_err(|e| ApiError::internal(e.to_string()))?;
                    cache.insert(h, p);
                    generated = Some(t);
                }
                None
            }
        };
        Ok((
            Tokens {
                store,
                ledger: ledger.clone(),
                cache: RwLock::new(cache),
                admin_hash,
                server_lookup: std::sync::OnceLock::new(),
                home: std::sync::OnceLock::new(),
                home_misses: parking_lot::Mutex::new(HashMap::new()),
            },
            generated,
        ))
    }

    pub fn principal(&self, token: &str) -> Option<Principal> {
        if let Some(p) = self.server_lookup.get().and_then(|f| f(token)) {
            return Some(p);
        }
        let h = hash(token);
        if self.admin_hash.as_deref() == Some(h.as_str()) {
            return Some(Principal {
                role: Role::Admin,
                account_id: None,
            });
        }
        if let Some(p) = self.cache.read().get(&h).cloned() {
            return Some(p);
        }
        self.issued_at_home(h)
    }

    /// Accepts the tokens the home partition issued too (its meta rows are
    /// written right after their `TokenIssued` event there). Server tokens
    /// are never stored, so never found there.
    pub fn with_home(&self, home: Arc<dyn EventStore>) {
        let _ = self.home.set(home);
    }

    fn issued_at_home(&self, h: String) -> Option<Principal> {
        let home = self.home.get()?;
        if self
            .home_misses
            .lock()
            .get(&h)
            .is_some_and(|at| at.elapsed() < MISS_TTL)
        {
            return None;
        }
        let found = home
            .meta_get(&format!("token:{h}"))
            .ok()
            .flatten()
            .and_then(|v| serde_json::from_str::<Principal>(&v).ok())
            .filter(|p| p.role != Role::Server);
        let Some(p) = found else {
            let mut m = self.home_misses.lock();
            if m.len() >= MAX_MISSES {
                m.clear();
            }
            m.insert(h, std::time::Instant::now());
            return None;
        };
        self.cache.write().insert(h, p.clone());
        Some(p)
    }

    /// Issues a token: recorded as an event first (durable, chained), then
    /// as a meta row, off the async workers (a store call blocks).
    pub async fn issue(&self, principal: Principal) -> Result<String, ApiError> {
        let t = new_token();
        let h = hash(&t);
        self.ledger
            .record(accrue_core::LedgerEvent::TokenIssued(issued_event(
                &h, &principal,
            )))
            .await?;
        let store = self.store.clone();
        let (key, value) = (
            format!("token:{h}"),
            serde_json::to_string(&principal).unwrap_or_default(),
        );
        tokio::task::spawn_blocking(move || store.meta_put(&key, &value))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::internal(e.to_string()))?;
        self.cache.write().insert(h, principal);
        Ok(t)
    }
}

fn issued_event(hash: &str, p: &Principal) -> accrue_core::events::TokenIssued {
    accrue_core::events::TokenIssued {
        token_hash: hash.to_string(),
        role: serde_json::to_value(p.role)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        account_id: p.account_id.clone(),
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(ApiError::unauthorized)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or_else(ApiError::unauthorized)?;
        state
            .tokens
            .principal(token)
            .ok_or_else(ApiError::unauthorized)
    }
}
