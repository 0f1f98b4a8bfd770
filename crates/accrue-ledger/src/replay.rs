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

/// One decoded event with the envelope fields the folds need.
pub struct Decoded {
    pub position: u64,
    pub stream: String,
    pub recorded_at: chrono::DateTime<chrono::Utc>,
    pub event: LedgerEvent,
}

/// Reads and decodes the log after `after` on a second thread while `fold`
/// consumes it on this one: reading and JSON decoding overlap with applying,
/// which is what lets a rebuild use both cores.
pub fn for_each_decoded(
    store: &dyn EventStore,
    after: u64,
    mut fold: impl FnMut(Vec<Decoded>),
) -> Result<(), LedgerError> {
    const PAGE: usize = 5_000;
    type Page = Result<(Vec<Decoded>, Vec<accrue_store::RecordedEvent>), LedgerError>;
    // The share of each page (per mille) the reading thread decodes itself;
    // the applying thread decodes the rest. It moves towards whichever side
    // waits: a full channel means the reader is ahead (decode more there),
    // an empty one means the applier is starved (decode more here).
    let share = std::sync::atomic::AtomicUsize::new(250);
    let share = &share;
    let adjust = |up: bool| {
        use std::sync::atomic::Ordering::Relaxed;
        let _ = share.fetch_update(Relaxed, Relaxed, |v| {
            Some(if up {
                (v + 25).min(900)
            } else {
                v.saturating_sub(25).max(50)
            })
        });
    };
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Page>(4);
        s.spawn(move || {
            let mut after = after;
            loop {
                let mut page = match store.read_all(after, PAGE) {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(e.into()));
                        return;
                    }
                };
                let Some(last) = page.last() else { return };
                after = last.position;
                let mine = page.len() * share.load(std::sync::atomic::Ordering::Relaxed) / 1000;
                let rest = page.split_off(mine);
                let head = match decode_all(page) {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                match tx.try_send(Ok((head, rest))) {
                    Ok(()) => {}
                    Err(std::sync::mpsc::TrySendError::Full(p)) => {
                        adjust(true);
                        if tx.send(p).is_err() {
                            return;
                        }
                    }
                    Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return,
                }
            }
        });
        loop {
            let page = match rx.try_recv() {
                Ok(p) => p,
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    adjust(false);
                    match rx.recv() {
                        Ok(p) => p,
                        Err(_) => break,
                    }
                }
                Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
            };
            let (mut decoded, rest) = page?;
            decoded.extend(decode_all(rest)?);
            fold(decoded);
        }
        Ok(())
    })
}

fn decode_all(records: Vec<accrue_store::RecordedEvent>) -> Result<Vec<Decoded>, LedgerError> {
    records
        .into_iter()
        .map(|rec| {
            let event =
                LedgerEvent::decode(&rec.type_name, rec.schema, &rec.payload).map_err(|e| {
                    LedgerError::Corrupt(format!("event at position {}: {e}", rec.position))
                })?;
            Ok(Decoded {
                position: rec.position,
                stream: rec.stream,
                recorded_at: rec.recorded_at,
                event,
            })
        })
        .collect()
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
    for_each_decoded(store, models.position, |page| {
        for d in &page {
            models.apply(d.position, &d.stream, d.recorded_at, &d.event);
        }
        events += page.len() as u64;
        progress(models.position, head);
    })?;
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
            if let LedgerEvent::Account(e) =
                LedgerEvent::decode(&rec.type_name, rec.schema, &rec.payload).map_err(|e| {
                    LedgerError::Corrupt(format!("event at position {}: {e}", rec.position))
                })?
            {
                state.apply(&e);
            }
        }
    }
    Ok(state)
}
