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

use crate::{Ledger, LedgerError};

/// The longest wait between two attempts at one effect.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs `handle` for every event after the checkpoint `name`, page by page,
/// until `stop` is set. The checkpoint advances after each handled event.
pub fn follow(
    ledger: Ledger,
    name: &'static str,
    stop: Arc<AtomicBool>,
    mut handle: impl FnMut(&Ledger, &RecordedEvent, &LedgerEvent) -> Result<(), LedgerError>
        + Send
        + 'static,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(format!("accrue-{name}")).spawn(move || {
        // Rendering and mailing are bulk work: queries go first.
        crate::priority::lower_current_thread();
        let store = ledger.store().clone();
        let mut after = store.checkpoint(name).unwrap_or(0);
        let mut backoff = Duration::from_millis(100);
        while !stop.load(Ordering::Relaxed) {
            let page = match store.read_all(after, 1000) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(projector = name, error = %e, "read failed");
                    std::thread::sleep(backoff);
                    continue;
                }
            };
            if page.is_empty() {
                let _ = store.wait_for(after, Duration::from_millis(250));
                continue;
            }
            for rec in &page {
                let Ok(e) = LedgerEvent::decode(&rec.type_name, rec.schema, &rec.payload) else {
                    after = rec.position;
                    continue;
                };
                // Retry this event with capped exponential backoff until it
                // succeeds or we are asked to stop.
                loop {
                    match handle(&ledger, rec, &e) {
                        Ok(()) => {
                            backoff = Duration::from_millis(100);
                            break;
                        }
                        Err(err) => {
                            tracing::warn!(projector = name, position = rec.position, error = %err, "effect failed; retrying");
                            if stop.load(Ordering::Relaxed) {
                                return;
                            }
                            std::thread::sleep(backoff);
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                        }
                    }
                }
                after = rec.position;
                if let Err(e) = store.set_checkpoint(name, after) {
                    tracing::warn!(projector = name, error = %e, "checkpoint failed");
                }
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
    follow(ledger, "pdf", stop, move |ledger, rec, e| {
        let LedgerEvent::Account(AccountEvent::InvoiceIssued(inv)) = e else {
            return Ok(());
        };
        let pdf = accrue_projections::pdf::render(inv)
            .map_err(|e| LedgerError::Corrupt(e.to_string()))?;
        let sha256 = accrue_projections::pdf::sha256_hex(&pdf);
        let path = dir.join(format!("{}.pdf", inv.number));
        std::fs::write(&path, &pdf)
            .map_err(|e| LedgerError::Store(accrue_store::StoreError::Backend(e.to_string())))?;
        let account = rec.stream.trim_start_matches("account-");
        ledger.execute_blocking(
            account,
            Command::RecordPdf {
                number: inv.number.clone(),
                sha256,
            },
        )?;
        Ok(())
    })
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
    follow(ledger, "mailer", stop, move |ledger, rec, e| {
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
        let Some(state) = ledger.read().accounts.get(account).cloned() else {
            return Ok(());
        };
        let Some(mail) = accrue_projections::mail::mail_for(event, &state, |i| {
            accrue_projections::pdf::render(i).ok()
        }) else {
            return Ok(());
        };
        let id: String = rec.hash[..8].iter().map(|b| format!("{b:02x}")).collect();
        let msg = match accrue_projections::mail::build(
            &mail,
            &from,
            &format!("<{}.{id}@accrue>", rec.position),
        ) {
            Ok(m) => m,
            Err(err) => {
                // A bad address never becomes deliverable by retrying.
                tracing::error!(position = rec.position, error = %err, "mail cannot be built; skipped");
                return Ok(());
            }
        };
        transport
            .send(&msg, &format!("{:012}-{}", rec.position, mail.kind))
            .map_err(|e| LedgerError::Store(accrue_store::StoreError::Backend(e.to_string())))?;
        store.meta_put(&key, mail.kind)?;
        ledger
            .metrics()
            .mails_sent
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    })
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
