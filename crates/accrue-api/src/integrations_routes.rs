//! Integrations in (SPEC §11): CloudEvents usage ingest, the convention of
//! open-source usage meters, on the same fast path and rules as
//! `POST /v1/usage`; and the payment processor's signed webhooks mapped to
//! payment outcomes.

use accrue_core::processor::{map_stripe, InvoiceFacts, Mapping, ProcessorError, ProcessorEvent};
use accrue_core::{Command, DomainError};
use accrue_ledger::LedgerError;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use crate::auth::{Principal, Role};
use crate::dto::{RawMoney, UsageEventDto};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::RawBody;
use crate::AppState;

/// Most events in one CloudEvents batch (as `POST /v1/usage`).
pub(crate) const MAX_BATCH: usize = 10_000;
/// How far a processor signature's timestamp may be from now.
pub const STRIPE_TOLERANCE_SECS: i64 = 300;

// ------------------------------------------------------------ CloudEvents

fn text<'a>(ce: &'a Value, k: &str) -> Option<&'a str> {
    ce.get(k).and_then(Value::as_str)
}

/// One CloudEvent → the usage event it stands for: `id` the idempotency
/// key, `subject` the account, `time` the occurrence, `type` the product,
/// `data.amount` a decimal string (`data.feature`, `data.metadata`).
fn usage_of(ce: &Value) -> Result<UsageEventDto, String> {
    if !ce.is_object() {
        return Err("a CloudEvent must be a JSON object".into());
    }
    if text(ce, "specversion") != Some("1.0") {
        return Err("specversion must be \"1.0\"".into());
    }
    for k in ["id", "source", "type"] {
        if text(ce, k).is_none_or(str::is_empty) {
            return Err(format!("{k} is required (a non-empty string)"));
        }
    }
    let subject = text(ce, "subject").ok_or("subject (the account id) is required")?;
    // Structured mode may carry the data as a JSON string: one level only.
    let parsed;
    let data = match ce.get("data") {
        Some(d @ Value::Object(_)) => d,
        Some(Value::String(s)) => {
            parsed = serde_json::from_str::<Value>(s)
                .ok()
                .filter(Value::is_object)
                .ok_or("data must be a JSON object")?;
            &parsed
        }
        _ => return Err("data must be an object with amount".into()),
    };
    let amount = match data.get("amount") {
        Some(Value::String(s)) => s.clone(),
        // A JSON number is taken by its exact text (never through a float).
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err("data.amount is required (a decimal string)".into()),
    };
    let feature = match data.get("feature") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("data.feature must be a string".into()),
    };
    Ok(UsageEventDto {
        id: text(ce, "id").map(str::to_string),
        account_id: Some(subject.to_string()),
        occurred_at: text(ce, "time").map(str::to_string),
        amount: Some(RawMoney(amount)),
        product: text(ce, "type").map(str::to_string),
        feature,
        metadata: data.get("metadata").cloned(),
    })
}

/// A request's media type, lowercased, without parameters (a cluster's
/// front reads CloudEvents requests the same way).
pub(crate) fn mime_of(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// The events of a request: structured (`application/cloudevents+json`),
/// batch (`application/cloudevents-batch+json`), or binary mode (`ce-*`
/// headers with the data as the body).
fn events_of(headers: &HeaderMap, body: &[u8]) -> ApiResult<Vec<Value>> {
    let mime = mime_of(headers);
    let parse = |b: &[u8]| -> ApiResult<Value> {
        serde_json::from_slice(b).map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))
    };
    match mime.as_str() {
        "application/cloudevents+json" => Ok(vec![parse(body)?]),
        "application/cloudevents-batch+json" => match parse(body)? {
            Value::Array(a) => Ok(a),
            _ => Err(ApiError::bad_request("a CloudEvents batch is a JSON array")),
        },
        "application/json" if headers.contains_key("ce-id") => {
            let mut ce = serde_json::Map::new();
            for (k, v) in headers {
                if let Some(attr) = k.as_str().strip_prefix("ce-") {
                    if let Ok(v) = v.to_str() {
                        ce.insert(attr.to_string(), Value::String(v.to_string()));
                    }
                }
            }
            ce.insert("data".into(), parse(body)?);
            Ok(vec![Value::Object(ce)])
        }
        "application/json" => match parse(body)? {
            Value::Array(a) => Ok(a),
            v => Ok(vec![v]),
        },
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send application/cloudevents+json or application/cloudevents-batch+json",
        )),
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/events",
    tag = "usage",
    request_body(content = Object, description = "one CloudEvent (application/cloudevents+json) or a batch (application/cloudevents-batch+json): id = idempotency key, subject = account, time, type = product, data.amount", content_type = "application/cloudevents+json"),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "every event accepted or a duplicate"),
        (status = 400, description = "an event is invalid; per-event results in `results`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "wrong role", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "a rule refused an event (credit limit, closed period, …); per-event results in `results`", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body or batch too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "not a CloudEvents content type", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "refused (card data, control character, duplicate key)", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "internal error", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "overloaded or ledger stopped (Retry-After)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn post_cloudevents(
    State(st): State<AppState>,
    p: Principal,
    split: Option<axum::Extension<crate::cluster::Split>>,
    headers: HeaderMap,
    RawBody(bytes): RawBody,
) -> ApiResult<Response> {
    p.require(&[Role::Admin, Role::Ingest])?;
    let part_of_split = split.is_some();
    let pool = accrue_ledger::priority::BulkPool::global();
    let stopped = || ApiError::internal("the bulk pool has stopped");
    let (ids, items) = pool
        .run(move || -> ApiResult<_> {
            let events = events_of(&headers, &bytes)?;
            if events.len() > MAX_BATCH {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "batch_too_large",
                    format!(
                        "at most {MAX_BATCH} events per request, got {}",
                        events.len()
                    ),
                ));
            }
            let mut ids = Vec::with_capacity(events.len());
            let mut items = Vec::with_capacity(events.len());
            for ce in &events {
                ids.push(text(ce, "id").map(str::to_string));
                items.push(match usage_of(ce) {
                    Ok(dto) => crate::routes::usage_item(dto),
                    Err(detail) => accrue_ledger::UsageItem::Invalid { detail },
                });
            }
            Ok((ids, items))
        })
        .await
        .ok_or_else(stopped)??;
    let outcomes = st.ledger.ingest(items).await?;
    let resp = crate::routes::usage_response(outcomes, ids, p.role);
    if part_of_split {
        // A cluster node's front splits a batch over partitions and needs
        // every part's results to answer for the whole (`cluster::split_cloudevents`).
        return Ok(Json(resp).into_response());
    }
    let results = resp
        .results
        .iter()
        .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
        .collect();
    Ok(cloudevents_answer(
        resp.accepted,
        resp.duplicate,
        resp.rejected,
        results,
    ))
}

/// The answer to a CloudEvents post: 204 when every event was accepted or
/// a duplicate; else a problem with every event's result, 400 when one was
/// invalid, 409 when a rule refused one.
pub(crate) fn cloudevents_answer(
    accepted: usize,
    duplicate: usize,
    rejected: usize,
    results: Vec<Value>,
) -> Response {
    if rejected == 0 {
        return StatusCode::NO_CONTENT.into_response();
    }
    let invalid = results
        .iter()
        .any(|r| r.get("reason").and_then(Value::as_str) == Some("invalid"));
    let status = if invalid {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::CONFLICT
    };
    let reason = if invalid { "invalid" } else { "rejected" };
    let body = serde_json::json!({
        "type": format!("https://accrue.dev/problems/{reason}"),
        "title": if invalid { "Invalid event" } else { "Event refused" },
        "status": status.as_u16(),
        "detail": format!("{rejected} of {} events were not accepted; see results", results.len()),
        "reason": reason,
        "accepted": accepted,
        "duplicate": duplicate,
        "rejected": rejected,
        "results": results,
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

// ------------------------------------------------------- processor webhooks

/// Verifies `Stripe-Signature: t=…,v1=…[,v1=…]`: HMAC-SHA-256 of
/// `t.payload` under the secret; any `v1` may match (secret rotation);
/// `t` within the tolerance of the wall clock (or, on a manual clock, the
/// ledger's clock).
pub fn verify_stripe(
    header: &str,
    payload: &[u8],
    secret: &str,
    now: &[i64],
) -> Result<(), &'static str> {
    let mut t = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => sigs.push(v),
            _ => {}
        }
    }
    let t = t.ok_or("no timestamp in Stripe-Signature")?;
    if sigs.is_empty() {
        return Err("no v1 signature in Stripe-Signature");
    }
    if !now.iter().any(|n| (n - t).abs() <= STRIPE_TOLERANCE_SECS) {
        return Err("the signature's timestamp is outside the 5-minute tolerance");
    }
    let mut msg = Vec::with_capacity(payload.len() + 12);
    msg.extend_from_slice(t.to_string().as_bytes());
    msg.push(b'.');
    msg.extend_from_slice(payload);
    if sigs
        .iter()
        .any(|s| accrue_ledger::hmac::verify_hex(secret.as_bytes(), &msg, s))
    {
        Ok(())
    } else {
        Err("no v1 signature matches")
    }
}

fn webhook_refused(detail: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_signature", detail.to_string())
}

#[utoipa::path(
    post,
    path = "/v1/webhooks/stripe",
    tag = "payments",
    request_body(content = Object, description = "a Stripe event, signed (Stripe-Signature)", content_type = "application/json"),
    params(("Stripe-Signature" = String, Header, description = "t=…,v1=…")),
    responses(
        (status = 200, description = "recorded, a redelivery, or ignored (unknown type, no accrue_invoice)", body = Object),
        (status = 400, description = "bad or missing signature, or not JSON: nothing stored", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no webhook secret configured, or an unknown invoice", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "a rule refused the outcome (reference reused, refund beyond payment)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "refused (card data, control character, no event id, a refund without amount or currency, or in another currency than the invoice): nothing stored", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "internal error", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "overloaded or ledger stopped (Retry-After): the processor retries", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn stripe_webhook(
    State(st): State<AppState>,
    headers: HeaderMap,
    RawBody(bytes): RawBody,
) -> ApiResult<Json<Value>> {
    let secrets = std::env::var("ACCRUE_STRIPE_WEBHOOK_SECRET").unwrap_or_default();
    if secrets.trim().is_empty() {
        return Err(ApiError::not_found(
            "no processor webhook is configured (ACCRUE_STRIPE_WEBHOOK_SECRET)",
        ));
    }
    let sig = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| webhook_refused("the Stripe-Signature header is missing"))?;
    let mut now = vec![chrono::Utc::now().timestamp()];
    if st.ledger.is_manual_clock() {
        now.push(st.ledger.now().timestamp());
    }
    // Several secrets (comma-separated) while one is rotated out.
    let mut verdict = Err("no v1 signature matches");
    for secret in secrets.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        verdict = verify_stripe(sig, &bytes, secret, &now);
        if verdict.is_ok() {
            break;
        }
    }
    verdict.map_err(webhook_refused)?;
    let event: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
    let object = event.pointer("/data/object").unwrap_or(&Value::Null);
    let parsed = ProcessorEvent {
        id: text(&event, "id").unwrap_or("").to_string(),
        kind: text(&event, "type").unwrap_or("").to_string(),
        invoice: object
            .pointer("/metadata/accrue_invoice")
            .and_then(Value::as_str)
            .map(str::to_string),
        failure_message: object
            .pointer("/last_payment_error/message")
            .or_else(|| object.pointer("/last_finalization_error/message"))
            .and_then(Value::as_str)
            .map(str::to_string),
        amount_refunded_minor: object.get("amount_refunded").and_then(Value::as_i64),
        currency: object
            .get("currency")
            .and_then(Value::as_str)
            .map(str::to_string),
    };
    if let Some(invoice) = &parsed.invoice {
        crate::routes::check_line("metadata.accrue_invoice", invoice, 64)?;
    }
    let facts = parsed.invoice.as_deref().and_then(|number| {
        let read = st.ledger.read();
        let record = read.invoices.get(number)?;
        let account = read.accounts.get(&record.account_id)?;
        Some(InvoiceFacts {
            currency: record.issued.currency.to_string(),
            refunded: account
                .invoices
                .get(number)
                .map(|i| i.refunded)
                .unwrap_or_default(),
            reference_seen: account.payment_references.contains_key(&parsed.id),
        })
    });
    let id = parsed.id.clone();
    let (invoice, outcome) = match map_stripe(&parsed, facts.as_ref()) {
        Ok(Mapping::Record { invoice, outcome }) => (invoice, outcome),
        Ok(Mapping::Duplicate) => {
            return Ok(Json(
                serde_json::json!({"received": true, "outcome": "duplicate", "event": id}),
            ))
        }
        Ok(Mapping::Ignored(why)) => {
            return Ok(Json(
                serde_json::json!({"received": true, "outcome": "ignored", "detail": why}),
            ))
        }
        Err(e @ ProcessorError::UnknownInvoice(_)) => {
            return Err(ApiError::not_found(e.to_string()))
        }
        Err(e) => return Err(ApiError::unprocessable(e.to_string())),
    };
    let cmd = Command::RecordPayment {
        invoice_number: invoice.clone(),
        reference: id.clone(),
        outcome,
    };
    match st.ledger.execute_for_invoice(&invoice, cmd).await {
        Ok(events) if events.is_empty() => Ok(Json(
            serde_json::json!({"received": true, "outcome": "duplicate", "event": id}),
        )),
        Ok(_) => Ok(Json(
            serde_json::json!({"received": true, "outcome": "recorded", "event": id, "invoice": invoice}),
        )),
        // A paid invoice told "failed" later, or paid twice by the
        // processor: nothing to change, and the processor must not retry.
        Err(LedgerError::Domain(DomainError::InvoiceNotPayable { status, .. })) => Ok(Json(
            serde_json::json!({"received": true, "outcome": "ignored", "detail": format!("the invoice is already {status}")}),
        )),
        Err(e) => Err(e.into()),
    }
}
