//! Integrations in (SPEC §11), with peers nobody here wrote: CloudEvents
//! encoded by the CloudEvents SDK (PyPI `cloudevents`), and processor
//! webhooks signed by the processor's own library (PyPI `stripe`). On
//! SQLite and, with `ACCRUE_TEST_BACKEND=postgres`, PostgreSQL.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use serde_json::{json, Value};

const SECRET: &str = "whsec_test_accrue_integrations";

fn python(script: &str, args: &[&str], stdin: &str) -> String {
    python_in("python3", script, args, stdin)
}

/// The interpreter of the OpenMeter client's own virtualenv (it needs
/// cloudevents 1.x; `.ci/run` makes it): `ACCRUE_OPENMETER_PYTHON`, else
/// `~/.cache/accrue-openmeter/bin/python`.
fn openmeter_python() -> String {
    std::env::var("ACCRUE_OPENMETER_PYTHON").unwrap_or_else(|_| {
        format!(
            "{}/.cache/accrue-openmeter/bin/python",
            std::env::var("HOME").unwrap_or_default()
        )
    })
}

fn python_in(interpreter: &str, script: &str, args: &[&str], stdin: &str) -> String {
    let path = format!("{}/../../tests/peers/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(interpreter)
        .arg(&path)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{interpreter} ({e}): run .ci/run's installs"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{script} failed (pip install cloudevents stripe): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The messages the SDK writes for `events` in `mode`.
fn encode(mode: &str, events: Value) -> Vec<(Vec<(String, String)>, String)> {
    let out = python(
        "cloudevents_encode.py",
        &[],
        &json!({"mode": mode, "events": events}).to_string(),
    );
    let msgs: Vec<Value> = serde_json::from_str(&out).unwrap();
    msgs.into_iter()
        .map(|m| {
            let headers = m["headers"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            (headers, m["body"].as_str().unwrap().to_string())
        })
        .collect()
}

async fn send(app: &App, token: &str, headers: &[(String, String)], body: String) -> Resp {
    let mut r = app
        .client
        .post(format!("{}/api/v1/events", app.base))
        .bearer_auth(token)
        .body(body);
    for (k, v) in headers {
        r = r.header(k, v);
    }
    finish(r.send().await.unwrap()).await
}

fn ce(id: &str, account: &str, amount: &str) -> Value {
    json!({
        "attributes": {"id": id, "source": "/meter/chat", "type": "chat", "subject": account,
                        "time": "2026-01-15T00:00:00Z", "datacontenttype": "application/json"},
        "data": {"amount": amount, "feature": "summarize", "metadata": {"model": "m1"}}
    })
}

#[tokio::test]
async fn cloudevents_from_the_sdk_are_usage_with_the_same_rules() {
    let app = spawn_app("2026-01-15T00:00:00Z").await;
    app.create("acme", "0.00", Some("10.00")).await;
    let ingest = app.token("ingest", None).await;

    // One structured event, one in binary mode, a batch of two.
    for (mode, events) in [
        ("structured", json!([ce("e1", "acme", "1.25")])),
        ("binary", json!([ce("e2", "acme", "0.75")])),
        (
            "batch",
            json!([ce("e3", "acme", "1.00"), ce("e4", "acme", "2.00")]),
        ),
    ] {
        for (headers, body) in encode(mode, events) {
            let r = send(&app, &ingest, &headers, body).await;
            assert_eq!(r.status, 204, "{mode}: {:?}", r.body);
        }
    }
    let o = app.overview("acme").await;
    assert_eq!(o["credits"]["used"], "5.00", "{o}");
    // A redelivery is a duplicate: 204, counted once.
    let (headers, body) = encode("structured", json!([ce("e1", "acme", "1.25")])).remove(0);
    let r = send(&app, &ingest, &headers, body).await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    assert_eq!(app.overview("acme").await["credits"]["used"], "5.00");
    // The event keeps its type as product and its data as feature/metadata.
    let events = app
        .admin("GET", "/v1/accounts/acme/events?limit=1000", None)
        .await
        .body;
    let first = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "CreditsConsumed")
        .unwrap()
        .clone();
    assert_eq!(first["data"]["usage_id"], "e1");
    assert_eq!(first["data"]["product"], "chat");
    assert_eq!(first["data"]["feature"], "summarize");

    // Beyond the limit: 409 with the per-event reason; bad events 400.
    let (headers, body) = encode(
        "batch",
        json!([ce("e5", "acme", "4.00"), ce("e6", "acme", "2.00")]),
    )
    .remove(0);
    let r = send(&app, &ingest, &headers, body).await;
    assert_problem(&r, 409);
    assert_eq!(r.body["results"][0]["status"], "accepted");
    assert_eq!(r.body["results"][1]["reason"], "credit_limit_exceeded");
    let (headers, body) = encode("structured", json!([ce("e7", "nobody", "1.00")])).remove(0);
    let r = send(&app, &ingest, &headers, body).await;
    assert_problem(&r, 409);
    assert_eq!(r.body["results"][0]["reason"], "unknown_account");
    let bad = json!({"specversion": "1.0", "id": "e8", "source": "/m", "type": "chat", "subject": "acme", "data": {"amount": "-1"}});
    let r = send(
        &app,
        &ingest,
        &[("content-type".into(), "application/cloudevents+json".into())],
        bad.to_string(),
    )
    .await;
    assert_problem(&r, 400);
    assert_eq!(r.body["results"][0]["reason"], "invalid");
    // A card number in the data is refused before anything is parsed.
    let card = json!({"specversion": "1.0", "id": "e9", "source": "/m", "type": "chat", "subject": "acme",
                      "data": {"amount": "1.00", "metadata": {"note": "4242 4242 4242 4242"}}});
    let r = send(
        &app,
        &ingest,
        &[("content-type".into(), "application/cloudevents+json".into())],
        card.to_string(),
    )
    .await;
    assert_problem(&r, 422);
    // Roles: an account token may not send usage.
    let account = app.token("account", Some("acme")).await;
    let (headers, body) = encode("structured", json!([ce("e10", "acme", "1.00")])).remove(0);
    let r = send(&app, &account, &headers, body).await;
    assert_problem(&r, 403);
    assert_eq!(app.overview("acme").await["credits"]["used"], "9.00");
}

async fn stripe(app: &App, payload: &Value, signature: Option<String>) -> Resp {
    let body = payload.to_string();
    let sig = signature.unwrap_or_else(|| python("stripe_sign.py", &[SECRET], &body));
    let r = app
        .client
        .post(format!("{}/v1/webhooks/stripe", app.base))
        .header("content-type", "application/json")
        .header("stripe-signature", sig)
        .body(body)
        .send()
        .await
        .unwrap();
    finish(r).await
}

fn event(id: &str, kind: &str, object: Value) -> Value {
    json!({"id": id, "object": "event", "type": kind, "data": {"object": object}})
}

#[tokio::test]
async fn processor_webhooks_signed_by_its_library_become_payment_outcomes() {
    // SAFETY: every test of this binary sets the same value.
    std::env::set_var("ACCRUE_STRIPE_WEBHOOK_SECRET", SECRET);
    let app = spawn_app("2026-01-15T00:00:00Z").await;
    app.create("acme", "0.00", None).await;
    let inv = "INV-2026-000001";
    let meta = json!({"accrue_invoice": inv});

    // A bad signature, a stale one, none at all: 400, nothing stored.
    let before = app.event_count().await;
    let failed = event(
        "evt_1",
        "invoice.payment_failed",
        json!({"id": "in_1", "metadata": meta, "last_payment_error": {"message": "card declined"}}),
    );
    let r = stripe(&app, &failed, Some("t=1,v1=00".into())).await;
    assert_problem(&r, 400);
    let stale = python(
        "stripe_sign.py",
        &[SECRET, "1000000000"],
        &failed.to_string(),
    );
    let r = stripe(&app, &failed, Some(stale)).await;
    assert_problem(&r, 400);
    let other = python("stripe_sign.py", &["whsec_other"], &failed.to_string());
    let r = stripe(&app, &failed, Some(other)).await;
    assert_problem(&r, 400);
    assert_eq!(app.event_count().await, before, "nothing stored");

    // A failure, then its redelivery: one PaymentFailed.
    let r = stripe(&app, &failed, None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["outcome"], "recorded");
    let r = stripe(&app, &failed, None).await;
    assert_eq!(r.body["outcome"], "duplicate", "{:?}", r.body);
    let i = app
        .admin("GET", &format!("/v1/invoices/{inv}"), None)
        .await
        .body;
    assert_eq!(i["last_failure_reason"], "card declined");
    assert_eq!(app.overview("acme").await["payment"]["status"], "failed");

    // Unknown types and objects without an accrue invoice: 200, ignored.
    let before = app.event_count().await;
    let r = stripe(
        &app,
        &event("evt_x", "customer.created", json!({"id": "cus_1"})),
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.body["outcome"].clone()),
        (200, json!("ignored"))
    );
    let r = stripe(
        &app,
        &event("evt_y", "invoice.paid", json!({"id": "in_2"})),
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.body["outcome"].clone()),
        (200, json!("ignored"))
    );
    assert_eq!(app.event_count().await, before);

    // Paid, then a partial refund of the charge, then the whole of it.
    let r = stripe(
        &app,
        &event(
            "evt_2",
            "invoice.paid",
            json!({"id": "in_1", "metadata": meta}),
        ),
        None,
    )
    .await;
    assert_eq!(r.body["outcome"], "recorded", "{:?}", r.body);
    let i = app
        .admin("GET", &format!("/v1/invoices/{inv}"), None)
        .await
        .body;
    assert_eq!(i["status"], "paid");
    let refund_in = |id: &str, cents: i64, currency: &str| {
        event(
            id,
            "charge.refunded",
            json!({"id": "ch_1", "amount_refunded": cents, "currency": currency, "metadata": meta}),
        )
    };
    let refund = |id: &str, cents: i64| refund_in(id, cents, "usd");
    // A refund in another currency than the invoice's, or without one:
    // 422, nothing stored (amounts are in the currency's minor units, so
    // the currency decides what the number means).
    let before = app.event_count().await;
    let r = stripe(&app, &refund_in("evt_eur", 4000, "eur"), None).await;
    assert_problem(&r, 422);
    assert!(
        r.body["detail"].as_str().unwrap().contains("EUR"),
        "{:?}",
        r.body
    );
    let r = stripe(&app, &refund_in("evt_jpy", 4000, "jpy"), None).await;
    assert_problem(&r, 422);
    let mut bare = refund("evt_bare", 4000);
    bare["data"]["object"]
        .as_object_mut()
        .unwrap()
        .remove("currency");
    let r = stripe(&app, &bare, None).await;
    assert_problem(&r, 422);
    assert_eq!(app.event_count().await, before, "nothing stored");
    let r = stripe(&app, &refund("evt_3", 4000), None).await;
    assert_eq!(r.body["outcome"], "recorded", "{:?}", r.body);
    let r = stripe(&app, &refund("evt_3", 4000), None).await;
    assert_eq!(r.body["outcome"], "duplicate", "{:?}", r.body);
    let r = stripe(&app, &refund("evt_4", 14000), None).await;
    assert_eq!(r.body["outcome"], "recorded", "{:?}", r.body);
    // Both redelivered after the second: nothing changes.
    let before = app.event_count().await;
    for id in ["evt_3", "evt_4"] {
        let r = stripe(&app, &refund(id, 14000), None).await;
        assert_eq!(r.body["outcome"], "duplicate", "{:?}", r.body);
    }
    assert_eq!(app.event_count().await, before);
    let i = app
        .admin("GET", &format!("/v1/invoices/{inv}"), None)
        .await
        .body;
    assert_eq!(i["refunded"], "140.00");
}

/// A usage meter's own client SDK pointed at accrue: OpenMeter's Python
/// client (PyPI `openmeter`) posts CloudEvents to `/api/v1/events`, one and
/// batched; a retry is a duplicate (204), an event over the limit is
/// refused (the SDK sees the error status), and the balance is exact.
#[test]
fn openmeters_own_client_ingests_usage_into_accrue() {
    let dir = tempfile::tempdir().unwrap();
    let token = "om-admin-token";
    let (mut child, base) = serve_binary(dir.path(), token, &[]);
    let c = reqwest::blocking::Client::new();
    let r = c
        .post(format!("{base}/v1/accounts"))
        .bearer_auth(token)
        .json(&json!({"id": "acme", "name": "Acme", "billing_email": "b@acme.test", "credit_limit": "10.00"}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let out = python_in(
        &openmeter_python(),
        "openmeter_ingest.py",
        &[&base, token, "acme"],
        "",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..3], ["one ok", "batch ok", "retry ok"], "{out}");
    assert!(
        lines[3].starts_with("over ") && lines[3].ends_with(" 409"),
        "{out}"
    );
    let o: Value = c
        .get(format!("{base}/v1/accounts/acme"))
        .bearer_auth(token)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(o["credits"]["used"], "2.00", "{o}");
    let _ = child.kill();
    let _ = child.wait();
    drop_test_store(dir.path());
}
