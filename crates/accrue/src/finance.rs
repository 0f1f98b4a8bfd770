//! Finance tooling on the command line: export, import, invoice re-render audit.

use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use accrue_ledger::{ClockMode, Ledger, UsageItem, UsageOutcome};
use accrue_store::EventStore;
use anyhow::{bail, Context};
use chrono::NaiveDate;

use crate::progress::Progress;

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn csv_row(w: &mut impl Write, fields: &[String]) -> std::io::Result<()> {
    let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
    writeln!(w, "{}", line.join(","))
}

/// Writes `events.<fmt>` and `invoices.<fmt>` for `[from, to]` (inclusive
/// dates: events by `occurred_at`, invoices by issue date).
pub fn export(
    store: Arc<dyn EventStore>,
    from: NaiveDate,
    to: NaiveDate,
    format: &str,
    out: &Path,
) -> anyhow::Result<()> {
    if from > to {
        bail!("--from {from} is after --to {to}");
    }
    let csv = match format {
        "csv" => true,
        "jsonl" => false,
        f => bail!("--format must be csv or jsonl, got {f:?}"),
    };
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let ext = if csv { "csv" } else { "jsonl" };
    let mut ev = BufWriter::new(std::fs::File::create(out.join(format!("events.{ext}")))?);
    if csv {
        csv_row(
            &mut ev,
            &[
                "position",
                "stream",
                "version",
                "type",
                "schema",
                "occurred_at",
                "recorded_at",
                "hash",
                "data",
            ]
            .map(String::from),
        )?;
    }
    let head = store.head_position()?;
    let bar = Progress::new("export", head);
    let mut after = 0;
    let mut n_events = 0u64;
    loop {
        let page = store.read_all(after, 10_000)?;
        if page.is_empty() {
            break;
        }
        for e in &page {
            after = e.position;
            let d = e.occurred_at.date_naive();
            if d < from || d > to {
                continue;
            }
            n_events += 1;
            let data = String::from_utf8_lossy(&e.payload).to_string();
            if csv {
                csv_row(
                    &mut ev,
                    &[
                        e.position.to_string(),
                        e.stream.clone(),
                        e.version.to_string(),
                        e.type_name.clone(),
                        e.schema.to_string(),
                        e.occurred_at.to_rfc3339(),
                        e.recorded_at.to_rfc3339(),
                        hex_hash(&e.hash),
                        data,
                    ],
                )?;
            } else {
                let data: serde_json::Value =
                    serde_json::from_str(&data).unwrap_or(serde_json::Value::Null);
                writeln!(
                    ev,
                    "{}",
                    serde_json::json!({"position": e.position, "stream": e.stream, "version": e.version, "type": e.type_name,
                        "schema": e.schema, "occurred_at": e.occurred_at, "recorded_at": e.recorded_at, "hash": hex_hash(&e.hash), "data": data})
                )?;
            }
        }
        bar.set(after);
    }
    bar.finish();
    ev.flush()?;

    let mut models = accrue_projections::ReadModels::default();
    accrue_ledger::replay_into(store.as_ref(), &mut models, |_, _| {})?;
    let mut invoices: Vec<_> = models
        .invoices
        .values()
        .filter(|r| {
            let d = r.issued.issued_at.date_naive();
            from <= d && d <= to
        })
        .collect();
    invoices.sort_by(|a, b| a.issued.number.cmp(&b.issued.number));
    let mut iv = BufWriter::new(std::fs::File::create(out.join(format!("invoices.{ext}")))?);
    if csv {
        csv_row(
            &mut iv,
            &[
                "number",
                "account_id",
                "date",
                "due_date",
                "period_start",
                "period_end",
                "status",
                "total",
                "currency",
                "lines",
                "pdf_sha256",
                // SPEC §14, appended so earlier columns keep their place.
                "net",
                "tax",
                "tax_treatment",
                "tax_country",
                "customer_tax_id",
            ]
            .map(String::from),
        )?;
    }
    for r in &invoices {
        let i = &r.issued;
        let full = accrue_ledger::invoice_issued(store.as_ref(), r)?;
        let tax = tax_columns(full.legal.as_deref(), i.total);
        let (ps, pe) = i
            .billing_period
            .or(i.credit_period)
            .map_or((String::new(), String::new()), |p| {
                (p.start.to_rfc3339(), p.end.to_rfc3339())
            });
        if csv {
            csv_row(
                &mut iv,
                &[
                    i.number.clone(),
                    r.account_id.clone(),
                    i.issued_at.format("%Y-%m-%d").to_string(),
                    i.due_date.format("%Y-%m-%d").to_string(),
                    ps,
                    pe,
                    r.status.as_str().to_string(),
                    i.total.to_string(),
                    i.currency.to_string(),
                    full.lines.len().to_string(),
                    r.pdf_sha256.clone().unwrap_or_default(),
                    tax.net.clone(),
                    tax.tax.clone(),
                    tax.treatment.clone(),
                    tax.country.clone(),
                    tax.customer_tax_id.clone(),
                ],
            )?;
        } else {
            let lines: Vec<_> = full
                .lines
                .iter()
                .map(|l| serde_json::json!({"description": l.description, "quantity": l.quantity.to_string(), "unit_price": l.unit_price.to_string(), "amount": l.amount.to_string()}))
                .collect();
            writeln!(
                iv,
                "{}",
                serde_json::json!({"number": i.number, "account_id": r.account_id, "date": i.issued_at.format("%Y-%m-%d").to_string(),
                    "due_date": i.due_date.format("%Y-%m-%d").to_string(), "period": {"start": ps, "end": pe}, "status": r.status.as_str(),
                    "net": tax.net, "tax": tax.tax, "total": i.total.to_string(), "currency": i.currency,
                    "tax_treatment": tax.treatment, "tax_country": tax.country, "customer_tax_id": tax.customer_tax_id,
                    "lines": lines, "pdf_sha256": r.pdf_sha256})
            )?;
        }
    }
    iv.flush()?;

    // Credit notes of the range, each naming the invoice it credits.
    let mut notes: Vec<_> = models
        .credit_notes
        .values()
        .filter(|r| {
            let d = r.issued_at.date_naive();
            from <= d && d <= to
        })
        .collect();
    notes.sort_by(|a, b| a.number.cmp(&b.number));
    let mut cv = BufWriter::new(std::fs::File::create(
        out.join(format!("credit_notes.{ext}")),
    )?);
    if csv {
        csv_row(
            &mut cv,
            &[
                "number",
                "invoice_number",
                "account_id",
                "date",
                "reason",
                "total",
                "currency",
                "lines",
                "pdf_sha256",
                "net",
                "tax",
                "tax_treatment",
                "tax_country",
                "customer_tax_id",
            ]
            .map(String::from),
        )?;
    }
    for r in &notes {
        let full = accrue_ledger::credit_note_issued(store.as_ref(), r)?;
        let tax = tax_columns(full.legal.as_deref(), r.total);
        if csv {
            csv_row(
                &mut cv,
                &[
                    r.number.clone(),
                    r.invoice_number.clone(),
                    r.account_id.clone(),
                    r.issued_at.format("%Y-%m-%d").to_string(),
                    r.reason.clone(),
                    r.total.to_string(),
                    r.currency.clone(),
                    full.lines.len().to_string(),
                    r.pdf_sha256.clone().unwrap_or_default(),
                    tax.net.clone(),
                    tax.tax.clone(),
                    tax.treatment.clone(),
                    tax.country.clone(),
                    tax.customer_tax_id.clone(),
                ],
            )?;
        } else {
            let lines: Vec<_> = full
                .lines
                .iter()
                .map(|l| serde_json::json!({"description": l.description, "amount": l.amount.to_string(), "usage_id": l.usage_id}))
                .collect();
            writeln!(
                cv,
                "{}",
                serde_json::json!({"number": r.number, "invoice_number": r.invoice_number, "account_id": r.account_id,
                    "date": r.issued_at.format("%Y-%m-%d").to_string(), "reason": r.reason, "net": tax.net, "tax": tax.tax, "total": r.total.to_string(),
                    "tax_treatment": tax.treatment, "tax_country": tax.country, "customer_tax_id": tax.customer_tax_id,
                    "currency": r.currency, "lines": lines, "pdf_sha256": r.pdf_sha256})
            )?;
        }
    }
    cv.flush()?;
    println!(
        "exported {n_events} events, {} invoices and {} credit notes ({from} – {to}) to {}",
        invoices.len(),
        notes.len(),
        out.display()
    );
    Ok(())
}

fn hex_hash(h: &[u8; 32]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bulk-ingests usage from a JSON-lines file with the API's rules. Bad lines
/// are reported with their number and store nothing; the rest go on.
/// Returns the number of lines that were not accepted or duplicates.
pub fn import(store: Arc<dyn EventStore>, file: &Path, clock: ClockMode) -> anyhow::Result<u64> {
    let ledger = Ledger::open(store, clock)?;
    let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let total = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    // Bytes of the file read so far: lines vary in length, bytes are exact.
    let bar = Progress::with_unit("import", total, crate::progress::Unit::Bytes);
    let mut read_bytes = 0u64;
    let (mut accepted, mut duplicates, mut bad) = (0u64, 0u64, 0u64);
    let mut batch: Vec<(usize, UsageItem)> = Vec::new();
    let flush = |batch: &mut Vec<(usize, UsageItem)>,
                 accepted: &mut u64,
                 duplicates: &mut u64,
                 bad: &mut u64|
     -> anyhow::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let (lines, items): (Vec<usize>, Vec<UsageItem>) =
            std::mem::take(batch).into_iter().unzip();
        for (line, o) in lines.into_iter().zip(ledger.ingest_blocking(items)?) {
            match o {
                UsageOutcome::Accepted => *accepted += 1,
                UsageOutcome::Duplicate => *duplicates += 1,
                UsageOutcome::Rejected { reason, detail } => {
                    *bad += 1;
                    eprintln!("line {line}: rejected {reason}: {detail}");
                }
            }
        }
        Ok(())
    };
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let n = i + 1;
        let line = line.with_context(|| format!("reading line {n}"))?;
        read_bytes += line.len() as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        match accrue_api::parse_usage_line(&line) {
            Ok(item) => batch.push((n, item)),
            Err(e) => {
                bad += 1;
                eprintln!("line {n}: malformed: {e}");
            }
        }
        if batch.len() >= 1000 {
            flush(&mut batch, &mut accepted, &mut duplicates, &mut bad)?;
            bar.set(read_bytes);
        }
    }
    flush(&mut batch, &mut accepted, &mut duplicates, &mut bad)?;
    bar.finish();
    ledger.shutdown();
    println!(
        "imported {}: {accepted} accepted, {duplicates} duplicates, {bad} refused",
        file.display()
    );
    Ok(bad)
}

/// Re-renders every invoice from the events and compares its SHA-256 with
/// the one recorded when it was first rendered. Returns the mismatches.
pub fn audit_invoices(store: Arc<dyn EventStore>) -> anyhow::Result<u64> {
    let mut models = accrue_projections::ReadModels::default();
    accrue_ledger::replay_into(store.as_ref(), &mut models, |_, _| {})?;
    let mut numbers: Vec<&String> = models.invoices.keys().collect();
    numbers.sort();
    let bar = Progress::with_unit(
        "invoices",
        numbers.len() as u64,
        crate::progress::Unit::Invoices,
    );
    let (mut ok, mut unrecorded, mut mismatched) = (0u64, 0u64, 0u64);
    for (i, n) in numbers.iter().enumerate() {
        let r = &models.invoices[*n];
        let full = accrue_ledger::invoice_issued(store.as_ref(), r)?;
        let pdf = accrue_projections::pdf::render(&full)?;
        let sha = accrue_projections::pdf::sha256_hex(&pdf);
        match &r.pdf_sha256 {
            None => unrecorded += 1,
            Some(rec) if *rec == sha => ok += 1,
            Some(rec) => {
                mismatched += 1;
                eprintln!("{n}: recorded {rec}, re-rendered {sha}");
            }
        }
        bar.set(i as u64 + 1);
    }
    bar.finish();
    // Credit notes: the same proof, their own renderer.
    let mut notes: Vec<&String> = models.credit_notes.keys().collect();
    notes.sort();
    let (mut cn_ok, mut cn_unrecorded) = (0u64, 0u64);
    for n in &notes {
        let r = &models.credit_notes[*n];
        let full = accrue_ledger::credit_note_issued(store.as_ref(), r)?;
        let sha = accrue_projections::pdf::sha256_hex(
            &accrue_projections::pdf::render_credit_note(&full)?,
        );
        match &r.pdf_sha256 {
            None => cn_unrecorded += 1,
            Some(rec) if *rec == sha => cn_ok += 1,
            Some(rec) => {
                mismatched += 1;
                eprintln!("{n}: recorded {rec}, re-rendered {sha}");
            }
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "invoices": numbers.len(), "matching": ok, "not_yet_rendered": unrecorded,
            "credit_notes": notes.len(), "credit_notes_matching": cn_ok,
            "credit_notes_not_yet_rendered": cn_unrecorded,
            "mismatched": mismatched
        })
    );
    Ok(mismatched)
}

pub fn default_export_dir() -> PathBuf {
    PathBuf::from("./accrue-export")
}

/// A document's tax as exported: net, tax, treatment, country and the
/// customer's tax id (empty without tax facts; the net is then the total).
struct TaxColumns {
    net: String,
    tax: String,
    treatment: String,
    country: String,
    customer_tax_id: String,
}

fn tax_columns(
    legal: Option<&accrue_core::events::DocumentLegal>,
    total: rust_decimal::Decimal,
) -> TaxColumns {
    match legal.and_then(|l| l.tax.as_ref()) {
        None => TaxColumns {
            net: total.to_string(),
            tax: "0.00".into(),
            treatment: String::new(),
            country: String::new(),
            customer_tax_id: String::new(),
        },
        Some(t) => {
            let mut tax = t.tax_total();
            tax.rescale(2);
            TaxColumns {
                net: t.net.to_string(),
                tax: tax.to_string(),
                treatment: t.treatment.as_str().into(),
                country: t.country.clone(),
                customer_tax_id: t.customer_tax_id.clone().unwrap_or_default(),
            }
        }
    }
}
