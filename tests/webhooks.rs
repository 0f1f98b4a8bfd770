//! Outgoing webhooks against a real local HTTP receiver that fails, times
//! out, then accepts: delivered at least once, recognisably the same event
//! each time, signed, attempts listed, and an endpoint that fails for 3
//! days disabled; and against a real HTTPS receiver (Python's http.server
//! and ssl, `tests/https_sink.py`) whose test CA is trusted only through
//! `ACCRUE_WEBHOOK_CA_FILE`. The real `accrue serve` binary, on SQLite and
//! (with `ACCRUE_TEST_BACKEND=postgres`) PostgreSQL.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
    // Bad registrations: 422, and nothing registered.
    for body in [
        json!({"url": "ftp://x/", "events": ["invoice.issued"]}),
        json!({"url": "file:///etc/passwd", "events": ["invoice.issued"]}),
        json!({"url": "https://user:pass@hooks.example.test/", "events": ["*"]}),
        json!({"url": "http://user@127.0.0.1:9/", "events": ["*"]}),
        json!({"url": "https://:secret@hooks.example.test/", "events": ["*"]}),
        json!({"url": "not a url", "events": ["*"]}),
        json!({"url": url, "events": ["invoice.sent"]}),
        json!({"url": url, "events": []}),
    ] {
        let (s, b) = call(&base, "POST", "/v1/webhook-endpoints", Some(body)).await;
        assert_eq!(s, 422, "{b}");
        assert_eq!(b["status"], 422, "a problem: {b}");
    }
    let (_, list) = call(&base, "GET", "/v1/webhook-endpoints", None).await;
    assert_eq!(list["endpoints"], json!([]), "{list}");
    assert!(!list.to_string().contains("pass"), "{list}");
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
    // The operator is told, once: endpoints belong to no account, so the
    // mail goes to the issuer's email, here (none configured) the sender's
    // own address; without SMTP it lands in the outbox.
    let outbox = dir.path().join("outbox");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mail = loop {
        let found: Vec<_> = std::fs::read_dir(&outbox)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .ends_with("-webhook_endpoint_disabled.eml")
                    })
                    .map(|e| std::fs::read_to_string(e.path()).unwrap())
                    .collect()
            })
            .unwrap_or_default();
        if let Some(m) = found.first() {
            assert_eq!(found.len(), 1, "one mail per disabled endpoint");
            break m.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no mail about the disabled endpoint in {outbox:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        mail.contains(&format!("Subject: Webhook endpoint {dead_id} disabled")),
        "{mail}"
    );
    assert!(mail.contains("To: billing@accrue.example"), "{mail}");
    assert!(mail.contains("127.0.0.1:9/none"), "{mail}");
    let _ = child.kill();
    let _ = child.wait();
    drop_test_store(dir.path());
}

// ------------------------------------------------------------- https receivers

fn python() -> &'static str {
    common::python_with("aiosmtpd, cryptography")
}

struct HttpsSink {
    child: Child,
    out: PathBuf,
    ca: PathBuf,
    port: u16,
}

impl Drop for HttpsSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl HttpsSink {
    fn start(dir: &Path) -> HttpsSink {
        let port = free_port();
        let out = dir.join("received");
        let certs = dir.join("certs");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/https_sink.py");
        let child = Command::new(python())
            .arg(&script)
            .arg(port.to_string())
            .arg(&out)
            .arg(&certs)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the HTTPS sink");
        let sink = HttpsSink {
            child,
            out,
            ca: certs.join("ca.pem"),
            port,
        };
        // The certificates are written before the port opens.
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the HTTPS sink did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        sink
    }

    /// The requests received on `path`: (headers, body).
    fn received(&self, path: &str) -> Vec<(Value, String)> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.out)
            .map(|d| {
                d.filter_map(|e| Some(e.ok()?.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "json"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
            .iter()
            .filter_map(|f| serde_json::from_str::<Value>(&std::fs::read_to_string(f).ok()?).ok())
            .filter(|r| r["path"] == path)
            .map(|r| {
                (
                    r["headers"].clone(),
                    r["body"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }
}

/// Registers an endpoint for `invoice.issued` at `url`; its id and secret.
async fn register(base: &str, url: &str) -> (String, String) {
    let (s, ep) = call(
        base,
        "POST",
        "/v1/webhook-endpoints",
        Some(json!({"url": url, "events": ["invoice.issued"]})),
    )
    .await;
    assert_eq!(s, 201, "{ep}");
    (
        ep["id"].as_str().unwrap().to_string(),
        ep["secret"].as_str().unwrap().to_string(),
    )
}

async fn deliveries(base: &str, id: &str) -> Value {
    let (s, d) = call(
        base,
        "GET",
        &format!("/v1/webhook-endpoints/{id}/deliveries"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{d}");
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_receivers_get_signed_events_only_when_their_ca_is_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let sink = HttpsSink::start(dir.path());
    let ca = sink.ca.to_str().unwrap().to_string();

    // Trusted through ACCRUE_WEBHOOK_CA_FILE: delivered, and signed.
    let trusting = dir.path().join("trusting");
    std::fs::create_dir_all(&trusting).unwrap();
    let (mut a, base_a, log_a) = serve_binary_env(
        &trusting,
        TOKEN,
        &[],
        &[("ACCRUE_WEBHOOK_CA_FILE", &ca), ("ACCRUE_LOG", "warn")],
    );
    let url = format!("https://localhost:{}/trusted", sink.port);
    let (id, secret) = register(&base_a, &url).await;
    let (s, b) = call(&base_a, "POST", "/v1/accounts", Some(account_body("acme"))).await;
    assert_eq!(s, 201, "{b}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let (headers, body) = loop {
        if let Some(r) = sink.received("/trusted").pop() {
            break r;
        }
        if Instant::now() >= deadline {
            let d = deliveries(&base_a, &id).await;
            panic!(
                "nothing arrived over https in 30 s: {d} {}",
                log_a.lock().unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["type"], "invoice.issued", "{v}");
    assert_eq!(v["data"]["number"], "INV-2026-000001", "{v}");
    assert_eq!(headers["accrue-event-id"], v["id"], "{headers}");
    let sig = headers["accrue-signature"].as_str().unwrap();
    let (t, v1) = sig
        .strip_prefix("t=")
        .and_then(|s| s.split_once(",v1="))
        .expect("t=…,v1=…");
    let signed = format!("{t}.{body}");
    assert!(
        accrue_ledger::hmac::verify_hex(secret.as_bytes(), signed.as_bytes(), v1),
        "the signature verifies with the endpoint's secret"
    );
    // Recorded as delivered once the answer is read.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = deliveries(&base_a, &id).await;
        if d["deliveries"][0]["delivered"] == true {
            let attempts = d["deliveries"][0]["attempts"].as_array().unwrap();
            assert_eq!(attempts.last().unwrap()["status"], 200, "{d}");
            break;
        }
        assert!(Instant::now() < deadline, "not recorded as delivered: {d}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = a.kill();
    let _ = a.wait();

    // The same receiver without the CA file: Mozilla's roots do not know
    // the test CA, so every attempt fails on the certificate and nothing
    // reaches the receiver.
    let plain = dir.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let (mut b_child, base_b, log_b) =
        serve_binary_env(&plain, TOKEN, &[], &[("ACCRUE_LOG", "warn")]);
    let url = format!("https://localhost:{}/untrusted", sink.port);
    let (id_b, _) = register(&base_b, &url).await;
    let (s, b) = call(&base_b, "POST", "/v1/accounts", Some(account_body("acme"))).await;
    assert_eq!(s, 201, "{b}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let d = loop {
        let d = deliveries(&base_b, &id_b).await;
        if d["deliveries"][0]["attempts"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
        {
            break d;
        }
        assert!(
            Instant::now() < deadline,
            "no attempt listed in 30 s: {d} {}",
            log_b.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let first = &d["deliveries"][0];
    assert_eq!(first["delivered"], false, "{d}");
    let attempt = &first["attempts"][0];
    assert!(attempt.get("status").is_none(), "no HTTP answer: {d}");
    let error = attempt["error"].as_str().unwrap_or("");
    assert!(
        error.to_lowercase().contains("certificate"),
        "the error names the certificate: {d}"
    );
    assert!(sink.received("/untrusted").is_empty());
    let _ = b_child.kill();
    let _ = b_child.wait();
    drop_test_store(&trusting);
    drop_test_store(&plain);
}
