//! `accrue keys rotate` and `accrue license-agent`: the signing keys' file,
//! and the embeddable client (`accrue-license`) run as a process.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

/// The signing keys: `ACCRUE_SIGNING_KEY_FILE`, else DATA/signing-keys.json.
pub fn key_file(data: &Path) -> PathBuf {
    match std::env::var_os("ACCRUE_SIGNING_KEY_FILE") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => data.join("signing-keys.json"),
    }
}

/// `accrue keys rotate`: a new current key; the old one stays in the JWKS
/// until its last definition expired (a running server reloads the file).
pub fn rotate(data: &Path) -> anyhow::Result<()> {
    let path = key_file(data);
    let kid = accrue_ledger::keys::KeyRing::rotate(&path, chrono::Utc::now())
        .map_err(|e| anyhow::anyhow!(e))?;
    println!(
        "{{\"kid\":\"{kid}\",\"file\":{:?}}}",
        path.display().to_string()
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct AgentArgs {
    /// accrue's base URL.
    #[arg(long)]
    url: String,
    #[arg(long)]
    serial: String,
    #[arg(long)]
    control: String,
    #[arg(long)]
    server_id: String,
    #[arg(long)]
    hostname: Option<String>,
    /// Where the definition, JWKS and token are cached.
    #[arg(long, default_value = "./accrue-license-cache")]
    cache: PathBuf,
    /// Poll interval in seconds (jittered ±10%).
    #[arg(long, default_value_t = 600)]
    interval_secs: u64,
    /// A JSON file `{"sessions":[…]}` reported after every poll.
    #[arg(long)]
    sessions: Option<PathBuf>,
    /// Poll once, print the definition's claims, and exit.
    #[arg(long)]
    once: bool,
}

fn print_claims(c: &accrue_license::Claims) {
    println!("{}", serde_json::to_string(c).unwrap_or_default());
}

pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    let mut config = accrue_license::Config::new(
        &args.url,
        &args.serial,
        &args.control,
        &args.server_id,
        args.cache.clone(),
    );
    config.hostname = args.hostname.clone();
    config.poll_interval = Duration::from_secs(args.interval_secs.max(1));
    let license = accrue_license::License::start(config).map_err(|e| anyhow::anyhow!(e))?;
    if let Some(c) = license.claims() {
        print_claims(&c);
    }
    if args.once {
        return Ok(());
    }
    let sessions = args.sessions.clone();
    let reporter = license.clone();
    let poller = license.spawn_poller(move |c| {
        print_claims(c);
        if let Some(f) = &sessions {
            report(&reporter, f);
        }
    });
    if let Some(f) = &args.sessions {
        report(&license, f);
    }
    poller
        .join()
        .map_err(|_| anyhow::anyhow!("the poller panicked"))?;
    Ok(())
}

fn report(license: &accrue_license::License, file: &Path) {
    let body = std::fs::read(file)
        .with_context(|| format!("reading {}", file.display()))
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).map_err(Into::into));
    match body.map(|b| license.report_sessions(&b)) {
        Ok(Ok(status)) => eprintln!("sessions reported: {status}"),
        Ok(Err(e)) => eprintln!("sessions not reported: {e}"),
        Err(e) => eprintln!("sessions not reported: {e:#}"),
    }
}
