//! The writer thread: takes jobs in arrival order, decides commands,
//! usage and clock moves, and stages their events into the group.

use super::*;

/// How often the writer wakes without work (system-clock period closes).
pub(super) const TICK: Duration = Duration::from_millis(500);

pub(super) struct Writer {
    pub(super) shared: Arc<Shared>,
    pub(super) state: State,
    pub(super) group: Group,
    /// The position the next sealed event gets, less one: the store's head
    /// plus every event in flight (the writer is the store's only appender).
    pub(super) head: u64,
    /// The group the committer is working on, if any (at most one).
    pub(super) inflight: Option<Arc<Sealed>>,
    pub(super) to_committer: Option<Sender<Commit>>,
    pub(super) results: Receiver<Result<(), String>>,
    pub(super) committer: Option<JoinHandle<()>>,
    /// Stored events read for the usage job being decided (position →
    /// stream and event; `None`: no event there).
    pub(super) prefetched: HashMap<u64, Option<(String, LedgerEvent)>>,
    /// Snapshots of the state as groups are sealed (`snapshot.rs`).
    pub(super) snapshots: snapshot::Snapshotter,
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

pub(super) fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// After a fault: answers every queued request (and any that still
/// arrives before the handles notice) with the fault, until all senders
/// are gone or a stop is asked.
pub(super) fn refuse_queued(jobs: &Receiver<Job>, reason: &str) {
    while let Ok(job) = jobs.recv_timeout(Duration::from_millis(200)) {
        if matches!(job, Job::Stop) {
            return;
        }
        refuse(job, LedgerError::Failed(reason.to_string()));
    }
}

/// Answers a job the writer will not run.
pub(super) fn refuse(job: Job, err: LedgerError) {
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

impl Writer {
    /// Decides jobs one at a time. A decided group goes to the committer as
    /// soon as the committer is free; while it is busy, the writer goes on
    /// deciding what arrives, so the next group is ready when it finishes.
    pub(super) fn run(mut self, jobs: &Receiver<Job>) {
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
        // A run on its way to the store: let it land, so a closed ledger
        // releases its store (and its lock) right away.
        self.state.idem.finish_spills(Duration::from_secs(60));
        self.snapshots.stop();
    }

    /// Handles one job; true when the writer should stop.
    pub(super) fn handle(&mut self, job: Job) -> bool {
        match job {
            Job::Usage { items, reply } => {
                // Every store read the decisions need happens first: a read
                // that fails answers 503 with nothing decided, so a retry
                // can never be counted twice.
                self.state.idem.trim_cache();
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

    pub(super) fn advance_clock(
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
    pub(super) fn close_due(&mut self, now: DateTime<Utc>) {
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

    pub(super) fn command(
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
    pub(super) fn reference_elsewhere(
        &self,
        account: &str,
        command: &Command,
    ) -> Option<LedgerError> {
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
    pub(super) fn decide_and_stage(
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
    pub(super) fn stage(
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
    pub(super) fn push_global(&mut self, stream: &str, at: DateTime<Utc>, e: LedgerEvent) {
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
    pub(super) fn consume(&mut self, item: UsageItem, now: DateTime<Utc>) -> UsageOutcome {
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

    pub(super) fn consume_inner(&mut self, item: UsageItem, now: DateTime<Utc>) -> UsageOutcome {
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
}
