//! Outgoing webhook endpoints (SPEC §11): register one (its signing secret
//! is shown once), list them, and see each delivery's attempts. Delivery
//! itself is a projector in the ledger crate.

use accrue_core::events::{LedgerEvent, WebhookEndpointRegistered};
use accrue_ledger::webhooks::{Delivery, EVENT_TYPES};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{Body, P};
use crate::routes::ADMIN;
use crate::AppState;

/// Endpoints at most (each one costs a request per event).
const MAX_ENDPOINTS: usize = 100;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointRequest {
    /// `http://…` or `https://…` (Mozilla's roots, plus `ACCRUE_WEBHOOK_CA_FILE`);
    /// no `user:password@`.
    url: String,
    /// Event types to receive, or `["*"]` for all.
    events: Vec<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct EndpointDto {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub created_at: DateTime<Utc>,
    /// `active` or `disabled`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// Shown once, at registration: verify `Accrue-Signature` with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct EndpointList {
    pub endpoints: Vec<EndpointDto>,
}

fn dto(
    w: &accrue_projections::read_models::WebhookEndpoint,
    secret: Option<String>,
) -> EndpointDto {
    EndpointDto {
        id: w.id.clone(),
        url: w.url.clone(),
        events: w.events.clone(),
        created_at: w.registered_at,
        status: if w.disabled.is_some() {
            "disabled"
        } else {
            "active"
        },
        disabled_reason: w.disabled.as_ref().map(|d| d.reason.clone()),
        secret,
    }
}

/// An endpoint URL: `http://` or `https://`, a host, no credentials.
///
/// Credentials in the URL (`https://user:pass@host/`) are refused: the URL
/// is recorded in an event, and events are kept for ever. A receiver
/// authenticates accrue by the `Accrue-Signature` instead.
fn check_url(raw: &str) -> ApiResult<()> {
    if raw.len() > 2000 || raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ApiError::unprocessable(
            "url must be at most 2000 characters, without spaces or control characters",
        ));
    }
    let url = url::Url::parse(raw)
        .map_err(|e| ApiError::unprocessable(format!("url is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ApiError::unprocessable(format!(
            "url must be an http:// or https:// URL, not {}:",
            url.scheme()
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ApiError::unprocessable(
            "url must not carry a user name or password: it is recorded in the log for good; receivers verify the Accrue-Signature instead",
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ApiError::unprocessable("url must name a host"));
    }
    Ok(())
}

#[utoipa::path(
    post,
    path = "/v1/webhook-endpoints",
    tag = "webhooks",
    request_body(content = EndpointRequest, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "registered; the secret is shown once", body = EndpointDto),
        (status = 400, description = "malformed request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "wrong role", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "too many endpoints", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid url or event type", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "internal error", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "overloaded or ledger stopped (Retry-After)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_endpoint(
    State(st): State<AppState>,
    p: Principal,
    given: Option<axum::Extension<crate::cluster::EndpointId>>,
    Body(req): Body<EndpointRequest>,
) -> ApiResult<Response> {
    p.require(ADMIN)?;
    check_url(&req.url)?;
    if req.events.is_empty() {
        return Err(ApiError::unprocessable(
            "events must name at least one type",
        ));
    }
    for e in &req.events {
        if e != "*" && !EVENT_TYPES.contains(&e.as_str()) {
            return Err(ApiError::unprocessable(format!(
                "unknown event type {e:?}; one of {}",
                EVENT_TYPES.join(", ")
            )));
        }
    }
    let mut events = req.events;
    events.sort();
    events.dedup();
    if st.ledger.read().webhook_endpoints.len() >= MAX_ENDPOINTS {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "too_many_endpoints",
            format!("at most {MAX_ENDPOINTS} webhook endpoints"),
        ));
    }
    // A cluster's front registers one endpoint in every partition under
    // the id it chose; otherwise the id is new.
    let id = match given {
        Some(axum::Extension(crate::cluster::EndpointId(id))) => {
            if st.ledger.read().webhook_endpoints.contains_key(&id) {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "endpoint_exists",
                    format!("webhook endpoint {id:?} is already registered"),
                ));
            }
            id
        }
        None => format!("we_{}", uuid::Uuid::now_v7().simple()),
    };
    // The secret is shown once, now: without it there is no endpoint.
    let secret = st.ledger.webhook_secret(&id).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the cluster's webhook secret cannot be read yet (its home partition has not been opened); retry",
        )
    })?;
    st.ledger
        .record(LedgerEvent::WebhookEndpointRegistered(
            WebhookEndpointRegistered {
                id: id.clone(),
                url: req.url,
                events,
                registered_at: st.ledger.now(),
            },
        ))
        .await?;
    let w = st
        .ledger
        .read()
        .webhook_endpoints
        .get(&id)
        .cloned()
        .ok_or_else(|| ApiError::internal("the endpoint is not in the read models"))?;
    Ok((StatusCode::CREATED, Json(dto(&w, Some(secret)))).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/webhook-endpoints",
    tag = "webhooks",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "every endpoint (no secrets)", body = EndpointList),
        (status = 401, description = "missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "wrong role", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "internal error", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_endpoints(
    State(st): State<AppState>,
    p: Principal,
) -> ApiResult<Json<EndpointList>> {
    p.require(ADMIN)?;
    let read = st.ledger.read();
    Ok(Json(EndpointList {
        endpoints: read
            .webhook_endpoints
            .values()
            .map(|w| dto(w, None))
            .collect(),
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DeliveryList {
    pub endpoint: String,
    /// Newest last; each with its attempts (status code or error).
    #[schema(value_type = Vec<Object>)]
    pub deliveries: Vec<Delivery>,
}

#[utoipa::path(
    get,
    path = "/v1/webhook-endpoints/{id}/deliveries",
    tag = "webhooks",
    params(("id" = String, Path, description = "endpoint id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "deliveries and their attempts", body = DeliveryList),
        (status = 400, description = "malformed request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "wrong role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such endpoint", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "internal error", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_deliveries(
    State(st): State<AppState>,
    p: Principal,
    P(id): P<String>,
) -> ApiResult<Json<DeliveryList>> {
    p.require(ADMIN)?;
    if !st.ledger.read().webhook_endpoints.contains_key(&id) {
        return Err(ApiError::not_found(format!("no webhook endpoint {id:?}")));
    }
    let ledger = st.ledger.clone();
    let key = id.clone();
    let deliveries =
        crate::routes::blocking(move || accrue_ledger::webhooks::deliveries(&ledger, &key)).await?;
    Ok(Json(DeliveryList {
        endpoint: id,
        deliveries,
    }))
}
