//! The license server (SPEC §7), black-box: the real binary (restart
//! included) and the router on port 0; an independent JOSE implementation
//! (PyJWT) verifies the definitions; the `accrue-license` client is the
//! product server.

mod common;

use std::process::Child;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use serde_json::{json, Value};

const TOKEN: &str = "license-test-admin";

struct Srv {
    child: Child,
    base: String,
    http: reqwest::blocking::Client,
}

struct R {
    status: u16,
    etag: Option<String>,
    content_type: String,
    text: String,
}

impl R {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }
}

impl Drop for Srv {
    fn drop(&mut self) {
        // A failed assertion must not leave the server running.
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Srv {
    fn start(data: &std::path::Path) -> Srv {
        Srv::start_with(data, &[])
    }

    fn start_with(data: &std::path::Path, extra: &[&str]) -> Srv {
        let (child, base) = common::serve_binary(data, TOKEN, extra);
        Srv {
            child,
            base,
            http: reqwest::blocking::Client::new(),
        }
    }

    /// SIGTERM: the server drains, writes pending syncs and exits; one
    /// still up after 20 s fails the test.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(ok.success());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("serve did not stop within 20 s of SIGTERM");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> R {
        self.call_h(method, path, token, body, &[])
    }

    fn call_h(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> R {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut r = self.http.request(m, format!("{}{}", self.base, path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let resp = r.send().unwrap();
        let header = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        };
        let etag = header("etag");
        let content_type = header("content-type").unwrap_or_default();
        let status = resp.status().as_u16();
        R {
            status,
            etag,
            content_type,
            text: resp.text().unwrap(),
        }
    }

    fn admin(&self, method: &str, path: &str, body: Option<Value>) -> R {
        self.call(method, path, Some(TOKEN), body)
    }

    /// Creates an account; returns (serial, control number).
    fn account(&self, id: &str) -> (String, String) {
        let r = self.admin("POST", "/v1/accounts", Some(common::account_body(id)));
        assert_eq!(r.status, 201, "{}", r.text);
        let o = self
            .admin("GET", &format!("/v1/accounts/{id}"), None)
            .json();
        (
            o["serial_number"].as_str().unwrap().to_string(),
            o["license"]["control_number"].as_str().unwrap().to_string(),
        )
    }

    fn activate(&self, serial: &str, control: &str, server: &str) -> R {
        self.call(
            "POST",
            "/v1/activations",
            None,
            Some(json!({"serial_number": serial, "control_number": control,
                        "server_id": server, "hostname": format!("{server}.acme.test")})),
        )
    }

    fn clock(&self, now: &str) {
        let r = self.admin("POST", "/v1/clock", Some(json!({ "now": now })));
        assert_eq!(r.status, 200, "{}", r.text);
    }
}

fn claims(jws: &str) -> Value {
    let parts: Vec<&str> = jws.split('.').collect();
    assert_eq!(parts.len(), 3, "{jws}");
    let header: Value = serde_json::from_slice(&B64.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "EdDSA");
    assert!(header["kid"].is_string());
    serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap()
}

fn problem(r: &R, status: u16, reason: &str) {
    assert_eq!(r.status, status, "{}", r.text);
    assert_eq!(r.content_type, "application/problem+json", "{}", r.text);
    assert_eq!(r.json()["reason"], reason, "{}", r.text);
}

fn unquote(e: &str) -> &str {
    e.trim_start_matches("W/").trim_matches('"')
}

#[test]
fn activate_limit_release_reset_and_restart_over_the_real_binary() {
    activate_limit_release_reset_and_restart(&[]);
}

/// A fresh PostgreSQL database on the machine's server (trust, user postgres).
fn fresh_pg_database() -> String {
    let name = format!("accrue_lic_{}", uuid_like());
    let ok = std::process::Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-q", "-c"])
        .arg(format!("CREATE DATABASE {name}"))
        .status()
        .expect("psql runs");
    assert!(ok.success(), "CREATE DATABASE {name}");
    format!("postgres://postgres@127.0.0.1:5432/{name}")
}

fn uuid_like() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{}_{}", t.as_nanos(), std::process::id())
}

#[test]
fn activate_limit_release_reset_and_restart_on_postgres() {
    let url = fresh_pg_database();
    activate_limit_release_reset_and_restart(&["--store", &url]);
    let name = url.rsplit('/').next().unwrap();
    let dropped = std::process::Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-q", "-c"])
        .arg(format!("DROP DATABASE {name} WITH (FORCE)"))
        .status()
        .expect("psql runs");
    assert!(dropped.success());
}

fn activate_limit_release_reset_and_restart(extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let srv = Srv::start_with(dir.path(), extra);
    let (serial, control) = srv.account("acme");
    assert!(control.len() >= 16, "{control}");

    // A wrong pair never says which half was wrong.
    let bad_control = srv.activate(&serial, "WRONG-CONTROL", "srv-a");
    let bad_serial = srv.activate("ACR-NOPE", &control, "srv-a");
    problem(&bad_control, 401, "unauthorized");
    assert_eq!(bad_control.json()["detail"], bad_serial.json()["detail"]);

    let a = srv.activate(&serial, &control, "srv-a");
    assert_eq!(a.status, 201, "{}", a.text);
    let a = a.json();
    let token_a = a["token"].as_str().unwrap().to_string();
    let c = claims(a["definition"].as_str().unwrap());
    assert_eq!(c["sub"], serial.as_str());
    assert_eq!(c["account_id"], "acme");
    assert_eq!(c["server_id"], "srv-a");
    assert_eq!(c["activation_id"], a["activation_id"]);
    assert_eq!(c["status"], "active");
    assert_eq!(c["seats"], json!({"full": 5, "viewer": 20}));
    assert_eq!(c["data_management"], true);
    assert_eq!(c["billing_frequency"], "monthly");
    assert_eq!(
        c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(),
        7 * 86400
    );

    // The same server again: the same activation.
    let again = srv.activate(&serial, &control, "srv-a");
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.json()["activation_id"], a["activation_id"]);
    problem(
        &srv.activate(&serial, &control, "srv-b"),
        409,
        "activation_limit_reached",
    );

    // Poll, then the 304 path.
    let d = srv.call("GET", "/v1/license", Some(&token_a), None);
    assert_eq!(d.status, 200, "{}", d.text);
    assert_eq!(d.content_type, "application/jwt");
    let etag = d.etag.clone().unwrap();
    assert_eq!(unquote(&etag), claims(&d.text)["version"].to_string());
    let nm = srv.call_h(
        "GET",
        "/v1/license",
        Some(&token_a),
        None,
        &[("If-None-Match", &etag)],
    );
    assert_eq!(nm.status, 304);
    assert!(nm.text.is_empty());
    // A server token sees only its own license.
    let other = srv.call("GET", "/v1/accounts/acme/invoices", Some(&token_a), None);
    assert!(matches!(other.status, 403 | 404), "{}", other.status);
    assert!(matches!(
        srv.call(
            "POST",
            "/v1/accounts/acme/activations/reset",
            Some(&token_a),
            None
        )
        .status,
        403 | 404
    ));

    // Release: the first token is dead, the second server activates.
    assert_eq!(
        srv.call("DELETE", "/v1/activation", Some(&token_a), None)
            .status,
        204
    );
    problem(
        &srv.call("GET", "/v1/license", Some(&token_a), None),
        401,
        "unauthorized",
    );
    let b = srv.activate(&serial, &control, "srv-b");
    assert_eq!(b.status, 201, "{}", b.text);
    let token_b = b.json()["token"].as_str().unwrap().to_string();
    assert_eq!(
        srv.call("GET", "/v1/license", Some(&token_b), None).status,
        200
    );

    // Reset (admin): every activation released.
    let reset = srv.admin("POST", "/v1/accounts/acme/activations/reset", None);
    assert_eq!(reset.status, 200, "{}", reset.text);
    assert_eq!(reset.json()["used"], 0);
    assert_eq!(
        srv.call("GET", "/v1/license", Some(&token_b), None).status,
        401
    );
    let c2 = srv.activate(&serial, &control, "srv-c");
    assert_eq!(c2.status, 201, "{}", c2.text);
    let token_c = c2.json()["token"].as_str().unwrap().to_string();
    assert_eq!(
        srv.call("GET", "/v1/license", Some(&token_c), None).status,
        200
    );
    srv.clock("2026-01-15T01:00:00Z");
    assert_eq!(
        srv.call("GET", "/v1/license", Some(&token_c), None).status,
        200
    );

    let list = srv
        .admin("GET", "/v1/accounts/acme/activations", None)
        .json();
    let statuses: Vec<(String, String)> = list["activations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["server_id"].as_str().unwrap().into(),
                a["status"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("srv-a".into(), "released".into()),
            ("srv-b".into(), "released".into()),
            ("srv-c".into(), "active".into())
        ]
    );
    let active = &list["activations"][2];
    assert_eq!(active["last_sync_at"], "2026-01-15T01:00:00Z");
    assert_eq!(active["hostname"], "srv-c.acme.test");
    let overview = srv.admin("GET", "/v1/accounts/acme", None).json();
    assert_eq!(
        overview["license"]["activations"],
        json!({"used": 1, "max": 1})
    );
    assert_eq!(overview["license"]["last_sync_at"], "2026-01-15T01:00:00Z");

    // Restart: the same activations, last syncs and token.
    srv.stop();
    let srv = Srv::start_with(dir.path(), extra);
    let after = srv
        .admin("GET", "/v1/accounts/acme/activations", None)
        .json();
    assert_eq!(after, list);
    assert_eq!(
        srv.call("GET", "/v1/license", Some(&token_c), None).status,
        200
    );
    assert_eq!(
        srv.call("GET", "/v1/license", Some(&token_a), None).status,
        401
    );
    // The control number is shown to admins only (on both stores: the
    // token route records the token through the ledger).
    {
        let account_token = srv
            .admin(
                "POST",
                "/v1/tokens",
                Some(json!({"role": "account", "account_id": "acme"})),
            )
            .json()["token"]
            .as_str()
            .unwrap()
            .to_string();
        let own = srv
            .call("GET", "/v1/accounts/acme", Some(&account_token), None)
            .json();
        assert!(own["license"].is_object(), "{own}");
        assert!(own["license"].get("control_number").is_none(), "{own}");
    }
    srv.stop();
}

#[test]
fn the_clock_passes_the_term_end_and_an_extension_reactivates() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Srv::start(dir.path());
    let (serial, control) = srv.account("term");
    problem(
        &srv.admin(
            "PUT",
            "/v1/accounts/term/license",
            Some(json!({"term_end": "2026-01-14"})),
        ),
        409,
        "term_end_in_past",
    );
    let put = srv.admin(
        "PUT",
        "/v1/accounts/term/license",
        Some(json!({"term_end": "2026-01-20", "max_activations": 2})),
    );
    assert_eq!(put.status, 200, "{}", put.text);
    let token = srv.activate(&serial, &control, "s1").json()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let before = srv.call("GET", "/v1/license", Some(&token), None);
    assert_eq!(claims(&before.text)["term_end"], "2026-01-20");

    srv.clock("2026-01-21T00:00:01Z");
    let usage = srv.admin(
        "POST",
        "/v1/usage",
        Some(json!({"events": [{"id": "u1", "account_id": "term", "amount": "0.01"}]})),
    );
    assert_eq!(usage.status, 200, "{}", usage.text);
    assert_eq!(
        usage.json()["results"][0]["reason"],
        "license_expired",
        "{}",
        usage.text
    );
    let expired = srv.call_h(
        "GET",
        "/v1/license",
        Some(&token),
        None,
        &[("If-None-Match", before.etag.as_deref().unwrap())],
    );
    assert_eq!(expired.status, 200, "a new version, not 304");
    assert_eq!(claims(&expired.text)["status"], "expired");
    assert_ne!(expired.etag, before.etag);
    assert_eq!(
        srv.admin("GET", "/v1/accounts/term", None).json()["license"]["status"],
        "expired"
    );

    let ext = srv.admin(
        "PUT",
        "/v1/accounts/term/license",
        Some(json!({"term_end": "2026-12-31", "max_activations": 2})),
    );
    assert_eq!(ext.status, 200, "{}", ext.text);
    assert_eq!(ext.json()["status"], "active");
    let active = srv.call("GET", "/v1/license", Some(&token), None);
    let c = claims(&active.text);
    assert_eq!(c["status"], "active");
    assert_eq!(c["term_end"], "2026-12-31");
    assert!(c["version"].as_u64() > claims(&expired.text)["version"].as_u64());
    assert_ne!(active.etag, expired.etag);
    let usage = srv.admin(
        "POST",
        "/v1/usage",
        Some(json!({"events": [{"id": "u2", "account_id": "term", "amount": "0.01"}]})),
    );
    assert_ne!(usage.json()["results"][0]["reason"], "license_expired");
    // The offline key: the same definition without an activation.
    let key = srv.admin("GET", "/v1/accounts/term/license-key", None);
    assert_eq!(key.content_type, "application/jwt");
    let k = claims(&key.text);
    assert_eq!(k["activation_id"], Value::Null);
    assert_eq!(k["version"], c["version"]);
    srv.stop();
}

fn sessions(prefix: &str, users: &[&str]) -> Value {
    let list: Vec<Value> = users
        .iter()
        .enumerate()
        .map(|(i, u)| {
            json!({"id": format!("{prefix}-{i}"), "user_name": u, "user_type": "full",
                   "module": "dashboards", "client": if i % 2 == 0 { "web" } else { "addin" },
                   "last_accessed_at": "2026-01-15T00:00:00Z"})
        })
        .collect();
    json!({ "sessions": list })
}

#[tokio::test]
async fn sessions_beyond_the_seats_are_refused_and_a_silent_server_drops_out() {
    let app = common::spawn_app("2026-01-15T00:00:00Z").await;
    app.create("ses", "0.00", None).await;
    let o = app.overview("ses").await;
    let (serial, control) = (
        o["serial_number"].as_str().unwrap().to_string(),
        o["license"]["control_number"].as_str().unwrap().to_string(),
    );
    let put = app
        .admin(
            "PUT",
            "/v1/accounts/ses/license",
            Some(json!({"term_end": null, "max_activations": 2})),
        )
        .await;
    assert_eq!(put.status, 200, "{:?}", put.body);
    let mut tokens = Vec::new();
    for s in ["a", "b"] {
        let r = app
            .req(
                "POST",
                "/v1/activations",
                None,
                Some(json!({"serial_number": serial, "control_number": control, "server_id": s})),
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        tokens.push(r.body["token"].as_str().unwrap().to_string());
    }
    // 5 full seats: a has ann, bob, cid (ann twice); b adds dan, eve, fay.
    let ok = app
        .req(
            "PUT",
            "/v1/activation/sessions",
            Some(&tokens[0]),
            Some(sessions("a", &["ann", "ann", "bob", "cid"])),
        )
        .await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    let over = app
        .req(
            "PUT",
            "/v1/activation/sessions",
            Some(&tokens[1]),
            Some(sessions("b", &["dan", "eve", "fay"])),
        )
        .await;
    common::assert_problem(&over, 409);
    assert_eq!(over.body["reason"], "seat_limit_exceeded");
    let listed = app.admin("GET", "/v1/accounts/ses/sessions", None).await;
    assert_eq!(
        listed.body["sessions"].as_array().unwrap().len(),
        4,
        "nothing stored"
    );
    let o = app.overview("ses").await;
    assert_eq!(o["sessions"]["total"], 4);
    assert_eq!(o["sessions"]["full"], json!({"sessions": 4, "users": 3}));
    assert_eq!(
        (o["sessions"]["web"].clone(), o["sessions"]["addin"].clone()),
        (json!(2), json!(2))
    );
    // ann on b as well is still three users.
    let shared = app
        .req(
            "PUT",
            "/v1/activation/sessions",
            Some(&tokens[1]),
            Some(sessions("b", &["ann", "dan"])),
        )
        .await;
    assert_eq!(shared.status, 200, "{:?}", shared.body);
    assert_eq!(shared.body["full"], json!({"sessions": 6, "users": 4}));

    // a falls silent for 30 minutes of clock: its sessions no longer count.
    let r = app
        .admin(
            "POST",
            "/v1/clock",
            Some(json!({"now": "2026-01-15T00:29:00Z"})),
        )
        .await;
    assert_eq!(r.status, 200);
    let b_again = app
        .req(
            "PUT",
            "/v1/activation/sessions",
            Some(&tokens[1]),
            Some(sessions("b2", &["ann", "dan"])),
        )
        .await;
    assert_eq!(b_again.status, 200);
    app.admin(
        "POST",
        "/v1/clock",
        Some(json!({"now": "2026-01-15T00:30:00Z"})),
    )
    .await;
    let o = app.overview("ses").await;
    assert_eq!(
        o["sessions"]["full"],
        json!({"sessions": 2, "users": 2}),
        "{o}"
    );
    let now_fits = app
        .req(
            "PUT",
            "/v1/activation/sessions",
            Some(&tokens[1]),
            Some(sessions("b3", &["dan", "eve", "fay", "gus", "hal"])),
        )
        .await;
    assert_eq!(now_fits.status, 200, "{:?}", now_fits.body);
}

#[tokio::test]
async fn failed_activations_are_rate_limited_and_silent_servers_released() {
    let app = common::spawn_app("2026-01-15T00:00:00Z").await;
    app.create("rl", "0.00", None).await;
    let o = app.overview("rl").await;
    let serial = o["serial_number"].as_str().unwrap().to_string();
    let control = o["license"]["control_number"].as_str().unwrap().to_string();
    let body = |c: &str| json!({"serial_number": serial, "control_number": c, "server_id": "x"});
    for _ in 0..10 {
        let r = app
            .req("POST", "/v1/activations", None, Some(body("nope")))
            .await;
        common::assert_problem(&r, 401);
    }
    let r = app
        .req("POST", "/v1/activations", None, Some(body(&control)))
        .await;
    common::assert_problem(&r, 429);

    // Another license, another serial: not throttled; silent 14 days → released.
    app.create("idle", "0.00", None).await;
    let o = app.overview("idle").await;
    let r = app
        .req(
            "POST",
            "/v1/activations",
            None,
            Some(json!({"serial_number": o["serial_number"], "control_number": o["license"]["control_number"], "server_id": "x"})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let token = r.body["token"].as_str().unwrap().to_string();
    app.admin(
        "POST",
        "/v1/clock",
        Some(json!({"now": "2026-01-28T23:59:59Z"})),
    )
    .await;
    assert_eq!(
        app.req("GET", "/v1/license", Some(&token), None)
            .await
            .status,
        200
    );
    app.admin(
        "POST",
        "/v1/clock",
        Some(json!({"now": "2026-02-12T00:00:00Z"})),
    )
    .await;
    assert_eq!(
        app.req("GET", "/v1/license", Some(&token), None)
            .await
            .status,
        401
    );
    let list = app
        .admin("GET", "/v1/accounts/idle/activations", None)
        .await;
    assert_eq!(
        list.body["activations"][0]["released_by"], "inactive",
        "{:?}",
        list.body
    );
}

const PYJWT: &str = r#"
import json, sys, jwt
jwks = json.loads(sys.argv[1])
token = sys.argv[2]
kid = jwt.get_unverified_header(token)["kid"]
keys = {k["kid"]: jwt.PyJWK(k) for k in jwks["keys"]}
try:
    claims = jwt.decode(token, keys[kid].key, algorithms=["EdDSA"])
    print(json.dumps(claims))
except (jwt.InvalidTokenError, KeyError) as e:
    print("INVALID", type(e).__name__)
"#;

fn pyjwt(jwks: &str, token: &str) -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", PYJWT, jwks, token])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "PyJWT must be installed (pip install 'pyjwt[crypto]'): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test]
async fn pyjwt_verifies_definitions_given_only_the_jwks() {
    // A manual clock at the real time, so PyJWT's exp check applies.
    let now = chrono::Utc::now().to_rfc3339();
    let app = common::spawn_app(&now).await;
    app.create("py", "0.00", None).await;
    let key = app.admin("GET", "/v1/accounts/py/license-key", None).await;
    let jws = String::from_utf8(key.bytes.clone()).unwrap();
    let jwks = app.req("GET", "/.well-known/jwks.json", None, None).await;
    let jwks = String::from_utf8(jwks.bytes).unwrap();
    let verified: Value = serde_json::from_str(&pyjwt(&jwks, &jws)).unwrap();
    assert_eq!(verified["account_id"], "py");
    assert_eq!(verified["status"], "active");

    // A tampered claim fails.
    let parts: Vec<&str> = jws.split('.').collect();
    let mut c: Value = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
    c["seats"]["full"] = json!(500);
    let tampered = format!("{}.{}.{}", parts[0], B64.encode(c.to_string()), parts[2]);
    assert!(pyjwt(&jwks, &tampered).starts_with("INVALID"));
    // A JWKS without the signing key (another ledger's) fails.
    let other = common::spawn_app(&now).await;
    let other_jwks = other.req("GET", "/.well-known/jwks.json", None, None).await;
    assert!(pyjwt(&String::from_utf8(other_jwks.bytes).unwrap(), &jws).starts_with("INVALID"));
}

#[test]
fn the_client_answers_from_its_cache_while_accrue_is_down_and_refuses_after_exp() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let srv = Srv::start(dir.path());
    let (serial, control) = srv.account("cli");
    // The client's clock follows the server's manual clock.
    let now = Arc::new(AtomicI64::new(
        "2026-01-15T00:00:00Z"
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap()
            .timestamp(),
    ));
    let config = |base: &str| {
        let mut c =
            accrue_license::Config::new(base, &serial, &control, "product-1", cache.path().into());
        let n = now.clone();
        c.now = Arc::new(move || n.load(Ordering::Relaxed));
        c
    };
    let lic = accrue_license::License::start(config(&srv.base)).unwrap();
    assert!(lic.is_active());
    assert!(lic.may_log_in(accrue_license::UserType::Viewer));
    assert!(lic.feature("data_management"));
    let v1 = lic.version().unwrap();
    assert_eq!(lic.poll().unwrap(), accrue_license::Polled::NotModified);
    let base = srv.base.clone();
    srv.stop();

    // accrue is down: a fresh process answers from the verified cache.
    let offline = accrue_license::License::start(config(&base)).unwrap();
    assert!(offline.is_active());
    assert!(matches!(
        offline.poll(),
        Err(accrue_license::Error::Unreachable(_))
    ));
    // A tampered cache is not trusted.
    let path = cache.path().join("definition.jwt");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, good.replacen('.', ".e", 1)).unwrap();
    assert!(!accrue_license::License::open(config(&base))
        .unwrap()
        .is_active());
    std::fs::write(&path, &good).unwrap();
    // Past exp, the definition no longer counts.
    let exp = offline.claims().unwrap().exp;
    now.store(exp, Ordering::Relaxed);
    assert!(!offline.is_active());
    assert!(!offline.may_log_in(accrue_license::UserType::Full));
    now.store(exp - 60, Ordering::Relaxed);

    // accrue comes back; an extension is picked up within one poll.
    let srv = Srv::start(dir.path());
    let lic = accrue_license::License::open(config(&srv.base)).unwrap();
    let r = srv.admin(
        "PUT",
        "/v1/accounts/cli/license",
        Some(json!({"term_end": "2027-01-31"})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    match lic.poll().unwrap() {
        accrue_license::Polled::Changed(v) => assert!(v > v1),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        lic.claims().unwrap().term_end.as_deref(),
        Some("2027-01-31")
    );
    assert!(lic.is_active());
    srv.stop();
}

/// SPEC §8: a suspension is in the signed definition (a new version, not a
/// 304) and ends with the payment of the overdue invoice.
#[test]
fn a_suspension_is_signed_into_the_definition_and_a_payment_ends_it() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Srv::start(dir.path());
    let (serial, control) = srv.account("dun");
    let token = srv.activate(&serial, &control, "s1").json()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let before = srv.call("GET", "/v1/license", Some(&token), None);
    assert_eq!(claims(&before.text)["status"], "active");
    let pay = |reference: &str, outcome: &str| {
        let r = srv.admin(
            "POST",
            "/v1/payments",
            Some(json!({"invoice_number": "INV-2026-000001", "outcome": outcome, "reference": reference})),
        );
        assert_eq!(r.status, 200, "{}", r.text);
    };
    pay("ch_1", "failed");
    // The server keeps polling (a silent one would be released at 14 days).
    srv.clock("2026-01-22T00:00:00Z");
    assert_eq!(
        srv.call("GET", "/v1/license", Some(&token), None).status,
        200
    );
    srv.clock("2026-01-29T00:00:00Z");
    let suspended = srv.call_h(
        "GET",
        "/v1/license",
        Some(&token),
        None,
        &[("If-None-Match", before.etag.as_deref().unwrap())],
    );
    assert_eq!(suspended.status, 200, "a new version, not 304");
    assert_eq!(claims(&suspended.text)["status"], "suspended");
    pay("ch_2", "succeeded");
    let after = srv.call("GET", "/v1/license", Some(&token), None);
    assert_eq!(claims(&after.text)["status"], "active");
    assert_ne!(after.etag, suspended.etag);
    srv.stop();
}
