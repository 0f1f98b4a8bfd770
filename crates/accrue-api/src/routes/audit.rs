//! The audit room: an account's events, chain verification and the
//! trial balance.

use super::*;

#[derive(Deserialize)]
pub struct Page {
    after: Option<u64>,
    limit: Option<usize>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct EventDto {
    pub position: u64,
    pub stream: String,
    pub version: u64,
    #[serde(rename = "type")]
    pub type_name: String,
    pub schema: u32,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    pub hash: String,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct EventPage {
    pub events: Vec<EventDto>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<u64>,
}

/// Largest page of events returned at once.
const MAX_EVENT_PAGE: usize = 1000;

#[utoipa::path(get, path = "/v1/accounts/{id}/events", tag = "audit", params(("id" = String, Path, description = "account id"), ("after" = Option<u64>, Query, description = "stream version"), ("limit" = Option<usize>, Query, description = "1..=1000")), responses((status = 200, description = "the account's events with hashes", body = EventPage), (status = 400, description = "malformed request (syntax, path decoding)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 401, description = "missing or invalid token", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "wrong role", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "not found", body = crate::error::Problem, content_type = "application/problem+json"), (status = 422, description = "invalid or refused (card data, unknown field, control character, duplicate key, out-of-range date)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 500, description = "internal error (a caught panic included)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 503, description = "overloaded, timed out or ledger stopped (Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn account_events(
    State(st): State<AppState>,
    p: Principal,
    P(id): P<String>,
    Q(q): Q<Page>,
) -> ApiResult<Json<EventPage>> {
    p.require(AUDIT)?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_EVENT_PAGE {
        return Err(ApiError::unprocessable(format!(
            "limit must be 1..={MAX_EVENT_PAGE}"
        )));
    }
    let id = parse_account_id(&id)?;
    if !st.ledger.read().accounts.contains_key(id.as_str()) {
        return Err(ApiError::not_found(format!("no account {:?}", id.as_str())));
    }
    let store = st.ledger.store().clone();
    let after = q.after.unwrap_or(0);
    let events = blocking(move || store.read_stream(&id.stream(), after, limit + 1)).await?;
    let more = events.len() > limit;
    let events: Vec<EventDto> = events
        .into_iter()
        .take(limit)
        .map(|e| EventDto {
            position: e.position,
            stream: e.stream,
            version: e.version,
            type_name: e.type_name,
            schema: e.schema,
            occurred_at: e.occurred_at,
            recorded_at: e.recorded_at,
            data: serde_json::from_slice(&e.payload).unwrap_or(serde_json::Value::Null),
            hash: hex::encode(e.hash),
        })
        .collect();
    let next_after = if more {
        events.last().map(|e| e.version)
    } else {
        None
    };
    Ok(Json(EventPage { events, next_after }))
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct BrokenDto {
    pub position: u64,
    pub stream: String,
    pub version: u64,
    pub reason: String,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct VerifyDto {
    pub ok: bool,
    pub events: u64,
    pub streams: u64,
    pub head_hash: String,
    pub first_broken: Option<BrokenDto>,
}

#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit", responses((status = 200, description = "hash chain verified", body = VerifyDto), (status = 400, description = "malformed request (syntax, path decoding)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 401, description = "missing or invalid token", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "wrong role", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "not found", body = crate::error::Problem, content_type = "application/problem+json"), (status = 422, description = "invalid or refused (card data, unknown field, control character, duplicate key, out-of-range date)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 500, description = "internal error (a caught panic included)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 503, description = "overloaded, timed out or ledger stopped (Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn audit_verify(State(st): State<AppState>, p: Principal) -> ApiResult<Json<VerifyDto>> {
    p.require(AUDIT)?;
    let store = st.ledger.store().clone();
    let r = blocking(move || accrue_ledger::audit::verify(store.as_ref(), |_, _| {})).await?;
    Ok(Json(VerifyDto {
        ok: r.ok,
        events: r.events,
        streams: r.streams,
        head_hash: r.head_hash,
        first_broken: r.first_broken.map(|b| BrokenDto {
            position: b.position,
            stream: b.stream,
            version: b.version,
            reason: b.reason,
        }),
    }))
}

#[derive(Deserialize)]
pub struct AsOfOnly {
    as_of: Option<String>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct LedgerAccountDto {
    pub account: &'static str,
    pub kind: &'static str,
    pub debits: Money,
    pub credits: Money,
    /// Debits minus credits.
    pub balance: Money,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct TrialBalanceDto {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_of: Option<DateTime<Utc>>,
    pub accounts: Vec<LedgerAccountDto>,
    pub total_debits: Money,
    pub total_credits: Money,
    pub balanced: bool,
}

#[utoipa::path(get, path = "/v1/audit/trial-balance", tag = "audit", params(("as_of" = Option<String>, Query, description = "RFC 3339 instant")), responses((status = 200, description = "balanced ledger accounts", body = TrialBalanceDto), (status = 400, description = "malformed request (syntax, path decoding)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 401, description = "missing or invalid token", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "wrong role", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "not found", body = crate::error::Problem, content_type = "application/problem+json"), (status = 422, description = "invalid or refused (card data, unknown field, control character, duplicate key, out-of-range date)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 500, description = "internal error (a caught panic included)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 503, description = "overloaded, timed out or ledger stopped (Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn trial_balance(
    State(st): State<AppState>,
    p: Principal,
    Q(q): Q<AsOfOnly>,
) -> ApiResult<Json<TrialBalanceDto>> {
    p.require(AUDIT)?;
    let as_of = past_instant(&st, q.as_of.as_deref())?;
    let tb = accrue_projections::postings::trial_balance(&st.ledger.read().postings, as_of);
    Ok(Json(TrialBalanceDto {
        as_of,
        balanced: tb.balanced(),
        total_debits: Money(tb.total_debits),
        total_credits: Money(tb.total_credits),
        accounts: tb
            .rows
            .into_iter()
            .map(|r| LedgerAccountDto {
                account: r.account,
                kind: r.kind,
                debits: Money(r.debits),
                credits: Money(r.credits),
                balance: Money(r.balance),
            })
            .collect(),
    }))
}
