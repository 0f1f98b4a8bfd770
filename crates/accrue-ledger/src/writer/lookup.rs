//! Usage lookups: the stored events an idempotency hit or a usage
//! cancellation is confirmed against, read before anything is decided.

use super::*;

impl Writer {
    /// Reads from the store every committed usage event that a lookup of
    /// this batch's keys will confirm against (fingerprint matches).
    pub(super) fn prefetch_usage(&mut self, items: &[UsageItem]) -> Result<(), StoreError> {
        for item in items {
            if let UsageItem::Valid {
                account_id, input, ..
            } = item
            {
                self.prefetch_key(account_id, &input.usage_id)?;
            }
        }
        Ok(())
    }

    /// Reads the committed events a lookup of (account, id) will confirm
    /// against into `prefetched`.
    pub(crate) fn prefetch_key(&mut self, account: &str, usage_id: &str) -> Result<(), StoreError> {
        let hash = idempotency::key(account, usage_id);
        // Spilled keys' candidates first (a store read only when a filter
        // says "maybe"): an error here refuses the batch, never guesses.
        self.state.idem.fetch(hash)?;
        let mut slots = self.state.idem.by_hash(hash);
        if slots.is_empty() {
            return Ok(());
        }
        slots.extend(self.state.idem.exact(account, usage_id));
        for slot in slots {
            let Slot::Committed(pos) = slot else {
                continue;
            };
            let in_flight = self.inflight.as_ref().is_some_and(|g| g.at(pos).is_some());
            if in_flight || self.prefetched.contains_key(&pos) {
                continue;
            }
            let found = match self.shared.store.read_at(pos)? {
                None => None,
                Some(rec) => {
                    let e = LedgerEvent::decode(&rec.type_name, rec.schema, &rec.payload).map_err(
                        |e| StoreError::Corrupt(format!("event at position {pos}: {e}")),
                    )?;
                    Some((rec.stream, e))
                }
            };
            self.prefetched.insert(pos, found);
        }
        Ok(())
    }

    /// The usage event already recorded under (account, id), if any, and
    /// whether the key's hash is taken by another key.
    pub(super) fn find_usage(
        &self,
        account: &str,
        usage_id: &str,
        hash: u64,
    ) -> (Option<CreditsConsumed>, bool) {
        // Only a recent key with the same 64-bit hash makes a new key go to
        // the exact table (fingerprint matches in runs do not: a run keeps
        // any number of keys under one fingerprint).
        let taken = self.state.idem.recent_holds(hash);
        let slots = self.state.idem.by_hash(hash);
        if slots.is_empty() {
            return (None, taken);
        }
        for slot in slots {
            if let Some(c) = self.load_usage(account, slot) {
                if c.usage_id == usage_id {
                    return (Some(c), true);
                }
            }
        }
        // Another key owns this hash or fingerprint: the exact table.
        let found = self
            .state
            .idem
            .exact(account, usage_id)
            .and_then(|s| self.load_usage(account, s));
        (found, taken)
    }

    pub(super) fn load_usage(&self, account: &str, slot: Slot) -> Option<CreditsConsumed> {
        let (stream, event) = match slot {
            Slot::Pending { stream, event } => {
                let s = stream as usize;
                (
                    self.group.appends.get(s)?.stream.clone(),
                    self.group.decoded.get(s)?.get(event as usize)?.clone(),
                )
            }
            Slot::Committed(pos) if self.inflight.as_ref().is_some_and(|g| g.at(pos).is_some()) => {
                let g = self.inflight.as_ref()?;
                let (stream, e) = g.at(pos)?;
                (stream.to_string(), e.clone())
            }
            Slot::Committed(pos) => match self.prefetched.get(&pos) {
                Some(found) => found.clone()?,
                None => {
                    // Not prefetched: cannot happen (no slot becomes
                    // committed within one job). Never guess "not found".
                    let found = self.shared.store.read_at(pos).map_err(|e| e.to_string());
                    let rec = match found {
                        Ok(r) => r?,
                        Err(e) => {
                            self.shared
                                .health
                                .fail(&format!("usage lookup failed: {e}"));
                            return None;
                        }
                    };
                    let e = LedgerEvent::decode(&rec.type_name, rec.schema, &rec.payload).ok()?;
                    (rec.stream, e)
                }
            },
        };
        match event {
            LedgerEvent::Account(AccountEvent::CreditsConsumed(c))
                if account_of(&stream) == Some(account) =>
            {
                Some(c)
            }
            _ => None,
        }
    }
}
