//! What presence needs from the store, behind a trait the server implements.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// What the store knows about a user for display. Shared strings: every entry shown for
/// the user (one per topic) points at these instead of copying them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Profile {
    /// Name shown to other users.
    pub display_name: Arc<str>,
    /// One of the store's genders.
    pub gender: Arc<str>,
    /// Profile photo URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selfie_url: Option<Arc<str>>,
}

/// Profiles and block lists, read through the store's caches.
///
/// Called once per local user when they first connect (and on [`crate::PresenceHandle::refresh`]),
/// from spawned tasks, at most `presence.directory_concurrency` at a time; never per entry or per
/// tick. Remote users' profiles arrive on the bus from the instance that holds them.
pub trait Directory: Send + Sync + 'static {
    /// The store's error; logged, and a pending subscription gets `unavailable`.
    type Error: std::fmt::Display + Send + 'static;

    /// The user's display fields; `None` for a user the store does not know (shown by id).
    fn profile(&self, user_id: &str) -> impl Future<Output = Result<Option<Profile>, Self::Error>> + Send;

    /// Users blocked by, or blocking, `user_id`; they never see each other.
    fn blocks(&self, user_id: &str) -> impl Future<Output = Result<Arc<Vec<String>>, Self::Error>> + Send;
}

/// A finished lookup.
#[derive(Debug, Clone)]
pub(crate) struct Lookup {
    pub(crate) profile: Option<Profile>,
    pub(crate) blocks: Arc<Vec<String>>,
}

/// Both halves of a lookup, or the first error as text.
pub(crate) async fn lookup<D: Directory>(directory: &D, user_id: &str) -> Result<Lookup, String> {
    let profile = directory.profile(user_id).await.map_err(|e| e.to_string())?;
    let blocks = directory.blocks(user_id).await.map_err(|e| e.to_string())?;
    Ok(Lookup { profile, blocks })
}

/// Profile strings that repeat from user to user (genders: a handful of values), shared:
/// every lookup and every remote record otherwise brings its own copy (a 32-byte allocation
/// per user). At most [`SharedStrings::MAX`] distinct values are kept; past that, strings
/// stay as they came.
#[derive(Debug, Default)]
pub(crate) struct SharedStrings(HashSet<Arc<str>>);

impl SharedStrings {
    /// Distinct values kept.
    pub(crate) const MAX: usize = 64;

    /// Replaces `s` with the shared copy of its value, keeping it as that copy if new.
    fn share(&mut self, s: &mut Arc<str>) {
        match self.0.get(&**s) {
            Some(shared) => *s = shared.clone(),
            None if self.0.len() < Self::MAX => {
                self.0.insert(s.clone());
            }
            None => {}
        }
    }

    /// Shares the profile's repeated strings.
    pub(crate) fn share_profile(&mut self, profile: &mut Profile) {
        self.share(&mut profile.gender);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_genders_share_one_string_and_the_set_is_bounded() {
        let mut shared = SharedStrings::default();
        let profile = |g: &str| Profile { gender: g.into(), ..Profile::default() };
        let (mut a, mut b) = (profile("female"), profile("female"));
        assert!(!Arc::ptr_eq(&a.gender, &b.gender));
        shared.share_profile(&mut a);
        shared.share_profile(&mut b);
        assert!(Arc::ptr_eq(&a.gender, &b.gender) && &*b.gender == "female");
        for i in 0..2 * SharedStrings::MAX {
            shared.share_profile(&mut profile(&i.to_string()));
        }
        assert_eq!(shared.0.len(), SharedStrings::MAX);
        let mut late = profile("late");
        shared.share_profile(&mut late);
        assert_eq!(&*late.gender, "late");
    }
}
