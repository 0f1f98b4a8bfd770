//! Thread priorities: bulk work yields to queries (see
//! `accrue_ledger::priority` for the reasoning).

/// Lowers the calling thread's scheduling priority (Linux: nice 19;
/// elsewhere nothing). Failing to do so only costs latency, so errors are
/// ignored.
// Unsafe: libc's setpriority on this thread (no safe wrapper in std).
#[allow(unsafe_code)]
pub fn lower_current_thread() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain syscalls on the calling thread's own id.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19);
    }
}

/// The CPUs this process may run on (Linux; elsewhere or on error, none).
// Unsafe: sched_getaffinity and the cpu_set_t macros (no wrapper in std).
#[allow(unsafe_code)]
pub fn allowed_cpus() -> Vec<usize> {
    #[cfg(target_os = "linux")]
    // SAFETY: a zeroed cpu_set_t is valid; the syscall fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            return (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &set))
                .collect();
        }
    }
    Vec::new()
}

/// Restricts the calling thread to `cpus` (Linux; elsewhere nothing; an
/// empty list or an error leaves it as it is).
// Unsafe: sched_setaffinity and the cpu_set_t macros (no wrapper in std).
#[allow(unsafe_code)]
pub fn pin_current_thread(cpus: &[usize]) {
    if cpus.is_empty() {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET indexes below CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_thread_runs_only_where_it_was_put() {
        let all = allowed_cpus();
        assert!(!all.is_empty(), "this process may run somewhere");
        let first = all[0];
        let seen = std::thread::spawn(move || {
            pin_current_thread(&[first]);
            allowed_cpus()
        })
        .join()
        .expect("thread");
        assert_eq!(seen, vec![first]);
        // Pinning a thread leaves the others (here, this one) as they were.
        assert_eq!(allowed_cpus(), all);
    }
}
