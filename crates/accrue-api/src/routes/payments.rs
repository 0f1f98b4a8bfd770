//! Payment methods and payment outcomes.

use super::*;

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

/// A payment outcome as a command: the outcome, a refund's amount and the
/// references checked in the order they answer.
impl TryFrom<PaymentDto> for Command {
    type Error = ApiError;

    fn try_from(req: PaymentDto) -> ApiResult<Command> {
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
        Ok(Command::RecordPayment {
            invoice_number: req.invoice_number,
            reference: req.reference,
            outcome,
        })
    }
}

#[utoipa::path(post, path = "/v1/payments", tag = "payments", request_body(content = PaymentDto, content_type = "application/json"), responses((status = 200, description = "recorded (a retry of the same outcome changes nothing)", body = InvoiceDto), (status = 400, description = "malformed request (syntax, path decoding)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 401, description = "missing or invalid token", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "wrong role", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "not found", body = crate::error::Problem, content_type = "application/problem+json"), (status = 409, description = "a rule of the ledger refused it", body = crate::error::Problem, content_type = "application/problem+json"), (status = 413, description = "body too large", body = crate::error::Problem, content_type = "application/problem+json"), (status = 414, description = "request target too long", body = crate::error::Problem, content_type = "application/problem+json"), (status = 415, description = "body is not JSON", body = crate::error::Problem, content_type = "application/problem+json"), (status = 422, description = "invalid or refused (card data, unknown field, control character, duplicate key, out-of-range date)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 500, description = "internal error (a caught panic included)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 503, description = "overloaded, timed out or ledger stopped (Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn post_payment(
    State(st): State<AppState>,
    p: Principal,
    Body(req): Body<PaymentDto>,
) -> ApiResult<Json<InvoiceDto>> {
    p.require(ADMIN)?;
    let number = req.invoice_number.clone();
    let cmd = Command::try_from(req)?;
    st.ledger.execute_for_invoice(&number, cmd).await?;
    let rec = st
        .ledger
        .read()
        .invoices
        .get(&number)
        .map(|r| (**r).clone())
        .ok_or_else(|| ApiError::not_found("no such invoice"))?;
    invoice_json(&st, rec).await
}
