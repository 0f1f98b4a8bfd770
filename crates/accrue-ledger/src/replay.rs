//! Rebuilding read models from position 0 (no side effects run).

use std::time::Instant;

use accrue_core::events::LedgerEvent;
use accrue_projections::ReadModels;
use accrue_store::EventStore;

use crate::LedgerError;

#[derive(Debug, Clone, Copy)]
pub struct ReplayStats {
    pub events: u64,
    pub seconds: f64,
}

/// Replays every event after `models.position` into `models`, calling
/// `progress(position, head)` after each page.
pub fn replay_into(
    store: &dyn EventStore,
    models: &mut ReadModels,
    mut progress: impl FnMut(u64, u64),
) -> Result<ReplayStats, LedgerError> {
    let started = Instant::now();
    let head = store.head_position()?;
    let mut events = 0u64;
    loop {
        let page = store.read_all(models.position, 10_000)?;
        if page.is_empty() {
            break;
        }
        for rec in &page {
            let e = LedgerEvent::decode(&rec.type_name, rec.schema, &rec.payload)
                .map_err(|e| LedgerError::Corrupt(format!("event at position {}: {e}", rec.position)))?;
            models.apply(rec.position, &rec.stream, rec.recorded_at, &e);
            events += 1;
        }
        progress(models.position, head);
    }
    Ok(ReplayStats {
        events,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// An account's state as the ledger knew it at `as_of`: every event of its
/// stream recorded at or before that instant (bitemporal: what was known,
/// not only what had happened).
pub fn account_as_of(
    store: &dyn EventStore,
    account_id: &str,
    as_of: chrono::DateTime<chrono::Utc>,
) -> Result<accrue_core::AccountState, LedgerError> {
    let stream = format!("account-{account_id}");
    let mut state = accrue_core::AccountState::default();
    let mut after = 0;
    'pages: loop {
        let page = store.read_stream(&stream, after, 10_000)?;
        if page.is_empty() {
            break;
        }
        for rec in &page {
            if rec.recorded_at > as_of {
                break 'pages;
            }
            after = rec.version;
            if let LedgerEvent::Account(e) = LedgerEvent::decode(&rec.type_name, rec.schema, &rec.payload)
                .map_err(|e| LedgerError::Corrupt(format!("event at position {}: {e}", rec.position)))?
            {
                state.apply(&e);
            }
        }
    }
    Ok(state)
}
