//! Gateway errors.

use std::path::PathBuf;

/// Errors that stop the gateway from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A configuration value is unusable.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A TLS file could not be read or parsed.
    #[error("invalid config `gateway.tls.{key}` ({path}): {source}")]
    TlsFile {
        /// `cert_path` or `key_path`.
        key: &'static str,
        /// The file named by the key.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("invalid config `gateway.tls.cert_path` ({0}): no certificate found")]
    TlsNoCertificate(PathBuf),
    /// The certificate and key do not make a usable server configuration.
    #[error("invalid config `gateway.tls.key_path` ({path}): {source}")]
    TlsKey {
        /// The key file.
        path: PathBuf,
        /// What rustls said.
        #[source]
        source: tokio_rustls::rustls::Error,
    },
    /// The listener failed.
    #[error("listener failed: {0}")]
    Io(#[from] std::io::Error),
}
