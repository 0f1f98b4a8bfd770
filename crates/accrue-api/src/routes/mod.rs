//! Handlers. Each one: who may call it, parse at the edge, one ledger call,
//! one response.
//!
//! The HTTP rooms, one per resource: each file holds its handlers, the
//! wire types they alone use and the validation turning a request into a
//! command (`TryFrom`). Helpers shared by several rooms live here; every
//! handler is re-exported so `crate::routes::name` keeps working.

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

mod accounts;
mod audit;
mod clock;
mod health;
mod invoices;
mod payments;
mod tokens;
mod usage;

pub use accounts::*;
pub use audit::*;
pub use clock::*;
pub use health::*;
pub use invoices::*;
pub use payments::*;
pub use tokens::*;
pub use usage::*;

pub(crate) const ADMIN: &[Role] = &[Role::Admin];
pub(crate) const READERS: &[Role] = &[Role::Admin, Role::Auditor, Role::Account];
pub(crate) const AUDIT: &[Role] = &[Role::Admin, Role::Auditor];

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
