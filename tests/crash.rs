//! The real binary, killed with SIGKILL right after acknowledging writes:
//! every acknowledged event survives, none twice, the chain still verifies.

mod common;

use std::collections::HashSet;
use std::process::Child;
use std::time::Duration;

use serde_json::{json, Value};

const TOKEN: &str = "crash-test-admin";

struct Server {
    child: Child,
    base: String,
}

fn start(data: &std::path::Path) -> Server {
    let (child, base) = common::serve_binary(data, TOKEN, &[]);
    Server { child, base }
}

async fn post(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    body: Value,
) -> Option<(u16, Value)> {
    let r = client
        .post(format!("{base}{path}"))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    let v = r.json().await.ok()?;
    Some((status, v))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_events_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = start(dir.path());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let acct = json!({"id": "acme", "name": "Acme", "billing_email": "b@acme.test", "plan": {"full_seats": 1, "full_seat_price": "1000.00"},
                      "base_credits": "1000000.00"});
    assert_eq!(
        post(&client, &s.base, "/v1/accounts", acct)
            .await
            .unwrap()
            .0,
        201
    );

    // Four writers post batches until the server dies under them.
    let acked = std::sync::Arc::new(parking_lot_free::Acked::default());
    let mut writers = Vec::new();
    for w in 0..4 {
        let client = client.clone();
        let base = s.base.clone();
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            for b in 0.. {
                let events: Vec<Value> = (0..50).map(|i| json!({"id": format!("w{w}-b{b}-{i}"), "account_id": "acme", "amount": "0.01"})).collect();
                let ids: Vec<String> = events.iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
                match post(&client, &base, "/v1/usage", json!({"events": events})).await {
                    Some((200, v)) => {
                        assert_eq!(v["accepted"], 50);
                        acked.add(ids);
                    }
                    _ => return,
                }
            }
        }));
    }
    // A fifth client issues credit notes on the opening invoice meanwhile.
    let notes = std::sync::Arc::new(parking_lot_free::Acked::default());
    {
        let client = client.clone();
        let base = s.base.clone();
        let notes = notes.clone();
        writers.push(tokio::spawn(async move {
            let body =
                json!({"reason": "crash test", "lines": [{"description": "x", "amount": "0.01"}]});
            loop {
                match post(
                    &client,
                    &base,
                    "/v1/invoices/INV-2026-000001/credit-notes",
                    body.clone(),
                )
                .await
                {
                    Some((201, v)) => notes.add(vec![v["number"].as_str().unwrap().to_string()]),
                    _ => return,
                }
            }
        }));
    }
    // Let some batches be acknowledged, then kill -9 while writers are mid-flight.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while acked.len() < 2000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the server stopped acknowledging"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    s.child.kill().unwrap(); // SIGKILL
    s.child.wait().unwrap();
    for w in writers {
        w.await.unwrap();
    }
    let acknowledged = acked.ids();
    assert!(acknowledged.len() >= 2000);

    let mut s = start(dir.path());
    // Credit-note numbers: every acknowledged one is there, 1..=n without a
    // gap, and the next one continues the series.
    let inv: Value = client
        .get(format!("{}/v1/invoices/INV-2026-000001", s.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut issued: Vec<String> = inv["credit_notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect();
    issued.sort();
    let want: Vec<String> = (1..=issued.len())
        .map(|n| format!("CN-2026-{n:06}"))
        .collect();
    assert_eq!(
        issued, want,
        "credit-note numbers are gapless after SIGKILL"
    );
    for n in notes.ids() {
        assert!(issued.contains(&n), "acknowledged credit note {n} was lost");
    }
    let (status, next) = post(
        &client,
        &s.base,
        "/v1/invoices/INV-2026-000001/credit-notes",
        json!({"reason": "after", "lines": [{"description": "x", "amount": "0.01"}]}),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{next}");
    assert_eq!(next["number"], format!("CN-2026-{:06}", issued.len() + 1));
    // Every acknowledged event is there exactly once.
    let mut seen: Vec<String> = Vec::new();
    let mut after = 0u64;
    loop {
        let r = client
            .get(format!(
                "{}/v1/accounts/acme/events?after={after}&limit=1000",
                s.base
            ))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        for e in r["events"].as_array().unwrap() {
            if e["type"] == "CreditsConsumed" {
                seen.push(e["data"]["usage_id"].as_str().unwrap().to_string());
            }
            after = e["version"].as_u64().unwrap();
        }
        if r.get("next_after").is_none() {
            break;
        }
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no event twice");
    for id in &acknowledged {
        assert!(unique.contains(id), "acknowledged event {id} was lost");
    }
    // The balance agrees with the events, and retries of acknowledged events are duplicates.
    let o: Value = client
        .get(format!("{}/v1/accounts/acme", s.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let used: rust_decimal::Decimal = o["credits"]["used"].as_str().unwrap().parse().unwrap();
    assert_eq!(used, rust_decimal::Decimal::new(seen.len() as i64, 2));
    let retry: Vec<Value> = acknowledged
        .iter()
        .take(50)
        .map(|id| json!({"id": id, "account_id": "acme", "amount": "0.01"}))
        .collect();
    let (status, v) = post(&client, &s.base, "/v1/usage", json!({"events": retry}))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(v["duplicate"], 50);
    let v: Value = client
        .get(format!("{}/v1/audit/verify", s.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["ok"], true, "{v}");
    s.child.kill().unwrap();
    s.child.wait().unwrap();
}

mod parking_lot_free {
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct Acked(Mutex<Vec<String>>);

    impl Acked {
        pub fn add(&self, ids: Vec<String>) {
            self.0.lock().unwrap().extend(ids);
        }
        pub fn len(&self) -> usize {
            self.0.lock().unwrap().len()
        }
        pub fn ids(&self) -> Vec<String> {
            self.0.lock().unwrap().clone()
        }
    }
}
