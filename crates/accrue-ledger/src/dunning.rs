//! Dunning and corrections inside the writer (SPEC §8, §9): the policy in
//! force, suspension deadlines closed by the clock exactly once like
//! periods, and the usage lookup a cancellation needs. A child module of
//! `writer`, so the hooks in writer/ stay one line each.

use std::collections::{BTreeSet, HashMap};

use accrue_core::correction::{DunningPolicy, DEFAULT_DUNNING};
use accrue_core::{AccountEvent, AccountState, Command, Context};
use accrue_store::StoreError;
use chrono::{DateTime, Utc};
use parking_lot::RwLock;

use super::Writer;
use crate::idempotency;
use crate::LedgerError;

static POLICY: RwLock<DunningPolicy> = RwLock::new(DEFAULT_DUNNING);

/// Sets the dunning policy (`serve --dunning 1,3,7 --grace-days 14`) for
/// decisions from now on. Retry days must be ascending.
pub fn set_dunning_policy(retry_days: Vec<u32>, grace_days: u32) {
    let days: &'static [u32] = Box::leak(retry_days.into_boxed_slice());
    *POLICY.write() = DunningPolicy {
        retry_days: days,
        grace_days,
    };
}

pub fn dunning_policy() -> DunningPolicy {
    *POLICY.read()
}

static LEGAL: RwLock<Option<&'static accrue_core::tax::Legal>> = RwLock::new(None);

/// Sets the issuer and the tax-rate table (SPEC §14, `accrue.toml` /
/// `ACCRUE_ISSUER_*`) for decisions from now on. Set once when `serve`
/// starts; leaked, so every context holds a plain reference.
pub fn set_legal(legal: accrue_core::tax::Legal) {
    *LEGAL.write() = Some(Box::leak(Box::new(legal)));
}

/// The legal configuration in force, if any.
pub fn legal() -> Option<&'static accrue_core::tax::Legal> {
    *LEGAL.read()
}

/// The decision context at `now` with the policy in force.
pub(crate) fn context(now: DateTime<Utc>) -> Context {
    Context {
        now,
        dunning: dunning_policy(),
        legal: legal(),
    }
}

/// The writer's suspension deadlines.
#[derive(Default)]
pub(crate) struct Index {
    /// (suspension date, account) of accounts in dunning, not suspended.
    pub(crate) due: BTreeSet<(DateTime<Utc>, String)>,
    due_of: HashMap<String, DateTime<Utc>>,
}

impl Index {
    /// Follows an applied event (live or replayed).
    pub(crate) fn track(&mut self, account: &str, e: &AccountEvent, st: &AccountState) {
        let relevant = matches!(
            e,
            AccountEvent::DunningStarted(_)
                | AccountEvent::LicenseSuspended(_)
                | AccountEvent::LicenseReinstated(_)
                | AccountEvent::PaymentSucceeded(_)
                | AccountEvent::CreditNoteIssued(_)
                | AccountEvent::InvoiceVoided(_)
        );
        if !relevant {
            return;
        }
        let next = st.next_suspension();
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

    /// Indexes an account loaded from a snapshot as its replay would have.
    pub(crate) fn rebuild(&mut self, account: &str, st: &AccountState) {
        if let Some(t) = st.next_suspension() {
            self.due.insert((t, account.to_string()));
            self.due_of.insert(account.to_string(), t);
        }
    }

    fn clear(&mut self, account: &str) {
        if let Some(old) = self.due_of.remove(account) {
            self.due.remove(&(old, account.to_string()));
        }
    }
}

impl Writer {
    /// Suspends every account whose suspension date is at or before `now`
    /// and whose invoice is still unpaid, each at its own date.
    pub(super) fn dunning_due(&mut self, now: DateTime<Utc>) {
        while let Some((t, account)) = self.state.dunning.due.first().cloned() {
            if t > now {
                break;
            }
            self.state.dunning.clear(&account);
            if let Err(e) = self.decide_and_stage(&account, Command::SuspendDue, &context(t)) {
                tracing::error!(account, error = %e, "suspension failed");
            }
        }
    }

    /// Completes a command with what only the writer knows: the usage
    /// event a cancellation names. A store error answers 503 with nothing
    /// decided, never "unknown".
    pub(super) fn resolve(
        &mut self,
        account: &str,
        command: Command,
    ) -> Result<Command, LedgerError> {
        let Command::CancelUsage {
            usage_id,
            reason,
            found: None,
        } = command
        else {
            return Ok(command);
        };
        let found = self
            .lookup_usage(account, &usage_id)
            .map_err(|e| LedgerError::Unavailable(e.to_string()));
        self.prefetched.clear();
        Ok(Command::CancelUsage {
            found: found?,
            usage_id,
            reason,
        })
    }

    fn lookup_usage(
        &mut self,
        account: &str,
        usage_id: &str,
    ) -> Result<Option<accrue_core::events::CreditsConsumed>, StoreError> {
        self.prefetch_key(account, usage_id)?;
        let hash = idempotency::key(account, usage_id);
        Ok(self.find_usage(account, usage_id, hash).0)
    }
}
