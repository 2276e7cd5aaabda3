//! The API's error type and its extractors: the API key, JSON bodies, query strings.
//! Every rejection becomes the JSON error body of `docs/api.md`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use rendezvous_store::StoreError;
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::error;

use super::ApiState;

/// An API failure: status, machine code, human message, optional field.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<&'static str>,
    retry_after_secs: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), field: None, retry_after_secs: None }
    }

    /// Adds a `Retry-After` header (503s get 5 s without one).
    pub(crate) fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// A 400 (malformed) or 422 (breaks a rule) naming `field`.
    pub(crate) fn field(status: StatusCode, field: &'static str, message: impl Into<String>) -> Self {
        let code = if status == StatusCode::UNPROCESSABLE_ENTITY { "invalid" } else { "bad_request" };
        Self { status, code, message: message.into(), field: Some(field), retry_after_secs: None }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(f) = self.field {
            error["field"] = json!(f);
        }
        let mut resp = (self.status, Json(json!({ "error": error }))).into_response();
        let retry_after = self.retry_after_secs.or((self.status == StatusCode::SERVICE_UNAVAILABLE).then_some(5));
        if let Some(secs) = retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid(i) => ApiError::field(StatusCode::UNPROCESSABLE_ENTITY, i.field, i.to_string()),
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

/// Proof that the request carried the configured API key.
pub(crate) struct ApiKey;

impl FromRequestParts<ApiState> for ApiKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        if state.cfg.key.is_empty() {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the API is disabled: set api.key",
            ));
        }
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing `Authorization: Bearer <api key>`")
            })?;
        if !constant_time_eq(presented.as_bytes(), state.cfg.key.as_bytes()) {
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "invalid API key"));
        }
        Ok(ApiKey)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A JSON body parsed strictly; errors name the offending field. An empty body is
/// `T::default()` when `OPTIONAL`, else a 400.
pub(crate) struct JsonBody<T, const OPTIONAL: bool = false>(pub(crate) T);

impl<T: DeserializeOwned + Default, const OPTIONAL: bool> FromRequest<ApiState> for JsonBody<T, OPTIONAL> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &ApiState) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "request body too large")
            }
            status => ApiError::new(status, "bad_request", e.body_text()),
        })?;
        if bytes.is_empty() {
            return if OPTIONAL {
                Ok(JsonBody(T::default()))
            } else {
                Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_request", "expected a JSON body"))
            };
        }
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(&mut de).map(JsonBody).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let message =
                if path == "." { format!("invalid JSON body: {inner}") } else { format!("field `{path}`: {inner}") };
            ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
        })
    }
}

/// Query parameters, with malformed strings answered as JSON 400s.
pub(crate) struct QueryParams(pub(crate) std::collections::HashMap<String, String>);

impl FromRequestParts<ApiState> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        Query::from_request_parts(parts, state)
            .await
            .map(|Query(q)| QueryParams(q))
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))
    }
}
