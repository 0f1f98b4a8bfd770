//! Slow clients (issue 13): a connection that dribbles its request head, a
//! keep-alive connection left idle and a body that never finishes are all
//! closed by the server within a bound, while normal requests are answered
//! at once. The real `accrue serve` binary with 2 s timeouts.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "slow-clients-admin-token";
/// Both timeouts the server is started with.
const TIMEOUT: Duration = Duration::from_secs(2);
/// A slow connection must be closed no earlier than this (so it was the
/// timeout that closed it, not a refusal) ...
const EARLIEST: Duration = Duration::from_millis(1500);
/// ... and no later than this (two loaded cores, a debug build).
const LATEST: Duration = Duration::from_secs(8);
/// How many slow sockets the first test opens at once.
const SLOW_SOCKETS: usize = 200;

struct Server {
    child: std::process::Child,
    base: String,
    addr: String,
    dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        drop_test_store(self.dir.path());
    }
}

fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let secs = TIMEOUT.as_secs().to_string();
    let (child, base, _log) = serve_binary_env(
        dir.path(),
        TOKEN,
        &[],
        &[
            ("ACCRUE_HEADER_TIMEOUT_SECS", &secs),
            ("ACCRUE_BODY_TIMEOUT_SECS", &secs),
        ],
    );
    let addr = base.trim_start_matches("http://").to_string();
    Server {
        child,
        base,
        addr,
        dir,
    }
}

/// Reads until the server closes the connection (EOF or reset); returns
/// what it sent.
async fn read_to_close(r: &mut (impl AsyncReadExt + Unpin)) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Opens a connection, sends the start of a request head and then one
/// header byte every 100 ms, never finishing it. Returns how long the
/// server kept the connection open (`None`: still open after `LATEST`).
async fn dribble_head(addr: String, closed: Arc<AtomicUsize>) -> Option<Duration> {
    let started = Instant::now();
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let (mut r, mut w) = tcp.into_split();
    let writer = async move {
        let start = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nX-Slow: ");
        if w.write_all(start.as_bytes()).await.is_err() {
            return;
        }
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if w.write_all(b"a").await.is_err() {
                return;
            }
        }
    };
    let open = async {
        tokio::select! {
            _ = read_to_close(&mut r) => {},
            _ = writer => {},
        }
    };
    let r = tokio::time::timeout(LATEST, open).await.ok();
    closed.fetch_add(1, Ordering::SeqCst);
    r.map(|_| started.elapsed())
}

/// 200 sockets dribbling their headers are all closed after the header
/// timeout, and a normal query and a normal write are answered promptly
/// while they are open.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_headers_are_closed_after_the_header_timeout_and_others_are_served() {
    let s = start();
    let client = reqwest::Client::new();
    let closed = Arc::new(AtomicUsize::new(0));
    let slow: Vec<_> = (0..SLOW_SOCKETS)
        .map(|_| tokio::spawn(dribble_head(s.addr.clone(), closed.clone())))
        .collect();
    // Meanwhile (every slow socket still open): normal requests.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (i, (method, path, body)) in [
        ("GET", "/healthz", None),
        ("POST", "/v1/accounts", Some(account_body("prompt"))),
        ("GET", "/v1/accounts/prompt", None),
    ]
    .into_iter()
    .enumerate()
    {
        let asked = Instant::now();
        let mut r = client
            .request(method.parse().unwrap(), format!("{}{path}", s.base))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        let took = asked.elapsed();
        let status = r.status().as_u16();
        assert!(status < 300, "{method} {path}: {status}");
        assert!(
            took < Duration::from_millis(1500),
            "{method} {path} took {took:?} beside {SLOW_SOCKETS} slow sockets"
        );
        if i == 2 {
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["id"], "prompt");
        }
    }
    assert_eq!(
        closed.load(Ordering::SeqCst),
        0,
        "a slow socket was closed before the normal requests were done"
    );
    let mut open_for = Vec::new();
    for t in slow {
        open_for.push(t.await.unwrap());
    }
    let still_open = open_for.iter().filter(|d| d.is_none()).count();
    assert_eq!(
        still_open, 0,
        "{still_open} of {SLOW_SOCKETS} slow sockets still open after {LATEST:?}"
    );
    let open_for: Vec<Duration> = open_for.into_iter().flatten().collect();
    let min = open_for.iter().min().unwrap();
    let max = open_for.iter().max().unwrap();
    assert!(*min >= EARLIEST, "a slow socket was closed after {min:?}");
    assert!(
        *max <= LATEST,
        "a slow socket was closed only after {max:?}"
    );
    // And the server still serves.
    let r = client
        .get(format!("{}/readyz", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// A keep-alive connection that answered a request and then sits idle is
/// closed after the header timeout too (hyper waits for the next head
/// under the same timer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let s = start();
    let mut tcp = TcpStream::connect(&s.addr).await.unwrap();
    let req = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", s.addr);
    tcp.write_all(req.as_bytes()).await.unwrap();
    // The whole response (healthz's body is short: one read per piece).
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let answered = loop {
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().unwrap())
                })
                .expect("content-length");
            if body.len() >= len {
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                assert!(
                    !head.to_ascii_lowercase().contains("connection: close"),
                    "{head}"
                );
                break Instant::now();
            }
        }
    };
    let rest = tokio::time::timeout(LATEST, read_to_close(&mut tcp))
        .await
        .expect("the idle keep-alive connection was still open");
    let idle = answered.elapsed();
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert!(idle >= EARLIEST, "closed after {idle:?} idle");
}

/// A request whose body does not arrive within the body timeout is
/// answered 408 problem+json, the connection is closed and nothing was
/// decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_is_answered_408_and_changes_nothing() {
    let s = start();
    let mut tcp = TcpStream::connect(&s.addr).await.unwrap();
    let body = serde_json::to_vec(&account_body("slowbody")).unwrap();
    let head = format!(
        "POST /v1/accounts HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        s.addr,
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let sent = Instant::now();
    let (mut r, mut w) = tcp.into_split();
    // One body byte every 250 ms: the whole body would take minutes.
    let writer = tokio::spawn(async move {
        for b in body {
            if w.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let answer = tokio::time::timeout(LATEST, read_to_close(&mut r))
        .await
        .expect("no answer to the slow body");
    let took = sent.elapsed();
    writer.abort();
    let text = String::from_utf8_lossy(&answer).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole response");
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/problem+json"),
        "{head}"
    );
    let problem: Value = serde_json::from_str(body).expect("a JSON problem");
    assert_eq!(problem["status"], 408);
    assert_eq!(problem["reason"], "body_timeout");
    assert!(took >= EARLIEST, "answered after {took:?}");
    // Nothing was decided: the account does not exist.
    let r = reqwest::Client::new()
        .get(format!("{}/v1/accounts/slowbody", s.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
