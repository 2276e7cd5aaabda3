//! Files for browsers, compiled into the binary: the client library (always, at
//! `/client/rendezvous.js` with its types beside it) and the demo app at `/` when
//! `demo.enabled`. Sources live in `web/` at the repository top.

use std::sync::LazyLock;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::config::DemoConfig;

/// One embedded file and how it is served.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    cache_control: &'static str,
    etag: LazyLock<String>,
}

/// A strong validator from the content (FNV-1a), so a new build invalidates caches and an
/// unchanged file answers `304` without the body.
fn etag_of(body: &str) -> String {
    let hash = body.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("\"{hash:016x}\"")
}

macro_rules! asset {
    ($path:literal, $content_type:expr, $cache:expr) => {
        Asset {
            body: include_str!(concat!("../../../web/", $path)),
            content_type: $content_type,
            cache_control: $cache,
            etag: LazyLock::new(|| etag_of(include_str!(concat!("../../../web/", $path)))),
        }
    };
}

/// The library may be cached briefly and then revalidated (the ETag makes that cheap);
/// an app that pins a version should vendor the file instead.
const LIBRARY_CACHE: &str = "public, max-age=300, must-revalidate";
/// Demo files are revalidated on every load so a new build shows at once.
const DEMO_CACHE: &str = "no-cache";
const JS: &str = "text/javascript; charset=utf-8";

static CLIENT_JS: Asset = asset!("client/rendezvous.js", JS, LIBRARY_CACHE);
static CLIENT_DTS: Asset = asset!("client/rendezvous.d.ts", "application/typescript; charset=utf-8", LIBRARY_CACHE);
static DEMO_HTML: Asset = asset!("demo/index.html", "text/html; charset=utf-8", DEMO_CACHE);
static DEMO_JS: Asset = asset!("demo/app.js", JS, DEMO_CACHE);
static DEMO_CSS: Asset = asset!("demo/style.css", "text/css; charset=utf-8", DEMO_CACHE);

/// The demo page may only load its own files and talk to its own server (plus camera
/// streams); nothing inline, nothing framed.
const DEMO_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: https:; \
     media-src 'self' blob: mediastream:; connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'";

fn serve(asset: &'static Asset, request: &HeaderMap, csp: bool) -> Response {
    let etag = asset.etag.as_str();
    let mut headers = HeaderMap::new();
    headers.insert(header::ETAG, HeaderValue::from_str(etag).expect("hex etag is a valid header"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(asset.cache_control));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if csp {
        headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(DEMO_CSP));
        headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    }
    let matches = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if matches {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    (headers, asset.body).into_response()
}

/// What the demo page reads at start (`/demo/config.json`).
#[derive(Clone)]
struct DemoState {
    topic: String,
    guest_sign_in: bool,
}

/// Routes for the library, and for the demo when `demo_enabled`.
pub(crate) fn router(demo_enabled: bool, demo: &DemoConfig, guest_sign_in: bool) -> Router {
    let library = Router::new()
        .route("/client/rendezvous.js", get(|h: HeaderMap| async move { serve(&CLIENT_JS, &h, false) }))
        .route("/client/rendezvous.d.ts", get(|h: HeaderMap| async move { serve(&CLIENT_DTS, &h, false) }));
    if !demo_enabled {
        return library;
    }
    let state = DemoState { topic: demo.topic.clone(), guest_sign_in };
    library
        .route("/", get(|h: HeaderMap| async move { serve(&DEMO_HTML, &h, true) }))
        .route("/demo/app.js", get(|h: HeaderMap| async move { serve(&DEMO_JS, &h, false) }))
        .route("/demo/style.css", get(|h: HeaderMap| async move { serve(&DEMO_CSS, &h, false) }))
        .route("/demo/config.json", get(demo_config).with_state(state))
}

async fn demo_config(State(s): State<DemoState>) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(json!({ "topic": s.topic, "guest_sign_in": s.guest_sign_in })))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_follow_the_content() {
        assert_eq!(etag_of("a"), etag_of("a"));
        assert_ne!(etag_of("a"), etag_of("b"));
        assert!(CLIENT_JS.etag.starts_with('"') && CLIENT_JS.etag.len() == 18);
    }

    #[test]
    fn a_matching_validator_answers_304_without_a_body() {
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_str(&format!("W/\"x\", {}", *CLIENT_JS.etag)).unwrap());
        let r = serve(&CLIENT_JS, &h, false);
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        assert!(r.headers().get(header::CONTENT_TYPE).is_none());
        let r = serve(&CLIENT_JS, &HeaderMap::new(), false);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_TYPE], JS);
        assert_eq!(r.headers()[header::CACHE_CONTROL], LIBRARY_CACHE);
    }
}
