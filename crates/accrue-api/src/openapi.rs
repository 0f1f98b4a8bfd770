//! `GET /openapi.json`, built from the DTO types (their `ToSchema` derives)
//! and one table of operations kept next to the router.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApiBuilder, PathsBuilder, Ref, Required,
    ResponseBuilder,
};

use crate::dto::*;
use crate::error::Problem;
use crate::routes::{EventPage, InvoiceDto, InvoiceList, PaymentDto, VerifyDto};

struct Op {
    method: HttpMethod,
    path: &'static str,
    summary: &'static str,
    roles: &'static str,
    body: Option<&'static str>,
    status: &'static str,
    response: Option<&'static str>,
    query: &'static [&'static str],
}

// One row of the table below; positional on purpose so the table reads as one.
#[allow(clippy::too_many_arguments)]
const fn op(
    method: HttpMethod,
    path: &'static str,
    summary: &'static str,
    roles: &'static str,
    body: Option<&'static str>,
    status: &'static str,
    response: Option<&'static str>,
    query: &'static [&'static str],
) -> Op {
    Op {
        method,
        path,
        summary,
        roles,
        body,
        status,
        response,
        query,
    }
}

fn ops() -> Vec<Op> {
    use HttpMethod::*;
    vec![
        op(Get, "/healthz", "Liveness", "none", None, "200", None, &[]),
        op(
            Get,
            "/metrics",
            "Prometheus metrics",
            "none",
            None,
            "200",
            None,
            &[],
        ),
        op(
            Post,
            "/v1/tokens",
            "Issue a token",
            "admin",
            Some("TokenRequest"),
            "201",
            Some("TokenResponse"),
            &[],
        ),
        op(
            Post,
            "/v1/accounts",
            "Create an account (license)",
            "admin",
            Some("CreateAccount"),
            "201",
            Some("Overview"),
            &[],
        ),
        op(
            Get,
            "/v1/accounts/{id}",
            "License overview, optionally as of a past instant",
            "admin, auditor, account",
            None,
            "200",
            Some("Overview"),
            &["as_of"],
        ),
        op(
            Put,
            "/v1/accounts/{id}/plan",
            "Change seats and add-on (prorated)",
            "admin",
            Some("PlanDto"),
            "200",
            Some("Overview"),
            &[],
        ),
        op(
            Put,
            "/v1/accounts/{id}/seats-in-use",
            "Report seats in use",
            "admin, ingest",
            Some("SeatsDto"),
            "200",
            Some("SeatsView"),
            &[],
        ),
        op(
            Put,
            "/v1/accounts/{id}/credit-subscription",
            "Subscribe or change the additional-credits limit",
            "admin",
            Some("LimitDto"),
            "200",
            Some("Overview"),
            &[],
        ),
        op(
            Delete,
            "/v1/accounts/{id}/credit-subscription",
            "Unsubscribe from the next period",
            "admin",
            None,
            "200",
            Some("Overview"),
            &[],
        ),
        op(
            Put,
            "/v1/accounts/{id}/payment-method",
            "Replace the saved payment method (token only, never card data)",
            "admin",
            None,
            "200",
            Some("Overview"),
            &[],
        ),
        op(
            Post,
            "/v1/usage",
            "Ingest a batch of usage events (at most 10,000)",
            "admin, ingest",
            Some("UsageBatch"),
            "200",
            Some("UsageResponse"),
            &[],
        ),
        op(
            Post,
            "/v1/payments",
            "Record a payment processor outcome",
            "admin",
            Some("PaymentDto"),
            "200",
            Some("InvoiceDto"),
            &[],
        ),
        op(
            Get,
            "/v1/accounts/{id}/invoices",
            "Invoices, newest first (default: the last two years)",
            "admin, auditor, account",
            None,
            "200",
            Some("InvoiceList"),
            &["from", "to"],
        ),
        op(
            Get,
            "/v1/invoices/{number}",
            "One invoice with its lines and status history",
            "admin, auditor, owner",
            None,
            "200",
            Some("InvoiceDto"),
            &[],
        ),
        op(
            Get,
            "/v1/invoices/{number}/pdf",
            "The invoice PDF as issued",
            "admin, auditor, owner",
            None,
            "200",
            None,
            &[],
        ),
        op(
            Get,
            "/v1/accounts/{id}/events",
            "The account's events with hashes",
            "admin, auditor",
            None,
            "200",
            Some("EventPage"),
            &["after", "limit"],
        ),
        op(
            Get,
            "/v1/audit/verify",
            "Recompute every hash chain",
            "admin, auditor",
            None,
            "200",
            Some("VerifyDto"),
            &[],
        ),
        op(
            Get,
            "/v1/audit/trial-balance",
            "Trial balance of the double-entry postings",
            "admin, auditor",
            None,
            "200",
            Some("TrialBalanceDto"),
            &["as_of"],
        ),
        op(
            Post,
            "/v1/invoices/{number}/void",
            "Void an unpaid invoice",
            "admin",
            Some("VoidDto"),
            "200",
            Some("InvoiceDto"),
            &[],
        ),
        op(
            Post,
            "/v1/clock",
            "Move the manual clock forward",
            "admin",
            Some("ClockDto"),
            "200",
            Some("ClockResponse"),
            &[],
        ),
    ]
}

fn json(schema: &str) -> utoipa::openapi::Content {
    ContentBuilder::new()
        .schema(Some(Ref::from_schema_name(schema)))
        .build()
}

fn build() -> String {
    let mut paths = PathsBuilder::new();
    for o in ops() {
        let mut b = OperationBuilder::new()
            .summary(Some(o.summary))
            .description(Some(format!("Roles: {}.", o.roles)));
        if o.roles != "none" {
            b = b.security(SecurityRequirement::new("bearer", Vec::<String>::new()));
        }
        for seg in o.path.split('/').filter(|s| s.starts_with('{')) {
            let name = seg.trim_matches(|c| c == '{' || c == '}');
            b = b.parameter(
                ParameterBuilder::new()
                    .name(name)
                    .parameter_in(ParameterIn::Path)
                    .required(Required::True),
            );
        }
        for q in o.query {
            b = b.parameter(
                ParameterBuilder::new()
                    .name(*q)
                    .parameter_in(ParameterIn::Query)
                    .required(Required::False),
            );
        }
        if let Some(body) = o.body {
            b = b.request_body(Some(
                RequestBodyBuilder::new()
                    .content("application/json", json(body))
                    .required(Some(Required::True))
                    .build(),
            ));
        }
        let mut ok = ResponseBuilder::new().description("success");
        if let Some(r) = o.response {
            ok = ok.content("application/json", json(r));
        }
        b = b.response(o.status, ok.build());
        b = b.response(
            "4XX",
            ResponseBuilder::new()
                .description("problem")
                .content("application/problem+json", json("Problem"))
                .build(),
        );
        paths = paths.path(o.path, PathItem::new(o.method, b.build()));
    }
    let components = ComponentsBuilder::new()
        .security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        )
        .schema_from::<Problem>()
        .schema_from::<TokenRequest>()
        .schema_from::<TokenResponse>()
        .schema_from::<crate::auth::Role>()
        .schema_from::<CreateAccount>()
        .schema_from::<AnchorDto>()
        .schema_from::<PlanDto>()
        .schema_from::<PlanChangeDto>()
        .schema_from::<Money>()
        .schema_from::<RawMoney>()
        .schema_from::<Overview>()
        .schema_from::<PeriodDto>()
        .schema_from::<CreditsDto>()
        .schema_from::<PlanView>()
        .schema_from::<SeatsView>()
        .schema_from::<SeatCount>()
        .schema_from::<PaymentView>()
        .schema_from::<MethodView>()
        .schema_from::<SeatsDto>()
        .schema_from::<LimitDto>()
        .schema_from::<UsageBatch>()
        .schema_from::<UsageEventDto>()
        .schema_from::<UsageResponse>()
        .schema_from::<UsageResult>()
        .schema_from::<PaymentDto>()
        .schema_from::<InvoiceDto>()
        .schema_from::<crate::routes::InvoiceLineDto>()
        .schema_from::<crate::routes::StatusChangeDto>()
        .schema_from::<InvoiceList>()
        .schema_from::<crate::routes::InvoiceListItem>()
        .schema_from::<EventPage>()
        .schema_from::<crate::routes::EventDto>()
        .schema_from::<VerifyDto>()
        .schema_from::<crate::routes::BrokenDto>()
        .schema_from::<crate::routes::TrialBalanceDto>()
        .schema_from::<crate::routes::LedgerAccountDto>()
        .schema_from::<crate::routes::VoidDto>()
        .schema_from::<ClockDto>()
        .schema_from::<ClockResponse>()
        .build();
    let doc = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("accrue")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Event-sourced billing and AI-credits ledger. Money is a decimal string.",
                ))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components))
        .build();
    doc.to_json().unwrap_or_default()
}

pub async fn openapi_json() -> Response {
    static DOC: OnceLock<String> = OnceLock::new();
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOC.get_or_init(build).clone(),
    )
        .into_response()
}
