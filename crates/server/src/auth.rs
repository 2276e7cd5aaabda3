//! Authenticators: store sessions (with optional development tokens) and anonymous echo.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rendezvous_gateway::{AuthError, Authenticator, Identity};
use rendezvous_store::Store;

/// Resolves tokens through the store's session cache, then the database; accepts
/// `dev-<user>` tokens too when `dev_tokens` is on.
#[derive(Clone)]
pub struct StoreAuthenticator {
    store: Arc<Store>,
    dev_tokens: bool,
}

impl std::fmt::Debug for StoreAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreAuthenticator").field("dev_tokens", &self.dev_tokens).finish()
    }
}

impl StoreAuthenticator {
    /// Authenticates against `store`.
    pub fn new(store: Arc<Store>, dev_tokens: bool) -> Self {
        Self { store, dev_tokens }
    }
}

impl Authenticator for StoreAuthenticator {
    async fn authenticate(&self, token: Option<&str>) -> Result<Identity, AuthError> {
        let token = token.ok_or(AuthError::Missing)?;
        if self.dev_tokens && token.starts_with("dev-") {
            return DevAuthenticator.authenticate(Some(token)).await;
        }
        match self.store.authenticate(token).await {
            Ok(Some(s)) => Ok(Identity { user_id: Arc::from(s.user_id), session_id: Some(Arc::from(s.session_id)) }),
            Ok(None) => Err(AuthError::Invalid),
            Err(e) => Err(AuthError::unavailable(e)),
        }
    }
}

/// Accepts `dev-<user_id>` tokens, where the user id is 1–64 of `[A-Za-z0-9_-]`.
///
/// For development and tests only; the store's session lookup replaces it.
#[derive(Debug, Default, Clone)]
pub struct DevAuthenticator;

impl Authenticator for DevAuthenticator {
    async fn authenticate(&self, token: Option<&str>) -> Result<Identity, AuthError> {
        let token = token.ok_or(AuthError::Missing)?;
        let user = token.strip_prefix("dev-").ok_or(AuthError::Invalid)?;
        let valid =
            (1..=64).contains(&user.len()) && user.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(AuthError::Invalid);
        }
        Ok(Identity::user(Arc::from(user)))
    }
}

/// Gives every connection its own anonymous identity (echo mode, no auth).
#[derive(Debug, Default)]
pub struct AnonymousAuthenticator {
    next: AtomicU64,
}

impl Authenticator for AnonymousAuthenticator {
    async fn authenticate(&self, _token: Option<&str>) -> Result<Identity, AuthError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Ok(Identity::user(Arc::from(format!("anon-{n}"))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dev_tokens() {
        let a = DevAuthenticator;
        assert_eq!(a.authenticate(Some("dev-alice")).await.unwrap().user_id.as_ref(), "alice");
        assert!(matches!(a.authenticate(None).await, Err(AuthError::Missing)));
        for bad in ["alice", "dev-", "dev-a b", "dev-ä", &format!("dev-{}", "a".repeat(65))] {
            assert!(matches!(a.authenticate(Some(bad)).await, Err(AuthError::Invalid)), "{bad}");
        }
    }
}
