//! Invoices: the list (with credit notes), one invoice, its PDF and
//! e-invoice XML, and voiding.

use super::*;

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
pub(crate) async fn invoice_json(st: &AppState, rec: InvoiceRecord) -> ApiResult<Json<InvoiceDto>> {
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
