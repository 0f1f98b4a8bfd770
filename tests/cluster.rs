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
const STRIPE_SECRET: &str = "whsec_cluster_test";
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
        &[
            ("ACCRUE_PG_SCHEMA", base_schema),
            ("ACCRUE_STRIPE_WEBHOOK_SECRET", STRIPE_SECRET),
        ],
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

    // CloudEvents through any node, routed by subject: a batch over every
    // partition is split and answered as one (204), a retry is all
    // duplicates (204), and a refusal names each event in order.
    let ce = |id: &str, subject: &str| {
        json!({"specversion": "1.0", "id": id, "source": "cluster-test", "type": "chat",
               "subject": subject, "data": {"amount": "0.01"}})
    };
    let batch: Vec<Value> = ids.iter().map(|a| ce(&format!("ce-{a}"), a)).collect();
    for _ in 0..2 {
        let r = client
            .post(format!("{}/api/v1/events", nodes[2].base))
            .bearer_auth(TOKEN)
            .header("content-type", "application/cloudevents-batch+json")
            .json(&batch)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "{}", r.text().await.unwrap_or_default());
    }
    // Refusals in a batch over several partitions: every result, in order.
    let other = ids
        .iter()
        .find(|a| ![0, partition_of(far, PARTITIONS)].contains(&partition_of(a, PARTITIONS)))
        .unwrap();
    let refused = [
        ce("ce-late", far),
        ce("ce-nobody", "nobody-else"),
        ce(&format!("ce-{other}"), other),
        ce("ce-acct-0", "acct-0"),
    ];
    let spread: BTreeSet<u32> = refused
        .iter()
        .map(|e| partition_of(e["subject"].as_str().unwrap(), PARTITIONS))
        .collect();
    assert_eq!(spread.len(), 3, "the batch spans every partition");
    let post_ce = |node: &Node, body: Value| {
        client
            .post(format!("{}/api/v1/events", node.base))
            .bearer_auth(TOKEN)
            .header("content-type", "application/cloudevents-batch+json")
            .json(&body)
    };
    let answer = |v: &Value| -> (Vec<Value>, Vec<String>) {
        let results = v["results"].as_array().unwrap();
        let counts = ["accepted", "duplicate", "rejected"]
            .map(|k| v[k].clone())
            .to_vec();
        let statuses = results
            .iter()
            .enumerate()
            .map(|(i, r)| {
                assert_eq!(r["index"], i, "{v}");
                r["status"].as_str().unwrap().to_string()
            })
            .collect();
        (counts, statuses)
    };
    let r = post_ce(&nodes[0], json!(refused)).send().await.unwrap();
    assert_eq!(r.status(), 409);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        answer(&v),
        (
            vec![json!(1), json!(2), json!(1)],
            ["accepted", "rejected", "duplicate", "duplicate"]
                .map(String::from)
                .to_vec()
        ),
        "{v}"
    );
    // An invalid event anywhere in a split batch makes it a 400.
    let mut bad = ce("ce-bad", other);
    bad["data"] = json!({});
    let r = post_ce(&nodes[1], json!([ce("ce-valid", "acct-0"), bad]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        answer(&v),
        (
            vec![json!(1), json!(0), json!(1)],
            ["accepted", "rejected"].map(String::from).to_vec()
        ),
        "{v}"
    );
    assert_eq!(v["results"][1]["reason"], "invalid", "{v}");
    // The split header is the nodes' own: a client's changes nothing.
    let r = post_ce(&nodes[2], json!([ce("ce-acct-0", "acct-0")]))
        .header("x-accrue-split", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // A partition that is not one of the cluster's cannot be pinned.
    let r = client
        .get(format!("{}/v1/audit/verify", nodes[0].base))
        .bearer_auth(TOKEN)
        .header("x-accrue-partition", "7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);

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
    // Each node's /metrics covers every partition it holds, labelled, and
    // is one valid exposition (promtool, the Prometheus project's checker).
    for n in &nodes {
        let (_, h) = send(&client, "GET", format!("{}/healthz", n.base), None)
            .await
            .unwrap();
        let holds: BTreeSet<String> = h["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.to_string())
            .collect();
        let text = client
            .get(format!("{}/metrics", n.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let labelled: BTreeSet<String> = text
            .lines()
            .filter(|l| l.starts_with("accrue_head_position{"))
            .filter_map(|l| {
                l.split("partition=\"")
                    .nth(1)?
                    .split('"')
                    .next()
                    .map(str::to_string)
            })
            .collect();
        assert_eq!(labelled, holds, "{text}");
        let (code, out) = common::promtool_check(&text);
        assert_eq!(code, 0, "promtool: {out}\n{text}");
    }

    // Totals exact: every acknowledged event once, nothing else.
    let acked = acked.lock().unwrap().clone();
    let mut expected: BTreeMap<String, Decimal> =
        ids.iter().map(|a| (a.clone(), Decimal::ZERO)).collect();
    for a in [far.as_str(), "acct-0", far.as_str(), "acct-0"] {
        *expected.get_mut(a).unwrap() += Decimal::new(1, 2);
    }
    for a in &ids {
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

    // One webhook endpoint, registered through any node, for every
    // partition's events, under one secret.
    let (hook_url, hooks) = receiver().await;
    let (status, endpoint) = send(
        &client,
        "POST",
        format!("{}/v1/webhook-endpoints", nodes[1].base),
        Some(json!({"url": hook_url, "events": ["invoice.issued"]})),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{endpoint}");
    let hook_secret = endpoint["secret"].as_str().unwrap().to_string();
    let hook_id = endpoint["id"].as_str().unwrap().to_string();

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

    webhooks_come_from_every_partition(&client, &nodes, &ids, &hooks, &hook_id, &hook_secret).await;
    ledger_wide_reads_merge_every_partition(&client, &nodes, &ids).await;
    activations_find_their_partition(&client, &nodes, far).await;

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

type Received = Arc<Mutex<Vec<(axum::http::HeaderMap, Vec<u8>)>>>;

/// A webhook receiver on a free port: its URL and what it received.
async fn receiver() -> (String, Received) {
    let got: Received = Arc::default();
    let keep = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let keep = keep.clone();
                async move {
                    keep.lock().unwrap().push((headers, body.to_vec()));
                    "ok"
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), got)
}

/// Every partition's invoices reach the one endpoint, signed with the one
/// secret its registration showed, under ids unique across the cluster;
/// its deliveries are listed from every partition.
async fn webhooks_come_from_every_partition(
    client: &reqwest::Client,
    nodes: &[Node],
    ids: &[String],
    hooks: &Received,
    endpoint: &str,
    secret: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let want: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    let received = loop {
        let got = hooks.lock().unwrap().clone();
        let accounts: BTreeSet<String> = got
            .iter()
            .filter_map(|(_, b)| {
                let v: Value = serde_json::from_slice(b).ok()?;
                v["account_id"].as_str().map(str::to_string)
            })
            .collect();
        if want.iter().all(|a| accounts.contains(*a)) {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "webhooks reached only {accounts:?} of {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut event_ids = BTreeSet::new();
    for (headers, body) in &received {
        let sig = headers["accrue-signature"].to_str().unwrap();
        let (t, v1) = sig
            .split_once(',')
            .and_then(|(t, v)| Some((t.strip_prefix("t=")?, v.strip_prefix("v1=")?)))
            .unwrap();
        let mut msg = format!("{t}.").into_bytes();
        msg.extend_from_slice(body);
        assert!(
            accrue_ledger::hmac::verify_hex(secret.as_bytes(), &msg, v1),
            "a webhook not signed with the endpoint's secret: {}",
            String::from_utf8_lossy(body)
        );
        let v: Value = serde_json::from_slice(body).unwrap();
        let p = partition_of(v["account_id"].as_str().unwrap(), PARTITIONS);
        let id = v["id"].as_str().unwrap().to_string();
        assert!(
            id.starts_with(&format!("evt_{p:02}_")),
            "{id} names partition {p}"
        );
        event_ids.insert(id);
    }
    // One id per event across the cluster (a redelivery repeats its id
    // with the same body).
    let mut bodies: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (_, body) in &received {
        let v: Value = serde_json::from_slice(body).unwrap();
        let id = v["id"].as_str().unwrap().to_string();
        if let Some(before) = bodies.insert(id.clone(), body.clone()) {
            assert_eq!(&before, body, "{id} names two events");
        }
    }
    assert_eq!(bodies.len(), event_ids.len());
    // The deliveries of every partition, listed through any node, under
    // the ids the receiver got.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, v) = send(
            client,
            "GET",
            format!(
                "{}/v1/webhook-endpoints/{endpoint}/deliveries",
                nodes[0].base
            ),
            None,
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{v}");
        let delivered: Vec<&Value> = v["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["delivered"] == true)
            .collect();
        let from: BTreeSet<u64> = delivered
            .iter()
            .map(|d| d["partition"].as_u64().unwrap())
            .collect();
        let listed: BTreeSet<String> = delivered
            .iter()
            .map(|d| d["event_id"].as_str().unwrap().to_string())
            .collect();
        // A delivery is listed once its receiver took it: never an id the
        // receiver has not seen.
        let seen: BTreeSet<String> = hooks
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(_, b)| {
                let v: Value = serde_json::from_slice(b).ok()?;
                v["id"].as_str().map(str::to_string)
            })
            .collect();
        assert!(
            listed.is_subset(&seen),
            "listed {listed:?}, received {seen:?}"
        );
        if from == BTreeSet::from([0, 1, 2]) && event_ids.is_subset(&listed) {
            break;
        }
        assert!(Instant::now() < deadline, "deliveries listed: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Signs a processor event as the payment processor does.
fn stripe_signature(payload: &[u8]) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut msg = format!("{t}.").into_bytes();
    msg.extend_from_slice(payload);
    let mac = accrue_ledger::hmac::hmac_sha256(STRIPE_SECRET.as_bytes(), &msg);
    let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

/// The processor's webhook, the dunning list, the trial balance and chain
/// verification through any node answer for the whole cluster.
async fn ledger_wide_reads_merge_every_partition(
    client: &reqwest::Client,
    nodes: &[Node],
    ids: &[String],
) {
    // One invoice of another partition than home's paid, and a payment
    // failed in two partitions, all through the first node.
    let mut open: BTreeMap<u32, String> = BTreeMap::new();
    for acct in ids {
        let (_, v) = send(
            client,
            "GET",
            format!("{}/v1/accounts/{acct}/invoices", nodes[1].base),
            None,
        )
        .await
        .unwrap();
        for inv in v["invoices"].as_array().unwrap() {
            let n = inv["number"].as_str().unwrap().to_string();
            open.entry(partition_of(acct, PARTITIONS)).or_insert(n);
        }
    }
    let stripe = |kind: &str, id: &str, invoice: &str| {
        let payload = serde_json::to_vec(&json!({"id": id, "type": kind,
            "data": {"object": {"metadata": {"accrue_invoice": invoice}}}}))
        .unwrap();
        client
            .post(format!("{}/v1/webhooks/stripe", nodes[0].base))
            .header("stripe-signature", stripe_signature(&payload))
            .header("content-type", "application/json")
            .body(payload)
    };
    let paid = open[&1].clone();
    let r = stripe("invoice.paid", "evt_cluster_paid", &paid)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["outcome"], "recorded", "{v}");
    let (_, inv) = send(
        client,
        "GET",
        format!("{}/v1/invoices/{paid}", nodes[1].base),
        None,
    )
    .await
    .unwrap();
    assert_eq!(inv["status"], "paid", "{inv}");
    let failed = [open[&0].clone(), open[&2].clone()];
    for (i, n) in failed.iter().enumerate() {
        let r = stripe(
            "invoice.payment_failed",
            &format!("evt_cluster_failed_{i}"),
            n,
        )
        .send()
        .await
        .unwrap();
        assert_eq!(r.status(), 200);
    }
    // Two days on, the first retry of each is due, in one list.
    let (status, v) = send(
        client,
        "POST",
        format!("{}/v1/clock", nodes[1].base),
        Some(json!({"now": "2026-02-17T00:00:00Z"})),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{v}");
    let (status, v) = send(client, "GET", format!("{}/v1/dunning", nodes[1].base), None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{v}");
    let mut due: Vec<String> = v["retries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["invoice"].as_str().unwrap().to_string())
        .collect();
    due.sort();
    let mut want = failed.to_vec();
    want.sort();
    assert_eq!(due, want, "every partition's due retries: {v}");

    // The trial balance adds the partitions' up: each pinned partition
    // balances, and the merged totals are their sums.
    let get = |url: String, pin: Option<u32>| {
        let mut r = client.get(url).bearer_auth(TOKEN);
        if let Some(p) = pin {
            r = r.header("x-accrue-partition", p.to_string());
        }
        async move {
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            let partition = r
                .headers()
                .get("x-accrue-partition")
                .map(|v| v.to_str().unwrap().to_string());
            (status, partition, r.json::<Value>().await.unwrap())
        }
    };
    let dec = |v: &Value| v.as_str().unwrap().parse::<Decimal>().unwrap();
    let (mut debits, mut credits) = (Decimal::ZERO, Decimal::ZERO);
    for p in 0..PARTITIONS {
        let (status, answered, tb) =
            get(format!("{}/v1/audit/trial-balance", nodes[0].base), Some(p)).await;
        assert_eq!((status, answered), (200, Some(p.to_string())), "{tb}");
        assert_eq!(tb["balanced"], true, "{tb}");
        assert!(dec(&tb["total_debits"]) > Decimal::ZERO, "{tb}");
        debits += dec(&tb["total_debits"]);
        credits += dec(&tb["total_credits"]);
    }
    let (status, _, tb) = get(format!("{}/v1/audit/trial-balance", nodes[1].base), None).await;
    assert_eq!(status, 200, "{tb}");
    assert_eq!(tb["balanced"], true, "{tb}");
    assert_eq!(
        (dec(&tb["total_debits"]), dec(&tb["total_credits"])),
        (debits, credits),
        "{tb}"
    );
    let rows = tb["accounts"].as_array().unwrap();
    let names: BTreeSet<&str> = rows
        .iter()
        .map(|r| r["account"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), rows.len(), "one row per ledger account: {tb}");

    // Every partition's chain, verified through one node.
    let (status, _, v) = get(format!("{}/v1/audit/verify", nodes[0].base), None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    let each = v["partitions"].as_array().unwrap();
    assert_eq!(each.len(), PARTITIONS as usize, "{v}");
    let mut heads = sha2::Sha256::default();
    let mut events = 0;
    for (p, e) in each.iter().enumerate() {
        assert_eq!(
            (e["partition"].clone(), e["ok"].clone()),
            (json!(p), json!(true)),
            "{v}"
        );
        assert!(e["events"].as_u64().unwrap() > 0, "{v}");
        events += e["events"].as_u64().unwrap();
        sha2::Digest::update(
            &mut heads,
            format!("{p}:{}\n", e["head_hash"].as_str().unwrap()),
        );
    }
    assert_eq!(v["events"], events, "{v}");
    let head: String = sha2::Digest::finalize(heads)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(v["head_hash"], json!(head), "{v}");
    let (status, answered, one) = get(format!("{}/v1/audit/verify", nodes[1].base), Some(2)).await;
    assert_eq!((status, answered), (200, Some("2".to_string())), "{one}");
    assert!(
        one["events"].as_u64() >= each[2]["events"].as_u64(),
        "{one} {v}"
    );
    assert!(
        one.get("partitions").is_none(),
        "a pinned verify is one partition's: {one}"
    );

    // The cluster's anchor holds every partition's; posted back, each
    // partition is checked against its own, and a changed one is named.
    let (status, _, anchor) = get(format!("{}/v1/audit/anchor", nodes[1].base), None).await;
    assert_eq!(status, 200, "{anchor}");
    assert_eq!(
        anchor["partitions"].as_array().unwrap().len(),
        PARTITIONS as usize,
        "{anchor}"
    );
    let verify = |body: Value| {
        let r = client
            .post(format!("{}/v1/audit/verify", nodes[0].base))
            .bearer_auth(TOKEN)
            .json(&body);
        async move {
            let r = r.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, v) = verify(json!({ "anchor": anchor })).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["ok"].clone(), v["anchor_ok"].clone()),
        (json!(true), json!(true)),
        "{v}"
    );
    for e in v["partitions"].as_array().unwrap() {
        assert_eq!(e["anchor_ok"], true, "{v}");
    }
    let mut changed = anchor.clone();
    let h = changed["partitions"][2]["head_hash"]
        .as_str()
        .unwrap()
        .to_string();
    let flipped = match h.strip_prefix('0') {
        Some(rest) => format!("1{rest}"),
        None => format!("0{}", &h[1..]),
    };
    changed["partitions"][2]["head_hash"] = json!(flipped);
    let (status, v) = verify(json!({ "anchor": changed })).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["ok"].clone(), v["anchor_ok"].clone()),
        (json!(false), json!(false)),
        "{v}"
    );
    assert_eq!(v["first_broken"]["partition"], 2, "{v}");
    let mut short = anchor.clone();
    short["partitions"].as_array_mut().unwrap().pop();
    let (status, v) = verify(json!({ "anchor": short })).await;
    assert_eq!(status, 422, "{v}");
}

/// A serial number names no partition: each is probed without counting a
/// failure where the serial is not, so a license of another partition
/// than home's activates as often as on one ledger, and an unknown serial
/// is still refused and throttled like a known one.
async fn activations_find_their_partition(client: &reqwest::Client, nodes: &[Node], far: &str) {
    let (_, o) = send(
        client,
        "GET",
        format!("{}/v1/accounts/{far}", nodes[0].base),
        None,
    )
    .await
    .unwrap();
    let serial = o["serial_number"].as_str().unwrap().to_string();
    let control = o["license"]["control_number"].as_str().unwrap().to_string();
    let activate = |node: &Node, serial: &str, control: &str| {
        client.post(format!("{}/v1/activations", node.base)).json(
            &json!({"serial_number": serial, "control_number": control, "server_id": "srv-1"}),
        )
    };
    for i in 0..12 {
        let r = activate(&nodes[i % nodes.len()], &serial, &control)
            .send()
            .await
            .unwrap();
        let want = if i == 0 { 201 } else { 200 };
        assert_eq!(
            r.status(),
            want,
            "activation {i}: {}",
            r.text().await.unwrap_or_default()
        );
    }
    // A wrong control number is refused by the serial's own partition,
    // without saying which partition that is.
    let r = activate(&nodes[0], &serial, "wrong").send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.headers().get("x-accrue-partition").is_none(),
        "{:?}",
        r.headers()
    );
    // A client cannot probe: the headers are the nodes' own.
    let r = activate(&nodes[0], "no-such-serial", "x")
        .header("x-accrue-forwarded", "n0")
        .header("x-accrue-partition", "0")
        .header("x-accrue-probe", "guess")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "{}", r.text().await.unwrap_or_default());
    for i in 1..10 {
        let r = activate(&nodes[i % nodes.len()], "no-such-serial", "x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "unknown serial, try {i}");
    }
    let r = activate(&nodes[0], "no-such-serial", "x")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        429,
        "an unknown serial is throttled like a known one"
    );
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
