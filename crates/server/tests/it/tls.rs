//! Native `wss://` with a certificate from config.

use std::sync::Arc;

use rendezvous::Mode;
use rendezvous_gateway::TlsConfig;
use rendezvous_gateway::ws::deflate::DeflatePool;
use rendezvous_gateway::ws::reader::{Event, Message, MessageReader, Role};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use crate::support::{read_response, start, test_config};

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

async fn tls_connect(addr: std::net::SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(fixture("ca.crt")).unwrap()).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    TlsConnector::from(Arc::new(config)).connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap()
}

#[tokio::test]
async fn wss_and_https_on_the_same_port() {
    let mut cfg = test_config();
    cfg.gateway.tls = Some(TlsConfig { cert_path: fixture("localhost.crt"), key_path: fixture("localhost.key") });
    let srv = start(cfg, Mode::Serve).await;

    let mut https = tls_connect(srv.addr).await;
    https.write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    assert_eq!(read_response(&mut https).await.0.status, 200);

    let mut wss = tls_connect(srv.addr).await;
    wss.write_all(b"GET /ws?token=dev-secure HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.unwrap();
    let (resp, mut rest) = read_response(&mut wss).await;
    assert_eq!(resp.status, 101);
    let pool = DeflatePool::new(6);
    let mut reader = MessageReader::new(Role::Client, 1 << 20, false);
    let mut events = Vec::new();
    loop {
        reader.feed(&rest, &pool, &mut events).unwrap();
        if let Some(Event::Message(Message::Text(t))) = events.first() {
            assert!(t.contains(r#""user_id":"secure""#), "{t}");
            break;
        }
        let mut buf = [0u8; 4096];
        let n = wss.read(&mut buf).await.unwrap();
        assert!(n > 0);
        rest = buf[..n].to_vec();
    }
}

#[tokio::test]
async fn unreadable_certificate_is_a_startup_error_naming_the_key() {
    let mut cfg = test_config();
    cfg.gateway.tls = Some(TlsConfig { cert_path: fixture("missing.crt"), key_path: fixture("localhost.key") });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = rendezvous::Server::new(cfg, Mode::Serve);
    let err = server.run(listener, rendezvous::Shutdown::new(), |_| {}).await.unwrap_err();
    assert!(err.to_string().contains("gateway.tls.cert_path"), "{err}");
}
