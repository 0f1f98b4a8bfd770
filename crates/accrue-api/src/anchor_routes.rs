//! Audit anchors over HTTP: `GET /v1/audit/anchor` signs the log's head;
//! `POST /v1/audit/verify` verifies the whole log and, given an anchor kept
//! outside accrue, that nothing at or before it changed and the log did not
//! shrink.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::auth::{Principal, Role};
use crate::error::{ApiError, ApiResult};
use crate::AppState;

const AUDIT: &[Role] = &[Role::Admin, Role::Auditor];

/// A signed checkpoint `{position, head_hash, at}` (Ed25519).
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnchorDto {
    pub position: u64,
    /// Global chain hash at `position`, hex.
    pub head_hash: String,
    pub at: chrono::DateTime<chrono::Utc>,
    /// Ed25519 public key, base64url.
    pub public_key: String,
    /// Ed25519 signature, base64url.
    pub signature: String,
    /// A cluster's anchor (`serve --partitions`): every partition's own,
    /// each with its `partition`; the fields above are the home
    /// partition's. Posted back to a cluster node, each partition is
    /// checked against its own; a single ledger refuses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<Vec<PartitionAnchor>>,
}

/// One partition's anchor in a cluster's.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PartitionAnchor {
    pub partition: u32,
    pub position: u64,
    pub head_hash: String,
    pub at: chrono::DateTime<chrono::Utc>,
    pub public_key: String,
    pub signature: String,
}

impl From<accrue_ledger::audit::Anchor> for AnchorDto {
    fn from(a: accrue_ledger::audit::Anchor) -> Self {
        AnchorDto {
            position: a.position,
            head_hash: a.head_hash,
            at: a.at,
            public_key: a.public_key,
            signature: a.signature,
            partitions: None,
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    pub anchor: Option<AnchorDto>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AnchoredBroken {
    pub position: u64,
    pub stream: String,
    pub version: u64,
    pub reason: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AnchoredVerifyDto {
    pub ok: bool,
    pub events: u64,
    pub streams: u64,
    pub head_position: u64,
    pub head_hash: String,
    /// Present when an anchor was given: whether it held.
    pub anchor_ok: Option<bool>,
    pub first_broken: Option<AnchoredBroken>,
}

#[utoipa::path(get, path = "/v1/audit/anchor", tag = "audit",
    responses((status = 200, body = AnchorDto), (status = 401), (status = 403),
              (status = 503, description = "no anchor key configured")),
    security(("bearer" = [])))]
pub async fn get_anchor(State(st): State<AppState>, p: Principal) -> ApiResult<Json<AnchorDto>> {
    p.require(AUDIT)?;
    let key = st.ledger.anchor_key().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_anchor_key",
            "this server has no anchor key (serve loads DATA/anchor.key)",
        )
    })?;
    let store = st.ledger.store().clone();
    let now = st.ledger.now();
    let a = tokio::task::spawn_blocking(move || key.anchor(store.as_ref(), now))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(Json(a.into()))
}

#[utoipa::path(post, path = "/v1/audit/verify", tag = "audit", request_body = VerifyRequest,
    responses((status = 200, body = AnchoredVerifyDto), (status = 401), (status = 403), (status = 422)),
    security(("bearer" = [])))]
pub async fn verify_anchor(
    State(st): State<AppState>,
    p: Principal,
    body: axum::body::Bytes,
) -> ApiResult<Json<AnchoredVerifyDto>> {
    p.require(AUDIT)?;
    let req: VerifyRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::unprocessable(format!("the body is not {{\"anchor\": …}}: {e}")))?;
    if req.anchor.as_ref().is_some_and(|a| a.partitions.is_some()) {
        return Err(ApiError::unprocessable(
            "anchor.partitions is a cluster's anchor: post it to a node of that cluster",
        ));
    }
    let anchor = req.anchor.map(|a| accrue_ledger::audit::Anchor {
        position: a.position,
        head_hash: a.head_hash,
        at: a.at,
        public_key: a.public_key,
        signature: a.signature,
    });
    let store = st.ledger.store().clone();
    let r = tokio::task::spawn_blocking(move || {
        accrue_ledger::audit::verify_with(store.as_ref(), anchor.as_ref(), |_, _| {})
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(Json(AnchoredVerifyDto {
        ok: r.ok,
        events: r.events,
        streams: r.streams,
        head_position: r.head_position,
        head_hash: r.head_hash,
        anchor_ok: r.anchor_ok,
        first_broken: r.first_broken.map(|b| AnchoredBroken {
            position: b.position,
            stream: b.stream,
            version: b.version,
            reason: b.reason,
        }),
    }))
}
