//! The single writer: owns every account's decision state, decides jobs in
//! arrival order, and commits them in groups. See the crate docs for why.
//!
//! By job: `state.rs` (the decision state, its numbering series and its
//! load from a snapshot and the log), `group.rs` (a group being decided and
//! the sealed group on its way), `commit.rs` (the committer thread and the
//! writer's hand-over to it), `run.rs` (the writer thread: jobs, commands,
//! the clock, usage), `lookup.rs` (stored usage events an idempotency hit or
//! a cancellation is confirmed against).

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

#[path = "../license.rs"]
pub(crate) mod license;

#[path = "../dunning.rs"]
pub(crate) mod dunning;

mod commit;
mod group;
mod lookup;
mod run;
pub(crate) mod state;

use commit::*;
use group::*;
use run::*;
use state::*;

pub(crate) use run::spawn;
pub use state::hold_filter_loads;
pub(crate) use state::{load, load_with, Series, State};
