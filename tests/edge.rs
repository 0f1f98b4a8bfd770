//! The hardened HTTP edge (issue 13): card data refused in every field,
//! strict requests, answers that never drop a connection, roles before
//! bodies, and the account corrections a new user needs.

mod common;

use common::*;
use serde_json::{json, Value};

const T0: &str = "2026-01-15T00:00:00Z";

/// Card numbers the suite sends; none may reach the store file.
const PANS: [&str; 3] = ["4242424242424242", "5555555555554444", "378282246310005"];

/// Ways a card number is written.
fn variants(pan: &str) -> Vec<String> {
    let groups = |sep: &str| -> String {
        pan.as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(sep)
    };
    let full_width: String = pan
        .chars()
        .map(|c| char::from_u32(0xff10 + c.to_digit(10).unwrap()).unwrap())
        .collect();
    vec![
        pan.to_string(),
        groups(" "),
        groups("-"),
        groups("."),
        groups("/"),
        groups("_"),
        groups("  "),
        groups("\t"),
        full_width,
        format!("ref {pan} end"),
    ]
}

/// A write request with one string replaced by `value`.
fn cases(value: &str) -> Vec<(&'static str, String, Value)> {
    let mut account = account_body("victim");
    account["id"] = json!(value);
    let mut name = account_body("victim2");
    name["name"] = json!(value);
    vec![
        ("account id", "/v1/accounts".into(), account),
        ("account name", "/v1/accounts".into(), name),
        (
            "usage id",
            "/v1/usage".into(),
            json!({"events": [{"id": value, "account_id": "acme", "amount": "0.01"}]}),
        ),
        (
            "usage metadata",
            "/v1/usage".into(),
            json!({"events": [{"id": "m1", "account_id": "acme", "amount": "0.01",
                               "metadata": {"note": {"deep": [value]}}}]}),
        ),
        (
            "usage metadata key",
            "/v1/usage".into(),
            json!({"events": [{"id": "m2", "account_id": "acme", "amount": "0.01",
                               "metadata": {value: "x"}}]}),
        ),
        (
            "payment reference",
            "/v1/payments".into(),
            json!({"invoice_number": "INV-2026-000001", "outcome": "succeeded",
                   "reference": value}),
        ),
        (
            "void reason",
            "/v1/invoices/INV-2026-000001/void".into(),
            json!({"reason": value}),
        ),
        (
            "payment method token",
            "/v1/accounts/acme/payment-method".into(),
            json!({"billing_email": "b@acme.test", "token": value, "brand": "visa",
                   "last4": "4242", "exp_month": 12, "exp_year": 2030}),
        ),
    ]
}

fn method_of(path: &str) -> &'static str {
    if path.ends_with("/payment-method") {
        "PUT"
    } else {
        "POST"
    }
}

#[tokio::test]
async fn card_numbers_are_refused_in_every_field_and_never_stored() {
    let app = spawn_app(T0).await;
    assert_eq!(app.create("acme", "0.00", Some("12.00")).await.status, 201);
    let before = app.event_count().await;
    let mut tried = 0;
    for pan in PANS {
        for v in variants(pan) {
            for (field, path, body) in cases(&v) {
                let r = app.admin(method_of(&path), &path, Some(body)).await;
                assert_problem(&r, 422);
                assert_eq!(
                    r.body["reason"], "card_data_refused",
                    "{field} with {v:?}: {:?}",
                    r.body
                );
                assert!(
                    r.body["type"]
                        .as_str()
                        .unwrap()
                        .ends_with("card-data-refused"),
                    "{:?}",
                    r.body
                );
                tried += 1;
            }
        }
    }
    assert_eq!(tried, 3 * 10 * 8);
    // In the path, as a JSON number, escaped, and as a duplicate key.
    let mut acct = account_body("x");
    acct["id"] = json!("4242-4242-4242-4242");
    for (method, path, raw) in [
        ("POST", "/v1/invoices/4242424242424242/void".to_string(), r#"{"reason":"x"}"#.to_string()),
        ("POST", "/v1/usage".into(), r#"{"events":[{"id":"n","account_id":"acme","amount":"0.01","metadata":{"n":4242424242424242}}]}"#.into()),
        ("POST", "/v1/usage".into(), r#"{"events":[{"id":"\u0034\u0032\u0034\u0032424242424242","account_id":"acme","amount":"0.01"}]}"#.into()),
        ("POST", "/v1/usage".into(), r#"{"events":[{"id":"d","account_id":"acme","amount":"0.01","metadata":{"a":"4242424242424242","a":"x"}}]}"#.into()),
    ] {
        let r = app.raw(method, &path, &raw).await;
        assert_problem(&r, 422);
        assert!(
            ["card_data_refused", "duplicate_key"].contains(&r.body["reason"].as_str().unwrap()),
            "{path} {raw}: {:?}",
            r.body
        );
    }
    assert_eq!(app.event_count().await, before, "nothing was stored");

    // Nothing of any test card number is in the store file (or its WAL).
    app.ledger.shutdown();
    for entry in std::fs::read_dir(app.dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap_or_default();
        for pan in PANS {
            let found = bytes.windows(pan.len()).any(|w| w == pan.as_bytes());
            assert!(!found, "{pan} is in the store");
        }
    }
}

#[tokio::test]
async fn cvcs_control_characters_and_duplicate_keys_are_refused() {
    let app = spawn_app(T0).await;
    app.create("acme", "0.00", Some("12.00")).await;
    let before = app.event_count().await;
    let usage = |extra: Value| json!({"events": [{"id": "c1", "account_id": "acme", "amount": "0.01", "metadata": extra}]});
    for (body, reason) in [
        (usage(json!({"card_cvc": "123"})), "card_data_refused"),
        (usage(json!({"CVV": 1})), "card_data_refused"),
        (usage(json!({"security_code": ""})), "card_data_refused"),
        (usage(json!({"note": "cvc: 123"})), "card_data_refused"),
        (usage(json!({"note": "CVV 123"})), "card_data_refused"),
        (usage(json!({"note": "a\u{0007}b"})), "control_character"),
        (
            usage(json!({"note": "evil\u{202e}txt"})),
            "control_character",
        ),
        (usage(json!({"note": "x\u{7f}"})), "control_character"),
        (usage(json!({"k\u{2066}": "x"})), "control_character"),
    ] {
        let r = app.admin("POST", "/v1/usage", Some(body.clone())).await;
        assert_problem(&r, 422);
        assert_eq!(r.body["reason"], reason, "{body}");
    }
    // A name or reference is one line: a tab or newline is refused there.
    let mut a = account_body("tabbed");
    a["name"] = json!("Tab\tCorp");
    let r = app.admin("POST", "/v1/accounts", Some(a)).await;
    assert_problem(&r, 422);
    assert_eq!(r.body["reason"], "control_character");
    // Every duplicate key is refused, not only one carrying card data.
    let r = app
        .raw(
            "POST",
            "/v1/accounts",
            r#"{"id":"dup","id":"dup2","name":"D","billing_email":"d@d.test"}"#,
        )
        .await;
    assert_problem(&r, 422);
    assert_eq!(r.body["reason"], "duplicate_key");
    // A string longer than the per-field limit is refused by its length.
    let long = "9".repeat(16 * 1024 * 1024 - 100);
    let t = std::time::Instant::now();
    let r = app
        .raw("POST", "/v1/usage", &format!(r#"{{"events":[{{"id":"l","account_id":"acme","amount":"0.01","metadata":{{"n":"{long}"}}}}]}}"#))
        .await;
    assert_problem(&r, 422);
    assert_eq!(r.body["reason"], "field_too_long");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(app.event_count().await, before);
    // Newlines stay allowed in free text (metadata notes).
    let r = app.usage(json!([{"id": "ok", "account_id": "acme", "amount": "0.01", "metadata": {"note": "two\nlines"}}])).await;
    assert_eq!(r.body["results"][0]["status"], "accepted", "{:?}", r.body);
}

#[tokio::test]
async fn every_error_is_a_problem_and_the_connection_survives() {
    let app = spawn_app(T0).await;
    app.create("acme", "0.00", None).await;
    let before = app.event_count().await;
    // A date at chrono's limit panicked the handler and dropped the
    // connection; it is a 422 now, on the same client.
    for q in [
        "to=-262143-01-01",
        "from=+262142-12-31",
        "to=0001-01-01",
        "as_of=-262143-01-01T00:00:00Z",
    ] {
        let r = app
            .admin("GET", &format!("/v1/accounts/acme/invoices?{q}"), None)
            .await;
        assert_problem(&r, 422);
    }
    let r = app
        .admin("GET", "/v1/accounts/acme?as_of=10000-01-01T00:00:00Z", None)
        .await;
    assert_problem(&r, 422);
    let r = app.admin("GET", "/v1/accounts/acme/invoices", None).await;
    assert_eq!(r.status, 200);
    // Path decoding, wrong content type, syntax and shape.
    assert_problem(&app.admin("GET", "/v1/accounts/%ff", None).await, 400);
    assert_problem(
        &app.admin("PUT", "/v1/accounts/%ff/plan", Some(json!({})))
            .await,
        400,
    );
    let r = app
        .client
        .post(format!("{}/v1/accounts", app.base))
        .bearer_auth(ADMIN)
        .header("content-type", "text/plain")
        .body(account_body("plain").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_problem(&app.raw("POST", "/v1/accounts", "{\"id\":").await, 400);
    assert_problem(&app.raw("POST", "/v1/accounts", "{\"id\": 5}").await, 422);
    assert_problem(&app.admin("GET", "/v1/nothing", None).await, 404);
    assert_problem(&app.admin("PATCH", "/v1/clock", None).await, 405);
    let long = format!("/v1/accounts/{}", "a".repeat(9000));
    assert_problem(&app.admin("GET", &long, None).await, 414);
    assert_eq!(app.event_count().await, before, "nothing stored");
    let m = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap();
    assert!(m
        .text()
        .await
        .unwrap()
        .contains("accrue_http_panics_total 0"));
}

#[tokio::test]
async fn a_wrong_role_is_403_before_the_body_is_read() {
    let app = spawn_app(T0).await;
    app.create("acme", "0.00", Some("12.00")).await;
    let ingest = app.token("ingest", None).await;
    let auditor = app.token("auditor", None).await;
    let account = app.token("account", Some("acme")).await;
    for (token, method, path) in [
        (&ingest, "POST", "/v1/accounts"),
        (&ingest, "PUT", "/v1/accounts/acme/plan"),
        (&auditor, "POST", "/v1/payments"),
        (&account, "POST", "/v1/usage"),
        (&account, "PATCH", "/v1/accounts/acme"),
    ] {
        let r = app
            .client
            .request(method.parse().unwrap(), format!("{}{path}", app.base))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{method} {path}");
    }
    let r = app
        .client
        .post(format!("{}/v1/accounts", app.base))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // An ingest token is told nothing of the licence or balances.
    let r = app
        .req(
            "PUT",
            "/v1/accounts/acme/seats-in-use",
            Some(&ingest),
            Some(json!({"full": 2, "viewer": 1})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(
        !r.bytes.windows(8).any(|w| w == b"licensed"),
        "{:?}",
        r.body
    );
    let r = app
        .req(
            "PUT",
            "/v1/accounts/acme/seats-in-use",
            Some(&ingest),
            Some(json!({"full": 9, "viewer": 1})),
        )
        .await;
    assert_problem(&r, 409);
    assert!(
        !r.body["detail"].as_str().unwrap().contains('5'),
        "{:?}",
        r.body
    );
    let r = app
        .req(
            "POST",
            "/v1/usage",
            Some(&ingest),
            Some(json!({"events": [{"id": "big", "account_id": "acme", "amount": "100.00"}]})),
        )
        .await;
    assert_eq!(r.body["results"][0]["reason"], "credit_limit_exceeded");
    assert!(
        !r.body["results"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("12"),
        "{:?}",
        r.body
    );
}

#[tokio::test]
async fn unknown_fields_are_refused_by_name() {
    let app = spawn_app(T0).await;
    let mut a = account_body("typo");
    a["base_credit"] = json!("5.00");
    let r = app.admin("POST", "/v1/accounts", Some(a)).await;
    assert_problem(&r, 422);
    assert!(
        r.body["detail"].as_str().unwrap().contains("base_credit"),
        "{:?}",
        r.body
    );
    // The documented aliases stay accepted.
    let mut a = account_body("alias");
    a.as_object_mut().unwrap().remove("billing_email");
    a["email"] = json!("a@alias.test");
    a["credit_limit"] = json!("5.00");
    assert_eq!(app.admin("POST", "/v1/accounts", Some(a)).await.status, 201);
    let r = app
        .usage(json!([{"id": "t", "account_id": "alias", "amount": "0.01", "timestamp": "2026-01-14T00:00:00Z"}]))
        .await;
    assert_problem(&r, 422);
    assert!(r.body["detail"].as_str().unwrap().contains("timestamp"));
}

#[tokio::test]
async fn payment_methods_take_both_shapes_and_keep_the_language() {
    let app = spawn_app(T0).await;
    let mut a = account_body("muller");
    a["email_language"] = json!("de");
    app.admin("POST", "/v1/accounts", Some(a)).await;
    let nested = json!({"email": "pay@muller.test", "address": {"city": "Köln"},
        "card": {"token": "tok_1", "brand": "Visa", "last4": "4242", "exp_month": 1, "exp_year": 2030}});
    let r = app
        .admin("PUT", "/v1/accounts/muller/payment-method", Some(nested))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["email_language"], "de", "kept, not switched to en");
    assert_eq!(r.body["billing_email"], "pay@muller.test");
    assert_eq!(r.body["payment"]["method"]["brand"], "visa");
    let flat = json!({"billing_email": "pay@muller.test", "token": "tok_2", "brand": "mastercard",
        "last4": "4444", "exp_month": 2, "exp_year": 2031});
    let r = app
        .admin("PUT", "/v1/accounts/muller/payment-method", Some(flat))
        .await;
    assert_eq!(r.body["email_language"], "de");
    assert_eq!(r.body["payment"]["method"]["last4"], "4444");
    let r = app
        .admin(
            "PUT",
            "/v1/accounts/muller/payment-method",
            Some(json!({"card": {"cvc": "1"}})),
        )
        .await;
    assert_eq!(r.body["reason"], "card_data_refused");
    let r = app
        .admin(
            "PUT",
            "/v1/accounts/muller/payment-method",
            Some(json!({"card": {"pin": "1"}})),
        )
        .await;
    assert_problem(&r, 422);
}

#[tokio::test]
async fn accounts_are_listed_in_pages_and_patched_by_events() {
    let app = spawn_app(T0).await;
    for id in ["c", "a", "e", "b", "d"] {
        app.create(id, "0.00", None).await;
    }
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let r = app
            .admin("GET", &format!("/v1/accounts?limit=2&after={after}"), None)
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        for a in r.body["accounts"].as_array().unwrap() {
            seen.push(a["id"].as_str().unwrap().to_string());
        }
        match r.body["next_after"].as_str() {
            Some(n) => after = n.to_string(),
            None => break,
        }
    }
    assert_eq!(seen, ["a", "b", "c", "d", "e"]);
    let auditor = app.token("auditor", None).await;
    let account = app.token("account", Some("a")).await;
    assert_eq!(
        app.req("GET", "/v1/accounts", Some(&auditor), None)
            .await
            .status,
        200
    );
    assert_problem(
        &app.req("GET", "/v1/accounts", Some(&account), None).await,
        403,
    );
    assert_problem(&app.admin("GET", "/v1/accounts?limit=0", None).await, 422);

    let before = app.event_count().await;
    let r = app
        .admin(
            "PATCH",
            "/v1/accounts/a",
            Some(
                json!({"name": "A Renamed", "email_language": "ja", "billing_email": "new@a.test"}),
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["name"], "A Renamed");
    assert_eq!(r.body["email_language"], "ja");
    assert_eq!(r.body["billing_email"], "new@a.test");
    assert_eq!(app.event_count().await, before + 1, "one event");
    let ev = app
        .admin("GET", "/v1/accounts/a/events?limit=100", None)
        .await;
    let last = ev.body["events"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["type"], "AccountDetailsChanged");
    // The same values again change nothing.
    app.admin(
        "PATCH",
        "/v1/accounts/a",
        Some(json!({"name": "A Renamed"})),
    )
    .await;
    assert_eq!(app.event_count().await, before + 1);
    let r = app
        .admin(
            "PATCH",
            "/v1/accounts/a",
            Some(json!({"name": "4242 4242 4242 4242"})),
        )
        .await;
    assert_eq!(r.body["reason"], "card_data_refused");
    let r = app
        .admin(
            "PATCH",
            "/v1/accounts/a",
            Some(json!({"serial_number": "x"})),
        )
        .await;
    assert_problem(&r, 422);
    assert_problem(
        &app.admin("PATCH", "/v1/accounts/zz", Some(json!({"name": "Z"})))
            .await,
        404,
    );
}

#[tokio::test]
async fn a_payment_reference_reused_elsewhere_conflicts() {
    let app = spawn_app(T0).await;
    app.create("acme", "0.00", None).await;
    app.admin(
        "POST",
        "/v1/clock",
        Some(json!({"now": "2026-02-15T00:00:00Z"})),
    )
    .await;
    let list = app.admin("GET", "/v1/accounts/acme/invoices", None).await;
    let numbers: Vec<String> = list.body["invoices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["number"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(numbers.len(), 2, "{:?}", list.body);
    let pay = |n: &str, outcome: &str| json!({"invoice_number": n, "outcome": outcome, "reference": "ch_1"});
    let r = app
        .admin("POST", "/v1/payments", Some(pay(&numbers[1], "failed")))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // A retry of the same outcome is idempotent.
    let before = app.event_count().await;
    assert_eq!(
        app.admin("POST", "/v1/payments", Some(pay(&numbers[1], "failed")))
            .await
            .status,
        200
    );
    assert_eq!(app.event_count().await, before);
    // Another outcome, or another invoice, with the same reference: 409.
    let r = app
        .admin("POST", "/v1/payments", Some(pay(&numbers[1], "succeeded")))
        .await;
    assert_problem(&r, 409);
    assert_eq!(r.body["reason"], "reference_conflict");
    let r = app
        .admin("POST", "/v1/payments", Some(pay(&numbers[0], "failed")))
        .await;
    assert_problem(&r, 409);
    assert_eq!(r.body["reason"], "reference_conflict");
    assert_eq!(app.event_count().await, before);
    // The same reference on another account's invoice conflicts too.
    app.create("other-payer", "0.00", None).await;
    let before = app.event_count().await;
    let theirs = app
        .admin("GET", "/v1/accounts/other-payer/invoices", None)
        .await
        .body["invoices"][0]["number"]
        .as_str()
        .unwrap()
        .to_string();
    let r = app
        .admin("POST", "/v1/payments", Some(pay(&theirs, "failed")))
        .await;
    assert_problem(&r, 409);
    assert_eq!(r.body["reason"], "reference_conflict");
    assert_eq!(app.event_count().await, before);
}

#[tokio::test]
async fn concurrent_partial_plan_changes_both_take_effect() {
    let app = spawn_app(T0).await;
    app.create("acme", "0.00", None).await;
    let (a, b) = tokio::join!(
        app.admin(
            "PUT",
            "/v1/accounts/acme/plan",
            Some(json!({"full_seats": 7}))
        ),
        app.admin(
            "PUT",
            "/v1/accounts/acme/plan",
            Some(json!({"viewer_seats": 30}))
        ),
    );
    assert_eq!((a.status, b.status), (200, 200));
    let o = app.overview("acme").await;
    assert_eq!(o["plan"]["full_seats"], 7);
    assert_eq!(o["plan"]["viewer_seats"], 30);
}
