//! The writer's decision state: accounts, idempotency index, numbering
//! series, stream versions; loaded from a snapshot and the log.

use super::*;

/// A gapless series of document numbers: invoices and credit notes share
/// the mechanism (a number event in the series' own stream, committed in
/// the same group as the document, expected version exact).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub(crate) enum Series {
    Invoice,
    CreditNote,
}

impl Series {
    pub(super) fn stream(self) -> &'static str {
        match self {
            Series::Invoice => INVOICE_SEQUENCE_STREAM,
            Series::CreditNote => CREDIT_NOTE_SEQUENCE_STREAM,
        }
    }
    pub(super) fn label(self) -> &'static str {
        match self {
            Series::Invoice => "invoice-number",
            Series::CreditNote => "credit-note-number",
        }
    }
    /// The number `seq` of `year`; `tag` (a partition's, in a cluster:
    /// `INV-YYYY-PP-NNNNNN`) keeps several ledgers' series apart.
    pub(super) fn format(self, tag: &str, year: i32, seq: u64) -> String {
        match (self, tag) {
            (Series::Invoice, "") => format_number(year, seq),
            (Series::CreditNote, "") => format!("CN-{year}-{seq:06}"),
            (Series::Invoice, t) => format!("INV-{year}-{t}-{seq:06}"),
            (Series::CreditNote, t) => format!("CN-{year}-{t}-{seq:06}"),
        }
    }
    pub(super) fn event(self, n: InvoiceNumberAssigned) -> LedgerEvent {
        match self {
            Series::Invoice => LedgerEvent::InvoiceNumberAssigned(n),
            Series::CreditNote => LedgerEvent::CreditNoteNumberAssigned(n),
        }
    }
    /// (year, sequence) of a number of this series in its canonical spelling.
    pub(super) fn parse(self, tag: &str, number: &str) -> Option<(i32, u64)> {
        let prefix = match self {
            Series::Invoice => "INV-",
            Series::CreditNote => "CN-",
        };
        let (year, seq) = number.strip_prefix(prefix)?.split_once('-')?;
        let seq = match tag {
            "" => seq,
            t => seq.strip_prefix(t)?.strip_prefix('-')?,
        };
        let (year, seq): (i32, u64) = (year.parse().ok()?, seq.parse().ok()?);
        (self.format(tag, year, seq) == number).then_some((year, seq))
    }
}

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
    /// The numbering tag of this ledger's series (the store's meta value
    /// `number_tag`; empty outside a cluster): see [`Series::format`].
    pub number_tag: String,
    /// Loading the usage key filter of the snapshot this state came from.
    pub filter_loader: Option<FilterLoader>,
}

/// The store's meta key holding a ledger's numbering tag.
pub const NUMBER_TAG_META: &str = "number_tag";

pub(super) fn account_of(stream: &str) -> Option<&str> {
    stream.strip_prefix("account-")
}

/// Which account each invoice belongs to (payments name only the invoice).
/// Numbers are `INV-<year>-<seq>` (see `format_number`): an entry is the
/// packed (year, seq) and the owner's shared `AccountOpened` (its id), 16
/// bytes instead of two strings. Any other number goes to a plain map.
#[derive(Default)]
pub(crate) struct InvoiceOwners {
    pub(super) by_seq: HashMap<u64, Arc<AccountOpened>>,
    pub(super) other: HashMap<String, String>,
}

impl InvoiceOwners {
    pub(super) fn key(number: &str) -> Option<u64> {
        let (year, seq) = number.strip_prefix("INV-")?.split_once('-')?;
        let (year, seq): (u32, u32) = (year.parse().ok()?, seq.parse().ok()?);
        // Only the canonical spelling (no sign, the same zero padding).
        let canonical = format_number(i32::try_from(year).ok()?, u64::from(seq)) == number;
        canonical.then_some((u64::from(year) << 32) | u64::from(seq))
    }

    pub(super) fn insert(
        &mut self,
        number: &str,
        account: &str,
        opened: Option<&Arc<AccountOpened>>,
    ) {
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
    pub(super) fn track(
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
    pub(super) fn apply_account(&mut self, account: &str, e: &AccountEvent) -> u64 {
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
    pub(super) fn apply_committed(&mut self, stream: &str, position: u64, e: &LedgerEvent) {
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
                    if self.idem.recent_holds(h) {
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

    pub(super) fn next_number(&self, series: Series, at: DateTime<Utc>) -> (i32, u64, String) {
        let year = at.year();
        let seq = self.seq.get(&(series, year)).copied().unwrap_or(0) + 1;
        (year, seq, series.format(&self.number_tag, year, seq))
    }

    pub(super) fn next_invoice_number(&self, at: DateTime<Utc>) -> (i32, u64, String) {
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
    pub(super) fn from_part(part: snapshot::WriterPart) -> State {
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
    pub(crate) fn digest(
        &self,
        usage: &[(String, String)],
        store: Option<&dyn EventStore>,
    ) -> String {
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
            // Spilled candidates from the store too: a digest compares
            // what a lookup finds, wherever the keys live.
            let h = idempotency::key(a, u);
            let mut slots = match store {
                Some(s) => self.idem.all_candidates(h, s).unwrap_or_default(),
                None => self.idem.by_hash(h),
            };
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
    load_with(store, true, None)
}

/// Loads a snapshot's usage key filter after the ledger is up; a store
/// that cannot be read is tried again (the filter stays pending, so every
/// fresh key is looked up in the store: slower, never wrong).
fn load_filter(
    load: idempotency::FilterLoad,
    section: &snapshot::FilterSection,
    store: &std::sync::Weak<dyn EventStore>,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let started = std::time::Instant::now();
    while FILTER_LOADS_HELD.load(Relaxed) > 0 && !stop.load(Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let mut wait = std::time::Duration::from_millis(100);
    loop {
        if stop.load(Relaxed) {
            return;
        }
        // The store only while an attempt runs: a closed ledger's store is
        // released (the writer joins this thread when it ends).
        let Some(s) = store.upgrade() else {
            return;
        };
        match load
            .clone_handle()
            .run_until(section.checked(), s.as_ref(), stop)
        {
            Ok(()) => {
                tracing::info!(
                    ms = started.elapsed().as_millis() as u64,
                    "usage key filter loaded"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "the usage key filter cannot be built yet; fresh ids are looked up in the store meanwhile")
            }
        }
        drop(s);
        let until = std::time::Instant::now() + wait;
        while std::time::Instant::now() < until {
            if stop.load(Relaxed) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        wait = (wait * 2).min(std::time::Duration::from_secs(10));
    }
}

/// While above 0, filters loaded after a start wait (a test holds them to
/// exercise a ledger whose filter is still pending).
static FILTER_LOADS_HELD: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Holds (`true`) or releases (`false`) the loading of usage key filters
/// after a start. A test aid: holds nest.
#[doc(hidden)]
pub fn hold_filter_loads(hold: bool) {
    use std::sync::atomic::Ordering::Relaxed;
    if hold {
        FILTER_LOADS_HELD.fetch_add(1, Relaxed);
    } else {
        FILTER_LOADS_HELD.fetch_sub(1, Relaxed);
    }
}

/// The thread loading a snapshot's usage key filter: stopped and joined
/// when the writer's state goes (so the store is free to open again).
pub(crate) struct FilterLoader {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for FilterLoader {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Runs of the usage index this large go to the store (SPEC §12):
/// `ACCRUE_USAGE_SPILL_KEYS`, default [`idempotency::SPILL_KEYS`].
pub(crate) fn spill_keys() -> usize {
    std::env::var("ACCRUE_USAGE_SPILL_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(idempotency::SPILL_KEYS)
}

/// [`load`], or (`use_snapshots` false) a replay of the whole log. With
/// `spill`, the usage index writes its large runs there, during the replay
/// already, so that memory does not grow with history.
pub(crate) fn load_with(
    store: &dyn EventStore,
    use_snapshots: bool,
    spill: Option<Arc<dyn EventStore>>,
) -> Result<(State, ReadModels, Option<DateTime<Utc>>), LedgerError> {
    let loaded = if use_snapshots {
        snapshot::load_newest(store)?
    } else {
        None
    };
    // The highest sequence issued per series and year, as the documents
    // say; a snapshot's own sequences were checked when it was taken.
    let tag = store.meta_get(NUMBER_TAG_META)?.unwrap_or_default();
    let mut issued: HashMap<(Series, i32), (u64, String)> = HashMap::new();
    let started = std::time::Instant::now();
    let mut filter = None;
    let (mut state, mut read, from) = match loaded {
        None => (State::default(), ReadModels::default(), 0),
        Some(l) => {
            let from = l.writer.position;
            for (series, year, seq) in &l.writer.seq {
                issued.insert((*series, *year), (*seq, series.format(&tag, *year, *seq)));
            }
            let state = State::from_part(l.writer);
            filter = Some((state.idem.filter_load(), l.filter));
            tracing::info!(
                position = from,
                ms = started.elapsed().as_millis() as u64,
                "writer state rebuilt from the snapshot"
            );
            (state, l.read, from)
        }
    };
    state.number_tag = tag;
    // The usage key filter: a live ledger loads it on a thread of its own
    // (the writer asks the store for every key until then); anything else
    // (a replay for a digest, `accrue snapshot`) waits for it here.
    if let Some((load, section)) = filter {
        match &spill {
            Some(store) => {
                let weak = Arc::downgrade(store);
                let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let stopping = stop.clone();
                let handle = std::thread::Builder::new()
                    .name("accrue-filter-load".into())
                    .spawn(move || load_filter(load, &section, &weak, &stopping))
                    .map_err(|e| {
                        LedgerError::Corrupt(format!(
                            "cannot start the usage key filter's loader: {e}"
                        ))
                    })?;
                state.filter_loader = Some(FilterLoader {
                    stop,
                    handle: Some(handle),
                });
            }
            None => load.run(section.checked(), store)?,
        }
    }
    if let Some(s) = spill {
        state.idem.spill_to(s, spill_keys());
    }
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
                if let Some((year, seq)) = series.parse(&state.number_tag, number) {
                    let e = issued.entry((series, year)).or_insert((0, String::new()));
                    if seq > e.0 {
                        *e = (seq, number.clone());
                    }
                }
            }
            state.apply_committed(&d.stream, d.position, &d.event);
        }
    })?;
    tracing::info!(
        from = read_from,
        ms = started.elapsed().as_millis() as u64,
        "ledger state loaded"
    );
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
    fn a_tagged_series_formats_and_parses_only_its_own_numbers() {
        assert_eq!(Series::Invoice.format("", 2026, 7), "INV-2026-000007");
        assert_eq!(Series::Invoice.format("02", 2026, 7), "INV-2026-02-000007");
        assert_eq!(
            Series::CreditNote.format("02", 2026, 7),
            "CN-2026-02-000007"
        );
        assert_eq!(
            Series::Invoice.parse("02", "INV-2026-02-000007"),
            Some((2026, 7))
        );
        assert_eq!(
            Series::CreditNote.parse("02", "CN-2026-02-000007"),
            Some((2026, 7))
        );
        // Another partition's number, an untagged one, a sloppy spelling.
        assert_eq!(Series::Invoice.parse("02", "INV-2026-01-000007"), None);
        assert_eq!(Series::Invoice.parse("02", "INV-2026-000007"), None);
        assert_eq!(Series::Invoice.parse("02", "INV-2026-02-7"), None);
        assert_eq!(Series::Invoice.parse("", "INV-2026-02-000007"), None);
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
