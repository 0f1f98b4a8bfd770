//! Outgoing webhooks against a real local HTTP receiver that fails, times
//! out, then accepts: delivered at least once, recognisably the same event
//! each time, signed, attempts listed, and an endpoint that fails for 3
//! days disabled. The real `accrue serve` binary, on SQLite and (with
//! `ACCRUE_TEST_BACKEND=postgres`) PostgreSQL.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "webhook-test-admin";

#[derive(Clone, Default)]
struct Receiver {
    seen: Arc<Mutex<Vec<(HeaderMap, String, u16)>>>,
    arrived: Arc<std::sync::atomic::AtomicUsize>,
}

/// Answers 500, then sleeps past the sender's timeout, then 200.
async fn receive(
    axum::extract::State(r): axum::extract::State<Receiver>,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    let n = r.arrived.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let status = match n {
        0 => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::OK,
    };
    // Recorded on arrival: the sender hangs up on the slow one, and the
    // server then drops this handler.
    r.seen
        .lock()
        .unwrap()
        .push((headers, body, status.as_u16()));
    if n == 1 {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    status
}

async fn start_receiver() -> (Receiver, String) {
    let r = Receiver::default();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(r.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (r, url)
}

async fn call(base: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let c = reqwest::Client::new();
    let mut r = c
        .request(method.parse().unwrap(), format!("{base}{path}"))
        .bearer_auth(TOKEN);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_retried_listed_and_given_up_on() {
    let (receiver, url) = start_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base, log) = serve_binary_env(
        dir.path(),
        TOKEN,
        &[],
        &[("ACCRUE_WEBHOOK_TIMEOUT_SECS", "1"), ("ACCRUE_LOG", "warn")],
    );
    // Bad registrations: 422.
    for body in [
        json!({"url": "ftp://x/", "events": ["invoice.issued"]}),
        json!({"url": url, "events": ["invoice.sent"]}),
        json!({"url": url, "events": []}),
    ] {
        let (s, b) = call(&base, "POST", "/v1/webhook-endpoints", Some(body)).await;
        assert_eq!(s, 422, "{b}");
    }
    let (s, ep) = call(
        &base,
        "POST",
        "/v1/webhook-endpoints",
        Some(json!({"url": url, "events": ["invoice.issued"]})),
    )
    .await;
    assert_eq!(s, 201, "{ep}");
    let secret = ep["secret"].as_str().unwrap().to_string();
    let id = ep["id"].as_str().unwrap().to_string();
    // A second endpoint nobody listens on.
    let (s, dead) = call(
        &base,
        "POST",
        "/v1/webhook-endpoints",
        Some(json!({"url": "http://127.0.0.1:9/none", "events": ["*"]})),
    )
    .await;
    assert_eq!(s, 201, "{dead}");
    let (s, list) = call(&base, "GET", "/v1/webhook-endpoints", None).await;
    assert_eq!(s, 200);
    assert!(list.to_string().contains(&id));
    assert!(
        !list.to_string().contains(&secret),
        "secrets are shown once"
    );

    // Opening an account issues its first invoice: one webhook event.
    let (s, b) = call(&base, "POST", "/v1/accounts", Some(account_body("acme"))).await;
    assert_eq!(s, 201, "{b}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !receiver
        .seen
        .lock()
        .unwrap()
        .iter()
        .any(|(_, _, s)| *s == 200)
    {
        if Instant::now() >= deadline {
            let (_, d) = call(
                &base,
                "GET",
                &format!("/v1/webhook-endpoints/{id}/deliveries"),
                None,
            )
            .await;
            panic!("no delivery accepted in 30 s: {d} {}", log.lock().unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing more arrives for it once accepted.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = receiver.seen.lock().unwrap().clone();
    assert!(seen.len() >= 3, "a 500, a timeout, then the accepted one");
    let event_ids: Vec<&str> = seen
        .iter()
        .map(|(h, _, _)| h["accrue-event-id"].to_str().unwrap())
        .collect();
    assert!(
        event_ids.iter().all(|e| *e == event_ids[0]),
        "{event_ids:?}"
    );
    // The one that timed out was answered 200 too late; the next was taken.
    assert_eq!(seen[0].2, 500);
    let (headers, body, _) = seen.last().unwrap();
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["type"], "invoice.issued");
    assert_eq!(v["id"], event_ids[0]);
    assert_eq!(v["account_id"], "acme");
    assert_eq!(v["data"]["number"], "INV-2026-000001");
    let sig = headers["accrue-signature"].to_str().unwrap();
    let (t, v1) = sig
        .strip_prefix("t=")
        .and_then(|s| s.split_once(",v1="))
        .expect("t=…,v1=…");
    let signed = format!("{t}.{body}");
    assert!(
        accrue_ledger::hmac::verify_hex(secret.as_bytes(), signed.as_bytes(), v1),
        "the signature verifies with the endpoint's secret"
    );
    assert!(!accrue_ledger::hmac::verify_hex(
        b"whsec_wrong",
        signed.as_bytes(),
        v1
    ));

    // Attempts are listed.
    let (s, d) = call(
        &base,
        "GET",
        &format!("/v1/webhook-endpoints/{id}/deliveries"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{d}");
    let first = &d["deliveries"][0];
    assert_eq!(first["delivered"], true, "{d}");
    let attempts = first["attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["status"], 500, "{d}");
    assert_eq!(attempts[1]["error"], "timed out", "{d}");
    assert_eq!(attempts.last().unwrap()["status"], 200, "{d}");

    // The dead endpoint: still failing 3 days later by the ledger's clock → disabled.
    let (s, b) = call(
        &base,
        "POST",
        "/v1/clock",
        Some(json!({"now": "2026-01-18T00:00:01Z"})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let dead_id = dead["id"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, list) = call(&base, "GET", "/v1/webhook-endpoints", None).await;
        let status = list["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == dead_id)
            .map(|e| e["status"].clone());
        if status == Some(json!("disabled")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dead endpoint was not disabled: {list}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    drop_test_store(dir.path());
}
