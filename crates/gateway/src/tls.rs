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
        .map_err(|source| GatewayError::TlsFile { key: "cert_path", path: cfg.cert_path.clone(), source })?;
    if certs.is_empty() {
        return Err(GatewayError::TlsNoCertificate(cfg.cert_path.clone()));
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key_path).map_err(|source| GatewayError::TlsFile {
        key: "key_path",
        path: cfg.key_path.clone(),
        source,
    })?;
    let mut server =
        ServerConfig::builder_with_provider(Arc::new(tokio_rustls::rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
            .map_err(|source| GatewayError::TlsKey { path: cfg.key_path.clone(), source })?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}
