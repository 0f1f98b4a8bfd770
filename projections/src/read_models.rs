//! The read models: account overviews and invoices, folded from the global
//! order. `apply` is the only way in, for live updates and rebuilds alike, so
//! a rebuild gives the same models as the live ones.

use std::collections::HashMap;

use accrue_core::events::{InvoiceIssued, LedgerEvent};
use accrue_core::{AccountEvent, AccountState, InvoiceStatus, Period};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use crate::postings::Posting;

/// One status change of an invoice, as finance sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StatusChange {
    pub status: InvoiceStatus,
    pub at: DateTime<Utc>,
    pub position: u64,
    pub event: &'static str,
    pub reference: Option<String>,
}

/// The events that change an invoice's status (what [`StatusChange::event`]
/// names).
const STATUS_EVENTS: [&str; 6] = [
    "InvoiceIssued",
    "PaymentSucceeded",
    "PaymentFailed",
    "InvoiceVoided",
    "CreditNoteIssued",
    "PaymentRefunded",
];

/// A [`StatusChange`] as a snapshot stores it.
#[derive(serde::Deserialize)]
struct StatusChangeWire {
    status: InvoiceStatus,
    at: DateTime<Utc>,
    position: u64,
    event: String,
    reference: Option<String>,
}

impl<'de> serde::Deserialize<'de> for StatusChange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<StatusChange, D::Error> {
        let w = StatusChangeWire::deserialize(d)?;
        let event = STATUS_EVENTS
            .into_iter()
            .find(|e| *e == w.event)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown event {:?}", w.event)))?;
        Ok(StatusChange {
            status: w.status,
            at: w.at,
            position: w.position,
            event,
            reference: w.reference,
        })
    }
}

/// What the read models keep of an `InvoiceIssued`: all but its lines and
/// the customer's name and address, which are read from the log (at the
/// record's `position`) when an invoice is shown or rendered. Invoices
/// accumulate every month for every account; their lines stay on disk.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IssuedHead {
    pub number: String,
    pub issued_at: DateTime<Utc>,
    pub due_date: DateTime<Utc>,
    pub credit_period: Option<Period>,
    pub billing_period: Option<Period>,
    pub total: Decimal,
    /// Boxed strings: the record then fits the allocator's 256-byte class.
    pub currency: Box<str>,
    pub serial_number: Box<str>,
}

impl IssuedHead {
    pub fn of(i: &InvoiceIssued) -> IssuedHead {
        IssuedHead {
            number: i.number.clone(),
            issued_at: i.issued_at,
            due_date: i.due_date,
            credit_period: i.credit_period,
            billing_period: i.billing_period,
            total: i.total,
            currency: i.currency.as_str().into(),
            serial_number: i.serial_number.as_str().into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InvoiceRecord {
    pub account_id: String,
    /// The global position of its `InvoiceIssued` event.
    pub position: u64,
    pub issued: IssuedHead,
    pub status: InvoiceStatus,
    /// Status changes after the issue (payments, voids); see
    /// [`InvoiceRecord::history`] for the whole history.
    pub changes: Vec<StatusChange>,
    pub pdf_sha256: Option<String>,
    /// The last failed payment's reason, while unpaid.
    pub last_failure: Option<String>,
}

impl InvoiceRecord {
    /// The whole status history: issued (unpaid), then every change.
    pub fn history(&self) -> Vec<StatusChange> {
        let issued = StatusChange {
            status: InvoiceStatus::Unpaid,
            at: self.issued.issued_at,
            position: self.position,
            event: "InvoiceIssued",
            reference: None,
        };
        std::iter::once(issued)
            .chain(self.changes.iter().cloned())
            .collect()
    }

    /// The status as it stood at `t` (from the status history).
    pub fn status_at(&self, t: DateTime<Utc>) -> InvoiceStatus {
        self.changes
            .iter()
            .take_while(|h| h.at <= t)
            .last()
            .map_or(InvoiceStatus::Unpaid, |h| h.status)
    }
}

#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReadModels {
    /// The global position applied last (the checkpoint).
    pub position: u64,
    /// Boxed, as the writer's: the table holds 32 bytes a slot.
    pub accounts: HashMap<String, Box<AccountState>>,
    /// Boxed: the table then holds 32 bytes a slot, not a whole record.
    pub invoices: HashMap<String, Box<InvoiceRecord>>,
    /// Double-entry postings of every money event, in log order.
    pub postings: Vec<Posting>,
    /// Mails refused for good, per account, oldest first (support sees
    /// them; a fixed address gets later mails).
    pub mail_bounces: HashMap<String, Vec<accrue_core::events::MailBounced>>,
    /// SHA-256 of every API token a `TokenIssued` event created: a stored
    /// token row without one is not honoured.
    pub tokens: std::collections::HashSet<String>,
    /// Every credit note by number (lines are read from the log).
    pub credit_notes: HashMap<String, Box<CreditNoteRecord>>,
    /// Accounts with an invoice in dunning (`GET /v1/dunning`).
    pub in_dunning: std::collections::BTreeSet<String>,
    /// Causes (global positions) whose bounced mail was sent again.
    pub mails_resent: std::collections::HashSet<u64>,
    /// Outgoing webhook endpoints by id, in registration order of ids.
    pub webhook_endpoints: std::collections::BTreeMap<String, WebhookEndpoint>,
}

/// An outgoing webhook endpoint as registered.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WebhookEndpoint {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub registered_at: DateTime<Utc>,
    /// The global position of its registration: it receives events after it.
    pub position: u64,
    pub disabled: Option<accrue_core::events::WebhookEndpointDisabled>,
}

/// What the read models keep of a credit note; its lines stay in the log
/// at `position`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CreditNoteRecord {
    pub account_id: String,
    pub position: u64,
    pub number: String,
    pub invoice_number: String,
    pub issued_at: DateTime<Utc>,
    pub total: Decimal,
    pub currency: String,
    pub reason: String,
    pub pdf_sha256: Option<String>,
}

impl ReadModels {
    /// An account's invoices, in number order (the account's state lists
    /// their numbers).
    pub fn invoices_of<'a>(&'a self, account: &str) -> impl Iterator<Item = &'a InvoiceRecord> {
        self.accounts
            .get(account)
            .into_iter()
            .flat_map(|a| a.invoices.keys())
            .filter_map(|n| self.invoices.get(n).map(|r| &**r))
    }
}

/// `account-<id>` → `<id>`.
pub fn account_of(stream: &str) -> Option<&str> {
    stream.strip_prefix("account-")
}

impl ReadModels {
    /// Folds one event. Positions must arrive in increasing order.
    pub fn apply(
        &mut self,
        position: u64,
        stream: &str,
        recorded_at: DateTime<Utc>,
        event: &LedgerEvent,
    ) {
        debug_assert!(
            position > self.position,
            "read models replay in global order"
        );
        self.position = position;
        if let LedgerEvent::TokenIssued(t) = event {
            self.tokens.insert(t.token_hash.clone());
            return;
        }
        match event {
            LedgerEvent::WebhookEndpointRegistered(w) => {
                self.webhook_endpoints.insert(
                    w.id.clone(),
                    WebhookEndpoint {
                        id: w.id.clone(),
                        url: w.url.clone(),
                        events: w.events.clone(),
                        registered_at: w.registered_at,
                        position,
                        disabled: None,
                    },
                );
                return;
            }
            LedgerEvent::WebhookEndpointDisabled(d) => {
                if let Some(w) = self.webhook_endpoints.get_mut(&d.id) {
                    w.disabled = Some(d.clone());
                }
                return;
            }
            _ => {}
        }
        if let LedgerEvent::MailResent(m) = event {
            self.mails_resent.insert(m.cause_position);
            return;
        }
        if let LedgerEvent::MailBounced(b) = event {
            self.mail_bounces
                .entry(b.account_id.clone())
                .or_default()
                .push(b.clone());
            return;
        }
        let LedgerEvent::Account(event) = event else {
            return;
        };
        let Some(account) = account_of(stream) else {
            return;
        };
        if !self.accounts.contains_key(account) {
            self.accounts.insert(account.to_string(), Box::default());
        }
        let state = self.accounts.get_mut(account).expect("just ensured");
        state.apply(event);
        let st = &**state;
        for (dr, cr, amount) in
            crate::postings::entries(event, |n| st.invoices.get(n).map(|i| i.total - i.credited))
        {
            self.postings
                .push(Posting::new(position, recorded_at, dr, cr, amount));
        }
        match event {
            AccountEvent::InvoiceIssued(i) => {
                self.invoices.insert(
                    i.number.clone(),
                    Box::new(InvoiceRecord {
                        account_id: account.to_string(),
                        position,
                        issued: IssuedHead::of(i),
                        status: InvoiceStatus::Unpaid,
                        changes: Vec::new(),
                        pdf_sha256: None,
                        last_failure: None,
                    }),
                );
            }
            AccountEvent::InvoicePdfRendered(e) => {
                if let Some(r) = self.invoices.get_mut(&e.number) {
                    r.pdf_sha256 = Some(e.sha256.clone());
                }
            }
            AccountEvent::PaymentSucceeded(e) => {
                if let Some(r) = self.invoices.get_mut(&e.invoice_number) {
                    r.status = InvoiceStatus::Paid;
                    r.last_failure = None;
                    r.changes.push(StatusChange {
                        status: InvoiceStatus::Paid,
                        at: recorded_at,
                        position,
                        event: "PaymentSucceeded",
                        reference: Some(e.reference.clone()),
                    });
                }
            }
            AccountEvent::PaymentFailed(e) => {
                if let Some(r) = self.invoices.get_mut(&e.invoice_number) {
                    r.last_failure = Some(e.reason.clone());
                    r.changes.push(StatusChange {
                        status: r.status,
                        at: recorded_at,
                        position,
                        event: "PaymentFailed",
                        reference: Some(e.reference.clone()),
                    });
                }
            }
            AccountEvent::InvoiceVoided(e) => {
                if let Some(r) = self.invoices.get_mut(&e.number) {
                    r.status = InvoiceStatus::Void;
                    r.changes.push(StatusChange {
                        status: InvoiceStatus::Void,
                        at: recorded_at,
                        position,
                        event: "InvoiceVoided",
                        reference: None,
                    });
                }
            }
            AccountEvent::CreditNoteIssued(c) => {
                self.credit_notes.insert(
                    c.number.clone(),
                    Box::new(CreditNoteRecord {
                        account_id: account.to_string(),
                        position,
                        number: c.number.clone(),
                        invoice_number: c.invoice_number.clone(),
                        issued_at: c.issued_at,
                        total: c.total,
                        currency: c.currency.clone(),
                        reason: c.reason.clone(),
                        pdf_sha256: None,
                    }),
                );
                let status = state.invoices.get(&c.invoice_number).map(|i| i.status);
                if let (Some(r), Some(status)) = (self.invoices.get_mut(&c.invoice_number), status)
                {
                    r.status = status;
                    r.changes.push(StatusChange {
                        status,
                        at: recorded_at,
                        position,
                        event: "CreditNoteIssued",
                        reference: Some(c.number.clone()),
                    });
                }
            }
            AccountEvent::CreditNotePdfRendered(e) => {
                if let Some(r) = self.credit_notes.get_mut(&e.number) {
                    r.pdf_sha256 = Some(e.sha256.clone());
                }
            }
            AccountEvent::PaymentRefunded(e) => {
                if let Some(r) = self.invoices.get_mut(&e.invoice_number) {
                    r.changes.push(StatusChange {
                        status: r.status,
                        at: recorded_at,
                        position,
                        event: "PaymentRefunded",
                        reference: Some(e.reference.clone()),
                    });
                }
            }
            _ => {}
        }
        // A payment on a partly credited invoice settles it as `paid`, a
        // credit note may settle it too: the status is the state's.
        if let AccountEvent::PaymentSucceeded(e) = event {
            if let (Some(r), Some(i)) = (
                self.invoices.get_mut(&e.invoice_number),
                state.invoices.get(&e.invoice_number),
            ) {
                r.status = i.status;
                if let Some(last) = r.changes.last_mut() {
                    last.status = i.status;
                }
            }
        }
        if matches!(
            event,
            AccountEvent::DunningStarted(_)
                | AccountEvent::PaymentSucceeded(_)
                | AccountEvent::CreditNoteIssued(_)
                | AccountEvent::InvoiceVoided(_)
        ) {
            if state.dunning().is_some() {
                self.in_dunning.insert(account.to_string());
            } else {
                self.in_dunning.remove(account);
            }
        }
    }
}

#[cfg(all(test, target_pointer_width = "64"))]
mod size_tests {
    /// An invoice record fits mimalloc's 256-byte class (one per invoice,
    /// for the life of the ledger).
    #[test]
    fn an_invoice_record_fits_its_allocation_class() {
        assert!(std::mem::size_of::<super::InvoiceRecord>() <= 256);
    }
}
