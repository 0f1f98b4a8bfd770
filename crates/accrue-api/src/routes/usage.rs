//! `POST /v1/usage`: a batch of usage events, checked one by one.

use super::*;

/// Longest usage id, product or feature name accepted.
const MAX_ID_LEN: usize = 128;
/// Largest metadata object accepted per usage event, serialised.
const MAX_METADATA_BYTES: usize = 4096;

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
