//! Test harness: the real router on port 0 against a fresh temporary store
//! (zero2prod's `spawn_app`), and helpers to start the real binary.
#![allow(dead_code)]

use std::sync::Arc;

use accrue_api::{AppState, Tokens};
use accrue_ledger::{ClockMode, Ledger};
use accrue_store::sqlite::SqliteStore;
use accrue_store::EventStore;
use serde_json::{json, Value};

pub const ADMIN: &str = "test-admin-token";

pub struct App {
    pub base: String,
    pub client: reqwest::Client,
    pub ledger: Ledger,
    pub dir: tempfile::TempDir,
}

impl Drop for App {
    fn drop(&mut self) {
        drop_test_store(self.dir.path());
    }
}

/// Which store the black-box suites run on: `ACCRUE_TEST_BACKEND=postgres`
/// runs them on PostgreSQL (each test its own schema, dropped at the end),
/// else on SQLite.
pub fn on_postgres() -> bool {
    std::env::var("ACCRUE_TEST_BACKEND").is_ok_and(|b| b == "postgres")
}

/// The PostgreSQL URL the binary gets in PostgreSQL runs.
pub fn pg_url() -> String {
    std::env::var("ACCRUE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A fresh store for a test whose folder is `dir`, on the suite's backend.
pub fn test_store(dir: &std::path::Path) -> Arc<dyn EventStore> {
    if on_postgres() {
        use accrue_store::postgres::{schema_for, test_url, PgStore};
        Arc::new(PgStore::open_in_schema(&test_url(), &schema_for(dir)).unwrap())
    } else {
        Arc::new(SqliteStore::open(dir.join("ledger.db")).unwrap())
    }
}

/// Drops a PostgreSQL test schema (nothing on SQLite: the folder goes).
pub fn drop_test_store(dir: &std::path::Path) {
    if on_postgres() {
        use accrue_store::postgres::{schema_for, test_url};
        accrue_store::postgres::drop_schema(&test_url(), &schema_for(dir));
    }
}

/// Arguments and environment that point the binary at the test's store.
pub fn store_args(dir: &std::path::Path) -> (Vec<String>, Vec<(String, String)>) {
    if on_postgres() {
        (
            vec!["--store".into(), pg_url()],
            vec![(
                "ACCRUE_PG_SCHEMA".into(),
                accrue_store::postgres::schema_for(dir),
            )],
        )
    } else {
        (Vec::new(), Vec::new())
    }
}

/// Starts the API on a manual clock at `now`.
pub async fn spawn_app(now: &str) -> App {
    let dir = tempfile::tempdir().unwrap();
    let store = test_store(dir.path());
    let ledger = Ledger::open(store.clone(), ClockMode::Manual(now.parse().unwrap())).unwrap();
    let (tokens, _) = Tokens::load(&ledger, Some(ADMIN)).unwrap();
    let app = accrue_api::router(AppState {
        ledger: ledger.clone(),
        tokens: Arc::new(tokens),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    App {
        base,
        client: reqwest::Client::new(),
        ledger,
        dir,
    }
}

pub struct Resp {
    pub status: u16,
    pub content_type: String,
    pub body: Value,
    pub bytes: Vec<u8>,
}

impl App {
    pub async fn req(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut r = self.client.request(m, format!("{}{}", self.base, path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        finish(r.send().await.unwrap()).await
    }

    pub async fn raw(&self, method: &str, path: &str, body: &str) -> Resp {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = self
            .client
            .request(m, format!("{}{}", self.base, path))
            .bearer_auth(ADMIN)
            .header("content-type", "application/json")
            .body(body.to_string());
        finish(r.send().await.unwrap()).await
    }

    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        self.req(method, path, Some(ADMIN), body).await
    }

    pub async fn create(&self, id: &str, base: &str, limit: Option<&str>) -> Resp {
        let mut body = account_body(id);
        body["base_credits"] = json!(base);
        if let Some(l) = limit {
            body["credit_limit"] = json!(l);
        }
        self.admin("POST", "/v1/accounts", Some(body)).await
    }

    pub async fn token(&self, role: &str, account: Option<&str>) -> String {
        let mut body = json!({"role": role});
        if let Some(a) = account {
            body["account_id"] = json!(a);
        }
        let r = self.admin("POST", "/v1/tokens", Some(body)).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        r.body["token"].as_str().unwrap().to_string()
    }

    pub async fn usage(&self, events: Value) -> Resp {
        self.admin("POST", "/v1/usage", Some(json!({ "events": events })))
            .await
    }

    pub async fn overview(&self, id: &str) -> Value {
        let r = self.admin("GET", &format!("/v1/accounts/{id}"), None).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        r.body
    }

    pub async fn event_count(&self) -> u64 {
        self.ledger.store().head_position().unwrap()
    }
}

/// A response as the tests read it (status, content type, JSON body, bytes).
pub async fn finish(r: reqwest::Response) -> Resp {
    let status = r.status().as_u16();
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bytes = r.bytes().await.unwrap().to_vec();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Resp {
        status,
        content_type,
        body,
        bytes,
    }
}

pub fn account_body(id: &str) -> Value {
    json!({
        "id": id,
        "name": format!("{id} Inc."),
        "billing_email": format!("billing@{id}.test"),
        "email_language": "en",
        "billing_frequency": "monthly",
        "plan": {
            "full_seats": 5, "full_seat_price": "10.00",
            "viewer_seats": 20, "viewer_seat_price": "2.00",
            "data_management": true, "data_management_price": "50.00"
        },
        "base_credits": "0.00"
    })
}

/// Asserts an RFC 9457 problem with the given status.
pub fn assert_problem(r: &Resp, status: u16) {
    assert_eq!(r.status, status, "{:?}", r.body);
    assert_eq!(r.content_type, "application/problem+json", "{:?}", r.body);
    for k in ["type", "title", "status", "detail"] {
        assert!(r.body.get(k).is_some(), "problem lacks {k}: {:?}", r.body);
    }
    assert_eq!(r.body["status"], status);
}

/// Starts the real `accrue serve` binary on a free port with a manual clock
/// at 2026-01-15 and `extra` arguments; returns it and its base URL.
pub fn serve_binary(
    data: &std::path::Path,
    token: &str,
    extra: &[&str],
) -> (std::process::Child, String) {
    let (child, base, _log) = serve_binary_env(data, token, extra, &[]);
    (child, base)
}

/// [`serve_binary`] with extra environment variables (set last, so they can
/// override `ACCRUE_LOG`); also returns what the server has logged so far
/// (stderr, kept up to 64 KiB and growing while it runs).
pub fn serve_binary_env(
    data: &std::path::Path,
    token: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (
    std::process::Child,
    String,
    std::sync::Arc<std::sync::Mutex<String>>,
) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_accrue"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--clock",
            "2026-01-15T00:00:00Z",
        ])
        .args(extra)
        // A test that names its own store keeps it.
        .args(if extra.contains(&"--store") {
            Vec::new()
        } else {
            store_args(data).0
        })
        .envs(if extra.contains(&"--store") {
            Vec::new()
        } else {
            store_args(data).1
        })
        .arg("--data")
        .arg(data)
        .env("ACCRUE_ADMIN_TOKEN", token)
        .env("ACCRUE_LOG", "error")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start accrue");
    // Stderr is kept (and drained) so a server that does not start says why.
    let err = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    {
        let err = err.clone();
        let stderr = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut e = err.lock().unwrap();
                if e.len() < 64 * 1024 {
                    e.push_str(&l);
                    e.push('\n');
                }
            }
        });
    }
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let base = loop {
        let Some(line) = lines.next() else {
            let status = child.wait();
            std::thread::sleep(std::time::Duration::from_millis(200));
            panic!(
                "accrue did not print its address ({status:?}); stderr:\n{}",
                err.lock().unwrap()
            );
        };
        let line = line.expect("stdout is UTF-8");
        if let Some(addr) = line.strip_prefix("accrue listening on ") {
            break addr.trim().to_string();
        }
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, base, err)
}

/// The text of a PDF as `pdftotext -layout` extracts it, after `qpdf
/// --check` passed on it (both real tools: poppler-utils, qpdf).
pub fn pdftotext(pdf: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("doc.pdf");
    std::fs::write(&p, pdf).unwrap();
    let out = std::process::Command::new("pdftotext")
        .arg("-layout")
        .arg(&p)
        .arg("-")
        .output()
        .expect("pdftotext (poppler-utils) must be installed");
    assert!(out.status.success());
    let check = std::process::Command::new("qpdf")
        .arg("--check")
        .arg(&p)
        .output()
        .expect("qpdf must be installed");
    assert_eq!(
        check.status.code(),
        Some(0),
        "qpdf --check: {}",
        String::from_utf8_lossy(&check.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A TCP port free on loopback right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The Python interpreter that can import `modules` (`"aiosmtpd,
/// cryptography"`): `python3` on PATH, else Debian's. The test peers
/// (SMTP and HTTPS sinks) run under it.
pub fn python_with(modules: &str) -> &'static str {
    let ok = |p: &str| {
        std::process::Command::new(p)
            .args(["-c", &format!("import {modules}")])
            .status()
            .is_ok_and(|s| s.success())
    };
    if ok("python3") {
        "python3"
    } else if ok("/usr/bin/python3") {
        "/usr/bin/python3"
    } else {
        panic!("python3 cannot import {modules}: .ci/run installs them")
    }
}

/// Feeds `text` to `promtool check metrics`; its exit code and output.
pub fn promtool_check(text: &str) -> (i32, String) {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}
