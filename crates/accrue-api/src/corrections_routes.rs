//! Money after the invoice over HTTP (SPEC §8, §9): credit notes, usage
//! cancellations, the upcoming invoice and the dunning list. The rules are
//! the core's; this room only maps the wire shape.

use accrue_core::events::{CreditNoteIssued, CreditNoteLine};
use accrue_core::{Command, DomainError};
use accrue_ledger::LedgerError;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::auth::{Principal, Role};
use crate::dto::{Money, PeriodDto};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{Body, P};
use crate::routes::{blocking, check_line, check_text, parse_account_id, ADMIN, READERS};
use crate::AppState;

const CANCELLERS: &[Role] = &[Role::Admin, Role::Ingest];
/// Most cancellations in one request.
const MAX_CANCELLATIONS: usize = 1000;

// ---------------------------------------------------------- credit notes

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditNoteLineDto {
    description: String,
    amount: Money,
}

/// `{reason, lines: [{description, amount}]}` or `{reason, full: true}`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditNoteRequest {
    reason: String,
    #[serde(default)]
    lines: Option<Vec<CreditNoteLineDto>>,
    #[serde(default)]
    full: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct CreditNoteLineView {
    pub description: String,
    pub amount: Money,
    /// The cancelled usage event this line credits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_id: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct CreditNoteDto {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub number: String,
    pub invoice_number: String,
    pub account_id: String,
    pub serial_number: String,
    pub customer_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_address: Option<String>,
    pub date: String,
    pub issued_at: DateTime<Utc>,
    pub reason: String,
    pub lines: Vec<CreditNoteLineView>,
    /// The sum of the (net) lines.
    pub net: Money,
    /// Tax at the credited invoice's rate (empty when it had none).
    pub tax: Vec<crate::routes::TaxAmountDto>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tax_treatment: Option<crate::routes::TaxTreatmentDto>,
    /// The gross credited: `net` + the tax.
    pub total: Money,
    pub currency: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pdf_sha256: Option<String>,
}

fn credit_note_dto(
    account_id: &str,
    cn: &CreditNoteIssued,
    pdf_sha256: Option<String>,
) -> CreditNoteDto {
    let legal = cn.legal.as_deref();
    let (tax, tax_treatment) = crate::routes::tax_dto(legal);
    CreditNoteDto {
        net: Money(
            legal
                .and_then(|l| l.tax.as_ref())
                .map_or(cn.total, |t| t.net),
        ),
        tax,
        tax_treatment,
        kind: "credit_note",
        number: cn.number.clone(),
        invoice_number: cn.invoice_number.clone(),
        account_id: account_id.to_string(),
        serial_number: cn.serial_number.clone(),
        customer_name: cn.customer_name.clone(),
        customer_address: cn.customer_address.clone(),
        date: cn.issued_at.format("%Y-%m-%d").to_string(),
        issued_at: cn.issued_at,
        reason: cn.reason.clone(),
        lines: cn
            .lines
            .iter()
            .map(|l| CreditNoteLineView {
                description: l.description.clone(),
                amount: Money(l.amount),
                usage_id: l.usage_id.clone(),
            })
            .collect(),
        total: Money(cn.total),
        currency: cn.currency.clone(),
        pdf_sha256,
    }
}

#[utoipa::path(
    post,
    path = "/v1/invoices/{number}/credit-notes",
    tag = "invoices",
    request_body(content = CreditNoteRequest, content_type = "application/json"),
    params(("number" = String, Path, description = "invoice number")),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "credit note issued (CN-YYYY-NNNNNN)", body = CreditNoteDto),
        (status = 400, description = "malformed request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "wrong role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such invoice", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "exceeds_invoice: more than the invoice's uncredited total", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid or refused", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "internal error", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "overloaded or ledger stopped (Retry-After)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_credit_note(
    State(st): State<AppState>,
    p: Principal,
    P(number): P<String>,
    Body(req): Body<CreditNoteRequest>,
) -> ApiResult<Response> {
    p.require(ADMIN)?;
    check_text("reason", &req.reason, 500)?;
    check_line("number", &number, 64)?;
    let lines = match (req.full, req.lines) {
        (true, None) => None,
        (true, Some(_)) => {
            return Err(ApiError::unprocessable(
                "give either lines or full: true, not both",
            ))
        }
        (false, None) => {
            return Err(ApiError::unprocessable(
                "a credit note needs lines, or full: true",
            ))
        }
        (false, Some(lines)) => {
            if lines.is_empty() || lines.len() > 100 {
                return Err(ApiError::unprocessable("lines must hold 1 to 100 lines"));
            }
            let mut out = Vec::with_capacity(lines.len());
            for l in lines {
                check_text("description", &l.description, 500)?;
                out.push(CreditNoteLine {
                    description: l.description,
                    amount: l.amount.0,
                    usage_id: None,
                });
            }
            Some(out)
        }
    };
    let events = st
        .ledger
        .execute_for_invoice(
            &number,
            Command::IssueCreditNote {
                invoice_number: number.clone(),
                reason: req.reason,
                lines,
            },
        )
        .await?;
    let cn = events
        .iter()
        .find_map(|e| match e {
            accrue_core::AccountEvent::CreditNoteIssued(c) => Some(c.clone()),
            _ => None,
        })
        .ok_or_else(|| ApiError::internal("no credit note after issuing one"))?;
    let account = st
        .ledger
        .read()
        .credit_notes
        .get(&cn.number)
        .map(|r| r.account_id.clone())
        .unwrap_or_default();
    Ok((
        StatusCode::CREATED,
        Json(credit_note_dto(&account, &cn, None)),
    )
        .into_response())
}

fn credit_note_for(
    st: &AppState,
    p: &Principal,
    number: &str,
) -> ApiResult<accrue_projections::read_models::CreditNoteRecord> {
    p.require(READERS)?;
    let read = st.ledger.read();
    let missing = || ApiError::not_found(format!("no credit note {number:?}"));
    let rec = read.credit_notes.get(number).ok_or_else(missing)?;
    if p.role == Role::Account && p.account_id.as_deref() != Some(rec.account_id.as_str()) {
        return Err(missing());
    }
    Ok((**rec).clone())
}

#[utoipa::path(
    get,
    path = "/v1/credit-notes/{number}",
    tag = "invoices",
    params(("number" = String, Path, description = "credit note number")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the credit note with its lines", body = CreditNoteDto),
        (status = 400, description = "malformed request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "wrong role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such credit note", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "internal error", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_credit_note(
    State(st): State<AppState>,
    p: Principal,
    P(number): P<String>,
) -> ApiResult<Json<CreditNoteDto>> {
    let rec = credit_note_for(&st, &p, &number)?;
    let ledger = st.ledger.clone();
    blocking(move || {
        ledger.credit_note(&rec).map(|cn| {
            Json(credit_note_dto(
                &rec.account_id,
                &cn,
                rec.pdf_sha256.clone(),
            ))
        })
    })
    .await
}

#[utoipa::path(
    get,
    path = "/v1/credit-notes/{number}/pdf",
    tag = "invoices",
    params(("number" = String, Path, description = "credit note number")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the PDF as issued", body = Vec<u8>, content_type = "application/pdf"),
        (status = 400, description = "malformed request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "wrong role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such credit note", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "internal error", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_credit_note_pdf(
    State(st): State<AppState>,
    p: Principal,
    P(number): P<String>,
) -> ApiResult<Response> {
    let rec = credit_note_for(&st, &p, &number)?;
    let ledger = st.ledger.clone();
    let pdf = blocking(move || {
        let cn = ledger.credit_note(&rec).map_err(|e| e.to_string())?;
        accrue_projections::pdf::render_credit_note(&cn).map_err(|e| e.to_string())
    })
    .await?;
    Ok(crate::routes::pdf_response(&number, pdf))
}

// ------------------------------------------------------ usage cancellations

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancellationDto {
    account_id: String,
    /// The usage event's id (its idempotency key).
    id: String,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancellationRequest {
    events: Vec<CancellationDto>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct CancellationResult {
    pub index: usize,
    pub account_id: String,
    pub id: String,
    /// `cancelled`, `duplicate` (cancelled before), `unknown_event`, or
    /// `rejected` (with a reason).
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// What the next close credits for it (an invoiced period), if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credit: Option<Money>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct CancellationResponse {
    pub cancelled: usize,
    pub duplicate: usize,
    pub unknown: usize,
    pub rejected: usize,
    pub results: Vec<CancellationResult>,
}

#[utoipa::path(
    post,
    path = "/v1/usage/cancellations",
    tag = "usage",
    request_body(content = CancellationRequest, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "per-event results", body = CancellationResponse),
        (status = 400, description = "malformed request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "wrong role", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid or refused", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "internal error", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "overloaded or ledger stopped (Retry-After)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn cancel_usage(
    State(st): State<AppState>,
    p: Principal,
    Body(req): Body<CancellationRequest>,
) -> ApiResult<Json<CancellationResponse>> {
    p.require(CANCELLERS)?;
    if req.events.is_empty() || req.events.len() > MAX_CANCELLATIONS {
        return Err(ApiError::unprocessable(format!(
            "events must hold 1 to {MAX_CANCELLATIONS} cancellations"
        )));
    }
    let mut resp = CancellationResponse {
        cancelled: 0,
        duplicate: 0,
        unknown: 0,
        rejected: 0,
        results: Vec::with_capacity(req.events.len()),
    };
    for (index, c) in req.events.into_iter().enumerate() {
        let reason = c.reason.unwrap_or_else(|| "cancelled".to_string());
        let checked = check_line("id", &c.id, 128).and_then(|_| check_text("reason", &reason, 500));
        let outcome = match (checked, parse_account_id(&c.account_id)) {
            (Err(e), _) => Err(LedgerError::Domain(DomainError::Invalid(e.detail))),
            (_, Err(_)) => Err(LedgerError::Domain(DomainError::UnknownAccount)),
            (Ok(()), Ok(account)) => {
                st.ledger
                    .execute(
                        account.as_str(),
                        Command::CancelUsage {
                            usage_id: c.id.clone(),
                            reason,
                            found: None,
                        },
                    )
                    .await
            }
        };
        let (status, reason, detail, credit) = match outcome {
            Ok(events) => {
                resp.cancelled += 1;
                let credit = events.iter().find_map(|e| match e {
                    accrue_core::AccountEvent::UsageCancelled(u) if !u.credit.is_zero() => {
                        Some(Money(u.credit))
                    }
                    _ => None,
                });
                ("cancelled", None, None, credit)
            }
            Err(LedgerError::Domain(DomainError::AlreadyCancelled { .. })) => {
                resp.duplicate += 1;
                ("duplicate", None, None, None)
            }
            Err(LedgerError::Domain(e @ DomainError::UnknownUsage { .. })) => {
                resp.unknown += 1;
                ("unknown_event", Some(e.reason()), Some(e.to_string()), None)
            }
            Err(LedgerError::Domain(e)) => {
                resp.rejected += 1;
                ("rejected", Some(e.reason()), Some(e.to_string()), None)
            }
            // The ledger cannot decide now: nothing after this one is tried.
            Err(e) => return Err(e.into()),
        };
        resp.results.push(CancellationResult {
            index,
            account_id: c.account_id,
            id: c.id,
            status,
            reason,
            detail,
            credit,
        });
    }
    Ok(Json(resp))
}

// --------------------------------------------------------- upcoming invoice

#[derive(Serialize, utoipa::ToSchema)]
pub struct UpcomingLineDto {
    pub kind: String,
    pub description: String,
    pub quantity: String,
    pub unit_price: Money,
    pub amount: Money,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct UpcomingInvoiceDto {
    pub account_id: String,
    /// When the next close issues it (the end of the credit period).
    pub issued_at: DateTime<Utc>,
    pub credit_period: PeriodDto,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub billing_period: Option<PeriodDto>,
    pub lines: Vec<UpcomingLineDto>,
    /// The sum of the rounded lines.
    pub net: Money,
    /// Tax per rate, with the account's tax facts and the rates in force.
    pub tax: Vec<crate::routes::TaxAmountDto>,
    /// The gross.
    pub total: Money,
    pub currency: String,
    /// Always false: a preview is never stored.
    pub stored: bool,
}

#[utoipa::path(
    get,
    path = "/v1/accounts/{id}/upcoming-invoice",
    tag = "invoices",
    params(("id" = String, Path, description = "account id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the lines the next close would issue now (not stored)", body = UpcomingInvoiceDto),
        (status = 400, description = "malformed request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "wrong role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such account", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "internal error", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn upcoming_invoice(
    State(st): State<AppState>,
    p: Principal,
    P(id): P<String>,
) -> ApiResult<Json<UpcomingInvoiceDto>> {
    p.require(READERS)?;
    p.may_read_account(&id)?;
    let read = st.ledger.read();
    let up = read
        .accounts
        .get(&id)
        .filter(|a| a.is_open())
        .and_then(|a| {
            let none = accrue_core::tax::TaxTable::EMPTY;
            let rates = accrue_ledger::legal().map_or(&none, |l| &l.rates);
            accrue_core::correction::upcoming(a, rates)
        })
        .ok_or_else(|| ApiError::not_found(format!("no account {id:?}")))?;
    Ok(Json(UpcomingInvoiceDto {
        account_id: id,
        issued_at: up.issued_at,
        credit_period: up.credit_period.into(),
        billing_period: up.billing_period.map(Into::into),
        lines: up
            .lines
            .iter()
            .map(|l| UpcomingLineDto {
                kind: format!("{:?}", l.kind).to_lowercase(),
                description: l.description.clone(),
                quantity: l.quantity.normalize().to_string(),
                unit_price: Money(l.unit_price),
                amount: Money(l.amount),
            })
            .collect(),
        net: Money(up.net),
        tax: up
            .tax
            .iter()
            .flat_map(|t| &t.rates)
            .map(|r| crate::routes::TaxAmountDto {
                rate: r.rate.normalize().to_string(),
                taxable: Money(r.taxable),
                amount: Money(r.amount),
            })
            .collect(),
        total: Money(up.total),
        currency: up.currency,
        stored: false,
    }))
}

// ------------------------------------------------------------------ dunning

#[derive(Serialize, utoipa::ToSchema)]
pub struct DueRetry {
    pub invoice: String,
    pub account: String,
    /// The number of this payment attempt (the first charge was 1).
    pub attempt: u32,
    pub due_at: DateTime<Utc>,
    pub amount_due: Money,
    pub suspends_at: DateTime<Utc>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DunningList {
    pub now: DateTime<Utc>,
    pub retries: Vec<DueRetry>,
}

#[utoipa::path(
    get,
    path = "/v1/dunning",
    tag = "payments",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "payment retries due now, oldest first", body = DunningList),
        (status = 401, description = "missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "wrong role", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "internal error", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_dunning(
    State(st): State<AppState>,
    p: Principal,
) -> ApiResult<Json<DunningList>> {
    p.require(ADMIN)?;
    let now = st.ledger.now();
    let read = st.ledger.read();
    let mut retries = Vec::new();
    for account in &read.in_dunning {
        let Some(a) = read.accounts.get(account) else {
            continue;
        };
        for d in a.corrections().map(|c| c.dunning.as_slice()).unwrap_or(&[]) {
            let Some(due_at) = d.next_retry_at() else {
                continue;
            };
            if due_at > now {
                continue;
            }
            retries.push(DueRetry {
                invoice: d.invoice_number.clone(),
                account: account.clone(),
                attempt: d.attempt(),
                due_at,
                amount_due: Money(
                    a.invoices
                        .get(&d.invoice_number)
                        .map(|i| i.amount_due())
                        .unwrap_or_default(),
                ),
                suspends_at: d.suspends_at,
            });
        }
    }
    retries.sort_by(|a, b| a.due_at.cmp(&b.due_at).then(a.invoice.cmp(&b.invoice)));
    Ok(Json(DunningList { now, retries }))
}
