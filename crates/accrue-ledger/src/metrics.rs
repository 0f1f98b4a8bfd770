//! Metrics for `GET /metrics`, kept in a `prometheus-client` registry and
//! written in the Prometheus text format (0.0.4).
//!
//! Every metric is registered in [`Metrics::new`], so the exposition is
//! derived from the registry rather than hand-written. The counters the
//! writer and the projectors bump stay plain atomics on the hot path: each
//! public counter field is a registered `prometheus_client` counter that
//! dereferences to its own `AtomicU64`, so `fetch_add(n, Relaxed)` at the
//! call sites updates the exposed value directly (no lock, no copy).
//!
//! Values owned elsewhere — the store's head and checkpoints, the HTTP
//! layer's panic count — are handed in per scrape ([`Scraped`]) and written
//! by a registered collector.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Rejection reasons counted separately.
pub const REASONS: [&str; 6] = [
    "credit_limit_exceeded",
    "unknown_account",
    "invalid",
    "id_conflict",
    "period_closed",
    "future",
];

/// Upper bounds of the ingest latency histogram, in seconds.
pub const LATENCY_BUCKETS_S: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// One label, `name="value"`.
type Label = [(&'static str, &'static str); 1];

/// A registered counter whose atomic is used directly by its callers.
#[derive(Debug, Clone, Default)]
pub struct AtomicCounter(Counter<u64, AtomicU64>);

impl Deref for AtomicCounter {
    type Target = AtomicU64;
    fn deref(&self) -> &AtomicU64 {
        self.0.inner()
    }
}

/// A registered gauge whose atomic is used directly by its callers.
#[derive(Debug, Clone, Default)]
pub struct AtomicGauge(Gauge<u64, AtomicU64>);

impl Deref for AtomicGauge {
    type Target = AtomicU64;
    fn deref(&self) -> &AtomicU64 {
        self.0.inner()
    }
}

/// Values read at scrape time by the caller of [`Metrics::render_with`]
/// (from the store, on a blocking thread, and from the HTTP layer).
#[derive(Debug, Clone, Default)]
pub struct Scraped {
    /// Global position of the last event.
    pub head_position: u64,
    /// Last position each side-effect projector handled, by name.
    pub projector_checkpoints: Vec<(&'static str, u64)>,
    /// Handler panics answered 500 since start.
    pub http_panics: u64,
}

/// Writes the [`Scraped`] values of the scrape in progress, if any.
#[derive(Debug, Default)]
struct ScrapedCollector(Arc<parking_lot::Mutex<Option<Scraped>>>);

impl Collector for ScrapedCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = self.0.lock().clone() else {
            return Ok(());
        };
        let head = ConstGauge::new(s.head_position);
        head.encode(encoder.encode_descriptor(
            "accrue_head_position",
            "Global position of the last event.",
            None,
            head.metric_type(),
        )?)?;
        let kind = ConstGauge::new(0u64).metric_type();
        let mut family = encoder.encode_descriptor(
            "accrue_projector_checkpoint",
            "Last position a side-effect projector handled.",
            None,
            kind,
        )?;
        for (name, position) in &s.projector_checkpoints {
            let label: Label = [("name", *name)];
            ConstGauge::new(*position).encode(family.encode_family(&label)?)?;
        }
        // Registered without `_total`: the encoder adds it to counters.
        let panics = ConstCounter::new(s.http_panics);
        panics.encode(encoder.encode_descriptor(
            "accrue_http_panics",
            "Handler panics answered 500 since start.",
            None,
            panics.metric_type(),
        )?)?;
        Ok(())
    }
}

/// The ledger's metrics; see the module docs.
#[derive(Debug)]
pub struct Metrics {
    pub events_appended: AtomicCounter,
    pub usage_accepted: AtomicCounter,
    pub usage_duplicate: AtomicCounter,
    /// One per [`REASONS`], in that order.
    pub rejections: [AtomicCounter; 6],
    pub commits: AtomicCounter,
    pub mails_sent: AtomicCounter,
    pub mails_bounced: AtomicCounter,
    /// Snapshots written, and the position of the newest (SPEC §12).
    pub snapshots_written: AtomicCounter,
    pub snapshot_position: AtomicGauge,
    /// Events each side-effect projector is behind the head: exposed, and
    /// kept in a map as well for [`Metrics::projector_lag_max`].
    projector_lag: Family<Label, Gauge<u64, AtomicU64>>,
    projector_lag_seen: parking_lot::Mutex<BTreeMap<&'static str, u64>>,
    ingest_latency: Histogram,
    scraped: Arc<parking_lot::Mutex<Option<Scraped>>>,
    /// One scrape at a time: [`Scraped`] values are set, encoded, cleared.
    render_lock: parking_lot::Mutex<()>,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Creates and registers every metric. Counter names are registered
    /// without `_total`: the encoder appends it, so the exposed names are
    /// `accrue_…_total` as before.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = AtomicCounter::default();
            registry.register(name, help, c.0.clone());
            c
        };
        let events_appended = counter(
            &mut registry,
            "accrue_events_appended",
            "Events appended to the store",
        );
        let commits = counter(
            &mut registry,
            "accrue_commits",
            "Store transactions committed",
        );
        let mails_sent = counter(
            &mut registry,
            "accrue_mails_sent",
            "Mails delivered (or written to the outbox)",
        );
        let mails_bounced = counter(
            &mut registry,
            "accrue_mails_bounced",
            "Mails refused for good (recorded as MailBounced)",
        );
        let snapshots_written = counter(
            &mut registry,
            "accrue_snapshots_written",
            "Snapshots of the derived state written",
        );
        let snapshot_position = AtomicGauge::default();
        registry.register(
            "accrue_snapshot_position",
            "Global position of the newest snapshot written",
            snapshot_position.0.clone(),
        );
        let projector_lag = Family::<Label, Gauge<u64, AtomicU64>>::default();
        registry.register(
            "accrue_projector_lag_events",
            "Events a side-effect projector is behind the log's head",
            projector_lag.clone(),
        );
        let usage = Family::<Label, Counter<u64, AtomicU64>>::default();
        registry.register(
            "accrue_usage_events",
            "Usage events by outcome",
            usage.clone(),
        );
        let usage_accepted = AtomicCounter(usage.get_or_create_owned(&[("outcome", "accepted")]));
        let usage_duplicate = AtomicCounter(usage.get_or_create_owned(&[("outcome", "duplicate")]));
        let rejected = Family::<Label, Counter<u64, AtomicU64>>::default();
        registry.register(
            "accrue_usage_rejections",
            "Rejected usage events by reason",
            rejected.clone(),
        );
        // Every reason is listed from the start, at 0.
        let rejections =
            REASONS.map(|r| AtomicCounter(rejected.get_or_create_owned(&[("reason", r)])));
        let ingest_latency = Histogram::new(LATENCY_BUCKETS_S);
        registry.register(
            "accrue_ingest_latency_seconds",
            "Latency of ingest requests",
            ingest_latency.clone(),
        );
        let scraped = Arc::new(parking_lot::Mutex::new(None));
        registry.register_collector(Box::new(ScrapedCollector(scraped.clone())));
        Metrics {
            events_appended,
            usage_accepted,
            usage_duplicate,
            rejections,
            commits,
            mails_sent,
            mails_bounced,
            snapshots_written,
            snapshot_position,
            projector_lag,
            projector_lag_seen: parking_lot::Mutex::new(BTreeMap::new()),
            ingest_latency,
            scraped,
            render_lock: parking_lot::Mutex::new(()),
            registry,
        }
    }

    pub fn reject(&self, reason: &str) {
        if let Some(i) = REASONS.iter().position(|r| *r == reason) {
            self.rejections[i].0.inc();
        }
    }

    /// Records one ingest request's latency.
    pub fn observe_ingest(&self, seconds: f64) {
        self.ingest_latency.observe(seconds);
    }

    pub fn set_projector_lag(&self, projector: &'static str, events: u64) {
        self.projector_lag_seen.lock().insert(projector, events);
        self.projector_lag
            .get_or_create(&[("projector", projector)])
            .set(events);
    }

    /// The largest lag of any side-effect projector, in events.
    pub fn projector_lag_max(&self) -> u64 {
        self.projector_lag_seen
            .lock()
            .values()
            .copied()
            .max()
            .unwrap_or(0)
    }

    /// The metrics this crate keeps, in the Prometheus text format.
    pub fn render(&self) -> String {
        let _one = self.render_lock.lock();
        self.encode()
    }

    /// [`Metrics::render`] plus the values read at scrape time.
    pub fn render_with(&self, scraped: Scraped) -> String {
        let _one = self.render_lock.lock();
        *self.scraped.lock() = Some(scraped);
        let text = self.encode();
        *self.scraped.lock() = None;
        text
    }

    fn encode(&self) -> String {
        let mut text = String::with_capacity(4096);
        // Writing into a String cannot fail; an error here would be a bug in
        // the encoder, and an empty page is the honest answer to it.
        if prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry).is_err()
        {
            text.clear();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    #[test]
    fn counters_keep_their_exposed_names_and_move_through_the_atomics() {
        let m = Metrics::new();
        m.events_appended.fetch_add(3, Relaxed);
        m.usage_accepted.fetch_add(1, Relaxed);
        m.reject("future");
        m.reject("no_such_reason");
        m.snapshot_position.store(42, Relaxed);
        m.observe_ingest(0.003);
        let text = m.render();
        for line in [
            "# TYPE accrue_events_appended_total counter",
            "accrue_events_appended_total 3",
            "accrue_usage_events_total{outcome=\"accepted\"} 1",
            "accrue_usage_events_total{outcome=\"duplicate\"} 0",
            "accrue_usage_rejections_total{reason=\"future\"} 1",
            "accrue_usage_rejections_total{reason=\"invalid\"} 0",
            "accrue_snapshot_position 42",
            "accrue_ingest_latency_seconds_bucket{le=\"0.0025\"} 0",
            "accrue_ingest_latency_seconds_bucket{le=\"0.005\"} 1",
            "accrue_ingest_latency_seconds_bucket{le=\"+Inf\"} 1",
            "accrue_ingest_latency_seconds_count 1",
            "# HELP accrue_commits_total Store transactions committed.",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(!text.contains("accrue_head_position"), "{text}");
    }

    #[test]
    fn scraped_values_appear_only_in_their_scrape() {
        let m = Metrics::new();
        m.set_projector_lag("mailer", 7);
        let text = m.render_with(Scraped {
            head_position: 9,
            projector_checkpoints: vec![("pdf", 4), ("mailer", 2)],
            http_panics: 1,
        });
        for line in [
            "accrue_head_position 9",
            "accrue_projector_checkpoint{name=\"pdf\"} 4",
            "accrue_projector_checkpoint{name=\"mailer\"} 2",
            "# TYPE accrue_http_panics_total counter",
            "accrue_http_panics_total 1",
            "accrue_projector_lag_events{projector=\"mailer\"} 7",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert_eq!(m.projector_lag_max(), 7);
        assert!(!m.render().contains("accrue_head_position"));
    }
}
