//! Outgoing webhooks (SPEC §11): a side-effect projector that POSTs the
//! ledger's notable events to every registered endpoint, signed
//! `Accrue-Signature: t=…,v1=…` (HMAC-SHA-256 over `t.body`).
//!
//! At least once: a failed delivery stays in the projector's retry queue
//! (its own backoff) and the checkpoint never passes it, across restarts.
//! At most once as far as a receiver can tell: the body's `id` and the
//! `Accrue-Event-Id` header are the causing event's (`evt_<position>`), and
//! a delivery mark per endpoint and event keeps a retry of the event from
//! sending again to endpoints that already took it. An endpoint that fails
//! for 3 days (by the ledger's clock) is disabled, an event in the log.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use accrue_core::events::{LedgerEvent, WebhookEndpointDisabled};
use accrue_core::AccountEvent;
use accrue_store::RecordedEvent;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::projectors::{follow, EffectError};
use crate::Ledger;

/// The event types an endpoint may subscribe to.
pub const EVENT_TYPES: [&str; 8] = [
    "invoice.issued",
    "invoice.paid",
    "payment.failed",
    "credit_note.issued",
    "credits.threshold_reached",
    "license.expired",
    "license.suspended",
    "license.reinstated",
];

/// How long an endpoint may fail before it is disabled.
pub const GIVE_UP_AFTER_DAYS: i64 = 3;
/// Attempts kept per endpoint for `GET …/deliveries`.
const MAX_LISTED: usize = 500;
/// Attempts kept per delivery (the first and the latest).
const MAX_ATTEMPTS: usize = 50;

/// The webhook type of a ledger event, if it has one.
pub fn webhook_type(type_name: &str) -> Option<&'static str> {
    Some(match type_name {
        "InvoiceIssued" => "invoice.issued",
        "PaymentSucceeded" => "invoice.paid",
        "PaymentFailed" => "payment.failed",
        "CreditNoteIssued" => "credit_note.issued",
        "CreditThresholdReached" => "credits.threshold_reached",
        "LicenseExpired" => "license.expired",
        "LicenseSuspended" => "license.suspended",
        "LicenseReinstated" => "license.reinstated",
        _ => return None,
    })
}

fn data_of(e: &AccountEvent) -> serde_json::Value {
    use serde_json::json;
    match e {
        AccountEvent::InvoiceIssued(i) => json!({
            "number": i.number, "total": i.total.to_string(), "currency": i.currency,
            "issued_at": i.issued_at, "due_date": i.due_date,
        }),
        AccountEvent::PaymentSucceeded(p) => json!({
            "invoice_number": p.invoice_number, "amount": p.amount.to_string(), "reference": p.reference,
        }),
        AccountEvent::PaymentFailed(p) => json!({
            "invoice_number": p.invoice_number, "amount_due": p.amount_due.to_string(),
            "reference": p.reference, "reason": p.reason,
        }),
        AccountEvent::CreditNoteIssued(c) => json!({
            "number": c.number, "invoice_number": c.invoice_number, "total": c.total.to_string(),
            "currency": c.currency, "reason": c.reason,
        }),
        AccountEvent::CreditThresholdReached(c) => json!({
            "percent": c.percent, "used": c.used.to_string(), "capacity": c.capacity.to_string(),
        }),
        AccountEvent::LicenseSuspended(s) => json!({
            "invoice_numbers": s.invoice_numbers, "suspended_at": s.suspended_at,
        }),
        AccountEvent::LicenseReinstated(r) => json!({ "reinstated_at": r.reinstated_at }),
        other => serde_json::to_value(other.type_name()).unwrap_or_default(),
    }
}

/// One delivery (an event to an endpoint) and its attempts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delivery {
    pub event_id: String,
    pub position: u64,
    #[serde(rename = "type")]
    pub kind: String,
    pub delivered: bool,
    pub attempts: Vec<Attempt>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    pub at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn deliveries_key(endpoint: &str) -> String {
    format!("webhook-deliveries:{endpoint}")
}

/// The deliveries to an endpoint, newest last.
pub fn deliveries(ledger: &Ledger, endpoint: &str) -> Result<Vec<Delivery>, crate::LedgerError> {
    Ok(ledger
        .store()
        .meta_get(&deliveries_key(endpoint))?
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default())
}

fn record_attempt(
    ledger: &Ledger,
    endpoint: &str,
    (rec, event_id): (&RecordedEvent, &str),
    kind: &str,
    attempt: Attempt,
    delivered: bool,
) -> Result<DateTime<Utc>, EffectError> {
    let mut list = deliveries(ledger, endpoint).map_err(|e| EffectError::Retry(e.to_string()))?;
    let i = match list.iter().position(|d| d.position == rec.position) {
        Some(i) => i,
        None => {
            list.push(Delivery {
                event_id: event_id.to_string(),
                position: rec.position,
                kind: kind.to_string(),
                delivered: false,
                attempts: Vec::new(),
            });
            list.len() - 1
        }
    };
    let attempts = &mut list[i].attempts;
    attempts.push(attempt);
    // The first attempt (when the 3 days started) and the latest ones.
    if attempts.len() > MAX_ATTEMPTS {
        attempts.remove(1);
    }
    list[i].delivered |= delivered;
    let first = list[i].attempts[0].at;
    if list.len() > MAX_LISTED {
        let cut = list.len() - MAX_LISTED;
        list.drain(..cut);
    }
    let text = serde_json::to_string(&list).map_err(|e| EffectError::Retry(e.to_string()))?;
    ledger.store().meta_put(&deliveries_key(endpoint), &text)?;
    Ok(first)
}

/// The `Accrue-Signature` header for `body` at unix time `t`.
pub fn signature(secret: &str, t: i64, body: &[u8]) -> String {
    let mut msg = t.to_string().into_bytes();
    msg.push(b'.');
    msg.extend_from_slice(body);
    format!(
        "t={t},v1={}",
        hex::encode(crate::hmac::hmac_sha256(secret.as_bytes(), &msg))
    )
}

fn wants(type_name: &str) -> bool {
    webhook_type(type_name).is_some()
}

/// The certificates of a PEM file, at least one.
fn ca_certificates(path: &std::path::Path) -> std::io::Result<Vec<reqwest::Certificate>> {
    let bad = |why: String| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("ACCRUE_WEBHOOK_CA_FILE {}: {why}", path.display()),
        )
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".to_string()));
    }
    Ok(certs)
}

/// An error with its causes: reqwest's own text only says the request
/// failed; the cause says why (a refused connection, an untrusted
/// certificate).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text.chars().take(500).collect()
}

/// Starts the webhook projector.
pub fn spawn_webhooks(ledger: Ledger, stop: Arc<AtomicBool>) -> std::io::Result<JoinHandle<()>> {
    // `ACCRUE_WEBHOOK_TIMEOUT_SECS` (default 10): a receiver slower than
    // this counts as a failed attempt.
    let timeout = std::env::var("ACCRUE_WEBHOOK_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|s| (1..=60).contains(s))
        .unwrap_or(10);
    let mut builder = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(timeout))
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none());
    // `ACCRUE_WEBHOOK_CA_FILE`: PEM certificates trusted for https://
    // receivers besides Mozilla's roots (a private CA). A file that cannot
    // be read or holds no certificate stops the start: deliveries would
    // otherwise fail for days with a cause nobody sees.
    if let Some(path) = std::env::var_os("ACCRUE_WEBHOOK_CA_FILE").filter(|p| !p.is_empty()) {
        for cert in ca_certificates(std::path::Path::new(&path))? {
            builder = builder.add_root_certificate(cert);
        }
    }
    let client = builder.build().map_err(std::io::Error::other)?;
    // Event ids are unique across a cluster: a partition's positions are
    // its own, so its tag goes in the id (`evt_01_42`; `evt_42` alone).
    let tag = ledger
        .store()
        .meta_get(crate::NUMBER_TAG_META)
        .map_err(std::io::Error::other)?
        .unwrap_or_default();
    let id_prefix = if tag.is_empty() {
        "evt_".to_string()
    } else {
        format!("evt_{tag}_")
    };
    follow(ledger, "webhooks", stop, wants, move |ledger, rec, e| {
        let LedgerEvent::Account(event) = e else {
            return Ok(());
        };
        let Some(kind) = webhook_type(&rec.type_name) else {
            return Ok(());
        };
        let account = rec.stream.strip_prefix("account-").unwrap_or("");
        let endpoints: Vec<_> = {
            let read = ledger.read();
            read.webhook_endpoints
                .values()
                .filter(|w| w.position < rec.position && w.disabled.is_none())
                .filter(|w| w.events.iter().any(|t| t == kind || t == "*"))
                .cloned()
                .collect()
        };
        if endpoints.is_empty() {
            return Ok(());
        }
        let event_id = format!("{id_prefix}{}", rec.position);
        let Some(secret_of) = endpoints
            .iter()
            .map(|w| ledger.webhook_secret(&w.id).map(|s| (w.id.clone(), s)))
            .collect::<Option<HashMap<String, String>>>()
        else {
            return Err(EffectError::Retry(format!(
                "{event_id}: the cluster's webhook secret is not readable yet (the home partition has not been opened)"
            )));
        };
        let body = serde_json::json!({
            "id": event_id,
            "type": kind,
            "created": rec.recorded_at,
            "account_id": account,
            "data": data_of(event),
        })
        .to_string();
        let mut pending = false;
        for w in endpoints {
            let mark = format!("webhook-sent:{}:{}", w.id, rec.position);
            if ledger.store().meta_get(&mark)?.is_some() {
                continue;
            }
            let t = Utc::now().timestamp();
            let sent = client
                .post(&w.url)
                .header("content-type", "application/json")
                .header("user-agent", "accrue-webhooks")
                .header("accrue-event-id", &event_id)
                .header(
                    "accrue-signature",
                    signature(&secret_of[&w.id], t, body.as_bytes()),
                )
                .body(body.clone())
                .send();
            let at = ledger.now();
            let (ok, attempt) = match sent {
                Ok(r) => {
                    let s = r.status();
                    (
                        s.is_success(),
                        Attempt {
                            at,
                            status: Some(s.as_u16()),
                            error: (!s.is_success()).then(|| format!("HTTP {s}")),
                        },
                    )
                }
                Err(err) => (
                    false,
                    Attempt {
                        at,
                        status: None,
                        error: Some(if err.is_timeout() {
                            "timed out".to_string()
                        } else {
                            error_chain(&err)
                        }),
                    },
                ),
            };
            let first = record_attempt(ledger, &w.id, (rec, &event_id), kind, attempt, ok)?;
            if ok {
                ledger.store().meta_put(&mark, "delivered")?;
                continue;
            }
            if at - first >= chrono::Duration::days(GIVE_UP_AFTER_DAYS) {
                tracing::warn!(endpoint = %w.id, url = %w.url, "webhook endpoint failed for 3 days; disabled");
                ledger.record_blocking(LedgerEvent::WebhookEndpointDisabled(
                    WebhookEndpointDisabled {
                        id: w.id.clone(),
                        reason: format!(
                            "every delivery failed for {GIVE_UP_AFTER_DAYS} days (first at {first})"
                        ),
                        disabled_at: at,
                    },
                ))?;
                ledger.store().meta_put(&mark, "given-up")?;
                continue;
            }
            pending = true;
        }
        if pending {
            Err(EffectError::Retry(format!(
                "{event_id}: an endpoint did not accept it"
            )))
        } else {
            Ok(())
        }
    })
}
