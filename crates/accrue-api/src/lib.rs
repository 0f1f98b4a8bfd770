//! accrue-api: the only crate that knows HTTP and the JSON wire format.

mod anchor_routes;
pub mod auth;
pub mod cluster;
pub mod corrections_routes;
pub mod dto;
pub mod error;
pub mod extract;
pub mod guard;
mod health;
pub mod integrations_routes;
mod license_routes;
mod openapi;
pub mod pan;
mod routes;
pub mod server;
mod web;
pub mod webhooks_routes;

use std::sync::Arc;

use accrue_ledger::Ledger;
use axum::extract::DefaultBodyLimit;
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

/// The whole HTTP API. Every route is registered with its documented
/// handler (`routes!`), so `/openapi.json` lists exactly what is served.
pub fn router(state: AppState) -> Router {
    use anchor_routes::*;
    use corrections_routes::*;
    use integrations_routes::*;
    use license_routes::*;
    use openapi::*;
    use routes::*;
    use webhooks_routes::*;
    license_routes::install(&state);
    use utoipa::OpenApi;
    use utoipa_axum::router::OpenApiRouter;
    use utoipa_axum::routes;
    let (router, doc) = OpenApiRouter::<AppState>::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(ready))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
        .routes(routes!(create_token))
        .routes(routes!(create_account, list_accounts))
        .routes(routes!(get_account, patch_account))
        .routes(routes!(change_plan))
        .routes(routes!(report_seats))
        .routes(routes!(subscribe, unsubscribe))
        .routes(routes!(replace_payment_method))
        .routes(routes!(list_invoices))
        .routes(routes!(account_events))
        .routes(routes!(post_usage))
        .routes(routes!(post_payment))
        .routes(routes!(get_invoice))
        .routes(routes!(get_invoice_pdf))
        .routes(routes!(get_invoice_xml))
        .routes(routes!(void_invoice))
        .routes(routes!(create_credit_note))
        .routes(routes!(get_credit_note))
        .routes(routes!(get_credit_note_pdf))
        .routes(routes!(cancel_usage))
        .routes(routes!(upcoming_invoice))
        .routes(routes!(list_dunning))
        .routes(routes!(post_cloudevents))
        .routes(routes!(stripe_webhook))
        .routes(routes!(create_endpoint, list_endpoints))
        .routes(routes!(list_deliveries))
        .routes(routes!(audit_verify, verify_anchor))
        .routes(routes!(get_anchor))
        .routes(routes!(trial_balance))
        .routes(routes!(move_clock, get_clock))
        .routes(routes!(activate))
        .routes(routes!(get_license))
        .routes(routes!(jwks))
        .routes(routes!(release_own))
        .routes(routes!(report_sessions))
        .routes(routes!(list_activations))
        .routes(routes!(reset_activations))
        .routes(routes!(release_server))
        .routes(routes!(list_sessions))
        .routes(routes!(put_license))
        .routes(routes!(license_key))
        .routes(routes!(web::me::me))
        .split_for_parts();
    openapi::publish(&doc);
    router
        // The page is not JSON API: beside the document, not in it.
        .merge(web::routes())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            license_routes::decorate_overview,
        ))
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
