//! The HTTP API for the app backend (`docs/api.md`): users, sessions and call
//! history, authenticated with the configured API key; plus the development-only
//! guest sign-in for the demo page.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use rendezvous_store::{NewUser, Store, StoreError, UserPatch};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::error;

use crate::config::ApiConfig;

/// What the API handlers share.
#[derive(Clone)]
pub struct ApiState {
    store: Arc<Store>,
    cfg: Arc<ApiConfig>,
}

/// An API failure: status, machine code, human message, optional field.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), field: None }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(f) = self.field {
            error["field"] = json!(f);
        }
        let mut resp = (self.status, Json(json!({ "error": error }))).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid(i) => ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "invalid",
                message: i.to_string(),
                field: Some(i.field),
            },
            StoreError::NotFound(what) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
            }
            StoreError::Unavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the database is unavailable; retry shortly",
            ),
            other => {
                error!(error = %other, detail = ?other, "store failure");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
            }
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The raw body, or a JSON 413/400 when it could not be read.
fn raw_body(raw: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    raw.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "request body too large")
        }
        status => ApiError::new(status, "bad_request", e.body_text()),
    })
}

/// Parses a JSON body, naming the offending field on failure.
fn body<T: DeserializeOwned>(bytes: &Bytes) -> ApiResult<T> {
    if bytes.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_request", "expected a JSON body"));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message =
            if path == "." { format!("invalid JSON body: {inner}") } else { format!("field `{path}`: {inner}") };
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    })
}

fn check_key(state: &ApiState, headers: &HeaderMap) -> ApiResult<()> {
    if state.cfg.key.is_empty() {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the API is disabled: set api.key"));
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing `Authorization: Bearer <api key>`")
        })?;
    if !constant_time_eq(presented.as_bytes(), state.cfg.key.as_bytes()) {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "invalid API key"));
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The `/api` routes.
pub fn router(store: Arc<Store>, cfg: ApiConfig) -> Router {
    let limit = cfg.max_body_bytes;
    let state = ApiState { store, cfg: Arc::new(cfg) };
    Router::new()
        .route("/api/users", post(create_user))
        .route("/api/users/{id}", get(get_user).patch(update_user).delete(delete_user))
        .route("/api/users/{id}/sessions", post(issue_session).get(list_sessions).delete(revoke_user_sessions))
        .route("/api/users/{id}/calls", get(list_calls))
        .route("/api/sessions/{id}", delete(revoke_session))
        .route("/api/guest", post(guest))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn create_user(
    State(s): State<ApiState>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    check_key(&s, &headers)?;
    let raw = raw_body(raw)?;
    let user = s.store.create_user(body::<NewUser>(&raw)?).await?;
    Ok((StatusCode::CREATED, Json(user)).into_response())
}

async fn get_user(State(s): State<ApiState>, headers: HeaderMap, Path(id): Path<String>) -> ApiResult<Response> {
    check_key(&s, &headers)?;
    let user = s.store.user(&id).await?.ok_or_else(|| ApiError::from(StoreError::NotFound("user")))?;
    Ok(Json(user).into_response())
}

async fn update_user(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    check_key(&s, &headers)?;
    let raw = raw_body(raw)?;
    let user = s.store.update_user(&id, body::<UserPatch>(&raw)?).await?;
    Ok(Json(user).into_response())
}

async fn delete_user(State(s): State<ApiState>, headers: HeaderMap, Path(id): Path<String>) -> ApiResult<Response> {
    check_key(&s, &headers)?;
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
    headers: HeaderMap,
    Path(id): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    check_key(&s, &headers)?;
    let raw = raw_body(raw)?;
    let req: SessionRequest = if raw.is_empty() { SessionRequest::default() } else { body(&raw)? };
    if req.ttl_seconds == Some(0) {
        return Err(ApiError {
            field: Some("ttl_seconds"),
            ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", "must be at least 1")
        });
    }
    for (field, v) in [("user_agent", &req.user_agent), ("ip", &req.ip)] {
        if v.as_ref().is_some_and(|v| v.len() > 512) {
            return Err(ApiError {
                field: Some(field),
                ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", "at most 512 bytes")
            });
        }
    }
    let issued = s.store.issue_session(&id, req.ttl_seconds.map(Duration::from_secs), req.user_agent, req.ip).await?;
    Ok((StatusCode::CREATED, Json(issued)).into_response())
}

async fn list_sessions(State(s): State<ApiState>, headers: HeaderMap, Path(id): Path<String>) -> ApiResult<Response> {
    check_key(&s, &headers)?;
    Ok(Json(json!({ "sessions": s.store.sessions_of(&id).await? })).into_response())
}

async fn revoke_user_sessions(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    check_key(&s, &headers)?;
    let n = s.store.revoke_user_sessions(&id).await?;
    Ok(Json(json!({ "revoked": n })).into_response())
}

async fn revoke_session(State(s): State<ApiState>, headers: HeaderMap, Path(id): Path<String>) -> ApiResult<Response> {
    check_key(&s, &headers)?;
    s.store.revoke_session(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_calls(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> ApiResult<Response> {
    check_key(&s, &headers)?;
    let Query(q) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
    let bad = |field: &'static str, message: &str| ApiError {
        field: Some(field),
        ..ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    };
    if let Some(k) = q.keys().find(|k| !matches!(k.as_str(), "limit" | "before")) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("unknown query parameter `{k}`")));
    }
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
    if s.store.user(&id).await?.is_none() {
        return Err(StoreError::NotFound("user").into());
    }
    let calls = s.store.calls_of(&id, before, limit).await?;
    Ok(Json(json!({ "calls": *calls })).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct GuestRequest {
    #[serde(default)]
    display_name: Option<String>,
}

/// Development only: a throwaway user and a short session, no API key.
async fn guest(State(s): State<ApiState>, raw: Result<Bytes, BytesRejection>) -> ApiResult<Response> {
    let raw = raw_body(raw)?;
    if !s.cfg.guest_sign_in {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "guest sign-in is disabled"));
    }
    let req: GuestRequest = if raw.is_empty() { GuestRequest::default() } else { body(&raw)? };
    let name = req.display_name.unwrap_or_else(|| format!("Guest {:04}", rand::random::<u16>() % 10_000));
    let user = s.store.create_user(NewUser { display_name: name, ..Default::default() }).await?;
    let ttl = Duration::from_millis(s.cfg.guest_session_ttl_ms);
    let issued = s.store.issue_session(&user.id, Some(ttl), None, None).await?;
    Ok((StatusCode::CREATED, Json(json!({ "user": user, "token": issued.token, "session": issued.session })))
        .into_response())
}
