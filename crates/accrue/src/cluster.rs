//! `accrue serve --partitions N`: one node of a cluster on PostgreSQL.
//!
//! Each partition is a whole ledger in its own schema (`{base}_pNN`): its
//! own log, hash chains, numbering series (`INV-YYYY-PP-NNNNNN`) and single
//! writer. A node holds a partition by opening its store, which takes the
//! schema's session advisory lock on the connection it appends with: the
//! lease. PostgreSQL releases it when that session ends (the process died,
//! the connection broke), and then any node may take it: it loads the
//! partition from its snapshot and log, as a restart would, and writes its
//! address in the directory. Nothing acknowledged is lost (a 200 was
//! committed in the partition's log), and the old owner can write no more
//! (its session is gone; were it alive on another connection, the store's
//! expected versions would stop it).
//!
//! The lease manager here ticks every 250 ms: it takes the partitions it
//! prefers (`--prefer`) at once and any other free partition once the node
//! has been up for `--takeover-after`; it refreshes the directory; and if a
//! held partition's ledger stops after a fault the node exits 3 (as `serve`
//! does) so its partitions move to the others.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use accrue_api::cluster::{number_tag, Cluster};
use accrue_ledger::ClockMode;
use accrue_store::cluster::{partition_schema, Directory};
use accrue_store::postgres::PgStore;
use accrue_store::{EventStore, StoreError};
use anyhow::{bail, Context};

use crate::{host, HostDirs, Hosted};

/// What `serve --partitions` was given.
pub(crate) struct NodeArgs {
    pub url: String,
    pub data: PathBuf,
    pub listen: std::net::SocketAddr,
    pub partitions: u32,
    pub node: String,
    pub advertise: Option<String>,
    pub prefer: Vec<u32>,
    pub takeover_after: Duration,
    pub clock: ClockMode,
    pub smtp: Option<String>,
}

const TICK: Duration = Duration::from_millis(250);

pub(crate) fn run(a: NodeArgs) -> anyhow::Result<()> {
    if !(a.url.starts_with("postgres://") || a.url.starts_with("postgresql://")) {
        bail!("--partitions needs a postgres:// store: the partitions' leases are PostgreSQL advisory locks");
    }
    if a.partitions == 0 || a.partitions > 100 {
        bail!("--partitions must be 1..=100 (a partition's number is two digits in its documents)");
    }
    if let Some(p) = a.prefer.iter().find(|p| **p >= a.partitions) {
        bail!("--prefer {p}: partitions are 0..{}", a.partitions);
    }
    let admin = std::env::var("ACCRUE_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .context("a cluster node needs ACCRUE_ADMIN_TOKEN: every node and partition must accept the same admin token")?;
    std::fs::create_dir_all(&a.data).with_context(|| format!("creating {}", a.data.display()))?;
    accrue_ledger::set_legal(crate::legal::load(&a.data, |k| std::env::var(k).ok())?);
    let base = std::env::var("ACCRUE_PG_SCHEMA")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "accrue".to_string());
    let directory = Arc::new(
        Directory::open(&a.url, &base, a.partitions)
            .with_context(|| format!("opening the cluster directory {base}_cluster"))?,
    );
    let cluster = Cluster::new(a.node.clone(), a.partitions, &admin);
    let limits = accrue_api::server::ServeConfig::from_env().map_err(|e| anyhow::anyhow!(e))?;
    let rt = crate::runtime()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind(a.listen))?;
    let addr = listener.local_addr()?;
    let advertise = a
        .advertise
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let stop = Arc::new(AtomicBool::new(false));
    let fault: Arc<Mutex<Option<String>>> = Arc::default();
    let hosted: Arc<Mutex<Vec<(u32, Hosted)>>> = Arc::default();
    let manager = {
        let (cluster, directory, stop, fault, hosted) = (
            cluster.clone(),
            directory.clone(),
            stop.clone(),
            fault.clone(),
            hosted.clone(),
        );
        let leases = Leases {
            home: std::sync::OnceLock::new(),
            url: a.url.clone(),
            base: base.clone(),
            data: a.data.clone(),
            node: a.node.clone(),
            advertise: advertise.clone(),
            prefer: a.prefer.clone(),
            takeover_after: a.takeover_after,
            clock: a.clock,
            smtp: a.smtp.clone(),
            admin,
        };
        std::thread::Builder::new()
            .name("accrue-leases".into())
            .spawn(move || leases.run(&cluster, &directory, &stop, &fault, &hosted))?
    };
    // The same first line as `serve` (scripts wait for it), then the node.
    println!("accrue listening on http://{addr}");
    println!(
        "accrue node {:?} of {} partitions, advertised as {advertise}",
        a.node, a.partitions
    );
    {
        use std::io::Write;
        std::io::stdout().flush()?;
    }
    let watch = fault.clone();
    let stopping = async move {
        let faulted = async {
            loop {
                if watch.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
                    return;
                }
                tokio::time::sleep(TICK).await;
            }
        };
        tokio::select! {
            _ = crate::shutdown_signal() => {},
            _ = faulted => {},
        }
    };
    rt.block_on(accrue_api::server::serve(
        listener,
        accrue_api::cluster::front(cluster),
        limits,
        stopping,
    ))?;
    stop.store(true, Ordering::Relaxed);
    let _ = manager.join();
    let held = std::mem::take(&mut *hosted.lock().unwrap_or_else(|e| e.into_inner()));
    for (_, h) in held {
        h.shutdown();
    }
    if let Some(reason) = fault.lock().unwrap_or_else(|e| e.into_inner()).take() {
        eprintln!("accrue: {reason}; exiting so a supervisor restarts this node (its partitions move to the others)");
        std::process::exit(3);
    }
    Ok(())
}

struct Leases {
    /// The home partition's store, read only (its tokens), once opened.
    home: std::sync::OnceLock<Arc<dyn EventStore>>,
    url: String,
    base: String,
    data: PathBuf,
    node: String,
    advertise: String,
    prefer: Vec<u32>,
    takeover_after: Duration,
    clock: ClockMode,
    smtp: Option<String>,
    admin: String,
}

impl Leases {
    fn run(
        &self,
        cluster: &Cluster,
        directory: &Directory,
        stop: &AtomicBool,
        fault: &Mutex<Option<String>>,
        hosted: &Mutex<Vec<(u32, Hosted)>>,
    ) {
        let started = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let held = cluster.held();
            let eager = started.elapsed() >= self.takeover_after;
            for p in 0..cluster.partitions {
                if held.contains(&p) || !(eager || self.prefer.contains(&p)) {
                    continue;
                }
                // Held by another node: nothing to try (a look, not a lock).
                if directory
                    .leased(&partition_schema(&self.base, p))
                    .unwrap_or(true)
                {
                    continue;
                }
                match self.take(p) {
                    Ok(Some(h)) => {
                        cluster.hold(p, accrue_api::router(h.state.clone()));
                        if let Err(e) = directory.claim(p, &self.node, &self.advertise) {
                            tracing::warn!(partition = p, error = %e, "cannot write the directory");
                        }
                        tracing::info!(partition = p, node = %self.node, "partition taken");
                        hosted
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((p, h));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(partition = p, error = %e, "cannot take the partition")
                    }
                }
                if stop.load(Ordering::Relaxed) {
                    return;
                }
            }
            // A held partition that stopped after a fault takes the node
            // down: its lease must go to a node that can write.
            for (p, h) in hosted.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                if let Some(r) = h.ledger.failure() {
                    *fault.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(format!("partition {p} stopped after a fault: {r}"));
                }
            }
            // An owner counts only while its lease is held: the row of a
            // node that died stays until another claims the partition.
            let schemas: Vec<String> = (0..cluster.partitions)
                .map(|p| partition_schema(&self.base, p))
                .collect();
            match directory
                .owners()
                .and_then(|r| Ok((r, directory.leased_many(&schemas)?)))
            {
                Ok((rows, leased)) => {
                    let mut owners = vec![None; cluster.partitions as usize];
                    for (p, _, url) in rows {
                        if let (Some(o), Some(true)) =
                            (owners.get_mut(p as usize), leased.get(p as usize))
                        {
                            *o = Some(url);
                        }
                    }
                    for p in cluster.held() {
                        owners[p as usize] = Some(self.advertise.clone());
                    }
                    cluster.set_owners(owners);
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the directory"),
            }
            std::thread::sleep(TICK);
        }
    }

    /// Opens partition `p` if its lease is free: `None` while another
    /// node holds it.
    fn take(&self, p: u32) -> anyhow::Result<Option<Hosted>> {
        let schema = partition_schema(&self.base, p);
        let store = match PgStore::try_open_in_schema(&self.url, &schema, Duration::ZERO) {
            Ok(s) => s,
            Err(StoreError::Locked(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let tag = number_tag(p);
        match store.meta_get(accrue_ledger::NUMBER_TAG_META)? {
            None => store.meta_put(accrue_ledger::NUMBER_TAG_META, &tag)?,
            Some(t) if t == tag => {}
            Some(t) => bail!("schema {schema} numbers its documents {t:?}, not {tag:?}"),
        }
        let files = self.data.join(format!("p{p:02}"));
        let store: Arc<dyn EventStore> = Arc::new(store);
        let home = match (p, self.home.get()) {
            (accrue_api::cluster::HOME, _) => None,
            (_, Some(h)) => Some(h.clone()),
            (_, None) => {
                let schema = partition_schema(&self.base, accrue_api::cluster::HOME);
                let h: Arc<dyn EventStore> =
                    Arc::new(PgStore::open_in_schema_unlocked(&self.url, &schema)?);
                Some(self.home.get_or_init(|| h).clone())
            }
        };
        let hosted = host(
            store,
            self.clock,
            HostDirs {
                keys: &self.data,
                files: &files,
            },
            self.smtp.as_deref(),
            Some(&self.admin),
            home.clone(),
        )?;
        if let Some(h) = home {
            hosted.state.tokens.with_home(h);
        }
        Ok(Some(hosted))
    }
}
