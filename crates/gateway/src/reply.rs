//! HTTP answers written before an upgrade: the one place gateway refusals become statuses.

use http::StatusCode;
use rendezvous_protocol::ErrorCode;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// A pre-upgrade refusal: HTTP status, JSON error body and optional `Retry-After`.
#[derive(Debug, Clone)]
pub(crate) struct HttpRefusal {
    pub(crate) status: StatusCode,
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
    pub(crate) retry_after_secs: Option<u64>,
}

impl HttpRefusal {
    pub(crate) fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after_secs: None }
    }

    pub(crate) fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs.max(1));
        self
    }

    /// The JSON body every HTTP error of Rendezvous carries.
    pub(crate) fn body(&self) -> String {
        serde_json::json!({ "error": { "code": self.code, "message": self.message } }).to_string()
    }

    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let body = self.body();
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n",
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or(""),
            body.len()
        );
        if let Some(s) = self.retry_after_secs {
            head.push_str(&format!("Retry-After: {s}\r\n"));
        }
        if self.status == StatusCode::UPGRADE_REQUIRED {
            head.push_str("Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n");
        }
        head.push_str("\r\n");
        head.push_str(&body);
        head.into_bytes()
    }

    /// Writes the response and shuts the write side; errors are ignored (the peer may be gone).
    pub(crate) async fn send<S: AsyncWrite + Unpin>(&self, stream: &mut S) {
        let _ = stream.write_all(&self.to_bytes()).await;
        let _ = stream.flush().await;
        let _ = stream.shutdown().await;
    }
}
