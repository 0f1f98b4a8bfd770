//! Handlers. Each one: who may call it, parse at the edge, one ledger call,
//! one response.

use std::time::Instant;

use accrue_core::events::{PaymentMethodReplaced, Plan};
use accrue_core::{
    parse_money, AccountId, BillingFrequency, Command, OpenAccount, SeatsInUse, UsageInput,
};
use accrue_ledger::{UsageItem, UsageOutcome, MAX_BATCH_EVENTS};
use accrue_projections::InvoiceRecord;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;

use crate::auth::{Principal, Role};
use crate::dto::*;
use crate::error::{ApiError, ApiResult};
use crate::extract::{parse_json, Body, RawBody, P, Q};
use crate::AppState;

pub(crate) const ADMIN: &[Role] = &[Role::Admin];
pub(crate) const READERS: &[Role] = &[Role::Admin, Role::Auditor, Role::Account];
pub(crate) const AUDIT: &[Role] = &[Role::Admin, Role::Auditor];

/// Longest usage id, product or feature name accepted.
const MAX_ID_LEN: usize = 128;
/// Longest single move of the manual clock (about ten years).
const MAX_CLOCK_MOVE_DAYS: i64 = 3660;
/// Largest metadata object accepted per usage event, serialised.
const MAX_METADATA_BYTES: usize = 4096;

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

pub async fn not_found() -> ApiError {
    ApiError::not_found("no such resource")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this method is not allowed here",
    )
}

pub(crate) fn parse_account_id(id: &str) -> ApiResult<AccountId> {
    AccountId::parse(id).map_err(|_| ApiError::not_found(format!("no account {id:?}")))
}

pub(crate) fn live_overview(st: &AppState, id: &str) -> ApiResult<Overview> {
    let read = st.ledger.read();
    let mut o = read
        .accounts
        .get(id)
        .and_then(|s| overview(s, None))
        .ok_or_else(|| ApiError::not_found(format!("no account {id:?}")))?;
    if let Some(bounces) = read.mail_bounces.get(id) {
        let email = o.billing_email.clone();
        o.mail_bounces = bounces
            .iter()
            .map(|b| crate::dto::BounceView {
                kind: b.kind.clone(),
                to: b.to.clone(),
                reason: b.reason.clone(),
                cause_position: b.cause_position,
                resent: read.mails_resent.contains(&b.cause_position) && b.to != email,
            })
            .collect();
    }
    Ok(o)
}

/// An optional `as_of`: well-formed and not after the ledger's clock.
fn past_instant(st: &AppState, s: Option<&str>) -> ApiResult<Option<DateTime<Utc>>> {
    let Some(s) = s else { return Ok(None) };
    let t = parse_instant("as_of", s)?;
    if t > st.ledger.now() {
        return Err(ApiError::unprocessable("as_of must not be in the future"));
    }
    Ok(Some(t))
}

/// Runs blocking store or render work off the async workers.
pub(crate) async fn blocking<T: Send + 'static, E: std::fmt::Display + Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// Years a date or instant parameter may name: date arithmetic near
/// chrono's limits would overflow, and no billing fact lies outside them.
pub const YEARS: std::ops::RangeInclusive<i32> = 1970..=9999;

fn in_years(name: &str, d: NaiveDate) -> ApiResult<NaiveDate> {
    if YEARS.contains(&chrono::Datelike::year(&d)) {
        Ok(d)
    } else {
        Err(ApiError::unprocessable(format!(
            "{name} must lie in the years {}..={}",
            YEARS.start(),
            YEARS.end()
        )))
    }
}

/// An RFC 3339 instant in [`YEARS`].
pub fn bounded_instant(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
        .filter(|t| YEARS.contains(&chrono::Datelike::year(t)))
}

fn parse_instant(name: &str, s: &str) -> ApiResult<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        let t = t.with_timezone(&Utc);
        in_years(name, t.date_naive())?;
        return Ok(t);
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(in_years(name, d)?
            .and_hms_opt(0, 0, 0)
            .unwrap_or_default()
            .and_utc());
    }
    Err(ApiError::unprocessable(format!(
        "{name} must be an RFC 3339 timestamp, got {s:?}"
    )))
}

// ---------------------------------------------------------------- tokens

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

// ---------------------------------------------------------------- accounts

fn plan_from(dto: &PlanDto) -> ApiResult<Plan> {
    let seats = |name: &str, n: i64| -> ApiResult<u32> {
        if (0..=1_000_000).contains(&n) {
            Ok(n as u32)
        } else {
            Err(ApiError::unprocessable(format!(
                "{name} must be between 0 and 1000000, got {n}"
            )))
        }
    };
    for (name, m) in [
        ("full_seat_price", dto.full_seat_price),
        ("viewer_seat_price", dto.viewer_seat_price),
        ("data_management_price", dto.data_management_price),
    ] {
        if m.0 < Decimal::ZERO {
            return Err(ApiError::unprocessable(format!(
                "{name} must not be negative"
            )));
        }
    }
    Ok(Plan {
        full_seats: seats("full_seats", dto.full_seats)?,
        full_seat_price: dto.full_seat_price.0,
        viewer_seats: seats("viewer_seats", dto.viewer_seats)?,
        viewer_seat_price: dto.viewer_seat_price.0,
        data_management: dto.data_management,
        data_management_price: dto.data_management_price.0,
    })
}

fn serial_number() -> String {
    let u = uuid::Uuid::new_v4().simple().to_string().to_uppercase();
    format!("ACR-{}-{}-{}-{}", &u[0..4], &u[4..8], &u[8..12], &u[12..16])
}

fn check_email(e: &str) -> ApiResult<()> {
    let ok = e.len() <= 254
        && e.split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.'))
        && !e.contains(char::is_whitespace)
        && !e.chars().any(crate::guard::forbidden_in_line);
    if ok {
        Ok(())
    } else {
        Err(ApiError::unprocessable(format!(
            "billing_email {e:?} is not an email address"
        )))
    }
}

/// A one-line value (an id, a name, a reference): [`check_text`] and no
/// control characters at all, tab and line breaks included.
pub(crate) fn check_line(name: &str, s: &str, max: usize) -> ApiResult<()> {
    check_text(name, s, max)?;
    if s.chars().any(crate::guard::forbidden_in_line) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "control_character",
            format!("{name} must be one line without control characters"),
        ));
    }
    Ok(())
}

pub(crate) fn check_text(name: &str, s: &str, max: usize) -> ApiResult<()> {
    if s.trim().is_empty() || s.chars().count() > max {
        return Err(ApiError::unprocessable(format!(
            "{name} must be 1 to {max} characters"
        )));
    }
    Ok(())
}

#[utoipa::path(post, path = "/v1/accounts", tag = "accounts", request_body(content = crate::dto::CreateAccount, content_type = "application/json"), responses((status = 201, description = "created", body = crate::dto::Overview), (status = 400, description = "malformed request (syntax, path decoding)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 401, description = "missing or invalid token", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "wrong role", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "not found", body = crate::error::Problem, content_type = "application/problem+json"), (status = 409, description = "a rule of the ledger refused it", body = crate::error::Problem, content_type = "application/problem+json"), (status = 413, description = "body too large", body = crate::error::Problem, content_type = "application/problem+json"), (status = 414, description = "request target too long", body = crate::error::Problem, content_type = "application/problem+json"), (status = 415, description = "body is not JSON", body = crate::error::Problem, content_type = "application/problem+json"), (status = 422, description = "invalid or refused (card data, unknown field, control character, duplicate key, out-of-range date)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 500, description = "internal error (a caught panic included)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 503, description = "overloaded, timed out or ledger stopped (Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn create_account(
    State(st): State<AppState>,
    p: Principal,
    Body(req): Body<CreateAccount>,
) -> ApiResult<Response> {
    p.require(ADMIN)?;
    let id = AccountId::parse(&req.id).map_err(|e| ApiError::unprocessable(e.to_string()))?;
    check_line("name", &req.name, 200)?;
    check_email(&req.billing_email)?;
    if let Some(a) = &req.address {
        check_text("address", a, 500)?;
    }
    if req.currency != "USD" {
        return Err(ApiError::unprocessable(format!(
            "currency must be USD, got {:?}",
            req.currency
        )));
    }
    let billing_frequency = match req.billing_frequency.as_str() {
        "monthly" => BillingFrequency::Monthly,
        "yearly" => BillingFrequency::Yearly,
        other => {
            return Err(ApiError::unprocessable(format!(
                "billing_frequency must be monthly or yearly, got {other:?}"
            )))
        }
    };
    let anchor_day = match &req.period_anchor {
        None => None,
        Some(AnchorDto::Day(d)) if (1..=31).contains(d) => Some(*d as u32),
        Some(AnchorDto::Day(d)) => {
            return Err(ApiError::unprocessable(format!(
                "period_anchor must be a day 1..=31, got {d}"
            )))
        }
        Some(AnchorDto::Date(s)) => {
            let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| {
                ApiError::unprocessable(format!("period_anchor {s:?} is not a date YYYY-MM-DD"))
            })?;
            Some(chrono::Datelike::day(&d))
        }
    };
    if req.base_credits.0 < Decimal::ZERO {
        return Err(ApiError::unprocessable("base_credits must not be negative"));
    }
    let open = OpenAccount {
        account_id: id.to_string(),
        name: req.name.trim().to_string(),
        serial_number: serial_number(),
        billing_email: req.billing_email,
        email_language: req.email_language,
        address: req.address,
        currency: req.currency,
        billing_frequency,
        anchor_day,
        plan: plan_from(&req.plan)?,
        base_credits: req.base_credits.0,
        credit_limit: req.credit_limit.map(|m| m.0),
        invoice_number: String::new(),
        tax: req.tax.map(TryInto::try_into).transpose()?,
    };
    st.ledger
        .execute(id.as_str(), Command::Open(Box::new(open)))
        .await?;
    Ok((StatusCode::CREATED, Json(live_overview(&st, id.as_str())?)).into_response())
}

/// As-of replays running at once, all principals together.
const AS_OF_REPLAYS: usize = 2;
static AS_OF: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(AS_OF_REPLAYS);

#[derive(Deserialize)]
pub struct AsOf {
    as_of: Option<String>,
}

#[utoipa::path(get, path = "/v1/accounts/{id}", tag = "accounts", params(("id" = String, Path, description = "account id"), ("as_of" = Option<String>, Query, description = "RFC 3339 instant, not after the clock")), responses((status = 200, description = "overview", body = crate::dto::Overview), (status = 400, description = "malformed request (syntax, path decoding)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 401, description = "missing or invalid token", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "wrong role", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "not found", body = crate::error::Problem, content_type = "application/problem+json"), (status = 422, description = "invalid or refused (card data, unknown field, control character, duplicate key, out-of-range date)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 500, description = "internal error (a caught panic included)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 503, description = "overloaded, timed out or ledger stopped (Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn get_account(
    State(st): State<AppState>,
    p: Principal,
    P(id): P<String>,
    Q(q): Q<AsOf>,
) -> ApiResult<Json<Overview>> {
    p.require(READERS)?;
    p.may_read_account(&id)?;
    let Some(as_of) = past_instant(&st, q.as_of.as_deref())? else {
        return Ok(Json(live_overview(&st, &id)?));
    };
    let id = parse_account_id(&id)?;
    // An as-of replay reads a whole stream: at most AS_OF_REPLAYS run at
    // once, whoever asks, so readers cannot take the cores ingest needs.
    let Ok(_permit) = AS_OF.try_acquire() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!("at most {AS_OF_REPLAYS} as-of queries run at once; retry shortly"),
        ));
    };
    let store = st.ledger.store().clone();
    let state =
        blocking(move || accrue_ledger::account_as_of(store.as_ref(), id.as_str(), as_of)).await?;
    overview(&state, Some(as_of))
        .map(Json)
        .ok_or_else(|| ApiError::not_found("the account did not exist at that instant"))
}

#[utoipa::path(put, path = "/v1/accounts/{id}/plan", tag = "accounts", request_body(content = crate::dto::PlanChangeDto, content_type = "application/json"), params(("id" = String, Path, description = "account id")), responses((status = 200, description = "plan changed (prorated); fields left out keep their value", body = crate::dto::Overview), (status = 400, description = "malformed request (syntax, path decoding)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 401, description = "missing or invalid token", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "wrong role", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "not found", body = crate::error::Problem, content_type = "application/problem+json"), (status = 409, description = "a rule of the ledger refused it", body = crate::error::Problem, content_type = "application/problem+json"), (status = 413, description = "body too large", body = crate::error::Problem, content_type = "application/problem+json"), (status = 414, description = "request target too long", body = crate::error::Problem, content_type = "application/problem+json"), (status = 415, description = "body is not JSON", body = crate::error::Problem, content_type = "application/problem+json"), (status = 422, description = "invalid or refused (card data, unknown field, control character, duplicate key, out-of-range date)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 500, description = "internal error (a caught panic included)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 503, description = "overloaded, timed out or ledger stopped (Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn change_plan(
    State(st): State<AppState>,
    p: Principal,
    P(id): P<String>,
    Body(req): Body<PlanChangeDto>,
) -> ApiResult<Json<Overview>> {
    p.require(ADMIN)?;
    let seats = |name: &str, n: Option<i64>| -> ApiResult<Option<u32>> {
        n.map(|n| {
            u32::try_from(n)
                .ok()
                .filter(|n| *n <= 1_000_000)
                .ok_or_else(|| {
                    ApiError::unprocessable(format!(
                        "{name} must be between 0 and 1000000, got {n}"
                    ))
                })
        })
        .transpose()
    };
    let price = |name: &str, m: Option<Money>| -> ApiResult<Option<Decimal>> {
        match m {
            Some(m) if m.0 < Decimal::ZERO => Err(ApiError::unprocessable(format!(
                "{name} must not be negative"
            ))),
            m => Ok(m.map(|m| m.0)),
        }
    };
    // Only the fields given travel to the writer, which merges them with
    // the plan it holds: two concurrent partial changes both take effect.
    let change = accrue_core::PlanChange {
        full_seats: seats("full_seats", req.full_seats)?,
        full_seat_price: price("full_seat_price", req.full_seat_price)?,
        viewer_seats: seats("viewer_seats", req.viewer_seats)?,
        viewer_seat_price: price("viewer_seat_price", req.viewer_seat_price)?,
        data_management: req.data_management,
        data_management_price: price("data_management_price", req.data_management_price)?,
    };
    let id = parse_account_id(&id)?;
    st.ledger
        .execute(id.as_str(), Command::ChangePlanPartial(change))
        .await?;
    Ok(Json(live_overview(&st, id.as_str())?))
}

/// `PATCH /v1/accounts/{id}`: fields left out keep their value.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountPatch {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, alias = "email")]
    billing_email: Option<String>,
    #[serde(default)]
    address: Option<String>,
    #[serde(default, alias = "language")]
    email_language: Option<String>,
    /// New tax facts (SPEC §14) for invoices issued from now on.
    #[serde(default)]
    tax: Option<crate::dto::TaxDto>,
}

#[utoipa::path(patch, path = "/v1/accounts/{id}", tag = "accounts", request_body(content = AccountPatch, content_type = "application/json"), params(("id" = String, Path, description = "account id")), responses((status = 200, description = "details changed (one AccountDetailsChanged event)", body = crate::dto::Overview), (status = 400, description = "malformed request (syntax, path decoding)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 401, description = "missing or invalid token", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "wrong role", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "not found", body = crate::error::Problem, content_type = "application/problem+json"), (status = 409, description = "a rule of the ledger refused it", body = crate::error::Problem, content_type = "application/problem+json"), (status = 413, description = "body too large", body = crate::error::Problem, content_type = "application/problem+json"), (status = 414, description = "request target too long", body = crate::error::Problem, content_type = "application/problem+json"), (status = 415, description = "body is not JSON", body = crate::error::Problem, content_type = "application/problem+json"), (status = 422, description = "invalid or refused (card data, unknown field, control character, duplicate key, out-of-range date)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 500, description = "internal error (a caught panic included)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 503, description = "overloaded, timed out or ledger stopped (Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn patch_account(
    State(st): State<AppState>,
    p: Principal,
    P(id): P<String>,
    Body(req): Body<AccountPatch>,
) -> ApiResult<Json<Overview>> {
    p.require(ADMIN)?;
    if let Some(n) = &req.name {
        check_line("name", n, 200)?;
    }
    if let Some(e) = &req.billing_email {
        check_email(e)?;
    }
    if let Some(a) = &req.address {
        check_text("address", a, 500)?;
    }
    if let Some(l) = &req.email_language {
        check_line("email_language", l, 35)?;
    }
    let id = parse_account_id(&id)?;
    let change = accrue_core::events::AccountDetailsChanged {
        name: req.name.map(|n| n.trim().to_string()),
        billing_email: req.billing_email,
        address: req.address,
        email_language: req.email_language,
        tax: req.tax.map(TryInto::try_into).transpose()?,
    };
    st.ledger
        .execute(id.as_str(), Command::ChangeDetails(change))
        .await?;
    Ok(Json(live_overview(&st, id.as_str())?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountsPage {
    after: Option<String>,
    limit: Option<usize>,
}

/// A page of account overviews in id order.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct AccountList {
    pub accounts: Vec<Overview>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// Largest page of accounts returned at once.
const MAX_ACCOUNT_PAGE: usize = 500;

#[utoipa::path(get, path = "/v1/accounts", tag = "accounts", params(("after" = Option<String>, Query, description = "the last id of the previous page"), ("limit" = Option<usize>, Query, description = "1..=500, default 100")), responses((status = 200, description = "a page of overviews in id order", body = AccountList), (status = 400, description = "malformed request (syntax, path decoding)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 401, description = "missing or invalid token", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "wrong role", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "not found", body = crate::error::Problem, content_type = "application/problem+json"), (status = 422, description = "invalid or refused (card data, unknown field, control character, duplicate key, out-of-range date)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 500, description = "internal error (a caught panic included)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 503, description = "overloaded, timed out or ledger stopped (Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn list_accounts(
    State(st): State<AppState>,
    p: Principal,
    Q(q): Q<AccountsPage>,
) -> ApiResult<Json<AccountList>> {
    p.require(AUDIT)?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_ACCOUNT_PAGE {
        return Err(ApiError::unprocessable(format!(
            "limit must be 1..={MAX_ACCOUNT_PAGE}"
        )));
    }
    let read = st.ledger.read();
    // The read model is a hash map: sort the ids after `after` (one pass,
    // bounded by the number of accounts), then take a page.
    let after = q.after.unwrap_or_default();
    let mut ids: Vec<&String> = read
        .accounts
        .iter()
        .filter(|(k, a)| k.as_str() > after.as_str() && a.is_open())
        .map(|(k, _)| k)
        .collect();
    ids.sort_unstable();
    let more = ids.len() > limit;
    let accounts: Vec<Overview> = ids
        .into_iter()
        .take(limit)
        .filter_map(|k| read.accounts.get(k).and_then(|a| overview(a, None)))
        .collect();
    let next_after = if more {
        accounts.last().map(|a| a.id.clone())
    } else {
        None
    };
    Ok(Json(AccountList {
        accounts,
        next_after,
    }))
}

#[utoipa::path(put, path = "/v1/accounts/{id}/seats-in-use", tag = "accounts", request_body(content = crate::dto::SeatsDto, content_type = "application/json"), params(("id" = String, Path, description = "account id")), responses((status = 200, description = "recorded; admin sees the seats, ingest only what it sent (SeatsReported)", body = crate::dto::SeatsView), (status = 400, description = "malformed request (syntax, path decoding)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 401, description = "missing or invalid token", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "wrong role", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "not found", body = crate::error::Problem, content_type = "application/problem+json"), (status = 409, description = "a rule of the ledger refused it", body = crate::error::Problem, content_type = "application/problem+json"), (status = 413, description = "body too large", body = crate::error::Problem, content_type = "application/problem+json"), (status = 414, description = "request target too long", body = crate::error::Problem, content_type = "application/problem+json"), (status = 415, description = "body is not JSON", body = crate::error::Problem, content_type = "application/problem+json"), (status = 422, description = "invalid or refused (card data, unknown field, control character, duplicate key, out-of-range date)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 500, description = "internal error (a caught panic included)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 503, description = "overloaded, timed out or ledger stopped (Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn report_seats(
    State(st): State<AppState>,
    p: Principal,
    P(id): P<String>,
    Body(req): Body<SeatsDto>,
) -> ApiResult<Response> {
    p.require(&[Role::Admin, Role::Ingest])?;
    let n = |name: &str, v: i64| -> ApiResult<u32> {
        u32::try_from(v).map_err(|_| {
            ApiError::unprocessable(format!("{name} must be a count of seats, got {v}"))
        })
    };
    let seats = SeatsInUse {
        full: n("full", req.full)?,
        viewer: n("viewer", req.viewer)?,
    };
    let id = parse_account_id(&id)?;
    let done = st
        .ledger
        .execute(id.as_str(), Command::ReportSeats(seats))
        .await;
    if p.role == Role::Ingest {
        // An ingest token reads nothing: neither licensed counts in the
        // answer nor in a refusal's detail.
        return match done {
            Ok(_) => Ok(Json(SeatsReported {
                full: seats.full,
                viewer: seats.viewer,
            })
            .into_response()),
            Err(accrue_ledger::LedgerError::Domain(
                e @ accrue_core::DomainError::SeatLimitExceeded { .. },
            )) => Err(ApiError::new(
                StatusCode::CONFLICT,
                e.reason(),
                "the seats in use are above the licensed count",
            )),
            Err(e) => Err(e.into()),
        };
    }
    done?;
    Ok(Json(live_overview(&st, id.as_str())?.seats).into_response())
}

#[utoipa::path(put, path = "/v1/accounts/{id}/credit-subscription", tag = "credits", request_body(content = crate::dto::LimitDto, content_type = "application/json"), params(("id" = String, Path, description = "account id")), responses((status = 200, description = "subscribed or limit changed", body = crate::dto::Overview), (status = 400, description = "malformed request (syntax, path decoding)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 401, description = "missing or invalid token", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "wrong role", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "not found", body = crate::error::Problem, content_type = "application/problem+json"), (status = 409, description = "a rule of the ledger refused it", body = crate::error::Problem, content_type = "application/problem+json"), (status = 413, description = "body too large", body = crate::error::Problem, content_type = "application/problem+json"), (status = 414, description = "request target too long", body = crate::error::Problem, content_type = "application/problem+json"), (status = 415, description = "body is not JSON", body = crate::error::Problem, content_type = "application/problem+json"), (status = 422, description = "invalid or refused (card data, unknown field, control character, duplicate key, out-of-range date)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 500, description = "internal error (a caught panic included)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 503, description = "overloaded, timed out or ledger stopped (Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn subscribe(
    State(st): State<AppState>,
    p: Principal,
    P(id): P<String>,
    Body(req): Body<LimitDto>,
) -> ApiResult<Json<Overview>> {
    p.require(ADMIN)?;
    let id = parse_account_id(&id)?;
    st.ledger
        .execute(id.as_str(), Command::SetCreditLimit { limit: req.limit.0 })
        .await?;
    Ok(Json(live_overview(&st, id.as_str())?))
}

#[utoipa::path(delete, path = "/v1/accounts/{id}/credit-subscription", tag = "credits", params(("id" = String, Path, description = "account id")), responses((status = 200, description = "unsubscribed from the next period", body = crate::dto::Overview), (status = 400, description = "malformed request (syntax, path decoding)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 401, description = "missing or invalid token", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "wrong role", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "not found", body = crate::error::Problem, content_type = "application/problem+json"), (status = 409, description = "a rule of the ledger refused it", body = crate::error::Problem, content_type = "application/problem+json"), (status = 413, description = "body too large", body = crate::error::Problem, content_type = "application/problem+json"), (status = 414, description = "request target too long", body = crate::error::Problem, content_type = "application/problem+json"), (status = 415, description = "body is not JSON", body = crate::error::Problem, content_type = "application/problem+json"), (status = 422, description = "invalid or refused (card data, unknown field, control character, duplicate key, out-of-range date)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 500, description = "internal error (a caught panic included)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 503, description = "overloaded, timed out or ledger stopped (Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn unsubscribe(
    State(st): State<AppState>,
    p: Principal,
    P(id): P<String>,
) -> ApiResult<Json<Overview>> {
    p.require(ADMIN)?;
    let id = parse_account_id(&id)?;
    st.ledger.execute(id.as_str(), Command::Unsubscribe).await?;
    Ok(Json(live_overview(&st, id.as_str())?))
}

// ---------------------------------------------------------------- payments

/// The card fields, flat or nested under `card` as processors send them.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CardDto {
    token: Option<String>,
    brand: Option<String>,
    last4: Option<String>,
    exp_month: Option<u32>,
    exp_year: Option<u32>,
}

/// `PUT …/payment-method`: the flat shape of SPEC §4, or the card fields
/// nested as `card: {token, brand, last4, exp_month, exp_year}`. Fields
/// left out of a replacement keep the saved method's value (an omitted
/// `email_language` never switches a customer to English).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentMethodDto {
    #[serde(default, alias = "email")]
    billing_email: Option<String>,
    #[serde(default, alias = "language")]
    email_language: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    address: Option<serde_json::Value>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    brand: Option<String>,
    #[serde(default)]
    last4: Option<String>,
    #[serde(default)]
    exp_month: Option<u32>,
    #[serde(default)]
    exp_year: Option<u32>,
    #[serde(default)]
    card: Option<CardDto>,
}

#[utoipa::path(put, path = "/v1/accounts/{id}/payment-method", tag = "payments", request_body(content = PaymentMethodDto, content_type = "application/json"), params(("id" = String, Path, description = "account id")), responses((status = 200, description = "replaced", body = crate::dto::Overview), (status = 400, description = "malformed request (syntax, path decoding)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 401, description = "missing or invalid token", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "wrong role", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "not found", body = crate::error::Problem, content_type = "application/problem+json"), (status = 409, description = "a rule of the ledger refused it", body = crate::error::Problem, content_type = "application/problem+json"), (status = 413, description = "body too large", body = crate::error::Problem, content_type = "application/problem+json"), (status = 414, description = "request target too long", body = crate::error::Problem, content_type = "application/problem+json"), (status = 415, description = "body is not JSON", body = crate::error::Problem, content_type = "application/problem+json"), (status = 422, description = "invalid or refused (card data, unknown field, control character, duplicate key, out-of-range date)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 500, description = "internal error (a caught panic included)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 503, description = "overloaded, timed out or ledger stopped (Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn replace_payment_method(
    State(st): State<AppState>,
    p: Principal,
    P(id): P<String>,
    Body(req): Body<PaymentMethodDto>,
) -> ApiResult<Json<Overview>> {
    p.require(ADMIN)?;
    let (current, info) = {
        let read = st.ledger.read();
        let a = read
            .accounts
            .get(&id)
            .filter(|a| a.is_open())
            .ok_or_else(|| ApiError::not_found(format!("no account {id:?}")))?;
        (a.payment_method.clone(), a.info.clone())
    };
    let card = req.card.unwrap_or_default();
    let both = |a: Option<String>, b: Option<String>, name: &str| -> ApiResult<Option<String>> {
        match (a, b) {
            (Some(_), Some(_)) => Err(ApiError::unprocessable(format!(
                "{name} is given both flat and in card"
            ))),
            (a, b) => Ok(a.or(b)),
        }
    };
    let token = both(req.token, card.token, "token")?;
    let brand = both(req.brand, card.brand, "brand")?;
    let last4 = both(req.last4, card.last4, "last4")?;
    if req.exp_month.is_some() && card.exp_month.is_some()
        || req.exp_year.is_some() && card.exp_year.is_some()
    {
        return Err(ApiError::unprocessable(
            "exp_month and exp_year are given both flat and in card",
        ));
    }
    let cur = current.as_deref();
    let required = |v: Option<String>, keep: Option<&String>, name: &str| -> ApiResult<String> {
        v.or_else(|| keep.cloned())
            .ok_or_else(|| ApiError::unprocessable(format!("{name} is required")))
    };
    let token = required(token, cur.map(|m| &m.token), "token")?;
    let brand = required(brand, cur.map(|m| &m.brand), "brand")?;
    let last4 = required(last4, cur.map(|m| &m.last4), "last4")?;
    let exp_month = req
        .exp_month
        .or(card.exp_month)
        .or(cur.map(|m| m.exp_month))
        .ok_or_else(|| ApiError::unprocessable("exp_month is required"))?;
    let exp_year = req
        .exp_year
        .or(card.exp_year)
        .or(cur.map(|m| m.exp_year))
        .ok_or_else(|| ApiError::unprocessable("exp_year is required"))?;
    let billing_email = req
        .billing_email
        .or_else(|| cur.map(|m| m.billing_email.clone()))
        .or_else(|| info.as_ref().map(|i| i.billing_email.clone()))
        .ok_or_else(|| ApiError::unprocessable("billing_email is required"))?;
    let email_language = req
        .email_language
        .or_else(|| cur.map(|m| m.email_language.clone()))
        .or_else(|| info.as_ref().map(|i| i.email_language.to_string()))
        .unwrap_or_else(|| "en".to_string());
    check_email(&billing_email)?;
    check_line("token", &token, 200)?;
    check_line("brand", &brand, 40)?;
    if last4.len() != 4 || !last4.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::unprocessable("last4 must be exactly 4 digits"));
    }
    if !(1..=12).contains(&exp_month) || !(2000..=2100).contains(&exp_year) {
        return Err(ApiError::unprocessable(
            "exp_month must be 1..=12 and exp_year a four-digit year",
        ));
    }
    let address = match req.address {
        None => cur.and_then(|m| m.address.clone()),
        Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s),
        Some(v @ serde_json::Value::Object(_)) => Some(crate::pan::address_text(&v)),
        Some(_) => {
            return Err(ApiError::unprocessable(
                "address must be a string or an object",
            ))
        }
    };
    let m = PaymentMethodReplaced {
        billing_email,
        email_language: accrue_core::email_language(&email_language).to_string(),
        address,
        token,
        brand: brand.to_lowercase(),
        last4,
        exp_month,
        exp_year,
    };
    let id = parse_account_id(&id)?;
    st.ledger
        .execute(id.as_str(), Command::ReplacePaymentMethod(Box::new(m)))
        .await?;
    Ok(Json(live_overview(&st, id.as_str())?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentDto {
    invoice_number: String,
    /// `succeeded`, `failed` or `refunded`.
    outcome: String,
    reference: String,
    #[serde(default)]
    failure_reason: Option<String>,
    /// For `refunded`: the amount given back (≤ what was paid), a decimal string.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    amount: Option<serde_json::Value>,
}

#[utoipa::path(post, path = "/v1/payments", tag = "payments", request_body(content = PaymentDto, content_type = "application/json"), responses((status = 200, description = "recorded (a retry of the same outcome changes nothing)", body = InvoiceDto), (status = 400, description = "malformed request (syntax, path decoding)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 401, description = "missing or invalid token", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "wrong role", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "not found", body = crate::error::Problem, content_type = "application/problem+json"), (status = 409, description = "a rule of the ledger refused it", body = crate::error::Problem, content_type = "application/problem+json"), (status = 413, description = "body too large", body = crate::error::Problem, content_type = "application/problem+json"), (status = 414, description = "request target too long", body = crate::error::Problem, content_type = "application/problem+json"), (status = 415, description = "body is not JSON", body = crate::error::Problem, content_type = "application/problem+json"), (status = 422, description = "invalid or refused (card data, unknown field, control character, duplicate key, out-of-range date)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 500, description = "internal error (a caught panic included)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 503, description = "overloaded, timed out or ledger stopped (Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn post_payment(
    State(st): State<AppState>,
    p: Principal,
    Body(req): Body<PaymentDto>,
) -> ApiResult<Json<InvoiceDto>> {
    p.require(ADMIN)?;
    let outcome = match req.outcome.as_str() {
        "succeeded" => accrue_core::PaymentOutcome::Succeeded,
        "failed" => accrue_core::PaymentOutcome::Failed {
            reason: req.failure_reason.clone(),
        },
        "refunded" => {
            let amount = match &req.amount {
                Some(serde_json::Value::String(a)) => accrue_core::parse_money(a).ok(),
                _ => None,
            }
            .ok_or_else(|| {
                ApiError::unprocessable(
                    "a refund needs amount, a decimal string with at most 2 decimals",
                )
            })?;
            accrue_core::PaymentOutcome::Refunded { amount }
        }
        o => {
            return Err(ApiError::unprocessable(format!(
                "outcome must be succeeded, failed or refunded, got {o:?}"
            )))
        }
    };
    if req.amount.is_some() && req.outcome != "refunded" {
        return Err(ApiError::unprocessable("amount is only for refunded"));
    }
    check_line("reference", &req.reference, 200)?;
    check_line("invoice_number", &req.invoice_number, 64)?;
    if let Some(r) = &req.failure_reason {
        check_text("failure_reason", r, 500)?;
    }
    let cmd = Command::RecordPayment {
        invoice_number: req.invoice_number.clone(),
        reference: req.reference,
        outcome,
    };
    st.ledger
        .execute_for_invoice(&req.invoice_number, cmd)
        .await?;
    let rec = st
        .ledger
        .read()
        .invoices
        .get(&req.invoice_number)
        .map(|r| (**r).clone())
        .ok_or_else(|| ApiError::not_found("no such invoice"))?;
    invoice_json(&st, rec).await
}

// ---------------------------------------------------------------- usage

fn invalid(detail: impl Into<String>) -> UsageItem {
    UsageItem::Invalid {
        detail: detail.into(),
    }
}

pub fn usage_item(e: UsageEventDto) -> UsageItem {
    let Some(id) = e.id.filter(|i| !i.is_empty()) else {
        return invalid("id is required");
    };
    if id.len() > MAX_ID_LEN {
        return invalid(format!("id is longer than {MAX_ID_LEN} characters"));
    }
    if id.chars().any(crate::guard::forbidden_in_line) || crate::guard::contains_pan(&id) {
        return invalid("id must be one line without control characters or card data");
    }
    let Some(account) = e.account_id else {
        return invalid("account_id is required");
    };
    if AccountId::parse(&account).is_err() {
        return invalid(format!("account_id {account:?} is not a valid account id"));
    }
    let Some(amount) = e.amount else {
        return invalid("amount is required");
    };
    let amount = match parse_money(&amount.0) {
        Ok(a) if a > Decimal::ZERO => a,
        Ok(_) => return invalid("amount must be positive"),
        Err(err) => return invalid(err.to_string()),
    };
    let (occurred_at, given) = match e.occurred_at {
        None => (Utc::now(), false),
        Some(s) => match bounded_instant(&s) {
            Some(t) => (accrue_ledger::clock::truncate(t), true),
            None => {
                return invalid(format!(
                    "occurred_at {s:?} is not an RFC 3339 timestamp in the years 1970..=9999"
                ))
            }
        },
    };
    for (name, v) in [("product", &e.product), ("feature", &e.feature)] {
        if v.as_ref().is_some_and(|s| s.len() > MAX_ID_LEN) {
            return invalid(format!("{name} is longer than {MAX_ID_LEN} characters"));
        }
        if v.as_ref()
            .is_some_and(|s| s.chars().any(crate::guard::forbidden_in_line))
        {
            return invalid(format!(
                "{name} must be one line without control characters"
            ));
        }
        if v.as_ref().is_some_and(|s| crate::pan::contains_pan(s)) {
            return invalid(format!("{name} contains a card number; it is never stored"));
        }
    }
    let metadata = match e.metadata {
        None | Some(serde_json::Value::Null) => None,
        Some(v) if crate::pan::find_card_data(&v).is_some() => {
            return invalid(
                "metadata contains card data (a card number or CVC); it is never stored",
            )
        }
        Some(v @ serde_json::Value::Object(_)) => {
            let s = v.to_string();
            if s.len() > MAX_METADATA_BYTES {
                return invalid(format!(
                    "metadata is larger than {MAX_METADATA_BYTES} bytes"
                ));
            }
            Some(s)
        }
        Some(_) => return invalid("metadata must be an object"),
    };
    UsageItem::Valid {
        account_id: account,
        input: UsageInput {
            usage_id: id,
            amount,
            occurred_at,
            product: e.product,
            feature: e.feature,
            metadata,
        },
        occurred_at_given: given,
    }
}

/// Parsing, checking and answering a batch run on the low-priority bulk
/// pool ([`accrue_ledger::priority`]), so balance queries on the async
/// threads never queue behind a 10,000-event body.
#[utoipa::path(post, path = "/v1/usage", tag = "usage", request_body(content = crate::dto::UsageBatch, content_type = "application/json"), responses((status = 200, description = "one result per event, in order", body = crate::dto::UsageResponse), (status = 400, description = "malformed request (syntax, path decoding)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 401, description = "missing or invalid token", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "wrong role", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "not found", body = crate::error::Problem, content_type = "application/problem+json"), (status = 409, description = "a rule of the ledger refused it", body = crate::error::Problem, content_type = "application/problem+json"), (status = 413, description = "body too large", body = crate::error::Problem, content_type = "application/problem+json"), (status = 414, description = "request target too long", body = crate::error::Problem, content_type = "application/problem+json"), (status = 415, description = "body is not JSON", body = crate::error::Problem, content_type = "application/problem+json"), (status = 422, description = "invalid or refused (card data, unknown field, control character, duplicate key, out-of-range date)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 500, description = "internal error (a caught panic included)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 503, description = "overloaded, timed out or ledger stopped (Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn post_usage(
    State(st): State<AppState>,
    p: Principal,
    RawBody(bytes): RawBody,
) -> ApiResult<Response> {
    p.require(&[Role::Admin, Role::Ingest])?;
    let pool = accrue_ledger::priority::BulkPool::global();
    let stopped = || ApiError::internal("the bulk pool has stopped");
    let (ids, items) = pool
        .run(
            move || -> ApiResult<(Vec<Option<String>>, Vec<UsageItem>)> {
                let batch: UsageBatch = parse_json(&bytes)?;
                if batch.events.len() > MAX_BATCH_EVENTS {
                    return Err(ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "batch_too_large",
                        format!(
                            "at most {MAX_BATCH_EVENTS} events per request, got {}",
                            batch.events.len()
                        ),
                    ));
                }
                let ids = batch.events.iter().map(|e| e.id.clone()).collect();
                let items = batch.events.into_iter().map(usage_item).collect();
                Ok((ids, items))
            },
        )
        .await
        .ok_or_else(stopped)??;
    let started = Instant::now();
    let outcomes = st.ledger.ingest(items).await?;
    st.ledger
        .metrics()
        .observe_ingest(started.elapsed().as_secs_f64());
    let body = pool
        .run(move || serde_json::to_vec(&usage_response(outcomes, ids, p.role)))
        .await
        .ok_or_else(stopped)?
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

pub(crate) fn usage_response(
    outcomes: Vec<UsageOutcome>,
    ids: Vec<Option<String>>,
    role: Role,
) -> UsageResponse {
    let mut resp = UsageResponse {
        accepted: 0,
        duplicate: 0,
        rejected: 0,
        results: Vec::with_capacity(outcomes.len()),
    };
    for (index, (o, id)) in outcomes.into_iter().zip(ids).enumerate() {
        let (status, reason, detail) = match o {
            UsageOutcome::Accepted => {
                resp.accepted += 1;
                ("accepted", None, None)
            }
            UsageOutcome::Duplicate => {
                resp.duplicate += 1;
                ("duplicate", None, None)
            }
            UsageOutcome::Rejected { reason, detail } => {
                resp.rejected += 1;
                // Balances are not the ingest role's to read.
                let detail = if role == Role::Ingest && reason == "credit_limit_exceeded" {
                    "the event would take the account above its credits".to_string()
                } else {
                    detail
                };
                ("rejected", Some(reason), Some(detail))
            }
        };
        resp.results.push(UsageResult {
            index,
            id,
            status,
            reason,
            detail,
        });
    }
    resp
}

// ---------------------------------------------------------------- invoices

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct InvoiceLineDto {
    pub kind: String,
    pub description: String,
    #[schema(value_type = String)]
    pub quantity: String,
    pub unit_price: Money,
    pub amount: Money,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct StatusChangeDto {
    pub status: &'static str,
    pub at: DateTime<Utc>,
    pub event: &'static str,
    pub position: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct InvoiceDto {
    pub number: String,
    pub account_id: String,
    pub serial_number: String,
    pub customer_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_address: Option<String>,
    pub date: String,
    pub issued_at: DateTime<Utc>,
    pub due_date: String,
    pub payment_terms: String,
    pub period: PeriodDto,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credit_period: Option<PeriodDto>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub billing_period: Option<PeriodDto>,
    pub subscription: String,
    pub lines: Vec<InvoiceLineDto>,
    /// The net (sum of the rounded lines); `subtotal` is the same figure.
    pub net: Money,
    pub subtotal: Money,
    /// Tax per rate (empty for an invoice issued without tax facts).
    pub tax: Vec<TaxAmountDto>,
    /// The gross: `net` + the tax.
    pub total: Money,
    pub currency: String,
    /// The tax facts as issued: treatment, country, the customer's tax id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tax_treatment: Option<TaxTreatmentDto>,
    /// The issuer as issued (absent when none was configured).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<IssuerDto>,
    /// The language the PDF is printed in.
    pub language: String,
    /// `unpaid`, `paid`, `credited`, `partially_credited` or `void`.
    pub status: &'static str,
    /// `total − credited − paid`, never below zero.
    pub amount_due: Money,
    pub credited: Money,
    pub paid: Money,
    pub refunded: Money,
    /// Numbers of the credit notes against it, oldest first.
    pub credit_notes: Vec<String>,
    pub status_history: Vec<StatusChangeDto>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pdf_sha256: Option<String>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct TaxAmountDto {
    /// Percent, as a decimal string (`"19"`, `"7.25"`).
    #[schema(value_type = String)]
    pub rate: String,
    pub taxable: Money,
    pub amount: Money,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct TaxTreatmentDto {
    /// `standard`, `reverse_charge` or `exempt`.
    pub treatment: &'static str,
    pub country: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_tax_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exempt_reason: Option<String>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct IssuerDto {
    pub legal_name: String,
    pub address: Vec<String>,
    pub country: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tax_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_instructions: Option<String>,
}

/// The tax rows and facts of a document's legal part.
pub fn tax_dto(
    legal: Option<&accrue_core::events::DocumentLegal>,
) -> (Vec<TaxAmountDto>, Option<TaxTreatmentDto>) {
    let Some(t) = legal.and_then(|l| l.tax.as_ref()) else {
        return (vec![], None);
    };
    (
        t.rates
            .iter()
            .map(|r| TaxAmountDto {
                rate: r.rate.normalize().to_string(),
                taxable: Money(r.taxable),
                amount: Money(r.amount),
            })
            .collect(),
        Some(TaxTreatmentDto {
            treatment: t.treatment.as_str(),
            country: t.country.clone(),
            customer_tax_id: t.customer_tax_id.clone(),
            exempt_reason: t.exempt_reason.clone(),
        }),
    )
}

/// An invoice's money after its issue, from the account's state.
#[derive(Debug, Clone, Default)]
pub struct Amounts {
    pub amount_due: rust_decimal::Decimal,
    pub credited: rust_decimal::Decimal,
    pub paid: rust_decimal::Decimal,
    pub refunded: rust_decimal::Decimal,
    pub credit_notes: Vec<String>,
}

pub fn amounts_of(read: &accrue_projections::ReadModels, rec: &InvoiceRecord) -> Amounts {
    let Some(st) = read.accounts.get(&rec.account_id) else {
        return Amounts::default();
    };
    let Some(i) = st.invoices.get(&rec.issued.number) else {
        return Amounts::default();
    };
    Amounts {
        amount_due: i.amount_due(),
        credited: i.credited,
        paid: i.paid,
        refunded: i.refunded,
        credit_notes: st
            .corrections()
            .map(|c| {
                c.credit_notes
                    .iter()
                    .filter(|n| n.1 == rec.issued.number)
                    .map(|n| n.0.clone())
                    .collect()
            })
            .unwrap_or_default(),
    }
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct InvoiceListItem {
    /// `invoice` or `credit_note`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub number: String,
    /// For a credit note: the invoice it credits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invoice_number: Option<String>,
    pub date: String,
    pub subscription: String,
    pub period: PeriodDto,
    pub status: &'static str,
    pub total: Money,
    pub currency: String,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct InvoiceList {
    pub from: String,
    pub to: String,
    pub invoices: Vec<InvoiceListItem>,
}

fn invoice_period(r: &InvoiceRecord) -> PeriodDto {
    let i = &r.issued;
    i.billing_period
        .or(i.credit_period)
        .map(PeriodDto::from)
        .unwrap_or(PeriodDto {
            start: i.issued_at,
            end: i.issued_at,
        })
}

pub(crate) fn subscription_label(r: &InvoiceRecord) -> String {
    format!("{} license {}", r.issued.currency, r.issued.serial_number)
}

/// An invoice record with its lines and customer, read from the log.
async fn invoice_json(st: &AppState, rec: InvoiceRecord) -> ApiResult<Json<InvoiceDto>> {
    let ledger = st.ledger.clone();
    let amounts = amounts_of(&st.ledger.read(), &rec);
    blocking(move || {
        ledger
            .invoice_issued(&rec)
            .map(|full| Json(invoice_dto(&rec, &full, amounts)))
    })
    .await
}

/// `full` is the record's `InvoiceIssued` (see [`accrue_ledger::Ledger::invoice_issued`]).
pub fn invoice_dto(
    r: &InvoiceRecord,
    full: &accrue_core::events::InvoiceIssued,
    amounts: Amounts,
) -> InvoiceDto {
    let i = &r.issued;
    let legal = full.legal.as_deref();
    let (tax, tax_treatment) = tax_dto(legal);
    let net = legal
        .and_then(|l| l.tax.as_ref())
        .map_or(i.total, |t| t.net);
    InvoiceDto {
        net: Money(net),
        tax,
        tax_treatment,
        issuer: legal.and_then(|l| l.issuer.as_ref()).map(|x| IssuerDto {
            legal_name: x.legal_name.clone(),
            address: x.address.clone(),
            country: x.country.clone(),
            tax_id: x.tax_id.clone(),
            registration: x.registration.clone(),
            payment_instructions: x.payment_instructions.clone(),
        }),
        language: legal.map_or("en", |l| l.language.as_str()).to_string(),
        number: i.number.clone(),
        account_id: r.account_id.clone(),
        serial_number: i.serial_number.to_string(),
        customer_name: full.customer_name.clone(),
        customer_address: full.customer_address.clone(),
        date: i.issued_at.format("%Y-%m-%d").to_string(),
        issued_at: i.issued_at,
        due_date: i.due_date.format("%Y-%m-%d").to_string(),
        payment_terms: format!("Net {} days", accrue_core::invoice::PAYMENT_TERMS_DAYS),
        period: invoice_period(r),
        credit_period: i.credit_period.map(Into::into),
        billing_period: i.billing_period.map(Into::into),
        subscription: subscription_label(r),
        lines: full
            .lines
            .iter()
            .map(|l| InvoiceLineDto {
                kind: format!("{:?}", l.kind).to_lowercase(),
                description: l.description.clone(),
                quantity: l.quantity.normalize().to_string(),
                unit_price: Money(l.unit_price),
                amount: Money(l.amount),
            })
            .collect(),
        subtotal: Money(net),
        total: Money(i.total),
        currency: i.currency.to_string(),
        status: r.status.as_str(),
        amount_due: Money(amounts.amount_due),
        credited: Money(amounts.credited),
        paid: Money(amounts.paid),
        refunded: Money(amounts.refunded),
        credit_notes: amounts.credit_notes,
        status_history: r
            .history()
            .iter()
            .map(|h| StatusChangeDto {
                status: h.status.as_str(),
                at: h.at,
                event: h.event,
                position: h.position,
                reference: h.reference.clone(),
            })
            .collect(),
        last_failure_reason: r.last_failure.clone(),
        pdf_sha256: r.pdf_sha256.clone(),
    }
}

#[derive(Deserialize)]
pub struct Range {
    from: Option<String>,
    to: Option<String>,
    as_of: Option<String>,
}

fn parse_date(name: &str, s: &str) -> ApiResult<NaiveDate> {
    let d = NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .or_else(|_| DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc).date_naive()))
        .map_err(|_| {
            ApiError::unprocessable(format!("{name} must be a date YYYY-MM-DD, got {s:?}"))
        })?;
    in_years(name, d)
}

#[utoipa::path(get, path = "/v1/accounts/{id}/invoices", tag = "invoices", params(("id" = String, Path, description = "account id"), ("from" = Option<String>, Query, description = "YYYY-MM-DD"), ("to" = Option<String>, Query, description = "YYYY-MM-DD"), ("as_of" = Option<String>, Query, description = "RFC 3339 instant")), responses((status = 200, description = "newest first", body = InvoiceList), (status = 400, description = "malformed request (syntax, path decoding)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 401, description = "missing or invalid token", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "wrong role", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "not found", body = crate::error::Problem, content_type = "application/problem+json"), (status = 422, description = "invalid or refused (card data, unknown field, control character, duplicate key, out-of-range date)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 500, description = "internal error (a caught panic included)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 503, description = "overloaded, timed out or ledger stopped (Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn list_invoices(
    State(st): State<AppState>,
    p: Principal,
    P(id): P<String>,
    Q(q): Q<Range>,
) -> ApiResult<Json<InvoiceList>> {
    p.require(READERS)?;
    p.may_read_account(&id)?;
    let today = st.ledger.now().date_naive();
    let to =
        q.to.as_deref()
            .map(|s| parse_date("to", s))
            .transpose()?
            .unwrap_or(today);
    let from = match q.from.as_deref() {
        Some(s) => parse_date("from", s)?,
        None => to - Duration::days(365 * 2),
    };
    if from > to {
        return Err(ApiError::unprocessable(format!(
            "from ({from}) is after to ({to})"
        )));
    }
    let as_of = past_instant(&st, q.as_of.as_deref())?;
    let read = st.ledger.read();
    if !read.accounts.get(&id).is_some_and(|a| a.is_open()) {
        return Err(ApiError::not_found(format!("no account {id:?}")));
    }
    let items: Vec<&InvoiceRecord> = read
        .invoices_of(&id)
        .filter(|r| {
            let d = r.issued.issued_at.date_naive();
            from <= d && d <= to && as_of.is_none_or(|t| r.issued.issued_at <= t)
        })
        .collect();
    let mut list: Vec<(DateTime<Utc>, InvoiceListItem)> = items
        .into_iter()
        .map(|r| {
            let item = InvoiceListItem {
                kind: "invoice",
                number: r.issued.number.clone(),
                invoice_number: None,
                date: r.issued.issued_at.format("%Y-%m-%d").to_string(),
                subscription: subscription_label(r),
                period: invoice_period(r),
                status: as_of.map_or(r.status, |t| r.status_at(t)).as_str(),
                total: Money(r.issued.total),
                currency: r.issued.currency.to_string(),
            };
            (r.issued.issued_at, item)
        })
        .collect();
    // Credit notes of the same range, beside the invoices they credit.
    let notes = read
        .accounts
        .get(&id)
        .and_then(|a| a.corrections())
        .map(|c| c.credit_notes.clone())
        .unwrap_or_default();
    for (number, ..) in notes {
        let Some(cn) = read.credit_notes.get(&number) else {
            continue;
        };
        let d = cn.issued_at.date_naive();
        if !(from <= d && d <= to && as_of.is_none_or(|t| cn.issued_at <= t)) {
            continue;
        }
        let subscription = read
            .invoices
            .get(&cn.invoice_number)
            .map(|r| subscription_label(r))
            .unwrap_or_default();
        list.push((
            cn.issued_at,
            InvoiceListItem {
                kind: "credit_note",
                number: cn.number.clone(),
                invoice_number: Some(cn.invoice_number.clone()),
                date: cn.issued_at.format("%Y-%m-%d").to_string(),
                subscription,
                period: PeriodDto {
                    start: cn.issued_at,
                    end: cn.issued_at,
                },
                status: "issued",
                total: Money(cn.total),
                currency: cn.currency.clone(),
            },
        ));
    }
    list.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.number.cmp(&a.1.number)));
    Ok(Json(InvoiceList {
        from: from.to_string(),
        to: to.to_string(),
        invoices: list.into_iter().map(|(_, i)| i).collect(),
    }))
}

fn invoice_for(st: &AppState, p: &Principal, number: &str) -> ApiResult<InvoiceRecord> {
    p.require(READERS)?;
    let read = st.ledger.read();
    let rec = read
        .invoices
        .get(number)
        .ok_or_else(|| ApiError::not_found(format!("no invoice {number:?}")))?;
    if p.role == Role::Account && p.account_id.as_deref() != Some(rec.account_id.as_str()) {
        return Err(ApiError::not_found(format!("no invoice {number:?}")));
    }
    Ok((**rec).clone())
}

#[utoipa::path(get, path = "/v1/invoices/{number}", tag = "invoices", params(("number" = String, Path, description = "invoice number")), responses((status = 200, description = "invoice with lines", body = InvoiceDto), (status = 400, description = "malformed request (syntax, path decoding)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 401, description = "missing or invalid token", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "wrong role", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "not found", body = crate::error::Problem, content_type = "application/problem+json"), (status = 422, description = "invalid or refused (card data, unknown field, control character, duplicate key, out-of-range date)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 500, description = "internal error (a caught panic included)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 503, description = "overloaded, timed out or ledger stopped (Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn get_invoice(
    State(st): State<AppState>,
    p: Principal,
    P(number): P<String>,
) -> ApiResult<Json<InvoiceDto>> {
    let rec = invoice_for(&st, &p, &number)?;
    invoice_json(&st, rec).await
}

#[utoipa::path(get, path = "/v1/invoices/{number}/pdf", tag = "invoices", params(("number" = String, Path, description = "invoice number")), responses((status = 200, description = "the PDF as issued", body = Vec<u8>, content_type = "application/pdf"), (status = 400, description = "malformed request (syntax, path decoding)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 401, description = "missing or invalid token", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "wrong role", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "not found", body = crate::error::Problem, content_type = "application/problem+json"), (status = 422, description = "invalid or refused (card data, unknown field, control character, duplicate key, out-of-range date)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 500, description = "internal error (a caught panic included)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 503, description = "overloaded, timed out or ledger stopped (Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn get_invoice_pdf(
    State(st): State<AppState>,
    p: Principal,
    P(number): P<String>,
) -> ApiResult<Response> {
    let rec = invoice_for(&st, &p, &number)?;
    let ledger = st.ledger.clone();
    let pdf = blocking(move || {
        let full = ledger.invoice_issued(&rec).map_err(|e| e.to_string())?;
        accrue_projections::pdf::render(&full).map_err(|e| e.to_string())
    })
    .await?;
    Ok(pdf_response(&number, pdf))
}

/// A document's PDF as served: inline, named after its number.
pub(crate) fn pdf_response(number: &str, pdf: Vec<u8>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/pdf".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("inline; filename=\"{number}.pdf\""),
            ),
        ],
        pdf,
    )
        .into_response()
}

#[utoipa::path(get, path = "/v1/invoices/{number}/xml", tag = "invoices", params(("number" = String, Path, description = "invoice number")), responses((status = 200, description = "the Factur-X / ZUGFeRD CII XML (EN 16931) embedded in the PDF as issued", body = String, content_type = "application/xml"), (status = 400, description = "malformed request (syntax, path decoding)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 401, description = "missing or invalid token", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "wrong role", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "not found, or issued without an issuer or tax facts (no e-invoice)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 422, description = "invalid or refused (card data, unknown field, control character, duplicate key, out-of-range date)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 500, description = "internal error (a caught panic included)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 503, description = "overloaded, timed out or ledger stopped (Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn get_invoice_xml(
    State(st): State<AppState>,
    p: Principal,
    P(number): P<String>,
) -> ApiResult<Response> {
    let rec = invoice_for(&st, &p, &number)?;
    let ledger = st.ledger.clone();
    let full = blocking(move || ledger.invoice_issued(&rec)).await?;
    // Only an invoice issued with an issuer and tax facts has one.
    if !accrue_projections::einvoice::applies(full.legal.as_deref()) {
        return Err(ApiError::not_found(format!(
            "invoice {number:?} was issued without an issuer or tax facts: it has no e-invoice"
        )));
    }
    let xml = accrue_projections::einvoice::invoice_xml(&full);
    Ok((
        [
            (header::CONTENT_TYPE, "application/xml".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("inline; filename=\"{number}.xml\""),
            ),
        ],
        xml,
    )
        .into_response())
}

// ---------------------------------------------------------------- audit

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

// ---------------------------------------------------------------- clock

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

// ---------------------------------------------------------------- finance

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

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VoidDto {
    reason: String,
}

#[utoipa::path(post, path = "/v1/invoices/{number}/void", tag = "invoices", request_body(content = VoidDto, content_type = "application/json"), params(("number" = String, Path, description = "invoice number")), responses((status = 200, description = "voided", body = InvoiceDto), (status = 400, description = "malformed request (syntax, path decoding)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 401, description = "missing or invalid token", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "wrong role", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "not found", body = crate::error::Problem, content_type = "application/problem+json"), (status = 409, description = "a rule of the ledger refused it", body = crate::error::Problem, content_type = "application/problem+json"), (status = 413, description = "body too large", body = crate::error::Problem, content_type = "application/problem+json"), (status = 414, description = "request target too long", body = crate::error::Problem, content_type = "application/problem+json"), (status = 415, description = "body is not JSON", body = crate::error::Problem, content_type = "application/problem+json"), (status = 422, description = "invalid or refused (card data, unknown field, control character, duplicate key, out-of-range date)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 500, description = "internal error (a caught panic included)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 503, description = "overloaded, timed out or ledger stopped (Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn void_invoice(
    State(st): State<AppState>,
    p: Principal,
    P(number): P<String>,
    Body(req): Body<VoidDto>,
) -> ApiResult<Json<InvoiceDto>> {
    p.require(ADMIN)?;
    check_text("reason", &req.reason, 500)?;
    st.ledger
        .execute_for_invoice(
            &number,
            Command::VoidInvoice {
                number: number.clone(),
                reason: req.reason,
            },
        )
        .await?;
    let rec = st
        .ledger
        .read()
        .invoices
        .get(&number)
        .map(|r| (**r).clone())
        .ok_or_else(|| ApiError::not_found("no such invoice"))?;
    invoice_json(&st, rec).await
}
