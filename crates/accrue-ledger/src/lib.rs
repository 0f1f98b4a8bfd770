//! accrue-ledger: the application service between the wire and the store.
//!
//! **One writer.** Every decision that changes the ledger is taken on one
//! thread ([`writer`]) that owns the decision state of every account in
//! memory. Decisions are therefore serialised per account (and globally), so
//! no interleaving of concurrent requests can overdraw a limit or skip an
//! invoice number, and a decision never reloads a stream. The writer drains
//! whatever requests are waiting into one *group* and decides them in
//! arrival order; a second thread, the committer, appends the group's events
//! in one durable transaction (group commit), applies them to the read
//! models, and only then answers: a 200 means the events are on disk. The
//! writer decides the next group while the committer writes this one.

pub mod audit;
pub mod clock;
pub mod hmac;
pub mod idempotency;
pub mod idle;
pub mod keys;
pub mod metrics;
pub mod priority;
pub mod projectors;
mod replay;
pub mod snapshot;
pub mod webhooks;
mod writer;

use std::sync::Arc;
use std::thread::JoinHandle;

use accrue_core::{AccountEvent, Command, DomainError, LedgerEvent, UsageInput};
use accrue_projections::ReadModels;
use accrue_store::{EventStore, StoreError};
use chrono::{DateTime, Utc};
use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use tokio::sync::oneshot;

pub use clock::{Clock, ClockMode};
pub use metrics::Metrics;
pub use replay::{account_as_of, for_each_decoded, replay_into, Decoded, ReplayStats};
pub use writer::dunning::{dunning_policy, legal, set_dunning_policy, set_legal};
pub use writer::license::{
    release_after_days, set_release_after_days, LicenseOutcome, LicenseTarget, ISSUER,
    MAX_FAILURES_PER_MINUTE,
};
pub use writer::state::NUMBER_TAG_META;

/// Requests waiting for the writer at most; beyond, 503 with Retry-After.
pub const JOB_QUEUE: usize = 1024;

/// Most events accepted in one ingest request.
pub const MAX_BATCH_EVENTS: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the clock is not a manual clock")]
    NotManualClock,
    #[error("the clock only moves forward: it is at {current}, asked for {requested}")]
    ClockBackwards {
        current: DateTime<Utc>,
        requested: DateTime<Utc>,
    },
    #[error("the ledger has stopped")]
    Stopped,
    /// The writer stopped after a fault (fail-stop): nothing more is taken
    /// until a restart rebuilds it from the log.
    #[error("the ledger stopped taking writes after a fault: {0}")]
    Failed(String),
    /// The writer's queue is full: try again shortly.
    #[error("the ledger is busy; retry shortly")]
    Overloaded,
    /// A store read the decision needed failed; nothing was decided.
    #[error("the store could not be read; nothing was recorded: {0}")]
    Unavailable(String),
    #[error("corrupt ledger: {0}")]
    Corrupt(String),
}

/// One usage event of a batch, parsed at the edge.
#[derive(Debug, Clone)]
pub enum UsageItem {
    Valid {
        account_id: String,
        /// `occurred_at` is `None` when the producer left it out (→ now).
        input: UsageInput,
        occurred_at_given: bool,
    },
    Invalid {
        detail: String,
    },
}

/// What happened to one usage event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsageOutcome {
    Accepted,
    Duplicate,
    Rejected {
        reason: &'static str,
        detail: String,
    },
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, LedgerError>>;

pub(crate) enum Job {
    Usage {
        items: Vec<UsageItem>,
        reply: oneshot::Sender<Result<Vec<UsageOutcome>, LedgerError>>,
    },
    Command {
        account_id: String,
        command: Command,
        reply: oneshot::Sender<Result<Vec<AccountEvent>, LedgerError>>,
    },
    /// A command addressed by invoice number (payments, voids).
    InvoiceCommand {
        number: String,
        command: Command,
        reply: oneshot::Sender<Result<Vec<AccountEvent>, LedgerError>>,
    },
    AdvanceClock {
        now: DateTime<Utc>,
        reply: oneshot::Sender<Result<DateTime<Utc>, LedgerError>>,
    },
    /// A ledger-wide fact outside account streams (issued tokens).
    Record {
        stream: &'static str,
        event: LedgerEvent,
        reply: oneshot::Sender<Result<Vec<AccountEvent>, LedgerError>>,
    },
    License {
        target: writer::license::LicenseTarget,
        command: accrue_core::license::LicenseCommand,
        reply: oneshot::Sender<Result<writer::license::LicenseOutcome, LedgerError>>,
    },
    Stop,
}

pub(crate) struct Shared {
    pub store: Arc<dyn EventStore>,
    pub read: RwLock<ReadModels>,
    pub clock: Clock,
    pub metrics: Metrics,
    pub health: Health,
    /// Signs audit anchors (`serve` loads it from the data folder).
    pub anchor_key: RwLock<Option<Arc<audit::AnchorKey>>>,
    pub license: writer::license::Hot,
}

/// Whether the writer still takes writes. Set once, never cleared: after a
/// commit error, a misplaced commit or a panic in the writer or committer
/// the ledger stops (fail-stop) and only a restart, which replays the log,
/// brings it back. It never heals in place on state that may not be stored.
#[derive(Default)]
pub struct Health {
    failed: std::sync::atomic::AtomicBool,
    stopped: std::sync::atomic::AtomicBool,
    reason: Mutex<Option<String>>,
    notify: tokio::sync::Notify,
}

impl Health {
    /// Records the fault (the first one wins) and wakes whoever waits.
    pub(crate) fn fail(&self, reason: &str) {
        let mut r = self.reason.lock();
        if r.is_none() {
            tracing::error!(reason, "the ledger stops taking writes (fail-stop)");
            *r = Some(reason.to_string());
        }
        self.failed.store(true, std::sync::atomic::Ordering::SeqCst);
        drop(r);
        self.notify.notify_waiters();
    }

    /// The writer stopped cleanly: new requests are refused at once.
    pub(crate) fn stopping(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn failed(&self) -> Option<String> {
        if self.failed.load(std::sync::atomic::Ordering::SeqCst) {
            Some(self.reason.lock().clone().unwrap_or_default())
        } else {
            None
        }
    }
}

/// A handle to the ledger; cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    shared: Arc<Shared>,
    jobs: crossbeam_channel::Sender<Job>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Ledger {
    /// Replays the store into the writer state and the read models, finishes
    /// any period close that is due, and starts the writer thread.
    pub fn open(store: Arc<dyn EventStore>, clock: ClockMode) -> Result<Ledger, LedgerError> {
        let (state, read, stored_clock) =
            writer::load_with(store.as_ref(), true, Some(store.clone()))?;
        let clock = Clock::new(clock, stored_clock);
        let license = writer::license::Hot::load(store.as_ref())?;
        let shared = Arc::new(Shared {
            store,
            read: RwLock::new(read),
            clock,
            metrics: Metrics::default(),
            health: Health::default(),
            anchor_key: RwLock::new(None),
            license,
        });
        let (tx, rx) = crossbeam_channel::bounded(JOB_QUEUE);
        let thread = writer::spawn(shared.clone(), state, rx)?;
        Ok(Ledger {
            shared,
            jobs: tx,
            thread: Arc::new(Mutex::new(Some(thread))),
        })
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.shared.store
    }

    /// The whole `InvoiceIssued` of a read-model invoice record (lines and
    /// customer included), read from the log.
    pub fn invoice_issued(
        &self,
        rec: &accrue_projections::InvoiceRecord,
    ) -> Result<accrue_core::events::InvoiceIssued, LedgerError> {
        invoice_issued(self.shared.store.as_ref(), rec)
    }

    /// A credit note with its lines, read from the log.
    pub fn credit_note(
        &self,
        rec: &accrue_projections::read_models::CreditNoteRecord,
    ) -> Result<accrue_core::events::CreditNoteIssued, LedgerError> {
        credit_note_issued(self.shared.store.as_ref(), rec)
    }

    /// The read models, for queries. Hold the guard briefly.
    pub fn read(&self) -> RwLockReadGuard<'_, ReadModels> {
        self.shared.read.read()
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.shared.clock.now()
    }

    pub fn is_manual_clock(&self) -> bool {
        self.shared.clock.is_manual()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The key that signs audit anchors, once set.
    pub fn set_anchor_key(&self, key: Arc<audit::AnchorKey>) {
        *self.shared.anchor_key.write() = Some(key);
    }

    pub fn anchor_key(&self) -> Option<Arc<audit::AnchorKey>> {
        self.shared.anchor_key.read().clone()
    }

    /// `Some(reason)` once the writer has stopped after a fault.
    pub fn failure(&self) -> Option<String> {
        self.shared.health.failed()
    }

    /// Ready: loaded (it is, once `open` returned) and the writer can commit.
    pub fn is_ready(&self) -> bool {
        self.failure().is_none()
    }

    /// Resolves when the writer has stopped after a fault (for `serve`,
    /// which then exits non-zero so a supervisor restarts it).
    pub async fn failed(&self) -> String {
        loop {
            let notified = self.shared.health.notify.notified();
            if let Some(r) = self.failure() {
                return r;
            }
            notified.await;
        }
    }

    fn stopped_error(&self) -> LedgerError {
        if self
            .shared
            .health
            .stopped
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return LedgerError::Stopped;
        }
        match self.failure() {
            Some(r) => LedgerError::Failed(r),
            None => LedgerError::Stopped,
        }
    }

    /// Queues a job whose reply comes back on the returned receiver. Never
    /// blocks: a full queue is `Overloaded` (async handlers must not block
    /// their worker thread).
    fn submit<T>(
        &self,
        job: impl FnOnce(Reply<T>) -> Job,
    ) -> Result<oneshot::Receiver<Result<T, LedgerError>>, LedgerError> {
        if let Some(r) = self.failure() {
            return Err(LedgerError::Failed(r));
        }
        if self
            .shared
            .health
            .stopped
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(LedgerError::Stopped);
        }
        let (reply, rx) = oneshot::channel();
        self.jobs.try_send(job(reply)).map_err(|e| match e {
            crossbeam_channel::TrySendError::Full(_) => LedgerError::Overloaded,
            crossbeam_channel::TrySendError::Disconnected(_) => self.stopped_error(),
        })?;
        Ok(rx)
    }

    async fn call<T>(&self, job: impl FnOnce(Reply<T>) -> Job) -> Result<T, LedgerError> {
        match self.submit(job)?.await {
            Ok(r) => r,
            Err(_) => Err(self.stopped_error()),
        }
    }

    /// For callers outside an async runtime (threads, the CLI, benchmarks):
    /// waits for room in the queue instead of refusing.
    fn call_blocking<T>(&self, job: impl FnOnce(Reply<T>) -> Job) -> Result<T, LedgerError> {
        if let Some(r) = self.failure() {
            return Err(LedgerError::Failed(r));
        }
        if self
            .shared
            .health
            .stopped
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(LedgerError::Stopped);
        }
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(job(reply))
            .map_err(|_| self.stopped_error())?;
        match rx.blocking_recv() {
            Ok(r) => r,
            Err(_) => Err(self.stopped_error()),
        }
    }

    /// Decides a batch of usage events in order; answers once they are durable.
    pub async fn ingest(&self, items: Vec<UsageItem>) -> Result<Vec<UsageOutcome>, LedgerError> {
        self.call(|reply| Job::Usage { items, reply }).await
    }

    pub fn ingest_blocking(&self, items: Vec<UsageItem>) -> Result<Vec<UsageOutcome>, LedgerError> {
        self.call_blocking(|reply| Job::Usage { items, reply })
    }

    /// Runs one command against an account; returns the events it recorded.
    pub async fn execute(
        &self,
        account_id: &str,
        command: Command,
    ) -> Result<Vec<AccountEvent>, LedgerError> {
        self.call(|reply| Job::Command {
            account_id: account_id.to_string(),
            command,
            reply,
        })
        .await
    }

    pub fn execute_blocking(
        &self,
        account_id: &str,
        command: Command,
    ) -> Result<Vec<AccountEvent>, LedgerError> {
        self.call_blocking(|reply| Job::Command {
            account_id: account_id.to_string(),
            command,
            reply,
        })
    }

    /// Runs a command against the account that owns an invoice.
    pub async fn execute_for_invoice(
        &self,
        number: &str,
        command: Command,
    ) -> Result<Vec<AccountEvent>, LedgerError> {
        self.call(|reply| Job::InvoiceCommand {
            number: number.to_string(),
            command,
            reply,
        })
        .await
    }

    pub fn execute_for_invoice_blocking(
        &self,
        number: &str,
        command: Command,
    ) -> Result<Vec<AccountEvent>, LedgerError> {
        self.call_blocking(|reply| Job::InvoiceCommand {
            number: number.to_string(),
            command,
            reply,
        })
    }

    /// Records a ledger-wide fact outside account streams (an issued
    /// token, a bounced mail) in its stream; answers once it is durable.
    pub async fn record(&self, event: LedgerEvent) -> Result<(), LedgerError> {
        let stream = fact_stream(&event)?;
        self.call(|reply| Job::Record {
            stream,
            event,
            reply,
        })
        .await
        .map(|_| ())
    }

    /// [`Ledger::record`] for callers outside an async runtime.
    pub fn record_blocking(&self, event: LedgerEvent) -> Result<(), LedgerError> {
        let stream = fact_stream(&event)?;
        self.call_blocking(|reply| Job::Record {
            stream,
            event,
            reply,
        })
        .map(|_| ())
    }

    /// Moves the manual clock forward, closing every period that ends on the way.
    pub async fn advance_clock(&self, now: DateTime<Utc>) -> Result<DateTime<Utc>, LedgerError> {
        self.call(|reply| Job::AdvanceClock { now, reply }).await
    }

    pub fn advance_clock_blocking(&self, now: DateTime<Utc>) -> Result<DateTime<Utc>, LedgerError> {
        self.call_blocking(|reply| Job::AdvanceClock { now, reply })
    }

    /// Stops the writer after the jobs already queued; waits for it.
    pub fn shutdown(&self) {
        let _ = self.jobs.send(Job::Stop);
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

/// The stream of a ledger-wide fact [`Ledger::record`] takes.
fn fact_stream(e: &LedgerEvent) -> Result<&'static str, LedgerError> {
    match e {
        LedgerEvent::TokenIssued(_) => Ok(accrue_core::TOKENS_STREAM),
        LedgerEvent::MailBounced(_) | LedgerEvent::MailResent(_) => Ok(accrue_core::MAIL_STREAM),
        LedgerEvent::WebhookEndpointRegistered(_) | LedgerEvent::WebhookEndpointDisabled(_) => {
            Ok(accrue_core::events::WEBHOOKS_STREAM)
        }
        other => Err(LedgerError::Domain(DomainError::Invalid(format!(
            "{} is not recorded on its own",
            other.type_name()
        )))),
    }
}

/// The whole `InvoiceIssued` of a read-model invoice record, read from the
/// log at the record's position.
pub fn invoice_issued(
    store: &dyn EventStore,
    rec: &accrue_projections::InvoiceRecord,
) -> Result<accrue_core::events::InvoiceIssued, LedgerError> {
    let stored = store
        .read_at(rec.position)?
        .ok_or_else(|| LedgerError::Corrupt(format!("no event at position {}", rec.position)))?;
    match LedgerEvent::decode(&stored.type_name, stored.schema, &stored.payload)
        .map_err(|e| LedgerError::Corrupt(e.to_string()))?
    {
        LedgerEvent::Account(AccountEvent::InvoiceIssued(i)) if i.number == rec.issued.number => {
            Ok(i)
        }
        _ => Err(LedgerError::Corrupt(format!(
            "position {} is not invoice {}",
            rec.position, rec.issued.number
        ))),
    }
}

/// The `CreditNoteIssued` event a credit-note record points at, read from
/// the log (its lines are not kept in memory).
pub fn credit_note_issued(
    store: &dyn EventStore,
    rec: &accrue_projections::read_models::CreditNoteRecord,
) -> Result<accrue_core::events::CreditNoteIssued, LedgerError> {
    let stored = store
        .read_at(rec.position)?
        .ok_or_else(|| LedgerError::Corrupt(format!("no event at position {}", rec.position)))?;
    match LedgerEvent::decode(&stored.type_name, stored.schema, &stored.payload)
        .map_err(|e| LedgerError::Corrupt(e.to_string()))?
    {
        LedgerEvent::Account(AccountEvent::CreditNoteIssued(c)) if c.number == rec.number => Ok(c),
        _ => Err(LedgerError::Corrupt(format!(
            "position {} is not credit note {}",
            rec.position, rec.number
        ))),
    }
}
