//! Accounts: open, read (live or as of an instant), change plan, details
//! and seats, the credit subscription, the list.

use super::*;
use serde::Serialize;
use utoipa::ToSchema;

// ---------------------------------------------------------------- wire types

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanDto {
    #[serde(default)]
    pub full_seats: i64,
    #[serde(default = "zero")]
    pub full_seat_price: Money,
    #[serde(default)]
    pub viewer_seats: i64,
    #[serde(default = "zero")]
    pub viewer_seat_price: Money,
    #[serde(default)]
    pub data_management: bool,
    #[serde(default = "zero")]
    pub data_management_price: Money,
}

/// A plan change: fields left out keep their current value.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanChangeDto {
    pub full_seats: Option<i64>,
    pub full_seat_price: Option<Money>,
    pub viewer_seats: Option<i64>,
    pub viewer_seat_price: Option<Money>,
    pub data_management: Option<bool>,
    pub data_management_price: Option<Money>,
}

impl PlanChangeDto {
    /// The full plan: this change over the current plan.
    pub fn over(&self, current: &accrue_core::Plan) -> PlanDto {
        PlanDto {
            full_seats: self.full_seats.unwrap_or(i64::from(current.full_seats)),
            full_seat_price: self
                .full_seat_price
                .unwrap_or(Money(current.full_seat_price)),
            viewer_seats: self.viewer_seats.unwrap_or(i64::from(current.viewer_seats)),
            viewer_seat_price: self
                .viewer_seat_price
                .unwrap_or(Money(current.viewer_seat_price)),
            data_management: self.data_management.unwrap_or(current.data_management),
            data_management_price: self
                .data_management_price
                .unwrap_or(Money(current.data_management_price)),
        }
    }
}

fn no_plan() -> PlanDto {
    PlanDto {
        full_seats: 0,
        full_seat_price: zero(),
        viewer_seats: 0,
        viewer_seat_price: zero(),
        data_management: false,
        data_management_price: zero(),
    }
}

fn zero() -> Money {
    Money(Decimal::ZERO)
}

/// `period_anchor`: a day of month (1–31) or a date whose day is taken.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum AnchorDto {
    Day(i64),
    Date(String),
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    pub id: String,
    pub name: String,
    #[serde(alias = "email")]
    pub billing_email: String,
    #[serde(default = "en", alias = "language")]
    pub email_language: String,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default = "usd")]
    pub currency: String,
    #[serde(default = "monthly")]
    pub billing_frequency: String,
    #[serde(default, alias = "anchor_day")]
    pub period_anchor: Option<AnchorDto>,
    #[serde(default = "no_plan")]
    pub plan: PlanDto,
    #[serde(default = "zero", alias = "base_ai_credits")]
    pub base_credits: Money,
    /// Subscribe to additional credits at once with this limit.
    #[serde(default, alias = "additional_credit_limit", alias = "limit")]
    pub credit_limit: Option<Money>,
    /// Tax country, customer tax id and treatment (SPEC §14).
    #[serde(default)]
    pub tax: Option<TaxDto>,
}

fn en() -> String {
    "en".into()
}
fn usd() -> String {
    "USD".into()
}
fn monthly() -> String {
    "monthly".into()
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitDto {
    pub limit: Money,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SeatsDto {
    pub full: i64,
    pub viewer: i64,
}

// ---------------------------------------------------------------- validation: request → command

impl TryFrom<&PlanDto> for Plan {
    type Error = ApiError;

    fn try_from(dto: &PlanDto) -> ApiResult<Plan> {
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
}

/// Every check of `POST /v1/accounts` (in the order they answer), and
/// the account's serial number drawn.
impl TryFrom<CreateAccount> for OpenAccount {
    type Error = ApiError;

    fn try_from(req: CreateAccount) -> ApiResult<OpenAccount> {
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
        Ok(OpenAccount {
            account_id: id.to_string(),
            name: req.name.trim().to_string(),
            serial_number: serial_number(),
            billing_email: req.billing_email,
            email_language: req.email_language,
            address: req.address,
            currency: req.currency,
            billing_frequency,
            anchor_day,
            plan: Plan::try_from(&req.plan)?,
            base_credits: req.base_credits.0,
            credit_limit: req.credit_limit.map(|m| m.0),
            invoice_number: String::new(),
            tax: req.tax.map(TryInto::try_into).transpose()?,
        })
    }
}

/// A partial plan change: only the fields given travel to the writer.
impl TryFrom<PlanChangeDto> for accrue_core::PlanChange {
    type Error = ApiError;

    fn try_from(req: PlanChangeDto) -> ApiResult<accrue_core::PlanChange> {
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
        Ok(accrue_core::PlanChange {
            full_seats: seats("full_seats", req.full_seats)?,
            full_seat_price: price("full_seat_price", req.full_seat_price)?,
            viewer_seats: seats("viewer_seats", req.viewer_seats)?,
            viewer_seat_price: price("viewer_seat_price", req.viewer_seat_price)?,
            data_management: req.data_management,
            data_management_price: price("data_management_price", req.data_management_price)?,
        })
    }
}

impl TryFrom<SeatsDto> for SeatsInUse {
    type Error = ApiError;

    fn try_from(req: SeatsDto) -> ApiResult<SeatsInUse> {
        let n = |name: &str, v: i64| -> ApiResult<u32> {
            u32::try_from(v).map_err(|_| {
                ApiError::unprocessable(format!("{name} must be a count of seats, got {v}"))
            })
        };
        Ok(SeatsInUse {
            full: n("full", req.full)?,
            viewer: n("viewer", req.viewer)?,
        })
    }
}

// ---------------------------------------------------------------- handlers

/// A new serial number, `ACR-XXXX-XXXX-XXXX-XXXX` (hex). Never one that
/// reads as a card number: a product server sends it back in an
/// activation's body, which the card-data guard scans, so such a serial
/// could never be activated (about one in 1,500 did).
fn serial_number() -> String {
    loop {
        let u = uuid::Uuid::new_v4().simple().to_string().to_uppercase();
        let s = format!("ACR-{}-{}-{}-{}", &u[0..4], &u[4..8], &u[8..12], &u[12..16]);
        if !crate::guard::contains_pan(&s) {
            return s;
        }
    }
}

#[utoipa::path(post, path = "/v1/accounts", tag = "accounts", request_body(content = crate::dto::CreateAccount, content_type = "application/json"), responses((status = 201, description = "created", body = crate::dto::Overview), (status = 400, description = "malformed request (syntax, path decoding)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 401, description = "missing or invalid token", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "wrong role", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "not found", body = crate::error::Problem, content_type = "application/problem+json"), (status = 409, description = "a rule of the ledger refused it", body = crate::error::Problem, content_type = "application/problem+json"), (status = 413, description = "body too large", body = crate::error::Problem, content_type = "application/problem+json"), (status = 414, description = "request target too long", body = crate::error::Problem, content_type = "application/problem+json"), (status = 415, description = "body is not JSON", body = crate::error::Problem, content_type = "application/problem+json"), (status = 422, description = "invalid or refused (card data, unknown field, control character, duplicate key, out-of-range date)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 500, description = "internal error (a caught panic included)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 503, description = "overloaded, timed out or ledger stopped (Retry-After)", body = crate::error::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn create_account(
    State(st): State<AppState>,
    p: Principal,
    Body(req): Body<CreateAccount>,
) -> ApiResult<Response> {
    p.require(ADMIN)?;
    let open = OpenAccount::try_from(req)?;
    let id = open.account_id.clone();
    st.ledger
        .execute(&id, Command::Open(Box::new(open)))
        .await?;
    Ok((StatusCode::CREATED, Json(live_overview(&st, &id)?)).into_response())
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
    let change = accrue_core::PlanChange::try_from(req)?;
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
    let seats = SeatsInUse::try_from(req)?;
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

#[cfg(test)]
mod tests {
    #[test]
    fn serial_numbers_never_read_as_card_numbers() {
        // What the old generator could make (hex digits only, by chance):
        // the guard takes it for a card number, so it could never activate.
        assert!(crate::guard::contains_pan("ACR-4111-1111-1111-1111"));
        for _ in 0..20_000 {
            let s = super::serial_number();
            assert!(!crate::guard::contains_pan(&s), "{s}");
            let groups: Vec<&str> = s.split('-').collect();
            assert_eq!(groups[0], "ACR", "{s}");
            assert_eq!(groups.len(), 5, "{s}");
            assert!(groups[1..]
                .iter()
                .all(|g| g.len() == 4 && g.chars().all(|c| c.is_ascii_hexdigit())));
        }
    }
}
