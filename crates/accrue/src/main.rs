//! The accrue binary: CLI, configuration and wiring. Thin by design.

mod bench;
mod bench_cluster;
mod cluster;
mod demo;
mod finance;
mod legal;
mod license_agent;
mod progress;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use accrue_api::{AppState, Tokens};

/// mimalloc: the ledger allocates small strings and vectors on one thread
/// and frees them on another (writer → committer, reader → applier), where
/// glibc's malloc spent about 40% of a rebuild in its slow paths.
/// At least this many async threads serve HTTP, even on two cores: a query
/// then finds a free thread while others move ingest bodies (the bulk work
/// itself runs on the low-priority pool).
pub const SERVER_THREADS: usize = 4;

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use accrue_ledger::{ClockMode, Ledger};
use accrue_store::sqlite::SqliteStore;
use accrue_store::EventStore;
use anyhow::{bail, Context};
use chrono::{DateTime, NaiveDate, Utc};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "accrue",
    version,
    about = "Event-sourced billing and AI-credits ledger"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Clone)]
struct StoreArgs {
    /// Data folder (the embedded store, PDFs, outbox).
    #[arg(long, default_value = "./accrue-data", env = "ACCRUE_DATA")]
    data: PathBuf,
    /// Event store: `sqlite:PATH` (default: DATA/ledger.db), `postgres://…`, `kurrentdb://…`/`esdb://…` (feature `kurrentdb`).
    #[arg(long, env = "ACCRUE_STORE")]
    store: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the HTTP server.
    Serve {
        #[command(flatten)]
        store: StoreArgs,
        /// Address to listen on (port 0 picks a free one; the bound address is printed).
        #[arg(long, default_value = "127.0.0.1:8080", env = "ACCRUE_LISTEN")]
        listen: SocketAddr,
        /// Start a manual clock at this instant (moves only through POST /v1/clock).
        #[arg(long)]
        clock: Option<String>,
        /// SMTP relay: `smtp://host:port` (plain), `smtp://host:port?tls=required`
        /// (STARTTLS or nothing), `smtps://host:port` (implicit TLS); AUTH from
        /// ACCRUE_SMTP_USER / ACCRUE_SMTP_PASSWORD, an extra CA from
        /// ACCRUE_SMTP_CA_FILE. Without it mails go to DATA/outbox as .eml files.
        #[arg(long, env = "ACCRUE_SMTP")]
        smtp: Option<String>,
        /// Release an activation that has not synced for this many days (0: never).
        #[arg(long, default_value_t = 14)]
        release_after_days: u32,
        /// Payment retries after a first failure, in days (ascending), e.g. `1,3,7`.
        #[arg(long, default_value = "1,3,7", value_parser = parse_days)]
        dunning: Days,
        /// Days after the first failed payment before the license is suspended.
        #[arg(long, default_value_t = 14)]
        grace_days: u32,
        /// Snapshot the derived state after this many events (0: never); a
        /// restart loads the newest snapshot and replays only the tail.
        #[arg(long, env = "ACCRUE_SNAPSHOT_EVERY", default_value_t = 1_000_000)]
        snapshot_every: u64,
        /// ... or after this many seconds, if any event came since.
        #[arg(long, env = "ACCRUE_SNAPSHOT_SECS", default_value_t = 600)]
        snapshot_secs: u64,
        /// Run as one node of a cluster on PostgreSQL: accounts are spread
        /// over this many partitions (fixed when the cluster is created),
        /// each a ledger of its own that one node holds at a time.
        #[arg(long, env = "ACCRUE_PARTITIONS")]
        partitions: Option<u32>,
        /// This node's name in the cluster directory (default: the listen address).
        #[arg(long, env = "ACCRUE_NODE")]
        node: Option<String>,
        /// The base URL the other nodes forward to (default: http://LISTEN).
        #[arg(long, env = "ACCRUE_ADVERTISE")]
        advertise: Option<String>,
        /// Partitions this node takes at once, e.g. `0,3` (others only after --takeover-after).
        #[arg(long, env = "ACCRUE_PREFER", value_delimiter = ',')]
        prefer: Vec<u32>,
        /// Seconds after start before this node takes partitions it does
        /// not prefer that no node holds (a dead node's).
        #[arg(long, env = "ACCRUE_TAKEOVER_AFTER", default_value_t = 5)]
        takeover_after: u64,
    },
    /// A whole month for a few accounts on a fresh embedded store: PDFs written, a summary printed.
    Demo {
        /// Where to write the demo's store, PDFs and emails.
        #[arg(long, default_value = "./accrue-demo")]
        out: PathBuf,
    },
    /// Replay every read model from position 0 (side-effect projectors do not run).
    Rebuild {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Audit commands.
    Audit {
        #[command(subcommand)]
        command: AuditCmd,
    },
    /// Export events and invoices for a date range (CSV with a header row, or JSON lines).
    Export {
        #[command(flatten)]
        store: StoreArgs,
        /// First day, YYYY-MM-DD (inclusive).
        #[arg(long)]
        from: NaiveDate,
        /// Last day, YYYY-MM-DD (inclusive).
        #[arg(long)]
        to: NaiveDate,
        #[arg(long, default_value = "csv")]
        format: String,
        /// Folder for events.<fmt> and invoices.<fmt>.
        #[arg(long, default_value_os_t = finance::default_export_dir())]
        out: PathBuf,
    },
    /// Bulk-ingest usage events from a JSON-lines file (one usage event per line).
    Import {
        #[command(flatten)]
        store: StoreArgs,
        file: PathBuf,
        /// Decide at this manual-clock instant instead of the system clock.
        #[arg(long)]
        clock: Option<String>,
    },
    /// Measure the performance targets (prints one JSON line last).
    Bench(bench::BenchArgs),
    /// Signing keys of license definitions.
    Keys {
        #[command(subcommand)]
        command: KeysCmd,
    },
    /// Run the license client as a product server would (prints the definition on change).
    LicenseAgent(license_agent::AgentArgs),
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Add a new signing key; the old one verifies until its definitions expired.
    Rotate {
        /// Data folder (or ACCRUE_SIGNING_KEY_FILE) holding signing-keys.json.
        #[arg(long, default_value = "./accrue-data", env = "ACCRUE_DATA")]
        data: PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Recompute every stream's hash chain and the global chain; exit 1 on a break.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
        /// An anchor (from `audit anchor`, kept outside accrue): also prove
        /// nothing at or before its position changed and the log did not shrink.
        #[arg(long)]
        anchor: Option<PathBuf>,
    },
    /// Print a signed anchor of the log's head (Ed25519, key in DATA/anchor.key;
    /// the public key goes to stderr). Store it outside accrue.
    Anchor {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Re-render every invoice PDF and compare with the recorded SHA-256; exit 1 on a mismatch.
    Invoices {
        #[command(flatten)]
        store: StoreArgs,
    },
}

fn open_store(args: &StoreArgs) -> anyhow::Result<Arc<dyn EventStore>> {
    let url = args
        .store
        .clone()
        .unwrap_or_else(|| format!("sqlite:{}", args.data.join("ledger.db").display()));
    if let Some(path) = url.strip_prefix("sqlite:") {
        let path = path.trim_start_matches("//");
        let store = SqliteStore::open(path)
            .with_context(|| format!("opening the SQLite store at {path}"))?;
        return Ok(Arc::new(store));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        // ACCRUE_PG_SCHEMA: one database can hold several ledgers, each in
        // its own schema (created if needed).
        let store = match std::env::var("ACCRUE_PG_SCHEMA")
            .ok()
            .filter(|s| !s.is_empty())
        {
            Some(schema) => accrue_store::postgres::PgStore::open_in_schema(&url, &schema),
            None => accrue_store::postgres::PgStore::open(&url),
        }
        .with_context(|| format!("opening the PostgreSQL store at {url}"))?;
        return Ok(Arc::new(store));
    }
    if is_kurrentdb_url(&url) {
        return open_kurrentdb(&url);
    }
    bail!(
        "unknown store URL {url:?}: expected sqlite:PATH, postgres://…, kurrentdb://… or esdb://…"
    )
}

/// The KurrentDB client's connection-string schemes.
fn is_kurrentdb_url(url: &str) -> bool {
    let scheme = url.split("://").next().unwrap_or_default();
    url.contains("://")
        && matches!(
            scheme.strip_suffix("+discover").unwrap_or(scheme),
            "esdb" | "kurrentdb" | "kurrent" | "kdb"
        )
}

/// ACCRUE_KURRENTDB_PREFIX: one database can hold several ledgers, each
/// under its own stream prefix (default `accrue`).
#[cfg(feature = "kurrentdb")]
fn open_kurrentdb(url: &str) -> anyhow::Result<Arc<dyn EventStore>> {
    use accrue_store::kurrentdb::{KurrentStore, DEFAULT_PREFIX};
    let prefix = std::env::var("ACCRUE_KURRENTDB_PREFIX")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_PREFIX.to_string());
    let store = KurrentStore::open_with_prefix(url, &prefix)
        .with_context(|| format!("opening the KurrentDB store at {url} (prefix {prefix:?})"))?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "kurrentdb"))]
fn open_kurrentdb(url: &str) -> anyhow::Result<Arc<dyn EventStore>> {
    bail!(
        "{url:?} names a KurrentDB/EventStoreDB store, but this accrue was built without it: \
         rebuild with `cargo build --release --features accrue/kurrentdb` (ARCHITECTURE.md, \
         \"KurrentDB backend (unverified)\"), or use sqlite:PATH or postgres://…"
    )
}

/// The store of an offline command: it must hold a ledger. A mistyped data
/// folder or an empty database is refused (exit 2), never reported on.
fn open_existing(args: &StoreArgs) -> anyhow::Result<Arc<dyn EventStore>> {
    let url = args
        .store
        .clone()
        .unwrap_or_else(|| format!("sqlite:{}", args.data.join("ledger.db").display()));
    if let Some(path) = url.strip_prefix("sqlite:") {
        let path = std::path::Path::new(path.trim_start_matches("//"));
        if !path.is_file() {
            eprintln!(
                "accrue: no ledger at {} (no such store file; check --data or --store)",
                path.display()
            );
            std::process::exit(2);
        }
    }
    let store = open_store(args)?;
    if store.head_position()? == 0 {
        eprintln!("accrue: the store {url} holds no ledger (no events)");
        std::process::exit(2);
    }
    Ok(store)
}

fn parse_clock(s: &str) -> anyhow::Result<DateTime<Utc>> {
    Ok(DateTime::parse_from_rfc3339(s)
        .with_context(|| format!("--clock {s:?} is not an RFC 3339 instant"))?
        .with_timezone(&Utc))
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ACCRUE_LOG")
                .unwrap_or_else(|_| "info,postgres=warn,tokio_postgres=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    #[cfg(feature = "mimalloc")]
    // Unsafe: mi_collect is a C function (libmimalloc-sys has no safe wrapper).
    #[allow(unsafe_code)]
    accrue_ledger::idle::set_idle_hook(|| {
        // SAFETY: mimalloc's own entry point; collects the calling thread's
        // heap (returns its free pages to the OS), no pointers involved.
        unsafe { libmimalloc_sys::mi_collect(true) }
    });
    let cli = Cli::parse();
    match cli.command {
        Cmd::Serve {
            store,
            listen,
            clock,
            smtp,
            release_after_days,
            dunning,
            grace_days,
            snapshot_every,
            snapshot_secs,
            partitions,
            node,
            advertise,
            prefer,
            takeover_after,
        } => {
            accrue_ledger::snapshot::set_policy(snapshot_every, snapshot_secs);
            accrue_ledger::set_release_after_days(release_after_days);
            accrue_ledger::set_dunning_policy(dunning.0, grace_days);
            match partitions {
                None => serve(store, listen, clock, smtp),
                Some(partitions) => cluster::run(cluster::NodeArgs {
                    url: store.store.clone().unwrap_or_default(),
                    data: store.data,
                    listen,
                    partitions,
                    node: node.unwrap_or_else(|| listen.to_string()),
                    advertise,
                    prefer,
                    takeover_after: std::time::Duration::from_secs(takeover_after),
                    clock: match clock {
                        Some(c) => ClockMode::Manual(parse_clock(&c)?),
                        None => ClockMode::System,
                    },
                    smtp,
                }),
            }
        }
        Cmd::Keys {
            command: KeysCmd::Rotate { data },
        } => license_agent::rotate(&data),
        Cmd::LicenseAgent(args) => license_agent::run(args),
        Cmd::Demo { out } => demo::run(&out),
        Cmd::Rebuild { store } => rebuild(&store),
        Cmd::Audit {
            command: AuditCmd::Verify { store, anchor },
        } => verify(&store, anchor.as_deref()),
        Cmd::Audit {
            command: AuditCmd::Anchor { store },
        } => {
            let s = open_existing(&store)?;
            let key = accrue_ledger::audit::AnchorKey::load_or_create(&store.data)
                .with_context(|| format!("the anchor key in {}", store.data.display()))?;
            let a = key.write_anchor(s.as_ref(), &store.data, Utc::now())?;
            eprintln!(
                "anchor public key (Ed25519, base64url): {}",
                key.public_key()
            );
            println!("{}", serde_json::to_string(&a)?);
            Ok(())
        }
        Cmd::Audit {
            command: AuditCmd::Invoices { store },
        } => {
            if finance::audit_invoices(open_existing(&store)?)? > 0 {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Export {
            store,
            from,
            to,
            format,
            out,
        } => finance::export(open_existing(&store)?, from, to, &format, &out),
        Cmd::Import { store, file, clock } => {
            let mode = match clock {
                Some(c) => ClockMode::Manual(parse_clock(&c)?),
                None => ClockMode::System,
            };
            if finance::import(open_existing(&store)?, &file, mode)? > 0 {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Bench(args) => bench::run(args),
    }
}

/// One ledger and everything that runs beside it: its projectors (PDF
/// writer, mailer, webhooks), its anchor writer and its API state. `serve`
/// hosts one; a cluster node one per partition it holds.
pub(crate) struct Hosted {
    pub ledger: Ledger,
    pub state: AppState,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Where a hosted ledger keeps its keys (`keys`: signing keys, anchor
/// key) and its files (`files`: invoices, outbox, anchors).
pub(crate) struct HostDirs<'a> {
    pub keys: &'a std::path::Path,
    pub files: &'a std::path::Path,
}

pub(crate) fn host(
    store: Arc<dyn EventStore>,
    mode: ClockMode,
    dirs: HostDirs<'_>,
    smtp: Option<&str>,
    admin: Option<&str>,
    home: Option<Arc<dyn EventStore>>,
) -> anyhow::Result<Hosted> {
    std::fs::create_dir_all(dirs.files)
        .with_context(|| format!("creating {}", dirs.files.display()))?;
    let ledger = Ledger::open(store, mode)?;
    // A cluster partition other than home signs webhooks with home's secret
    // (set before the webhook projector starts).
    if let Some(h) = home {
        ledger.share_webhook_secrets(h);
    }
    ledger
        .use_signing_keys(&license_agent::key_file(dirs.keys))
        .map_err(|e| anyhow::anyhow!(e))?;
    let (tokens, generated) =
        Tokens::load(&ledger, admin).map_err(|e| anyhow::anyhow!(e.detail))?;
    if let Some(t) = generated {
        println!("admin token (shown once, store it now): {t}");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let anchor_key = Arc::new(
        accrue_ledger::audit::AnchorKey::load_or_create(dirs.keys)
            .with_context(|| format!("the anchor key in {}", dirs.keys.display()))?,
    );
    ledger.set_anchor_key(anchor_key.clone());
    let anchors = spawn_anchor_writer(
        ledger.clone(),
        anchor_key,
        dirs.files.to_path_buf(),
        stop.clone(),
    );
    let pdf = accrue_ledger::projectors::spawn_pdf_writer(
        ledger.clone(),
        dirs.files.join("invoices"),
        stop.clone(),
    )?;
    let transport = accrue_projections::mail::MailTransport::from_url(
        smtp,
        dirs.files.join("outbox"),
        &accrue_projections::mail::SmtpOptions::from_env(),
    )
    .map_err(|e| anyhow::anyhow!("--smtp: {e}"))?;
    let from = std::env::var("ACCRUE_MAIL_FROM")
        .unwrap_or_else(|_| "accrue Billing <billing@accrue.example>".to_string());
    let mailer =
        accrue_ledger::projectors::spawn_mailer(ledger.clone(), transport, from, stop.clone())?;
    let webhooks = accrue_ledger::webhooks::spawn_webhooks(ledger.clone(), stop.clone())?;
    let state = AppState {
        ledger: ledger.clone(),
        tokens: Arc::new(tokens),
    };
    Ok(Hosted {
        ledger,
        state,
        stop,
        // The projectors first: they may be waiting for the writer's answer.
        threads: vec![pdf, mailer, webhooks, anchors],
    })
}

impl Hosted {
    /// Stops the projectors, then the writer (pending work is written).
    pub fn shutdown(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        self.ledger.shutdown();
    }
}

/// The HTTP runtime `serve` and a cluster node answer on.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(SERVER_THREADS.max(cores()))
        .on_thread_start(accrue_ledger::priority::pin_serving)
        .enable_all()
        .build()?)
}

fn serve(
    args: StoreArgs,
    listen: SocketAddr,
    clock: Option<String>,
    smtp: Option<String>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("creating {}", args.data.display()))?;
    // The issuer and tax rates in force for invoices issued from now on.
    accrue_ledger::set_legal(legal::load(&args.data, |k| std::env::var(k).ok())?);
    let store = open_store(&args)?;
    let mode = match clock {
        Some(c) => ClockMode::Manual(parse_clock(&c)?),
        None => ClockMode::System,
    };
    let admin = std::env::var("ACCRUE_ADMIN_TOKEN").ok();
    let hosted = host(
        store,
        mode,
        HostDirs {
            keys: &args.data,
            files: &args.data,
        },
        smtp.as_deref(),
        admin.as_deref(),
        None,
    )?;
    // Slow clients: how long a connection may take over its request head
    // and a request over its body (ACCRUE_HEADER_TIMEOUT_SECS, _BODY_).
    let limits = accrue_api::server::ServeConfig::from_env().map_err(|e| anyhow::anyhow!(e))?;
    let rt = runtime()?;
    let watched = hosted.ledger.clone();
    let router = accrue_api::router(hosted.state.clone());
    let fault = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let addr = listener.local_addr()?;
        println!("accrue listening on http://{addr}");
        use std::io::Write;
        std::io::stdout().flush()?;
        // Fail-stop: once the writer stopped after a fault, serve exits
        // non-zero so a supervisor restarts it and replay rebuilds the
        // state from the log. Until then writes get 503 and /readyz 503.
        let fault = Arc::new(std::sync::Mutex::new(None::<String>));
        let seen = fault.clone();
        let stopping = async move {
            tokio::select! {
                _ = shutdown_signal() => {},
                r = watched.failed() => *seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(r),
            }
        };
        accrue_api::server::serve(listener, router, limits, stopping).await?;
        let f = fault.lock().unwrap_or_else(|e| e.into_inner()).take();
        anyhow::Ok(f)
    })?;
    hosted.shutdown();
    if let Some(reason) = fault {
        eprintln!("accrue: the ledger stopped after a fault: {reason}; exiting so a supervisor restarts it");
        std::process::exit(3);
    }
    Ok(())
}

/// How often `serve` writes a signed anchor of the log's head to DATA/anchors.
const ANCHOR_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// Writes an anchor at start, every [`ANCHOR_EVERY`] when the log moved,
/// and at shutdown.
fn spawn_anchor_writer(
    ledger: Ledger,
    key: Arc<accrue_ledger::audit::AnchorKey>,
    data: PathBuf,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut last: Option<u64> = None;
        let mut next = std::time::Instant::now();
        loop {
            let stopping = stop.load(Ordering::Relaxed);
            if stopping || std::time::Instant::now() >= next {
                let head = ledger.store().head_position().ok();
                if head.is_some() && head != last {
                    match key.write_anchor(ledger.store().as_ref(), &data, Utc::now()) {
                        Ok(a) => last = Some(a.position),
                        Err(e) => tracing::warn!(error = %e, "cannot write an anchor"),
                    }
                }
                next = std::time::Instant::now() + ANCHOR_EVERY;
            }
            if stopping {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn rebuild(args: &StoreArgs) -> anyhow::Result<()> {
    let store = open_existing(args)?;
    let bar = progress::Progress::new("rebuild", store.head_position()?);
    let mut models = accrue_projections::ReadModels::default();
    let stats = accrue_ledger::replay_into(store.as_ref(), &mut models, |pos, _| bar.set(pos))?;
    bar.finish();
    println!(
        "rebuilt {} events into {} accounts and {} invoices in {:.3} s ({:.0} events/s)",
        stats.events,
        models.accounts.len(),
        models.invoices.len(),
        stats.seconds,
        stats.events as f64 / stats.seconds.max(1e-9)
    );
    Ok(())
}

fn verify(args: &StoreArgs, anchor: Option<&std::path::Path>) -> anyhow::Result<()> {
    let anchor: Option<accrue_ledger::audit::Anchor> = match anchor {
        None => None,
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading the anchor {}", p.display()))?;
            Some(
                serde_json::from_str(&text)
                    .with_context(|| format!("{} is not an accrue anchor", p.display()))?,
            )
        }
    };
    let store = open_existing(args)?;
    if let Some(a) = &anchor {
        // The anchor must be signed by this ledger's key, when it is here.
        if let Ok(key) = accrue_ledger::audit::AnchorKey::load_existing(&args.data) {
            if key.public_key() != a.public_key {
                eprintln!(
                    "accrue: warning: the anchor is signed by another key than DATA/anchor.key"
                );
            }
        }
    }
    let bar = progress::Progress::new("verify", store.head_position()?);
    let r =
        accrue_ledger::audit::verify_with(store.as_ref(), anchor.as_ref(), |pos, _| bar.set(pos))?;
    bar.finish();
    let broken = r.first_broken.as_ref().map(|b| {
        serde_json::json!({"position": b.position, "stream": b.stream, "version": b.version, "reason": b.reason})
    });
    println!(
        "{}",
        serde_json::json!({"ok": r.ok, "events": r.events, "streams": r.streams, "head_position": r.head_position, "head_hash": r.head_hash, "anchor_ok": r.anchor_ok, "first_broken": broken})
    );
    if !r.ok {
        std::process::exit(1);
    }
    Ok(())
}

/// `--dunning 1,3,7`: retry days after the first failure.
#[derive(Debug, Clone)]
struct Days(Vec<u32>);

fn parse_days(s: &str) -> Result<Days, String> {
    let days: Vec<u32> = s
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            p.trim()
                .parse::<u32>()
                .map_err(|_| format!("{p:?} is not a number of days"))
        })
        .collect::<Result<_, _>>()?;
    if days.windows(2).any(|w| w[0] >= w[1]) || days.iter().any(|d| *d == 0 || *d > 365) {
        return Err("retry days must ascend, each 1..=365 (e.g. 1,3,7)".into());
    }
    if days.len() > 16 {
        return Err("at most 16 retries".into());
    }
    Ok(Days(days))
}
