//! What the ledger's busy threads do once they fall idle.
//!
//! A burst of ingest frees a lot of memory (request batches, staged groups,
//! merged idempotency runs) on the writer, committer and parsing threads.
//! An allocator that returns freed pages lazily, on that thread's next
//! allocations, keeps them resident while the thread waits. The binary sets
//! a hook (with mimalloc: collect this thread's heap) that each of these
//! threads calls once when it has had nothing to do for [`IDLE_AFTER`].

use std::sync::OnceLock;
use std::time::Duration;

/// How long a thread waits without work before it calls the hook.
pub const IDLE_AFTER: Duration = Duration::from_millis(500);

static HOOK: OnceLock<fn()> = OnceLock::new();

/// Sets the hook (once per process; later calls are ignored).
pub fn set_idle_hook(hook: fn()) {
    let _ = HOOK.set(hook);
}

/// Calls the hook, if any, on the current thread.
pub fn idle() {
    if let Some(hook) = HOOK.get() {
        hook();
    }
}
