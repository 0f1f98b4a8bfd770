//! The license server's rules (SPEC §7): control number, term and expiry,
//! activations (limit, churn, release, reset, release after silence), last
//! sync, sessions and the seats they use. Pure like the rest of the core:
//! `now`, ids, control numbers and the release-after window arrive in the
//! command or the [`Context`].
//!
//! The term covers its `term_end` date inclusively: a license whose term ends
//! on 2026-03-31 expires at 2026-04-01T00:00:00Z (see [`expiry_instant`]).

use chrono::{DateTime, Duration, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::account::{AccountState, Context};
use crate::error::DomainError;
use crate::events::{AccountEvent, InvoiceLine};
use crate::period::Period;

/// Activations a license allows unless `PUT /license` says otherwise.
pub const DEFAULT_MAX_ACTIVATIONS: u32 = 1;
/// Most activations a license may allow.
pub const MAX_MAX_ACTIVATIONS: u32 = 1_000;
/// A server silent this long counts as having no sessions.
pub const SESSION_SILENCE_SECS: i64 = 30 * 60;
/// Activations of one license within this window are bounded (churn).
pub const CHURN_WINDOW_HOURS: i64 = 24;
/// At most `CHURN_FACTOR × max_activations` activations per window.
pub const CHURN_FACTOR: u32 = 3;
/// Most sessions in one snapshot.
pub const MAX_SESSIONS: usize = 10_000;
/// Released activations kept for the listing (older ones are forgotten by
/// the state; the log keeps them all).
const RELEASED_KEPT: usize = 32;
/// Longest control number, server id, hostname, session field accepted.
pub const MAX_FIELD_CHARS: usize = 256;

// ------------------------------------------------------------------ events

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlNumberIssued {
    pub control_number: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LicenseTermChanged {
    pub term_end: Option<NaiveDate>,
    pub max_activations: u32,
    pub previous_term_end: Option<NaiveDate>,
    pub previous_max_activations: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LicenseExpired {
    pub term_end: NaiveDate,
    pub expired_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LicenseReactivated {
    pub term_end: Option<NaiveDate>,
    pub reactivated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivationCreated {
    pub activation_id: String,
    pub server_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    pub activated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseReason {
    /// The server released itself (`DELETE /v1/activation`).
    Server,
    /// An admin released it.
    Admin,
    /// It had not synced for the release-after window.
    Inactive,
}

impl ReleaseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseReason::Server => "server",
            ReleaseReason::Admin => "admin",
            ReleaseReason::Inactive => "inactive",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivationReleased {
    pub activation_id: String,
    pub server_id: String,
    pub reason: ReleaseReason,
    pub released_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivationsReset {
    pub activation_ids: Vec<String>,
    pub reset_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LicenseSynced {
    pub activation_id: String,
    pub synced_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserType {
    Full,
    Viewer,
    SystemManager,
}

impl UserType {
    pub fn as_str(self) -> &'static str {
        match self {
            UserType::Full => "full",
            UserType::Viewer => "viewer",
            UserType::SystemManager => "system_manager",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionClient {
    Web,
    Addin,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub user_name: String,
    pub user_type: UserType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    pub client: SessionClient,
    pub last_accessed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionsReported {
    pub activation_id: String,
    pub sessions: Vec<Session>,
    pub reported_at: DateTime<Utc>,
}

// ------------------------------------------------------------------- state

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ActivationStatus {
    Active,
    Released(ReleaseReason),
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Activation {
    pub id: String,
    pub server_id: String,
    pub hostname: Option<String>,
    pub activated_at: DateTime<Utc>,
    pub last_sync_at: Option<DateTime<Utc>>,
    pub status: ActivationStatus,
    pub released_at: Option<DateTime<Utc>>,
    pub sessions: Vec<Session>,
    pub sessions_at: Option<DateTime<Utc>>,
}

impl Activation {
    pub fn is_active(&self) -> bool {
        self.status == ActivationStatus::Active
    }
    /// When accrue last heard of this server (activation, poll, sessions).
    pub fn last_seen(&self) -> DateTime<Utc> {
        let mut t = self.activated_at;
        for u in [self.last_sync_at, self.sessions_at].into_iter().flatten() {
            t = t.max(u);
        }
        t
    }
    /// Its sessions, unless it is released or has been silent too long.
    pub fn live_sessions(&self, now: DateTime<Utc>) -> &[Session] {
        let silent = now - self.last_seen() >= Duration::seconds(SESSION_SILENCE_SECS);
        if !self.is_active() || silent {
            &[]
        } else {
            &self.sessions
        }
    }
}

/// An account's license, once its control number is issued.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LicenseState {
    pub control_number: Box<str>,
    pub term_end: Option<NaiveDate>,
    pub max_activations: u32,
    pub expired: bool,
    /// The stream version of the last event that changed a claim of the
    /// definition (plan, credits, term, status): the definition's version.
    pub definition_version: u64,
    /// Active activations and the last few released ones, in activation order.
    pub activations: Vec<Activation>,
    /// When the recent activations were created (for the churn bound).
    pub recent_activations: Vec<DateTime<Utc>>,
}

impl LicenseState {
    pub fn active(&self) -> impl Iterator<Item = &Activation> {
        self.activations.iter().filter(|a| a.is_active())
    }
    pub fn active_count(&self) -> u32 {
        self.active().count() as u32
    }
    pub fn activation(&self, id: &str) -> Option<&Activation> {
        self.activations.iter().find(|a| a.id == id)
    }
    fn activation_mut(&mut self, id: &str) -> Option<&mut Activation> {
        self.activations.iter_mut().find(|a| a.id == id)
    }
    /// The definition's status claim.
    pub fn status(&self) -> &'static str {
        if self.expired {
            "expired"
        } else {
            "active"
        }
    }
    /// The instant the term ends, if it has one.
    pub fn expiry(&self) -> Option<DateTime<Utc>> {
        self.term_end.map(expiry_instant)
    }
    /// The earliest instant at which the clock has something to decide for
    /// this license: its expiry, or an activation's release after silence.
    pub fn next_due(&self, release_after_days: u32) -> Option<DateTime<Utc>> {
        let expiry = self.expiry().filter(|_| !self.expired);
        let release = (release_after_days > 0)
            .then(|| {
                self.active()
                    .map(|a| a.last_seen() + Duration::days(i64::from(release_after_days)))
                    .min()
            })
            .flatten();
        match (expiry, release) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The term covers `term_end` inclusively: it ends at the next midnight UTC.
pub fn expiry_instant(term_end: NaiveDate) -> DateTime<Utc> {
    let next = term_end.succ_opt().unwrap_or(term_end);
    next.and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc()
}

/// Sessions across the license's live activations: per user type the
/// sessions and the distinct users, and per client the sessions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionSummary {
    pub total: u32,
    /// (sessions, distinct users) for full, viewer, system_manager.
    pub by_type: [(u32, u32); 3],
    pub web: u32,
    pub addin: u32,
}

fn type_index(t: UserType) -> usize {
    match t {
        UserType::Full => 0,
        UserType::Viewer => 1,
        UserType::SystemManager => 2,
    }
}

/// Summarises the sessions of every live activation, replacing one
/// activation's sessions with `replace` when given (to check a snapshot
/// before it is stored).
pub fn summarize(
    license: &LicenseState,
    now: DateTime<Utc>,
    replace: Option<(&str, &[Session])>,
) -> SessionSummary {
    let mut parts: Vec<&[Session]> = Vec::new();
    let mut replaced = false;
    for a in license.active() {
        match replace {
            Some((id, sessions)) if id == a.id => {
                parts.push(sessions);
                replaced = true;
            }
            _ => parts.push(a.live_sessions(now)),
        }
    }
    if let (Some((_, sessions)), false) = (replace, replaced) {
        parts.push(sessions);
    }
    let mut users: [std::collections::BTreeSet<&str>; 3] = Default::default();
    let mut s = SessionSummary::default();
    for x in parts.into_iter().flatten() {
        let i = type_index(x.user_type);
        s.total += 1;
        s.by_type[i].0 += 1;
        // A user name is one user across servers.
        users[i].insert(x.user_name.as_str());
        match x.client {
            SessionClient::Web => s.web += 1,
            SessionClient::Addin => s.addin += 1,
        }
    }
    for (i, u) in users.iter().enumerate() {
        s.by_type[i].1 = u.len() as u32;
    }
    s
}

// ---------------------------------------------------------------- commands

/// Which activation a release names.
#[derive(Debug, Clone, PartialEq)]
pub enum ActivationRef {
    Id(String),
    ServerId(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum LicenseCommand {
    /// Issue the control number (random, from the caller); no-op once issued.
    IssueControlNumber {
        control_number: String,
    },
    /// `PUT /v1/accounts/{id}/license`.
    SetTerm {
        term_end: Option<NaiveDate>,
        max_activations: Option<u32>,
    },
    /// `POST /v1/activations`: the caller found the account by serial number.
    Activate {
        control_number: String,
        server_id: String,
        hostname: Option<String>,
        /// Used only if a new activation is created.
        activation_id: String,
    },
    Release {
        activation: ActivationRef,
        reason: ReleaseReason,
    },
    Reset,
    /// A poll, coalesced by the caller.
    Sync {
        activation_id: String,
        at: DateTime<Utc>,
    },
    ReportSessions {
        activation_id: String,
        sessions: Vec<Session>,
    },
    /// The clock reached [`LicenseState::next_due`]: expire, release silent.
    Tick {
        release_after_days: u32,
    },
}

/// Why a license command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LicenseError {
    #[error("the serial number and control number do not match a license")]
    BadCredentials,
    /// No account of this ledger has the serial number. Answered exactly
    /// as [`LicenseError::BadCredentials`] (never say which half was
    /// wrong); a cluster's front uses it to look for the partition that
    /// has the serial without counting a failure where it is not.
    #[error("the serial number and control number do not match a license")]
    UnknownSerial,
    #[error("the license allows {max} active activations; release one first")]
    ActivationLimitReached { max: u32 },
    #[error("more than {limit} activations of this license within 24 hours")]
    ActivationChurn { limit: u32 },
    #[error("the term end {term_end} is before today ({today})")]
    TermEndInPast {
        term_end: NaiveDate,
        today: NaiveDate,
    },
    #[error("the license expired at the end of {term_end}")]
    Expired { term_end: NaiveDate },
    #[error("no active activation {0:?}")]
    UnknownActivation(String),
    #[error("the license has no control number yet")]
    NotIssued,
}

impl LicenseError {
    pub fn reason(&self) -> &'static str {
        match self {
            LicenseError::BadCredentials | LicenseError::UnknownSerial => "unauthorized",
            LicenseError::ActivationLimitReached { .. } => "activation_limit_reached",
            LicenseError::ActivationChurn { .. } => "activation_churn",
            LicenseError::TermEndInPast { .. } => "term_end_in_past",
            LicenseError::Expired { .. } => "license_expired",
            LicenseError::UnknownActivation(_) => "unknown_activation",
            LicenseError::NotIssued => "not_issued",
        }
    }
}

fn err(e: LicenseError) -> DomainError {
    DomainError::License(e)
}

/// Decides a license command for an open account.
pub fn decide(
    state: &AccountState,
    command: LicenseCommand,
    ctx: &Context,
) -> Result<Vec<AccountEvent>, DomainError> {
    let issued = state.license.as_deref();
    if let LicenseCommand::IssueControlNumber { control_number } = command {
        if issued.is_some() {
            return Ok(vec![]);
        }
        check_field("control_number", &control_number)?;
        return Ok(vec![AccountEvent::ControlNumberIssued(
            ControlNumberIssued { control_number },
        )]);
    }
    let l = issued.ok_or(err(LicenseError::NotIssued))?;
    match command {
        LicenseCommand::IssueControlNumber { .. } => unreachable!("handled above"),
        LicenseCommand::SetTerm {
            term_end,
            max_activations,
        } => set_term(l, term_end, max_activations, ctx),
        LicenseCommand::Activate {
            control_number,
            server_id,
            hostname,
            activation_id,
        } => activate(l, control_number, server_id, hostname, activation_id, ctx),
        LicenseCommand::Release { activation, reason } => {
            let a = match &activation {
                ActivationRef::Id(id) => l.active().find(|a| &a.id == id),
                ActivationRef::ServerId(s) => l.active().find(|a| &a.server_id == s),
            };
            let a = a.ok_or_else(|| {
                err(LicenseError::UnknownActivation(match activation {
                    ActivationRef::Id(s) | ActivationRef::ServerId(s) => s,
                }))
            })?;
            Ok(vec![AccountEvent::ActivationReleased(ActivationReleased {
                activation_id: a.id.clone(),
                server_id: a.server_id.clone(),
                reason,
                released_at: ctx.now,
            })])
        }
        LicenseCommand::Reset => {
            let ids: Vec<String> = l.active().map(|a| a.id.clone()).collect();
            if ids.is_empty() {
                return Ok(vec![]);
            }
            Ok(vec![AccountEvent::ActivationsReset(ActivationsReset {
                activation_ids: ids,
                reset_at: ctx.now,
            })])
        }
        LicenseCommand::Sync { activation_id, at } => {
            let a = l
                .active()
                .find(|a| a.id == activation_id)
                .ok_or(err(LicenseError::UnknownActivation(activation_id.clone())))?;
            if a.last_sync_at.is_some_and(|t| t >= at) {
                return Ok(vec![]);
            }
            Ok(vec![AccountEvent::LicenseSynced(LicenseSynced {
                activation_id,
                synced_at: at,
            })])
        }
        LicenseCommand::ReportSessions {
            activation_id,
            sessions,
        } => report_sessions(state, l, activation_id, sessions, ctx),
        LicenseCommand::Tick { release_after_days } => Ok(tick(l, release_after_days, ctx)),
    }
}

fn check_field(name: &str, v: &str) -> Result<(), DomainError> {
    if v.is_empty() || v.chars().count() > MAX_FIELD_CHARS || v.chars().any(char::is_control) {
        return Err(DomainError::Invalid(format!(
            "{name} must be 1..={MAX_FIELD_CHARS} characters without control characters"
        )));
    }
    Ok(())
}

fn set_term(
    l: &LicenseState,
    term_end: Option<NaiveDate>,
    max_activations: Option<u32>,
    ctx: &Context,
) -> Result<Vec<AccountEvent>, DomainError> {
    let today = ctx.now.date_naive();
    if let Some(t) = term_end.filter(|t| *t < today) {
        return Err(err(LicenseError::TermEndInPast { term_end: t, today }));
    }
    let max = max_activations.unwrap_or(l.max_activations);
    if !(1..=MAX_MAX_ACTIVATIONS).contains(&max) {
        return Err(DomainError::Invalid(format!(
            "max_activations must be 1..={MAX_MAX_ACTIVATIONS}"
        )));
    }
    let mut events = Vec::new();
    if term_end != l.term_end || max != l.max_activations {
        events.push(AccountEvent::LicenseTermChanged(LicenseTermChanged {
            term_end,
            max_activations: max,
            previous_term_end: l.term_end,
            previous_max_activations: l.max_activations,
        }));
    }
    // A term end of today or later (or none) lies ahead: an expired
    // license comes back.
    if l.expired {
        events.push(AccountEvent::LicenseReactivated(LicenseReactivated {
            term_end,
            reactivated_at: ctx.now,
        }));
    }
    Ok(events)
}

fn activate(
    l: &LicenseState,
    control_number: String,
    server_id: String,
    hostname: Option<String>,
    activation_id: String,
    ctx: &Context,
) -> Result<Vec<AccountEvent>, DomainError> {
    if !constant_time_eq(control_number.as_bytes(), l.control_number.as_bytes()) {
        return Err(err(LicenseError::BadCredentials));
    }
    check_field("server_id", &server_id)?;
    if let Some(h) = &hostname {
        check_field("hostname", h)?;
    }
    if l.active().any(|a| a.server_id == server_id) {
        // The same server again: the same activation, nothing new.
        return Ok(vec![]);
    }
    if l.active_count() >= l.max_activations {
        return Err(err(LicenseError::ActivationLimitReached {
            max: l.max_activations,
        }));
    }
    let window_start = ctx.now - Duration::hours(CHURN_WINDOW_HOURS);
    let recent = l
        .recent_activations
        .iter()
        .filter(|t| **t > window_start)
        .count() as u32;
    let limit = CHURN_FACTOR * l.max_activations;
    if recent >= limit {
        return Err(err(LicenseError::ActivationChurn { limit }));
    }
    Ok(vec![AccountEvent::ActivationCreated(ActivationCreated {
        activation_id,
        server_id,
        hostname,
        activated_at: ctx.now,
    })])
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn report_sessions(
    state: &AccountState,
    l: &LicenseState,
    activation_id: String,
    sessions: Vec<Session>,
    ctx: &Context,
) -> Result<Vec<AccountEvent>, DomainError> {
    if sessions.len() > MAX_SESSIONS {
        return Err(DomainError::Invalid(format!(
            "at most {MAX_SESSIONS} sessions per snapshot, got {}",
            sessions.len()
        )));
    }
    for s in &sessions {
        check_field("session id", &s.id)?;
        check_field("user_name", &s.user_name)?;
        if let Some(m) = &s.module {
            check_field("module", m)?;
        }
    }
    if !l.active().any(|a| a.id == activation_id) {
        return Err(err(LicenseError::UnknownActivation(activation_id)));
    }
    let plan = state.plan().expect("an open account has a plan");
    let summary = summarize(l, ctx.now, Some((&activation_id, &sessions)));
    for (role, i, licensed) in [
        ("full", 0, plan.full_seats),
        ("viewer", 1, plan.viewer_seats),
    ] {
        let users = summary.by_type[i].1;
        if users > licensed {
            return Err(DomainError::SeatLimitExceeded {
                role,
                in_use: users,
                licensed,
            });
        }
    }
    Ok(vec![AccountEvent::SessionsReported(SessionsReported {
        activation_id,
        sessions,
        reported_at: ctx.now,
    })])
}

fn tick(l: &LicenseState, release_after_days: u32, ctx: &Context) -> Vec<AccountEvent> {
    let mut events = Vec::new();
    if let (Some(term_end), false) = (l.term_end, l.expired) {
        let at = expiry_instant(term_end);
        if at <= ctx.now {
            events.push(AccountEvent::LicenseExpired(LicenseExpired {
                term_end,
                expired_at: at,
            }));
        }
    }
    if release_after_days > 0 {
        let window = Duration::days(i64::from(release_after_days));
        for a in l.active() {
            if a.last_seen() + window <= ctx.now {
                events.push(AccountEvent::ActivationReleased(ActivationReleased {
                    activation_id: a.id.clone(),
                    server_id: a.server_id.clone(),
                    reason: ReleaseReason::Inactive,
                    released_at: ctx.now,
                }));
            }
        }
    }
    events
}

/// Usage on an expired license is refused.
pub fn check_usage(state: &AccountState) -> Result<(), DomainError> {
    match state.license.as_deref() {
        Some(l) if l.expired => Err(err(LicenseError::Expired {
            term_end: l.term_end.unwrap_or_default(),
        })),
        _ => Ok(()),
    }
}

/// The subscription lines of a billing period, limited to the license term:
/// none for a period starting at or after the term's end; a period the
/// term ends inside is prorated by the day (days of the period before the
/// expiry instant / days in the period), like a mid-period plan change.
pub fn limit_to_term(
    state: &AccountState,
    billing: Period,
    lines: Vec<InvoiceLine>,
) -> Vec<InvoiceLine> {
    let Some(l) = state.license.as_deref() else {
        return lines;
    };
    if l.expired {
        return vec![];
    }
    let Some(end) = l.expiry() else {
        return lines;
    };
    if end <= billing.start {
        return vec![];
    }
    if end >= billing.end {
        return lines;
    }
    let days = Decimal::from(billing.days().max(1));
    let kept = Decimal::from((end - billing.start).num_days());
    let fraction = kept / days;
    let last = l.term_end.map(|d| d.to_string()).unwrap_or_default();
    lines
        .into_iter()
        .map(|mut line| {
            line.unit_price *= fraction;
            line.amount = line.quantity * line.unit_price;
            line.description = format!("{} (prorated to the term end {last})", line.description);
            line
        })
        .collect()
}

/// Whether an event changes a claim of the definition (other than
/// `iat`/`exp`): the definition's version moves with it.
pub fn changes_claims(event: &AccountEvent) -> bool {
    match event {
        AccountEvent::PlanChanged(_)
        | AccountEvent::CreditLimitSet(_)
        | AccountEvent::LicenseTermChanged(_)
        | AccountEvent::LicenseExpired(_)
        | AccountEvent::LicenseReactivated(_)
        | AccountEvent::LicenseSuspended(_)
        | AccountEvent::LicenseReinstated(_)
        | AccountEvent::ControlNumberIssued(_) => true,
        AccountEvent::PeriodClosed(p) => p.limit != p.next_limit,
        _ => false,
    }
}

/// Folds a license event into the account's state.
pub fn apply(state: &mut AccountState, event: &AccountEvent) {
    if let AccountEvent::ControlNumberIssued(e) = event {
        state.license = Some(Box::new(LicenseState {
            control_number: e.control_number.as_str().into(),
            term_end: None,
            max_activations: DEFAULT_MAX_ACTIVATIONS,
            expired: false,
            definition_version: state.version,
            activations: Vec::new(),
            recent_activations: Vec::new(),
        }));
        return;
    }
    let Some(l) = state.license.as_deref_mut() else {
        debug_assert!(false, "a license event before the control number");
        return;
    };
    match event {
        AccountEvent::LicenseTermChanged(e) => {
            l.term_end = e.term_end;
            l.max_activations = e.max_activations;
        }
        AccountEvent::LicenseExpired(_) => l.expired = true,
        AccountEvent::LicenseReactivated(_) => l.expired = false,
        AccountEvent::ActivationCreated(e) => {
            l.activations.push(Activation {
                id: e.activation_id.clone(),
                server_id: e.server_id.clone(),
                hostname: e.hostname.clone(),
                activated_at: e.activated_at,
                last_sync_at: None,
                status: ActivationStatus::Active,
                released_at: None,
                sessions: Vec::new(),
                sessions_at: None,
            });
            l.recent_activations.push(e.activated_at);
            let window_start = e.activated_at - Duration::hours(CHURN_WINDOW_HOURS);
            l.recent_activations.retain(|t| *t > window_start);
        }
        AccountEvent::ActivationReleased(e) => {
            if let Some(a) = l.activation_mut(&e.activation_id) {
                release(a, e.reason, e.released_at);
            }
            forget_old(l);
        }
        AccountEvent::ActivationsReset(e) => {
            for id in &e.activation_ids {
                if let Some(a) = l.activation_mut(id) {
                    release(a, ReleaseReason::Admin, e.reset_at);
                }
            }
            forget_old(l);
        }
        AccountEvent::LicenseSynced(e) => {
            if let Some(a) = l.activation_mut(&e.activation_id) {
                a.last_sync_at = Some(e.synced_at);
            }
        }
        AccountEvent::SessionsReported(e) => {
            if let Some(a) = l.activation_mut(&e.activation_id) {
                a.sessions = e.sessions.clone();
                a.sessions_at = Some(e.reported_at);
            }
        }
        _ => {}
    }
}

fn release(a: &mut Activation, reason: ReleaseReason, at: DateTime<Utc>) {
    a.status = ActivationStatus::Released(reason);
    a.released_at = Some(at);
    a.sessions = Vec::new();
}

fn forget_old(l: &mut LicenseState) {
    let released = l.activations.iter().filter(|a| !a.is_active()).count();
    let mut drop = released.saturating_sub(RELEASED_KEPT);
    l.activations.retain(|a| {
        if drop > 0 && !a.is_active() {
            drop -= 1;
            false
        } else {
            true
        }
    });
}

#[cfg(test)]
mod tests;
