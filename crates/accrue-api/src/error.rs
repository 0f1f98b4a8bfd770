//! One error type at the edge, rendered as RFC 9457 problem+json. Server
//! errors are logged with their cause; client errors are not.

use accrue_core::DomainError;
use accrue_ledger::LedgerError;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable machine-readable reason (also the last segment of `type`).
    pub reason: &'static str,
    pub detail: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub reason: String,
}

impl ApiError {
    pub fn new(status: StatusCode, reason: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            reason,
            detail: detail.into(),
        }
    }
    pub fn unprocessable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", detail)
    }
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed", detail)
    }
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid `Authorization: Bearer <token>` header is required",
        )
    }
    pub fn forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this token's role may not do this",
        )
    }
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail)
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        let status = match &e {
            DomainError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            DomainError::UnknownAccount
            | DomainError::UnknownInvoice
            | DomainError::UnknownUsage { .. } => StatusCode::NOT_FOUND,
            DomainError::AccountExists
            | DomainError::CreditLimitExceeded { .. }
            | DomainError::LimitBelowUsage { .. }
            | DomainError::NotSubscribed
            | DomainError::SeatLimitExceeded { .. }
            | DomainError::InvoiceNotPayable { .. }
            | DomainError::ReferenceConflict { .. }
            | DomainError::PeriodClosed { .. }
            | DomainError::Future { .. }
            | DomainError::License(_)
            | DomainError::ExceedsInvoice { .. }
            | DomainError::ExceedsPayment { .. }
            | DomainError::AlreadyCancelled { .. }
            | DomainError::LicenseSuspended => StatusCode::CONFLICT,
        };
        ApiError::new(status, e.reason(), e.to_string())
    }
}

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::Domain(d) => d.into(),
            LedgerError::NotManualClock => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "the clock can only be moved when `serve --clock` started a manual clock",
            ),
            e @ LedgerError::ClockBackwards { .. } => {
                ApiError::new(StatusCode::CONFLICT, "clock_backwards", e.to_string())
            }
            LedgerError::Stopped => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the ledger is shutting down",
            ),
            e @ LedgerError::Failed(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ledger_stopped",
                e.to_string(),
            ),
            e @ LedgerError::Overloaded => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", e.to_string())
            }
            e @ LedgerError::Unavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            ),
            e => ApiError::internal(e.to_string()),
        }
    }
}

fn title(status: StatusCode) -> String {
    status.canonical_reason().unwrap_or("Error").to_string()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(reason = self.reason, detail = %self.detail, "request failed");
        }
        let body = Problem {
            type_: format!(
                "https://accrue.dev/problems/{}",
                self.reason.replace('_', "-")
            ),
            title: title(self.status),
            status: self.status.as_u16(),
            detail: self.detail,
            reason: self.reason.to_string(),
        };
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut resp = (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            json,
        )
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            // Overload and store hiccups pass; a stopped ledger comes back
            // once its supervisor restarted it.
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
