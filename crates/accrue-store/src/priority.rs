//! Thread priorities: bulk work yields to queries (see
//! `accrue_ledger::priority` for the reasoning).

/// Lowers the calling thread's scheduling priority (Linux: nice 19;
/// elsewhere nothing). Failing to do so only costs latency, so errors are
/// ignored.
pub fn lower_current_thread() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain syscalls on the calling thread's own id.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19);
    }
}
