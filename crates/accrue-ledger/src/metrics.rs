//! Counters for `GET /metrics`, kept with atomics (no locks on the hot path).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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

#[derive(Default)]
pub struct Metrics {
    pub events_appended: AtomicU64,
    pub usage_accepted: AtomicU64,
    pub usage_duplicate: AtomicU64,
    pub rejections: [AtomicU64; 6],
    pub commits: AtomicU64,
    pub mails_sent: AtomicU64,
    pub mails_bounced: AtomicU64,
    /// Snapshots written, and the position of the newest (SPEC §12).
    pub snapshots_written: AtomicU64,
    pub snapshot_position: AtomicU64,
    /// Events each side-effect projector is behind the head.
    projector_lag: parking_lot::Mutex<std::collections::BTreeMap<&'static str, u64>>,
    latency_buckets: [AtomicU64; 12],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

impl Metrics {
    pub fn reject(&self, reason: &str) {
        if let Some(i) = REASONS.iter().position(|r| *r == reason) {
            self.rejections[i].fetch_add(1, Relaxed);
        }
    }

    /// Records one ingest request's latency.
    pub fn observe_ingest(&self, seconds: f64) {
        for (i, b) in LATENCY_BUCKETS_S.iter().enumerate() {
            if seconds <= *b {
                self.latency_buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_us
            .fetch_add((seconds * 1e6) as u64, Relaxed);
    }

    pub fn set_projector_lag(&self, projector: &'static str, events: u64) {
        self.projector_lag.lock().insert(projector, events);
    }

    /// The largest lag of any side-effect projector, in events.
    pub fn projector_lag_max(&self) -> u64 {
        self.projector_lag
            .lock()
            .values()
            .copied()
            .max()
            .unwrap_or(0)
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str("# HELP accrue_events_appended_total Events appended to the store.\n# TYPE accrue_events_appended_total counter\n");
        s.push_str(&format!(
            "accrue_events_appended_total {}\n",
            self.events_appended.load(Relaxed)
        ));
        s.push_str("# HELP accrue_commits_total Store transactions committed.\n# TYPE accrue_commits_total counter\n");
        s.push_str(&format!(
            "accrue_commits_total {}\n",
            self.commits.load(Relaxed)
        ));
        s.push_str("# HELP accrue_mails_sent_total Mails delivered (or written to the outbox).\n# TYPE accrue_mails_sent_total counter\n");
        s.push_str(&format!(
            "accrue_mails_sent_total {}\n",
            self.mails_sent.load(Relaxed)
        ));
        s.push_str("# HELP accrue_mails_bounced_total Mails refused for good (recorded as MailBounced).\n# TYPE accrue_mails_bounced_total counter\n");
        s.push_str(&format!(
            "accrue_mails_bounced_total {}\n",
            self.mails_bounced.load(Relaxed)
        ));
        s.push_str("# HELP accrue_snapshots_written_total Snapshots of the derived state written.\n# TYPE accrue_snapshots_written_total counter\n");
        s.push_str(&format!(
            "accrue_snapshots_written_total {}\n",
            self.snapshots_written.load(Relaxed)
        ));
        s.push_str("# HELP accrue_snapshot_position Global position of the newest snapshot written.\n# TYPE accrue_snapshot_position gauge\n");
        s.push_str(&format!(
            "accrue_snapshot_position {}\n",
            self.snapshot_position.load(Relaxed)
        ));
        let lags = self.projector_lag.lock().clone();
        if !lags.is_empty() {
            s.push_str("# HELP accrue_projector_lag_events Events a side-effect projector is behind the log's head.\n# TYPE accrue_projector_lag_events gauge\n");
            for (p, lag) in lags {
                s.push_str(&format!(
                    "accrue_projector_lag_events{{projector=\"{p}\"}} {lag}\n"
                ));
            }
        }
        s.push_str("# HELP accrue_usage_events_total Usage events by outcome.\n# TYPE accrue_usage_events_total counter\n");
        s.push_str(&format!(
            "accrue_usage_events_total{{outcome=\"accepted\"}} {}\n",
            self.usage_accepted.load(Relaxed)
        ));
        s.push_str(&format!(
            "accrue_usage_events_total{{outcome=\"duplicate\"}} {}\n",
            self.usage_duplicate.load(Relaxed)
        ));
        s.push_str("# HELP accrue_usage_rejections_total Rejected usage events by reason.\n# TYPE accrue_usage_rejections_total counter\n");
        for (i, r) in REASONS.iter().enumerate() {
            s.push_str(&format!(
                "accrue_usage_rejections_total{{reason=\"{r}\"}} {}\n",
                self.rejections[i].load(Relaxed)
            ));
        }
        s.push_str("# HELP accrue_ingest_latency_seconds Latency of ingest requests.\n# TYPE accrue_ingest_latency_seconds histogram\n");
        for (i, b) in LATENCY_BUCKETS_S.iter().enumerate() {
            s.push_str(&format!(
                "accrue_ingest_latency_seconds_bucket{{le=\"{b}\"}} {}\n",
                self.latency_buckets[i].load(Relaxed)
            ));
        }
        let count = self.latency_count.load(Relaxed);
        s.push_str(&format!(
            "accrue_ingest_latency_seconds_bucket{{le=\"+Inf\"}} {count}\n"
        ));
        s.push_str(&format!(
            "accrue_ingest_latency_seconds_sum {}\n",
            self.latency_sum_us.load(Relaxed) as f64 / 1e6
        ));
        s.push_str(&format!("accrue_ingest_latency_seconds_count {count}\n"));
        s
    }
}
