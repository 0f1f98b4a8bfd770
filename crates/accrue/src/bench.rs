//! `accrue bench`: the SPEC §6 workloads on a fresh store in a temp folder,
//! printed as one JSON line last. A benchmark, not a test: it reports, it
//! does not assert.

use std::sync::Arc;
use std::time::{Duration, Instant};

use accrue_api::{AppState, Tokens};
use accrue_core::events::Plan;
use accrue_core::{BillingFrequency, Command, OpenAccount, UsageInput};
use accrue_ledger::{ClockMode, Ledger, UsageItem, UsageOutcome};
use accrue_store::sqlite::SqliteStore;
use accrue_store::EventStore;
use anyhow::Context;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// A short run (under two minutes on 2 cores).
    #[arg(long)]
    quick: bool,
    /// Store URL for the ingest workloads (default: SQLite in a temp folder).
    #[arg(long)]
    store: Option<String>,
    /// Usage events per ingest workload (default 1,000,000; 200,000 with --quick).
    #[arg(long)]
    events: Option<usize>,
    /// Accounts the events spread over, round robin.
    #[arg(long, default_value_t = 1000)]
    accounts: usize,
    /// Events per request / batch.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Accounts for the period-close workload.
    #[arg(long, default_value_t = 10_000)]
    close_accounts: usize,
    /// Concurrent HTTP connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Run only these workloads (comma-separated: store, inproc, rebuild, license,
    /// http, cloudevents, close, pdf); the others' keys are null. For profiling one.
    /// `cluster` (only when named, and only with a postgres:// store): HTTP
    /// ingest through 1 and then 3 real `serve --partitions 3` processes.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

fn start() -> DateTime<Utc> {
    // A fixed instant keeps runs comparable; the manual clock keeps usage inside the period.
    "2026-01-15T00:00:00Z".parse().expect("constant instant")
}

fn plan() -> Plan {
    Plan {
        full_seats: 5,
        full_seat_price: Decimal::new(4900, 2),
        viewer_seats: 10,
        viewer_seat_price: Decimal::new(900, 2),
        data_management: false,
        data_management_price: Decimal::ZERO,
    }
}

fn open_cmd(id: &str) -> Command {
    Command::Open(Box::new(OpenAccount {
        account_id: id.into(),
        name: format!("Bench {id}"),
        serial_number: format!("SN-{id}"),
        billing_email: format!("billing@{id}.test"),
        email_language: "en".into(),
        address: None,
        currency: "USD".into(),
        billing_frequency: BillingFrequency::Monthly,
        anchor_day: None,
        plan: plan(),
        // Large enough that the bench measures ingest, with the limit check on every event.
        base_credits: Decimal::new(100_000, 0),
        credit_limit: Some(Decimal::new(500, 0)),
        invoice_number: String::new(),
        tax: None,
    }))
}

/// `accrue_t_<temp folder>_<workload>`.
fn pg_schema(dir: &std::path::Path) -> String {
    let parent = dir.parent().unwrap_or(dir);
    let workload: String = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    format!(
        "{}_{}",
        accrue_store::postgres::schema_for(parent),
        workload
    )
}

/// A fresh store for one workload: SQLite in `dir`, or a fresh schema in
/// the PostgreSQL database of `pg`.
fn open_ledger(dir: &std::path::Path, pg: Option<&str>) -> anyhow::Result<Ledger> {
    let store: Arc<dyn EventStore> = match pg {
        None => Arc::new(SqliteStore::open(dir.join("ledger.db"))?),
        // One fresh schema per run and workload: the temp folder's name is unique.
        Some(url) => Arc::new(accrue_store::postgres::PgStore::open_in_schema(
            url,
            &pg_schema(dir),
        )?),
    };
    Ok(Ledger::open(store, ClockMode::Manual(start()))?)
}

/// Opens `n` accounts from several threads so their commits group.
fn open_accounts(ledger: &Ledger, prefix: &str, n: usize) -> anyhow::Result<()> {
    let threads = 16;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let l = ledger.clone();
            let prefix = prefix.to_string();
            std::thread::spawn(move || -> anyhow::Result<()> {
                for i in (t..n).step_by(threads) {
                    let id = format!("{prefix}{i}");
                    l.execute_blocking(&id, open_cmd(&id))?;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("opener panicked"))??;
    }
    Ok(())
}

fn vm_kb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .unwrap_or(0.0)
}

fn percentile_ms(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let pg: Option<String> = match args.store.as_deref() {
        None => None,
        Some(s) if s.starts_with("sqlite") => None,
        Some(s) if s.starts_with("postgres://") || s.starts_with("postgresql://") => {
            Some(s.to_string())
        }
        Some(s) => anyhow::bail!("the bench runs on sqlite or postgres://…, not {s:?}"),
    };
    let pg = pg.as_deref();
    let events = args
        .events
        .unwrap_or(if args.quick { 200_000 } else { 1_000_000 });
    let accounts = args.accounts.max(1);
    let batch = args.batch.clamp(1, accrue_ledger::MAX_BATCH_EVENTS);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let tmp = tempfile::tempdir().context("temp folder")?;
    eprintln!(
        "bench: {events} events, {accounts} accounts, batches of {batch}, {cores} cores, temp {}",
        tmp.path().display()
    );

    let want = |w: &str| args.only.is_empty() || args.only.iter().any(|o| o == w);

    let store_limit = if want("store") {
        // 1. The physical bound: the same rows, no domain logic.
        // Rows are made as they are inserted (the same payload shape accrue
        // writes) so the bench does not hold them all in memory; making them
        // costs the bound a few percent.
        let rows = (0..events).map(|i| {
                let payload = format!(
                    r#"{{"usage_id":"ev-{i}","amount":"0.0125","occurred_at":"2026-01-15T00:00:00Z","product":"chat","period_used":"{}"}}"#,
                    i / accounts
                );
                (format!("account-a{}", i % accounts), payload.into_bytes())
            });
        let raw = tmp.path().join("raw");
        std::fs::create_dir_all(&raw)?;
        let store_limit = match pg {
            None => accrue_store::sqlite::raw_insert_rows_per_s(&raw.join("raw.db"), rows, batch)?,
            Some(url) => {
                accrue_store::postgres::raw_insert_rows_per_s(url, &pg_schema(&raw), rows, batch)?
            }
        };
        eprintln!("store limit: {store_limit:.0} rows/s");
        Some(store_limit)
    } else {
        None
    };

    let (mut inproc_out, mut rss_out, mut rebuild_out) = (None, None, None);
    let mut restart_out: Option<(f64, u64, f64, f64)> = None;
    if want("inproc") || want("rebuild") {
        // 2. In-process ingest: two producers, so commits group as they would under load.
        let dir = tmp.path().join("inproc");
        let ledger = open_ledger(&dir, pg)?;
        open_accounts(&ledger, "a", accounts)?;
        // Two producers, so commits group as they would under load. Each builds
        // its batch right before sending it: building all 10M up front would
        // measure the bench's memory, not accrue's.
        let producers = args.connections;
        let started = Instant::now();
        let handles: Vec<_> = (0..producers)
            .map(|p| {
                let l = ledger.clone();
                std::thread::spawn(move || -> anyhow::Result<usize> {
                    // Producers stand for clients elsewhere: like the HTTP
                    // load clients, they yield to the ledger's own threads.
                    accrue_ledger::priority::lower_current_thread();
                    let mut accepted = 0;
                    let mut b = p;
                    while b * batch < events {
                        let items = (b * batch..((b + 1) * batch).min(events))
                            .map(|n| UsageItem::Valid {
                                account_id: format!("a{}", n % accounts),
                                input: UsageInput {
                                    usage_id: format!("ev-{n}"),
                                    amount: Decimal::new(125, 4),
                                    occurred_at: start(),
                                    product: Some("chat".into()),
                                    feature: None,
                                    metadata: None,
                                },
                                occurred_at_given: false,
                            })
                            .collect();
                        accepted += l
                            .ingest_blocking(items)?
                            .iter()
                            .filter(|o| **o == UsageOutcome::Accepted)
                            .count();
                        b += producers;
                    }
                    Ok(accepted)
                })
            })
            .collect();
        let mut accepted = 0;
        for h in handles {
            accepted += h
                .join()
                .map_err(|_| anyhow::anyhow!("producer panicked"))??;
        }
        let inproc = events as f64 / started.elapsed().as_secs_f64();
        anyhow::ensure!(
            accepted == events,
            "only {accepted} of {events} events were accepted"
        );
        eprintln!("in-process ingest: {inproc:.0} events/s");
        // The resident memory of a ledger holding these accounts and events
        // (writer state, idempotency index, read models), once its threads
        // have fallen idle and returned what the burst freed (`idle.rs`).
        std::thread::sleep(accrue_ledger::idle::IDLE_AFTER * 2);
        let rss_ledger = vm_kb("VmRSS:") / 1024.0;
        eprintln!("rss with the ledger loaded: {rss_ledger:.1} MB");

        inproc_out = Some(inproc);
        rss_out = Some(rss_ledger);
        if want("rebuild") {
            // 3. Rebuild of all read models from position 0.
            let mut models = accrue_projections::ReadModels::default();
            let stats =
                accrue_ledger::replay_into(ledger.store().as_ref(), &mut models, |_, _| {})?;
            let rebuild = stats.events as f64 / stats.seconds.max(1e-9);
            eprintln!("rebuild: {} events at {rebuild:.0} events/s", stats.events);
            drop(models);
            rebuild_out = Some(rebuild);
        }
        ledger.shutdown();
        if want("rebuild") {
            // 3b. A restart (SPEC §12–13): open the store, load the newest
            // snapshot and the log after it, answer the first overview.
            let store = ledger.store().clone();
            drop(ledger);
            let t = Instant::now();
            let at = accrue_ledger::snapshot::write_now(store.as_ref())?;
            let write_s = t.elapsed().as_secs_f64();
            let snapshot_mb = store.read_snapshot(at)?.map_or(0, |b| b.len()) as f64 / 1e6;
            drop(store);
            let t = Instant::now();
            let again = open_ledger(&dir, pg)?;
            let used = again.read().accounts.get("a0").map(|a| a.used);
            let restart = t.elapsed().as_secs_f64();
            anyhow::ensure!(used.is_some(), "the restarted ledger lost account a0");
            eprintln!(
                "restart from a snapshot at {at} events ({snapshot_mb:.1} MB): {restart:.3} s (writing it from a replay took {write_s:.3} s)"
            );
            restart_out = Some((restart, at, write_s, snapshot_mb));
            again.shutdown();
        }
    }

    // 4a. CloudEvents ingest (SPEC §11) over HTTP, the same fast path.
    let ce_out = if want("cloudevents") {
        let rate = cloudevents_ingest(
            &tmp.path().join("cloudevents"),
            pg,
            events,
            accounts,
            batch,
            args.connections,
        )?;
        eprintln!("cloudevents ingest: {rate:.0} events/s");
        Some(rate)
    } else {
        None
    };

    // 4. HTTP ingest with overview queries running alongside.
    let mut effects_out: Option<Effects> = None;
    let http_out = if want("http") {
        let (http, p99, p50, effects) = http_ingest(
            &tmp.path().join("http"),
            pg,
            events,
            accounts,
            batch,
            args.connections,
        )?;
        eprintln!("http ingest: {http:.0} events/s; overview p50 {p50:.3} ms, p99 {p99:.3} ms");
        if let Some(e) = &effects {
            eprintln!(
                "projectors during ingest: max lag {} events; {} invoices closed mid-ingest: first PDF and mail {:.3} s, all {:.3} s after the close",
                e.lag_max_events, e.invoices, e.first_s, e.all_s
            );
        }
        effects_out = effects;
        Some((http, p99, p50))
    } else {
        None
    };

    // 5. The license server: activations, then 304 polls (keep-alive).
    let license_out = if want("license") {
        let (act, poll) =
            license_bench(&tmp.path().join("license"), pg, accounts, args.connections)?;
        eprintln!("license: {act:.0} activations/s; {poll:.0} polls/s answered 304");
        Some((act, poll))
    } else {
        None
    };

    let n_close = if args.quick {
        args.close_accounts.min(10_000)
    } else {
        args.close_accounts
    };
    let (mut close_out, mut pdf_out) = (None, None);
    if want("close") || want("pdf") {
        // 5. Closing many accounts at once, then rendering their invoices.
        let dir = tmp.path().join("close");
        let ledger = open_ledger(&dir, pg)?;
        open_accounts(&ledger, "c", n_close)?;
        let items: Vec<UsageItem> = (0..n_close)
            .map(|i| UsageItem::Valid {
                account_id: format!("c{i}"),
                input: UsageInput {
                    usage_id: format!("u{i}"),
                    amount: Decimal::new(100_250, 2),
                    occurred_at: start(),
                    product: None,
                    feature: None,
                    metadata: None,
                },
                occurred_at_given: false,
            })
            .collect();
        for chunk in items.chunks(accrue_ledger::MAX_BATCH_EVENTS) {
            ledger.ingest_blocking(chunk.to_vec())?;
        }
        let started = Instant::now();
        ledger.advance_clock_blocking("2026-02-15T00:00:00Z".parse()?)?;
        let close_s = started.elapsed().as_secs_f64();
        let closed = ledger.read().invoices.len();
        eprintln!("close: {n_close} accounts in {close_s:.2} s ({closed} invoices in the ledger)");

        close_out = Some(close_s);
        if want("pdf") {
            let records: Vec<_> = ledger
                .read()
                .invoices
                .values()
                .take(if args.quick { 1000 } else { 4000 })
                .map(|r| (**r).clone())
                .collect();
            let invoices = records
                .iter()
                .map(|r| ledger.invoice_issued(r))
                .collect::<Result<Vec<_>, _>>()?;
            accrue_projections::pdf::render(&invoices[0])?; // parse the font once, outside the timing
            let started = Instant::now();
            let chunk = invoices.len().div_ceil(cores);
            std::thread::scope(|s| -> anyhow::Result<()> {
                let hs: Vec<_> = invoices
                    .chunks(chunk.max(1))
                    .map(|c| {
                        s.spawn(move || {
                            c.iter()
                                .try_for_each(|i| accrue_projections::pdf::render(i).map(drop))
                        })
                    })
                    .collect();
                for h in hs {
                    h.join()
                        .map_err(|_| anyhow::anyhow!("renderer panicked"))??;
                }
                Ok(())
            })?;
            let pdf = invoices.len() as f64 / started.elapsed().as_secs_f64();
            eprintln!("pdf: {pdf:.0} renders/s");
            pdf_out = Some(pdf);
        }
        ledger.shutdown();
    }

    let cluster_out = if args.only.iter().any(|o| o == "cluster") {
        let Some(url) = pg else {
            anyhow::bail!("--only cluster needs --store postgres://… (a cluster's leases are PostgreSQL locks)");
        };
        let c = tmp.path().join("cluster");
        std::fs::create_dir_all(&c)?;
        Some(crate::bench_cluster::run(
            &c,
            url,
            &pg_schema(&c),
            events,
            accounts,
            batch,
            args.connections,
        )?)
    } else {
        None
    };

    let line = serde_json::json!({
        "cluster_1_node_http_ingest_events_per_s": cluster_out.map(|c| c.0.round()),
        "cluster_3_nodes_http_ingest_events_per_s": cluster_out.map(|c| c.1.round()),
        "cluster_3_to_1_ratio": cluster_out.map(|c| (c.1 / c.0 * 100.0).round() / 100.0),
        "http_ingest_events_per_s": http_out.map(|h| h.0.round()),
        "cloudevents_ingest_events_per_s": ce_out.map(f64::round),
        "inproc_ingest_events_per_s": inproc_out.map(f64::round),
        "overview_p99_ms": http_out.map(|h| (h.1 * 1000.0).round() / 1000.0),
        "overview_p50_ms": http_out.map(|h| (h.2 * 1000.0).round() / 1000.0),
        "rebuild_events_per_s": rebuild_out.map(f64::round),
        "restart_s": restart_out.map(|r| (r.0 * 1000.0).round() / 1000.0),
        "restart_events": restart_out.map(|r| r.1),
        "snapshot_write_s": restart_out.map(|r| (r.2 * 1000.0).round() / 1000.0),
        "snapshot_mb": restart_out.map(|r| (r.3 * 10.0).round() / 10.0),
        "projector_lag_max_events": effects_out.as_ref().map(|e| e.lag_max_events),
        "invoice_effects_after_close_s": effects_out.as_ref().map(|e| (e.all_s * 1000.0).round() / 1000.0),
        "invoice_effects_first_after_close_s": effects_out.as_ref().map(|e| (e.first_s * 1000.0).round() / 1000.0),
        "invoices_closed_during_ingest": effects_out.as_ref().map(|e| e.invoices),
        "pdf_per_s": pdf_out.map(f64::round),
        "activations_per_s": license_out.map(|l| l.0.round()),
        "license_poll_304_per_s": license_out.map(|l| l.1.round()),
        "close_10k_accounts_s": close_out.map(|c| (c * 1000.0).round() / 1000.0),
        "close_accounts": n_close,
        "rss_mb": rss_out.map(|r| (r * 10.0).round() / 10.0),
        "rss_peak_mb": (vm_kb("VmHWM:") / 1024.0 * 10.0).round() / 10.0,
        "store_limit_events_per_s": store_limit.map(f64::round),
        "store": if pg.is_some() { "postgres" } else { "sqlite" },
        "durable": if pg.is_some() { "synchronous_commit=on" } else { "synchronous=FULL" },
        "events": events,
        "accounts": accounts,
        "batch": batch,
        "cores": cores,
        "quick": args.quick,
    });
    println!("{line}");
    Ok(())
}

/// What `serve`'s side-effect projectors did while HTTP ingest ran.
struct Effects {
    lag_max_events: u64,
    invoices: usize,
    /// From the close to the first invoice's PDF file and mail.
    first_s: f64,
    /// From the close to every invoice's PDF file and mail.
    all_s: f64,
}

fn files_in(dir: &std::path::Path, ext: &str) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(ext))
            .count()
    })
}

/// Runs the real router on loopback and drives it with `connections`
/// concurrent clients; a separate task queries overviews meanwhile, and
/// `serve`'s PDF writer and mailer (to an outbox) run beside them. Halfway
/// through, the clock closes every account's period: the time until each
/// new invoice has its PDF and its mail is measured while ingest goes on.
type Served = (
    tokio::runtime::Runtime,
    std::net::SocketAddr,
    tokio::task::JoinHandle<std::io::Result<()>>,
);

/// The real router on loopback, on a runtime of its own (as a separate
/// server process would be), pinned like `serve`'s.
fn serve_router(state: AppState) -> anyhow::Result<Served> {
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("bench-server")
        .on_thread_start(accrue_ledger::priority::pin_serving)
        .worker_threads(crate::SERVER_THREADS.max(crate::cores()))
        .enable_all()
        .build()?;
    let listener = server_rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let limits = accrue_api::server::ServeConfig::from_env().map_err(|e| anyhow::anyhow!(e))?;
    let server = server_rt.spawn(accrue_api::server::serve(
        listener,
        accrue_api::router(state),
        limits,
        std::future::pending(),
    ));
    Ok((server_rt, addr, server))
}

/// The load clients' runtime (nice 19: they stand for remote clients).
fn load_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .thread_name("bench-load")
        .on_thread_start(accrue_ledger::priority::lower_current_thread)
        .enable_all()
        .build()
}

/// A minimal SMTP server on loopback that takes every mail and counts
/// mails and sessions (the bench must not need an outside relay).
#[derive(Clone)]
struct SmtpSink {
    addr: std::net::SocketAddr,
    mails: Arc<std::sync::atomic::AtomicUsize>,
    sessions: Arc<std::sync::atomic::AtomicUsize>,
}

impl SmtpSink {
    fn start() -> anyhow::Result<SmtpSink> {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let sink = SmtpSink {
            addr: listener.local_addr()?,
            mails: Default::default(),
            sessions: Default::default(),
        };
        let s = sink.clone();
        std::thread::Builder::new()
            .name("bench-smtp".into())
            .spawn(move || {
                for conn in listener.incoming().flatten() {
                    let s = s.clone();
                    s.sessions
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    std::thread::spawn(move || -> std::io::Result<()> {
                        conn.set_nodelay(true)?;
                        let mut w = conn.try_clone()?;
                        let mut r = BufReader::new(conn);
                        w.write_all(b"220 bench ESMTP\r\n")?;
                        let mut line = String::new();
                        let mut data = false;
                        loop {
                            line.clear();
                            if r.read_line(&mut line)? == 0 {
                                return Ok(());
                            }
                            if data {
                                if line == ".\r\n" {
                                    data = false;
                                    s.mails.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    w.write_all(b"250 2.0.0 queued\r\n")?;
                                }
                                continue;
                            }
                            let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                            match verb.as_str() {
                                "EHLO" | "HELO" => w.write_all(b"250 bench\r\n")?,
                                "DATA" => {
                                    data = true;
                                    w.write_all(b"354 go ahead\r\n")?
                                }
                                "QUIT" => {
                                    w.write_all(b"221 bye\r\n")?;
                                    return Ok(());
                                }
                                _ => w.write_all(b"250 ok\r\n")?,
                            }
                        }
                    });
                }
            })?;
        Ok(sink)
    }

    fn mails(&self) -> usize {
        self.mails.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// `POST /api/v1/events` with `application/cloudevents-batch+json`
/// batches from `connections` clients; events per second accepted.
fn cloudevents_ingest(
    dir: &std::path::Path,
    pg: Option<&str>,
    events: usize,
    accounts: usize,
    batch: usize,
    connections: usize,
) -> anyhow::Result<f64> {
    let ledger = open_ledger(dir, pg)?;
    open_accounts(&ledger, "ce", accounts)?;
    let (tokens, _) =
        Tokens::load(&ledger, Some("bench-admin-token")).map_err(|e| anyhow::anyhow!(e.detail))?;
    let state = AppState {
        ledger: ledger.clone(),
        tokens: Arc::new(tokens),
    };
    let body = move |b: usize| -> Option<String> {
        if b * batch >= events {
            return None;
        }
        let evs: Vec<String> = (b * batch..((b + 1) * batch).min(events))
            .map(|n| {
                format!(
                    r#"{{"specversion":"1.0","id":"ce-{n}","source":"/bench","type":"chat","subject":"ce{}","data":{{"amount":"0.0125"}}}}"#,
                    n % accounts
                )
            })
            .collect();
        Some(format!("[{}]", evs.join(",")))
    };
    let (server_rt, addr, server) = serve_router(state)?;
    let rt = load_runtime()?;
    let rate = rt.block_on(async move {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(connections + 2)
            .build()?;
        let url = format!("http://{addr}/api/v1/events");
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let started = Instant::now();
        let workers: Vec<_> = (0..connections)
            .map(|_| {
                let (client, url, next) = (client.clone(), url.clone(), next.clone());
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(body) = body(i) else { break };
                        let r = client
                            .post(&url)
                            .bearer_auth("bench-admin-token")
                            .header("content-type", "application/cloudevents-batch+json")
                            .body(body)
                            .send()
                            .await?;
                        anyhow::ensure!(
                            r.status() == reqwest::StatusCode::NO_CONTENT,
                            "cloudevents ingest answered {}",
                            r.status()
                        );
                        let _ = r.bytes().await?;
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        for w in workers {
            w.await??;
        }
        anyhow::Ok(events as f64 / started.elapsed().as_secs_f64())
    });
    server.abort();
    drop(server_rt);
    ledger.shutdown();
    rate
}

fn http_ingest(
    dir: &std::path::Path,
    pg: Option<&str>,
    events: usize,
    accounts: usize,
    batch: usize,
    connections: usize,
) -> anyhow::Result<(f64, f64, f64, Option<Effects>)> {
    let ledger = open_ledger(dir, pg)?;
    open_accounts(&ledger, "h", accounts)?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (pdf_dir, outbox) = (dir.join("invoices"), dir.join("outbox"));
    // Mails go over SMTP to a sink on loopback, through the mailer's pooled
    // connection, as `serve --smtp` sends them.
    let sink = SmtpSink::start()?;
    let pdf =
        accrue_ledger::projectors::spawn_pdf_writer(ledger.clone(), pdf_dir.clone(), stop.clone())?;
    let mailer = accrue_ledger::projectors::spawn_mailer(
        ledger.clone(),
        accrue_projections::mail::MailTransport::from_url(
            Some(&format!("smtp://{}", sink.addr)),
            outbox.clone(),
            &accrue_projections::mail::SmtpOptions::default(),
        )
        .map_err(|e| anyhow::anyhow!("bench SMTP sink: {e}"))?,
        "Billing <billing@bench.example>".into(),
        stop.clone(),
    )?;
    // The opening invoices first, so the close is measured on its own.
    for p in ["pdf", "mailer"] {
        accrue_ledger::projectors::wait_caught_up(&ledger, p, Duration::from_secs(300));
    }
    let (pdfs_before, mails_before) = (files_in(&pdf_dir, ".pdf"), sink.mails());
    let (tokens, _) =
        Tokens::load(&ledger, Some("bench-admin-token")).map_err(|e| anyhow::anyhow!(e.detail))?;
    let state = AppState {
        ledger: ledger.clone(),
        tokens: Arc::new(tokens),
    };
    // Each client builds its body right before sending it (a few µs per
    // batch), so memory stays the server's.
    let body = move |b: usize| -> Option<String> {
        if b * batch >= events {
            return None;
        }
        let evs: Vec<String> = (b * batch..((b + 1) * batch).min(events))
            .map(|n| {
                format!(
                    r#"{{"id":"ev-{n}","account_id":"h{}","amount":"0.0125","product":"chat"}}"#,
                    n % accounts
                )
            })
            .collect();
        Some(format!(r#"{{"events":[{}]}}"#, evs.join(",")))
    };
    // The server, the load clients and the query client each get their own
    // runtime (threads), as separate processes would: the load generator's
    // work never queues the server's or the query client's tasks.
    let (server_rt, addr, server) = serve_router(state)?;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Overview queries every 2 ms while ingest runs.
    let query = {
        let done = done.clone();
        std::thread::Builder::new()
            .name("bench-query".into())
            .spawn(move || -> anyhow::Result<Vec<f64>> {
                // It stands for a client on another machine: like the load
                // clients (nice 19), it must not take the server's CPU time
                // where that would not happen, so it stays off the
                // committer's CPU as the server's query threads do.
                accrue_ledger::priority::pin_serving();
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let client = reqwest::Client::new();
                    let mut lat = Vec::new();
                    let mut i = 0usize;
                    while !done.load(std::sync::atomic::Ordering::Relaxed) {
                        let t = Instant::now();
                        let r = client
                            .get(format!("http://{addr}/v1/accounts/h{}", i % accounts))
                            .bearer_auth("bench-admin-token")
                            .send()
                            .await;
                        if let Ok(r) = r {
                            let _ = r.bytes().await;
                            lat.push(t.elapsed().as_secs_f64() * 1000.0);
                        }
                        i += 1;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Ok(lat)
                })
            })?
    };
    let rt = load_runtime()?;
    let closer_ledger = ledger.clone();
    let closer_sink = sink.clone();
    let load = rt.block_on(async move {
        let sink = closer_sink;
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(connections + 2)
            .build()?;
        let url = format!("http://{addr}/v1/usage");
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let started = Instant::now();
        let closer = {
            let (next, ledger) = (next.clone(), closer_ledger);
            let (pdf_dir, sink) = (pdf_dir.clone(), sink.clone());
            let half = events.div_ceil(batch) / 2;
            std::thread::spawn(move || -> anyhow::Result<Option<Effects>> {
                while next.load(std::sync::atomic::Ordering::Relaxed) < half {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let closed_at = Instant::now();
                ledger.advance_clock_blocking(start() + chrono::Duration::days(31))?;
                let want = accounts;
                let (mut first, mut lag_max) = (None, 0u64);
                let deadline = closed_at + Duration::from_secs(120);
                loop {
                    lag_max = lag_max.max(ledger.metrics().projector_lag_max());
                    let pdfs = files_in(&pdf_dir, ".pdf") - pdfs_before;
                    let mails = sink.mails() - mails_before;
                    if first.is_none() && pdfs >= 1 && mails >= 1 {
                        first = Some(closed_at.elapsed().as_secs_f64());
                    }
                    if pdfs >= want && mails >= want {
                        return Ok(Some(Effects {
                            lag_max_events: lag_max,
                            invoices: want,
                            first_s: first.unwrap_or_default(),
                            all_s: closed_at.elapsed().as_secs_f64(),
                        }));
                    }
                    if Instant::now() > deadline {
                        eprintln!("bench: the projectors did not finish within 120 s ({pdfs} PDFs, {mails} mails of {want})");
                        return Ok(None);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        let workers: Vec<_> = (0..connections)
            .map(|_| {
                let client = client.clone();
                let url = url.clone();
                let next = next.clone();
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(body) = body(i) else { break };
                        let r = client
                            .post(&url)
                            .bearer_auth("bench-admin-token")
                            .header("content-type", "application/json")
                            .body(body)
                            .send()
                            .await?;
                        anyhow::ensure!(r.status().is_success(), "ingest answered {}", r.status());
                        let _ = r.bytes().await?;
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        for w in workers {
            w.await??;
        }
        let rate = events as f64 / started.elapsed().as_secs_f64();
        let effects = closer
            .join()
            .map_err(|_| anyhow::anyhow!("the closer panicked"))??;
        anyhow::Ok((rate, effects))
    });
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let lat = query
        .join()
        .map_err(|_| anyhow::anyhow!("query client panicked"))??;
    server.abort();
    drop(server_rt);
    let result = load.map(|(rate, effects)| {
        (
            rate,
            percentile_ms(lat.clone(), 0.99),
            percentile_ms(lat, 0.5),
            effects,
        )
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = pdf.join();
    let _ = mailer.join();
    eprintln!(
        "smtp sink: {} mails over {} SMTP sessions",
        sink.mails(),
        sink.sessions.load(std::sync::atomic::Ordering::Relaxed)
    );
    ledger.shutdown();
    result
}

/// Activates one server on each of up to 1,000 accounts over HTTP, then
/// polls the signed definition with `If-None-Match` from `connections`
/// keep-alive clients for 3 s: (activations/s, 304 answers/s).
fn license_bench(
    dir: &std::path::Path,
    pg: Option<&str>,
    accounts: usize,
    connections: usize,
) -> anyhow::Result<(f64, f64)> {
    let ledger = open_ledger(dir, pg)?;
    let n = accounts.clamp(1, 1000);
    open_accounts(&ledger, "l", n)?;
    let (tokens, _) =
        Tokens::load(&ledger, Some("bench-admin-token")).map_err(|e| anyhow::anyhow!(e.detail))?;
    let state = AppState {
        ledger: ledger.clone(),
        tokens: Arc::new(tokens),
    };
    let (server_rt, addr, server) = serve_router(state)?;
    let rt = load_runtime()?;
    let result = rt.block_on(async move {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(connections + 2)
            .build()?;
        let base = format!("http://{addr}");
        let mut creds = Vec::with_capacity(n);
        for i in 0..n {
            let r = client
                .get(format!("{base}/v1/accounts/l{i}"))
                .bearer_auth("bench-admin-token")
                .send()
                .await?;
            let v: serde_json::Value = serde_json::from_slice(&r.bytes().await?)?;
            let serial = v["serial_number"].as_str().unwrap_or_default().to_string();
            let control = v["license"]["control_number"].as_str().unwrap_or_default().to_string();
            anyhow::ensure!(!control.is_empty(), "no control number in the overview: {v}");
            creds.push((serial, control));
        }
        let creds = Arc::new(creds);
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let started = Instant::now();
        let workers: Vec<_> = (0..connections)
            .map(|_| {
                let (client, base, creds, next) = (client.clone(), base.clone(), creds.clone(), next.clone());
                tokio::spawn(async move {
                    let mut tokens = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((serial, control)) = creds.get(i) else { break };
                        let body = serde_json::json!({"serial_number": serial, "control_number": control, "server_id": format!("srv-{i}")});
                        let r = client
                            .post(format!("{base}/v1/activations"))
                            .header("content-type", "application/json")
                            .body(body.to_string())
                            .send()
                            .await?;
                        anyhow::ensure!(r.status().as_u16() == 201, "activation answered {}", r.status());
                        let v: serde_json::Value = serde_json::from_slice(&r.bytes().await?)?;
                        tokens.push(v["token"].as_str().unwrap_or_default().to_string());
                    }
                    anyhow::Ok(tokens)
                })
            })
            .collect();
        let mut tokens = Vec::new();
        for w in workers {
            tokens.extend(w.await??);
        }
        let activations = n as f64 / started.elapsed().as_secs_f64();
        // Each client polls with its own server's token and version.
        let polls = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let until = Instant::now() + Duration::from_secs(3);
        let started = Instant::now();
        let pollers: Vec<_> = (0..connections)
            .map(|c| {
                let (client, base, polls) = (client.clone(), base.clone(), polls.clone());
                let token = tokens[c % tokens.len()].clone();
                tokio::spawn(async move {
                    let r = client.get(format!("{base}/v1/license")).bearer_auth(&token).send().await?;
                    let etag = r
                        .headers()
                        .get("etag")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    let _ = r.bytes().await?;
                    while Instant::now() < until {
                        let r = client
                            .get(format!("{base}/v1/license"))
                            .bearer_auth(&token)
                            .header("if-none-match", &etag)
                            .send()
                            .await?;
                        anyhow::ensure!(r.status().as_u16() == 304, "a poll answered {}", r.status());
                        let _ = r.bytes().await?;
                        polls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        for p in pollers {
            p.await??;
        }
        let poll = polls.load(std::sync::atomic::Ordering::Relaxed) as f64
            / started.elapsed().as_secs_f64();
        anyhow::Ok((activations, poll))
    });
    server.abort();
    drop(server_rt);
    ledger.shutdown();
    result
}
