//! `GET /v1/me`: who a token is. The page needs it to know which account
//! an account token belongs to (and whether to offer the admin's account
//! picker and write forms) without trying routes until one answers.

use axum::Json;
use serde::Serialize;

use crate::auth::{Principal, Role};

#[derive(Serialize, utoipa::ToSchema)]
pub struct MeDto {
    pub role: Role,
    /// The account an `account` (or `server`) token is bound to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
}

#[utoipa::path(get, path = "/v1/me", tag = "tokens", responses((status = 200, description = "the bearer token's role and account", body = MeDto), (status = 401, description = "missing or invalid token", body = crate::error::Problem, content_type = "application/problem+json"), (status = 500, description = "internal error (a caught panic included)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 503, description = "overloaded, timed out or ledger stopped (Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn me(p: Principal) -> Json<MeDto> {
    Json(MeDto {
        role: p.role,
        account_id: p.account_id,
    })
}
