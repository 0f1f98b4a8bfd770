//! Liveness, readiness and metrics.

use super::*;

#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, description = "ready to take writes", body = Object), (status = 503, description = "overloaded, timed out or ledger stopped (Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn ready(st: State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    crate::health::readyz(st).await
}

#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "alive", body = Object)))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, description = "Prometheus text", body = String, content_type = "text/plain")))]
pub async fn metrics(State(st): State<AppState>) -> Response {
    crate::health::metrics(st).await
}
