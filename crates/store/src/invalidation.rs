//! What one instance tells the others after a write, over the bus topic
//! [`INVALIDATION_TOPIC`], so they drop their cached copies.

use serde::{Deserialize, Serialize};

/// Bus topic carrying [`Invalidation`] messages as JSON.
pub const INVALIDATION_TOPIC: &str = "store.invalidate";

/// One invalidation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Invalidation {
    /// Everything cached about a user (profile, lists), after an update or delete.
    User {
        /// The user.
        user_id: String,
    },
    /// A user's call history changed (a call started or ended); the profile is untouched.
    UserCalls {
        /// The user.
        user_id: String,
    },
    /// One session was revoked.
    Session {
        /// The session.
        session_id: String,
        /// Its owner.
        user_id: String,
    },
    /// Every session of a user was revoked (or the user deleted).
    UserSessions {
        /// The user.
        user_id: String,
    },
    /// One query-cache key.
    Key {
        /// The key.
        key: String,
    },
}

/// A session revocation the server acts on by closing live connections (code 4001).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The user whose connections may be affected.
    pub user_id: String,
    /// The one revoked session, or `None` for all of the user's sessions.
    pub session_id: Option<String>,
}

impl Invalidation {
    /// The revocation this implies, if any.
    pub fn revocation(&self) -> Option<Revocation> {
        match self {
            Invalidation::Session { session_id, user_id } => {
                Some(Revocation { user_id: user_id.clone(), session_id: Some(session_id.clone()) })
            }
            Invalidation::UserSessions { user_id } => Some(Revocation { user_id: user_id.clone(), session_id: None }),
            _ => None,
        }
    }
}
