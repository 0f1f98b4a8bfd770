//! Money after the invoice, end to end over HTTP (SPEC §8, §9): credit
//! notes, voids, refunds, usage cancellations, the upcoming invoice and
//! dunning. On SQLite and, with `ACCRUE_TEST_BACKEND=postgres`, PostgreSQL.

mod common;

use common::*;
use serde_json::json;

const OPENING: &str = "INV-2026-000001";

async fn clock(app: &App, now: &str) {
    let r = app
        .admin("POST", "/v1/clock", Some(json!({ "now": now })))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

async fn invoice(app: &App, number: &str) -> serde_json::Value {
    let r = app
        .admin("GET", &format!("/v1/invoices/{number}"), None)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body
}

#[tokio::test]
async fn credit_notes_are_numbered_bounded_listed_and_rendered() {
    let app = spawn_app("2026-01-15T00:00:00Z").await;
    app.create("acme", "0.00", None).await;
    // The opening invoice: 5 × 10 + 20 × 2 + 50 = 140.00.
    let path = format!("/v1/invoices/{OPENING}/credit-notes");
    let r = app
        .admin(
            "POST",
            &path,
            Some(json!({"reason": "seat billed twice", "lines": [{"description": "one full seat", "amount": "10.00"}]})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["number"], "CN-2026-000001");
    assert_eq!(r.body["invoice_number"], OPENING);
    assert_eq!(r.body["total"], "10.00");
    let inv = invoice(&app, OPENING).await;
    assert_eq!(inv["status"], "partially_credited");
    assert_eq!(inv["amount_due"], "130.00");
    assert_eq!(inv["credit_notes"], json!(["CN-2026-000001"]));

    // More than is left to credit: 409, nothing issued.
    let before = app.event_count().await;
    let r = app
        .admin(
            "POST",
            &path,
            Some(
                json!({"reason": "x", "lines": [{"description": "too much", "amount": "130.01"}]}),
            ),
        )
        .await;
    assert_problem(&r, 409);
    assert_eq!(r.body["reason"], "exceeds_invoice");
    assert_eq!(app.event_count().await, before);
    // Bad shapes are 422, unknown invoices 404, other roles 403.
    let r = app.admin("POST", &path, Some(json!({"reason": "x"}))).await;
    assert_problem(&r, 422);
    let r = app
        .admin(
            "POST",
            "/v1/invoices/INV-2026-000099/credit-notes",
            Some(json!({"reason": "x", "full": true})),
        )
        .await;
    assert_problem(&r, 404);
    let auditor = app.token("auditor", None).await;
    let r = app
        .req(
            "POST",
            &path,
            Some(&auditor),
            Some(json!({"reason": "x", "full": true})),
        )
        .await;
    assert_problem(&r, 403);

    // The rest, in full: the invoice is credited and nothing is due.
    let r = app
        .admin(
            "POST",
            &path,
            Some(json!({"reason": "goodwill", "full": true})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["number"], "CN-2026-000002");
    assert_eq!(r.body["total"], "130.00");
    let inv = invoice(&app, OPENING).await;
    assert_eq!(inv["status"], "credited");
    assert_eq!(inv["amount_due"], "0.00");

    // The account's list holds both kinds.
    let list = app
        .admin("GET", "/v1/accounts/acme/invoices", None)
        .await
        .body;
    let kinds: Vec<(&str, &str)> = list["invoices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["type"].as_str().unwrap(), i["number"].as_str().unwrap()))
        .collect();
    assert!(
        kinds.contains(&("credit_note", "CN-2026-000002")),
        "{kinds:?}"
    );
    assert!(kinds.contains(&("invoice", OPENING)), "{kinds:?}");

    // The document, deterministic, and readable only by its account.
    let cn = app
        .admin("GET", "/v1/credit-notes/CN-2026-000001", None)
        .await;
    assert_eq!(cn.status, 200, "{:?}", cn.body);
    assert_eq!(cn.body["lines"][0]["amount"], "10.00");
    let pdf = app
        .admin("GET", "/v1/credit-notes/CN-2026-000001/pdf", None)
        .await;
    assert_eq!(pdf.status, 200);
    assert_eq!(pdf.content_type, "application/pdf");
    let again = app
        .admin("GET", "/v1/credit-notes/CN-2026-000001/pdf", None)
        .await;
    assert_eq!(
        pdf.bytes, again.bytes,
        "a credit note renders byte-identically"
    );
    let text = pdftotext(&pdf.bytes);
    assert!(text.contains("CREDIT NOTE"), "{text}");
    assert!(text.contains(OPENING), "{text}");
    assert!(text.contains("seat billed twice"), "{text}");
    app.create("globex", "0.00", None).await;
    let other = app.token("account", Some("globex")).await;
    let r = app
        .req("GET", "/v1/credit-notes/CN-2026-000001", Some(&other), None)
        .await;
    assert_problem(&r, 404);
    let own = app.token("account", Some("acme")).await;
    let r = app
        .req("GET", "/v1/credit-notes/CN-2026-000001", Some(&own), None)
        .await;
    assert_eq!(r.status, 200);

    // The books: contra revenue, receivables back to zero.
    let tb = app.admin("GET", "/v1/audit/trial-balance", None).await.body;
    let row = |name: &str| {
        tb["accounts"]
            .as_array()
            .or_else(|| tb["rows"].as_array())
            .unwrap()
            .iter()
            .find(|r| r["account"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {tb}"))
    };
    assert_eq!(row("credit_notes")["balance"], "140.00");
}

#[tokio::test]
async fn a_void_issues_a_full_credit_note() {
    let app = spawn_app("2026-01-15T00:00:00Z").await;
    app.create("acme", "0.00", None).await;
    let r = app
        .admin(
            "POST",
            &format!("/v1/invoices/{OPENING}/void"),
            Some(json!({"reason": "opened by mistake"})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["status"], "void");
    assert_eq!(r.body["credit_notes"], json!(["CN-2026-000001"]));
    let cn = app
        .admin("GET", "/v1/credit-notes/CN-2026-000001", None)
        .await;
    assert_eq!(cn.body["total"], "140.00");
    assert_eq!(cn.body["reason"], "opened by mistake");
}

#[tokio::test]
async fn refunds_are_bounded_by_what_was_paid_and_booked() {
    let app = spawn_app("2026-01-15T00:00:00Z").await;
    app.create("acme", "0.00", None).await;
    let pay = |outcome: &str, reference: &str, amount: Option<&str>| {
        let mut b = json!({"invoice_number": OPENING, "outcome": outcome, "reference": reference});
        if let Some(a) = amount {
            b["amount"] = json!(a);
        }
        b
    };
    let r = app
        .admin(
            "POST",
            "/v1/payments",
            Some(pay("refunded", "re_0", Some("1.00"))),
        )
        .await;
    assert_problem(&r, 409);
    let r = app
        .admin("POST", "/v1/payments", Some(pay("succeeded", "ch_1", None)))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = app
        .admin(
            "POST",
            "/v1/payments",
            Some(pay("refunded", "re_1", Some("40.00"))),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["refunded"], "40.00");
    // A redelivery changes nothing; more than is left is refused.
    let before = app.event_count().await;
    let r = app
        .admin(
            "POST",
            "/v1/payments",
            Some(pay("refunded", "re_1", Some("40.00"))),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(app.event_count().await, before);
    let r = app
        .admin(
            "POST",
            "/v1/payments",
            Some(pay("refunded", "re_2", Some("100.01"))),
        )
        .await;
    assert_problem(&r, 409);
    let r = app
        .admin("POST", "/v1/payments", Some(pay("refunded", "re_3", None)))
        .await;
    assert_problem(&r, 422);
    let tb = app.admin("GET", "/v1/audit/trial-balance", None).await.body;
    let text = tb.to_string();
    assert!(text.contains("cash"), "{text}");
    let cash = tb
        .as_object()
        .unwrap()
        .values()
        .filter_map(|v| v.as_array())
        .flatten()
        .find(|r| r["account"] == "cash")
        .unwrap()
        .clone();
    assert_eq!(cash["balance"], "100.00", "140 paid, 40 refunded");
}

#[tokio::test]
async fn cancellations_give_credits_back_or_credit_the_next_close() {
    let app = spawn_app("2026-01-15T00:00:00Z").await;
    app.create("acme", "10.00", Some("100.00")).await;
    let r = app
        .usage(json!([
            {"id": "u1", "account_id": "acme", "amount": "30.00"},
            {"id": "u2", "account_id": "acme", "amount": "5.00"}
        ]))
        .await;
    assert_eq!(r.body["accepted"], 2, "{:?}", r.body);
    assert_eq!(app.overview("acme").await["credits"]["available"], "75.00");
    let cancel = |events: serde_json::Value| json!({ "events": events });
    let r = app
        .admin(
            "POST",
            "/v1/usage/cancellations",
            Some(cancel(json!([
                {"account_id": "acme", "id": "u2", "reason": "test traffic"},
                {"account_id": "acme", "id": "u2"},
                {"account_id": "acme", "id": "nope"}
            ]))),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let statuses: Vec<&str> = r.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["cancelled", "duplicate", "unknown_event"]);
    assert_eq!(app.overview("acme").await["credits"]["available"], "80.00");
    // The id stays taken: a re-send is a duplicate, not a new charge.
    let r = app
        .usage(json!([{"id": "u2", "account_id": "acme", "amount": "5.00"}]))
        .await;
    assert_eq!(r.body["duplicate"], 1, "{:?}", r.body);
    assert_eq!(app.overview("acme").await["credits"]["available"], "80.00");

    // Invoiced: u1 (30, of which 20 beyond the base) is billed at the close.
    clock(&app, "2026-02-15T00:00:00Z").await;
    let ingest = app.token("ingest", None).await;
    let r = app
        .req(
            "POST",
            "/v1/usage/cancellations",
            Some(&ingest),
            Some(cancel(
                json!([{"account_id": "acme", "id": "u1", "reason": "wrong meter"}]),
            )),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["results"][0]["status"], "cancelled");
    assert_eq!(r.body["results"][0]["credit"], "20.00");
    clock(&app, "2026-03-15T00:00:00Z").await;
    let list = app
        .admin("GET", "/v1/accounts/acme/invoices", None)
        .await
        .body;
    let cn = list["invoices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "credit_note")
        .cloned()
        .unwrap_or_else(|| panic!("a credit note after the close: {list}"));
    assert_eq!(cn["invoice_number"], "INV-2026-000002");
    assert_eq!(cn["total"], "20.00");
    let full = app
        .admin(
            "GET",
            &format!("/v1/credit-notes/{}", cn["number"].as_str().unwrap()),
            None,
        )
        .await
        .body;
    assert_eq!(full["lines"][0]["usage_id"], "u1");
}

#[tokio::test]
async fn the_upcoming_invoice_is_what_the_close_issues() {
    let app = spawn_app("2026-01-15T00:00:00Z").await;
    app.create("acme", "1.00", Some("50.00")).await;
    app.usage(json!([{"id": "a", "account_id": "acme", "amount": "3.3333"}]))
        .await;
    let up = app
        .admin("GET", "/v1/accounts/acme/upcoming-invoice", None)
        .await;
    assert_eq!(up.status, 200, "{:?}", up.body);
    let own = app.token("account", Some("acme")).await;
    let mine = app
        .req(
            "GET",
            "/v1/accounts/acme/upcoming-invoice",
            Some(&own),
            None,
        )
        .await;
    assert_eq!(mine.body, up.body);
    let before = app.event_count().await;
    assert_eq!(app.event_count().await, before, "a preview stores nothing");
    clock(&app, "2026-02-15T00:00:00Z").await;
    let inv = invoice(&app, "INV-2026-000002").await;
    assert_eq!(inv["total"], up.body["total"]);
    let lines = |v: &serde_json::Value| {
        v["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| (l["description"].clone(), l["amount"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(lines(&inv), lines(&up.body));
}

#[tokio::test]
async fn dunning_retries_suspends_and_reinstates() {
    let app = spawn_app("2026-01-15T00:00:00Z").await;
    app.create("acme", "0.00", Some("10.00")).await;
    let fail = |reference: &str| json!({"invoice_number": OPENING, "outcome": "failed", "reference": reference, "failure_reason": "card declined"});
    let r = app.admin("POST", "/v1/payments", Some(fail("ch_1"))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let o = app.overview("acme").await;
    assert_eq!(o["payment"]["status"], "failed");
    assert_eq!(o["payment"]["dunning"]["invoice"], OPENING);
    assert_eq!(o["payment"]["dunning"]["attempt"], 2);
    assert_eq!(
        o["payment"]["dunning"]["next_retry_at"],
        "2026-01-16T00:00:00Z"
    );
    assert_eq!(
        o["payment"]["dunning"]["suspends_at"],
        "2026-01-29T00:00:00Z"
    );
    // Nothing due yet; a day later the first retry is.
    let due = app.admin("GET", "/v1/dunning", None).await;
    assert_eq!(due.status, 200, "{:?}", due.body);
    assert_eq!(due.body["retries"], json!([]));
    clock(&app, "2026-01-16T00:00:00Z").await;
    let due = app.admin("GET", "/v1/dunning", None).await.body;
    assert_eq!(due["retries"][0]["invoice"], OPENING);
    assert_eq!(due["retries"][0]["account"], "acme");
    assert_eq!(due["retries"][0]["attempt"], 2);
    let r = app.admin("POST", "/v1/payments", Some(fail("ch_2"))).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        app.overview("acme").await["payment"]["dunning"]["next_retry_at"],
        "2026-01-18T00:00:00Z"
    );
    let account = app.token("account", Some("acme")).await;
    let r = app.req("GET", "/v1/dunning", Some(&account), None).await;
    assert_problem(&r, 403);

    // Past the grace period: suspended, usage refused.
    clock(&app, "2026-01-29T00:00:00Z").await;
    let o = app.overview("acme").await;
    assert_eq!(o["payment"]["suspended"], true, "{o}");
    let r = app
        .usage(json!([{"id": "s1", "account_id": "acme", "amount": "1.00"}]))
        .await;
    assert_eq!(
        r.body["results"][0]["reason"], "license_suspended",
        "{:?}",
        r.body
    );

    // Paid: reinstated, usage accepted again.
    let r = app
        .admin(
            "POST",
            "/v1/payments",
            Some(json!({"invoice_number": OPENING, "outcome": "succeeded", "reference": "ch_3"})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let o = app.overview("acme").await;
    assert_eq!(o["payment"]["suspended"], false, "{o}");
    assert_eq!(o["payment"]["status"], "ok");
    assert!(o["payment"]["dunning"].is_null(), "{o}");
    let r = app
        .usage(json!([{"id": "s2", "account_id": "acme", "amount": "1.00"}]))
        .await;
    assert_eq!(r.body["accepted"], 1, "{:?}", r.body);
    // Each step is one event of the log.
    let events = app
        .admin("GET", "/v1/accounts/acme/events?limit=1000", None)
        .await
        .body;
    let types: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    for t in ["DunningStarted", "LicenseSuspended", "LicenseReinstated"] {
        assert_eq!(
            types.iter().filter(|x| **x == t).count(),
            1,
            "{t} in {types:?}"
        );
    }
}

#[tokio::test]
async fn a_downgrade_that_closes_below_zero_gives_a_credit_note() {
    let app = spawn_app("2026-01-15T00:00:00Z").await;
    let mut body = account_body("acme");
    body["billing_frequency"] = json!("yearly");
    let r = app.admin("POST", "/v1/accounts", Some(body)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    clock(&app, "2026-01-20T00:00:00Z").await;
    let r = app
        .admin(
            "PUT",
            "/v1/accounts/acme/plan",
            Some(json!({"full_seats": 0, "viewer_seats": 0, "data_management": false})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    clock(&app, "2026-02-15T00:00:00Z").await;
    let list = app
        .admin("GET", "/v1/accounts/acme/invoices", None)
        .await
        .body;
    let items = list["invoices"].as_array().unwrap();
    assert!(
        items
            .iter()
            .all(|i| !i["total"].as_str().unwrap().starts_with('-')),
        "no negative document: {list}"
    );
    let cn = items
        .iter()
        .find(|i| i["type"] == "credit_note")
        .unwrap_or_else(|| panic!("a credit note for the downgrade: {list}"));
    assert_eq!(cn["invoice_number"], OPENING);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn credit_note_numbers_stay_gapless_under_eight_concurrent_clients() {
    let app = std::sync::Arc::new(spawn_app("2026-01-15T00:00:00Z").await);
    for i in 0..8 {
        app.create(&format!("c{i}"), "0.00", None).await;
    }
    let mut tasks = Vec::new();
    for i in 0..8u32 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let mut numbers = Vec::new();
            for k in 0..5 {
                let r = app
                    .admin(
                        "POST",
                        &format!("/v1/invoices/INV-2026-{:06}/credit-notes", i + 1),
                        Some(json!({"reason": format!("r{k}"), "lines": [{"description": "x", "amount": "1.00"}]})),
                    )
                    .await;
                assert_eq!(r.status, 201, "{:?}", r.body);
                numbers.push(r.body["number"].as_str().unwrap().to_string());
            }
            numbers
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    let want: Vec<String> = (1..=40).map(|n| format!("CN-2026-{n:06}")).collect();
    assert_eq!(
        all, want,
        "40 notes, numbered 1..=40 without a gap or a repeat"
    );
}
