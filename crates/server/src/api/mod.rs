//! The HTTP API for the app backend (`docs/api.md`): users, sessions and call
//! history, authenticated with the configured API key; plus the development-only
//! guest sign-in for the demo page.

mod extract;
mod guest;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use rendezvous_store::{NewUser, Store, StoreError, UserPatch};
use serde::Deserialize;
use serde_json::json;

use crate::config::ApiConfig;
use extract::{ApiError, ApiKey, JsonBody, QueryParams};
use guest::GuestLimiter;

/// What the API handlers share.
#[derive(Clone)]
pub(crate) struct ApiState {
    store: Arc<Store>,
    cfg: Arc<ApiConfig>,
    /// Present when guest sign-in is on.
    guests: Option<Arc<GuestLimiter>>,
}

type ApiResult<T> = Result<T, ApiError>;

/// The `/api` routes. `guest_sign_in` opens `POST /api/guest`, limited per client address
/// (behind `trusted_proxies`, the forwarded address).
pub fn router(store: Arc<Store>, cfg: ApiConfig, guest_sign_in: bool, trusted_proxies: Vec<IpAddr>) -> Router {
    let limit = cfg.max_body_bytes;
    let guests =
        guest_sign_in.then(|| Arc::new(GuestLimiter::new(cfg.guest_per_minute, cfg.guest_burst, trusted_proxies)));
    let state = ApiState { store, cfg: Arc::new(cfg), guests };
    Router::new()
        .route("/api/users", post(create_user))
        .route("/api/users/{id}", get(get_user).patch(update_user).delete(delete_user))
        .route("/api/users/{id}/sessions", post(issue_session).get(list_sessions).delete(revoke_user_sessions))
        .route("/api/users/{id}/calls", get(list_calls))
        .route("/api/sessions/{id}", delete(revoke_session))
        .route("/api/reports", get(list_reports))
        .route("/api/guest", post(guest))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn create_user(State(s): State<ApiState>, _: ApiKey, JsonBody(new): JsonBody<NewUser>) -> ApiResult<Response> {
    let user = s.store.create_user(new).await?;
    Ok((StatusCode::CREATED, Json(user)).into_response())
}

async fn get_user(State(s): State<ApiState>, _: ApiKey, Path(id): Path<String>) -> ApiResult<Response> {
    let user = s.store.user(&id).await?.ok_or(StoreError::NotFound("user"))?;
    Ok(Json(user).into_response())
}

async fn update_user(
    State(s): State<ApiState>,
    _: ApiKey,
    Path(id): Path<String>,
    JsonBody(patch): JsonBody<UserPatch>,
) -> ApiResult<Response> {
    Ok(Json(s.store.update_user(&id, patch).await?).into_response())
}

async fn delete_user(State(s): State<ApiState>, _: ApiKey, Path(id): Path<String>) -> ApiResult<Response> {
    s.store.delete_user(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SessionRequest {
    #[serde(default)]
    ttl_seconds: Option<u64>,
    #[serde(default)]
    user_agent: Option<String>,
    #[serde(default)]
    ip: Option<String>,
}

async fn issue_session(
    State(s): State<ApiState>,
    _: ApiKey,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<SessionRequest, true>,
) -> ApiResult<Response> {
    if req.ttl_seconds == Some(0) {
        return Err(ApiError::field(StatusCode::UNPROCESSABLE_ENTITY, "ttl_seconds", "must be at least 1"));
    }
    for (field, v) in [("user_agent", &req.user_agent), ("ip", &req.ip)] {
        if v.as_ref().is_some_and(|v| v.len() > 512) {
            return Err(ApiError::field(StatusCode::UNPROCESSABLE_ENTITY, field, "at most 512 bytes"));
        }
    }
    let issued = s.store.issue_session(&id, req.ttl_seconds.map(Duration::from_secs), req.user_agent, req.ip).await?;
    Ok((StatusCode::CREATED, Json(issued)).into_response())
}

async fn list_sessions(State(s): State<ApiState>, _: ApiKey, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(Json(json!({ "sessions": s.store.sessions_of(&id).await? })).into_response())
}

async fn revoke_user_sessions(State(s): State<ApiState>, _: ApiKey, Path(id): Path<String>) -> ApiResult<Response> {
    let n = s.store.revoke_user_sessions(&id).await?;
    Ok(Json(json!({ "revoked": n })).into_response())
}

async fn revoke_session(State(s): State<ApiState>, _: ApiKey, Path(id): Path<String>) -> ApiResult<Response> {
    s.store.revoke_session(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_calls(
    State(s): State<ApiState>,
    _: ApiKey,
    Path(id): Path<String>,
    QueryParams(q): QueryParams,
) -> ApiResult<Response> {
    let (limit, before) = page(&q)?;
    if s.store.user(&id).await?.is_none() {
        return Err(StoreError::NotFound("user").into());
    }
    let calls = s.store.calls_of(&id, before, limit).await?;
    Ok(Json(json!({ "calls": *calls })).into_response())
}

/// `limit` (1–200, default 50) and `before` (Unix ms) from a listing's query string.
fn page(q: &std::collections::HashMap<String, String>) -> ApiResult<(u32, Option<i64>)> {
    if let Some(k) = q.keys().find(|k| !matches!(k.as_str(), "limit" | "before")) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("unknown query parameter `{k}`")));
    }
    let bad = |field, message| ApiError::field(StatusCode::BAD_REQUEST, field, message);
    let limit = match q.get("limit") {
        None => 50,
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=200).contains(n))
            .ok_or_else(|| bad("limit", "must be an integer from 1 to 200"))?,
    };
    let before = match q.get("before") {
        None => None,
        Some(v) => Some(v.parse::<i64>().map_err(|_| bad("before", "must be a Unix time in milliseconds"))?),
    };
    Ok((limit, before))
}

/// Reports users filed after calls, newest first, for moderation.
async fn list_reports(State(s): State<ApiState>, _: ApiKey, QueryParams(q): QueryParams) -> ApiResult<Response> {
    let (limit, before) = page(&q)?;
    Ok(Json(json!({ "reports": s.store.reports(before, limit).await? })).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct GuestRequest {
    #[serde(default)]
    display_name: Option<String>,
}

/// Development only: a throwaway user and a short session, no API key.
async fn guest(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    JsonBody(req): JsonBody<GuestRequest, true>,
) -> ApiResult<Response> {
    let Some(limiter) = &s.guests else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "guest sign-in is disabled"));
    };
    limiter.check(peer, &headers)?;
    let name = req.display_name.unwrap_or_else(|| format!("Guest {:04}", rand::random::<u16>() % 10_000));
    let user = s.store.create_user(NewUser { display_name: name, ..Default::default() }).await?;
    let ttl = Duration::from_millis(s.cfg.guest_session_ttl_ms);
    let issued = s.store.issue_session(&user.id, Some(ttl), None, None).await?;
    Ok((StatusCode::CREATED, Json(json!({ "user": user, "token": issued.token, "session": issued.session })))
        .into_response())
}
