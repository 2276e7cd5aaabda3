//! The embedded files over real HTTP: content types, caching validators, and the demo
//! switched off by `demo.enabled = false` while the library stays.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::server::{Scheme, ServerSpec};

/// One `GET` with `extra` header lines; the status line and the headers, lower-cased.
async fn get(port: u16, path: &str, extra: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{extra}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_owned())
}

fn header(head: &str, name: &str) -> String {
    head.lines().find_map(|l| l.strip_prefix(&format!("{name}: "))).unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_and_demo_are_served_with_types_and_validators() {
    let spec = ServerSpec::new(Scheme::Http);
    let _server = spec.start().await;
    for (path, kind) in [
        ("/client/rendezvous.js", "text/javascript; charset=utf-8"),
        ("/client/rendezvous.d.ts", "application/typescript; charset=utf-8"),
        ("/", "text/html; charset=utf-8"),
        ("/demo/app.js", "text/javascript; charset=utf-8"),
        ("/demo/style.css", "text/css; charset=utf-8"),
        ("/demo/config.json", "application/json"),
    ] {
        let (status, head, _) = get(spec.port, path, "").await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(header(&head, "content-type"), kind, "{path}");
    }
    let (_, head, body) = get(spec.port, "/client/rendezvous.js", "").await;
    assert!(body.contains("export class RendezvousClient"));
    assert_eq!(header(&head, "cache-control"), "public, max-age=300, must-revalidate");
    let etag = header(&head, "etag");
    assert!(etag.starts_with('"'), "{head}");
    let (status, _, body) = get(spec.port, "/client/rendezvous.js", &format!("If-None-Match: {etag}\r\n")).await;
    assert_eq!((status, body.as_str()), (304, ""));
    let (_, head, _) = get(spec.port, "/", "").await;
    assert!(header(&head, "content-security-policy").contains("default-src 'self'"));
    let (_, _, config) = get(spec.port, "/demo/config.json", "").await;
    assert_eq!(serde_json::from_str::<serde_json::Value>(&config).unwrap()["topic"], "lobby");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_disabled_leaves_only_the_library() {
    let mut spec = ServerSpec::new(Scheme::Http);
    spec.extra.push(("RENDEZVOUS__DEMO__ENABLED".into(), "false".into()));
    let _server = spec.start().await;
    for path in ["/", "/demo/app.js", "/demo/config.json"] {
        let (status, _, body) = get(spec.port, path, "").await;
        assert_eq!(status, 404, "{path}");
        assert!(body.contains("not_found"), "{body}");
    }
    assert_eq!(get(spec.port, "/client/rendezvous.js", "").await.0, 200);
}
