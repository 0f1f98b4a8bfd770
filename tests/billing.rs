//! Billing end to end: closes, invoices, PDFs (checked with the real
//! `pdftotext` and `qpdf`), payments.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn a_close_issues_one_invoice_with_the_charge_and_the_next_fee() {
    let app = spawn_app("2026-01-15T00:00:00Z").await;
    app.create("acme", "0.00", Some("12.00")).await;
    app.usage(json!([{"id": "a", "account_id": "acme", "amount": "4.995"}, {"id": "b", "account_id": "acme", "amount": "0.005"}])).await;
    app.admin(
        "POST",
        "/v1/clock",
        Some(json!({"now": "2026-02-15T00:00:00Z"})),
    )
    .await;
    let r = app.admin("GET", "/v1/accounts/acme/invoices", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let list = r.body["invoices"].as_array().unwrap();
    assert_eq!(list.len(), 2, "opening + first close");
    assert_eq!(list[0]["number"], "INV-2026-000002", "newest first");
    // 5.00 AI credits + 5 × 10 + 20 × 2 + 50 = 145.00
    assert_eq!(list[0]["total"], "145.00");
    assert_eq!(list[1]["total"], "140.00");
    assert_eq!(list[0]["status"], "unpaid");
    let inv = app
        .admin("GET", "/v1/invoices/INV-2026-000002", None)
        .await
        .body;
    assert_eq!(inv["lines"][0]["amount"], "5.00");
    assert_eq!(inv["lines"].as_array().unwrap().len(), 4);
    assert_eq!(inv["credit_period"]["start"], "2026-01-15T00:00:00Z");
    // Lines and customer come from the log, the rest from the read model.
    assert_eq!(inv["customer_name"], "acme Inc.");
    assert_eq!(inv["number"], "INV-2026-000002");
    assert_eq!(inv["total"], "145.00");
    assert_problem(
        &app.admin("GET", "/v1/invoices/INV-2026-999999", None).await,
        404,
    );
    assert_problem(
        &app.admin(
            "GET",
            "/v1/accounts/acme/invoices?from=2026-03-01&to=2026-01-01",
            None,
        )
        .await,
        422,
    );
    assert_problem(
        &app.admin("GET", "/v1/accounts/acme/invoices?from=yesterday", None)
            .await,
        422,
    );
}

#[tokio::test]
async fn pdfs_carry_the_facts_in_any_script_and_render_identically() {
    let app = spawn_app("2026-01-15T00:00:00Z").await;
    let mut b = account_body("sakura");
    b["name"] = json!("株式会社さくらテック");
    b["address"] = json!("東京都渋谷区道玄坂1-2-3");
    assert_eq!(app.admin("POST", "/v1/accounts", Some(b)).await.status, 201);
    let mut b = account_body("mueller");
    b["name"] = json!("Müller & Söhne GmbH");
    assert_eq!(app.admin("POST", "/v1/accounts", Some(b)).await.status, 201);
    for (number, name) in [
        ("INV-2026-000001", "株式会社さくらテック"),
        ("INV-2026-000002", "Müller & Söhne GmbH"),
    ] {
        let a = app
            .admin("GET", &format!("/v1/invoices/{number}/pdf"), None)
            .await;
        assert_eq!(a.status, 200);
        assert_eq!(a.content_type, "application/pdf");
        let b = app
            .admin("GET", &format!("/v1/invoices/{number}/pdf"), None)
            .await;
        assert_eq!(a.bytes, b.bytes, "two renders are byte-identical");
        let text = pdftotext(&a.bytes);
        assert!(text.contains(number), "{text}");
        assert!(text.contains(name), "{text}");
        assert!(text.contains("140.00"), "{text}");
    }
}

#[tokio::test]
async fn a_payment_marks_the_invoice_paid_once() {
    let app = spawn_app("2026-01-15T00:00:00Z").await;
    app.create("acme", "0.00", None).await;
    let pay = |outcome: &str, reference: &str| json!({"invoice_number": "INV-2026-000001", "outcome": outcome, "reference": reference, "failure_reason": "card declined"});
    let r = app
        .admin("POST", "/v1/payments", Some(pay("failed", "ch_1")))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(app.overview("acme").await["payment"]["status"], "failed");
    let events = app.event_count().await;
    assert_eq!(
        app.admin("POST", "/v1/payments", Some(pay("failed", "ch_1")))
            .await
            .status,
        200
    );
    assert_eq!(
        app.event_count().await,
        events,
        "a retried outcome changes nothing"
    );
    let r = app
        .admin("POST", "/v1/payments", Some(pay("succeeded", "ch_2")))
        .await;
    assert_eq!(r.body["status"], "paid");
    assert_eq!(app.overview("acme").await["payment"]["status"], "ok");
    assert_problem(
        &app.admin("POST", "/v1/payments", Some(pay("succeeded", "ch_3")))
            .await,
        409,
    );
    let mut unknown = pay("succeeded", "ch_4");
    unknown["invoice_number"] = json!("INV-2026-000077");
    assert_problem(&app.admin("POST", "/v1/payments", Some(unknown)).await, 404);
    let inv = app
        .admin("GET", "/v1/invoices/INV-2026-000001", None)
        .await
        .body;
    let history: Vec<&str> = inv["status_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        history,
        ["InvoiceIssued", "PaymentFailed", "PaymentSucceeded"]
    );
    // The issue entry is implied by the record: at its issue time and the
    // position of its `InvoiceIssued`, before the payments' positions.
    let h = inv["status_history"].as_array().unwrap();
    assert_eq!(h[0]["at"], inv["issued_at"]);
    assert_eq!(h[0]["status"], "unpaid");
    let positions: Vec<u64> = h.iter().map(|e| e["position"].as_u64().unwrap()).collect();
    assert!(
        positions[0] > 0 && positions.windows(2).all(|w| w[0] < w[1]),
        "{positions:?}"
    );
}

#[tokio::test]
async fn a_card_number_anywhere_is_refused_and_never_stored() {
    let app = spawn_app("2026-01-15T00:00:00Z").await;
    app.create("acme", "0.00", None).await;
    let before = app.event_count().await;
    let body = json!({"billing_email": "a@acme.test", "token": "tok_1", "brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2030,
                      "address": {"line1": "Main St 1", "note": {"deep": "4242 4242 4242 4242"}}});
    let r = app
        .admin("PUT", "/v1/accounts/acme/payment-method", Some(body))
        .await;
    assert_problem(&r, 422);
    assert!(
        !r.body.to_string().contains("4242 4242"),
        "the PAN is not echoed"
    );
    let body = json!({"billing_email": "a@acme.test", "token": "tok_1", "brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2030, "cvc": "123"});
    assert_problem(
        &app.admin("PUT", "/v1/accounts/acme/payment-method", Some(body))
            .await,
        422,
    );
    assert_eq!(app.event_count().await, before);
    let ok = json!({"billing_email": "a@acme.test", "email_language": "de", "token": "tok_1", "brand": "Visa", "last4": "4242", "exp_month": 12, "exp_year": 2030});
    let r = app
        .admin("PUT", "/v1/accounts/acme/payment-method", Some(ok))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["payment"]["method"]["last4"], "4242");
    let hays = if on_postgres() {
        // The whole schema's rows as text, events and meta alike.
        let schema = accrue_store::postgres::schema_for(app.dir.path());
        // The blocking client must not run on the test's runtime.
        let text = std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&pg_url(), postgres::NoTls).unwrap();
            let rows = c
                .query(
                    &format!("SELECT encode(payload, 'escape') || stream FROM {schema}.events UNION ALL SELECT key || value FROM {schema}.meta"),
                    &[],
                )
                .unwrap();
            rows.iter().map(|r| r.get::<_, String>(0)).collect::<String>()
        })
        .join()
        .unwrap();
        vec![text.into_bytes()]
    } else {
        let db = std::fs::read(app.dir.path().join("ledger.db")).unwrap();
        let wal = std::fs::read(app.dir.path().join("ledger.db-wal")).unwrap_or_default();
        vec![db, wal]
    };
    for hay in hays {
        assert!(
            !hay.windows(19).any(|w| w == b"4242 4242 4242 4242"),
            "no PAN on disk"
        );
    }
}
