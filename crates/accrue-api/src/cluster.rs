//! The front of a cluster node (`accrue serve --partitions N`): accounts
//! are partitioned over N ledgers (one PostgreSQL schema each); a node
//! holds some of them and answers for all. A request is routed by what it
//! names: an account (path or body), an invoice or credit-note number (its
//! partition is in the number, `INV-YYYY-PP-NNNNNN`), or nothing (the home
//! partition, 0). Held partitions are answered in-process by the ledger's
//! own router; the others are forwarded once to their owner, whose address
//! the directory says (`accrue_store::cluster`). A usage batch naming
//! accounts of several partitions is split, forwarded in parallel and its
//! results put back in order (CloudEvents the same, by `subject`).
//! `POST /v1/clock` goes to every partition; `GET /v1/accounts`, the
//! audit's verify and trial balance and the dunning list merge every
//! partition's answer, unless the request pins one with [`PARTITION`].
//!
//! The front decides nothing: authentication, the card-data guard, limits
//! and every rule run in the partition's router, so a forwarded request is
//! answered exactly as if it had been sent to its owner.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use parking_lot::RwLock;
use sha2::{Digest, Sha256};
use tower::ServiceExt;

use crate::error::ApiError;

/// Set on a forwarded request: its receiver answers it or refuses it, and
/// never forwards it again (so a stale directory cannot make a loop).
pub const FORWARDED: &str = "x-accrue-forwarded";
/// On every answer of a cluster node: the partition that answered; on a
/// forwarded request, the partition it is for; on a client's request that
/// names no partition, the one it pins.
pub const PARTITION: &str = "x-accrue-partition";
/// A part of a CloudEvents batch the front split: the partition answers
/// every event's result (200 and counts) instead of 204, so the front can
/// answer for the whole batch. A request extension in-process; between
/// nodes the [`SPLIT`] header, carrying the same key as [`PROBE`].
#[derive(Clone, Copy, Debug)]
pub struct Split;
/// The header that carries a [`Split`] to another node (removed from every
/// incoming request, honoured only with the nodes' key).
pub const SPLIT: &str = "x-accrue-split";
/// A node's request to another partition's router to look for an
/// activation's serial number (`POST /v1/activations`): a partition that
/// does not have it answers 404 [`UNKNOWN_SERIAL`] and counts no failed
/// activation. In-process it is a request extension, which no client can
/// set; between nodes the [`PROBE`] header, whose value only nodes know.
#[derive(Clone, Copy, Debug)]
pub struct Probe;
/// The header that carries a [`Probe`] to another node: a key derived from
/// the cluster's shared admin token. Removed from every incoming request.
pub const PROBE: &str = "x-accrue-probe";
/// The id a webhook endpoint is registered under in every partition (the
/// front chooses it). A request extension in-process; between nodes the
/// [`ENDPOINT_ID`] header, `"{node key} {id}"`.
#[derive(Clone, Debug)]
pub struct EndpointId(pub String);
/// The header that carries an [`EndpointId`] to another node.
pub const ENDPOINT_ID: &str = "x-accrue-endpoint-id";
/// The reason of a probed partition's "not here".
pub const UNKNOWN_SERIAL: &str = "unknown_serial";

/// The home partition: ledger-wide resources (tokens other than accounts',
/// the webhook secret every partition derives from, the anchor) and
/// whatever names no partition.
pub const HOME: u32 = 0;

/// The partition of an account: the first 8 bytes of SHA-256 of its id,
/// modulo the partition count. Fixed for the life of a cluster (the count
/// is stored in its directory and a node started with another refuses).
pub fn partition_of(account: &str, partitions: u32) -> u32 {
    let d = Sha256::digest(account.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    (u64::from_be_bytes(b) % u64::from(partitions.max(1))) as u32
}

/// The numbering tag of a partition's series (`INV-2026-01-000001`).
pub fn number_tag(partition: u32) -> String {
    format!("{partition:02}")
}

/// The partition a document number names, when it is a cluster number.
pub fn partition_of_number(number: &str, partitions: u32) -> Option<u32> {
    let rest = number
        .strip_prefix("INV-")
        .or_else(|| number.strip_prefix("CN-"))?;
    let mut parts = rest.split('-');
    let (_year, tag, _seq) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || tag.len() < 2 || !tag.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    tag.parse::<u32>().ok().filter(|p| *p < partitions)
}

/// What a node knows: the partitions it holds (their routers) and who
/// holds the others.
pub struct Cluster {
    pub node: String,
    pub partitions: u32,
    local: Vec<RwLock<Option<Router>>>,
    owners: RwLock<Vec<Option<String>>>,
    client: reqwest::Client,
    /// The [`PROBE`] header's value between this cluster's nodes.
    probe_key: String,
}

impl Cluster {
    /// `secret`: what every node of the cluster shares (its admin token);
    /// only a key derived from it travels.
    pub fn new(node: String, partitions: u32, secret: &str) -> Arc<Cluster> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            // Nodes talk directly: never through an HTTP(S)_PROXY, and
            // never on to wherever a redirect points (the nodes' headers
            // would go with it).
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Arc::new(Cluster {
            node,
            partitions,
            local: (0..partitions).map(|_| RwLock::new(None)).collect(),
            owners: RwLock::new(vec![None; partitions as usize]),
            client,
            probe_key: hex::encode(Sha256::digest(format!("accrue-probe:{secret}").as_bytes())),
        })
    }

    /// This node now holds `partition`: requests for it go to `router`.
    pub fn hold(&self, partition: u32, router: Router) {
        if let Some(slot) = self.local.get(partition as usize) {
            *slot.write() = Some(router);
        }
    }

    /// The partitions this node holds.
    pub fn held(&self) -> Vec<u32> {
        (0..self.partitions)
            .filter(|p| self.local[*p as usize].read().is_some())
            .collect()
    }

    /// The directory's view: the base URL of each partition's owner.
    pub fn set_owners(&self, owners: Vec<Option<String>>) {
        let mut o = owners;
        o.resize(self.partitions as usize, None);
        *self.owners.write() = o;
    }

    /// Every partition has an owner the directory names.
    pub fn complete(&self) -> bool {
        self.owners.read().iter().all(Option::is_some)
    }

    fn router(&self, partition: u32) -> Option<Router> {
        self.local.get(partition as usize)?.read().clone()
    }
}

/// How long a forwarded `/v1/audit/verify` may take (it reads a whole log).
const VERIFY_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// An activation is a few short fields: the front reads no more than this
/// of one before it asks the partitions.
const MAX_ACTIVATION_BYTES: usize = 64 * 1024;

/// The node's whole HTTP surface: every request goes through [`dispatch`];
/// a panic in the front is answered 500, never a dropped connection.
pub fn front(cluster: Arc<Cluster>) -> Router {
    Router::new().fallback(dispatch).with_state(cluster).layer(
        tower_http::catch_panic::CatchPanicLayer::custom(crate::guard::panic_response),
    )
}

async fn dispatch(State(c): State<Arc<Cluster>>, mut req: Request) -> Response {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let forwarded = req.headers().contains_key(FORWARDED);
    // Only another node of this cluster can probe or split (it knows the
    // key); the headers never reach a partition's router.
    let from_node = |v: Option<HeaderValue>| {
        v.is_some_and(|v| {
            forwarded && accrue_ledger::hmac::constant_time_eq(v.as_bytes(), c.probe_key.as_bytes())
        })
    };
    if from_node(req.headers_mut().remove(PROBE)) {
        req.extensions_mut().insert(Probe);
    }
    if from_node(req.headers_mut().remove(SPLIT)) {
        req.extensions_mut().insert(Split);
    }
    if let Some(v) = req.headers_mut().remove(ENDPOINT_ID) {
        let given = v.to_str().ok().and_then(|v| v.split_once(' '));
        if let Some((key, id)) = given {
            if forwarded
                && accrue_ledger::hmac::constant_time_eq(key.as_bytes(), c.probe_key.as_bytes())
            {
                req.extensions_mut().insert(EndpointId(id.to_string()));
            }
        }
    }
    match (method.clone(), path.as_str()) {
        (_, "/healthz") => {
            return axum::Json(serde_json::json!({
                "status": "ok", "node": c.node, "partitions": c.held()
            }))
            .into_response()
        }
        (_, "/readyz") => return ready(&c).await,
        (Method::POST, "/v1/usage" | "/v1/usage/cancellations") if !forwarded => {
            return split(&c, req).await
        }
        (Method::POST, "/v1/clock") if !forwarded => return everywhere(&c, req).await,
        _ => {}
    }
    // A request that names no partition may pin one with the partition
    // header (an auditor asking one partition's trial balance or anchor);
    // without it, a ledger-wide read is asked of every partition and merged.
    let pinned = if forwarded {
        None
    } else {
        match pinned_partition(req.headers(), c.partitions) {
            Ok(p) => p,
            Err(e) => return e.into_response(),
        }
    };
    match (method.clone(), path.as_str()) {
        _ if forwarded || pinned.is_some() => {}
        (Method::GET, "/v1/accounts") => return accounts(&c, req).await,
        (Method::POST, "/api/v1/events") => return split_cloudevents(&c, req).await,
        (Method::POST, "/v1/activations") => return activate_anywhere(&c, req).await,
        (Method::POST, "/v1/webhook-endpoints") => return register_everywhere(&c, req).await,
        (Method::GET, p)
            if p.starts_with("/v1/webhook-endpoints/") && p.ends_with("/deliveries") =>
        {
            return deliveries_everywhere(&c, req).await
        }
        (Method::GET, "/v1/audit/anchor") => return anchors_everywhere(&c, req).await,
        (Method::GET | Method::POST, "/v1/audit/verify")
        | (Method::GET, "/v1/audit/trial-balance" | "/v1/dunning") => return merged(&c, req).await,
        _ => {}
    }
    let (parts, body) = req.into_parts();
    if path == "/metrics" {
        return metrics(&c, parts).await;
    }
    // Routed by the body: an account's creation, a payment.
    let bytes = match axum::body::to_bytes(body, crate::MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => return too_large(),
    };
    let partition = if let Some(p) = by_path(&path, c.partitions) {
        Some(p)
    } else if method == Method::POST && path == "/v1/accounts" {
        Some(body_field(&bytes, "id").map_or(HOME, |id| partition_of(&id, c.partitions)))
    } else if method == Method::POST && path == "/v1/tokens" {
        // An account's token lives where the account does; the others at
        // home (every partition accepts them: `Tokens::with_home`).
        Some(body_field(&bytes, "account_id").map_or(HOME, |id| partition_of(&id, c.partitions)))
    } else if method == Method::POST && path == "/v1/payments" {
        Some(
            body_field(&bytes, "invoice_number")
                .and_then(|n| partition_of_number(&n, c.partitions))
                .unwrap_or(HOME),
        )
    } else if method == Method::POST && path == "/v1/webhooks/stripe" {
        // The processor's event names the invoice it pays in its metadata;
        // the partition checks the signature over the same bytes.
        Some(
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| {
                    v.pointer("/data/object/metadata/accrue_invoice")?
                        .as_str()
                        .and_then(|n| partition_of_number(n, c.partitions))
                })
                .unwrap_or(HOME),
        )
    } else {
        pinned
    };
    match partition {
        Some(p) => send(&c, p, parts, bytes, forwarded).await,
        // A forwarded request that names no partition itself (a part of a
        // split batch, a page of the account list) says which it was sent
        // to; one that names its own is answered there, whatever it says.
        None if forwarded => {
            let p = parts
                .headers
                .get(PARTITION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u32>().ok())
                .filter(|p| *p < c.partitions)
                .unwrap_or(HOME);
            send(&c, p, parts, bytes, true).await
        }
        None => scatter(&c, parts, bytes).await,
    }
}

/// A request that names no account: the home partition first; if it does
/// not know the token or the thing asked for (401, 404: nothing was
/// written), each other partition in turn, and the first that does
/// answers. So an account's own token (`GET /v1/me`), a product server's
/// token (`GET /v1/license`) or an activation by serial number find the
/// partition that holds them.
async fn scatter(c: &Cluster, parts: axum::http::request::Parts, body: Bytes) -> Response {
    let unknown = |s: StatusCode| s == StatusCode::UNAUTHORIZED || s == StatusCode::NOT_FOUND;
    let first = send(c, HOME, clone_parts(&parts), body.clone(), false).await;
    if !unknown(first.status()) || c.partitions == 1 {
        return first;
    }
    for p in 1..c.partitions {
        let r = send(c, p, clone_parts(&parts), body.clone(), false).await;
        if !unknown(r.status()) {
            return r;
        }
    }
    first
}

/// `GET /metrics`: every partition this node holds, each sample labelled
/// `partition="N"` (families kept together, their HELP and TYPE once), so
/// a scrape of each node sees every partition once and a partition's
/// series keep their identity when it moves. A node that holds none
/// answers an empty exposition.
async fn metrics(c: &Cluster, parts: axum::http::request::Parts) -> Response {
    let mut families: Vec<(String, Vec<String>, Vec<String>)> = Vec::new();
    let mut content_type = None;
    for p in c.held() {
        let (status, headers, bytes) =
            collect(send(c, p, clone_parts(&parts), Bytes::new(), true).await).await;
        if !status.is_success() {
            return rebuild(status, &headers, bytes);
        }
        if let Some(ct) = headers.get(header::CONTENT_TYPE) {
            content_type.get_or_insert(ct.clone());
        }
        relabel_into(&String::from_utf8_lossy(&bytes), p, &mut families);
    }
    let mut text = String::new();
    for (_, meta, samples) in &families {
        for line in meta.iter().chain(samples) {
            text.push_str(line);
            text.push('\n');
        }
    }
    let ct = content_type
        .unwrap_or_else(|| HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    ([(header::CONTENT_TYPE, ct)], text).into_response()
}

/// Adds one partition's exposition to `families` (name, HELP/TYPE lines,
/// samples), each sample with the label `partition="p"`.
fn relabel_into(text: &str, p: u32, families: &mut Vec<(String, Vec<String>, Vec<String>)>) {
    let mut current: Option<usize> = None;
    for line in text.lines() {
        if line.is_empty() || line == "# EOF" {
            continue;
        }
        if let Some(rest) = line
            .strip_prefix("# HELP ")
            .or_else(|| line.strip_prefix("# TYPE "))
            .or_else(|| line.strip_prefix("# UNIT "))
        {
            let name = rest.split(' ').next().unwrap_or("").to_string();
            let i = match families.iter().position(|f| f.0 == name) {
                Some(i) => i,
                None => {
                    families.push((name, Vec::new(), Vec::new()));
                    families.len() - 1
                }
            };
            if !families[i].1.iter().any(|m| m == line) {
                families[i].1.push(line.to_string());
            }
            current = Some(i);
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let at = line.find(['{', ' ']).unwrap_or(line.len());
        let (name, rest) = line.split_at(at);
        let labelled = match rest.strip_prefix('{') {
            Some(r) if r.starts_with('}') => format!("{name}{{partition=\"{p}\"{r}"),
            Some(r) => format!("{name}{{partition=\"{p}\",{r}"),
            None => format!("{name}{{partition=\"{p}\"}}{rest}"),
        };
        let i = match current {
            Some(i) => i,
            None => {
                families.push((name.to_string(), Vec::new(), Vec::new()));
                families.len() - 1
            }
        };
        families[i].2.push(labelled);
    }
}

/// `POST /v1/webhook-endpoints`: one endpoint in every partition, under
/// one id the front chooses and one secret (every partition derives it
/// from the home partition's secret), so the endpoint receives the events
/// of every account. The home partition registers first and its answer
/// (with the secret) is the answer; the others then register the same id
/// (three tries each; "already registered" counts as done). Nothing is
/// registered while a partition has no owner. If a partition still
/// refuses, the answer is 503 naming the partitions that lack the
/// endpoint, and it carries the endpoint with its secret: the endpoint
/// exists and delivers the other partitions' events, and its secret is not
/// lost.
async fn register_everywhere(c: &Cluster, req: Request) -> Response {
    let (parts, body) = match whole(req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if !c.complete() {
        return unavailable(
            HOME,
            "a partition has no owner yet; an endpoint is registered in every partition at once: retry".into(),
        );
    }
    let id = format!("we_{}", uuid::Uuid::now_v7().simple());
    let with_id = || {
        let mut p = clone_parts(&parts);
        p.extensions.insert(EndpointId(id.clone()));
        p
    };
    let (status, headers, bytes) =
        collect(send(c, HOME, with_id(), body.clone(), false).await).await;
    if status != StatusCode::CREATED {
        return rebuild(status, &headers, bytes);
    }
    let others = (1..c.partitions).map(|p| {
        let body = body.clone();
        let with_id = &with_id;
        async move {
            let mut last = StatusCode::SERVICE_UNAVAILABLE;
            for attempt in 0..3u64 {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(250 * attempt)).await;
                }
                let (s, _, b) = collect(send(c, p, with_id(), body.clone(), false).await).await;
                let exists = s == StatusCode::CONFLICT
                    && serde_json::from_slice::<serde_json::Value>(&b)
                        .ok()
                        .and_then(|v| v.get("reason")?.as_str().map(|r| r == "endpoint_exists"))
                        .unwrap_or(false);
                if s == StatusCode::CREATED || exists {
                    return None;
                }
                last = s;
                // A refusal of the request itself will not change.
                if s.is_client_error() {
                    break;
                }
            }
            Some(format!("{p} ({last})"))
        }
    });
    let missing: Vec<String> = futures_join_all(others)
        .await
        .into_iter()
        .flatten()
        .collect();
    if missing.is_empty() {
        return rebuild(status, &headers, bytes);
    }
    let endpoint = serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_default();
    let mut problem = serde_json::json!({
        "type": "https://accrue.dev/problems/partition_unavailable",
        "title": "Service Unavailable",
        "status": 503,
        "detail": format!(
            "webhook endpoint {id} is registered, but not in partition(s) {}: it receives the other partitions' events only",
            missing.join(", ")
        ),
        "reason": "partition_unavailable",
        "endpoint": endpoint,
    });
    problem["missing_partitions"] = serde_json::Value::from(missing);
    let mut resp = (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, "application/problem+json")],
        problem.to_string(),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// `GET /v1/webhook-endpoints/{id}/deliveries`: every partition's
/// deliveries to the endpoint, each with its `partition`, oldest first by
/// first attempt. Unknown at home is unknown (404); a partition that does
/// not have the endpoint (registered there before it was shared) has none.
async fn deliveries_everywhere(c: &Cluster, req: Request) -> Response {
    use serde_json::Value;
    let (parts, body) = match whole(req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let mut page: Option<(HeaderMap, Value)> = None;
    let mut all: Vec<(String, Value)> = Vec::new();
    for (p, (status, h, bytes)) in ask_all(c, &parts, |_| body.clone()).await {
        if p != HOME && status == StatusCode::NOT_FOUND {
            continue;
        }
        if !status.is_success() {
            return rebuild(status, &h, bytes);
        }
        let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
            return rebuild(status, &h, bytes);
        };
        for d in v
            .get("deliveries")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let first = d
                .pointer("/attempts/0/at")
                .and_then(Value::as_str)
                .and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok())
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
                .unwrap_or_default();
            let mut d = d.clone();
            d["partition"] = Value::from(p);
            all.push((first, d));
        }
        page.get_or_insert((h, v));
    }
    let Some((mut headers, mut v)) = page else {
        return unavailable(HOME, "the cluster has no partitions".into());
    };
    all.sort_by(|a, b| a.0.cmp(&b.0));
    v["deliveries"] = Value::Array(all.into_iter().map(|(_, d)| d).collect());
    headers.remove(PARTITION);
    headers.remove(header::CONTENT_LENGTH);
    rebuild(
        StatusCode::OK,
        &headers,
        Bytes::from(serde_json::to_vec(&v).unwrap_or_default()),
    )
}

/// `POST /v1/activations`: a serial number names no partition, so each is
/// probed in turn and the first that has the serial answers (activates, or
/// refuses the control number and counts the failure, as one ledger
/// would). If none has it, the home partition answers unprobed: 401, and
/// it counts the failure, so an unknown serial is throttled (429) exactly
/// like a known one and a caller cannot tell them apart.
async fn activate_anywhere(c: &Cluster, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_ACTIVATION_BYTES).await else {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("an activation is at most {MAX_ACTIVATION_BYTES} bytes"),
        )
        .into_response();
    };
    // Every partition at once, and every answer awaited: how long the
    // answer takes does not tell which partition has the serial (an
    // unknown one costs one more round trip, to home).
    let probes = (0..c.partitions).map(|p| {
        let mut probe = clone_parts(&parts);
        probe.extensions.insert(Probe);
        let body = body.clone();
        async move { collect(send(c, p, probe, body, false).await).await }
    });
    // The answer of the partition that has the serial: an activation
    // before a refusal, a throttle (which a partition answers before it
    // looks the serial up) last.
    let rank = |s: StatusCode| match s {
        s if s.is_success() => 0,
        StatusCode::TOO_MANY_REQUESTS => 2,
        _ => 1,
    };
    let mut found: Option<(StatusCode, HeaderMap, Bytes)> = None;
    for (status, headers, bytes) in futures_join_all(probes).await {
        let elsewhere = status == StatusCode::NOT_FOUND
            && serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("reason")?.as_str().map(|r| r == UNKNOWN_SERIAL))
                .unwrap_or(false);
        if !elsewhere && found.as_ref().is_none_or(|f| rank(status) < rank(f.0)) {
            found = Some((status, headers, bytes));
        }
    }
    let mut resp = match found {
        Some((status, headers, bytes)) => rebuild(status, &headers, bytes),
        None => send(c, HOME, parts, body, false).await,
    };
    // A refusal does not say which partition refused: that would tell a
    // serial that exists from one that does not.
    if !resp.status().is_success() {
        resp.headers_mut().remove(PARTITION);
    }
    resp
}

/// The partition a path names: `/v1/accounts/{id}/…`, `/v1/invoices/{n}/…`,
/// `/v1/credit-notes/{n}/…`.
fn by_path(path: &str, partitions: u32) -> Option<u32> {
    let mut seg = path.strip_prefix("/v1/")?.split('/');
    let (kind, id) = (seg.next()?, percent_decode(seg.next()?)?);
    match kind {
        "accounts" if !id.is_empty() => Some(partition_of(&id, partitions)),
        "invoices" | "credit-notes" => Some(partition_of_number(&id, partitions).unwrap_or(HOME)),
        _ => None,
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A top-level string field of a JSON object body, if it has one.
fn body_field(bytes: &[u8], field: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    v.get(field)?.as_str().map(str::to_string)
}

fn too_large() -> Response {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("the body is larger than {} bytes", crate::MAX_BODY_BYTES),
    )
    .into_response()
}

fn unavailable(partition: u32, why: String) -> Response {
    let mut r = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "partition_unavailable",
        why,
    )
    .into_response();
    r.headers_mut()
        .insert(PARTITION, HeaderValue::from(partition));
    r
}

/// Answers in-process when this node holds `partition`, else forwards to
/// its owner once.
async fn send(
    c: &Cluster,
    partition: u32,
    parts: axum::http::request::Parts,
    body: Bytes,
    forwarded: bool,
) -> Response {
    if let Some(router) = c.router(partition) {
        let req = Request::from_parts(parts, Body::from(body));
        let mut resp = match router.oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        resp.headers_mut()
            .insert(PARTITION, HeaderValue::from(partition));
        return resp;
    }
    if forwarded {
        // The sender's directory is stale (the partition moved, or its
        // owner just died): it retries after the directory catches up.
        return unavailable(
            partition,
            format!(
                "partition {partition} is not held by node {:?} (it moved); retry",
                c.node
            ),
        );
    }
    let Some(owner) = c.owners.read().get(partition as usize).cloned().flatten() else {
        return unavailable(
            partition,
            format!("partition {partition} has no owner yet (a node is taking it over); retry"),
        );
    };
    let url = format!(
        "{}{}",
        owner.trim_end_matches('/'),
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut rb = c.client.request(parts.method.clone(), &url);
    for (k, v) in &parts.headers {
        if !hop_by_hop(k) && k.as_str() != PARTITION && k.as_str() != FORWARDED {
            rb = rb.header(k, v);
        }
    }
    let mut rb = rb
        .header(FORWARDED, c.node.as_str())
        .header(PARTITION, partition);
    if parts.extensions.get::<Probe>().is_some() {
        rb = rb.header(PROBE, c.probe_key.as_str());
    }
    if parts.extensions.get::<Split>().is_some() {
        rb = rb.header(SPLIT, c.probe_key.as_str());
    }
    if let Some(EndpointId(id)) = parts.extensions.get::<EndpointId>() {
        rb = rb.header(ENDPOINT_ID, format!("{} {id}", c.probe_key));
    }
    // A verify reads a partition's whole log: give it longer than a write.
    if parts.uri.path() == "/v1/audit/verify" {
        rb = rb.timeout(VERIFY_TIMEOUT);
    }
    let rb = rb.body(body);
    match rb.send().await {
        Ok(r) => {
            let status = r.status();
            let headers = r.headers().clone();
            match r.bytes().await {
                Ok(b) => {
                    let mut resp = Response::new(Body::from(b));
                    *resp.status_mut() = status;
                    copy_headers(&headers, resp.headers_mut());
                    resp
                }
                Err(e) => unavailable(
                    partition,
                    format!("partition {partition}'s owner broke off its answer: {e}; retry (an idempotent write may have landed)"),
                ),
            }
        }
        Err(e) => unavailable(
            partition,
            format!("partition {partition}'s owner {owner} did not answer ({e}); retry"),
        ),
    }
}

fn hop_by_hop(k: &HeaderName) -> bool {
    matches!(
        k.as_str(),
        "host" | "connection" | "content-length" | "transfer-encoding" | "keep-alive" | "upgrade"
    )
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (k, v) in from {
        if !hop_by_hop(k) {
            to.append(k.clone(), v.clone());
        }
    }
}

async fn ready(c: &Cluster) -> Response {
    let held = c.held();
    let mut local_ready = true;
    for p in &held {
        if let Some(r) = c.router(*p) {
            let req = Request::get("/readyz")
                .body(Body::empty())
                .unwrap_or_default();
            let Ok(resp) = r.oneshot(req).await;
            local_ready &= resp.status() == StatusCode::OK;
        }
    }
    if c.complete() && local_ready {
        axum::Json(serde_json::json!({"status": "ready", "node": c.node, "partitions": held}))
            .into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!(
                "node {:?}: {} (holding {held:?})",
                c.node,
                if c.complete() {
                    "a held partition is still loading"
                } else {
                    "a partition has no owner yet"
                }
            ),
        )
        .into_response()
    }
}

async fn whole(req: Request) -> Result<(axum::http::request::Parts, Bytes), Response> {
    let (parts, body) = req.into_parts();
    match axum::body::to_bytes(body, crate::MAX_BODY_BYTES).await {
        Ok(b) => Ok((parts, b)),
        Err(_) => Err(too_large()),
    }
}

fn clone_parts(p: &axum::http::request::Parts) -> axum::http::request::Parts {
    let mut req = Request::builder()
        .method(p.method.clone())
        .uri(p.uri.clone())
        .body(())
        .unwrap_or_default();
    *req.headers_mut() = p.headers.clone();
    req.into_parts().0
}

async fn collect(resp: Response) -> (StatusCode, HeaderMap, Bytes) {
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    (parts.status, parts.headers, bytes)
}

fn rebuild(status: StatusCode, headers: &HeaderMap, body: Bytes) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    copy_headers(headers, resp.headers_mut());
    resp
}

/// `POST /v1/clock`: every partition's clock moves, in partition order;
/// the first refusal is the answer (the partitions before it moved: the
/// clock only goes forward, so the same request again finishes the rest).
async fn everywhere(c: &Cluster, req: Request) -> Response {
    let (parts, body) = match whole(req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let mut last = None;
    for p in 0..c.partitions {
        let (status, headers, bytes) =
            collect(send(c, p, clone_parts(&parts), body.clone(), false).await).await;
        if !status.is_success() {
            return rebuild(status, &headers, bytes);
        }
        last = Some((status, headers, bytes));
    }
    match last {
        Some((s, h, b)) => rebuild(s, &h, b),
        None => unavailable(HOME, "the cluster has no partitions".into()),
    }
}

/// `GET /v1/accounts`: the same page asked of every partition, merged in
/// id order.
async fn accounts(c: &Cluster, req: Request) -> Response {
    let (parts, body) = match whole(req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let limit = parts
        .uri
        .query()
        .and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("limit="))
                .and_then(|v| v.parse::<usize>().ok())
        })
        .unwrap_or(100);
    let mut all: Vec<serde_json::Value> = Vec::new();
    let mut more = false;
    let mut first = None;
    for p in 0..c.partitions {
        let (status, headers, bytes) =
            collect(send(c, p, clone_parts(&parts), body.clone(), false).await).await;
        if !status.is_success() {
            return rebuild(status, &headers, bytes);
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            return rebuild(status, &headers, bytes);
        };
        more |= v.get("next_after").is_some_and(|n| !n.is_null());
        if let Some(a) = v.get("accounts").and_then(|a| a.as_array()) {
            all.extend(a.iter().cloned());
        }
        first.get_or_insert((v, headers));
    }
    let Some((mut page, headers)) = first else {
        return unavailable(HOME, "the cluster has no partitions".into());
    };
    let id = |v: &serde_json::Value| {
        v.get("id")
            .and_then(|i| i.as_str())
            .unwrap_or("")
            .to_string()
    };
    all.sort_by_key(id);
    more |= all.len() > limit;
    all.truncate(limit);
    let next = if more { all.last().map(id) } else { None };
    page["accounts"] = serde_json::Value::Array(all);
    page["next_after"] = next.map_or(serde_json::Value::Null, serde_json::Value::String);
    rebuild(
        StatusCode::OK,
        &headers,
        Bytes::from(serde_json::to_vec(&page).unwrap_or_default()),
    )
}

/// `POST /v1/usage`, `POST /v1/usage/cancellations`: one partition's
/// events go as they came; a batch over several is split, sent in
/// parallel, and its results put back in the order of the request (the
/// counts summed). A partition that refuses as a whole (401, 503…) makes
/// that the answer; the others' events may have landed, and the same batch
/// again is answered `duplicate` for them.
async fn split(c: &Cluster, req: Request) -> Response {
    let (parts, body) = match whole(req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    // The same door as the partition's: a duplicate key or card data is
    // refused before the body is taken apart (a re-serialised part would
    // have lost the duplicate).
    if let Err(e) = crate::guard::scan_json(&body) {
        return e.into_response();
    }
    let events = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|mut v| v.get_mut("events").map(serde_json::Value::take))
        .and_then(|e| match e {
            serde_json::Value::Array(a) => Some(a),
            _ => None,
        });
    let Some(events) = events else {
        // Not a batch: the home partition answers why.
        return send(c, HOME, parts, body, false).await;
    };
    let of = |e: &serde_json::Value| {
        e.get("account_id")
            .and_then(|a| a.as_str())
            .map_or(HOME, |a| partition_of(a, c.partitions))
    };
    let first = events.first().map_or(HOME, of);
    if events.len() > accrue_ledger::MAX_BATCH_EVENTS || events.iter().all(|e| of(e) == first) {
        return send(c, first, parts, body, false).await;
    }
    let mut groups: std::collections::BTreeMap<u32, (Vec<usize>, Vec<serde_json::Value>)> =
        Default::default();
    for (i, e) in events.into_iter().enumerate() {
        let g = groups.entry(of(&e)).or_default();
        g.0.push(i);
        g.1.push(e);
    }
    let sends = groups.into_iter().map(|(p, (idx, evs))| {
        let sub = Bytes::from(
            serde_json::to_vec(&serde_json::json!({ "events": evs })).unwrap_or_default(),
        );
        let parts = clone_parts(&parts);
        async move { (idx, collect(send(c, p, parts, sub, false).await).await) }
    });
    let answers = futures_join_all(sends).await;
    let mut results: Vec<(usize, serde_json::Value)> = Vec::new();
    // The counts (`accepted`, `duplicate`, `rejected`, `cancelled`…) summed.
    let mut merged = serde_json::Map::new();
    let mut headers = HeaderMap::new();
    let mut status_all = StatusCode::OK;
    for (idx, (status, h, bytes)) in answers {
        if !status.is_success() {
            return rebuild(status, &h, bytes);
        }
        status_all = status;
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            return rebuild(status, &h, bytes);
        };
        for (k, n) in v.as_object().into_iter().flatten() {
            if let Some(n) = n.as_u64() {
                let sum = merged
                    .get(k)
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0)
                    + n;
                merged.insert(k.clone(), sum.into());
            }
        }
        for r in v
            .get("results")
            .and_then(|r| r.as_array())
            .into_iter()
            .flatten()
        {
            let local = r
                .get("index")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0) as usize;
            let mut r = r.clone();
            let at = idx.get(local).copied().unwrap_or(local);
            r["index"] = serde_json::Value::from(at);
            results.push((at, r));
        }
        headers = h;
    }
    headers.remove(PARTITION);
    results.sort_by_key(|(i, _)| *i);
    merged.insert(
        "results".into(),
        results
            .into_iter()
            .map(|(_, r)| r)
            .collect::<Vec<_>>()
            .into(),
    );
    let mut resp = rebuild(
        status_all,
        &headers,
        Bytes::from(serde_json::to_vec(&merged).unwrap_or_default()),
    );
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The partition a client pinned with the partition header, if any; a
/// header that names no partition of this cluster is refused.
fn pinned_partition(headers: &HeaderMap, partitions: u32) -> Result<Option<u32>, ApiError> {
    let Some(v) = headers.get(PARTITION) else {
        return Ok(None);
    };
    match v.to_str().ok().and_then(|v| v.trim().parse::<u32>().ok()) {
        Some(p) if p < partitions => Ok(Some(p)),
        _ => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_partition",
            format!("{PARTITION} must name a partition 0..{partitions}"),
        )),
    }
}

/// `GET|POST /v1/audit/verify`, `GET /v1/audit/trial-balance`,
/// `GET /v1/dunning`: asked of every partition at once and merged. Any
/// partition that cannot answer makes that the answer: an auditor never
/// gets a partial "ok".
async fn merged(c: &Cluster, req: Request) -> Response {
    let (parts, body) = match whole(req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let path = parts.uri.path().to_string();
    // An anchor signs one partition's log. The cluster's anchor
    // (`GET /v1/audit/anchor`) carries every partition's under
    // `partitions`: each partition checks its own. A single anchor is the
    // home partition's (a pinned request never comes here); the others
    // then verify their chains without one.
    let bodies = match anchor_bodies(c, &parts, &body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let body_of = |p: u32| {
        bodies
            .as_ref()
            .map_or_else(|| body.clone(), |b| b[p as usize].clone())
    };
    let mut pages = Vec::new();
    let mut headers = None;
    for (p, (status, h, bytes)) in ask_all(c, &parts, body_of).await {
        if !status.is_success() {
            return rebuild(status, &h, bytes);
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            return rebuild(status, &h, bytes);
        };
        pages.push((p, v));
        headers.get_or_insert(h);
    }
    let merged = match path.as_str() {
        "/v1/audit/verify" => Ok(merge_verify(&pages)),
        "/v1/audit/trial-balance" => merge_trial_balance(&pages),
        _ => merge_dunning(&pages),
    };
    let merged = match merged {
        Ok(m) => m,
        Err(e) => return e.into_response(),
    };
    let mut headers = headers.unwrap_or_default();
    headers.remove(PARTITION);
    let mut resp = rebuild(
        StatusCode::OK,
        &headers,
        Bytes::from(serde_json::to_vec(&merged).unwrap_or_default()),
    );
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// What each partition is asked to verify: `None` when the body goes to
/// every partition as it is (no anchor, or not a POST); else one body per
/// partition, each with that partition's anchor (or none).
fn anchor_bodies(
    c: &Cluster,
    parts: &axum::http::request::Parts,
    body: &Bytes,
) -> Result<Option<Vec<Bytes>>, ApiError> {
    use serde_json::Value;
    if parts.method != Method::POST {
        return Ok(None);
    }
    let Some(anchor) = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|mut v| v.get_mut("anchor").map(Value::take))
        .filter(|a| !a.is_null())
    else {
        return Ok(None);
    };
    let empty = Bytes::from_static(b"{}");
    let Some(each) = anchor.get("partitions") else {
        // One partition's anchor: home's.
        let mut bodies = vec![empty; c.partitions as usize];
        bodies[HOME as usize] = body.clone();
        return Ok(Some(bodies));
    };
    let wrong = || {
        ApiError::unprocessable(format!(
            "anchor.partitions must hold one anchor for each partition 0..{} (as GET /v1/audit/anchor gives it)",
            c.partitions
        ))
    };
    let each = each.as_array().ok_or_else(wrong)?;
    let mut bodies = vec![None; c.partitions as usize];
    for a in each {
        let p = a
            .get("partition")
            .and_then(Value::as_u64)
            .filter(|p| *p < u64::from(c.partitions))
            .ok_or_else(wrong)? as usize;
        let mut a = a.clone();
        if let Some(o) = a.as_object_mut() {
            o.remove("partition");
        }
        let b = serde_json::to_vec(&serde_json::json!({ "anchor": a })).map_err(|_| wrong())?;
        if bodies[p].replace(Bytes::from(b)).is_some() {
            return Err(wrong());
        }
    }
    bodies
        .into_iter()
        .map(|b| b.ok_or_else(wrong))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// `GET /v1/audit/anchor`: the home partition's anchor (its fields, so a
/// single-partition client reads it as before), with every partition's
/// under `partitions`, each with its `partition`. Posting it back to
/// `POST /v1/audit/verify` checks each partition against its own.
async fn anchors_everywhere(c: &Cluster, req: Request) -> Response {
    use serde_json::Value;
    let (parts, body) = match whole(req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let mut each = Vec::new();
    let mut first: Option<(HeaderMap, Value)> = None;
    for (p, (status, h, bytes)) in ask_all(c, &parts, |_| body.clone()).await {
        if !status.is_success() {
            return rebuild(status, &h, bytes);
        }
        let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
            return rebuild(status, &h, bytes);
        };
        let mut own = v.clone();
        own["partition"] = Value::from(p);
        each.push(own);
        first.get_or_insert((h, v));
    }
    let Some((mut headers, mut anchor)) = first else {
        return unavailable(HOME, "the cluster has no partitions".into());
    };
    anchor["partitions"] = Value::Array(each);
    headers.remove(PARTITION);
    rebuild(
        StatusCode::OK,
        &headers,
        Bytes::from(serde_json::to_vec(&anchor).unwrap_or_default()),
    )
}

/// Every partition's chain: `ok` when all are, counts summed, `head_hash`
/// the SHA-256 of the partitions' heads (`"{p}:{head_hash}\n"` in partition
/// order), the first break named with its partition, and each partition's
/// own report in `partitions`.
fn merge_verify(pages: &[(u32, serde_json::Value)]) -> serde_json::Value {
    use serde_json::Value;
    let (mut ok, mut events, mut streams) = (true, 0u64, 0u64);
    let mut head_position: Option<u64> = None;
    let mut anchor_ok = None;
    let mut first_broken = Value::Null;
    let mut heads = Sha256::new();
    let mut each = Vec::new();
    for (p, v) in pages {
        ok &= v.get("ok").and_then(Value::as_bool).unwrap_or(false);
        events += v.get("events").and_then(Value::as_u64).unwrap_or(0);
        streams += v.get("streams").and_then(Value::as_u64).unwrap_or(0);
        if let Some(h) = v.get("head_position").and_then(Value::as_u64) {
            *head_position.get_or_insert(0) += h;
        }
        // Held only if every anchor given held.
        if let Some(a) = v.get("anchor_ok") {
            anchor_ok = match (anchor_ok.take(), a.as_bool()) {
                (Some(Value::Bool(before)), Some(now)) => Some(Value::Bool(before && now)),
                (None | Some(Value::Null), Some(now)) => Some(Value::Bool(now)),
                (before, None) => before.or(Some(Value::Null)),
                (Some(before), Some(_)) => Some(before),
            };
        }
        if first_broken.is_null() {
            if let Some(b) = v.get("first_broken").filter(|b| b.is_object()) {
                first_broken = b.clone();
                first_broken["partition"] = Value::from(*p);
            }
        }
        let head = v.get("head_hash").and_then(Value::as_str).unwrap_or("");
        heads.update(format!("{p}:{head}\n").as_bytes());
        let mut own = v.clone();
        own["partition"] = Value::from(*p);
        each.push(own);
    }
    let mut out = serde_json::json!({
        "ok": ok,
        "events": events,
        "streams": streams,
        "head_hash": hex::encode(heads.finalize()),
        "first_broken": first_broken,
        "partitions": each,
    });
    if let Some(h) = head_position {
        out["head_position"] = Value::from(h);
    }
    if let Some(a) = anchor_ok {
        out["anchor_ok"] = a;
    }
    out
}

fn money_of(v: &serde_json::Value, field: &str) -> Result<rust_decimal::Decimal, ApiError> {
    v.get(field)
        .and_then(serde_json::Value::as_str)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ApiError::internal(format!("a partition's {field} is not an amount")))
}

/// The partitions' trial balances added up, ledger account by ledger
/// account: balanced when the sums are (and every partition was).
fn merge_trial_balance(pages: &[(u32, serde_json::Value)]) -> Result<serde_json::Value, ApiError> {
    use rust_decimal::Decimal;
    use serde_json::Value;
    let show = |d: Decimal| Value::String(accrue_core::money::display(d));
    // (account, kind, debits, credits), in the order first seen.
    let mut rows: Vec<(String, Value, Decimal, Decimal)> = Vec::new();
    let mut every_balanced = true;
    for (_, v) in pages {
        every_balanced &= v.get("balanced").and_then(Value::as_bool).unwrap_or(false);
        for r in v
            .get("accounts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = r.get("account").and_then(Value::as_str).unwrap_or("");
            let (d, c) = (money_of(r, "debits")?, money_of(r, "credits")?);
            match rows.iter_mut().find(|row| row.0 == name) {
                Some(row) => {
                    row.2 += d;
                    row.3 += c;
                }
                None => rows.push((
                    name.to_string(),
                    r.get("kind").cloned().unwrap_or(Value::Null),
                    d,
                    c,
                )),
            }
        }
    }
    let total_debits: Decimal = rows.iter().map(|r| r.2).sum();
    let total_credits: Decimal = rows.iter().map(|r| r.3).sum();
    let mut out = serde_json::json!({
        "accounts": rows.iter().map(|(name, kind, d, c)| serde_json::json!({
            "account": name, "kind": kind, "debits": show(*d), "credits": show(*c),
            "balance": show(*d - *c),
        })).collect::<Vec<_>>(),
        "total_debits": show(total_debits),
        "total_credits": show(total_credits),
        "balanced": every_balanced && total_debits == total_credits,
    });
    if let Some(a) = pages.first().and_then(|(_, v)| v.get("as_of")) {
        out["as_of"] = a.clone();
    }
    Ok(out)
}

/// Every partition's due retries in one list, by due time then invoice.
fn merge_dunning(pages: &[(u32, serde_json::Value)]) -> Result<serde_json::Value, ApiError> {
    use serde_json::Value;
    let mut retries: Vec<(chrono::DateTime<chrono::Utc>, String, Value)> = Vec::new();
    for (_, v) in pages {
        for r in v
            .get("retries")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let due = r
                .get("due_at")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| ApiError::internal("a partition's retry has no due_at"))?;
            let invoice = r.get("invoice").and_then(Value::as_str).unwrap_or("");
            retries.push((due, invoice.to_string(), r.clone()));
        }
    }
    retries.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    Ok(serde_json::json!({
        "now": pages.first().and_then(|(_, v)| v.get("now")).cloned().unwrap_or(Value::Null),
        "retries": retries.into_iter().map(|r| r.2).collect::<Vec<_>>(),
    }))
}

/// `POST /api/v1/events`: CloudEvents routed by `subject` (the account),
/// like a usage batch. A batch over several partitions is split (each part
/// asked for its results with the split header), sent in parallel and
/// answered as one: 204 when every event was accepted or a duplicate, else
/// the problem with every event's result in the request's order.
async fn split_cloudevents(c: &Cluster, req: Request) -> Response {
    use serde_json::Value;
    let (parts, body) = match whole(req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let of = |subject: Option<&str>| subject.map_or(HOME, |a| partition_of(a, c.partitions));
    // The same reading of the request as the partition's (`events_of`).
    let mime = crate::integrations_routes::mime_of(&parts.headers);
    let batch_type = match mime.as_str() {
        "application/cloudevents-batch+json" => true,
        // Binary mode: the attributes are headers, the body is the data.
        "application/json" if parts.headers.contains_key("ce-id") => {
            let p = of(parts
                .headers
                .get("ce-subject")
                .and_then(|v| v.to_str().ok()));
            return send(c, p, parts, body, false).await;
        }
        "application/json" => false,
        // One structured event, or a type the partition refuses.
        _ => {
            let p = serde_json::from_slice::<Value>(&body)
                .ok()
                .map_or(HOME, |v| of(v.get("subject").and_then(Value::as_str)));
            return send(c, p, parts, body, false).await;
        }
    };
    let events = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Array(a)) => a,
        Ok(Value::Object(o)) if !batch_type => {
            let p = of(o.get("subject").and_then(Value::as_str));
            return send(c, p, parts, body, false).await;
        }
        // Not JSON, or not a batch: the home partition answers why.
        _ => return send(c, HOME, parts, body, false).await,
    };
    let subject_of = |e: &Value| of(e.get("subject").and_then(Value::as_str));
    let first = events.first().map_or(HOME, subject_of);
    if events.len() > crate::integrations_routes::MAX_BATCH
        || events.iter().all(|e| subject_of(e) == first)
    {
        return send(c, first, parts, body, false).await;
    }
    // As in `split`: a duplicate key or card data is refused before the
    // body is taken apart.
    if let Err(e) = crate::guard::scan_json(&body) {
        return e.into_response();
    }
    let mut groups: std::collections::BTreeMap<u32, (Vec<usize>, Vec<Value>)> = Default::default();
    for (i, e) in events.into_iter().enumerate() {
        let g = groups.entry(subject_of(&e)).or_default();
        g.0.push(i);
        g.1.push(e);
    }
    let sends = groups.into_iter().map(|(p, (idx, evs))| {
        let sub = Bytes::from(serde_json::to_vec(&Value::Array(evs)).unwrap_or_default());
        let mut parts = clone_parts(&parts);
        parts.extensions.insert(Split);
        async move { (idx, collect(send(c, p, parts, sub, false).await).await) }
    });
    let (mut accepted, mut duplicate, mut rejected) = (0usize, 0usize, 0usize);
    let mut results: Vec<(usize, Value)> = Vec::new();
    for (idx, (status, h, bytes)) in futures_join_all(sends).await {
        // A part refused as a whole (401, 413, 503…) is the answer; the
        // other parts' events may have landed, and the same batch again is
        // answered `duplicate` for them.
        if !status.is_success() {
            return rebuild(status, &h, bytes);
        }
        // A part must answer its results: a bare 204 would hide what the
        // other parts refused.
        let parsed = (status == StatusCode::OK)
            .then(|| serde_json::from_slice::<Value>(&bytes).ok())
            .flatten()
            .filter(|v| v.get("results").is_some_and(Value::is_array));
        let Some(v) = parsed else {
            return ApiError::new(
                StatusCode::BAD_GATEWAY,
                "partition_answer",
                format!("a partition answered a part of the batch {status} without its results; the same batch again is answered duplicate for what landed"),
            )
            .into_response();
        };
        let count = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0) as usize;
        accepted += count("accepted");
        duplicate += count("duplicate");
        rejected += count("rejected");
        for r in v
            .get("results")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let local = r.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
            let at = idx.get(local).copied().unwrap_or(local);
            let mut r = r.clone();
            r["index"] = Value::from(at);
            results.push((at, r));
        }
    }
    results.sort_by_key(|(i, _)| *i);
    crate::integrations_routes::cloudevents_answer(
        accepted,
        duplicate,
        rejected,
        results.into_iter().map(|(_, r)| r).collect(),
    )
}

/// The same request asked of every partition at once (each with the body
/// `body_of` gives it), the answers in partition order.
async fn ask_all(
    c: &Cluster,
    parts: &axum::http::request::Parts,
    body_of: impl Fn(u32) -> Bytes,
) -> Vec<(u32, (StatusCode, HeaderMap, Bytes))> {
    let sends = (0..c.partitions).map(|p| {
        let (parts, body) = (clone_parts(parts), body_of(p));
        async move { (p, collect(send(c, p, parts, body, false).await).await) }
    });
    futures_join_all(sends).await
}

/// Runs the futures concurrently on this task and collects their outputs
/// in order (the few partitions of one batch; no spawn, no extra crate).
async fn futures_join_all<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futs.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(move |cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(out.iter_mut().filter_map(Option::take).collect())
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_spread() {
        // Fixed for the life of a cluster: these values must never change.
        assert_eq!(partition_of("acme", 3), partition_of("acme", 3));
        let mut n = [0usize; 3];
        for i in 0..3000 {
            n[partition_of(&format!("acct-{i}"), 3) as usize] += 1;
        }
        assert!(n.iter().all(|c| *c > 800), "{n:?}");
        assert_eq!(partition_of("anything", 1), 0);
    }

    #[test]
    fn metrics_of_two_partitions_are_one_exposition() {
        let a = "# HELP x_total Things.\n# TYPE x_total counter\nx_total 3\n# HELP y A gauge.\n# TYPE y gauge\ny{name=\"pdf\"} 1\ny{} 2\n# EOF\n";
        let b = "# HELP x_total Things.\n# TYPE x_total counter\nx_total 5\n# HELP y A gauge.\n# TYPE y gauge\ny{name=\"pdf\"} 7\n";
        let mut f = Vec::new();
        relabel_into(a, 0, &mut f);
        relabel_into(b, 2, &mut f);
        let text: Vec<String> = f
            .into_iter()
            .flat_map(|(_, m, s)| m.into_iter().chain(s))
            .collect();
        assert_eq!(
            text,
            [
                "# HELP x_total Things.",
                "# TYPE x_total counter",
                "x_total{partition=\"0\"} 3",
                "x_total{partition=\"2\"} 5",
                "# HELP y A gauge.",
                "# TYPE y gauge",
                "y{partition=\"0\",name=\"pdf\"} 1",
                "y{partition=\"0\"} 2",
                "y{partition=\"2\",name=\"pdf\"} 7",
            ]
        );
    }

    #[test]
    fn numbers_name_their_partition() {
        assert_eq!(partition_of_number("INV-2026-02-000017", 3), Some(2));
        assert_eq!(partition_of_number("CN-2026-00-000001", 3), Some(0));
        assert_eq!(partition_of_number("INV-2026-07-000001", 3), None);
        assert_eq!(partition_of_number("INV-2026-000001", 3), None);
        assert_eq!(partition_of_number("INV-2026-0x-000001", 3), None);
        assert_eq!(by_path("/v1/invoices/INV-2026-01-000003/pdf", 3), Some(1));
        assert_eq!(
            by_path("/v1/accounts/ac%6De/plan", 3),
            Some(partition_of("acme", 3))
        );
        assert_eq!(by_path("/v1/tokens", 3), None);
    }
}
