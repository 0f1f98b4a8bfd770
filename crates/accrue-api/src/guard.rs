//! The door every write passes: one middleware over every POST, PUT, PATCH
//! and DELETE, run before any handler parses a body into a command.
//!
//! In order, each step cheap and bounded:
//! 1. the path decodes to UTF-8 (else 400) and is not longer than a limit (414);
//! 2. a token is present and valid (401) and its role may write to this
//!    route at all (403), so a wrong role never learns the body's schema;
//! 3. a body is JSON by its `Content-Type` (415) and within the size limit (413);
//! 4. one linear pass over the body (serde_json's tokenizer, nothing built):
//!    syntax (400), duplicate keys, over-long strings, control characters
//!    and card data in any key or value at any depth (422), card data in
//!    the path and query (422).
//!
//! The scan decodes JSON escapes first (`"\u0034\u0032…"` is seen as
//! digits), so an escaped card number is found like a plain one.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use tokio::sync::Semaphore;

use crate::auth::{Principal, Role};
use crate::error::ApiError;
use crate::AppState;

/// Longest string (key or value) accepted anywhere in a body, in bytes. The
/// longest documented field (an address, a metadata object's values) is far
/// shorter; the limit bounds the work any one string can cause.
pub const MAX_STRING_BYTES: usize = 16 * 1024;
/// Longest request target (path and query) accepted.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Bodies larger than this are scanned on a blocking thread, not an async worker.
const SCAN_INLINE_BYTES: usize = 64 * 1024;
/// Requests handled at once, all routes together; above it → 503 + Retry-After.
pub const MAX_CONCURRENT_REQUESTS: usize = 1024;
/// Longest a request may take before it is answered 503.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Panics caught and answered 500 since start (`accrue_http_panics_total`).
pub static PANICS: AtomicU64 = AtomicU64::new(0);

/// Why a body or path was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    CardNumber { field: String },
    Cvc { field: String },
    ControlCharacter { field: String },
    DuplicateKey { key: String },
    TooLong { field: String },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::CardNumber { field } => write!(
                f,
                "{field} contains a card number: send the processor's card token, never a card number"
            ),
            Refusal::Cvc { field } => write!(
                f,
                "{field} contains a card verification code (CVC): it is never accepted"
            ),
            Refusal::ControlCharacter { field } => {
                write!(f, "{field} contains a control or bidirectional-override character")
            }
            Refusal::DuplicateKey { key } => write!(f, "the key {key:?} appears twice in one object"),
            Refusal::TooLong { field } => {
                write!(f, "{field} is longer than {MAX_STRING_BYTES} bytes")
            }
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        let reason = match &r {
            Refusal::CardNumber { .. } | Refusal::Cvc { .. } => "card_data_refused",
            Refusal::ControlCharacter { .. } => "control_character",
            Refusal::DuplicateKey { .. } => "duplicate_key",
            Refusal::TooLong { .. } => "field_too_long",
        };
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, reason, r.to_string())
    }
}

// ------------------------------------------------------------ card numbers

/// The digit a character stands for: ASCII or full-width (U+FF10–FF19).
fn digit(c: char) -> Option<u8> {
    match c {
        '0'..='9' => Some(c as u8 - b'0'),
        '\u{ff10}'..='\u{ff19}' => Some((c as u32 - 0xff10) as u8),
        _ => None,
    }
}

/// Characters that may sit between the digits of a written card number.
fn separator(c: char) -> bool {
    matches!(
        c,
        ' ' | '\t' | '-' | '.' | '/' | '_' | '\u{a0}' | '\u{3000}' | '\u{2010}'..='\u{2015}'
    )
}

/// At most this many separators in a row still join two digit groups.
const MAX_SEPARATOR_RUN: usize = 3;

/// Luhn-doubles a digit.
const fn doubled(d: u8) -> u32 {
    let v = d as u32 * 2;
    if v > 9 {
        v - 9
    } else {
        v
    }
}

fn luhn_sum(digits: &[u8]) -> u32 {
    digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| if i % 2 == 1 { doubled(d) } else { u32::from(d) })
        .sum()
}

/// True when the run holds a card number: a span of 13–19 digits between
/// group boundaries (`bounds`: where a separator split the digits, plus
/// both ends) passes Luhn, or, in a run longer than 19 digits, any 13–19
/// digit window does; either starting with a non-zero digit (no issuer
/// number starts with 0). Linear: few spans per boundary, and prefix sums
/// by index parity make each window of a long run O(1).
fn run_has_pan(run: &[u8], bounds: &[usize]) -> bool {
    if run.len() < 13 {
        return false;
    }
    for (i, &a) in bounds.iter().enumerate() {
        for &b in &bounds[i + 1..] {
            if b - a > 19 {
                break;
            }
            if b - a >= 13 && run[a] != 0 && luhn_sum(&run[a..b]).is_multiple_of(10) {
                return true;
            }
        }
    }
    if run.len() <= 19 {
        return false;
    }
    // A longer run may hide a card number anywhere inside.
    // plain[p][i]: sum of undoubled digits at indices < i with parity p;
    // dbl[p][i]: the same for doubled digits.
    let n = run.len();
    let mut plain = [vec![0u32; n + 1], vec![0u32; n + 1]];
    let mut dbl = [vec![0u32; n + 1], vec![0u32; n + 1]];
    for (i, &d) in run.iter().enumerate() {
        for p in 0..2 {
            plain[p][i + 1] = plain[p][i];
            dbl[p][i + 1] = dbl[p][i];
        }
        plain[i % 2][i + 1] += u32::from(d);
        dbl[i % 2][i + 1] += doubled(d);
    }
    for end in 12..n {
        // Digits with the end's parity are undoubled (rightmost is position 1).
        let pe = end % 2;
        let po = 1 - pe;
        for len in 13..=19usize {
            if len > end + 1 {
                break;
            }
            let start = end + 1 - len;
            if run[start] == 0 {
                continue;
            }
            let sum = plain[pe][end + 1] - plain[pe][start] + dbl[po][end + 1] - dbl[po][start];
            if sum.is_multiple_of(10) {
                return true;
            }
        }
    }
    false
}

/// Finds a card number in text: 13–19 digits (ASCII or full-width), with
/// up to [`MAX_SEPARATOR_RUN`] separators (space, tab, `-`, `.`, `/`, `_`)
/// between digits, passing Luhn. Linear in the text's length.
pub fn contains_pan(text: &str) -> bool {
    let mut run: Vec<u8> = Vec::new();
    let mut bounds: Vec<usize> = vec![0];
    let mut seps = 0usize;
    let end_run = |run: &mut Vec<u8>, bounds: &mut Vec<usize>| -> bool {
        bounds.push(run.len());
        let found = run_has_pan(run, bounds);
        run.clear();
        bounds.clear();
        bounds.push(0);
        found
    };
    for c in text.chars() {
        if let Some(d) = digit(c) {
            if seps > 0 {
                bounds.push(run.len());
            }
            run.push(d);
            seps = 0;
        } else if separator(c) && !run.is_empty() && seps < MAX_SEPARATOR_RUN {
            seps += 1;
        } else {
            if end_run(&mut run, &mut bounds) {
                return true;
            }
            seps = 0;
        }
    }
    end_run(&mut run, &mut bounds)
}

// ------------------------------------------------------------ CVC

/// A key that can only name a card verification code, after lowercasing
/// and dropping everything but letters and digits (`card_cvc`, `CVV2`,
/// `security-code`, `cardSecurityCode`).
pub fn is_cvc_key(key: &str) -> bool {
    let k: String = key
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    const EXACT: [&str; 4] = ["cid", "csc", "cvn", "cav2"];
    const SUFFIX: [&str; 8] = [
        "cvc",
        "cvv",
        "cvc2",
        "cvv2",
        "securitycode",
        "verificationcode",
        "cardverification",
        "verificationvalue",
    ];
    EXACT.contains(&k.as_str()) || SUFFIX.iter().any(|s| k.ends_with(s))
}

/// Text such as `cvc: 123`, `CVV 123`, `cvc2=1234`, `security code 123`:
/// a CVC word, at most three separators, then 3–4 digits and no more.
pub fn contains_cvc_text(text: &str) -> bool {
    let lower: Vec<char> = text.chars().map(|c| c.to_ascii_lowercase()).collect();
    const WORDS: [&str; 5] = ["cvc", "cvv", "csc", "cvn", "security code"];
    for i in 0..lower.len() {
        if i > 0 && lower[i - 1].is_alphanumeric() {
            continue;
        }
        for w in WORDS {
            let wl = w.chars().count();
            if lower.len() < i + wl || !lower[i..i + wl].iter().copied().eq(w.chars()) {
                continue;
            }
            let mut j = i + wl;
            if lower.get(j) == Some(&'2') {
                j += 1;
            }
            let mut seps = 0;
            while j < lower.len()
                && seps < 3
                && matches!(lower[j], ' ' | '\t' | ':' | '=' | '#' | '-' | '\u{3000}')
            {
                j += 1;
                seps += 1;
            }
            let digits = lower[j..]
                .iter()
                .take_while(|c| digit(**c).is_some())
                .count();
            if (3..=4).contains(&digits) {
                return true;
            }
        }
    }
    false
}

// ------------------------------------------------------------ control characters

/// C0 controls (tab, newline and carriage return excepted), DEL, C1, and
/// the bidirectional overrides and isolates that make text read other than
/// it is stored.
pub fn forbidden_anywhere(c: char) -> bool {
    (c < ' ' && !matches!(c, '\t' | '\n' | '\r'))
        || ('\u{7f}'..='\u{9f}').contains(&c)
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// For ids, names and references: also no tab or line break.
pub fn forbidden_in_line(c: char) -> bool {
    c.is_control() || forbidden_anywhere(c)
}

/// Checks one string of a request; `field` names it in the refusal.
pub fn check_str(field: &dyn Fn() -> String, s: &str, is_key: bool) -> Result<(), Refusal> {
    check_str_in(field, s, is_key, false)
}

/// [`check_str`]; `ours`: the value is an identifier accrue generated, in
/// the field it is sent back in ([`generated_identifier`]), so its digits
/// are not taken for a card number.
fn check_str_in(
    field: &dyn Fn() -> String,
    s: &str,
    is_key: bool,
    ours: bool,
) -> Result<(), Refusal> {
    if s.len() > MAX_STRING_BYTES {
        return Err(Refusal::TooLong { field: field() });
    }
    // Card data first: it is the refusal that matters most to report.
    if !ours && contains_pan(s) {
        return Err(Refusal::CardNumber { field: field() });
    }
    if contains_cvc_text(s) {
        return Err(Refusal::Cvc { field: field() });
    }
    let bad = if is_key {
        s.chars().any(forbidden_in_line)
    } else {
        s.chars().any(forbidden_anywhere)
    };
    if bad {
        return Err(Refusal::ControlCharacter { field: field() });
    }
    Ok(())
}

/// Whether `s`, in a field named `field`, is exactly an identifier accrue
/// generated and a client sends back: a serial number (`ACR-` and four
/// groups of four hex digits), a control number (four groups of five
/// Crockford base-32 characters, a letter among them), a document number
/// (`INV-2026-000042`, `CN-2026-01-000042`) or a SHA-256 hex digest (an
/// anchor's `head_hash`). Their digits can line up as a Luhn-valid run
/// (about one random serial in 1,500, one digest in 175), and the guard
/// would refuse the request that names them for ever. Only the exact
/// shape in its own field is let through: a card number typed anywhere
/// else, or in any other shape, is still refused.
pub fn generated_identifier(field: &str, s: &str) -> bool {
    if !matches!(
        field,
        "serial_number" | "control_number" | "invoice_number" | "accrue_invoice" | "head_hash"
    ) {
        // Every other string of every body: no work beyond this.
        return false;
    }
    let groups: Vec<&str> = s.split('-').collect();
    let hex_upper = |g: &str| {
        g.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
    };
    let digits = |g: &str| !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit());
    match field {
        "serial_number" => {
            groups.len() == 5
                && groups[0] == "ACR"
                && groups[1..].iter().all(|g| g.len() == 4 && hex_upper(g))
        }
        "control_number" => {
            const CROCKFORD: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
            groups.len() == 4
                && groups
                    .iter()
                    .all(|g| g.len() == 5 && g.bytes().all(|b| CROCKFORD.contains(&b)))
                && s.bytes().any(|b| b.is_ascii_uppercase())
        }
        "invoice_number" | "accrue_invoice" => {
            matches!(groups.first(), Some(&"INV") | Some(&"CN"))
                && (groups.len() == 3 || groups.len() == 4)
                && groups[1].len() == 4
                && digits(groups[1])
                && (groups.len() == 3 || (groups[2].len() == 2 && digits(groups[2])))
                && groups.last().is_some_and(|g| g.len() >= 6 && digits(g))
        }
        "head_hash" => {
            s.len() == 64
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        }
        _ => false,
    }
}

// ------------------------------------------------------------ the JSON scan

/// Where in the body a string sits, for the refusal's message.
#[derive(Clone)]
struct Pointer(Arc<Vec<String>>);

impl Pointer {
    fn root() -> Self {
        Pointer(Arc::new(Vec::new()))
    }
    fn child(&self, key: &str) -> Self {
        let mut v = (*self.0).clone();
        // Never echo a refused key in full.
        v.push(key.chars().take(40).collect());
        Pointer(Arc::new(v))
    }
    fn last(&self) -> &str {
        self.0.last().map_or("", String::as_str)
    }
    fn show(&self) -> String {
        if self.0.is_empty() {
            "the body".to_string()
        } else {
            format!("field {:?}", self.0.join("."))
        }
    }
}

/// Walks one JSON value without building it.
struct Scan<'a> {
    at: Pointer,
    refusal: &'a mut Option<Refusal>,
}

fn fail<E: de::Error>(slot: &mut Option<Refusal>, r: Refusal) -> E {
    let msg = r.to_string();
    *slot = Some(r);
    E::custom(msg)
}

impl<'de> DeserializeSeed<'de> for Scan<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Scan<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.visit_str(&v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.visit_str(&v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        // A large card number sent as a JSON number parses as a float.
        if v.is_finite() && v.fract() == 0.0 && v.abs() >= 1e12 && v.abs() < 1e20 {
            return self.visit_str(&format!("{v:.0}"));
        }
        Ok(())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        let at = &self.at;
        let ours = generated_identifier(at.last(), v);
        check_str_in(&|| at.show(), v, false, ours).map_err(|r| fail(self.refusal, r))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0usize;
        loop {
            let at = self.at.child(&i.to_string());
            let next = seq.next_element_seed(Scan {
                at,
                refusal: &mut *self.refusal,
            })?;
            if next.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen: HashSet<String> = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let at = self.at.child(&key);
            if is_cvc_key(&key) {
                return Err(fail(self.refusal, Refusal::Cvc { field: at.show() }));
            }
            check_str(&|| at.show(), &key, true).map_err(|r| fail(self.refusal, r))?;
            if !seen.insert(key.clone()) {
                return Err(fail(
                    self.refusal,
                    Refusal::DuplicateKey {
                        key: key.chars().take(40).collect(),
                    },
                ));
            }
            map.next_value_seed(Scan {
                at,
                refusal: &mut *self.refusal,
            })?;
        }
        Ok(())
    }
}

/// Scans a JSON body: syntax errors → 400, refusals → 422.
pub fn scan_json(bytes: &[u8]) -> Result<(), ApiError> {
    let mut refusal = None;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let result = DeserializeSeed::deserialize(
        Scan {
            at: Pointer::root(),
            refusal: &mut refusal,
        },
        &mut de,
    )
    .and_then(|()| de.end());
    match (result, refusal) {
        (_, Some(r)) => Err(r.into()),
        (Ok(()), None) => Ok(()),
        (Err(e), None) => Err(ApiError::bad_request(format!("malformed JSON: {e}"))),
    }
}

// ------------------------------------------------------------ paths

/// Percent-decodes a path or query; `None` when it is not UTF-8 after
/// decoding or has a bad escape.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn is_write(m: &Method) -> bool {
    matches!(
        *m,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// Which write routes a role other than admin may call at all. Handlers
/// still check their roles; this only makes a wrong role a 403 before any
/// byte of the body is read.
fn may_write(role: Role, method: &Method, path: &str) -> bool {
    match role {
        Role::Admin => true,
        Role::Ingest => {
            (method == Method::POST
                && (path == "/v1/usage"
                    || path == "/v1/usage/cancellations"
                    || path == "/api/v1/events"))
                || (method == Method::PUT
                    && path.starts_with("/v1/accounts/")
                    && path.ends_with("/seats-in-use"))
        }
        Role::Auditor => method == Method::POST && path == "/v1/audit/verify",
        Role::Account => false,
        Role::Server => {
            (method == Method::DELETE && path == "/v1/activation")
                || (method == Method::PUT && path == "/v1/activation/sessions")
        }
    }
}

fn json_content_type(v: Option<&header::HeaderValue>) -> bool {
    let Some(v) = v.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mime = v
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// Checks the path and query of a request (every method): decodable, not
/// too long; and for writes free of card data and control characters.
fn check_target(method: &Method, uri: &axum::http::Uri) -> Result<(), ApiError> {
    let target = uri.path_and_query().map_or("", |p| p.as_str());
    if target.len() > MAX_URI_BYTES {
        return Err(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request target is longer than {MAX_URI_BYTES} bytes"),
        ));
    }
    let path = percent_decode(uri.path()).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_path",
            "the path is not valid percent-encoded UTF-8",
        )
    })?;
    if is_write(method) {
        check_str(&|| "the path".to_string(), &path, true)?;
        if let Some(q) = uri.query() {
            let q = percent_decode(&q.replace('+', " ")).ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "malformed_query",
                    "the query is not valid percent-encoded UTF-8",
                )
            })?;
            check_str(&|| "the query".to_string(), &q, true)?;
        }
    }
    Ok(())
}

/// The middleware (see the module's documentation).
pub async fn guard(State(st): State<AppState>, req: Request, next: Next) -> Response {
    match guarded(st, req, next).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn guarded(st: AppState, req: Request, next: Next) -> Result<Response, ApiError> {
    check_target(req.method(), req.uri())?;
    if !is_write(req.method()) {
        return Ok(next.run(req).await);
    }
    let path = req.uri().path().to_string();
    // A product server activates with its serial and control number, not
    // a bearer token (the card-data scan below still runs).
    // So does the payment processor, whose webhooks are signed instead.
    let open_route = req.method() == Method::POST
        && (path == "/v1/activations" || path == "/v1/webhooks/stripe");
    if (path.starts_with("/v1/") || path.starts_with("/api/")) && !open_route {
        let principal = principal_of(&st, &req)?;
        if !may_write(principal.role, req.method(), &path) {
            return Err(ApiError::forbidden());
        }
    }
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, crate::MAX_BODY_BYTES)
        .await
        .map_err(|e| {
            if let Some(t) = crate::server::is_body_timeout(&e) {
                body_timeout(t)
            } else if format!("{e:?}").contains("LengthLimitError")
                || e.to_string().contains("length limit")
            {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!(
                        "the request body is larger than {} bytes",
                        crate::MAX_BODY_BYTES
                    ),
                )
            } else {
                ApiError::bad_request(format!("the body could not be read: {e}"))
            }
        })?;
    if !bytes.is_empty() {
        if !json_content_type(parts.headers.get(header::CONTENT_TYPE)) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be JSON, sent with Content-Type: application/json",
            ));
        }
        scan_body(bytes.clone()).await?;
    }
    let req = Request::from_parts(parts, Body::from(bytes));
    Ok(next.run(req).await)
}

/// A body that did not arrive within `ACCRUE_BODY_TIMEOUT_SECS` of its
/// head: 408, and hyper closes the connection (its body is unread).
pub(crate) fn body_timeout(t: &crate::server::BodyTimedOut) -> ApiError {
    ApiError::new(StatusCode::REQUEST_TIMEOUT, "body_timeout", t.to_string())
}

/// Large bodies are scanned off the async workers, so a 16 MB body never
/// holds up the queries beside it.
async fn scan_body(bytes: Bytes) -> Result<(), ApiError> {
    if bytes.len() <= SCAN_INLINE_BYTES {
        return scan_json(&bytes);
    }
    tokio::task::spawn_blocking(move || scan_json(&bytes))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
}

fn principal_of(st: &AppState, req: &Request) -> Result<Principal, ApiError> {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(ApiError::unauthorized)?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .ok_or_else(ApiError::unauthorized)?;
    st.tokens
        .principal(token)
        .ok_or_else(ApiError::unauthorized)
}

// ------------------------------------------------------------ every request gets an answer

/// Answers a panic in a handler with a 500 problem and counts it; the
/// connection stays open.
pub fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    PANICS.fetch_add(1, Ordering::Relaxed);
    ApiError::internal("the server failed while handling this request").into_response()
}

/// A global limit on requests in flight and on the time each may take:
/// above the limit, or past the time, the answer is 503 with Retry-After
/// rather than a queue that grows without bound.
pub async fn limits(State(permits): State<Arc<Semaphore>>, req: Request, next: Next) -> Response {
    let Ok(_permit) = permits.try_acquire() else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many requests in flight; retry shortly",
        )
        .into_response();
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!(
                "the request took longer than {} s",
                REQUEST_TIMEOUT.as_secs()
            ),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAN: &str = "4242424242424242";

    #[test]
    fn identifiers_accrue_generated_pass_in_their_own_field_only() {
        let hash = format!("4111111111111111{}", "a".repeat(48));
        // Each reads as a card number, and each is what accrue could issue.
        let ours = [
            ("serial_number", "ACR-4111-1111-1111-1111".to_string()),
            ("control_number", "41111-11111-11111-1ABCD".to_string()),
            ("invoice_number", "INV-2026-01-1000000".to_string()),
            ("accrue_invoice", "CN-2026-01-1000000".to_string()),
            ("head_hash", hash),
        ];
        for (field, value) in &ours {
            assert!(contains_pan(value), "{value}");
            let body = serde_json::json!({ *field: value }).to_string();
            assert!(scan_json(body.as_bytes()).is_ok(), "{body}");
            let nested = serde_json::json!({"anchor": { *field: value }}).to_string();
            assert!(scan_json(nested.as_bytes()).is_ok(), "{nested}");
            // Anywhere else it is card data.
            let elsewhere = serde_json::json!({ "name": value }).to_string();
            assert!(scan_json(elsewhere.as_bytes()).is_err(), "{elsewhere}");
        }
        // A card number in those fields, in any other shape, is refused.
        for (field, value) in [
            ("serial_number", "4111111111111111"),
            ("serial_number", "ACR-4111-1111-1111-1111-1"),
            ("control_number", "41111-11111-11111-11111"),
            ("invoice_number", "INV-4111111111111111"),
            ("invoice_number", "INV-2026-01-4111111111111111x"),
            ("head_hash", "4111111111111111"),
            ("head_hash", &format!("4111111111111111{}", "A".repeat(48))),
        ] {
            let body = serde_json::json!({ field: value }).to_string();
            assert!(scan_json(body.as_bytes()).is_err(), "{body}");
        }
    }

    #[tokio::test]
    async fn a_panic_is_answered_500_problem_and_counted() {
        use tower::ServiceExt;
        let app = axum::Router::new()
            .route(
                "/boom",
                axum::routing::get(|| async {
                    if PAN.len() == 16 {
                        panic!("a handler bug");
                    }
                    "unreachable"
                }),
            )
            .layer(tower_http::catch_panic::CatchPanicLayer::custom(
                panic_response,
            ));
        let before = PANICS.load(Ordering::Relaxed);
        let r = app
            .oneshot(Request::get("/boom").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        assert_eq!(PANICS.load(Ordering::Relaxed), before + 1);
    }

    #[test]
    fn finds_card_numbers_in_every_spelling() {
        for s in [
            PAN,
            "4242 4242 4242 4242",
            "4242-4242-4242-4242",
            "4242.4242.4242.4242",
            "4242/4242/4242/4242",
            "4242_4242_4242_4242",
            "4242  4242\t4242   4242",
            "card ４２４２４２４２４２４２４２４２ exp",
            "x5555555555554444y",
            "378282246310005",
            "prefix 12 4242424242424242",
        ] {
            assert!(contains_pan(s), "{s:?}");
        }
        for s in [
            "4242424242424241",
            "424242424242",
            "order 2026-01-15",
            "2026-01-15T00:00:00Z",
            "0000000000000000",
            "0.0125",
        ] {
            assert!(!contains_pan(s), "{s:?}");
        }
    }

    #[test]
    fn finds_cvcs() {
        for k in [
            "cvc",
            "CVV",
            "card_cvc",
            "cvc2",
            "security_code",
            "cardSecurityCode",
            "cvv-2",
        ] {
            assert!(is_cvc_key(k), "{k}");
        }
        for k in ["token", "last4", "brand", "exp_month", "reference"] {
            assert!(!is_cvc_key(k), "{k}");
        }
        for s in [
            "cvc: 123",
            "CVV 123",
            "cvc2=1234",
            "my security code 999 ok",
        ] {
            assert!(contains_cvc_text(s), "{s}");
        }
        for s in ["cvc", "cvc: 12", "cvc 12345", "abcvc 123", "invoice 123"] {
            assert!(!contains_cvc_text(s), "{s}");
        }
    }

    #[test]
    fn the_scan_is_linear() {
        // 16 MB of digits in one string is refused by length at once; the
        // same work split over many strings stays within milliseconds each.
        let long = format!("{{\"a\":\"{}\"}}", "1".repeat(16 * 1024 * 1024));
        let t = std::time::Instant::now();
        assert!(scan_json(long.as_bytes()).is_err());
        let many: Vec<String> = (0..250)
            .map(|i| format!("\"k{i}\":\"{}\"", "0".repeat(16_000)))
            .collect();
        let body = format!("{{{}}}", many.join(","));
        assert!(scan_json(body.as_bytes()).is_ok());
        // Linear: about 20 MB scanned in well under a second optimised; a
        // quadratic scan would take hours. The bound is loose so a debug
        // build on a busy machine passes (this is not a benchmark).
        assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    }

    #[test]
    fn scans_keys_values_escapes_and_duplicates() {
        let refused = |s: &str| scan_json(s.as_bytes()).err().map(|e| e.reason);
        assert_eq!(
            refused(r#"{"a":{"b":["x","4000056655665556"]}}"#),
            Some("card_data_refused")
        );
        assert_eq!(
            refused(r#"{"\u0034242424242424242":1}"#),
            Some("card_data_refused")
        );
        assert_eq!(
            refused(r#"{"n":4242424242424242}"#),
            Some("card_data_refused")
        );
        assert_eq!(refused(r#"{"m":{"CVC":"1"}}"#), Some("card_data_refused"));
        assert_eq!(refused(r#"{"a":"x","a":"y"}"#), Some("duplicate_key"));
        assert_eq!(refused(r#"{"a":"x\u0007"}"#), Some("control_character"));
        assert_eq!(refused(r#"{"a":"x\u202e"}"#), Some("control_character"));
        assert_eq!(refused(r#"{"a":"#), Some("malformed"));
        assert_eq!(
            refused(r#"{"token":"tok_visa","last4":"4242","t":"a\nb"}"#),
            None
        );
    }
}
