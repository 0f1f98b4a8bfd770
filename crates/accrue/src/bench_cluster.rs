//! `accrue bench --only cluster --store postgres://…`: HTTP ingest through
//! real `serve --partitions 3` processes (this binary), first one node
//! holding all three partitions, then three nodes holding one each, on the
//! same PostgreSQL. Clients send each batch to the nodes in turn, as a
//! load balancer in front of them would; a batch names accounts of one
//! partition, so on three nodes two batches in three are forwarded once.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use accrue_api::cluster::partition_of;
use anyhow::{bail, Context};

const TOKEN: &str = "bench-cluster-admin";
const PARTITIONS: u32 = 3;

/// (events/s on 1 node, events/s on 3 nodes).
pub(crate) fn run(
    dir: &std::path::Path,
    url: &str,
    schema: &str,
    events: usize,
    accounts: usize,
    batch: usize,
    connections: usize,
) -> anyhow::Result<(f64, f64)> {
    let one = ingest(
        dir,
        url,
        &format!("{schema}_n1"),
        1,
        events,
        accounts,
        batch,
        connections,
    )?;
    eprintln!("cluster: 1 node, 3 partitions: {one:.0} events/s");
    let three = ingest(
        dir,
        url,
        &format!("{schema}_n3"),
        3,
        events,
        accounts,
        batch,
        connections,
    )?;
    eprintln!("cluster: 3 nodes, 3 partitions: {three:.0} events/s");
    Ok((one, three))
}

struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn drop_schemas(url: &str, schema: &str) {
    for p in 0..PARTITIONS {
        accrue_store::postgres::drop_schema(
            url,
            &accrue_store::cluster::partition_schema(schema, p),
        );
    }
    accrue_store::postgres::drop_schema(url, &format!("{schema}_cluster"));
}

#[allow(clippy::too_many_arguments)]
fn ingest(
    dir: &std::path::Path,
    url: &str,
    schema: &str,
    nodes: u32,
    events: usize,
    accounts: usize,
    batch: usize,
    connections: usize,
) -> anyhow::Result<f64> {
    drop_schemas(url, schema);
    let exe = std::env::current_exe().context("the accrue binary")?;
    let mut children = Nodes(Vec::new());
    let mut bases = Vec::new();
    for i in 0..nodes {
        let prefer: Vec<String> = (0..PARTITIONS)
            .filter(|p| p % nodes == i)
            .map(|p| p.to_string())
            .collect();
        let data = dir.join(format!("{schema}-node{i}"));
        let mut child = Command::new(&exe)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--clock",
                "2026-01-15T00:00:00Z",
            ])
            .args([
                "--store",
                url,
                "--partitions",
                "3",
                "--takeover-after",
                "3600",
            ])
            .args(["--node", &format!("b{i}"), "--prefer", &prefer.join(",")])
            .arg("--data")
            .arg(&data)
            .env("ACCRUE_ADMIN_TOKEN", TOKEN)
            .env("ACCRUE_PG_SCHEMA", schema)
            .env("ACCRUE_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a node")?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let base = loop {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Some(a) = l.strip_prefix("accrue listening on ") {
                        break a.trim().to_string();
                    }
                }
                _ => bail!("a node exited before it listened"),
            }
        };
        std::thread::spawn(move || for _ in lines {});
        children.0.push(child);
        bases.push(base);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let rate = rt.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(connections + 2)
            .timeout(Duration::from_secs(60))
            .build()?;
        let deadline = Instant::now() + Duration::from_secs(120);
        for b in &bases {
            loop {
                let ok = client
                    .get(format!("{b}/readyz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("node {b} never became ready");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let ids: Vec<String> = (0..accounts).map(|i| format!("c{i}")).collect();
        for (i, id) in ids.iter().enumerate() {
            let body = serde_json::json!({
                "id": id, "name": format!("Bench {id}"), "billing_email": format!("billing@{id}.test"),
                "email_language": "en", "billing_frequency": "monthly",
                "plan": {"full_seats": 5, "full_seat_price": "49.00", "viewer_seats": 10,
                         "viewer_seat_price": "9.00", "data_management": false, "data_management_price": "0.00"},
                "base_credits": "100000.00"
            });
            let r = client
                .post(format!("{}/v1/accounts", bases[i % bases.len()]))
                .bearer_auth(TOKEN)
                .json(&body)
                .send()
                .await?;
            if r.status().as_u16() != 201 {
                bail!("creating {id}: {} {}", r.status(), r.text().await.unwrap_or_default());
            }
        }
        let mut by_partition: Vec<Vec<String>> = vec![Vec::new(); PARTITIONS as usize];
        for id in ids {
            by_partition[partition_of(&id, PARTITIONS) as usize].push(id);
        }
        let by_partition = Arc::new(by_partition);
        let batches = events.div_ceil(batch);
        let next = Arc::new(AtomicUsize::new(0));
        let bases = Arc::new(bases);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..connections {
            let (client, next, bases, parts) =
                (client.clone(), next.clone(), bases.clone(), by_partition.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let b = next.fetch_add(1, Ordering::Relaxed);
                    if b >= batches {
                        return anyhow::Ok(());
                    }
                    let accts = &parts[b % parts.len()];
                    let n = batch.min(events - b * batch);
                    let evs: Vec<String> = (0..n)
                        .map(|i| {
                            format!(
                                r#"{{"id":"ev-{b}-{i}","account_id":"{}","amount":"0.0125","product":"chat"}}"#,
                                accts[(b / parts.len() + i) % accts.len().max(1)]
                            )
                        })
                        .collect();
                    let body = format!(r#"{{"events":[{}]}}"#, evs.join(","));
                    let r = client
                        .post(format!("{}/v1/usage", bases[b % bases.len()]))
                        .bearer_auth(TOKEN)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await?;
                    let status = r.status();
                    let v: serde_json::Value = r.json().await.unwrap_or_default();
                    if !status.is_success() || v["accepted"].as_u64() != Some(n as u64) {
                        bail!("batch {b}: {status} {v}");
                    }
                }
            }));
        }
        for t in tasks {
            t.await??;
        }
        anyhow::Ok(events as f64 / started.elapsed().as_secs_f64())
    })?;
    drop(children);
    drop_schemas(url, schema);
    Ok(rate)
}
