//! Side-effect projectors: they follow the log from a durable checkpoint and
//! act on the world (write PDF files, send mail). They never run during a
//! rebuild, and their checkpoint only moves after the effect is done, so an
//! effect may repeat after a crash but is never skipped; effects are made
//! idempotent by keying them on the causing event.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use accrue_core::events::LedgerEvent;
use accrue_core::{AccountEvent, Command};
use accrue_store::RecordedEvent;

use accrue_projections::mail::MailError;

use crate::{Ledger, LedgerError};

/// The longest wait between two attempts at one effect.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Effects waiting for a retry at most; beyond, the projector stops reading
/// ahead until some succeed (a bound on memory while a relay is down).
pub const MAX_RETRYING: usize = 10_000;

/// Why an effect did not happen.
#[derive(Debug)]
pub enum EffectError {
    /// Worth another try later (relay down, disk full, ledger busy).
    Retry(String),
}

impl From<LedgerError> for EffectError {
    fn from(e: LedgerError) -> Self {
        EffectError::Retry(e.to_string())
    }
}

impl From<accrue_store::StoreError> for EffectError {
    fn from(e: accrue_store::StoreError) -> Self {
        EffectError::Retry(e.to_string())
    }
}

/// One effect waiting for its next attempt.
struct Retrying {
    rec: RecordedEvent,
    event: LedgerEvent,
    backoff: Duration,
    due: std::time::Instant,
}

/// Runs `handle` for every event after the checkpoint `name` whose type
/// `wants` accepts (others are skipped before they are decoded), until
/// `stop` is set. Side effects never queue behind each other: an effect
/// that fails goes to a retry queue with its own backoff and the projector
/// moves on. The checkpoint is stored once per page and never passes an
/// effect still waiting for a retry (after a crash it is tried again; the
/// effects are idempotent, keyed by their causing event).
pub fn follow(
    ledger: Ledger,
    name: &'static str,
    stop: Arc<AtomicBool>,
    wants: fn(&str) -> bool,
    mut handle: impl FnMut(&Ledger, &RecordedEvent, &LedgerEvent) -> Result<(), EffectError>
        + Send
        + 'static,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(format!("accrue-{name}")).spawn(move || {
        // Rendering and mailing are bulk work: queries go first.
        crate::priority::lower_current_thread();
        let store = ledger.store().clone();
        let mut after = store.checkpoint(name).unwrap_or(0);
        let mut stored = after;
        let mut retrying: std::collections::BTreeMap<u64, Retrying> = Default::default();
        let mut attempt = |ledger: &Ledger,
                           rec: RecordedEvent,
                           event: LedgerEvent,
                           backoff: Duration,
                           retrying: &mut std::collections::BTreeMap<u64, Retrying>| {
            if let Err(EffectError::Retry(err)) = handle(ledger, &rec, &event) {
                tracing::warn!(projector = name, position = rec.position, error = %err, retry_in_ms = backoff.as_millis() as u64, "effect failed; retrying it on its own");
                let pos = rec.position;
                retrying.insert(
                    pos,
                    Retrying {
                        rec,
                        event,
                        backoff: (backoff * 2).min(MAX_BACKOFF),
                        due: std::time::Instant::now() + backoff,
                    },
                );
            }
        };
        while !stop.load(Ordering::Relaxed) {
            // Retries that are due, each on its own timer.
            let now = std::time::Instant::now();
            let due: Vec<u64> = retrying
                .iter()
                .filter(|(_, r)| r.due <= now)
                .map(|(p, _)| *p)
                .collect();
            for p in due {
                if let Some(r) = retrying.remove(&p) {
                    attempt(&ledger, r.rec, r.event, r.backoff, &mut retrying);
                }
            }
            let page = if retrying.len() >= MAX_RETRYING {
                Vec::new()
            } else {
                match store.read_all(after, 1000) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(projector = name, error = %e, "read failed");
                        std::thread::sleep(Duration::from_millis(200));
                        continue;
                    }
                }
            };
            for rec in page {
                after = rec.position;
                if !wants(&rec.type_name) {
                    continue;
                }
                let Ok(e) = LedgerEvent::decode(&rec.type_name, rec.schema, &rec.payload) else {
                    continue;
                };
                attempt(&ledger, rec, e, Duration::from_millis(100), &mut retrying);
            }
            // Done up to (the first effect still waiting) − 1.
            let done = retrying
                .keys()
                .next()
                .map_or(after, |p| (p - 1).min(after));
            if done > stored {
                match store.set_checkpoint(name, done) {
                    Ok(()) => stored = done,
                    Err(e) => tracing::warn!(projector = name, error = %e, "checkpoint failed"),
                }
            }
            let head = store.head_position().unwrap_or(after);
            ledger.metrics().set_projector_lag(name, head.saturating_sub(done));
            if head <= after || retrying.len() >= MAX_RETRYING {
                let next_due = retrying
                    .values()
                    .map(|r| r.due.saturating_duration_since(std::time::Instant::now()))
                    .min()
                    .unwrap_or(Duration::from_millis(250))
                    .min(Duration::from_millis(250));
                let _ = store.wait_for(after, next_due.max(Duration::from_millis(1)));
            }
        }
    })
}

/// Writes each issued invoice's PDF to `dir/<number>.pdf` and records its
/// SHA-256 in the ledger (once: the aggregate ignores a second record).
pub fn spawn_pdf_writer(
    ledger: Ledger,
    dir: PathBuf,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::fs::create_dir_all(&dir)?;
    follow(
        ledger,
        "pdf",
        stop,
        |t| t == "InvoiceIssued" || t == "CreditNoteIssued",
        move |ledger, rec, e| {
            let (number, pdf) = match e {
                LedgerEvent::Account(AccountEvent::InvoiceIssued(inv)) => {
                    (&inv.number, accrue_projections::pdf::render(inv))
                }
                LedgerEvent::Account(AccountEvent::CreditNoteIssued(cn)) => {
                    (&cn.number, accrue_projections::pdf::render_credit_note(cn))
                }
                _ => return Ok(()),
            };
            let pdf = pdf.map_err(|e| EffectError::Retry(e.to_string()))?;
            let sha256 = accrue_projections::pdf::sha256_hex(&pdf);
            let path = dir.join(format!("{number}.pdf"));
            let tmp = dir.join(format!(".{number}.pdf.tmp"));
            std::fs::write(&tmp, &pdf)
                .and_then(|_| std::fs::rename(&tmp, &path))
                .map_err(|e| EffectError::Retry(e.to_string()))?;
            let account = rec.stream.trim_start_matches("account-");
            let number = number.clone();
            let cmd = if matches!(e, LedgerEvent::Account(AccountEvent::CreditNoteIssued(_))) {
                Command::RecordCreditNotePdf { number, sha256 }
            } else {
                Command::RecordPdf { number, sha256 }
            };
            ledger.execute_blocking(account, cmd)?;
            Ok(())
        },
    )
}

/// Sends the mail each event causes (payment failures, invoices with their
/// PDF, subscription changes, credit thresholds). At most once per causing
/// event: a `mail-sent:<position>` mark is stored after delivery and checked
/// before; at least once: a failed delivery is retried with capped
/// exponential backoff, across restarts (the checkpoint has not moved).
pub fn spawn_mailer(
    ledger: Ledger,
    transport: accrue_projections::mail::MailTransport,
    from: String,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    const SESSION_ERROR_EVERY: Duration = Duration::from_secs(60);
    let mut session_error_logged: Option<std::time::Instant> = None;
    follow(
        ledger,
        "mailer",
        stop,
        mail_causes,
        move |ledger, rec, e| {
            if let LedgerEvent::WebhookEndpointDisabled(d) = e {
                return endpoint_disabled_mail(ledger, rec, d, &transport, &from);
            }
            let LedgerEvent::Account(event) = e else {
                return Ok(());
            };
            let Some(account) = rec.stream.strip_prefix("account-") else {
                return Ok(());
            };
            let store = ledger.store();
            let key = format!("mail-sent:{}", rec.position);
            if store.meta_get(&key)?.is_some() {
                return Ok(());
            }
            // The store has the event before the read models have applied it
            // (the committer applies after the append): wait for them, so the
            // account's state includes its cause.
            let deadline = std::time::Instant::now() + Duration::from_secs(1);
            while ledger.read().position < rec.position {
                if std::time::Instant::now() >= deadline {
                    return Err(EffectError::Retry("the read models are behind".into()));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let Some(state) = ledger.read().accounts.get(account).cloned() else {
                return Ok(());
            };
            // A corrected address: the mails that bounced go out again.
            let corrected = match event {
                AccountEvent::AccountDetailsChanged(d) => d.billing_email.is_some(),
                AccountEvent::PaymentMethodReplaced(_) => true,
                _ => false,
            };
            if corrected {
                resend_bounced(ledger, account, &state, &transport, &from)?;
                return Ok(());
            }
            let Some(mail) =
                accrue_projections::mail::mail_for(event, &state, &mail_context(), |i| {
                    accrue_projections::pdf::render(i).ok()
                })
            else {
                return Ok(());
            };
            let id: String = rec.hash[..8].iter().map(|b| format!("{b:02x}")).collect();
            // Dated by the ledger's clock (the cause's business time): a
            // re-sent mail is the same mail.
            let sent = accrue_projections::mail::build(
                &mail,
                &from,
                &accrue_projections::mail::message_id(&format!("{}.{id}", rec.position), &from),
                rec.occurred_at,
            )
            .and_then(|msg| transport.send(&msg, &format!("{:012}-{}", rec.position, mail.kind)));
            match sent {
                Ok(()) => {}
                Err(MailError::Send(e)) => return Err(EffectError::Retry(e)),
                // TLS or AUTH refused: a configuration problem that holds
                // every mail, so said loudly (once a minute, not once per
                // retry of every waiting mail); the mail is kept and retried.
                Err(err @ MailError::Session(_)) => {
                    if session_error_logged.is_none_or(|t| t.elapsed() >= SESSION_ERROR_EVERY) {
                        session_error_logged = Some(std::time::Instant::now());
                        tracing::error!(position = rec.position, error = %err, "SMTP relay refused the session; mail kept for retry");
                    }
                    return Err(EffectError::Retry(err.to_string()));
                }
                // Refused for good, or an address that can never be used:
                // recorded as a fact, and the mailer moves on.
                Err(err @ (MailError::Refused(_) | MailError::Build(_))) => {
                    tracing::warn!(position = rec.position, to = %mail.to, error = %err, "mail refused for good; recorded as bounced");
                    ledger.record_blocking(LedgerEvent::MailBounced(
                        accrue_core::events::MailBounced {
                            account_id: account.to_string(),
                            cause_position: rec.position,
                            kind: mail.kind.to_string(),
                            to: mail.to.clone(),
                            reason: err.to_string(),
                        },
                    ))?;
                    store.meta_put(&key, "bounced")?;
                    ledger
                        .metrics()
                        .mails_bounced
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Ok(());
                }
            }
            store.meta_put(&key, mail.kind)?;
            ledger
                .metrics()
                .mails_sent
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        },
    )
}

/// Tells the operator that an outgoing webhook endpoint was disabled: to
/// the issuer's email if one is configured, else to the sender's own
/// address. Once per event (`mail-sent:<position>`), retried like every
/// mail; an address refused for good is logged and skipped (there is no
/// account to record a bounce on).
fn endpoint_disabled_mail(
    ledger: &Ledger,
    rec: &RecordedEvent,
    d: &accrue_core::events::WebhookEndpointDisabled,
    transport: &accrue_projections::mail::MailTransport,
    from: &str,
) -> Result<(), EffectError> {
    let store = ledger.store();
    let key = format!("mail-sent:{}", rec.position);
    if store.meta_get(&key)?.is_some() {
        return Ok(());
    }
    let url = ledger
        .read()
        .webhook_endpoints
        .get(&d.id)
        .map(|w| w.url.clone())
        .unwrap_or_default();
    let to = crate::legal()
        .and_then(|l| l.issuer.as_ref())
        .and_then(|i| i.email.clone())
        .or_else(|| accrue_projections::mail::address_of(from));
    let Some(to) = to else {
        tracing::warn!(endpoint = %d.id, "webhook endpoint disabled; no operator address to tell");
        store.meta_put(&key, "no-address")?;
        return Ok(());
    };
    let mail = accrue_projections::mail::endpoint_disabled(d, &url, to, &mail_context());
    let id: String = rec.hash[..8].iter().map(|b| format!("{b:02x}")).collect();
    let sent = accrue_projections::mail::build(
        &mail,
        from,
        &accrue_projections::mail::message_id(&format!("{}.{id}", rec.position), from),
        rec.occurred_at,
    )
    .and_then(|msg| transport.send(&msg, &format!("{:012}-{}", rec.position, mail.kind)));
    match sent {
        Ok(()) => {}
        Err(e @ (MailError::Send(_) | MailError::Session(_))) => {
            return Err(EffectError::Retry(e.to_string()))
        }
        Err(e) => {
            tracing::warn!(endpoint = %d.id, to = %mail.to, error = %e, "the endpoint-disabled mail was refused for good");
            store.meta_put(&key, "bounced")?;
            return Ok(());
        }
    }
    store.meta_put(&key, mail.kind)?;
    ledger
        .metrics()
        .mails_sent
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// Sends again, to the account's current address, every mail of the
/// account that bounced to another address and was not sent again yet;
/// each resend is a `MailResent` fact (at most once per bounced mail).
fn resend_bounced(
    ledger: &Ledger,
    account: &str,
    state: &accrue_core::AccountState,
    transport: &accrue_projections::mail::MailTransport,
    from: &str,
) -> Result<(), EffectError> {
    let bounces = {
        let read = ledger.read();
        read.mail_bounces
            .get(account)
            .map(|b| {
                b.iter()
                    .filter(|b| !read.mails_resent.contains(&b.cause_position))
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let store = ledger.store();
    for b in bounces {
        let key = format!("mail-resent:{}", b.cause_position);
        if store.meta_get(&key)?.is_some() {
            continue;
        }
        let Some(cause) = store.read_at(b.cause_position)? else {
            continue;
        };
        let Ok(LedgerEvent::Account(event)) =
            LedgerEvent::decode(&cause.type_name, cause.schema, &cause.payload)
        else {
            continue;
        };
        let Some(mail) = accrue_projections::mail::mail_for(&event, state, &mail_context(), |i| {
            accrue_projections::pdf::render(i).ok()
        }) else {
            continue;
        };
        if mail.to == b.to {
            continue;
        }
        let sent = accrue_projections::mail::build(
            &mail,
            from,
            &accrue_projections::mail::message_id(&format!("{}.resent", b.cause_position), from),
            cause.occurred_at,
        )
        .and_then(|msg| {
            transport.send(
                &msg,
                &format!("{:012}-{}-resent", b.cause_position, mail.kind),
            )
        });
        match sent {
            Ok(()) => {
                ledger.record_blocking(LedgerEvent::MailResent(
                    accrue_core::events::MailResent {
                        account_id: account.to_string(),
                        cause_position: b.cause_position,
                        kind: mail.kind.to_string(),
                        to: mail.to.clone(),
                    },
                ))?;
                store.meta_put(&key, mail.kind)?;
                ledger
                    .metrics()
                    .mails_sent
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(MailError::Refused(e) | MailError::Build(e)) => {
                tracing::warn!(position = b.cause_position, to = %mail.to, error = %e, "resent mail refused for good");
                store.meta_put(&key, "bounced again")?;
            }
            Err(e) => return Err(EffectError::Retry(e.to_string())),
        }
    }
    Ok(())
}

/// Who signs the mails (the configured issuer) and where the customer page
/// is (`ACCRUE_PUBLIC_URL`), for the payment-method link.
fn mail_context() -> accrue_projections::mail::MailContext<'static> {
    static PUBLIC_URL: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let public_url = PUBLIC_URL
        .get_or_init(|| {
            std::env::var("ACCRUE_PUBLIC_URL")
                .ok()
                .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
        })
        .as_deref();
    accrue_projections::mail::MailContext {
        issuer: crate::legal()
            .and_then(|l| l.issuer.as_ref())
            .map(|i| i.legal_name.as_str()),
        public_url,
    }
}

/// The account events that can cause a mail (see `mail::mail_for`); the
/// rest, usage above all, are skipped unread.
fn mail_causes(type_name: &str) -> bool {
    matches!(
        type_name,
        "PaymentFailed"
            | "InvoiceIssued"
            | "CreditLimitSet"
            | "CreditUnsubscribed"
            | "CreditThresholdReached"
            | "PaymentRefunded"
            | "LicenseSuspended"
            | "LicenseReinstated"
            | "AccountDetailsChanged"
            | "PaymentMethodReplaced"
            | "WebhookEndpointDisabled"
    )
}

/// Blocks until projector `name` has handled everything up to the head, or
/// the timeout passes; returns whether it caught up.
pub fn wait_caught_up(ledger: &Ledger, name: &str, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let head = ledger.store().head_position().unwrap_or(0);
        if ledger.store().checkpoint(name).unwrap_or(0) >= head {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        let _ = ledger.store().wait_for(head, Duration::from_millis(20));
        std::thread::sleep(Duration::from_millis(5));
    }
}
