//! Routes: the page and its assets, `/login` (trades a one-time link for a session), and the
//! JSON API under `/api/`, where every request needs a live session and every state-changing
//! one also the session's CSRF token. The README's "Web console" section documents the API.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use tracing::{error, info, warn};
use vigil_proto::{Level, Timestamp};

use super::auth::{self, Session, Sessions, CSRF_HEADER, SESSION_COOKIE};
use super::queries::{AlertFilter, ConsoleStore, Cursor};
use super::{fleet, page};

/// Alerts per page when the request does not say, and at most.
const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 500;
/// Default and largest window of events around an alert, each side.
const DEFAULT_WINDOW_SECS: u64 = 300;
const MAX_WINDOW_SECS: u64 = 24 * 3600;
/// Most buckets one counts request may span: bounds the answer whatever the range asked.
const MAX_BUCKETS: u64 = 10_000;

#[derive(Clone)]
pub(super) struct AppState {
    pub sessions: Arc<Sessions>,
    pub store: ConsoleStore,
    /// The central rule sets (`None` without a `rules:` config), for the Rules page.
    pub central: Option<Arc<crate::central_rules::CentralRules>>,
}

/// Who is signed in, and with which session id (for sign-out).
#[derive(Clone)]
struct SignedIn {
    id: String,
    session: Session,
}

pub(super) fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/session", get(session_info))
        .route("/logout", post(logout))
        .route("/alerts", get(list_alerts))
        .route("/alerts/{id}", get(alert_detail))
        .route("/counts", get(counts))
        .route("/sensors", get(fleet::sensors))
        .route("/rules", get(fleet::rules))
        .fallback(|| async { api_error(StatusCode::NOT_FOUND, "no such API endpoint") })
        // `layer`, not `route_layer`: an unknown /api/ path needs a session too, so probing
        // the API without one learns nothing.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            require_session,
        ));
    Router::new()
        .nest("/api", api)
        .route("/", get(page::index))
        .route("/assets/{*name}", get(page::asset))
        .route("/login", get(login))
        .layer(middleware::map_response(page::security_headers))
        .with_state(state)
}

pub(super) fn api_error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

pub(super) fn store_failed(what: &str, e: &crate::store::StoreError) -> Response {
    error!("console: {what} failed: {e}");
    api_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the collector could not read its store",
    )
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| auth::cookie(c, SESSION_COOKIE))
        .map(str::to_owned)
}

async fn require_session(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let id = session_cookie(request.headers());
    let found = id
        .as_deref()
        .and_then(|id| state.sessions.session(id, Instant::now()));
    let (Some(id), Some(session)) = (id, found) else {
        return api_error(
            StatusCode::UNAUTHORIZED,
            "not signed in: run `vigil console login` and open the link it prints",
        );
    };
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let sent = request
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !auth::same_secret(sent, &session.csrf_token) {
            warn!(operator = %session.operator, "console: refused a {} without the session's CSRF token", request.method());
            return api_error(
                StatusCode::FORBIDDEN,
                "missing or wrong x-csrf-token header (GET /api/session gives it)",
            );
        }
    }
    request.extensions_mut().insert(SignedIn { id, session });
    next.run(request).await
}

#[derive(Deserialize)]
struct LoginParams {
    token: Option<String>,
}

/// Spends a sign-in link: sets the session cookie and sends the browser to the page.
async fn login(
    State(state): State<AppState>,
    params: Result<Query<LoginParams>, QueryRejection>,
) -> Response {
    let token = params.ok().and_then(|Query(p)| p.token).unwrap_or_default();
    match state
        .sessions
        .redeem(&token, Instant::now(), SystemTime::now())
    {
        Ok((id, session)) => {
            info!(operator = %session.operator, "console: {} signed in", session.operator);
            let cookie = format!(
                "{SESSION_COOKIE}={id}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
                state.sessions.session_ttl().as_secs()
            );
            (
                StatusCode::SEE_OTHER,
                [
                    (header::SET_COOKIE, cookie),
                    (header::LOCATION, "/".to_owned()),
                ],
            )
                .into_response()
        }
        Err(e) => {
            warn!("console: refused a sign-in link: {e}");
            let body = format!(
                "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Vigil console</title></head>\
                 <body><h1>Sign-in refused</h1><p>{e}. Run <code>vigil console login</code> for a new link.</p></body></html>"
            );
            (
                StatusCode::FORBIDDEN,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                body,
            )
                .into_response()
        }
    }
}

async fn session_info(Extension(signed_in): Extension<SignedIn>) -> Response {
    let Session {
        operator,
        csrf_token,
        expires: _,
        expires_at,
    } = signed_in.session;
    Json(serde_json::json!({
        "operator": operator,
        "expires_at": Timestamp::from(expires_at),
        "csrf_token": csrf_token,
    }))
    .into_response()
}

async fn logout(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
) -> Response {
    state.sessions.end(&signed_in.id);
    info!(operator = %signed_in.session.operator, "console: {} signed out", signed_in.session.operator);
    let clear = format!("{SESSION_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0");
    (
        [(header::SET_COOKIE, clear)],
        Json(serde_json::json!({ "signed_out": true })),
    )
        .into_response()
}

/// The filter keys every alert query takes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    from: Option<Timestamp>,
    to: Option<Timestamp>,
    min_severity: Option<Level>,
    rule: Option<String>,
    tag: Option<String>,
    host: Option<String>,
    q: Option<String>,
    before: Option<i64>,
    after: Option<i64>,
    limit: Option<u32>,
}

/// Empty text means "any", as an empty form field does.
fn non_empty(text: Option<String>) -> Option<String> {
    text.filter(|t| !t.trim().is_empty())
}

fn bad_query(rejection: QueryRejection) -> Response {
    api_error(StatusCode::BAD_REQUEST, &rejection.body_text())
}

async fn list_alerts(
    State(state): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Response {
    let Query(params) = match params {
        Ok(p) => p,
        Err(e) => return bad_query(e),
    };
    let ListParams {
        from,
        to,
        min_severity,
        rule,
        tag,
        host,
        q,
        before,
        after,
        limit,
    } = params;
    let cursor = match (before, after) {
        (Some(_), Some(_)) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "give `before` or `after`, not both",
            )
        }
        (before, None) => Cursor::Before(before),
        (None, Some(after)) => Cursor::After(after),
    };
    let limit = limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let filter = AlertFilter {
        from,
        to,
        min_severity,
        rule: non_empty(rule),
        tag: non_empty(tag),
        host: non_empty(host),
        text: non_empty(q),
    };
    match state.store.alerts(filter, cursor, limit).await {
        Ok(page) => Json(page).into_response(),
        Err(e) => store_failed("alert query", &e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DetailParams {
    before_secs: Option<u64>,
    after_secs: Option<u64>,
}

async fn alert_detail(
    State(state): State<AppState>,
    Path(id): Path<String>,
    params: Result<Query<DetailParams>, QueryRejection>,
) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return api_error(StatusCode::BAD_REQUEST, "an alert id is a number");
    };
    let Query(DetailParams {
        before_secs,
        after_secs,
    }) = match params {
        Ok(p) => p,
        Err(e) => return bad_query(e),
    };
    let window = |secs: Option<u64>| {
        Duration::from_secs(secs.unwrap_or(DEFAULT_WINDOW_SECS).min(MAX_WINDOW_SECS))
    };
    match state
        .store
        .alert_detail(id, window(before_secs), window(after_secs))
        .await
    {
        Ok(Some(detail)) => Json(detail).into_response(),
        Ok(None) => api_error(StatusCode::NOT_FOUND, "no alert with this id"),
        Err(e) => store_failed("alert detail", &e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CountParams {
    from: Option<Timestamp>,
    to: Option<Timestamp>,
    min_severity: Option<Level>,
    rule: Option<String>,
    tag: Option<String>,
    host: Option<String>,
    q: Option<String>,
    bucket_secs: Option<u64>,
}

async fn counts(
    State(state): State<AppState>,
    params: Result<Query<CountParams>, QueryRejection>,
) -> Response {
    let Query(params) = match params {
        Ok(p) => p,
        Err(e) => return bad_query(e),
    };
    let CountParams {
        from,
        to,
        min_severity,
        rule,
        tag,
        host,
        q,
        bucket_secs,
    } = params;
    let to = to.unwrap_or_else(Timestamp::now);
    let from = from.unwrap_or(Timestamp(
        to.unix_nanos().saturating_sub(24 * 3600 * 1_000_000_000),
    ));
    let bucket = bucket_secs.unwrap_or(3600).max(1);
    let span_secs = to.unix_nanos().saturating_sub(from.unix_nanos()) / 1_000_000_000;
    if span_secs / bucket > MAX_BUCKETS {
        return api_error(
            StatusCode::BAD_REQUEST,
            &format!("the range spans more than {MAX_BUCKETS} buckets: widen bucket_secs"),
        );
    }
    let filter = AlertFilter {
        from: Some(from),
        to: Some(to),
        min_severity,
        rule: non_empty(rule),
        tag: non_empty(tag),
        host: non_empty(host),
        text: non_empty(q),
    };
    match state
        .store
        .counts(filter, Duration::from_secs(bucket))
        .await
    {
        Ok(buckets) => Json(serde_json::json!({
            "from": from,
            "to": to,
            "bucket_secs": bucket,
            "buckets": buckets,
        }))
        .into_response(),
        Err(e) => store_failed("alert counts", &e),
    }
}
