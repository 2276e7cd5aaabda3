//! What domain crates read from the store, through its caches.

use std::sync::Arc;

use rendezvous_presence::{Directory, Profile};
use rendezvous_store::{Store, StoreError};

/// Profiles and block lists for presence, from the store's user LRU and query cache.
#[derive(Clone)]
pub struct StoreDirectory(pub Arc<Store>);

impl Directory for StoreDirectory {
    type Error = StoreError;

    async fn profile(&self, user_id: &str) -> Result<Option<Profile>, StoreError> {
        Ok(self.0.user(user_id).await?.map(|u| Profile {
            display_name: u.display_name,
            gender: u.gender,
            selfie_url: u.selfie_url,
        }))
    }

    async fn blocks(&self, user_id: &str) -> Result<Arc<Vec<String>>, StoreError> {
        self.0.blocks_of(user_id).await
    }
}
