//! `GET /readyz`: ready only while the ledger is loaded and its writer can
//! commit. After a fault the writer stops (fail-stop) and this answers 503
//! until a restart; `/healthz` stays a pure liveness check.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use crate::error::ApiError;
use crate::AppState;

pub async fn readyz(State(st): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    match st.ledger.failure() {
        None => Ok(Json(serde_json::json!({"status": "ready"}))),
        Some(reason) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ledger_stopped",
            format!("the ledger stopped taking writes after a fault: {reason}"),
        )),
    }
}

/// `GET /metrics`: the ledger's registry, plus the values read at scrape
/// time (the store's head and projector checkpoints, on a blocking thread;
/// the panic count of the HTTP layer).
pub async fn metrics(st: AppState) -> axum::response::Response {
    use axum::response::IntoResponse;
    let ledger = st.ledger.clone();
    let rendered = tokio::task::spawn_blocking(move || {
        let store = ledger.store();
        let scraped = accrue_ledger::metrics::Scraped {
            head_position: store.head_position().unwrap_or(0),
            projector_checkpoints: ["pdf", "mailer"]
                .into_iter()
                .map(|name| (name, store.checkpoint(name).unwrap_or(0)))
                .collect(),
            http_panics: crate::guard::PANICS.load(std::sync::atomic::Ordering::Relaxed),
        };
        ledger.metrics().render_with(scraped)
    })
    .await;
    match rendered {
        Ok(text) => (
            [(
                axum::http::header::CONTENT_TYPE,
                accrue_ledger::metrics::CONTENT_TYPE,
            )],
            text,
        )
            .into_response(),
        Err(e) => ApiError::internal(format!("metrics: {e}")).into_response(),
    }
}
