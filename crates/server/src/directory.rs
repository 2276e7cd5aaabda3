//! What domain crates read from the store, through its caches.

use std::sync::Arc;

use dashmap::DashSet;
use rendezvous_gateway::Connection;
use rendezvous_matchmaker as mm;
use rendezvous_presence::{Directory, PresenceHandle, Profile};
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

fn unavailable(e: StoreError) -> mm::DirectoryError {
    mm::DirectoryError(Box::new(e))
}

/// Users, blocks, cooldowns, call history and reports for matchmaking, through the
/// store's caches (cooldown answers and block lists come from the query cache).
impl mm::Directory for StoreDirectory {
    fn profile<'a>(&'a self, user_id: &'a str) -> mm::BoxFuture<'a, Result<Option<mm::Profile>, mm::DirectoryError>> {
        Box::pin(async move {
            Ok(self.0.user(user_id).await.map_err(unavailable)?.map(|u| mm::Profile {
                banned: u.banned,
                public: mm::PublicProfile {
                    user_id: u.id,
                    display_name: u.display_name,
                    gender: u.gender,
                    selfie_url: u.selfie_url,
                    video_url: u.video_url,
                    bio: u.bio,
                },
            }))
        })
    }

    fn blocks<'a>(&'a self, user_id: &'a str) -> mm::BoxFuture<'a, Result<Arc<Vec<String>>, mm::DirectoryError>> {
        Box::pin(async move { self.0.blocks_of(user_id).await.map_err(unavailable) })
    }

    fn in_cooldown<'a>(&'a self, a: &'a str, b: &'a str) -> mm::BoxFuture<'a, Result<bool, mm::DirectoryError>> {
        Box::pin(async move { self.0.in_cooldown(a, b).await.map_err(unavailable) })
    }

    fn start_call<'a>(
        &'a self,
        a: &'a str,
        b: &'a str,
        _origin: mm::CallOrigin,
    ) -> mm::BoxFuture<'a, Result<mm::StartedCall, mm::DirectoryError>> {
        Box::pin(async move {
            let call = self.0.start_call(a, b).await.map_err(unavailable)?;
            Ok(mm::StartedCall { call_id: call.id, started_at_ms: call.started_at })
        })
    }

    fn end_call<'a>(&'a self, end: &'a mm::CallEnd) -> mm::BoxFuture<'a, Result<(), mm::DirectoryError>> {
        Box::pin(async move {
            let call = rendezvous_store::Call {
                id: end.call_id.clone(),
                user_a: end.user_a.clone(),
                user_b: end.user_b.clone(),
                started_at: end.started_at_ms,
                ended_at: Some(end.ended_at_ms),
                end_reason: Some(end.reason.as_str().to_owned()),
                ended_by: end.ended_by.clone(),
                duration_ms: Some(end.duration_ms()),
            };
            self.0.end_call(&call, end.reason.as_str(), end.ended_by.as_deref()).await.map_err(unavailable)
        })
    }

    fn put_cooldown<'a>(
        &'a self,
        a: &'a str,
        b: &'a str,
        until_ms: i64,
    ) -> mm::BoxFuture<'a, Result<(), mm::DirectoryError>> {
        Box::pin(async move { self.0.put_cooldown(a, b, until_ms).await.map_err(unavailable) })
    }

    fn block<'a>(&'a self, blocker: &'a str, blocked: &'a str) -> mm::BoxFuture<'a, Result<(), mm::DirectoryError>> {
        Box::pin(async move { self.0.block(blocker, blocked).await.map_err(unavailable) })
    }

    fn report<'a>(&'a self, report: &'a mm::Report) -> mm::BoxFuture<'a, Result<(), mm::DirectoryError>> {
        Box::pin(async move {
            let reason = serde_json::to_value(report.reason).ok().and_then(|v| v.as_str().map(str::to_owned));
            let reason = reason.unwrap_or_else(|| "other".into());
            self.0
                .report(&report.reporter, &report.reported, &reason, report.text.as_deref())
                .await
                .map_err(unavailable)
        })
    }
}

/// Matchmaking's view of presence: it sets `in_queue` / `in_call`, and asks whether a
/// user chose `away` (invites to them fail like invites to someone offline).
pub struct PresenceActivity {
    presence: PresenceHandle<Connection>,
    away: Arc<DashSet<String>>,
}

impl PresenceActivity {
    /// Drives `presence`; `away` is the set of local users who chose `away`.
    pub fn new(presence: PresenceHandle<Connection>, away: Arc<DashSet<String>>) -> Self {
        Self { presence, away }
    }
}

impl mm::ActivitySink for PresenceActivity {
    fn set_activity(&self, user_id: &str, activity: mm::Activity) {
        let activity = match activity {
            mm::Activity::Idle => rendezvous_presence::Activity::Idle,
            mm::Activity::InQueue => rendezvous_presence::Activity::InQueue,
            mm::Activity::InCall => rendezvous_presence::Activity::InCall,
        };
        if self.presence.set_activity(user_id, activity).is_err() {
            tracing::warn!(user_id, "presence is busy; an activity change was not shown");
        }
    }

    fn is_available(&self, user_id: &str) -> bool {
        !self.away.contains(user_id)
    }
}
