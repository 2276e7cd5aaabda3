//! Gateway errors.

use std::path::PathBuf;

/// Errors that stop the gateway from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A configuration value is unusable.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A TLS file could not be read or parsed.
    #[error("invalid config `gateway.tls.{key}` ({path}): {problem}")]
    Tls {
        /// `cert_path` or `key_path`.
        key: &'static str,
        /// The file named by the key.
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },
    /// The listener failed.
    #[error("listener failed: {0}")]
    Io(#[from] std::io::Error),
}
