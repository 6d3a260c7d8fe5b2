//! The front end (built by `cargo xtask console-ui` from collector/console-ui into its `dist/`,
//! then compiled into the binary) and the security headers every response carries.
//!
//! The Rust build never needs npm: when `dist/` is missing, nothing is embedded and the page
//! says how to build it, while the JSON API works the same.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

#[derive(rust_embed::Embed)]
#[folder = "console-ui/dist/"]
#[allow_missing = true]
struct Ui;

/// Served at `/` (and every page route) when the front end was not built.
const PLACEHOLDER: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>Vigil console</title></head><body><h1>Vigil console</h1>\
<p>This collector was built without the console's front end. Build it with \
<code>cargo xtask console-ui</code> before building the collector. The JSON API under \
<code>/api/</code> works regardless.</p></body></html>";

/// Only our own scripts, styles and API; no framing, no plugins, no inline script.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The single page: the same document for `/` and each client-side route.
pub(super) async fn index() -> Response {
    match Ui::get("index.html") {
        Some(file) => html(file.data.into_owned()),
        None => html(PLACEHOLDER.as_bytes().to_vec()),
    }
}

fn html(body: Vec<u8>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Built files under `/assets/`: names carry a content hash, so they may be cached for good.
pub(super) async fn asset(Path(name): Path<String>) -> Response {
    match Ui::get(&format!("assets/{name}")) {
        Some(file) => {
            let mime = file.metadata.mimetype().to_owned();
            (
                [
                    (header::CONTENT_TYPE, mime),
                    (
                        header::CACHE_CONTROL,
                        "public, max-age=31536000, immutable".to_owned(),
                    ),
                ],
                file.data.into_owned(),
            )
                .into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Adds the headers every console response carries.
pub(super) async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let fixed = [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        // The sign-in link carries a token in its query: never pass it on in a Referer.
        (header::REFERRER_POLICY, "no-referrer"),
        (header::STRICT_TRANSPORT_SECURITY, "max-age=31536000"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    // Alerts are sensitive: no shared cache keeps them, no back button shows them after sign-out.
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}
