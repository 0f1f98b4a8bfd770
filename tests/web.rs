//! The Manage License page (SPEC §10), black-box: the real binary serves
//! it with its security headers and embedded assets, and a real headless
//! Chromium (driven by `tests/web/page.test.mjs` through playwright-core)
//! signs in and checks every tab against the API's JSON. On SQLite and,
//! with `ACCRUE_TEST_BACKEND=postgres`, on PostgreSQL.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const TOKEN: &str = "web-test-admin";

struct Srv {
    child: Child,
    base: String,
    http: reqwest::blocking::Client,
    dir: tempfile::TempDir,
}

impl Drop for Srv {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        common::drop_test_store(self.dir.path());
    }
}

struct R {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl R {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

impl Srv {
    fn start() -> Srv {
        let dir = tempfile::tempdir().unwrap();
        let (child, base) = common::serve_binary(dir.path(), TOKEN, &[]);
        Srv {
            child,
            base,
            http: reqwest::blocking::Client::new(),
            dir,
        }
    }

    fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> R {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut r = self.http.request(m, format!("{}{}", self.base, path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let res = r.send().unwrap();
        R {
            status: res.status().as_u16(),
            headers: res.headers().clone(),
            text: res.text().unwrap(),
        }
    }

    fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let r = self.call(method, path, Some(TOKEN), body);
        assert!(
            (200..300).contains(&r.status),
            "{method} {path}: {} {}",
            r.status,
            r.text
        );
        r.json()
    }

    fn token(&self, account: &str) -> String {
        let r = self.admin(
            "POST",
            "/v1/tokens",
            Some(json!({"role": "account", "account_id": account})),
        );
        r["token"].as_str().unwrap().to_string()
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn web_asset(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("crates/accrue-api/src/web").join(name)).unwrap()
}

#[test]
fn the_page_is_served_embedded_with_strict_headers() {
    let srv = Srv::start();
    let csp = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
    for (path, ctype, file) in [
        ("/", "text/html; charset=utf-8", "index.html"),
        ("/app.js", "text/javascript; charset=utf-8", "app.js"),
        ("/app.css", "text/css; charset=utf-8", "app.css"),
        ("/favicon.svg", "image/svg+xml", "favicon.svg"),
    ] {
        let r = srv.call("GET", path, None, None);
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        assert_eq!(r.header("content-type"), ctype, "{path}");
        assert_eq!(r.header("content-security-policy"), csp, "{path}");
        assert_eq!(r.header("x-frame-options"), "DENY", "{path}");
        assert_eq!(r.header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(r.header("referrer-policy"), "no-referrer", "{path}");
        // Served from the binary (which runs with its own data folder),
        // byte for byte the files in the repository.
        assert_eq!(r.text, web_asset(file), "{path} differs from its source");
    }
    let html = srv.call("GET", "/", None, None).text;
    // No inline script or style for the CSP to forbid, nothing from elsewhere.
    assert!(html.contains(r#"<script src="/app.js" defer></script>"#));
    assert_eq!(
        html.matches("<script").count(),
        1,
        "one external script only"
    );
    assert!(!html.contains("<style"), "no inline style element");
    assert!(!html.contains(" style="), "no inline style attribute");
    assert!(!html.contains("http://") && !html.contains("https://"));
    for tab in [
        "License",
        "AI credits",
        "Active sessions",
        "Billing",
        "Payment",
    ] {
        assert!(html.contains(&format!(">{tab}</button>")), "tab {tab}");
    }
    // HEAD answers too; a near miss is still the API's 404.
    assert_eq!(srv.call("HEAD", "/", None, None).status, 200);
    let miss = srv.call("GET", "/app.jsx", None, None);
    assert_eq!(miss.status, 404);
    assert_eq!(miss.header("content-type"), "application/problem+json");

    // The page is not JSON API: not in the document the fuzzer walks; the
    // read route it needs is.
    let doc = srv.call("GET", "/openapi.json", None, None).json();
    let paths = doc["paths"].as_object().unwrap();
    for p in ["/", "/app.js", "/app.css", "/favicon.svg"] {
        assert!(!paths.contains_key(p), "{p} in /openapi.json");
    }
    assert!(paths.contains_key("/v1/me"));

    // Who a token is: the page's first call.
    srv.admin("POST", "/v1/accounts", Some(common::account_body("acme")));
    let t = srv.token("acme");
    let me = srv.call("GET", "/v1/me", Some(&t), None);
    assert_eq!(me.status, 200, "{}", me.text);
    assert_eq!(me.json(), json!({"role": "account", "account_id": "acme"}));
    assert_eq!(
        srv.call("GET", "/v1/me", Some(TOKEN), None).json(),
        json!({"role": "admin"})
    );
    assert_eq!(srv.call("GET", "/v1/me", None, None).status, 401);
    assert_eq!(
        srv.call("GET", "/v1/me", Some("acr_nope"), None).status,
        401
    );
}

/// Two customers with a month and more of history: invoices, a failed
/// payment, credits used, two activated servers with sessions.
fn demo_like(srv: &Srv) {
    let mut acme = common::account_body("acme");
    acme["name"] = json!("Acme Analytics");
    acme["base_credits"] = json!("10.00");
    acme["credit_limit"] = json!("12.00");
    srv.admin("POST", "/v1/accounts", Some(acme));
    let mut globex = common::account_body("globex");
    globex["name"] = json!("Globex GmbH");
    globex["email_language"] = json!("de");
    globex["base_credits"] = json!("5.00");
    globex["plan"] = json!({
        "full_seats": 1, "full_seat_price": "1234.50",
        "viewer_seats": 0, "viewer_seat_price": "0.00",
        "data_management": false, "data_management_price": "0.00"
    });
    srv.admin("POST", "/v1/accounts", Some(globex));
    srv.admin(
        "PUT",
        "/v1/accounts/acme/payment-method",
        Some(
            json!({"token": "tok_visa_4242", "brand": "visa", "last4": "4242",
                    "exp_month": 12, "exp_year": 2030}),
        ),
    );
    for now in ["2026-02-15T00:00:00Z", "2026-03-15T00:00:00Z"] {
        srv.admin("POST", "/v1/clock", Some(json!({ "now": now })));
    }
    srv.admin(
        "POST",
        "/v1/clock",
        Some(json!({"now": "2026-03-16T09:00:00Z"})),
    );
    let invoices = srv.admin("GET", "/v1/accounts/acme/invoices", None);
    let latest = invoices["invoices"][0]["number"]
        .as_str()
        .unwrap()
        .to_string();
    srv.admin(
        "POST",
        "/v1/payments",
        Some(json!({"invoice_number": latest, "outcome": "failed",
                    "reference": "ch_web_1", "failure_reason": "card declined"})),
    );
    let usage = srv.admin(
        "POST",
        "/v1/usage",
        Some(json!({"events": [
            {"id": "u1", "account_id": "acme", "amount": "3.1250", "product": "chat", "feature": "summarize"},
            {"id": "u2", "account_id": "acme", "amount": "9.50", "product": "chat", "feature": "draft"},
            {"id": "u3", "account_id": "globex", "amount": "0.75", "product": "chat", "feature": "draft"}
        ]})),
    );
    assert_eq!(usage["accepted"], 3, "{usage}");

    // The license server: two servers, sessions on both, one sync.
    srv.admin(
        "PUT",
        "/v1/accounts/acme/license",
        Some(json!({"term_end": "2026-12-31", "max_activations": 2})),
    );
    let ov = srv.admin("GET", "/v1/accounts/acme", None);
    let serial = ov["serial_number"].as_str().unwrap();
    let control = ov["license"]["control_number"].as_str().unwrap();
    let mut server_tokens = Vec::new();
    for s in ["srv-berlin", "srv-tokyo"] {
        let r = srv.call(
            "POST",
            "/v1/activations",
            None,
            Some(json!({"serial_number": serial, "control_number": control,
                        "server_id": s, "hostname": format!("{s}.acme.test")})),
        );
        assert_eq!(r.status, 201, "{}", r.text);
        server_tokens.push(r.json()["token"].as_str().unwrap().to_string());
    }
    let at = "2026-03-16T08:55:00Z";
    let session = |id: &str, user: &str, kind: &str, module: &str, client: &str| {
        json!({"id": id, "user_name": user, "user_type": kind, "module": module,
               "client": client, "last_accessed_at": at})
    };
    for (token, sessions) in [
        (
            &server_tokens[0],
            json!([
                session("s-1", "alice", "full", "Dashboards", "web"),
                session("s-2", "bob", "full", "Excel add-in", "addin"),
                session("s-3", "carol", "viewer", "Dashboards", "web"),
            ]),
        ),
        (
            &server_tokens[1],
            json!([session("s-4", "dave", "system_manager", "Admin", "web")]),
        ),
    ] {
        let r = srv.call(
            "PUT",
            "/v1/activation/sessions",
            Some(token),
            Some(json!({ "sessions": sessions })),
        );
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let r = srv.call("GET", "/v1/license", Some(&server_tokens[0]), None);
    assert_eq!(r.status, 200, "{}", r.text);
}

/// Fails (never skips) when the browser or the test's npm packages are
/// missing: `.ci/run` installs both.
fn browser_prerequisites() -> (PathBuf, String) {
    let chromium =
        std::env::var("ACCRUE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_string());
    assert!(
        Path::new(&chromium).exists(),
        "headless Chromium is missing at {chromium}: install it with \
         `apt-get install -y chromium` (as .ci/run does), or set ACCRUE_CHROMIUM"
    );
    let web = repo_root().join("tests/web");
    for pkg in ["playwright-core", "axe-core"] {
        assert!(
            web.join("node_modules").join(pkg).exists(),
            "{pkg} is missing: run `npm ci` in tests/web (as .ci/run does)"
        );
    }
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node is missing: install Node.js 20 or later (Debian `nodejs`)"
    );
    (web, chromium)
}

#[test]
fn the_page_in_headless_chromium_shows_what_the_api_says() {
    let (web, chromium) = browser_prerequisites();
    let srv = Srv::start();
    demo_like(&srv);
    let acme = srv.token("acme");
    let globex = srv.token("globex");
    let backend = if common::on_postgres() {
        "postgres"
    } else {
        "sqlite"
    };
    let out = repo_root().join("target/web-test").join(backend);
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let log = out.join("node.log");
    let started = Instant::now();
    let mut child = Command::new("node")
        .arg(web.join("page.test.mjs"))
        .current_dir(&web)
        .env("ACCRUE_URL", &srv.base)
        .env("ACCRUE_ADMIN_TOKEN", TOKEN)
        .env("ACCRUE_ACCOUNT_TOKEN", &acme)
        .env("ACCRUE_OTHER_TOKEN", &globex)
        .env("ACCRUE_ACCOUNT", "acme")
        .env("ACCRUE_OTHER_ACCOUNT", "globex")
        .env("ACCRUE_CHROMIUM", &chromium)
        .env("ACCRUE_WEB_OUT", &out)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(out.join("node.err")).unwrap())
        .spawn()
        .expect("start node");
    let deadline = started + Duration::from_secs(180);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the browser test ran over 180 s:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = std::fs::read_to_string(&log).unwrap_or_default();
    let stderr = std::fs::read_to_string(out.join("node.err")).unwrap_or_default();
    println!("{stdout}");
    assert!(
        status.success(),
        "the browser test failed ({status}) after {:?}:\n{stdout}\n{stderr}",
        started.elapsed()
    );
    for shot in ["license-desktop.png", "license-phone.png"] {
        assert!(out.join(shot).exists(), "screenshot {shot} not written");
    }
    // What the browser did went through the API: the activation it
    // released is released, the limit it set is set, the method replaced.
    let acts = srv.admin("GET", "/v1/accounts/acme/activations", None);
    assert_eq!(acts["used"], 1, "{acts}");
    let ov = srv.admin("GET", "/v1/accounts/acme", None);
    assert_eq!(ov["credits"]["pending_unsubscribe"], true, "{ov}");
    assert_eq!(ov["payment"]["method"]["last4"], "1881", "{ov}");
}
