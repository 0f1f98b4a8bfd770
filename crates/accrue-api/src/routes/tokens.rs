//! `POST /v1/tokens`: bearer tokens by role.

use super::*;

#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body(content = crate::dto::TokenRequest, content_type = "application/json"), responses((status = 201, description = "token issued (shown once)", body = crate::dto::TokenResponse), (status = 400, description = "malformed request (syntax, path decoding)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 401, description = "missing or invalid token", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "wrong role", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "not found", body = crate::error::Problem, content_type = "application/problem+json"), (status = 409, description = "a rule of the ledger refused it", body = crate::error::Problem, content_type = "application/problem+json"), (status = 413, description = "body too large", body = crate::error::Problem, content_type = "application/problem+json"), (status = 414, description = "request target too long", body = crate::error::Problem, content_type = "application/problem+json"), (status = 415, description = "body is not JSON", body = crate::error::Problem, content_type = "application/problem+json"), (status = 422, description = "invalid or refused (card data, unknown field, control character, duplicate key, out-of-range date)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 500, description = "internal error (a caught panic included)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 503, description = "overloaded, timed out or ledger stopped (Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn create_token(
    State(st): State<AppState>,
    p: Principal,
    Body(req): Body<TokenRequest>,
) -> ApiResult<Response> {
    p.require(ADMIN)?;
    let account_id = match (req.role, req.account_id) {
        (Role::Server, _) => {
            return Err(ApiError::unprocessable(
                "server tokens come only from POST /v1/activations",
            ))
        }
        (Role::Account, Some(id)) => {
            live_overview(&st, &id)?;
            Some(id)
        }
        (Role::Account, None) => {
            return Err(ApiError::unprocessable(
                "an account token needs an account_id",
            ))
        }
        (_, Some(_)) => {
            return Err(ApiError::unprocessable(
                "only account tokens take an account_id",
            ))
        }
        (_, None) => None,
    };
    let token = st
        .tokens
        .issue(Principal {
            role: req.role,
            account_id: account_id.clone(),
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(TokenResponse {
            token,
            role: req.role,
            account_id,
        }),
    )
        .into_response())
}
