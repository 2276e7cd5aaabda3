//! What domain crates read from the store, through its caches.

use std::sync::Arc;

use dashmap::DashSet;
use rendezvous_gateway::Connection;
use rendezvous_matchmaker as mm;
use rendezvous_presence::{Directory, PresenceHandle, Profile};
use rendezvous_store::{Store, StoreError};

/// Store writes matchmaking may run at once. A burst of hang-ups (a drain, a mass
/// disconnect) otherwise starts one write per call, and on SQLite's single writer the
/// ones past the pool's acquire timeout fail and lose the call's history.
const WRITES_IN_FLIGHT: usize = 4;
/// Attempts for a matchmaking write while the database is unavailable.
const WRITE_ATTEMPTS: u32 = 6;

/// Profiles and block lists for presence and matchmaking, from the store's user LRU and
/// query cache; matchmaking's writes queue here and retry while the database is down.
#[derive(Clone)]
pub struct StoreDirectory {
    store: Arc<Store>,
    writes: Arc<tokio::sync::Semaphore>,
}

impl StoreDirectory {
    /// Reads and writes through `store`.
    pub fn new(store: Arc<Store>) -> Self {
        Self { store, writes: Arc::new(tokio::sync::Semaphore::new(WRITES_IN_FLIGHT)) }
    }

    /// Runs a write that inserts a new row (not idempotent) with a permit, once.
    async fn insert<T>(
        &self,
        write: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let _permit = self.writes.acquire().await.expect("the semaphore is never closed");
        write.await
    }

    /// Runs an idempotent write with a permit, retrying with backoff (0.1 s doubling)
    /// while the database is unavailable.
    async fn write<T, F, Fut>(&self, mut write: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let _permit = self.writes.acquire().await.expect("the semaphore is never closed");
        let mut delay = std::time::Duration::from_millis(100);
        for _ in 1..WRITE_ATTEMPTS {
            match write().await {
                Err(e) if e.is_unavailable() => {
                    tracing::debug!(error = %e, "store write failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                done => return done,
            }
        }
        write().await
    }
}

impl Directory for StoreDirectory {
    type Error = StoreError;

    async fn profile(&self, user_id: &str) -> Result<Option<Profile>, StoreError> {
        Ok(self.store.user(user_id).await?.map(|u| Profile {
            display_name: u.display_name.into(),
            gender: u.gender.into(),
            selfie_url: u.selfie_url.map(Into::into),
        }))
    }

    async fn blocks(&self, user_id: &str) -> Result<Arc<Vec<String>>, StoreError> {
        self.store.blocks_of(user_id).await
    }
}

fn unavailable(e: StoreError) -> mm::DirectoryError {
    mm::DirectoryError(Box::new(e))
}

/// Users, blocks, cooldowns, call history and reports for matchmaking, through the
/// store's caches (block lists and cooldown partners come from the query cache).
impl mm::Directory for StoreDirectory {
    fn profile<'a>(&'a self, user_id: &'a str) -> mm::BoxFuture<'a, Result<Option<mm::Profile>, mm::DirectoryError>> {
        Box::pin(async move {
            Ok(self.store.user(user_id).await.map_err(unavailable)?.map(|u| mm::Profile {
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
        Box::pin(async move { self.store.blocks_of(user_id).await.map_err(unavailable) })
    }

    fn cooldowns<'a>(&'a self, user_id: &'a str) -> mm::BoxFuture<'a, Result<mm::CooldownList, mm::DirectoryError>> {
        Box::pin(async move { self.store.cooldowns_of(user_id).await.map_err(unavailable) })
    }

    fn start_call<'a>(
        &'a self,
        a: &'a str,
        b: &'a str,
        _origin: mm::CallOrigin,
    ) -> mm::BoxFuture<'a, Result<mm::StartedCall, mm::DirectoryError>> {
        Box::pin(async move {
            let call = self.insert(self.store.start_call(a, b)).await.map_err(unavailable)?;
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
            let (reason, by) = (end.reason.as_str(), end.ended_by.as_deref());
            self.write(|| self.store.end_call(&call, reason, by)).await.map_err(unavailable)
        })
    }

    fn put_cooldown<'a>(
        &'a self,
        a: &'a str,
        b: &'a str,
        until_ms: i64,
    ) -> mm::BoxFuture<'a, Result<(), mm::DirectoryError>> {
        Box::pin(async move { self.write(|| self.store.put_cooldown(a, b, until_ms)).await.map_err(unavailable) })
    }

    fn block<'a>(&'a self, blocker: &'a str, blocked: &'a str) -> mm::BoxFuture<'a, Result<(), mm::DirectoryError>> {
        Box::pin(async move { self.write(|| self.store.block(blocker, blocked)).await.map_err(unavailable) })
    }

    fn report<'a>(&'a self, report: &'a mm::Report) -> mm::BoxFuture<'a, Result<(), mm::DirectoryError>> {
        Box::pin(async move {
            let reason = serde_json::to_value(report.reason).ok().and_then(|v| v.as_str().map(str::to_owned));
            let reason = reason.unwrap_or_else(|| "other".into());
            let (by, about, text) = (&report.reporter, &report.reported, report.text.as_deref());
            self.insert(self.store.report(by, about, &reason, text)).await.map_err(unavailable)
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
