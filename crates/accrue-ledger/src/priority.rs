//! Queries before bulk work. On two saturated cores, a balance query that
//! wakes up behind the ingest threads waits for the scheduler's time slices;
//! the threads that do bulk ingest work (body parsing, the writer, PDFs and
//! mail) therefore run at a lower scheduling priority (nice 19) than the
//! threads that answer queries. The total work done is unchanged (the
//! scheduler is work-conserving); only who goes first when both are runnable.
//! The committer stays at normal priority and gets a CPU of its own instead
//! (see `placement`).

pub use accrue_store::priority::lower_current_thread;
use accrue_store::priority::{allowed_cpus, pin_current_thread};

/// Core placement, on machines with at least two CPUs. Priorities alone do
/// not keep a query from waiting: the committer runs at normal priority
/// (it holds the read models' write lock while applying and must not be
/// preempted there), and a query's thread woken on the committer's CPU
/// waits out the committer's time slice (measured: overview p99 2.3–2.8 ms
/// during HTTP ingest). So the committer runs on the last CPU and the
/// threads that answer queries on the others; bulk threads (nice 19) stay
/// free to run anywhere. `ACCRUE_NO_PIN=1` turns this off.
fn placement() -> Option<(Vec<usize>, Vec<usize>)> {
    static PLACEMENT: std::sync::OnceLock<Option<(Vec<usize>, Vec<usize>)>> =
        std::sync::OnceLock::new();
    PLACEMENT
        .get_or_init(|| {
            if std::env::var_os("ACCRUE_NO_PIN").is_some() {
                return None;
            }
            let mut cpus = allowed_cpus();
            let last = cpus.pop()?;
            (!cpus.is_empty()).then(|| (vec![last], cpus))
        })
        .clone()
}

/// Puts the calling thread (the committer) on its own CPU, if placed.
pub fn pin_committer() {
    if let Some((committer, _)) = placement() {
        pin_current_thread(&committer);
    }
}

/// Keeps the calling thread (one that answers queries) off the
/// committer's CPU, if placed. For `on_thread_start` of a server runtime.
pub fn pin_serving() {
    if let Some((_, serving)) = placement() {
        pin_current_thread(&serving);
    }
}

/// A small pool of low-priority threads for bulk CPU work that would
/// otherwise run on the async runtime's threads (parsing a batch of 10,000
/// usage events takes milliseconds).
pub struct BulkPool {
    jobs: crossbeam_channel::Sender<Box<dyn FnOnce() + Send>>,
}

impl BulkPool {
    pub fn new(threads: usize) -> BulkPool {
        let (tx, rx) = crossbeam_channel::unbounded::<Box<dyn FnOnce() + Send>>();
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let _ = std::thread::Builder::new()
                .name(format!("accrue-bulk-{i}"))
                .spawn(move || {
                    lower_current_thread();
                    let mut idle = false;
                    loop {
                        match rx.recv_timeout(crate::idle::IDLE_AFTER) {
                            Ok(job) => {
                                idle = false;
                                job();
                            }
                            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                                if !std::mem::replace(&mut idle, true) {
                                    crate::idle::idle();
                                }
                            }
                            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                        }
                    }
                });
        }
        BulkPool { jobs: tx }
    }

    /// The process-wide pool, one thread per core.
    pub fn global() -> &'static BulkPool {
        static POOL: std::sync::OnceLock<BulkPool> = std::sync::OnceLock::new();
        POOL.get_or_init(|| {
            BulkPool::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
        })
    }

    /// Runs `f` on the pool; `None` if the pool's threads are gone (or `f`
    /// panicked), which callers answer as an internal error.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .ok()?;
        rx.await.ok()
    }
}
