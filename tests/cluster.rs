//! Three real `serve --partitions 3` processes on one PostgreSQL: ingest
//! through all of them at once, SIGKILL one mid-flight, the others take
//! its partition over; every acknowledged event counted exactly once,
//! invoice numbers gapless per partition, every partition's chain verifies.
//! (A cluster is PostgreSQL by design, so this suite uses it in either
//! pass of `ops/test`.)

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use accrue_api::cluster::partition_of;
use rust_decimal::Decimal;
use serde_json::{json, Value};

const TOKEN: &str = "cluster-test-admin";
const PARTITIONS: u32 = 3;
const ACCOUNTS: usize = 12;

struct Node {
    child: Child,
    base: String,
}

/// A failed assertion must not leave nodes running.
impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &std::path::Path, base_schema: &str, i: u32) -> Node {
    let data = dir.join(format!("node{i}"));
    std::fs::create_dir_all(&data).unwrap();
    let (pref, name) = (i.to_string(), format!("n{i}"));
    let url = common::pg_url();
    let (child, base, _log) = common::serve_binary_env(
        &data,
        TOKEN,
        &[
            "--store",
            &url,
            "--partitions",
            "3",
            "--node",
            &name,
            "--prefer",
            &pref,
            "--takeover-after",
            "2",
        ],
        &[("ACCRUE_PG_SCHEMA", base_schema)],
    );
    Node { child, base }
}

async fn send(
    c: &reqwest::Client,
    method: &str,
    url: String,
    body: Option<Value>,
) -> Option<(u16, Value)> {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut r = c.request(m, url).bearer_auth(TOKEN);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.json().await.unwrap_or(Value::Null)))
}

async fn wait_ready(c: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((200, _)) = send(c, "GET", format!("{base}/readyz"), None).await {
            return;
        }
        assert!(Instant::now() < deadline, "{base} never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn cleanup(base_schema: &str) {
    let url = accrue_store::postgres::test_url();
    for p in 0..PARTITIONS {
        accrue_store::postgres::drop_schema(
            &url,
            &accrue_store::cluster::partition_schema(base_schema, p),
        );
    }
    accrue_store::postgres::drop_schema(&url, &format!("{base_schema}_cluster"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_ingest_lose_one_and_stay_exact() {
    let dir = tempfile::tempdir().unwrap();
    let schema = accrue_store::postgres::schema_for(dir.path());
    cleanup(&schema);
    let mut nodes: Vec<Node> = (0..PARTITIONS)
        .map(|i| start(dir.path(), &schema, i))
        .collect();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    for n in &nodes {
        wait_ready(&client, &n.base).await;
    }
    // Each node holds the partition it prefers.
    for (i, n) in nodes.iter().enumerate() {
        let (_, h) = send(&client, "GET", format!("{}/healthz", n.base), None)
            .await
            .unwrap();
        assert_eq!(h["partitions"], json!([i]), "{h}");
    }

    // Accounts created through node 0 land in their own partitions.
    let ids: Vec<String> = (0..ACCOUNTS).map(|i| format!("acct-{i}")).collect();
    let spread: BTreeSet<u32> = ids.iter().map(|a| partition_of(a, PARTITIONS)).collect();
    assert_eq!(
        spread.len(),
        PARTITIONS as usize,
        "the accounts cover every partition"
    );
    for id in &ids {
        let mut body = common::account_body(id);
        body["base_credits"] = json!("1000000.00");
        let (status, v) = send(
            &client,
            "POST",
            format!("{}/v1/accounts", nodes[0].base),
            Some(body),
        )
        .await
        .unwrap();
        assert_eq!(status, 201, "{v}");
    }
    // Read back through another node (forwarded to the owner).
    let (status, v) = send(
        &client,
        "GET",
        format!("{}/v1/accounts/acct-0", nodes[2].base),
        None,
    )
    .await
    .unwrap();
    assert_eq!((status, v["id"].clone()), (200, json!("acct-0")));
    let (status, v) = send(
        &client,
        "GET",
        format!("{}/v1/accounts?limit=500", nodes[1].base),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["accounts"].as_array().unwrap().len(),
        ACCOUNTS,
        "the list merges every partition"
    );

    // Tokens: an ingest token (issued at home) is good on every partition;
    // an account's token (issued in its partition) finds its account
    // through any node.
    let (status, v) = send(
        &client,
        "POST",
        format!("{}/v1/tokens", nodes[2].base),
        Some(json!({"role": "ingest"})),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{v}");
    let ingest = v["token"].as_str().unwrap().to_string();
    let far = ids
        .iter()
        .find(|a| partition_of(a, PARTITIONS) != 0)
        .unwrap();
    let r = client
        .post(format!("{}/v1/usage", nodes[1].base))
        .bearer_auth(&ingest)
        .json(&json!({"events": [{"id": "tok-1", "account_id": far, "amount": "0.01"}, {"id": "tok-2", "account_id": "acct-0", "amount": "0.01"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["accepted"], 2, "{v}");
    let (status, v) = send(
        &client,
        "POST",
        format!("{}/v1/tokens", nodes[0].base),
        Some(json!({"role": "account", "account_id": far})),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{v}");
    let own = v["token"].as_str().unwrap().to_string();
    for n in &nodes {
        let r = client
            .get(format!("{}/v1/me", n.base))
            .bearer_auth(&own)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let me: Value = r.json().await.unwrap();
        assert_eq!(me["account_id"], json!(far), "{me}");
        let r = client
            .get(format!("{}/v1/accounts/{far}", n.base))
            .bearer_auth(&own)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "an account token reads its account through any node"
        );
    }
    let r = client
        .get(format!("{}/v1/me", nodes[0].base))
        .bearer_auth("acr_not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "an unknown token is unknown everywhere");

    // Six writers post mixed batches (every batch spans partitions) to the
    // live nodes in turn, each batch retried with the same ids until it is
    // acknowledged.
    let alive: Arc<Mutex<Vec<String>>> =
        Arc::new(Mutex::new(nodes.iter().map(|n| n.base.clone()).collect()));
    let acked: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let batches = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..6usize {
        let (client, alive, acked, batches, stop, ids) = (
            client.clone(),
            alive.clone(),
            acked.clone(),
            batches.clone(),
            stop.clone(),
            ids.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut b = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let events: Vec<(String, String)> = (0..20)
                    .map(|i| (format!("w{w}-b{b}-{i}"), ids[(w * 7 + b * 5 + i) % ids.len()].clone()))
                    .collect();
                let body = json!({"events": events.iter().map(|(id, a)| json!({"id": id, "account_id": a, "amount": "0.01"})).collect::<Vec<_>>()});
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut attempt = 0usize;
                loop {
                    let target = {
                        let a = alive.lock().unwrap();
                        a[(w + b + attempt) % a.len()].clone()
                    };
                    attempt += 1;
                    if let Some((200, v)) = send(&client, "POST", format!("{target}/v1/usage"), Some(body.clone())).await {
                        for (i, r) in v["results"].as_array().unwrap().iter().enumerate() {
                            assert_eq!(r["index"], i, "results come back in order: {v}");
                            assert_eq!(r["id"], json!(events[i].0), "{v}");
                            assert!(r["status"] == "accepted" || r["status"] == "duplicate", "{v}");
                        }
                        let mut a = acked.lock().unwrap();
                        for (id, acct) in &events {
                            a.insert(id.clone(), acct.clone());
                        }
                        break;
                    }
                    assert!(Instant::now() < deadline, "a batch was never acknowledged");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                batches.fetch_add(1, Ordering::Relaxed);
                b += 1;
            }
        }));
    }
    let wait_batches = |n: usize| {
        let batches = batches.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(90);
            while batches.load(Ordering::Relaxed) < n {
                assert!(
                    Instant::now() < deadline,
                    "ingest stalled at {} batches",
                    batches.load(Ordering::Relaxed)
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_batches(60).await;
    // SIGKILL the owner of partition 1 mid-flight.
    let mut victim = nodes.remove(1);
    alive.lock().unwrap().retain(|b| *b != victim.base);
    victim.child.kill().unwrap();
    victim.child.wait().unwrap();
    let at_kill = batches.load(Ordering::Relaxed);
    // Ingest goes on: every later batch touches partition 1 too, so it
    // can only be acknowledged once a survivor took partition 1 over.
    wait_batches(at_kill + 60).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let mut held = BTreeSet::new();
    for n in &nodes {
        let (_, h) = send(&client, "GET", format!("{}/healthz", n.base), None)
            .await
            .unwrap();
        for p in h["partitions"].as_array().unwrap() {
            assert!(
                held.insert(p.as_u64().unwrap()),
                "two nodes hold partition {p}"
            );
        }
    }
    assert_eq!(
        held,
        BTreeSet::from([0, 1, 2]),
        "the survivors hold every partition"
    );

    // Totals exact: every acknowledged event once, nothing else.
    let acked = acked.lock().unwrap().clone();
    let mut expected: BTreeMap<String, Decimal> =
        ids.iter().map(|a| (a.clone(), Decimal::ZERO)).collect();
    for a in [far.as_str(), "acct-0"] {
        *expected.get_mut(a).unwrap() += Decimal::new(1, 2);
    }
    for acct in acked.values() {
        *expected.get_mut(acct).unwrap() += Decimal::new(1, 2);
    }
    for (acct, want) in &expected {
        let (status, v) = send(
            &client,
            "GET",
            format!("{}/v1/accounts/{acct}", nodes[1].base),
            None,
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{v}");
        let used: Decimal = v["credits"]["used"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            used, *want,
            "{acct}: used credits equal the acknowledged usage"
        );
    }

    // A close through one node moves every partition's clock.
    let (status, v) = send(
        &client,
        "POST",
        format!("{}/v1/clock", nodes[0].base),
        Some(json!({"now": "2026-02-15T00:00:00Z"})),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{v}");
    let mut numbers: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for acct in &ids {
        let p = partition_of(acct, PARTITIONS);
        let (status, v) = send(
            &client,
            "GET",
            format!("{}/v1/accounts/{acct}/invoices", nodes[0].base),
            None,
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{v}");
        let list = v["invoices"].as_array().unwrap();
        assert_eq!(list.len(), 2, "opening + first close for {acct}: {v}");
        for inv in list {
            let n = inv["number"].as_str().unwrap();
            let prefix = format!("INV-2026-{p:02}-");
            assert!(
                n.starts_with(&prefix),
                "{n} is numbered in partition {p}'s series"
            );
            numbers
                .entry(p)
                .or_default()
                .push(n[prefix.len()..].parse().unwrap());
            // An invoice is found by its number through any node.
            let (s, got) = send(
                &client,
                "GET",
                format!("{}/v1/invoices/{n}", nodes[1].base),
                None,
            )
            .await
            .unwrap();
            assert_eq!((s, got["number"].clone()), (200, json!(n)));
        }
    }
    for (p, mut seqs) in numbers {
        seqs.sort_unstable();
        let want: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, want, "partition {p}'s invoice numbers are gapless");
    }

    // Stop the survivors (SIGKILL too), then every partition's log verifies.
    for mut n in nodes {
        n.child.kill().unwrap();
        n.child.wait().unwrap();
    }
    drop(victim);
    for p in 0..PARTITIONS {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_accrue"))
            .args(["audit", "verify", "--store", &common::pg_url(), "--data"])
            .arg(dir.path().join("verify"))
            .env(
                "ACCRUE_PG_SCHEMA",
                accrue_store::cluster::partition_schema(&schema, p),
            )
            .output()
            .unwrap();
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        assert!(
            out.status.success(),
            "partition {p}: {report} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(report["ok"], true, "{report}");
    }
    // The partition count is fixed when the cluster is created.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_accrue"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            &common::pg_url(),
            "--partitions",
            "2",
            "--data",
        ])
        .arg(dir.path().join("late"))
        .env("ACCRUE_PG_SCHEMA", &schema)
        .env("ACCRUE_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("created with 3 partitions, not 2"), "{err}");
    cleanup(&schema);
}

#[test]
fn a_cluster_needs_postgresql_and_a_shared_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], token: Option<&str>| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_accrue"));
        c.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--partitions",
            "3",
            "--data",
        ])
        .arg(dir.path())
        .args(args)
        .env_remove("ACCRUE_ADMIN_TOKEN");
        if let Some(t) = token {
            c.env("ACCRUE_ADMIN_TOKEN", t);
        }
        let out = c.output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = run(&[], Some(TOKEN));
    assert!(err.contains("needs a postgres:// store"), "{err}");
    let url = common::pg_url();
    let err = run(&["--store", &url], None);
    assert!(err.contains("ACCRUE_ADMIN_TOKEN"), "{err}");
}
