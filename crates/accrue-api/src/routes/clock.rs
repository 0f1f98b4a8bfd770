//! The ledger's clock: read it, move the manual clock.

use super::*;

/// Longest single move of the manual clock (about ten years).
const MAX_CLOCK_MOVE_DAYS: i64 = 3660;

#[utoipa::path(post, path = "/v1/clock", tag = "clock", request_body(content = crate::dto::ClockDto, content_type = "application/json"), responses((status = 200, description = "moved; every period on the way closed", body = crate::dto::ClockResponse), (status = 400, description = "malformed request (syntax, path decoding)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 401, description = "missing or invalid token", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "wrong role", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "not found", body = crate::error::Problem, content_type = "application/problem+json"), (status = 409, description = "a rule of the ledger refused it", body = crate::error::Problem, content_type = "application/problem+json"), (status = 413, description = "body too large", body = crate::error::Problem, content_type = "application/problem+json"), (status = 414, description = "request target too long", body = crate::error::Problem, content_type = "application/problem+json"), (status = 415, description = "body is not JSON", body = crate::error::Problem, content_type = "application/problem+json"), (status = 422, description = "invalid or refused (card data, unknown field, control character, duplicate key, out-of-range date)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 500, description = "internal error (a caught panic included)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 503, description = "overloaded, timed out or ledger stopped (Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn move_clock(
    State(st): State<AppState>,
    p: Principal,
    Body(req): Body<ClockDto>,
) -> ApiResult<Json<ClockResponse>> {
    p.require(ADMIN)?;
    if !st.ledger.is_manual_clock() {
        return Err(accrue_ledger::LedgerError::NotManualClock.into());
    }
    let now = parse_instant("now", &req.now)?;
    // A limit on one move: every period on the way is closed in this call.
    if now - st.ledger.now() > Duration::days(MAX_CLOCK_MOVE_DAYS) {
        return Err(ApiError::unprocessable(format!(
            "the clock moves at most {MAX_CLOCK_MOVE_DAYS} days per call"
        )));
    }
    let now = st.ledger.advance_clock(now).await?;
    Ok(Json(ClockResponse { now }))
}

#[utoipa::path(get, path = "/v1/clock", tag = "clock", responses((status = 200, description = "the ledger's clock", body = Object), (status = 400, description = "malformed request (syntax, path decoding)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 401, description = "missing or invalid token", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "wrong role", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "not found", body = crate::error::Problem, content_type = "application/problem+json"), (status = 422, description = "invalid or refused (card data, unknown field, control character, duplicate key, out-of-range date)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 500, description = "internal error (a caught panic included)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 503, description = "overloaded, timed out or ledger stopped (Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn get_clock(
    State(st): State<AppState>,
    p: Principal,
) -> ApiResult<Json<serde_json::Value>> {
    p.require(&[Role::Admin, Role::Auditor])?;
    Ok(Json(
        serde_json::json!({"now": st.ledger.now(), "manual": st.ledger.is_manual_clock()}),
    ))
}
