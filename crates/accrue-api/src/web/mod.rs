//! The customer's "Manage License" page (SPEC §10): static HTML, one
//! script and one style sheet, embedded in the binary so the single-binary
//! default stays one file. The page holds no data of its own: it signs in
//! with a pasted token (kept in the tab's `sessionStorage`) and reads and
//! writes only through the JSON API, so it sees exactly what that token may
//! see, and every figure on it is the API's.
//!
//! These routes are not JSON API: they stay out of `/openapi.json` (the
//! document the fuzzer walks) and are merged into the router beside it.

pub mod me;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::AppState;

pub const INDEX_HTML: &str = include_str!("index.html");
pub const APP_JS: &str = include_str!("app.js");
pub const APP_CSS: &str = include_str!("app.css");
pub const FAVICON_SVG: &str = include_str!("favicon.svg");

/// No inline script or style anywhere, nothing from elsewhere, never in a
/// frame. `connect-src 'self'` is the API (a PDF is fetched with the bearer
/// header and handed to the browser as a `blob:` download, which is a
/// navigation, not a fetch, so no directive needs to name `blob:`).
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
form-action 'self'; frame-ancestors 'none'";

/// The page's routes (`GET` answers `HEAD` too).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route(
            "/favicon.svg",
            get(|| async { asset("image/svg+xml", FAVICON_SVG) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut res = body.into_response();
    let h = res.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(h, header::CONTENT_TYPE, content_type);
    set(h, header::CONTENT_SECURITY_POLICY, CSP);
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "no-referrer");
    // The assets change only with the binary: revalidate, never serve a
    // stale script against a newer API.
    set(h, header::CACHE_CONTROL, "no-cache");
    res
}
