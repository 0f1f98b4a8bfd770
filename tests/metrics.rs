//! `GET /metrics` of the real `accrue serve` binary, checked by Prometheus'
//! own `promtool check metrics`: before and after some ingest, accepted,
//! duplicate and rejected events move their counters, and every family the
//! exposition has always had is there under its old name and type. SQLite
//! and (with `ACCRUE_TEST_BACKEND=postgres`) PostgreSQL.

mod common;

use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "metrics-test-admin";

/// The value of the sample written exactly as `series` (name and labels).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
}

async fn scrape(base: &str) -> (String, String) {
    let r = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    (ct, r.text().await.unwrap())
}

async fn call(base: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .request(method.parse().unwrap(), format!("{base}{path}"))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

#[test]
fn promtool_refuses_a_broken_exposition() {
    // Without this, a promtool that accepts anything would pass the test
    // below.
    let (code, out) = promtool_check("# TYPE accrue_x counter\naccrue_x_total{reason=\"a} 1\n");
    assert_ne!(code, 0, "promtool accepted a broken label: {out}");
    let (code, out) = promtool_check("# TYPE accrue_x_total counter\naccrue_x_total one\n");
    assert_ne!(code, 0, "promtool accepted a non-number: {out}");
    let (code, out) = promtool_check(
        "# HELP accrue_x_total X.\n# TYPE accrue_x_total counter\naccrue_x_total 1\n",
    );
    assert_eq!(code, 0, "promtool refused a good line: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_move_with_ingest() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base, _log) = serve_binary_env(dir.path(), TOKEN, &[], &[]);

    let (ct, before) = scrape(&base).await;
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let (code, out) = promtool_check(&before);
    assert_eq!(code, 0, "promtool: {out}\n{before}");

    // Every family, with its old name and type.
    for (family, kind) in [
        ("accrue_events_appended_total", "counter"),
        ("accrue_commits_total", "counter"),
        ("accrue_mails_sent_total", "counter"),
        ("accrue_mails_bounced_total", "counter"),
        ("accrue_snapshots_written_total", "counter"),
        ("accrue_snapshot_position", "gauge"),
        ("accrue_usage_events_total", "counter"),
        ("accrue_usage_rejections_total", "counter"),
        ("accrue_ingest_latency_seconds", "histogram"),
        ("accrue_head_position", "gauge"),
        ("accrue_projector_checkpoint", "gauge"),
        ("accrue_http_panics_total", "counter"),
    ] {
        let line = format!("# TYPE {family} {kind}");
        assert!(
            before.lines().any(|l| l == line),
            "no {line:?} in\n{before}"
        );
    }
    assert_eq!(
        sample(&before, "accrue_usage_events_total{outcome=\"accepted\"}"),
        0.0
    );
    let head_before = sample(&before, "accrue_head_position");

    let (s, b) = call(&base, "POST", "/v1/accounts", account_body("acme")).await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = call(
        &base,
        "PUT",
        "/v1/accounts/acme/credit-subscription",
        json!({"limit": "5.00"}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = call(
        &base,
        "POST",
        "/v1/usage",
        json!({"events": [
            {"id": "u1", "account_id": "acme", "amount": "1.00"},
            {"id": "u1", "account_id": "acme", "amount": "1.00"},
            {"id": "u2", "account_id": "acme", "amount": "9.00"},
            {"id": "u3", "account_id": "nobody", "amount": "1.00"},
            {"id": "u4", "account_id": "acme", "amount": "-1"},
        ]}),
    )
    .await;
    assert!(s < 500, "{s} {b}");
    let outcomes: Vec<&str> = b["results"]
        .as_array()
        .unwrap_or_else(|| panic!("{b}"))
        .iter()
        .map(|r| r["status"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        outcomes,
        ["accepted", "duplicate", "rejected", "rejected", "rejected"],
        "{b}"
    );

    let (_, after) = scrape(&base).await;
    let (code, out) = promtool_check(&after);
    assert_eq!(code, 0, "promtool: {out}\n{after}");
    for (series, want) in [
        ("accrue_usage_events_total{outcome=\"accepted\"}", 1.0),
        ("accrue_usage_events_total{outcome=\"duplicate\"}", 1.0),
        (
            "accrue_usage_rejections_total{reason=\"credit_limit_exceeded\"}",
            1.0,
        ),
        (
            "accrue_usage_rejections_total{reason=\"unknown_account\"}",
            1.0,
        ),
        ("accrue_usage_rejections_total{reason=\"invalid\"}", 1.0),
        ("accrue_usage_rejections_total{reason=\"future\"}", 0.0),
        ("accrue_ingest_latency_seconds_count", 1.0),
        ("accrue_ingest_latency_seconds_bucket{le=\"+Inf\"}", 1.0),
        ("accrue_http_panics_total", 0.0),
    ] {
        assert_eq!(sample(&after, series), want, "{series} in\n{after}");
    }
    assert!(
        sample(&after, "accrue_events_appended_total") >= 3.0,
        "{after}"
    );
    assert!(sample(&after, "accrue_commits_total") >= 1.0, "{after}");
    let head_after = sample(&after, "accrue_head_position");
    assert!(head_after > head_before, "{head_before} → {head_after}");
    assert_eq!(
        sample(&after, "accrue_events_appended_total"),
        head_after - head_before,
        "every appended event moved the head: {after}"
    );
    assert!(
        after.contains("accrue_projector_checkpoint{name=\"pdf\"}"),
        "{after}"
    );
    let _ = child.kill();
    let _ = child.wait();
    drop_test_store(dir.path());
}
