//! The license server's rooms (SPEC §7): activations, the signed
//! definition and its keys, sessions, the license term, the offline key,
//! and the `license`/`sessions` blocks of the overview. Handlers, their
//! wire types and validation live here together.

use accrue_core::license::{
    ActivationRef, ActivationStatus, LicenseCommand, LicenseError, LicenseState, ReleaseReason,
    Session, SessionClient, SessionSummary, UserType, MAX_SESSIONS,
};
use accrue_core::{AccountEvent, AccountState, DomainError};
use accrue_ledger::{LedgerError, LicenseTarget};
use axum::body::Body as AxumBody;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::auth::{Principal, Role};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::Body;
use crate::AppState;

const JWT: &str = "application/jwt";
/// The overview body is small; a decorated one beyond this is left alone.
const MAX_OVERVIEW_BYTES: usize = 1 << 20;

fn license_error(e: LedgerError) -> ApiError {
    match e {
        LedgerError::Domain(DomainError::License(l)) => {
            let status = match &l {
                LicenseError::BadCredentials | LicenseError::UnknownSerial => {
                    return bad_credentials()
                }
                LicenseError::ActivationChurn { .. } => StatusCode::TOO_MANY_REQUESTS,
                LicenseError::UnknownActivation(_) | LicenseError::NotIssued => {
                    StatusCode::NOT_FOUND
                }
                LicenseError::ActivationLimitReached { .. }
                | LicenseError::TermEndInPast { .. }
                | LicenseError::Expired { .. } => StatusCode::CONFLICT,
            };
            ApiError::new(status, l.reason(), l.to_string())
        }
        e => e.into(),
    }
}

fn bad_credentials() -> ApiError {
    // Never say which half was wrong.
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "the serial number and control number do not match a license",
    )
}

/// A `server` token: its account and activation (active, else 401).
pub struct Server {
    pub account_id: String,
    pub activation_id: String,
}

impl FromRequestParts<AppState> for Server {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(ApiError::unauthorized)?;
        match st.ledger.server_of_token(token) {
            Some((account_id, activation_id)) => Ok(Server {
                account_id,
                activation_id,
            }),
            // Another role's valid token may not act as a server.
            None if st.tokens.principal(token).is_some() => Err(ApiError::forbidden()),
            None => Err(ApiError::unauthorized()),
        }
    }
}

/// Teaches `Tokens` the server tokens of this ledger (role `server`, its
/// account), so other routes answer them 403/404 rather than 401.
pub fn install(st: &AppState) {
    let ledger = st.ledger.clone();
    let _ = st.tokens.server_lookup.set(Box::new(move |token| {
        ledger
            .server_of_token(token)
            .map(|(account_id, _)| Principal {
                role: Role::Server,
                account_id: Some(account_id),
            })
    }));
}

fn jwt_response(status: StatusCode, version: u64, jws: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(JWT)),
            (header::ETAG, etag(version)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        jws,
    )
        .into_response()
}

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits are a valid header")
}

/// `If-None-Match` names this version (quoted or not, weak or not, `*`).
fn matches_version(headers: &HeaderMap, version: u64) -> bool {
    let v = version.to_string();
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(','))
        .map(|t| t.trim().trim_start_matches("W/").trim_matches('"'))
        .any(|t| t == v || t == "*")
}

// ------------------------------------------------------------ activations

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActivationRequest {
    pub serial_number: String,
    pub control_number: String,
    pub server_id: String,
    #[serde(default)]
    pub hostname: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ActivationResponse {
    pub activation_id: String,
    /// Bearer token of role `server`, bound to this activation.
    pub token: String,
    /// The signed license definition (compact JWS).
    pub definition: String,
}

#[utoipa::path(
    post,
    path = "/v1/activations",
    tag = "license",
    request_body = ActivationRequest,
    responses(
        (status = 201, description = "activated", body = ActivationResponse),
        (status = 200, description = "this server was already activated: the same activation", body = ActivationResponse),
        (status = 401, description = "serial number and control number do not match", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "activation_limit_reached", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "too many failures for this serial number, or activation_churn", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn activate(
    State(st): State<AppState>,
    probe: Option<axum::Extension<crate::cluster::Probe>>,
    Body(req): Body<ActivationRequest>,
) -> ApiResult<Response> {
    if st.ledger.activation_throttled(&req.serial_number) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            format!(
                "more than {} failed activations of this serial number within a minute",
                accrue_ledger::MAX_FAILURES_PER_MINUTE
            ),
        ));
    }
    let serial = req.serial_number.clone();
    let cmd = LicenseCommand::Activate {
        control_number: req.control_number,
        server_id: req.server_id,
        hostname: req.hostname,
        activation_id: format!("act_{}", uuid::Uuid::now_v7().simple()),
    };
    let out = match st
        .ledger
        .license(LicenseTarget::Serial(serial.clone()), cmd)
        .await
    {
        Ok(o) => o,
        // A cluster's front asking each partition in turn: a partition
        // without this serial says so and counts no failure (the front
        // has the home partition answer, and count, if none has it).
        Err(LedgerError::Domain(DomainError::License(LicenseError::UnknownSerial)))
            if probe.is_some() =>
        {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                crate::cluster::UNKNOWN_SERIAL,
                "no account of this partition has the serial number",
            ));
        }
        Err(LedgerError::Domain(DomainError::License(
            LicenseError::BadCredentials | LicenseError::UnknownSerial,
        ))) => {
            st.ledger.activation_failed(&serial);
            return Err(bad_credentials());
        }
        Err(e) => return Err(license_error(e)),
    };
    let created = out
        .events
        .iter()
        .any(|e| matches!(e, AccountEvent::ActivationCreated(_)));
    let activation_id = out
        .activation_id
        .ok_or_else(|| ApiError::internal("activation not found after activating"))?;
    let claims = st
        .ledger
        .license_claims(&out.account_id, Some(&activation_id))
        .ok_or_else(|| ApiError::internal("no definition for a fresh activation"))?;
    let body = ActivationResponse {
        token: st.ledger.server_token(&out.account_id, &activation_id),
        definition: st.ledger.sign_definition(&claims),
        activation_id,
    };
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, [(header::ETAG, etag(claims.version))], Json(body)).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/license",
    tag = "license",
    security(("bearer" = [])),
    params(("If-None-Match" = Option<String>, Header, description = "the definition version last seen")),
    responses(
        (status = 200, description = "the signed definition (compact JWS); ETag is its version", body = Vec<u8>, content_type = "application/jwt"),
        (status = 304, description = "unchanged since the version in If-None-Match"),
        (status = 401, description = "no, or a released, server token", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_license(
    State(st): State<AppState>,
    server: Server,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let version = st
        .ledger
        .license_version(&server.account_id, &server.activation_id)
        .ok_or_else(ApiError::unauthorized)?;
    st.ledger
        .record_poll(&server.account_id, &server.activation_id);
    if matches_version(&headers, version) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag(version))]).into_response());
    }
    let claims = st
        .ledger
        .license_claims(&server.account_id, Some(&server.activation_id))
        .ok_or_else(ApiError::unauthorized)?;
    let jws = st.ledger.sign_definition(&claims);
    Ok(jwt_response(StatusCode::OK, claims.version, jws))
}

#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    tag = "license",
    responses((status = 200, description = "the Ed25519 public keys (OKP) that verify definitions", body = Object))
)]
pub async fn jwks(State(st): State<AppState>) -> Response {
    (
        [(header::CACHE_CONTROL, "max-age=300")],
        Json(st.ledger.jwks()),
    )
        .into_response()
}

#[utoipa::path(
    delete,
    path = "/v1/activation",
    tag = "license",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "released: this token gets 401 from now on"),
        (status = 401, description = "no, or a released, server token", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn release_own(State(st): State<AppState>, server: Server) -> ApiResult<StatusCode> {
    st.ledger
        .license(
            LicenseTarget::Account(server.account_id),
            LicenseCommand::Release {
                activation: ActivationRef::Id(server.activation_id),
                reason: ReleaseReason::Server,
            },
        )
        .await
        .map_err(license_error)?;
    Ok(StatusCode::NO_CONTENT)
}

fn known_account(st: &AppState, id: &str) -> ApiResult<()> {
    match st.ledger.read().accounts.get(id) {
        Some(a) if a.is_open() => Ok(()),
        _ => Err(ApiError::not_found(format!("no account {id:?}"))),
    }
}

#[utoipa::path(
    delete,
    path = "/v1/accounts/{id}/activations/{server_id}",
    tag = "license",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "account id"),
        ("server_id" = String, Path, description = "the activated server's id"),
    ),
    responses(
        (status = 204, description = "released"),
        (status = 404, description = "no such account or active activation", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn release_server(
    State(st): State<AppState>,
    p: Principal,
    Path((id, server_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    p.require(&[Role::Admin])?;
    known_account(&st, &id)?;
    st.ledger
        .license(
            LicenseTarget::Account(id),
            LicenseCommand::Release {
                activation: ActivationRef::ServerId(server_id),
                reason: ReleaseReason::Admin,
            },
        )
        .await
        .map_err(license_error)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ActivationDto {
    pub activation_id: String,
    pub server_id: String,
    pub hostname: Option<String>,
    pub activated_at: DateTime<Utc>,
    pub last_sync_at: Option<DateTime<Utc>>,
    /// `active` or `released`.
    pub status: String,
    /// `server`, `admin` or `inactive`, once released.
    pub released_by: Option<String>,
    pub released_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ActivationList {
    pub activations: Vec<ActivationDto>,
    pub used: u32,
    pub max: u32,
}

fn activation_list(st: &AppState, id: &str) -> ApiResult<ActivationList> {
    let list = st.ledger.with_license(id, |_, l| {
        let activations = l
            .activations
            .iter()
            .map(|a| {
                let pending = a
                    .is_active()
                    .then(|| st.ledger.pending_sync(&a.id))
                    .flatten();
                ActivationDto {
                    activation_id: a.id.clone(),
                    server_id: a.server_id.clone(),
                    hostname: a.hostname.clone(),
                    activated_at: a.activated_at,
                    last_sync_at: a.last_sync_at.max(pending),
                    status: if a.is_active() { "active" } else { "released" }.into(),
                    released_by: match a.status {
                        ActivationStatus::Active => None,
                        ActivationStatus::Released(r) => Some(r.as_str().into()),
                    },
                    released_at: a.released_at,
                }
            })
            .collect();
        ActivationList {
            activations,
            used: l.active_count(),
            max: l.max_activations,
        }
    });
    list.ok_or_else(|| ApiError::not_found(format!("no account {id:?}")))
}

#[utoipa::path(
    get,
    path = "/v1/accounts/{id}/activations",
    tag = "license",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "account id")),
    responses(
        (status = 200, description = "active and recently released activations", body = ActivationList),
        (status = 404, description = "no such account", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_activations(
    State(st): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<ActivationList>> {
    p.may_read_account(&id)?;
    Ok(Json(activation_list(&st, &id)?))
}

#[utoipa::path(
    post,
    path = "/v1/accounts/{id}/activations/reset",
    tag = "license",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "account id")),
    responses(
        (status = 200, description = "every activation released", body = ActivationList),
        (status = 404, description = "no such account", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn reset_activations(
    State(st): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<ActivationList>> {
    p.require(&[Role::Admin])?;
    known_account(&st, &id)?;
    st.ledger
        .license(LicenseTarget::Account(id.clone()), LicenseCommand::Reset)
        .await
        .map_err(license_error)?;
    Ok(Json(activation_list(&st, &id)?))
}

// --------------------------------------------------------------- sessions

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionDto {
    pub id: String,
    pub user_name: String,
    /// `full`, `viewer` or `system_manager`.
    pub user_type: String,
    #[serde(default)]
    pub module: Option<String>,
    /// `web` or `addin`.
    pub client: String,
    pub last_accessed_at: DateTime<Utc>,
}

impl TryFrom<SessionDto> for Session {
    type Error = ApiError;
    fn try_from(d: SessionDto) -> Result<Session, ApiError> {
        let user_type = match d.user_type.as_str() {
            "full" => UserType::Full,
            "viewer" => UserType::Viewer,
            "system_manager" => UserType::SystemManager,
            other => {
                return Err(ApiError::unprocessable(format!(
                    "user_type must be full, viewer or system_manager, not {other:?}"
                )))
            }
        };
        let client = match d.client.as_str() {
            "web" => SessionClient::Web,
            "addin" => SessionClient::Addin,
            other => {
                return Err(ApiError::unprocessable(format!(
                    "client must be web or addin, not {other:?}"
                )))
            }
        };
        Ok(Session {
            id: d.id,
            user_name: d.user_name,
            user_type,
            module: d.module,
            client,
            last_accessed_at: d.last_accessed_at,
        })
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionsRequest {
    pub sessions: Vec<SessionDto>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TypeCount {
    pub sessions: u32,
    pub users: u32,
}

/// The overview's `sessions` block.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SessionsBlock {
    pub total: u32,
    pub full: TypeCount,
    pub viewer: TypeCount,
    pub system_manager: TypeCount,
    pub web: u32,
    pub addin: u32,
}

impl From<SessionSummary> for SessionsBlock {
    fn from(s: SessionSummary) -> Self {
        let t = |i: usize| TypeCount {
            sessions: s.by_type[i].0,
            users: s.by_type[i].1,
        };
        SessionsBlock {
            total: s.total,
            full: t(0),
            viewer: t(1),
            system_manager: t(2),
            web: s.web,
            addin: s.addin,
        }
    }
}

#[utoipa::path(
    put,
    path = "/v1/activation/sessions",
    tag = "license",
    security(("bearer" = [])),
    request_body = SessionsRequest,
    responses(
        (status = 200, description = "this server's snapshot replaced; the license's sessions", body = SessionsBlock),
        (status = 401, description = "no, or a released, server token", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "seat_limit_exceeded: nothing stored", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid, or more than 10,000 sessions", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn report_sessions(
    State(st): State<AppState>,
    server: Server,
    Body(req): Body<SessionsRequest>,
) -> ApiResult<Json<SessionsBlock>> {
    if req.sessions.len() > MAX_SESSIONS {
        return Err(ApiError::unprocessable(format!(
            "at most {MAX_SESSIONS} sessions per snapshot"
        )));
    }
    let sessions = req
        .sessions
        .into_iter()
        .map(Session::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    st.ledger
        .license(
            LicenseTarget::Account(server.account_id.clone()),
            LicenseCommand::ReportSessions {
                activation_id: server.activation_id,
                sessions,
            },
        )
        .await
        .map_err(license_error)?;
    let now = st.ledger.now();
    st.ledger
        .with_license(&server.account_id, |_, l| {
            accrue_core::license::summarize(l, now, None).into()
        })
        .map(Json)
        .ok_or_else(ApiError::unauthorized)
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SessionItem {
    pub id: String,
    pub user_name: String,
    pub user_type: String,
    pub module: Option<String>,
    pub client: String,
    pub last_accessed_at: DateTime<Utc>,
    pub server_id: String,
    pub activation_id: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SessionList {
    pub sessions: Vec<SessionItem>,
    pub summary: SessionsBlock,
}

#[utoipa::path(
    get,
    path = "/v1/accounts/{id}/sessions",
    tag = "license",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "account id")),
    responses(
        (status = 200, description = "sessions of live activations (a server silent 30 minutes has none)", body = SessionList),
        (status = 404, description = "no such account", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_sessions(
    State(st): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<SessionList>> {
    p.may_read_account(&id)?;
    let now = st.ledger.now();
    st.ledger
        .with_license(&id, |_, l| {
            let sessions = l
                .active()
                .flat_map(|a| {
                    a.live_sessions(now).iter().map(|s| SessionItem {
                        id: s.id.clone(),
                        user_name: s.user_name.clone(),
                        user_type: s.user_type.as_str().into(),
                        module: s.module.clone(),
                        client: match s.client {
                            SessionClient::Web => "web",
                            SessionClient::Addin => "addin",
                        }
                        .into(),
                        last_accessed_at: s.last_accessed_at,
                        server_id: a.server_id.clone(),
                        activation_id: a.id.clone(),
                    })
                })
                .collect();
            SessionList {
                sessions,
                summary: accrue_core::license::summarize(l, now, None).into(),
            }
        })
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no account {id:?}")))
}

// ------------------------------------------------------------ the license

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LicenseRequest {
    /// `YYYY-MM-DD` (inclusive), or null: renews with the subscription.
    pub term_end: Option<NaiveDate>,
    #[serde(default)]
    pub max_activations: Option<u32>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Used {
    pub used: u32,
    pub max: u32,
}

/// The overview's `license` block.
#[derive(Serialize, utoipa::ToSchema)]
pub struct LicenseBlock {
    /// `active`, `expired` or `suspended`.
    pub status: String,
    pub term_end: Option<NaiveDate>,
    /// Admins only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_number: Option<String>,
    pub activations: Used,
    pub last_sync_at: Option<DateTime<Utc>>,
    /// The definition's version (its ETag).
    pub version: u64,
}

fn license_block(st: &AppState, l: &LicenseState, admin: bool) -> LicenseBlock {
    let last_sync_at = l
        .active()
        .filter_map(|a| a.last_sync_at.max(st.ledger.pending_sync(&a.id)))
        .max();
    LicenseBlock {
        status: l.status().into(),
        term_end: l.term_end,
        control_number: admin.then(|| l.control_number.to_string()),
        activations: Used {
            used: l.active_count(),
            max: l.max_activations,
        },
        last_sync_at,
        version: l.definition_version,
    }
}

#[utoipa::path(
    put,
    path = "/v1/accounts/{id}/license",
    tag = "license",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "account id")),
    request_body = LicenseRequest,
    responses(
        (status = 200, description = "the license after the change (extending an expired one reactivates it)", body = LicenseBlock),
        (status = 404, description = "no such account", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "term_end_in_past", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn put_license(
    State(st): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    Body(req): Body<LicenseRequest>,
) -> ApiResult<Json<LicenseBlock>> {
    p.require(&[Role::Admin])?;
    known_account(&st, &id)?;
    st.ledger
        .license(
            LicenseTarget::Account(id.clone()),
            LicenseCommand::SetTerm {
                term_end: req.term_end,
                max_activations: req.max_activations,
            },
        )
        .await
        .map_err(license_error)?;
    st.ledger
        .with_license(&id, |_, l| license_block(&st, l, true))
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no account {id:?}")))
}

#[utoipa::path(
    get,
    path = "/v1/accounts/{id}/license-key",
    tag = "license",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "account id")),
    responses(
        (status = 200, description = "the signed definition without an activation, to paste into an offline product", body = Vec<u8>, content_type = "application/jwt"),
        (status = 404, description = "no such account", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn license_key(
    State(st): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    p.require(&[Role::Admin, Role::Account])?;
    p.may_read_account(&id)?;
    let claims = st
        .ledger
        .license_claims(&id, None)
        .ok_or_else(|| ApiError::not_found(format!("no account {id:?}")))?;
    let jws = st.ledger.sign_definition(&claims);
    Ok(jwt_response(StatusCode::OK, claims.version, jws))
}

// --------------------------------------------------------------- overview

fn blocks(st: &AppState, s: &AccountState, admin: bool) -> Option<serde_json::Value> {
    let l = s.license.as_deref()?;
    let now = st.ledger.now();
    let sessions: SessionsBlock = accrue_core::license::summarize(l, now, None).into();
    Some(serde_json::json!({
        "license": license_block(st, l, admin),
        "sessions": sessions,
    }))
}

/// Adds the `license` and `sessions` blocks to `GET /v1/accounts/{id}`
/// (live, not `as_of`). A layer, so the overview's own room stays as it is;
/// once the overview DTO moves to its room this becomes two fields there.
pub async fn decorate_overview(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let account = (req.method() == axum::http::Method::GET && req.uri().query().is_none())
        .then(|| path.strip_prefix("/v1/accounts/"))
        .flatten()
        .filter(|rest| !rest.is_empty() && !rest.contains('/'))
        .map(str::to_string);
    let Some(account) = account else {
        return next.run(req).await;
    };
    let admin = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .and_then(|t| st.tokens.principal(t.trim()))
        .is_some_and(|p| p.role == Role::Admin);
    let res = next.run(req).await;
    if res.status() != StatusCode::OK {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_OVERVIEW_BYTES).await else {
        return ApiError::internal("overview too large").into_response();
    };
    let extra = {
        let read = st.ledger.read();
        read.accounts
            .get(&account)
            .and_then(|s| blocks(&st, s, admin))
    };
    let out = match (serde_json::from_slice::<serde_json::Value>(&bytes), extra) {
        (Ok(serde_json::Value::Object(mut o)), Some(serde_json::Value::Object(e))) => {
            o.extend(e);
            serde_json::to_vec(&o).unwrap_or_else(|_| bytes.to_vec())
        }
        _ => bytes.to_vec(),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, AxumBody::from(out))
}
