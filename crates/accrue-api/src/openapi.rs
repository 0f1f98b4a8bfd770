//! `GET /openapi.json`, derived from the handlers: every route is
//! registered through `utoipa-axum`'s `OpenApiRouter` with its
//! `#[utoipa::path]` (see `crate::router`), so the router and the document
//! cannot drift. Schemas come from the DTOs' `ToSchema` derives.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi as Doc;
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "accrue",
        description = "Event-sourced billing and AI-credits ledger. Money is a decimal string; errors are RFC 9457 application/problem+json."
    ),
    modifiers(&Bearer),
    components(schemas(crate::error::Problem, crate::dto::SeatsReported, crate::auth::Role))
)]
pub struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, doc: &mut Doc) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

static DOC: OnceLock<String> = OnceLock::new();

/// Keeps the document the router was built with (the first one: every
/// router of this process is built from the same handlers).
pub fn publish(doc: &Doc) {
    DOC.get_or_init(|| doc.to_json().unwrap_or_default());
}

#[utoipa::path(get, path = "/openapi.json", tag = "health",
    responses((status = 200, description = "this document", body = Object)))]
pub async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOC.get().cloned().unwrap_or_default(),
    )
        .into_response()
}
