//! The single writer: owns every account's decision state, decides jobs in
//! arrival order, and commits them in groups. See the crate docs for why.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use accrue_core::events::{
    AccountOpened, ClockAdvanced, CreditsConsumed, InvoiceNumberAssigned, LedgerEvent,
};
use accrue_core::invoice::format_number;
use accrue_core::{
    decide, AccountEvent, AccountState, Command, Context, DomainError, CLOCK_STREAM,
    CREDIT_NOTE_SEQUENCE_STREAM, INVOICE_SEQUENCE_STREAM, SCHEMA_VERSION,
};
use accrue_projections::ReadModels;
use accrue_store::{EventStore, ExpectedVersion, NewEvent, StoreError, StreamAppend};
use chrono::{DateTime, Datelike, Utc};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tokio::sync::oneshot;

use crate::idempotency::{self, IdempotencyIndex, Slot};
use crate::snapshot;
use crate::{Job, LedgerError, Shared, UsageItem, UsageOutcome};

#[path = "license.rs"]
pub(crate) mod license;

#[path = "dunning.rs"]
pub(crate) mod dunning;

/// A gapless series of document numbers: invoices and credit notes share
/// the mechanism (a number event in the series' own stream, committed in
/// the same group as the document, expected version exact).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub(crate) enum Series {
    Invoice,
    CreditNote,
}

impl Series {
    fn stream(self) -> &'static str {
        match self {
            Series::Invoice => INVOICE_SEQUENCE_STREAM,
            Series::CreditNote => CREDIT_NOTE_SEQUENCE_STREAM,
        }
    }
    fn label(self) -> &'static str {
        match self {
            Series::Invoice => "invoice-number",
            Series::CreditNote => "credit-note-number",
        }
    }
    fn format(self, year: i32, seq: u64) -> String {
        match self {
            Series::Invoice => format_number(year, seq),
            Series::CreditNote => format!("CN-{year}-{seq:06}"),
        }
    }
    fn event(self, n: InvoiceNumberAssigned) -> LedgerEvent {
        match self {
            Series::Invoice => LedgerEvent::InvoiceNumberAssigned(n),
            Series::CreditNote => LedgerEvent::CreditNoteNumberAssigned(n),
        }
    }
    /// (year, sequence) of a number of this series in its canonical spelling.
    fn parse(self, number: &str) -> Option<(i32, u64)> {
        let prefix = match self {
            Series::Invoice => "INV-",
            Series::CreditNote => "CN-",
        };
        let (year, seq) = number.strip_prefix(prefix)?.split_once('-')?;
        let (year, seq): (i32, u64) = (year.parse().ok()?, seq.parse().ok()?);
        (self.format(year, seq) == number).then_some((year, seq))
    }
}

/// Most events decided into one group before it is committed.
const MAX_GROUP_EVENTS: usize = 20_000;
/// How often the writer wakes without work (system-clock period closes).
const TICK: Duration = Duration::from_millis(500);
/// Events applied to the read models between lock releases.
const READ_CHUNK: usize = 64;

/// Everything the writer decides with.
#[derive(Default)]
pub(crate) struct State {
    /// Boxed: a slot of the table is 32 bytes, not a whole state (at 100,000
    /// accounts the table has 131,072 slots).
    pub accounts: HashMap<String, Box<AccountState>>,
    pub idem: IdempotencyIndex,
    /// The last sequence number per series and year.
    pub seq: HashMap<(Series, i32), u64>,
    pub invoice_owner: InvoiceOwners,
    /// (end of current credit period, account): what closes next.
    pub due: BTreeSet<(DateTime<Utc>, String)>,
    /// Versions of the ledger-wide streams (invoice sequence, clock,
    /// tokens): their appends expect exactly these.
    pub globals: HashMap<String, u64>,
    /// Serial numbers, license deadlines, sync coalescing (`license.rs`).
    pub license: license::Index,
    /// Suspension deadlines of accounts in dunning (`dunning.rs`).
    pub dunning: dunning::Index,
    /// Which account recorded each payment reference: a reference reused
    /// on another account's invoice is a conflict, not a new payment.
    pub payment_refs: HashMap<String, String>,
    /// The latest `ClockAdvanced` staged or replayed (the stored clock).
    pub clock: Option<DateTime<Utc>>,
}

fn account_of(stream: &str) -> Option<&str> {
    stream.strip_prefix("account-")
}

/// Which account each invoice belongs to (payments name only the invoice).
/// Numbers are `INV-<year>-<seq>` (see `format_number`): an entry is the
/// packed (year, seq) and the owner's shared `AccountOpened` (its id), 16
/// bytes instead of two strings. Any other number goes to a plain map.
#[derive(Default)]
pub(crate) struct InvoiceOwners {
    by_seq: HashMap<u64, Arc<AccountOpened>>,
    other: HashMap<String, String>,
}

impl InvoiceOwners {
    fn key(number: &str) -> Option<u64> {
        let (year, seq) = number.strip_prefix("INV-")?.split_once('-')?;
        let (year, seq): (u32, u32) = (year.parse().ok()?, seq.parse().ok()?);
        // Only the canonical spelling (no sign, the same zero padding).
        let canonical = format_number(i32::try_from(year).ok()?, u64::from(seq)) == number;
        canonical.then_some((u64::from(year) << 32) | u64::from(seq))
    }

    fn insert(&mut self, number: &str, account: &str, opened: Option<&Arc<AccountOpened>>) {
        match (Self::key(number), opened) {
            (Some(k), Some(o)) if o.account_id == account => {
                self.by_seq.insert(k, Arc::clone(o));
            }
            _ => {
                self.other.insert(number.to_string(), account.to_string());
            }
        }
    }

    pub(crate) fn get(&self, number: &str) -> Option<String> {
        Self::key(number)
            .and_then(|k| self.by_seq.get(&k))
            .map(|o| o.account_id.clone())
            .or_else(|| self.other.get(number).cloned())
    }
}

impl State {
    /// Indexes an account event the writer has applied (or replayed).
    fn track(
        &mut self,
        account: &str,
        before: Option<DateTime<Utc>>,
        after: Option<DateTime<Utc>>,
        e: &AccountEvent,
        opened: Option<&Arc<AccountOpened>>,
    ) {
        if before != after {
            if let Some(b) = before {
                self.due.remove(&(b, account.to_string()));
            }
            if let Some(a) = after {
                self.due.insert((a, account.to_string()));
            }
        }
        if let AccountEvent::InvoiceIssued(i) = e {
            self.invoice_owner.insert(&i.number, account, opened);
        }
    }

    /// Applies an account event; returns the account's version before it.
    fn apply_account(&mut self, account: &str, e: &AccountEvent) -> u64 {
        // get_mut first: the hot path must not allocate a key per event.
        let st = match self.accounts.get_mut(account) {
            Some(st) => st,
            None => self.accounts.entry(account.to_string()).or_default(),
        };
        let version_before = st.version;
        let before = st.period_end();
        st.apply(e);
        self.license.track(account, e, st);
        self.dunning.track(account, e, st);
        let reference = match e {
            AccountEvent::PaymentSucceeded(p) => Some(&p.reference),
            AccountEvent::PaymentFailed(p) => Some(&p.reference),
            AccountEvent::PaymentRefunded(p) => Some(&p.reference),
            _ => None,
        };
        if let Some(r) = reference {
            if !self.payment_refs.contains_key(r) {
                self.payment_refs.insert(r.clone(), account.to_string());
            }
        }
        let after = st.period_end();
        if before != after || matches!(e, AccountEvent::InvoiceIssued(_)) {
            let opened = st.info.clone();
            self.track(account, before, after, e, opened.as_ref());
        }
        version_before
    }

    /// Folds a committed event at `position` (replay at start).
    fn apply_committed(&mut self, stream: &str, position: u64, e: &LedgerEvent) {
        if !matches!(e, LedgerEvent::Account(_)) {
            *self.globals.entry(stream.to_string()).or_insert(0) += 1;
        }
        match e {
            LedgerEvent::Account(ae) => {
                let Some(account) = account_of(stream) else {
                    return;
                };
                if let AccountEvent::CreditsConsumed(c) = ae {
                    let h = idempotency::key(account, &c.usage_id);
                    let slot = Slot::Committed(position);
                    if !self.idem.by_hash(h).is_empty() {
                        self.idem.insert_exact(account, &c.usage_id, slot);
                    } else {
                        self.idem.insert_hash(h, slot);
                    }
                    self.idem.compact();
                }
                self.apply_account(account, ae);
            }
            LedgerEvent::InvoiceNumberAssigned(n) => {
                let s = self.seq.entry((Series::Invoice, n.year)).or_insert(0);
                *s = (*s).max(n.sequence);
            }
            LedgerEvent::CreditNoteNumberAssigned(n) => {
                let s = self.seq.entry((Series::CreditNote, n.year)).or_insert(0);
                *s = (*s).max(n.sequence);
            }
            LedgerEvent::ClockAdvanced(c) => {
                self.clock = Some(self.clock.map_or(c.now, |k| k.max(c.now)));
            }
            LedgerEvent::TokenIssued(_)
            | LedgerEvent::MailBounced(_)
            | LedgerEvent::MailResent(_)
            | LedgerEvent::WebhookEndpointRegistered(_)
            | LedgerEvent::WebhookEndpointDisabled(_) => {}
        }
    }

    fn next_number(&self, series: Series, at: DateTime<Utc>) -> (i32, u64, String) {
        let year = at.year();
        let seq = self.seq.get(&(series, year)).copied().unwrap_or(0) + 1;
        (year, seq, series.format(year, seq))
    }

    fn next_invoice_number(&self, at: DateTime<Utc>) -> (i32, u64, String) {
        self.next_number(Series::Invoice, at)
    }

    /// A copy of what a snapshot stores of this state, as of `position`
    /// (nothing pending).
    pub(crate) fn snapshot_part(&self, position: u64) -> snapshot::WriterPart {
        let mut seq: Vec<_> = self.seq.iter().map(|((s, y), n)| (*s, *y, *n)).collect();
        seq.sort_by_key(|(s, y, _)| (s.label(), *y));
        snapshot::WriterPart {
            position,
            accounts: self.accounts.clone(),
            idem: self.idem.clone(),
            seq,
            globals: self.globals.clone(),
            payment_refs: self.payment_refs.clone(),
            clock: self.clock,
        }
    }

    /// The state a snapshot stored, with the indexes derived from accounts
    /// rebuilt as a replay would have built them.
    fn from_part(part: snapshot::WriterPart) -> State {
        let mut st = State {
            idem: part.idem,
            seq: part.seq.into_iter().map(|(s, y, n)| ((s, y), n)).collect(),
            globals: part.globals,
            payment_refs: part.payment_refs,
            clock: part.clock,
            ..State::default()
        };
        for (id, a) in &part.accounts {
            if let Some(end) = a.period_end() {
                st.due.insert((end, id.clone()));
            }
            for number in a.invoices.keys() {
                st.invoice_owner.insert(number, id, a.info.as_ref());
            }
            st.license.rebuild(id, a);
            st.dunning.rebuild(id, a);
        }
        st.accounts = part.accounts;
        st
    }

    /// Everything a decision can see, as text in a stable order, with the
    /// idempotency lookup of each given (account, usage id).
    pub(crate) fn digest(&self, usage: &[(String, String)]) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let sorted = |m: &HashMap<String, _>| -> Vec<String> {
            let mut v: Vec<String> = m.keys().cloned().collect();
            v.sort();
            v
        };
        for id in sorted(&self.accounts) {
            let _ = writeln!(out, "account {id} {:?}", self.accounts[&id]);
            for number in self.accounts[&id].invoices.keys() {
                let _ = writeln!(out, "  owner {number} {:?}", self.invoice_owner.get(number));
            }
        }
        let mut seq: Vec<_> = self.seq.iter().collect();
        seq.sort_by_key(|((s, y), _)| (s.label(), *y));
        let mut globals: Vec<_> = self.globals.iter().collect();
        globals.sort();
        let mut refs: Vec<_> = self.payment_refs.iter().collect();
        refs.sort();
        let _ = writeln!(out, "seq {seq:?}\nglobals {globals:?}\nrefs {refs:?}");
        let _ = writeln!(out, "due {:?}\nclock {:?}", self.due, self.clock);
        let _ = writeln!(
            out,
            "license {}\ndunning {:?}",
            self.license.digest(),
            self.dunning.due
        );
        for (a, u) in usage {
            let mut slots = self.idem.by_hash(idempotency::key(a, u));
            slots.sort_by_key(|s| format!("{s:?}"));
            let _ = writeln!(out, "usage {a} {u} {slots:?} {:?}", self.idem.exact(a, u));
        }
        out
    }
}

/// Loads the writer state and read models: from the newest snapshot that
/// checks out and the log after it, else from the whole log.
pub(crate) fn load(
    store: &dyn EventStore,
) -> Result<(State, ReadModels, Option<DateTime<Utc>>), LedgerError> {
    load_with(store, true)
}

/// [`load`], or (`use_snapshots` false) a replay of the whole log.
pub(crate) fn load_with(
    store: &dyn EventStore,
    use_snapshots: bool,
) -> Result<(State, ReadModels, Option<DateTime<Utc>>), LedgerError> {
    let loaded = if use_snapshots {
        snapshot::load_newest(store)?
    } else {
        None
    };
    // The highest sequence issued per series and year, as the documents
    // say; a snapshot's own sequences were checked when it was taken.
    let mut issued: HashMap<(Series, i32), (u64, String)> = HashMap::new();
    let (mut state, mut read, from) = match loaded {
        None => (State::default(), ReadModels::default(), 0),
        Some(l) => {
            let from = l.writer.position;
            for (series, year, seq) in &l.writer.seq {
                issued.insert((*series, *year), (*seq, series.format(*year, *seq)));
            }
            (State::from_part(l.writer), l.read, from)
        }
    };
    let read_from = read.position.min(from);
    crate::replay::for_each_decoded(store, read_from, |page| {
        for d in &page {
            if d.position > read.position {
                read.apply(d.position, &d.stream, d.recorded_at, &d.event);
            }
            if d.position <= from {
                continue;
            }
            let document = match &d.event {
                LedgerEvent::Account(AccountEvent::InvoiceIssued(i)) => {
                    Some((Series::Invoice, &i.number))
                }
                LedgerEvent::Account(AccountEvent::CreditNoteIssued(c)) => {
                    Some((Series::CreditNote, &c.number))
                }
                _ => None,
            };
            if let Some((series, number)) = document {
                if let Some((year, seq)) = series.parse(number) {
                    let e = issued.entry((series, year)).or_insert((0, String::new()));
                    if seq > e.0 {
                        *e = (seq, number.clone());
                    }
                }
            }
            state.apply_committed(&d.stream, d.position, &d.event);
        }
    })?;
    // The sequence never goes backwards: a log whose `invoice-sequence`
    // stream is behind an invoice already issued was cut, and opening it
    // would issue that number again.
    for ((series, year), (seq, number)) in &issued {
        let at = state.seq.get(&(*series, *year)).copied().unwrap_or(0);
        if at < *seq {
            return Err(LedgerError::Corrupt(format!(
                "the {} sequence of {year} ends at {at}, but {number} was issued: \
                 the log lost events; refusing to open rather than reissue a number \
                 (run `accrue audit verify --anchor …`)",
                series.label()
            )));
        }
    }
    let clock = state.clock;
    Ok((state, read, clock))
}

enum Reply {
    Usage(
        oneshot::Sender<Result<Vec<UsageOutcome>, LedgerError>>,
        Vec<UsageOutcome>,
    ),
    Command(
        oneshot::Sender<Result<Vec<AccountEvent>, LedgerError>>,
        Vec<AccountEvent>,
    ),
    Clock(
        oneshot::Sender<Result<DateTime<Utc>, LedgerError>>,
        DateTime<Utc>,
    ),
    License(
        oneshot::Sender<Result<license::LicenseOutcome, LedgerError>>,
        license::LicenseOutcome,
    ),
}

impl Reply {
    fn send_ok(self) {
        match self {
            Reply::Usage(tx, v) => drop(tx.send(Ok(v))),
            Reply::Command(tx, v) => drop(tx.send(Ok(v))),
            Reply::Clock(tx, v) => drop(tx.send(Ok(v))),
            Reply::License(tx, v) => drop(tx.send(Ok(v))),
        }
    }
    fn send_err(self, e: &str) {
        let err = || LedgerError::Failed(e.to_string());
        match self {
            Reply::Usage(tx, _) => drop(tx.send(Err(err()))),
            Reply::Command(tx, _) => drop(tx.send(Err(err()))),
            Reply::Clock(tx, _) => drop(tx.send(Err(err()))),
            Reply::License(tx, _) => drop(tx.send(Err(err()))),
        }
    }
}

struct PendingUsage {
    hash: u64,
    /// (account, usage id) when the key lives in the exact side table.
    exact: Option<(String, String)>,
    stream: u32,
    event: u32,
}

/// Events decided but not yet committed, and who waits for them.
#[derive(Default)]
struct Group {
    appends: Vec<StreamAppend>,
    decoded: Vec<Vec<LedgerEvent>>,
    /// Stream name → its append.
    index: HashMap<String, usize>,
    /// Account id → its stream's append (saves naming the stream per event).
    accounts: HashMap<String, usize>,
    pending_usage: Vec<PendingUsage>,
    replies: Vec<Reply>,
    events: usize,
}

impl Group {
    fn is_empty(&self) -> bool {
        self.appends.is_empty() && self.replies.is_empty()
    }

    /// [`Group::push`] for an account's stream.
    fn push_account(
        &mut self,
        account: &str,
        version_before: u64,
        occurred_at: DateTime<Utc>,
        e: LedgerEvent,
    ) -> (u32, u32) {
        if let Some(&i) = self.accounts.get(account) {
            return self.push_at(i, occurred_at, e);
        }
        let stream = format!("account-{account}");
        let at = self.push(&stream, Some(version_before), occurred_at, e);
        self.accounts.insert(account.to_string(), at.0 as usize);
        at
    }

    fn push_at(&mut self, i: usize, occurred_at: DateTime<Utc>, e: LedgerEvent) -> (u32, u32) {
        self.appends[i].events.push(NewEvent {
            type_name: e.type_name(),
            schema: SCHEMA_VERSION,
            occurred_at,
            payload: e.encode_payload(),
        });
        self.decoded[i].push(e);
        self.events += 1;
        (i as u32, (self.decoded[i].len() - 1) as u32)
    }

    /// Adds an event to its stream's append; `version_before` is the stream's
    /// version before this event (the expectation if the stream is new here).
    fn push(
        &mut self,
        stream: &str,
        version_before: Option<u64>,
        occurred_at: DateTime<Utc>,
        e: LedgerEvent,
    ) -> (u32, u32) {
        let i = match self.index.get(stream) {
            Some(i) => *i,
            None => {
                self.appends.push(StreamAppend {
                    stream: stream.to_string(),
                    expected: version_before.map_or(ExpectedVersion::Any, ExpectedVersion::Exact),
                    events: Vec::new(),
                });
                self.decoded.push(Vec::new());
                self.index
                    .insert(stream.to_string(), self.appends.len() - 1);
                self.appends.len() - 1
            }
        };
        self.push_at(i, occurred_at, e)
    }
}

/// When an event happened in business time.
fn occurred_at(e: &AccountEvent, now: DateTime<Utc>) -> DateTime<Utc> {
    match e {
        AccountEvent::CreditsConsumed(c) => c.occurred_at,
        AccountEvent::PeriodClosed(c) => c.period.end,
        AccountEvent::InvoiceIssued(i) => i.issued_at,
        AccountEvent::AccountOpened(o) => o.opened_at,
        _ => now,
    }
}

/// A decided group on its way to the store: what the committer appends
/// and applies, and what the writer still looks up while it is in flight.
struct Sealed {
    appends: Vec<StreamAppend>,
    decoded: Vec<Vec<LedgerEvent>>,
    /// The position each append's first event gets.
    first: Vec<u64>,
    events: usize,
    recorded_at: DateTime<Utc>,
}

impl Sealed {
    /// The event at `position`, if this group holds it.
    fn at(&self, position: u64) -> Option<(&str, &LedgerEvent)> {
        let i = self
            .first
            .partition_point(|f| *f <= position)
            .checked_sub(1)?;
        let e = self.decoded[i].get((position - self.first[i]) as usize)?;
        Some((self.appends[i].stream.as_str(), e))
    }
}

/// A sealed group and everyone waiting for it.
struct Commit {
    sealed: Arc<Sealed>,
    replies: Vec<Reply>,
}

struct Writer {
    shared: Arc<Shared>,
    state: State,
    group: Group,
    /// The position the next sealed event gets, less one: the store's head
    /// plus every event in flight (the writer is the store's only appender).
    head: u64,
    /// The group the committer is working on, if any (at most one).
    inflight: Option<Arc<Sealed>>,
    to_committer: Option<Sender<Commit>>,
    results: Receiver<Result<(), String>>,
    committer: Option<JoinHandle<()>>,
    /// Stored events read for the usage job being decided (position →
    /// stream and event; `None`: no event there).
    prefetched: HashMap<u64, Option<(String, LedgerEvent)>>,
    /// Snapshots of the state as groups are sealed (`snapshot.rs`).
    snapshots: snapshot::Snapshotter,
}

pub(crate) fn spawn(
    shared: Arc<Shared>,
    state: State,
    jobs: Receiver<Job>,
) -> Result<JoinHandle<()>, LedgerError> {
    let head = shared.store.head_position()?;
    let snapshots = snapshot::Snapshotter::start(shared.clone(), head)?;
    let (to_committer, commits) = crossbeam_channel::bounded::<Commit>(1);
    let (done, results) = crossbeam_channel::bounded(1);
    let committer = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("accrue-commit".into())
            // Normal priority: it holds the read models' write lock while
            // it applies a group, and must not be preempted there.
            .spawn(move || {
                crate::priority::pin_committer();
                let run = std::panic::AssertUnwindSafe(|| commit_loop(&shared, &commits, &done));
                if let Err(p) = std::panic::catch_unwind(run) {
                    shared
                        .health
                        .fail(&format!("the committer panicked: {}", panic_text(&p)));
                }
            })
            .map_err(|e| LedgerError::Corrupt(format!("cannot start the committer: {e}")))?
    };
    let mut w = Writer {
        shared,
        state,
        group: Group::default(),
        head,
        inflight: None,
        to_committer: Some(to_committer),
        results,
        committer: Some(committer),
        prefetched: HashMap::new(),
        snapshots,
    };
    // Finish any close that came due while we were down, before serving.
    w.close_due(w.shared.clock.now());
    w.license_issue_missing();
    w.flush_sync();
    if let Some(reason) = w.shared.health.failed() {
        return Err(LedgerError::Failed(reason));
    }
    std::thread::Builder::new()
        .name("accrue-writer".into())
        .spawn(move || {
            crate::priority::lower_current_thread();
            let shared = w.shared.clone();
            let run = std::panic::AssertUnwindSafe(|| w.run(&jobs));
            if let Err(p) = std::panic::catch_unwind(run) {
                shared
                    .health
                    .fail(&format!("the writer panicked: {}", panic_text(&p)));
            }
            match shared.health.failed() {
                Some(reason) => refuse_queued(&jobs, &reason),
                // A clean stop: whatever is still queued is answered, so no
                // caller waits for a reply that never comes.
                None => {
                    shared.health.stopping();
                    while let Ok(job) = jobs.try_recv() {
                        refuse(job, LedgerError::Stopped);
                    }
                }
            }
        })
        .map_err(|e| LedgerError::Corrupt(format!("cannot start the writer: {e}")))
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// After a fault: answers every queued request (and any that still
/// arrives before the handles notice) with the fault, until all senders
/// are gone or a stop is asked.
fn refuse_queued(jobs: &Receiver<Job>, reason: &str) {
    while let Ok(job) = jobs.recv_timeout(Duration::from_millis(200)) {
        if matches!(job, Job::Stop) {
            return;
        }
        refuse(job, LedgerError::Failed(reason.to_string()));
    }
}

/// Answers a job the writer will not run.
fn refuse(job: Job, err: LedgerError) {
    match job {
        Job::Usage { reply, .. } => drop(reply.send(Err(err))),
        Job::Command { reply, .. }
        | Job::InvoiceCommand { reply, .. }
        | Job::Record { reply, .. } => drop(reply.send(Err(err))),
        Job::AdvanceClock { reply, .. } => drop(reply.send(Err(err))),
        Job::License { reply, .. } => drop(reply.send(Err(err))),
        Job::Stop => {}
    }
}

/// The committer: appends each sealed group in one durable transaction,
/// applies it to the read models, answers its waiters, then reports to the
/// writer. It runs beside the writer, so the next group is decided while
/// this one is written.
fn commit_loop(shared: &Shared, commits: &Receiver<Commit>, done: &Sender<Result<(), String>>) {
    let mut idle = false;
    loop {
        let Commit { sealed, replies } = match commits.recv_timeout(crate::idle::IDLE_AFTER) {
            Ok(c) => c,
            Err(RecvTimeoutError::Timeout) => {
                if !std::mem::replace(&mut idle, true) {
                    crate::idle::idle();
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        idle = false;
        let result = commit(shared, &sealed);
        let failed = result.is_err();
        match &result {
            Ok(()) => replies.into_iter().for_each(Reply::send_ok),
            Err(msg) => {
                // Fail-stop: whatever the store holds now is the truth, and
                // only a replay of it may decide again.
                shared.health.fail(msg);
                replies.into_iter().for_each(|r| r.send_err(msg));
            }
        }
        if done.send(result).is_err() || failed {
            break;
        }
    }
}

fn commit(shared: &Shared, g: &Sealed) -> Result<(), String> {
    if g.appends.is_empty() {
        return Ok(());
    }
    let appended = shared
        .store
        .append(&g.appends, g.recorded_at)
        .map_err(|e| e.to_string())?;
    if appended.first_position != g.first[0] {
        // Only possible if something else appended: never answer 200 for
        // events whose positions the writer got wrong.
        return Err(format!(
            "the store placed the group at {}, the writer expected {}",
            appended.first_position, g.first[0]
        ));
    }
    // Apply in short chunks so queries never wait long for the lock; each
    // chunk holds only committed events.
    let mut read = shared.read.write();
    let mut applied = 0usize;
    for (i, a) in g.appends.iter().enumerate() {
        for (j, e) in g.decoded[i].iter().enumerate() {
            read.apply(g.first[i] + j as u64, &a.stream, g.recorded_at, e);
            applied += 1;
            if applied.is_multiple_of(READ_CHUNK) {
                parking_lot::RwLockWriteGuard::bump(&mut read);
            }
        }
    }
    drop(read);
    shared
        .metrics
        .events_appended
        .fetch_add(g.events as u64, Relaxed);
    shared.metrics.commits.fetch_add(1, Relaxed);
    Ok(())
}

impl Writer {
    /// Decides jobs one at a time. A decided group goes to the committer as
    /// soon as the committer is free; while it is busy, the writer goes on
    /// deciding what arrives, so the next group is ready when it finishes.
    fn run(mut self, jobs: &Receiver<Job>) {
        let mut idle = false;
        loop {
            if self.shared.health.failed().is_some() {
                self.fail_group();
                return;
            }
            let job = if self.group.is_empty() {
                match jobs.recv_timeout(TICK) {
                    Ok(j) => {
                        idle = false;
                        Some(j)
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        if !std::mem::replace(&mut idle, true) {
                            crate::idle::idle();
                        }
                        None
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else if self.inflight.is_none() || self.group.events >= MAX_GROUP_EVENTS {
                self.flush();
                continue;
            } else {
                crossbeam_channel::select! {
                    recv(jobs) -> j => match j {
                        Ok(j) => Some(j),
                        Err(_) => break,
                    },
                    recv(self.results) -> r => {
                        self.inflight = None;
                        let r = r.unwrap_or_else(|_| Err("the committer has stopped".into()));
                        if self.finish_inflight(r).is_err() {
                            self.fail_group();
                            return;
                        }
                        continue;
                    }
                }
            };
            if !self.shared.clock.is_manual() {
                self.close_due(self.shared.clock.now());
            }
            self.license_flush(false);
            if let Some(job) = job {
                if self.handle(job) {
                    break;
                }
            }
        }
        self.license_flush(true);
        self.flush_sync();
        self.to_committer = None;
        if let Some(c) = self.committer.take() {
            let _ = c.join();
        }
        self.snapshots.stop();
    }

    /// Handles one job; true when the writer should stop.
    fn handle(&mut self, job: Job) -> bool {
        match job {
            Job::Usage { items, reply } => {
                // Every store read the decisions need happens first: a read
                // that fails answers 503 with nothing decided, so a retry
                // can never be counted twice.
                if let Err(e) = self.prefetch_usage(&items) {
                    self.prefetched.clear();
                    drop(reply.send(Err(LedgerError::Unavailable(e.to_string()))));
                    return false;
                }
                let now = self.shared.clock.now();
                let outcomes = items.into_iter().map(|i| self.consume(i, now)).collect();
                self.prefetched.clear();
                self.group.replies.push(Reply::Usage(reply, outcomes));
            }
            Job::Command {
                account_id,
                command,
                reply,
            } => {
                let now = self.shared.clock.now();
                match self.command(&account_id, command, now) {
                    Ok(events) => self.group.replies.push(Reply::Command(reply, events)),
                    Err(e) => drop(reply.send(Err(e))),
                }
            }
            Job::InvoiceCommand {
                number,
                command,
                reply,
            } => {
                let now = self.shared.clock.now();
                let result = match self.state.invoice_owner.get(&number) {
                    None => Err(LedgerError::Domain(DomainError::UnknownInvoice)),
                    Some(account) => match self.reference_elsewhere(&account, &command) {
                        Some(e) => Err(e),
                        None => self.command(&account, command, now),
                    },
                };
                match result {
                    Ok(events) => self.group.replies.push(Reply::Command(reply, events)),
                    Err(e) => drop(reply.send(Err(e))),
                }
            }
            Job::AdvanceClock { now, reply } => self.advance_clock(now, reply),
            Job::Record {
                stream,
                event,
                reply,
            } => {
                let now = self.shared.clock.now();
                self.push_global(stream, now, event);
                self.group.replies.push(Reply::Command(reply, Vec::new()));
            }
            Job::License {
                target,
                command,
                reply,
            } => self.license_job(target, command, reply),
            Job::Stop => return true,
        }
        false
    }

    fn advance_clock(
        &mut self,
        now: DateTime<Utc>,
        reply: oneshot::Sender<Result<DateTime<Utc>, LedgerError>>,
    ) {
        if !self.shared.clock.is_manual() {
            let _ = reply.send(Err(LedgerError::NotManualClock));
            return;
        }
        let now = crate::clock::truncate(now);
        let current = self.shared.clock.now();
        if now < current {
            let _ = reply.send(Err(LedgerError::ClockBackwards {
                current,
                requested: now,
            }));
            return;
        }
        // Earlier jobs were decided at the old time: commit them first. Then
        // record the new position before closing, so a crash in the middle
        // of the closes resumes at this time and finishes them at start.
        self.flush_sync();
        self.shared.clock.set(now);
        self.push_global(
            CLOCK_STREAM,
            now,
            LedgerEvent::ClockAdvanced(ClockAdvanced { now }),
        );
        self.flush_sync();
        self.close_due(now);
        self.group.replies.push(Reply::Clock(reply, now));
    }

    /// Closes every credit period that ended at or before `now`, in time order.
    fn close_due(&mut self, now: DateTime<Utc>) {
        self.license_due(now);
        self.dunning_due(now);
        while let Some((end, account)) = self.state.due.first().cloned() {
            if end > now {
                break;
            }
            let ctx = dunning::context(end);
            let (_, _, number) = self.state.next_invoice_number(end);
            match self.decide_and_stage(
                &account,
                Command::ClosePeriod {
                    invoice_number: number,
                },
                &ctx,
            ) {
                Ok(_) => {}
                Err(e) => {
                    // Cannot happen for a due period; never loop on it.
                    tracing::error!(account, error = %e, "period close failed");
                    self.state.due.remove(&(end, account));
                }
            }
            if self.group.events >= MAX_GROUP_EVENTS {
                self.flush();
            }
        }
    }

    fn command(
        &mut self,
        account: &str,
        command: Command,
        now: DateTime<Utc>,
    ) -> Result<Vec<AccountEvent>, LedgerError> {
        let command = match command {
            Command::Open(mut open) => {
                let (_, _, number) = self.state.next_invoice_number(now);
                open.invoice_number = number;
                open.account_id = account.to_string();
                Command::Open(open)
            }
            Command::ClosePeriod { .. } => {
                return Err(LedgerError::Domain(DomainError::Invalid(
                    "periods close by the clock".into(),
                )))
            }
            other => other,
        };
        let opening = matches!(command, Command::Open(_));
        let command = self.resolve(account, command)?;
        let events = self.decide_and_stage(account, command, &dunning::context(now))?;
        if opening {
            self.license_issue(account);
        }
        Ok(events)
    }

    /// A payment whose reference another account already recorded.
    fn reference_elsewhere(&self, account: &str, command: &Command) -> Option<LedgerError> {
        let Command::RecordPayment { reference, .. } = command else {
            return None;
        };
        let owner = self.state.payment_refs.get(reference)?;
        if owner == account {
            return None;
        }
        Some(LedgerError::Domain(DomainError::ReferenceConflict {
            reference: reference.clone(),
            invoice_number: "an invoice of another account".to_string(),
            outcome: "recorded",
        }))
    }

    /// Decides against the account's state, applies the events to it, and
    /// stages them (plus an invoice number if one was used) in the group.
    fn decide_and_stage(
        &mut self,
        account: &str,
        command: Command,
        ctx: &Context,
    ) -> Result<Vec<AccountEvent>, LedgerError> {
        static EMPTY: std::sync::OnceLock<AccountState> = std::sync::OnceLock::new();
        let state = self
            .state
            .accounts
            .get(account)
            .map(|s| &**s)
            .unwrap_or_else(|| EMPTY.get_or_init(AccountState::default));
        let events = decide(state, command, ctx)?;
        Ok(self.stage(account, events, ctx.now).1)
    }

    /// Numbers, applies and stages the events; returns where the first one
    /// went, and the events as staged. A credit note decided without a
    /// number gets the next of its series here.
    fn stage(
        &mut self,
        account: &str,
        events: Vec<AccountEvent>,
        now: DateTime<Utc>,
    ) -> ((u32, u32), Vec<AccountEvent>) {
        let mut first = None;
        let mut staged = Vec::new();
        for mut e in events {
            if let AccountEvent::CreditNoteIssued(c) = &mut e {
                if c.number.is_empty() {
                    c.number = self.state.next_number(Series::CreditNote, c.issued_at).2;
                }
            }
            let version_before = self.state.apply_account(account, &e);
            let issued = match &e {
                AccountEvent::InvoiceIssued(i) => Some((Series::Invoice, i.issued_at)),
                AccountEvent::CreditNoteIssued(c) => Some((Series::CreditNote, c.issued_at)),
                _ => None,
            };
            // Only usage is answered without its events (the hot path).
            if !matches!(e, AccountEvent::CreditsConsumed(_)) {
                staged.push(e.clone());
            }
            let at = self.group.push_account(
                account,
                version_before,
                occurred_at(&e, now),
                LedgerEvent::Account(e),
            );
            first.get_or_insert(at);
            if let Some((series, issued_at)) = issued {
                let (year, sequence, number) = self.state.next_number(series, issued_at);
                self.state.seq.insert((series, year), sequence);
                self.push_global(
                    series.stream(),
                    issued_at,
                    series.event(InvoiceNumberAssigned {
                        number,
                        year,
                        sequence,
                        account_id: account.to_string(),
                    }),
                );
            }
        }
        (first.unwrap_or((0, 0)), staged)
    }

    /// Stages an event of a ledger-wide stream, expecting exactly the
    /// version the writer knows (it is the only appender, so a mismatch is
    /// a fault and stops the ledger).
    fn push_global(&mut self, stream: &str, at: DateTime<Utc>, e: LedgerEvent) {
        let v = self.state.globals.entry(stream.to_string()).or_insert(0);
        let before = *v;
        *v += 1;
        if let LedgerEvent::ClockAdvanced(c) = &e {
            let k = &mut self.state.clock;
            *k = Some(k.map_or(c.now, |k| k.max(c.now)));
        }
        self.group.push(stream, Some(before), at, e);
    }

    /// Decides one usage event.
    fn consume(&mut self, item: UsageItem, now: DateTime<Utc>) -> UsageOutcome {
        let outcome = self.consume_inner(item, now);
        let m = &self.shared.metrics;
        match &outcome {
            UsageOutcome::Accepted => m.usage_accepted.fetch_add(1, Relaxed),
            UsageOutcome::Duplicate => m.usage_duplicate.fetch_add(1, Relaxed),
            UsageOutcome::Rejected { reason, .. } => {
                m.reject(reason);
                0
            }
        };
        outcome
    }

    fn consume_inner(&mut self, item: UsageItem, now: DateTime<Utc>) -> UsageOutcome {
        let (account, mut input, given) = match item {
            UsageItem::Invalid { detail } => {
                return UsageOutcome::Rejected {
                    reason: "invalid",
                    detail,
                }
            }
            UsageItem::Valid {
                account_id,
                input,
                occurred_at_given,
            } => (account_id, input, occurred_at_given),
        };
        let Some(state) = self.state.accounts.get(&account).filter(|s| s.is_open()) else {
            return UsageOutcome::Rejected {
                reason: "unknown_account",
                detail: format!("no account {account:?}"),
            };
        };
        if !given {
            input.occurred_at = now;
        }
        let hash = idempotency::key(&account, &input.usage_id);
        let (existing, hash_taken) = self.find_usage(&account, &input.usage_id, hash);
        if let Some(prior) = existing {
            let same = prior.amount == input.amount
                && prior.product == input.product
                && prior.feature == input.feature
                && prior.metadata == input.metadata
                && (!given || prior.occurred_at == input.occurred_at);
            return if same {
                UsageOutcome::Duplicate
            } else {
                UsageOutcome::Rejected {
                    reason: "id_conflict",
                    detail: format!(
                        "usage id {:?} was recorded with other content",
                        input.usage_id
                    ),
                }
            };
        }
        let exact_id = hash_taken.then(|| input.usage_id.clone());
        match decide(state, Command::Consume(input), &Context::at(now)) {
            Err(e) => UsageOutcome::Rejected {
                reason: e.reason(),
                detail: e.to_string(),
            },
            Ok(events) => {
                let ((stream, event), _) = self.stage(&account, events, now);
                let slot = Slot::Pending { stream, event };
                let exact = match exact_id {
                    Some(id) => {
                        self.state.idem.insert_exact(&account, &id, slot);
                        Some((account, id))
                    }
                    None => {
                        self.state.idem.insert_hash(hash, slot);
                        None
                    }
                };
                self.group.pending_usage.push(PendingUsage {
                    hash,
                    exact,
                    stream,
                    event,
                });
                UsageOutcome::Accepted
            }
        }
    }

    /// Reads from the store every committed usage event that a lookup of
    /// this batch's keys will confirm against (fingerprint matches).
    fn prefetch_usage(&mut self, items: &[UsageItem]) -> Result<(), StoreError> {
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
    fn find_usage(
        &self,
        account: &str,
        usage_id: &str,
        hash: u64,
    ) -> (Option<CreditsConsumed>, bool) {
        let slots = self.state.idem.by_hash(hash);
        if slots.is_empty() {
            return (None, false);
        }
        for slot in slots {
            if let Some(c) = self.load_usage(account, slot) {
                if c.usage_id == usage_id {
                    return (Some(c), true);
                }
            }
        }
        // Another key owns this hash: look in the exact table.
        let found = self
            .state
            .idem
            .exact(account, usage_id)
            .and_then(|s| self.load_usage(account, s));
        (found, true)
    }

    fn load_usage(&self, account: &str, slot: Slot) -> Option<CreditsConsumed> {
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

    /// Hands the group to the committer (after the previous group's result
    /// is in) and goes on deciding. Its waiters are answered by the
    /// committer once it is durable and applied to the read models.
    fn flush(&mut self) {
        let group = std::mem::take(&mut self.group);
        if group.appends.is_empty() && group.replies.is_empty() {
            return;
        }
        if let Err(msg) = self.wait_inflight() {
            // This group was decided on top of the failed one: it fails too.
            for r in group.replies {
                r.send_err(&msg);
            }
            return;
        }
        if let Some(msg) = self.shared.health.failed() {
            for r in group.replies {
                r.send_err(&msg);
            }
            return;
        }
        let mut first = Vec::with_capacity(group.appends.len());
        let mut pos = self.head + 1;
        for a in &group.appends {
            first.push(pos);
            pos += a.events.len() as u64;
        }
        for p in &group.pending_usage {
            let position = Slot::Committed(first[p.stream as usize] + u64::from(p.event));
            match &p.exact {
                Some((account, id)) => self.state.idem.insert_exact(account, id, position),
                None => self.state.idem.insert_hash(p.hash, position),
            }
        }
        // Nothing is pending now (the next group is empty).
        self.state.idem.compact();
        self.head = pos - 1;
        if self.snapshots.due(self.head) {
            // The state is exactly the log up to `head` (this group
            // included); the read models are at the group before it.
            let read = self.shared.read.read();
            self.snapshots.take(&self.state, self.head, &read);
        }
        let sealed = Arc::new(Sealed {
            appends: group.appends,
            decoded: group.decoded,
            first,
            events: group.events,
            recorded_at: self.shared.clock.now(),
        });
        let commit = Commit {
            sealed: sealed.clone(),
            replies: group.replies,
        };
        let Some(tx) = &self.to_committer else {
            return;
        };
        if let Err(e) = tx.send(commit) {
            // The committer is gone (it only stops when the writer does).
            for r in e.into_inner().replies {
                r.send_err("the committer has stopped");
            }
            return;
        }
        self.inflight = Some(sealed);
    }

    /// Hands the group over and waits until it is committed.
    fn flush_sync(&mut self) {
        self.flush();
        let _ = self.wait_inflight();
    }

    /// Waits for the group in flight, if any (see [`Writer::finish_inflight`]).
    fn wait_inflight(&mut self) -> Result<(), String> {
        if self.inflight.take().is_none() {
            return Ok(());
        }
        let result = self
            .results
            .recv()
            .unwrap_or_else(|_| Err("the committer has stopped".into()));
        self.finish_inflight(result)
    }

    /// Takes in the committer's result. If the append failed (or landed
    /// elsewhere than the writer placed it), the writer's state holds
    /// decisions the store may not: it stops for good (fail-stop). It never
    /// reloads in place; a restart replays the log, the truth.
    fn finish_inflight(&mut self, result: Result<(), String>) -> Result<(), String> {
        if let Err(msg) = &result {
            self.shared.health.fail(msg);
        }
        result
    }

    /// Drops the group being decided after a fault: its decisions were
    /// taken on state that may not be stored.
    fn fail_group(&mut self) {
        let group = std::mem::take(&mut self.group);
        let reason = self
            .shared
            .health
            .failed()
            .unwrap_or_else(|| "an earlier group could not be stored".into());
        for r in group.replies {
            r.send_err(&format!("{reason}; nothing of this request was stored"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use accrue_core::{BillingFrequency, Period, Plan};
    use rust_decimal::Decimal;

    fn opened(id: &str) -> Arc<AccountOpened> {
        let t: DateTime<Utc> = "2026-01-15T00:00:00Z".parse().expect("time");
        let p = Period { start: t, end: t };
        Arc::new(AccountOpened {
            account_id: id.into(),
            name: id.into(),
            serial_number: "S-1".into(),
            billing_email: "a@example.com".into(),
            email_language: "en".into(),
            address: None,
            currency: "USD".into(),
            billing_frequency: BillingFrequency::Monthly,
            anchor_day: 15,
            opened_at: t,
            credit_period: p,
            billing_period: p,
            plan: Plan {
                full_seats: 1,
                full_seat_price: Decimal::ONE,
                viewer_seats: 0,
                viewer_seat_price: Decimal::ZERO,
                data_management: false,
                data_management_price: Decimal::ZERO,
            },
            base_credits: Decimal::ZERO,
            tax: None,
        })
    }

    #[test]
    fn invoice_owners_by_sequence_and_by_name() {
        assert_eq!(
            InvoiceOwners::key("INV-2026-000042"),
            Some((2026 << 32) | 42)
        );
        assert_eq!(
            InvoiceOwners::key("INV-2026-1234567"),
            Some((2026 << 32) | 1_234_567)
        );
        for odd in [
            "INV-2026-42",
            "INV-+2026-000042",
            "INV-2026-",
            "X-2026-000001",
            "",
        ] {
            assert_eq!(InvoiceOwners::key(odd), None, "{odd}");
        }
        let mut o = InvoiceOwners::default();
        o.insert("INV-2026-000001", "acme", Some(&opened("acme")));
        o.insert("INV-2026-000002", "beta", Some(&opened("beta")));
        // A number in another spelling, and an owner without its facts.
        o.insert("INV-2026-3", "gamma", Some(&opened("gamma")));
        o.insert("INV-2027-000001", "delta", None);
        assert_eq!(o.by_seq.len(), 2);
        assert_eq!(o.get("INV-2026-000001").as_deref(), Some("acme"));
        assert_eq!(o.get("INV-2026-000002").as_deref(), Some("beta"));
        assert_eq!(o.get("INV-2026-3").as_deref(), Some("gamma"));
        assert_eq!(o.get("INV-2027-000001").as_deref(), Some("delta"));
        assert_eq!(o.get("INV-2026-000003"), None);
        assert_eq!(o.get("INV-2026-000004"), None);
    }
}
