//! accrue-api: the only crate that knows HTTP and the JSON wire format.

mod anchor_routes;
pub mod auth;
pub mod dto;
pub mod error;
pub mod extract;
mod health;
mod license_routes;
mod openapi;
pub mod pan;
mod routes;

use std::sync::Arc;

use accrue_ledger::Ledger;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put};
use axum::Router;

pub use auth::Tokens;

/// Largest request body accepted (a full 10,000-event batch fits easily).
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub ledger: Ledger,
    pub tokens: Arc<Tokens>,
}

/// Parses one usage event (a JSON object, as in `POST /v1/usage`) with the
/// same rules as the API; `Err` when the line is not such an object.
pub fn parse_usage_line(line: &str) -> Result<accrue_ledger::UsageItem, String> {
    let dto: dto::UsageEventDto = serde_json::from_str(line).map_err(|e| e.to_string())?;
    Ok(routes::usage_item(dto))
}

/// The whole HTTP API.
pub fn router(state: AppState) -> Router {
    use routes::*;
    license_routes::install(&state);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/v1/tokens", post(create_token))
        .route("/v1/accounts", post(create_account))
        .route("/v1/accounts/{id}", get(get_account))
        .route("/v1/accounts/{id}/plan", put(change_plan))
        .route("/v1/accounts/{id}/seats-in-use", put(report_seats))
        .route(
            "/v1/accounts/{id}/credit-subscription",
            put(subscribe).delete(unsubscribe),
        )
        .route(
            "/v1/accounts/{id}/payment-method",
            put(replace_payment_method),
        )
        .route("/v1/accounts/{id}/invoices", get(list_invoices))
        .route("/v1/accounts/{id}/events", get(account_events))
        .route("/v1/usage", post(post_usage))
        .route("/v1/payments", post(post_payment))
        .route("/v1/invoices/{number}", get(get_invoice))
        .route("/v1/invoices/{number}/pdf", get(get_invoice_pdf))
        .route("/v1/invoices/{number}/void", post(void_invoice))
        .route(
            "/v1/audit/verify",
            get(audit_verify).post(anchor_routes::verify_anchor),
        )
        .route("/v1/audit/anchor", get(anchor_routes::get_anchor))
        .route("/v1/audit/trial-balance", get(trial_balance))
        .route("/v1/clock", post(move_clock).get(get_clock))
        .route("/v1/activations", post(license_routes::activate))
        .route("/v1/license", get(license_routes::get_license))
        .route("/.well-known/jwks.json", get(license_routes::jwks))
        .route("/v1/activation", delete(license_routes::release_own))
        .route(
            "/v1/activation/sessions",
            put(license_routes::report_sessions),
        )
        .route(
            "/v1/accounts/{id}/activations",
            get(license_routes::list_activations),
        )
        .route(
            "/v1/accounts/{id}/activations/reset",
            post(license_routes::reset_activations),
        )
        .route(
            "/v1/accounts/{id}/activations/{server_id}",
            delete(license_routes::release_server),
        )
        .route(
            "/v1/accounts/{id}/sessions",
            get(license_routes::list_sessions),
        )
        .route(
            "/v1/accounts/{id}/license",
            put(license_routes::put_license),
        )
        .route(
            "/v1/accounts/{id}/license-key",
            get(license_routes::license_key),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            license_routes::decorate_overview,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}
