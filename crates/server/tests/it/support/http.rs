//! The tests' one HTTP/1.1 client: requests are written as raw bytes (so a test can also
//! send a malformed or partial one itself) and every response, on a plain or TLS socket,
//! is read by [`read_response`]: the head parsed by `httparse`, the body framed by
//! `Content-Length`, chunked encoding (httparse's chunk-size parser) or EOF.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::PATIENCE;

/// An HTTP response read off a raw socket.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

/// One API call over a fresh connection; `key` is sent as the Bearer token.
pub async fn api(addr: SocketAddr, method: &str, path: &str, body: Option<&str>, key: Option<&str>) -> HttpResponse {
    let bearer = key.map(|k| format!("Bearer {k}"));
    let mut headers = vec![("Content-Type", "application/json")];
    headers.extend(bearer.as_deref().map(|b| ("Authorization", b)));
    request(addr, method, path, &headers, Some(body.unwrap_or("").as_bytes())).await
}

/// Sends a plain HTTP GET and reads the response.
pub async fn http_get(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> HttpResponse {
    request(addr, "GET", path, extra, None).await
}

/// Sends one well-formed request with `Connection: close` on a fresh connection.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> HttpResponse {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    let mut wire = req.into_bytes();
    wire.extend_from_slice(body.unwrap_or_default());
    raw_request(addr, &wire).await
}

/// Writes `request` as it is (well-formed or not) on a fresh connection and reads the answer.
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> HttpResponse {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    read_response(&mut s).await.0
}

/// Reads one response from `stream`, and returns it with the bytes that arrived after it
/// (after a `101`, the first WebSocket frames). Panics on a malformed response, on EOF
/// inside it, and after [`PATIENCE`] without progress.
pub async fn read_response<S: AsyncRead + Unpin>(stream: &mut S) -> (HttpResponse, Vec<u8>) {
    let mut r = Incoming { stream, buf: Vec::new() };
    let (status, headers) = loop {
        let mut raw = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut raw);
        let parsed = resp
            .parse(&r.buf)
            .unwrap_or_else(|e| panic!("bad response head ({e}): {:?}", String::from_utf8_lossy(&r.buf)));
        if let httparse::Status::Complete(n) = parsed {
            let headers: Vec<(String, String)> = resp
                .headers
                .iter()
                .map(|h| (h.name.to_owned(), String::from_utf8_lossy(h.value).into_owned()))
                .collect();
            let status = resp.code.unwrap();
            r.buf.drain(..n);
            break (status, headers);
        }
        r.fill("a response head").await;
    };
    let mut resp = HttpResponse { status, headers, body: Vec::new() };
    // 1xx (the 101 of an upgrade), 204 and 304 never have a body (RFC 9112 §6.3).
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return (resp, r.buf);
    }
    let chunked = resp.header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let length = resp.header("content-length").map(|v| v.trim().parse::<usize>().expect("bad Content-Length"));
    resp.body = match (chunked, length) {
        (true, _) => r.chunked_body().await,
        (false, Some(n)) => {
            while r.buf.len() < n {
                r.fill("the body").await;
            }
            r.buf.drain(..n).collect()
        }
        // No framing: the body ends when the server closes the connection.
        (false, None) => {
            while r.fill_or_eof().await {}
            std::mem::take(&mut r.buf)
        }
    };
    (resp, r.buf)
}

/// Bytes read from the stream and not yet consumed.
struct Incoming<'a, S> {
    stream: &'a mut S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + Unpin> Incoming<'_, S> {
    /// Reads more; false at EOF.
    async fn fill_or_eof(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk)).await;
        let n = read.expect("response timed out").expect("read failed");
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// Reads more; EOF fails the test, naming what was still expected.
    async fn fill(&mut self, what: &str) {
        let more = self.fill_or_eof().await;
        assert!(more, "eof before {what}: {:?}", String::from_utf8_lossy(&self.buf));
    }

    /// The line ending at the next CRLF, consumed with it.
    async fn line(&mut self) -> Vec<u8> {
        loop {
            if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..at].to_vec();
                self.buf.drain(..at + 2);
                return line;
            }
            self.fill("the end of a line").await;
        }
    }

    async fn chunked_body(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let (start, size) = loop {
                match httparse::parse_chunk_size(&self.buf) {
                    Ok(httparse::Status::Complete((start, size))) => break (start, size as usize),
                    Ok(httparse::Status::Partial) => self.fill("a chunk size").await,
                    Err(_) => panic!("bad chunk size line: {:?}", String::from_utf8_lossy(&self.buf)),
                }
            };
            self.buf.drain(..start);
            if size == 0 {
                // Trailer fields, if any, then the empty line.
                while !self.line().await.is_empty() {}
                return body;
            }
            while self.buf.len() < size + 2 {
                self.fill("a chunk").await;
            }
            assert_eq!(&self.buf[size..size + 2], b"\r\n", "chunk not followed by CRLF");
            body.extend(self.buf.drain(..size + 2).take(size));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(wire: &[u8]) -> (HttpResponse, Vec<u8>) {
        read_response(&mut &wire[..]).await
    }

    #[tokio::test]
    async fn frames_bodies_by_length_chunks_or_eof() {
        let (r, rest) = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\n{}extra").await;
        assert_eq!(
            (r.status, r.body.as_slice(), r.header("x-a"), rest.as_slice()),
            (200, &b"{}"[..], Some("b"), &b"extra"[..])
        );
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{\"\r\n3;ext=1\r\na\":\r\n2\r\n1}\r\n0\r\nX-T: 1\r\n\r\nnext";
        let (r, rest) = parse(chunked).await;
        assert_eq!((r.json(), rest.as_slice()), (serde_json::json!({"a": 1}), &b"next"[..]));
        let (r, _) = parse(b"HTTP/1.1 200 OK\r\n\r\nto the end").await;
        assert_eq!(r.body, b"to the end");
        let (r, rest) = parse(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x00").await;
        assert_eq!((r.status, r.body.len(), rest.as_slice()), (101, 0, &b"\x81\x00"[..]));
    }

    #[tokio::test]
    #[should_panic(expected = "eof before the body")]
    async fn a_short_body_fails_the_test() {
        parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab").await;
    }
}
