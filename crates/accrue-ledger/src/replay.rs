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
