//! Sampling the server: `/health` over plain HTTP/1.1 and VmRSS from `/proc`.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: usize = 1 << 20;

/// The server's figures at one moment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerSample {
    /// `connections.total` from `/health`.
    pub connections_total: Option<u64>,
    /// `memory.rss_bytes` from `/health`.
    pub rss_bytes: Option<u64>,
    /// `memory.allocated_bytes` from `/health` (jemalloc `stats.allocated`).
    pub allocated_bytes: Option<u64>,
    /// `memory.allocator_resident_bytes` from `/health`.
    pub allocator_resident_bytes: Option<u64>,
    /// VmRSS of `--server-pid`, read from `/proc/<pid>/status`.
    pub vmrss_bytes: Option<u64>,
    pub error: Option<String>,
}

impl ServerSample {
    /// Samples whichever of `/health` and VmRSS were asked for.
    pub async fn take(health_url: Option<&str>, pid: Option<u32>) -> Self {
        let mut s = Self { vmrss_bytes: pid.and_then(vmrss_bytes), ..Self::default() };
        if let Some(url) = health_url {
            match fetch_json(url).await {
                Ok(v) => {
                    let get = |p: &str| v.pointer(p).and_then(serde_json::Value::as_u64);
                    s.connections_total = get("/connections/total");
                    s.rss_bytes = get("/memory/rss_bytes");
                    s.allocated_bytes = get("/memory/allocated_bytes");
                    s.allocator_resident_bytes = get("/memory/allocator_resident_bytes");
                }
                Err(e) => s.error = Some(e),
            }
        }
        s
    }

    /// Label/value rows for the table.
    pub fn lines(&self) -> Vec<(String, String)> {
        let mib = |v: Option<u64>| v.map_or("-".into(), |b| format!("{b} ({:.1} MiB)", b as f64 / (1024.0 * 1024.0)));
        let mut out = vec![
            ("server connections.total".into(), self.connections_total.map_or("-".into(), |v| v.to_string())),
            ("server memory.rss_bytes".into(), mib(self.rss_bytes)),
            ("server memory.allocated_bytes".into(), mib(self.allocated_bytes)),
            ("server allocator_resident".into(), mib(self.allocator_resident_bytes)),
            ("server VmRSS (/proc)".into(), mib(self.vmrss_bytes)),
        ];
        if let Some(e) = &self.error {
            out.push(("server sample error".into(), e.clone()));
        }
        out
    }
}

/// VmRSS of `pid` in bytes.
pub fn vmrss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// `http://127.x.y.z:port/path` → (address, port, path). Only loopback targets.
fn parse_url(url: &str) -> Result<(Ipv4Addr, u16, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_owned()),
        None => (rest, "/".to_owned()),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().map_err(|_| format!("{url}: bad port"))?),
        None => (authority, 80),
    };
    let host = if host == "localhost" {
        Ipv4Addr::LOCALHOST
    } else {
        host.parse().map_err(|_| format!("{url}: host must be an IPv4 address"))?
    };
    if !host.is_loopback() {
        return Err(format!("{url}: only loopback addresses are allowed"));
    }
    Ok((host, port, path))
}

/// GETs `url` and parses the body as JSON (10 s bound).
pub async fn fetch_json(url: &str) -> Result<serde_json::Value, String> {
    let (host, port, path) = parse_url(url)?;
    let get = async {
        let mut s = TcpStream::connect((host, port)).await.map_err(|e| format!("connect {host}:{port}: {e}"))?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        (&mut s).take(LIMIT as u64).read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(buf)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), get).await.map_err(|_| format!("{url}: timed out"))??;
    let body = http_body(&raw).map_err(|e| format!("{url}: {e}"))?;
    serde_json::from_slice(&body).map_err(|e| format!("{url}: body is not JSON: {e}"))
}

fn http_body(raw: &[u8]) -> Result<Vec<u8>, String> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("incomplete response head")?;
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!("HTTP status {status}"));
    }
    let body = &raw[end + 4..];
    if head.contains("transfer-encoding: chunked") { dechunk(body) } else { Ok(body.to_vec()) }
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = body.windows(2).position(|w| w == b"\r\n").ok_or("bad chunk")?;
        let size_text = String::from_utf8_lossy(&body[..eol]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        body = &body[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&body[..size]);
        body = body.get(size + 2..).unwrap_or(&[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(parse_url("http://127.0.0.1:8080/health").unwrap(), (Ipv4Addr::LOCALHOST, 8080, "/health".into()));
        assert!(parse_url("http://192.0.2.1/health").is_err());
        assert!(parse_url("https://127.0.0.1/").is_err());
    }

    #[test]
    fn bodies() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(http_body(plain).unwrap(), b"{}");
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{\"\r\n3\r\na\":\r\n2\r\n1}\r\n0\r\n\r\n";
        assert_eq!(http_body(chunked).unwrap(), b"{\"a\":1}");
        assert!(http_body(b"HTTP/1.1 503 x\r\n\r\n").is_err());
    }
}
