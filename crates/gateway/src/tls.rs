//! Native TLS (`wss://`) from PEM files.

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;

use crate::config::TlsConfig;
use crate::error::GatewayError;

pub(crate) fn acceptor(cfg: &TlsConfig) -> Result<TlsAcceptor, GatewayError> {
    let certs = CertificateDer::pem_file_iter(&cfg.cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| GatewayError::Tls { key: "cert_path", path: cfg.cert_path.clone(), problem: e.to_string() })?;
    if certs.is_empty() {
        return Err(GatewayError::Tls {
            key: "cert_path",
            path: cfg.cert_path.clone(),
            problem: "no certificate found".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key_path).map_err(|e| GatewayError::Tls {
        key: "key_path",
        path: cfg.key_path.clone(),
        problem: e.to_string(),
    })?;
    let mut server =
        ServerConfig::builder_with_provider(Arc::new(tokio_rustls::rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
            .map_err(|e| GatewayError::Tls { key: "key_path", path: cfg.key_path.clone(), problem: e.to_string() })?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}
