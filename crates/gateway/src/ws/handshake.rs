//! The HTTP/1.1 opening handshake (RFC 6455 §4.2), parsed from the raw request head.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use sha1::{Digest, Sha1};

const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const MAX_HEADERS: usize = 64;

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    /// The request method.
    pub method: Method,
    /// The path, without the query string.
    pub path: String,
    /// The raw query string, if any. May carry a token: never log it.
    pub query: Option<String>,
    /// The headers.
    pub headers: HeaderMap,
    /// Length of the head in bytes, including the final blank line.
    pub len: usize,
}

/// Why the head could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Not a valid HTTP/1.1 request head.
    #[error("malformed HTTP request")]
    Malformed,
    /// More headers than the server accepts.
    #[error("too many headers")]
    TooManyHeaders,
}

/// Parses a request head from `buf`; `Ok(None)` means it is not complete yet.
pub fn parse_head(buf: &[u8]) -> Result<Option<RequestHead>, HeadError> {
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut raw);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(_) => return Err(HeadError::Malformed),
    };
    let method = req.method.and_then(|m| Method::from_bytes(m.as_bytes()).ok()).ok_or(HeadError::Malformed)?;
    let target = req.path.ok_or(HeadError::Malformed)?;
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (target.to_owned(), None),
    };
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| HeadError::Malformed)?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| HeadError::Malformed)?;
        headers.append(name, value);
    }
    Ok(Some(RequestHead { method, path, query, headers, len }))
}

impl RequestHead {
    /// True when the request asks to upgrade to WebSocket (it may still be invalid).
    pub fn wants_websocket(&self) -> bool {
        header_has_token(&self.headers, http::header::UPGRADE, "websocket")
    }

    /// The value of query parameter `name`, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        let q = self.query.as_deref()?;
        q.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then(|| percent_decode(v))
        })
    }
}

/// Whether a comma-separated header contains `token` (case-insensitive).
pub fn header_has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Decodes a query value as browsers encode forms: `+` is a space, `%XX` a byte. A `%`
/// that does not start a valid escape is kept as it is (`percent-encoding` does that), and
/// bytes that are not UTF-8 become U+FFFD, so no query makes the handshake fail here.
fn percent_decode(s: &str) -> String {
    // `+` first: an encoded `%2B` must still decode to a literal plus.
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced).decode_utf8_lossy().into_owned()
}

/// A handshake the server refuses, with the HTTP status to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable reason for the JSON body.
    pub message: &'static str,
}

/// Checks the upgrade request and returns the `Sec-WebSocket-Accept` value.
pub fn validate_upgrade(head: &RequestHead) -> Result<String, Refusal> {
    let refuse = |status, message| Err(Refusal { status, message });
    if head.method != Method::GET {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "WebSocket upgrades must use GET");
    }
    if !header_has_token(&head.headers, http::header::CONNECTION, "upgrade") {
        return refuse(StatusCode::BAD_REQUEST, "missing `Connection: Upgrade`");
    }
    match head.headers.get(http::header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) {
        Some(b"13") => {}
        _ => {
            return refuse(StatusCode::UPGRADE_REQUIRED, "unsupported Sec-WebSocket-Version; use 13");
        }
    }
    let Some(key) = head.headers.get(http::header::SEC_WEBSOCKET_KEY) else {
        return refuse(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    match STANDARD.decode(key.as_bytes()) {
        Ok(raw) if raw.len() == 16 => {}
        _ => {
            return refuse(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key must be 16 base64-encoded bytes");
        }
    }
    Ok(accept_key(key.as_bytes()))
}

/// `Sec-WebSocket-Accept` for a client key.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(ACCEPT_GUID);
    STANDARD.encode(sha.finalize())
}

/// The `101 Switching Protocols` response head.
pub fn switching_response(accept: &str, extensions: Option<&str>) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
    );
    if let Some(ext) = extensions {
        r.push_str("Sec-WebSocket-Extensions: ");
        r.push_str(ext);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> RequestHead {
        parse_head(text.as_bytes()).unwrap().unwrap()
    }

    #[test]
    fn rfc_example_accept_key() {
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn validates_upgrades() {
        let ok = "GET /ws?token=a%2Bb HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        let h = head(ok);
        assert!(h.wants_websocket());
        assert_eq!(h.path, "/ws");
        assert_eq!(h.query_param("token").as_deref(), Some("a+b"));
        assert!(validate_upgrade(&h).is_ok());
        let bad_version = ok.replace("Version: 13", "Version: 8");
        assert_eq!(validate_upgrade(&head(&bad_version)).unwrap_err().status, StatusCode::UPGRADE_REQUIRED);
        let bad_key = ok.replace("dGhlIHNhbXBsZSBub25jZQ==", "short");
        assert_eq!(validate_upgrade(&head(&bad_key)).unwrap_err().status, StatusCode::BAD_REQUEST);
        let post = ok.replace("GET", "POST");
        assert_eq!(validate_upgrade(&head(&post)).unwrap_err().status, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn partial_and_malformed_heads() {
        assert!(parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
        assert_eq!(parse_head(b"\x00\x01garbage\r\n\r\n").unwrap_err(), HeadError::Malformed);
    }

    #[test]
    fn percent_decoding_survives_truncated_escapes() {
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%41"), "A");
        assert_eq!(percent_decode("a+b%2Bc"), "a b+c");
        assert_eq!(percent_decode("%ff%41"), "\u{fffd}A");
    }
}
