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
