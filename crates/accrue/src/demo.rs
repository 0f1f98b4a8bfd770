//! `accrue demo`: a month of a few customers on a fresh embedded store with a
//! manual clock. Writes the invoice PDFs (and the outbox) into the folder and
//! prints a summary. What a newcomer runs first.

use std::path::Path;
use std::sync::Arc;
use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

use accrue_core::events::{PaymentMethodReplaced, Plan};
use accrue_core::tax::{Issuer, Legal, TaxProfile, TaxTable, TaxTreatment};
use accrue_core::{BillingFrequency, Command, OpenAccount, SeatsInUse, UsageInput};
use accrue_ledger::{ClockMode, Ledger, UsageItem, UsageOutcome};
use accrue_store::sqlite::SqliteStore;
use anyhow::Context;
use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;

struct Customer {
    id: &'static str,
    name: &'static str,
    lang: &'static str,
    address: &'static str,
    yearly: bool,
    plan: (u32, &'static str, u32, &'static str, bool, &'static str),
    base: &'static str,
    limit: Option<&'static str>,
    /// Usage per day, in USD.
    daily: &'static str,
    /// Tax country, customer VAT id, treatment (SPEC §14).
    tax: (&'static str, Option<&'static str>, TaxTreatment),
}

const CUSTOMERS: [Customer; 4] = [
    Customer {
        id: "acme",
        name: "Acme Corporation",
        lang: "en",
        address: "500 Market Street, San Francisco, CA 94105, USA",
        yearly: false,
        plan: (5, "49.00", 20, "9.00", true, "99.00"),
        base: "10.00",
        limit: Some("50.00"),
        daily: "1.3725",
        tax: ("US-CA", None, TaxTreatment::Standard),
    },
    Customer {
        id: "mueller",
        name: "Müller & Söhne GmbH",
        lang: "de",
        address: "Königstraße 12, 70173 Stuttgart, Deutschland",
        yearly: false,
        plan: (3, "49.00", 5, "9.00", false, "99.00"),
        base: "5.00",
        limit: Some("20.00"),
        daily: "0.8125",
        tax: ("DE", Some("DE811907980"), TaxTreatment::ReverseCharge),
    },
    Customer {
        id: "sakura",
        name: "株式会社さくらテック",
        lang: "ja",
        address: "東京都渋谷区道玄坂1-2-3",
        yearly: true,
        plan: (10, "490.00", 0, "90.00", true, "990.00"),
        base: "20.00",
        limit: Some("100.00"),
        daily: "2.05",
        tax: ("JP", None, TaxTreatment::Standard),
    },
    Customer {
        id: "petit",
        name: "Petit Atelier SARL",
        lang: "fr",
        address: "12 rue de la Paix, 75002 Paris, France",
        yearly: false,
        plan: (1, "19.00", 0, "9.00", false, "99.00"),
        base: "2.00",
        limit: None,
        daily: "0.0625",
        tax: ("FR", Some("FR40303265045"), TaxTreatment::ReverseCharge),
    },
];

fn d(s: &str) -> Decimal {
    s.parse().expect("demo amounts are decimals")
}

fn fresh(out: &Path) -> anyhow::Result<()> {
    for f in ["ledger.db", "ledger.db-wal", "ledger.db-shm", "ledger.lock"] {
        let _ = std::fs::remove_file(out.join(f));
    }
    for dir in ["invoices", "outbox"] {
        let _ = std::fs::remove_dir_all(out.join(dir));
    }
    std::fs::create_dir_all(out.join("invoices"))?;
    Ok(())
}

/// The demo's issuer and rates, unless the folder has an `accrue.toml`
/// with an issuer of its own.
/// The demo issuer's logo, drawn here (no binary file in the repository):
/// a rounded indigo badge with three ledger lines, 120×40 px, as PNG.
fn demo_logo() -> String {
    use base64::Engine as _;
    let (w, h) = (120u32, 40u32);
    let png = accrue_projections::logo::encode_rgba(
        w,
        h,
        |x, y| {
            let r = 8i64;
            let (xi, yi) = (i64::from(x), i64::from(y));
            let (cx, cy) = (
                xi.clamp(r, i64::from(w) - 1 - r),
                yi.clamp(r, i64::from(h) - 1 - r),
            );
            if (xi - cx).pow(2) + (yi - cy).pow(2) > r * r {
                return [255, 255, 255, 0];
            }
            let line =
                (10..=30).step_by(10).any(|ly| yi.abs_diff(ly) <= 1) && (14..=106).contains(&xi);
            if line {
                [255, 255, 255, 255]
            } else {
                [67, 56, 202u8.saturating_sub((x / 4) as u8), 255]
            }
        },
        1,
    );
    base64::engine::general_purpose::STANDARD.encode(png)
}

fn demo_legal(out: &Path) -> anyhow::Result<Legal> {
    let configured = crate::legal::load(out, |k| std::env::var(k).ok())?;
    if configured.issuer.is_some() {
        return Ok(configured);
    }
    Ok(Legal {
        issuer: Some(Issuer {
            legal_name: "accrue Billing B.V.".into(),
            address: vec![
                "Keizersgracht 1".into(),
                "1015 CJ Amsterdam".into(),
                "Netherlands".into(),
            ],
            country: "NL".into(),
            tax_id: Some("NL123456789B01".into()),
            registration: Some("KvK 12345678".into()),
            payment_instructions: Some("IBAN NL91 ABNA 0417 1643 00 · BIC ABNANL2A".into()),
            iban: Some("NL91ABNA0417164300".into()),
            email: Some("billing@accrue.example".into()),
            logo_png: Some(demo_logo()),
        }),
        rates: TaxTable::new(vec![
            ("NL".into(), d("21")),
            ("US-CA".into(), d("7.25")),
            ("JP".into(), d("10")),
        ])
        .map_err(|e| anyhow::anyhow!("{e}"))?,
    })
}

pub fn run(out: &Path) -> anyhow::Result<()> {
    fresh(out).with_context(|| format!("preparing {}", out.display()))?;
    accrue_ledger::set_legal(demo_legal(out)?);
    let start: DateTime<Utc> = "2026-01-15T00:00:00Z".parse()?;
    let store = Arc::new(SqliteStore::open(out.join("ledger.db"))?);
    let ledger = Ledger::open(store, ClockMode::Manual(start))?;

    for c in &CUSTOMERS {
        let (fs, fp, vs, vp, dm, dp) = c.plan;
        let open = OpenAccount {
            account_id: c.id.into(),
            name: c.name.into(),
            serial_number: format!("ACR-DEMO-{}", c.id.to_uppercase()),
            billing_email: format!("billing@{}.example", c.id),
            email_language: c.lang.into(),
            address: Some(c.address.into()),
            currency: "USD".into(),
            billing_frequency: if c.yearly {
                BillingFrequency::Yearly
            } else {
                BillingFrequency::Monthly
            },
            anchor_day: None,
            plan: Plan {
                full_seats: fs,
                full_seat_price: d(fp),
                viewer_seats: vs,
                viewer_seat_price: d(vp),
                data_management: dm,
                data_management_price: d(dp),
            },
            base_credits: d(c.base),
            credit_limit: c.limit.map(d),
            invoice_number: String::new(),
            tax: Some(TaxProfile {
                country: c.tax.0.into(),
                customer_tax_id: c.tax.1.map(Into::into),
                treatment: c.tax.2,
                exempt_reason: None,
            }),
        };
        ledger.execute_blocking(c.id, Command::Open(Box::new(open)))?;
        ledger.execute_blocking(
            c.id,
            Command::ReportSeats(SeatsInUse {
                full: fs.min(3),
                viewer: vs / 2,
            }),
        )?;
        ledger.execute_blocking(
            c.id,
            Command::ReplacePaymentMethod(Box::new(PaymentMethodReplaced {
                billing_email: format!("billing@{}.example", c.id),
                email_language: c.lang.into(),
                address: Some(c.address.into()),
                token: format!("tok_demo_{}", c.id),
                brand: "visa".into(),
                last4: "4242".into(),
                exp_month: 12,
                exp_year: 2029,
            })),
        )?;
    }

    // A month of usage: every six hours each customer uses a quarter of its daily amount.
    let mut accepted = 0usize;
    let mut rejected = 0usize;
    for step in 0..(31 * 4) {
        let now = start + Duration::hours(6 * step) + Duration::minutes(7);
        ledger.advance_clock_blocking(now)?;
        if step == 15 * 4 {
            // Mid-month, Müller upgrades by two full seats: a prorated line.
            let plan = Plan {
                full_seats: 5,
                full_seat_price: d("49.00"),
                viewer_seats: 5,
                viewer_seat_price: d("9.00"),
                data_management: false,
                data_management_price: d("99.00"),
            };
            ledger.execute_blocking("mueller", Command::ChangePlan(plan))?;
        }
        let items = CUSTOMERS
            .iter()
            .filter(|_| {
                now < "2026-02-15T00:00:00Z"
                    .parse::<DateTime<Utc>>()
                    .unwrap_or(now)
            })
            .map(|c| UsageItem::Valid {
                account_id: c.id.into(),
                input: UsageInput {
                    usage_id: format!("{}-{step}", c.id),
                    amount: d(c.daily) / Decimal::from(4),
                    occurred_at: now,
                    product: Some("assistant".into()),
                    feature: Some(["chat", "summarize", "translate"][step as usize % 3].into()),
                    metadata: None,
                },
                occurred_at_given: true,
            })
            .collect();
        for o in ledger.ingest_blocking(items)? {
            match o {
                UsageOutcome::Accepted => accepted += 1,
                _ => rejected += 1,
            }
        }
    }
    let close = "2026-02-15T00:00:00Z".parse()?;
    ledger.advance_clock_blocking(close)?;

    // The processor reports: Acme's opening invoice paid, Müller's failed.
    let numbers = |id: &str| {
        let read = ledger.read();
        let mut issued: Vec<_> = read
            .invoices_of(id)
            .map(|r| (r.issued.issued_at, r.issued.number.clone()))
            .collect();
        issued.sort();
        issued.into_iter().map(|(_, n)| n).collect::<Vec<_>>()
    };
    if let Some(n) = numbers("acme").first() {
        ledger.execute_for_invoice_blocking(
            n,
            Command::RecordPayment {
                invoice_number: n.clone(),
                reference: "ch_demo_1".into(),
                outcome: accrue_core::PaymentOutcome::Succeeded,
            },
        )?;
    }
    if let Some(n) = numbers("mueller").first() {
        ledger.execute_for_invoice_blocking(
            n,
            Command::RecordPayment {
                invoice_number: n.clone(),
                reference: "ch_demo_2".into(),
                outcome: accrue_core::PaymentOutcome::Failed {
                    reason: Some("card declined (insufficient funds)".into()),
                },
            },
        )?;
    }

    // Render every invoice and record its hash.
    let read = ledger.read().clone();
    let mut numbers_all: Vec<_> = read.invoices.keys().cloned().collect();
    numbers_all.sort();
    for n in &numbers_all {
        let rec = &read.invoices[n];
        let pdf = accrue_projections::pdf::render(&ledger.invoice_issued(rec)?)?;
        std::fs::write(out.join("invoices").join(format!("{n}.pdf")), &pdf)?;
        let sha256 = accrue_projections::pdf::sha256_hex(&pdf);
        ledger.execute_blocking(
            &rec.account_id,
            Command::RecordPdf {
                number: n.clone(),
                sha256,
            },
        )?;
    }
    // The mails those events cause, as .eml files in the outbox.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let transport = accrue_projections::mail::MailTransport::Outbox(out.join("outbox"));
    let mailer = accrue_ledger::projectors::spawn_mailer(
        ledger.clone(),
        transport,
        "accrue Billing <billing@accrue.example>".into(),
        stop.clone(),
    )?;
    let caught_up = accrue_ledger::projectors::wait_caught_up(
        &ledger,
        "mailer",
        std::time::Duration::from_secs(60),
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = mailer.join();
    anyhow::ensure!(caught_up, "the mailer did not finish");
    let mails = std::fs::read_dir(out.join("outbox"))
        .map(|d| d.count())
        .unwrap_or(0);
    let verify = accrue_ledger::audit::verify(ledger.store().as_ref(), |_, _| {})?;

    println!(
        "accrue demo — one month, {} customers, manual clock {} → 2026-02-15",
        CUSTOMERS.len(),
        start.format("%Y-%m-%d")
    );
    println!("usage events: {accepted} accepted, {rejected} rejected (limits enforced)\n");
    let mut customers = Vec::new();
    for c in &CUSTOMERS {
        // The closed period's figures come from the PeriodClosed event.
        let closed = accrue_ledger::account_as_of(
            ledger.store().as_ref(),
            c.id,
            "2026-02-14T23:59:59Z".parse()?,
        )?;
        let s = &read.accounts[c.id];
        customers.push(vec![
            c.id.to_string(),
            truncate(c.name, 24),
            if c.yearly { "yearly" } else { "monthly" }.to_string(),
            c.base.to_string(),
            accrue_core::money::display(closed.limit).to_string(),
            closed.used.round_dp(2).to_string(),
            if s.payment_status == accrue_core::PaymentStatus::Failed {
                "FAILED"
            } else {
                "ok"
            }
            .to_string(),
        ]);
    }
    use Align::{Left as L, Right as R};
    print!(
        "{}",
        table(
            &[
                ("account", L),
                ("name", L),
                ("billing", L),
                ("base", R),
                ("limit", R),
                ("used", R),
                ("payment", L),
            ],
            &customers,
        )
    );
    let mut invoices = Vec::new();
    for n in &numbers_all {
        let r = &read.invoices[n];
        invoices.push(vec![
            n.clone(),
            r.account_id.clone(),
            format!("{} {}", r.issued.currency, r.issued.total),
            ledger_status(&read, n).to_string(),
            ledger.invoice_issued(r)?.lines.len().to_string(),
        ]);
    }
    println!();
    print!(
        "{}",
        table(
            &[
                ("invoice", L),
                ("account", L),
                ("total", R),
                ("status", L),
                ("lines", R),
            ],
            &invoices,
        )
    );
    println!(
        "\nPDFs: {}/invoices/   emails: {mails} in {}/outbox/   hash chain: {} events, ok={}, head {}",
        out.display(),
        out.display(),
        verify.events,
        verify.ok,
        &verify.head_hash[..16]
    );
    ledger.shutdown();
    Ok(())
}

fn ledger_status(read: &accrue_projections::ReadModels, n: &str) -> &'static str {
    // Payments recorded after the snapshot above are in the store; the
    // snapshot was taken after them, so it is current.
    read.invoices.get(n).map_or("?", |r| r.status.as_str())
}

/// `s` cut to at most `n` terminal columns (a CJK character takes two),
/// with `…` when cut.
fn truncate(s: &str, n: usize) -> String {
    if s.width() <= n {
        return s.to_string();
    }
    let mut out = String::new();
    for c in s.chars() {
        if out.width() + c.width().unwrap_or(0) + 1 > n {
            break;
        }
        out.push(c);
    }
    out + "…"
}

#[derive(Debug, Clone, Copy)]
enum Align {
    Left,
    Right,
}

/// A plain-text table: every column as wide as its widest cell in
/// terminal columns (`unicode-width`: a Japanese name is twice its
/// character count), two spaces apart, no trailing blanks.
fn table(header: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|(h, _)| h.width()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.width());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| -> String {
        let mut out = String::new();
        for ((cell, (_, align)), w) in cells.zip(header).zip(&widths) {
            if !out.is_empty() {
                out.push_str("  ");
            }
            let pad = " ".repeat(w - cell.width());
            match align {
                Align::Left => {
                    out.push_str(cell);
                    out.push_str(&pad);
                }
                Align::Right => {
                    out.push_str(&pad);
                    out.push_str(cell);
                }
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(&mut header.iter().map(|(h, _)| *h));
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The terminal column at which `needle` starts in `line`.
    fn column_of(line: &str, needle: &str) -> usize {
        let at = line
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} in {line:?}"));
        line[..at].width()
    }

    #[test]
    fn a_japanese_name_and_a_long_amount_line_up() {
        use Align::{Left as L, Right as R};
        let rows = vec![
            vec![
                "acme".into(),
                "Acme Corporation".into(),
                "1.00".into(),
                "ok".into(),
            ],
            vec![
                "sakura".into(),
                "株式会社さくらテック".into(),
                "1234567890.00".into(),
                "FAILED".into(),
            ],
            vec![
                "muller".into(),
                "Müller & Söhne GmbH".into(),
                "25.50".into(),
                "ok".into(),
            ],
        ];
        let t = table(
            &[("account", L), ("name", L), ("used", R), ("payment", L)],
            &rows,
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        // Every row's name starts, and its amount ends, at the same column.
        let names: Vec<usize> = ["name", "Acme", "株式会社", "Müller"]
            .iter()
            .zip(&lines)
            .map(|(n, l)| column_of(l, n))
            .collect();
        assert!(names.iter().all(|c| *c == names[0]), "{names:?}\n{t}");
        let ends: Vec<usize> = ["used", "1.00", "1234567890.00", "25.50"]
            .iter()
            .zip(&lines)
            .map(|(a, l)| column_of(l, a) + a.width())
            .collect();
        assert!(ends.iter().all(|c| *c == ends[0]), "{ends:?}\n{t}");
        let pays: Vec<usize> = ["payment", "ok", "FAILED", "ok"]
            .iter()
            .zip(&lines)
            .map(|(p, l)| column_of(l, p))
            .collect();
        assert!(pays.iter().all(|c| *c == pays[0]), "{pays:?}\n{t}");
        assert!(lines.iter().all(|l| !l.ends_with(' ')), "{t}");
    }

    #[test]
    fn truncation_counts_columns() {
        assert_eq!(truncate("Acme", 24), "Acme");
        let cut = truncate("株式会社さくらテック株式会社さくらテック", 24);
        assert!(cut.width() <= 24, "{cut}");
        assert!(cut.ends_with('…'));
    }
}
