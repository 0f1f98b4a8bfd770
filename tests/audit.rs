//! Finance's tools, through the real binary: verify finds a tampered byte,
//! export/import/rebuild/audit invoices work on a real store.

mod common;

use std::process::Command;
use std::sync::Arc;

use accrue_ledger::{ClockMode, Ledger, UsageItem};
use accrue_store::sqlite::SqliteStore;
use accrue_store::EventStore;
use common::*;
use serde_json::{json, Value};

fn accrue(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_accrue"))
        .args(args)
        .env("ACCRUE_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A small ledger in `dir`: two accounts, usage, a close.
fn seed(dir: &std::path::Path) -> u64 {
    let store: Arc<dyn EventStore> = Arc::new(SqliteStore::open(dir.join("ledger.db")).unwrap());
    let ledger = Ledger::open(
        store,
        ClockMode::Manual("2026-01-15T00:00:00Z".parse().unwrap()),
    )
    .unwrap();
    for id in ["acme", "globex"] {
        let cmd = accrue_core::Command::Open(Box::new(accrue_core::OpenAccount {
            account_id: id.into(),
            name: id.into(),
            serial_number: "SN".into(),
            billing_email: "b@x.test".into(),
            email_language: "en".into(),
            address: None,
            currency: "USD".into(),
            billing_frequency: accrue_core::BillingFrequency::Monthly,
            anchor_day: None,
            plan: accrue_core::Plan {
                full_seats: 2,
                full_seat_price: "10.00".parse().unwrap(),
                viewer_seats: 0,
                viewer_seat_price: "0".parse().unwrap(),
                data_management: false,
                data_management_price: "0".parse().unwrap(),
            },
            base_credits: "1.00".parse().unwrap(),
            credit_limit: Some("20.00".parse().unwrap()),
            invoice_number: String::new(),
            tax: None,
        }));
        ledger.execute_blocking(id, cmd).unwrap();
    }
    let line = |id: &str, amount: &str| {
        accrue_api::parse_usage_line(
            &json!({"id": id, "account_id": "acme", "amount": amount}).to_string(),
        )
        .unwrap()
    };
    let items: Vec<UsageItem> = vec![
        line("u-1", "0.5"),
        line("tamper-me-42", "0.0125"),
        line("u-3", "3"),
    ];
    ledger.ingest_blocking(items).unwrap();
    let pos = ledger
        .store()
        .read_all(0, 1000)
        .unwrap()
        .iter()
        .find(|e| String::from_utf8_lossy(&e.payload).contains("tamper-me-42"))
        .unwrap()
        .position;
    ledger
        .advance_clock_blocking("2026-02-15T00:00:00Z".parse().unwrap())
        .unwrap();
    ledger.shutdown();
    pos
}

#[test]
fn verify_finds_exactly_the_event_whose_stored_bytes_changed() {
    let dir = tempfile::tempdir().unwrap();
    let pos = seed(dir.path());
    let data = dir.path().to_str().unwrap();
    let (code, out, _) = accrue(&["audit", "verify", "--data", data]);
    assert_eq!(code, 0, "{out}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["ok"], true);

    // Flip one byte of that event's payload in the database file itself.
    let db = dir.path().join("ledger.db");
    let mut bytes = std::fs::read(&db).unwrap();
    let needle = b"tamper-me-42";
    // Every copy: SQLite may also keep a stale one in a free page.
    let hits: Vec<usize> = bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect();
    assert!(
        !hits.is_empty(),
        "payload is in the main file after checkpoint"
    );
    for at in hits {
        bytes[at] = b'T';
    }
    std::fs::write(&db, &bytes).unwrap();

    let (code, out, _) = accrue(&["audit", "verify", "--data", data]);
    assert_eq!(code, 1, "a break exits non-zero: {out}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["first_broken"]["position"], pos);
    assert_eq!(v["first_broken"]["stream"], "account-acme");
}

#[test]
fn export_writes_spreadsheet_csv_and_refuses_an_inverted_range() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path());
    let data = dir.path().to_str().unwrap();
    let out = dir.path().join("export");
    let (code, stdout, err) = accrue(&[
        "export",
        "--data",
        data,
        "--from",
        "2026-01-01",
        "--to",
        "2026-12-31",
        "--format",
        "csv",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stdout}{err}");
    let events = std::fs::read_to_string(out.join("events.csv")).unwrap();
    let mut lines = events.lines();
    assert_eq!(
        lines.next().unwrap(),
        "position,stream,version,type,schema,occurred_at,recorded_at,hash,data"
    );
    assert!(events.contains("CreditsConsumed"));
    let invoices = std::fs::read_to_string(out.join("invoices.csv")).unwrap();
    assert_eq!(
        invoices.lines().count(),
        1 + 4,
        "header + 2 opening + 2 closes"
    );
    // The `lines` column counts each invoice's lines, read from the log.
    for row in invoices.lines().skip(1) {
        let lines: usize = row.split(',').nth(9).unwrap().parse().unwrap();
        assert!(lines >= 1, "{row}");
    }
    let (code, _, _) = accrue(&[
        "export",
        "--data",
        data,
        "--from",
        "2026-01-01",
        "--to",
        "2026-12-31",
        "--format",
        "jsonl",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0);
    let first: Value = serde_json::from_str(
        std::fs::read_to_string(out.join("events.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["position"], 1);
    for inv in std::fs::read_to_string(out.join("invoices.jsonl"))
        .unwrap()
        .lines()
    {
        let inv: Value = serde_json::from_str(inv).unwrap();
        assert!(!inv["lines"].as_array().unwrap().is_empty(), "{inv}");
        assert!(inv["lines"][0]["amount"].is_string(), "{inv}");
    }
    let (code, _, err) = accrue(&[
        "export",
        "--data",
        data,
        "--from",
        "2026-03-01",
        "--to",
        "2026-01-01",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("after"), "{err}");
}

#[test]
fn import_keeps_going_past_bad_lines_and_reports_them() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path());
    let data = dir.path().to_str().unwrap();
    let file = dir.path().join("usage.jsonl");
    let lines = [
        json!({"id": "i-1", "account_id": "acme", "amount": "0.25", "occurred_at": "2026-02-15T01:00:00Z"}).to_string(),
        "{broken".to_string(),
        json!({"id": "i-2", "account_id": "acme", "amount": "-1", "occurred_at": "2026-02-15T01:00:00Z"}).to_string(),
        json!({"id": "i-3", "account_id": "nobody", "amount": "1", "occurred_at": "2026-02-15T01:00:00Z"}).to_string(),
        json!({"id": "i-4", "account_id": "acme", "amount": "0.75", "occurred_at": "2026-02-15T01:00:00Z"}).to_string(),
    ];
    std::fs::write(&file, lines.join("\n")).unwrap();
    let (code, out, err) = accrue(&[
        "import",
        "--data",
        data,
        "--clock",
        "2026-02-15T02:00:00Z",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("line 2: malformed"), "{err}");
    assert!(err.contains("line 3: rejected invalid"), "{err}");
    assert!(err.contains("line 4: rejected unknown_account"), "{err}");
    assert!(out.contains("2 accepted"), "{out}");
    // Importing the same file again: the good lines are duplicates.
    let (_, out, _) = accrue(&[
        "import",
        "--data",
        data,
        "--clock",
        "2026-02-15T02:00:00Z",
        file.to_str().unwrap(),
    ]);
    assert!(out.contains("0 accepted, 2 duplicates"), "{out}");
    let (code, out, _) = accrue(&["rebuild", "--data", data]);
    assert_eq!(code, 0);
    assert!(out.contains("rebuilt"), "{out}");
}

#[test]
fn the_demo_runs_and_every_invoice_re_renders_to_its_recorded_hash() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("demo");
    let (code, out, err) = accrue(&["demo", "--out", d.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("INV-2026-000001"), "{out}");
    assert!(d.join("invoices/INV-2026-000001.pdf").exists());
    let (code, out, err) = accrue(&["audit", "invoices", "--data", d.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["mismatched"], 0);
    assert!(v["matching"].as_u64().unwrap() >= 8);
    assert_eq!(v["matching"], v["invoices"]);
}

#[tokio::test]
async fn the_trial_balance_balances_and_receivables_are_the_unpaid_invoices() {
    let app = spawn_app("2026-01-15T00:00:00Z").await;
    app.create("acme", "0.00", Some("12.00")).await;
    app.create("globex", "0.00", None).await;
    app.usage(json!([{"id": "a", "account_id": "acme", "amount": "5.555"}]))
        .await;
    app.admin(
        "POST",
        "/v1/clock",
        Some(json!({"now": "2026-02-15T00:00:00Z"})),
    )
    .await;
    let pay =
        json!({"invoice_number": "INV-2026-000001", "outcome": "succeeded", "reference": "p1"});
    assert_eq!(
        app.admin("POST", "/v1/payments", Some(pay)).await.status,
        200
    );
    let r = app
        .admin(
            "POST",
            "/v1/invoices/INV-2026-000002/void",
            Some(json!({"reason": "duplicate"})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["status"], "void");
    let tb = app.admin("GET", "/v1/audit/trial-balance", None).await.body;
    assert_eq!(tb["balanced"], true, "{tb}");
    assert_eq!(tb["total_debits"], tb["total_credits"]);
    let bal = |name: &str| {
        tb["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["account"] == name)
            .unwrap()["balance"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // Paid: the opening 140.00 of acme. Void: globex's opening 140.00.
    // Unpaid: acme's close 5.56 + 140.00 and globex's close 140.00.
    assert_eq!(bal("cash"), "140.00");
    assert_eq!(bal("accounts_receivable"), "285.56");
    assert_eq!(bal("revenue_ai_credits"), "-5.56");
    let past = app
        .admin(
            "GET",
            "/v1/audit/trial-balance?as_of=2026-01-16T00:00:00Z",
            None,
        )
        .await
        .body;
    assert_eq!(past["balanced"], true);
    let ar = past["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["account"] == "accounts_receivable")
        .unwrap()["balance"]
        .clone();
    assert_eq!(ar, "280.00");
    assert_problem(
        &app.admin(
            "GET",
            "/v1/audit/trial-balance?as_of=2099-01-01T00:00:00Z",
            None,
        )
        .await,
        422,
    );
}

#[test]
fn offline_commands_refuse_a_folder_without_a_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("a/mistyped/folder");
    let m = missing.to_str().unwrap();
    for args in [
        vec!["audit", "verify", "--data", m],
        vec!["audit", "invoices", "--data", m],
        vec!["audit", "anchor", "--data", m],
        vec!["rebuild", "--data", m],
        vec![
            "export",
            "--data",
            m,
            "--from",
            "2026-01-01",
            "--to",
            "2026-12-31",
        ],
    ] {
        let (code, out, err) = accrue(&args);
        assert_eq!(code, 2, "{args:?}: {out} {err}");
        assert!(err.contains("no ledger"), "{args:?}: {err}");
        assert!(
            !out.contains("\"ok\""),
            "{args:?} reported on nothing: {out}"
        );
    }
    assert!(!missing.exists(), "the mistyped folder was not created");
}

#[test]
fn an_anchor_from_the_cli_proves_the_log_did_not_shrink() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path());
    let data = dir.path().to_str().unwrap();
    let (code, out, err) = accrue(&["audit", "anchor", "--data", data]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("public key"), "{err}");
    let anchor_file = dir.path().join("kept-by-finance.json");
    std::fs::write(&anchor_file, out.trim()).unwrap();
    let a = anchor_file.to_str().unwrap();
    let (code, out, _) = accrue(&["audit", "verify", "--data", data, "--anchor", a]);
    assert_eq!(code, 0, "{out}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["anchor_ok"], true);
    // Delete the newest events behind accrue's back: verify --anchor fails.
    let c = rusqlite_free_delete(&dir.path().join("ledger.db"));
    assert!(c > 0);
    let (code, out, _) = accrue(&["audit", "verify", "--data", data, "--anchor", a]);
    assert_eq!(code, 1, "{out}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["anchor_ok"], false);
}

/// Deletes the newest events with the sqlite3 shell-free route: through the
/// store crate's own SQLite (bundled), triggers dropped. Returns the rows gone.
fn rusqlite_free_delete(db: &std::path::Path) -> usize {
    let py = format!(
        "import sqlite3; c = sqlite3.connect({:?}); c.execute('DROP TRIGGER IF EXISTS events_no_delete'); \
         n = c.execute('DELETE FROM events WHERE pos > (SELECT MAX(pos) - 2 FROM events)').rowcount; \
         c.execute(\"DELETE FROM meta WHERE key = 'stream_index_pos'\"); c.execute('DELETE FROM stream_runs'); c.commit(); print(n)",
        db.to_str().unwrap()
    );
    let out = Command::new("python3").args(["-c", &py]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn a_second_serve_on_the_same_postgres_ledger_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let schema = accrue_store::postgres::schema_for(dir.path());
    let start = || {
        Command::new(env!("CARGO_BIN_EXE_accrue"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--clock",
                "2026-01-15T00:00:00Z",
            ])
            .args(["--store", &pg_url(), "--data"])
            .arg(dir.path())
            .env("ACCRUE_PG_SCHEMA", &schema)
            .env("ACCRUE_ADMIN_TOKEN", "t")
            .env("ACCRUE_LOG", "error")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = start();
    {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(first.stdout.take().unwrap()).lines();
        let line = lines.next().unwrap().unwrap();
        assert!(line.starts_with("accrue listening on "), "{line}");
        std::thread::spawn(move || for _ in lines {});
    }
    let second = start().wait_with_output().unwrap();
    assert!(!second.status.success(), "a second writer started");
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("another accrue process"), "{err}");
    first.kill().unwrap();
    first.wait().unwrap();
    accrue_store::postgres::drop_schema(&accrue_store::postgres::test_url(), &schema);
}

#[tokio::test]
async fn a_token_row_no_event_created_is_refused_and_reported() {
    let app = spawn_app("2026-01-15T00:00:00Z").await;
    let real = app.token("auditor", None).await;
    let ok = accrue_ledger::audit::verify(app.ledger.store().as_ref(), |_, _| {}).unwrap();
    assert!(ok.ok, "{ok:?}");
    // Someone with the database adds an admin token row behind the ledger.
    let forged = "acr_forged_admin_token";
    let hash: String = {
        use sha2::Digest;
        sha2::Sha256::digest(forged.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    app.ledger
        .store()
        .meta_put(&format!("token:{hash}"), r#"{"role":"admin"}"#)
        .unwrap();
    let (tokens, _) = accrue_api::Tokens::load(&app.ledger, Some(ADMIN)).unwrap();
    assert!(tokens.principal(forged).is_none(), "a forged token works");
    assert!(
        tokens.principal(&real).is_some(),
        "an issued token still works"
    );
    let r = accrue_ledger::audit::verify(app.ledger.store().as_ref(), |_, _| {}).unwrap();
    assert!(!r.ok);
    assert!(
        r.first_broken.unwrap().reason.contains("TokenIssued"),
        "verify names the forged token"
    );
}

#[tokio::test]
async fn anchors_over_http_sign_the_head_and_catch_a_forged_one() {
    let app = spawn_app("2026-01-15T00:00:00Z").await;
    let r = app.admin("GET", "/v1/audit/anchor", None).await;
    assert_problem(&r, 503);
    app.ledger
        .set_anchor_key(Arc::new(accrue_ledger::audit::AnchorKey::from_seed(
            [9; 32],
        )));
    assert_eq!(app.create("acme", "0.00", Some("5.00")).await.status, 201);
    let auditor = app.token("auditor", None).await;
    let r = app
        .req("GET", "/v1/audit/anchor", Some(&auditor), None)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let anchor = r.body.clone();
    assert_eq!(anchor["position"], app.event_count().await);
    // The log grows after the anchor: it still holds.
    app.usage(json!([{"id": "u1", "account_id": "acme", "amount": "1.00"}]))
        .await;
    let r = app
        .req(
            "POST",
            "/v1/audit/verify",
            Some(&auditor),
            Some(json!({ "anchor": anchor })),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["ok"], true, "{:?}", r.body);
    assert_eq!(r.body["anchor_ok"], true);
    // An anchor whose head was altered does not verify.
    let mut forged = anchor.clone();
    forged["head_hash"] = json!("00".repeat(32));
    let r = app
        .req(
            "POST",
            "/v1/audit/verify",
            Some(&auditor),
            Some(json!({ "anchor": forged })),
        )
        .await;
    assert_eq!(r.body["ok"], false, "{:?}", r.body);
    assert_eq!(r.body["anchor_ok"], false);
    // A cluster's anchor (every partition's) is for a cluster's node.
    let mut cluster = anchor.clone();
    let mut one = anchor.clone();
    one["partition"] = json!(0);
    cluster["partitions"] = json!([one]);
    let r = app
        .req(
            "POST",
            "/v1/audit/verify",
            Some(&auditor),
            Some(json!({ "anchor": cluster })),
        )
        .await;
    assert_problem(&r, 422);
}
