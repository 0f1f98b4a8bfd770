//! A group of decisions being staged, and the sealed group the committer
//! appends.

use super::*;

/// Most events decided into one group before it is committed.
pub(super) const MAX_GROUP_EVENTS: usize = 20_000;

pub(super) enum Reply {
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
    pub(super) fn send_ok(self) {
        match self {
            Reply::Usage(tx, v) => drop(tx.send(Ok(v))),
            Reply::Command(tx, v) => drop(tx.send(Ok(v))),
            Reply::Clock(tx, v) => drop(tx.send(Ok(v))),
            Reply::License(tx, v) => drop(tx.send(Ok(v))),
        }
    }
    pub(super) fn send_err(self, e: &str) {
        let err = || LedgerError::Failed(e.to_string());
        match self {
            Reply::Usage(tx, _) => drop(tx.send(Err(err()))),
            Reply::Command(tx, _) => drop(tx.send(Err(err()))),
            Reply::Clock(tx, _) => drop(tx.send(Err(err()))),
            Reply::License(tx, _) => drop(tx.send(Err(err()))),
        }
    }
}

pub(super) struct PendingUsage {
    pub(super) hash: u64,
    /// (account, usage id) when the key lives in the exact side table.
    pub(super) exact: Option<(String, String)>,
    pub(super) stream: u32,
    pub(super) event: u32,
}

/// Events decided but not yet committed, and who waits for them.
#[derive(Default)]
pub(super) struct Group {
    pub(super) appends: Vec<StreamAppend>,
    pub(super) decoded: Vec<Vec<LedgerEvent>>,
    /// Stream name → its append.
    pub(super) index: HashMap<String, usize>,
    /// Account id → its stream's append (saves naming the stream per event).
    pub(super) accounts: HashMap<String, usize>,
    pub(super) pending_usage: Vec<PendingUsage>,
    pub(super) replies: Vec<Reply>,
    pub(super) events: usize,
}

impl Group {
    pub(super) fn is_empty(&self) -> bool {
        self.appends.is_empty() && self.replies.is_empty()
    }

    /// [`Group::push`] for an account's stream.
    pub(super) fn push_account(
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

    pub(super) fn push_at(
        &mut self,
        i: usize,
        occurred_at: DateTime<Utc>,
        e: LedgerEvent,
    ) -> (u32, u32) {
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
    pub(super) fn push(
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
pub(super) fn occurred_at(e: &AccountEvent, now: DateTime<Utc>) -> DateTime<Utc> {
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
pub(super) struct Sealed {
    pub(super) appends: Vec<StreamAppend>,
    pub(super) decoded: Vec<Vec<LedgerEvent>>,
    /// The position each append's first event gets.
    pub(super) first: Vec<u64>,
    pub(super) events: usize,
    pub(super) recorded_at: DateTime<Utc>,
}

impl Sealed {
    /// The event at `position`, if this group holds it.
    pub(super) fn at(&self, position: u64) -> Option<(&str, &LedgerEvent)> {
        let i = self
            .first
            .partition_point(|f| *f <= position)
            .checked_sub(1)?;
        let e = self.decoded[i].get((position - self.first[i]) as usize)?;
        Some((self.appends[i].stream.as_str(), e))
    }
}
