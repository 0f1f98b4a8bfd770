//! The license server inside the writer (SPEC §7): serial lookup, control
//! numbers, license deadlines closed by the clock (expiry, release after
//! silence) exactly once like periods, coalesced last-sync writes, signed
//! definitions and server tokens. A child module of `writer`, so the hooks
//! in writer/ stay one line each.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use accrue_core::license::{LicenseCommand, LicenseError, LicenseState};
use accrue_core::{AccountEvent, AccountState, Command, Context, DomainError};
use accrue_license::jws::{Claims, Credits, Jwks, Seats, DEFINITION_TTL_SECS};
use accrue_store::EventStore;
use chrono::{DateTime, Utc};
use parking_lot::{Mutex, RwLock};
use rust_decimal::Decimal;

use tokio::sync::oneshot;

use super::{Reply, Writer};
use crate::keys::{KeyError, KeyRing};
use crate::{Ledger, LedgerError};

/// `serve --release-after-days`: an activation silent this long is released.
static RELEASE_AFTER_DAYS: AtomicU32 = AtomicU32::new(14);
/// At most one durable last-sync write per activation this often.
const SYNC_COALESCE: StdDuration = StdDuration::from_secs(60);
/// Failed activations per serial number within a minute before 429.
pub const MAX_FAILURES_PER_MINUTE: usize = 10;
/// Serial numbers whose failures are remembered (bounded memory).
const MAX_FAILING_SERIALS: usize = 100_000;
/// The definition's issuer claim.
pub const ISSUER: &str = "accrue";

/// Sets the release-after window (0 turns it off) for ledgers opened later.
pub fn set_release_after_days(days: u32) {
    RELEASE_AFTER_DAYS.store(days, Relaxed);
}

pub fn release_after_days() -> u32 {
    RELEASE_AFTER_DAYS.load(Relaxed)
}

/// The writer's license index.
#[derive(Default)]
pub(crate) struct Index {
    by_serial: HashMap<String, String>,
    /// (next license deadline, account).
    due: BTreeSet<(DateTime<Utc>, String)>,
    due_of: HashMap<String, DateTime<Utc>>,
    /// When each activation's last sync was last written (wall time).
    written: HashMap<String, Instant>,
}

impl Index {
    /// Follows an applied event (live or replayed).
    pub(crate) fn track(&mut self, account: &str, e: &AccountEvent, st: &AccountState) {
        match e {
            AccountEvent::AccountOpened(o) => {
                self.by_serial
                    .insert(o.serial_number.clone(), account.to_string());
            }
            AccountEvent::ControlNumberIssued(_)
            | AccountEvent::LicenseTermChanged(_)
            | AccountEvent::LicenseExpired(_)
            | AccountEvent::LicenseReactivated(_)
            | AccountEvent::ActivationCreated(_)
            | AccountEvent::ActivationReleased(_)
            | AccountEvent::ActivationsReset(_)
            | AccountEvent::LicenseSynced(_)
            | AccountEvent::SessionsReported(_) => {
                let next = st
                    .license
                    .as_deref()
                    .and_then(|l| l.next_due(release_after_days()));
                self.set_due(account, next);
            }
            _ => {}
        }
    }

    /// Indexes an account loaded from a snapshot as its replay would have.
    pub(crate) fn rebuild(&mut self, account: &str, st: &AccountState) {
        if let Some(o) = &st.info {
            self.by_serial
                .insert(o.serial_number.clone(), account.to_string());
        }
        let next = st
            .license
            .as_deref()
            .and_then(|l| l.next_due(release_after_days()));
        self.set_due(account, next);
    }

    /// The index in a stable order (snapshot tests).
    pub(crate) fn digest(&self) -> String {
        let mut serials: Vec<_> = self.by_serial.iter().collect();
        serials.sort();
        format!("{serials:?} {:?}", self.due)
    }

    fn set_due(&mut self, account: &str, next: Option<DateTime<Utc>>) {
        if self.due_of.get(account).copied() == next {
            return;
        }
        if let Some(old) = self.due_of.remove(account) {
            self.due.remove(&(old, account.to_string()));
        }
        if let Some(t) = next {
            self.due.insert((t, account.to_string()));
            self.due_of.insert(account.to_string(), t);
        }
    }
}

/// What the HTTP side shares with the writer: pending polls, keys, the
/// server-token secret and failed-activation counts.
pub struct Hot {
    /// activation → (account, clock time of its latest poll), not yet durable.
    pending: Mutex<HashMap<String, (String, DateTime<Utc>)>>,
    keys: RwLock<Arc<KeyRing>>,
    keys_checked: Mutex<Instant>,
    token_secret: [u8; 32],
    failures: Mutex<HashMap<String, Vec<Instant>>>,
    /// In a cluster, the home partition's store: every partition signs
    /// webhooks with the home partition's secret (one secret per endpoint
    /// across the cluster), read once it is there.
    webhook_home: Mutex<Option<Arc<dyn EventStore>>>,
    webhook_key: Mutex<Option<[u8; 32]>>,
}

/// Where a ledger keeps the secret its tokens and webhook secrets derive from.
const TOKEN_SECRET_META: &str = "license_token_secret";

fn parse_secret(hex_secret: &str) -> Option<[u8; 32]> {
    hex::decode(hex_secret).ok().and_then(|v| v.try_into().ok())
}

impl Hot {
    pub(crate) fn load(store: &dyn EventStore) -> Result<Hot, LedgerError> {
        let hex_secret = match store.meta_get(TOKEN_SECRET_META)? {
            Some(s) => s,
            None => {
                let mut b = [0u8; 32];
                b[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
                b[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
                let s = hex::encode(b);
                store.meta_put(TOKEN_SECRET_META, &s)?;
                s
            }
        };
        let token_secret: [u8; 32] = parse_secret(&hex_secret)
            .ok_or_else(|| LedgerError::Corrupt("bad license_token_secret".into()))?;
        Ok(Hot {
            pending: Mutex::new(HashMap::new()),
            keys: RwLock::new(Arc::new(KeyRing::ephemeral())),
            keys_checked: Mutex::new(Instant::now()),
            token_secret,
            failures: Mutex::new(HashMap::new()),
            webhook_home: Mutex::new(None),
            webhook_key: Mutex::new(None),
        })
    }
}

/// Who a license command is for.
#[derive(Debug, Clone)]
pub enum LicenseTarget {
    Account(String),
    /// An activation names its license by serial number.
    Serial(String),
}

/// What a license command did.
#[derive(Debug, Clone)]
pub struct LicenseOutcome {
    pub account_id: String,
    /// For an activation: the (new or existing) activation.
    pub activation_id: Option<String>,
    pub events: Vec<AccountEvent>,
}

fn control_number() -> String {
    loop {
        let c = control_number_candidate();
        if longest_digit_run(&c) < 13 {
            return c;
        }
    }
}

fn control_number_candidate() -> String {
    // Crockford base32, 100 random bits, in groups of five.
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut bytes = Vec::with_capacity(32);
    bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    let chars: Vec<char> = bytes
        .iter()
        .take(20)
        .map(|b| ALPHABET[usize::from(b & 31)] as char)
        .collect();
    chars
        .chunks(5)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

/// The most digits in a row, dashes not counting as a break. A product
/// server sends the control number back in an activation's body, which
/// the card-data guard scans for 13 to 19 digits in a row (separators
/// allowed): a control number with fewer can never be taken for one.
fn longest_digit_run(s: &str) -> usize {
    let (mut best, mut run) = (0, 0);
    for c in s.chars() {
        if c.is_ascii_digit() {
            run += 1;
            best = best.max(run);
        } else if c != '-' {
            run = 0;
        }
    }
    best
}

impl Writer {
    /// A license job: resolves the account, decides, stages, replies after
    /// the commit.
    pub(super) fn license_job(
        &mut self,
        target: LicenseTarget,
        command: LicenseCommand,
        reply: oneshot::Sender<Result<LicenseOutcome, LedgerError>>,
    ) {
        let account = match target {
            LicenseTarget::Account(a) => Some(a),
            LicenseTarget::Serial(s) => self.state.license.by_serial.get(&s).cloned(),
        };
        let Some(account) = account else {
            let _ = reply.send(Err(LedgerError::Domain(DomainError::License(
                LicenseError::UnknownSerial,
            ))));
            return;
        };
        let server_id = match &command {
            LicenseCommand::Activate { server_id, .. } => Some(server_id.clone()),
            _ => None,
        };
        let now = self.shared.clock.now();
        match self.decide_and_stage(&account, Command::License(command), &Context::at(now)) {
            Ok(events) => {
                let activation_id = server_id.and_then(|s| {
                    let st = self.state.accounts.get(&account)?;
                    let l = st.license.as_deref()?;
                    l.active().find(|a| a.server_id == s).map(|a| a.id.clone())
                });
                let outcome = LicenseOutcome {
                    account_id: account,
                    activation_id,
                    events,
                };
                self.group.replies.push(Reply::License(reply, outcome));
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Issues a control number to an account that has none.
    pub(super) fn license_issue(&mut self, account: &str) {
        let cmd = Command::License(LicenseCommand::IssueControlNumber {
            control_number: control_number(),
        });
        let now = self.shared.clock.now();
        if let Err(e) = self.decide_and_stage(account, cmd, &Context::at(now)) {
            tracing::error!(account, error = %e, "issuing a control number failed");
        }
    }

    /// At start: accounts opened before the license server get theirs.
    pub(super) fn license_issue_missing(&mut self) {
        let missing: Vec<String> = self
            .state
            .accounts
            .iter()
            .filter(|(_, s)| s.is_open() && s.license.is_none())
            .map(|(a, _)| a.clone())
            .collect();
        for a in missing {
            self.license_issue(&a);
        }
    }

    /// Closes every license deadline at or before `now`, in time order:
    /// expiry and release after silence, each decided once at its instant.
    pub(super) fn license_due(&mut self, now: DateTime<Utc>) {
        if self.state.license.due.first().is_none_or(|(t, _)| *t > now) {
            return;
        }
        // Polls not yet written count as heard-from.
        self.license_flush(true);
        let days = release_after_days();
        while let Some((t, account)) = self.state.license.due.first().cloned() {
            if t > now {
                break;
            }
            self.state.license.set_due(&account, None);
            let cmd = Command::License(LicenseCommand::Tick {
                release_after_days: days,
            });
            if let Err(e) = self.decide_and_stage(&account, cmd, &Context::at(t)) {
                tracing::error!(account, error = %e, "license deadline failed");
            }
        }
    }

    /// Writes the polls recorded since the last write of each activation,
    /// at most one per activation per minute; every one when `all`
    /// (shutdown, or before a deadline).
    pub(super) fn license_flush(&mut self, all: bool) {
        let due: Vec<(String, String, DateTime<Utc>)> = {
            let mut pending = self.shared.license.pending.lock();
            if pending.is_empty() {
                return;
            }
            let written = &self.state.license.written;
            let ready: Vec<String> = pending
                .keys()
                .filter(|a| all || written.get(*a).is_none_or(|w| w.elapsed() >= SYNC_COALESCE))
                .cloned()
                .collect();
            ready
                .into_iter()
                .filter_map(|a| pending.remove(&a).map(|(acc, t)| (a, acc, t)))
                .collect()
        };
        for (activation_id, account, at) in due {
            self.state
                .license
                .written
                .insert(activation_id.clone(), Instant::now());
            let cmd = Command::License(LicenseCommand::Sync { activation_id, at });
            let now = self.shared.clock.now();
            // A poll of an activation released meanwhile records nothing.
            let _ = self.decide_and_stage(&account, cmd, &Context::at(now));
        }
    }
}

/// HMAC-SHA-256 (RFC 2104), for server tokens.
fn hmac(key: &[u8; 32], msg: &[u8]) -> [u8; 32] {
    crate::hmac::hmac_sha256(key, msg)
}

fn money(d: Decimal) -> String {
    let mut x = d.round_dp(2);
    x.rescale(2);
    x.to_string()
}

impl Ledger {
    /// Runs a license command; answers once its events are durable.
    pub async fn license(
        &self,
        target: LicenseTarget,
        command: LicenseCommand,
    ) -> Result<LicenseOutcome, LedgerError> {
        self.call(|reply| crate::Job::License {
            target,
            command,
            reply,
        })
        .await
    }

    pub fn license_blocking(
        &self,
        target: LicenseTarget,
        command: LicenseCommand,
    ) -> Result<LicenseOutcome, LedgerError> {
        self.call_blocking(|reply| crate::Job::License {
            target,
            command,
            reply,
        })
    }

    /// Signs with the keys of this file (created 0600 if absent).
    pub fn use_signing_keys(&self, path: &std::path::Path) -> Result<(), KeyError> {
        let ring = KeyRing::load_or_create(path)?;
        *self.shared.license.keys.write() = Arc::new(ring);
        Ok(())
    }

    /// The key ring, reloaded at most once a second if its file changed
    /// (`accrue keys rotate` while serving).
    fn keys(&self) -> Arc<KeyRing> {
        let hot = &self.shared.license;
        let ring = hot.keys.read().clone();
        let mut checked = hot.keys_checked.lock();
        if checked.elapsed() >= StdDuration::from_secs(1) {
            *checked = Instant::now();
            if let Some(path) = ring.changed_on_disk() {
                match KeyRing::load_or_create(path) {
                    Ok(new) => {
                        let new = Arc::new(new);
                        *hot.keys.write() = new.clone();
                        return new;
                    }
                    Err(e) => tracing::error!(error = %e, "reloading the signing keys failed"),
                }
            }
        }
        ring
    }

    /// The public keys (`/.well-known/jwks.json`).
    pub fn jwks(&self) -> Jwks {
        self.keys().jwks(Utc::now())
    }

    /// The claims of an account's definition, for an activation (which
    /// must be active) or none (the offline license key).
    pub fn license_claims(&self, account_id: &str, activation_id: Option<&str>) -> Option<Claims> {
        let read = self.read();
        let st = read.accounts.get(account_id)?;
        let info = st.info.as_ref()?;
        let l = st.license.as_deref()?;
        let activation = match activation_id {
            Some(id) => Some(l.active().find(|a| a.id == id)?),
            None => None,
        };
        let plan = st.plan()?;
        let iat = self.now().timestamp();
        Some(Claims {
            iss: ISSUER.into(),
            sub: info.serial_number.clone(),
            account_id: account_id.to_string(),
            activation_id: activation.map(|a| a.id.clone()),
            server_id: activation.map(|a| a.server_id.clone()),
            status: if st.suspended() {
                "suspended".into()
            } else {
                l.status().into()
            },
            term_end: l.term_end.map(|d| d.to_string()),
            seats: Seats {
                full: plan.full_seats,
                viewer: plan.viewer_seats,
            },
            data_management: plan.data_management,
            credits: Credits {
                base: money(st.base),
                additional_limit: money(st.limit),
            },
            billing_frequency: info.billing_frequency.as_str().into(),
            version: l.definition_version,
            iat,
            exp: iat + DEFINITION_TTL_SECS,
        })
    }

    /// The signed definition.
    pub fn sign_definition(&self, claims: &Claims) -> String {
        self.keys().sign(claims)
    }

    /// The definition's version, from memory (the 304 path).
    pub fn license_version(&self, account_id: &str, activation_id: &str) -> Option<u64> {
        let read = self.read();
        let l = read.accounts.get(account_id)?.license.as_deref()?;
        let active = l.active().any(|a| a.id == activation_id);
        active.then_some(l.definition_version)
    }

    /// Reads an account's license state under the read lock.
    pub fn with_license<T>(
        &self,
        account_id: &str,
        f: impl FnOnce(&AccountState, &LicenseState) -> T,
    ) -> Option<T> {
        let read = self.read();
        let st = read.accounts.get(account_id)?;
        let l = st.license.as_deref()?;
        let out = f(st, l);
        Some(out)
    }

    /// Records a poll; written durably by the writer, coalesced.
    pub fn record_poll(&self, account_id: &str, activation_id: &str) {
        let now = self.now();
        let mut p = self.shared.license.pending.lock();
        match p.get_mut(activation_id) {
            Some(e) => e.1 = now,
            None => {
                p.insert(activation_id.to_string(), (account_id.to_string(), now));
            }
        }
    }

    /// The latest poll of an activation not yet written, if any.
    pub fn pending_sync(&self, activation_id: &str) -> Option<DateTime<Utc>> {
        self.shared
            .license
            .pending
            .lock()
            .get(activation_id)
            .map(|e| e.1)
    }

    /// The signing secret of an outgoing webhook endpoint, derived from the
    /// server secret (so none is stored in the log). In a cluster, from the
    /// home partition's (see [`Ledger::share_webhook_secrets`]): `None`
    /// while that cannot be read yet.
    pub fn webhook_secret(&self, endpoint_id: &str) -> Option<String> {
        let key = self.webhook_key()?;
        let msg = format!("webhook-endpoint.{endpoint_id}");
        Some(format!("whsec_{}", hex::encode(hmac(&key, msg.as_bytes()))))
    }

    /// A partition of a cluster other than the home one: its webhooks are
    /// signed with the home partition's secret, so an endpoint registered
    /// in every partition has one secret.
    pub fn share_webhook_secrets(&self, home: Arc<dyn EventStore>) {
        *self.shared.license.webhook_home.lock() = Some(home);
    }

    fn webhook_key(&self) -> Option<[u8; 32]> {
        let hot = &self.shared.license;
        let Some(home) = hot.webhook_home.lock().clone() else {
            return Some(hot.token_secret);
        };
        if let Some(key) = *hot.webhook_key.lock() {
            return Some(key);
        }
        // Read without holding the lock (a query to home's store); until
        // home has a secret there is none, and deliveries wait.
        let key = match home.meta_get(TOKEN_SECRET_META) {
            Ok(v) => v.as_deref().and_then(parse_secret),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the home partition's secret");
                None
            }
        };
        if key.is_some() {
            *hot.webhook_key.lock() = key;
        }
        key
    }

    /// The bearer token of an activation: derived (HMAC), so the same
    /// activation always gets the same token and nothing secret is stored
    /// in the log.
    pub fn server_token(&self, account_id: &str, activation_id: &str) -> String {
        let msg = format!("{account_id}.{activation_id}");
        let mac = hmac(&self.shared.license.token_secret, msg.as_bytes());
        format!("acs.{msg}.{}", hex::encode(mac))
    }

    /// (account, activation) of a server token whose activation is active.
    pub fn server_of_token(&self, token: &str) -> Option<(String, String)> {
        let rest = token.strip_prefix("acs.")?;
        let mut parts = rest.split('.');
        let (account, activation, _) = (parts.next()?, parts.next()?, parts.next()?);
        let expected = self.server_token(account, activation);
        let ok = expected.len() == token.len()
            && expected
                .bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !ok {
            return None;
        }
        self.license_version(account, activation)?;
        Some((account.to_string(), activation.to_string()))
    }

    /// True when this serial number failed too often in the last minute.
    pub fn activation_throttled(&self, serial: &str) -> bool {
        let mut f = self.shared.license.failures.lock();
        match f.get_mut(serial) {
            Some(v) => {
                v.retain(|t| t.elapsed() < StdDuration::from_secs(60));
                v.len() >= MAX_FAILURES_PER_MINUTE
            }
            None => false,
        }
    }

    /// Counts a failed activation of a serial number.
    pub fn activation_failed(&self, serial: &str) {
        let mut f = self.shared.license.failures.lock();
        if f.len() >= MAX_FAILING_SERIALS {
            f.retain(|_, v| v.iter().any(|t| t.elapsed() < StdDuration::from_secs(60)));
        }
        if f.len() < MAX_FAILING_SERIALS || f.contains_key(serial) {
            f.entry(serial.to_string())
                .or_default()
                .push(Instant::now());
        }
    }
}

#[cfg(test)]
mod control_number_tests {
    use super::*;

    #[test]
    fn control_numbers_never_hold_thirteen_digits_in_a_row() {
        assert_eq!(longest_digit_run("12345-67890-123AB-CDEFG"), 13);
        assert_eq!(longest_digit_run("1234A-56789-0ABCD-EFGHJ"), 6);
        assert_eq!(longest_digit_run("ABCDE"), 0);
        for _ in 0..20_000 {
            let c = control_number();
            assert!(longest_digit_run(&c) < 13, "{c}");
            assert_eq!(c.len(), 23, "{c}");
        }
    }
}
