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
    let mut text = st.ledger.metrics().render();
    let store = st.ledger.store();
    let head = store.head_position().unwrap_or(0);
    text.push_str("# HELP accrue_head_position Global position of the last event.\n# TYPE accrue_head_position gauge\n");
    text.push_str(&format!("accrue_head_position {head}\n"));
    text.push_str("# HELP accrue_projector_checkpoint Last position a side-effect projector handled.\n# TYPE accrue_projector_checkpoint gauge\n");
    for name in ["pdf", "mailer"] {
        let cp = store.checkpoint(name).unwrap_or(0);
        text.push_str(&format!(
            "accrue_projector_checkpoint{{name=\"{name}\"}} {cp}\n"
        ));
    }
    text.push_str("# HELP accrue_http_panics_total Handler panics answered 500 since start.\n# TYPE accrue_http_panics_total counter\n");
    text.push_str(&format!(
        "accrue_http_panics_total {}\n",
        crate::guard::PANICS.load(std::sync::atomic::Ordering::Relaxed)
    ));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
