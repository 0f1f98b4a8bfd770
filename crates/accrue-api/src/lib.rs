//! accrue-api: the only crate that knows HTTP and the JSON wire format.

mod anchor_routes;
pub mod auth;
pub mod dto;
pub mod error;
pub mod extract;
pub mod guard;
mod health;
mod openapi;
pub mod pan;
mod routes;

use std::sync::Arc;

use accrue_ledger::Ledger;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
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
    // The same door as the API's: an imported line with card data, a
    // duplicate key or a control character is refused before it is parsed.
    guard::scan_json(line.as_bytes()).map_err(|e| e.detail)?;
    let dto: dto::UsageEventDto = serde_json::from_str(line).map_err(|e| e.to_string())?;
    Ok(routes::usage_item(dto))
}

/// The whole HTTP API.
pub fn router(state: AppState) -> Router {
    use routes::*;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/v1/tokens", post(create_token))
        .route("/v1/accounts", post(create_account).get(list_accounts))
        .route("/v1/accounts/{id}", get(get_account).patch(patch_account))
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
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // Innermost first: the card-data guard sees every write before a
        // handler does; the limits bound every request; a panic anywhere
        // inside is answered, never a dropped connection.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::guard,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(tokio::sync::Semaphore::new(guard::MAX_CONCURRENT_REQUESTS)),
            guard::limits,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            guard::panic_response,
        ))
        .with_state(state)
}
