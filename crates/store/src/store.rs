//! The store: database plus caches, invalidation over the bus, write-behind and cleanup.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use rendezvous_bus::{Bus, Received};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::activity::{ActivityBuffer, ActivityStats};
use crate::cache::{CacheStats, CountingLru, QueryCache};
use crate::config::{DatabaseConfig, StoreConfig};
use crate::db::{Db, PoolStats};
use crate::error::StoreError;
use crate::invalidation::{INVALIDATION_TOPIC, Invalidation, Revocation};
use crate::model::{AuthSession, Call, IssuedSession, NewUser, Report, Session, User, UserPatch};

/// Values the query cache holds.
#[derive(Debug, Clone)]
enum Cached {
    User(Option<User>),
    Session(Option<AuthSession>),
    Calls(Arc<Vec<Call>>),
    Blocks(Arc<Vec<String>>),
    Cooldown(Option<i64>),
    Cooldowns(Arc<Vec<(String, i64)>>),
}

type TokenHash = [u8; 32];

/// `last_active` rows written per transaction when the write-behind buffer is flushed.
/// Each transaction holds the (on SQLite, only) writer, so flushing a full buffer
/// (`store.activity_buffer_max`, 100,000 by default) in one transaction would make every
/// API write wait for all of it; in chunks, a write waits for one chunk at most.
const ACTIVITY_ROWS_PER_TRANSACTION: usize = 1_000;

/// Current wall-clock time in Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn hash_token(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// Everything `/health` shows about the store.
#[derive(Debug, Clone, Serialize)]
pub struct StoreStats {
    /// User LRU.
    pub users: CacheStats,
    /// Session LRU.
    pub sessions: CacheStats,
    /// Query cache.
    pub queries: CacheStats,
    /// Database pool.
    pub pool: PoolStats,
    /// `last_active` write-behind.
    pub activity: ActivityStats,
}

/// Users, sessions, calls, cooldowns and blocks behind caches. Share it as `Arc<Store>`.
pub struct Store {
    db: Db,
    cfg: StoreConfig,
    users: CountingLru<String, User>,
    sessions: CountingLru<TokenHash, AuthSession>,
    queries: QueryCache<Cached>,
    activity: ActivityBuffer,
    bus: Bus,
    revocations: broadcast::Sender<Revocation>,
    user_changes: broadcast::Sender<Arc<str>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("backend", &self.db.pool_stats().backend).finish_non_exhaustive()
    }
}

impl Store {
    /// Connects, migrates and builds the caches. Call [`Store::spawn_background`] next.
    pub async fn open(db: &DatabaseConfig, cfg: StoreConfig, bus: Bus) -> Result<Arc<Store>, StoreError> {
        let db = Db::connect(db).await?;
        Ok(Arc::new(Store {
            users: CountingLru::new(cfg.user_cache_capacity),
            sessions: CountingLru::new(cfg.session_cache_capacity),
            queries: QueryCache::new(cfg.query_cache_capacity, Duration::from_millis(cfg.query_cache_ttl_ms)),
            activity: ActivityBuffer::new(cfg.activity_buffer_max),
            revocations: broadcast::channel(cfg.revocation_buffer).0,
            user_changes: broadcast::channel(cfg.revocation_buffer).0,
            db,
            cfg,
            bus,
        }))
    }

    /// The database, for its test hooks (statement counts, stored rows).
    #[cfg(feature = "testing")]
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Users whose profile or blocks changed, here or on another instance; presence
    /// re-reads them. A lagging receiver is told how much it missed.
    pub fn user_changes(&self) -> broadcast::Receiver<Arc<str>> {
        self.user_changes.subscribe()
    }

    /// Session revocations, local and from other instances; the server closes matching connections.
    pub fn revocations(&self) -> broadcast::Receiver<Revocation> {
        self.revocations.subscribe()
    }

    /// Starts write-behind flushing, cleanup and the invalidation listener (subscribed
    /// when this returns). On `shutdown` they stop and the write-behind buffer is flushed
    /// one last time.
    pub async fn spawn_background(
        self: &Arc<Self>,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<(), StoreError> {
        let mut sub = self.bus.subscribe(INVALIDATION_TOPIC).await?;
        let me = self.clone();
        let stop = shutdown.clone();
        tracker.spawn(async move {
            loop {
                let received = tokio::select! {
                    () = stop.cancelled() => return,
                    r = sub.recv() => r,
                };
                match received {
                    None => return,
                    Some(Received::Gap { missed }) => {
                        warn!(?missed, "invalidations may have been missed; clearing every cache");
                        me.clear_caches();
                    }
                    Some(Received::Message(m)) if *m.origin == *me.bus.instance() => {}
                    Some(Received::Message(m)) => match serde_json::from_slice::<Invalidation>(&m.payload) {
                        Ok(inv) => me.apply(&inv),
                        Err(e) => {
                            warn!(error = %e, origin = %m.origin, "unreadable invalidation; clearing every cache")
                        }
                    },
                }
            }
        });
        let me = self.clone();
        let stop = shutdown.clone();
        tracker.spawn(async move {
            let period = Duration::from_millis(me.cfg.activity_flush_ms);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => { let _ = me.flush_activity().await; }
                }
            }
            match me.flush_activity().await {
                Ok(n) => info!(rows = n, "final last_active flush"),
                Err(e) => warn!(error = %e, pending = me.activity.stats().pending, "final last_active flush failed"),
            }
        });
        let me = self.clone();
        tracker.spawn(async move {
            let period = Duration::from_millis(me.cfg.cleanup_interval_ms);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = tick.tick() => match me.db.cleanup(now_ms()).await {
                        Ok((s, c)) if s + c > 0 => debug!(sessions = s, cooldowns = c, "expired rows deleted"),
                        Ok(_) => {}
                        Err(e) => warn!(error = %e, "cleanup failed"),
                    },
                }
            }
        });
        Ok(())
    }

    fn apply(&self, inv: &Invalidation) {
        match inv {
            Invalidation::User { user_id } => {
                // The query cache first: a reader that misses the LRU in between must not
                // refill it from a stale query entry.
                self.queries.invalidate_prefix(&format!("user:{user_id}:"));
                self.users.invalidate(user_id);
                let _ = self.user_changes.send(Arc::from(user_id.as_str()));
            }
            Invalidation::UserCalls { user_id } => {
                self.queries.invalidate_prefix(&format!("user:{user_id}:calls:"));
            }
            Invalidation::Session { session_id, .. } => {
                self.sessions.invalidate_where(|_, s| s.session_id == *session_id);
                self.queries.invalidate_prefix("session:");
            }
            Invalidation::UserSessions { user_id } => {
                self.sessions.invalidate_where(|_, s| s.user_id == *user_id);
                self.queries.invalidate_prefix("session:");
            }
            Invalidation::Key { key } => {
                self.queries.invalidate(key);
            }
        }
        if let Some(r) = inv.revocation() {
            let _ = self.revocations.send(r);
        }
    }

    /// Applies an invalidation here and tells every other instance. A failed publish is
    /// logged, not returned: the write itself succeeded, and other instances clear their
    /// caches when their transport reports the gap.
    async fn invalidate(&self, inv: Invalidation) {
        self.apply(&inv);
        match serde_json::to_vec(&inv) {
            Ok(bytes) => {
                if let Err(e) = self.bus.publish(INVALIDATION_TOPIC, Bytes::from(bytes)).await {
                    warn!(error = %e, "cannot publish an invalidation; other instances may serve stale entries");
                }
            }
            Err(e) => warn!(error = %e, "cannot encode invalidation"),
        }
    }

    /// Drops every cached entry.
    pub fn clear_caches(&self) {
        self.users.clear();
        self.sessions.clear();
        self.queries.clear();
    }

    /// Shrinks (factor < 1) or restores (factor = 1) cache capacities under memory pressure.
    pub fn scale_caches(&self, factor: f64) {
        let scale = |n: usize| ((n as f64 * factor) as usize).max(1);
        self.users.resize(scale(self.cfg.user_cache_capacity));
        self.sessions.resize(scale(self.cfg.session_cache_capacity));
        self.queries.resize(scale(self.cfg.query_cache_capacity));
    }

    /// Cache, pool and write-behind figures.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            users: self.users.stats(),
            sessions: self.sessions.stats(),
            queries: self.queries.stats(),
            pool: self.db.pool_stats(),
            activity: self.activity.stats(),
        }
    }

    /// Creates a user.
    pub async fn create_user(&self, new: NewUser) -> Result<User, StoreError> {
        new.validate()?;
        let now = now_ms();
        let user = User {
            id: uuid::Uuid::new_v4().to_string(),
            display_name: new.display_name.trim().to_owned(),
            gender: new.gender.unwrap_or_else(|| "unspecified".into()),
            selfie_url: new.selfie_url,
            video_url: new.video_url,
            bio: new.bio.unwrap_or_default(),
            socials: new.socials.unwrap_or_default(),
            created_at: now,
            last_active: now,
            banned: false,
        };
        self.db.insert_user(&user).await?;
        // A lookup that missed before creation may have cached "no such user".
        self.invalidate(Invalidation::User { user_id: user.id.clone() }).await;
        Ok(user)
    }

    /// A user by id: user LRU, then the database (one query however many callers miss at once).
    pub async fn user(&self, id: &str) -> Result<Option<User>, StoreError> {
        if let Some(u) = self.users.get(&id.to_owned()) {
            return Ok(Some(u));
        }
        let loaded = self
            .queries
            .get_or_load(&format!("user:{id}:profile"), || async { Ok(Cached::User(self.db.user(id).await?)) })
            .await?;
        match loaded {
            Cached::User(Some(u)) => {
                self.users.put(u.id.clone(), u.clone());
                Ok(Some(u))
            }
            _ => Ok(None),
        }
    }

    /// Applies `patch` to a user.
    pub async fn update_user(&self, id: &str, patch: UserPatch) -> Result<User, StoreError> {
        patch.validate()?;
        let mut user = self.db.user(id).await?.ok_or(StoreError::NotFound("user"))?;
        patch.apply(&mut user);
        if !self.db.update_user(&user).await? {
            return Err(StoreError::NotFound("user"));
        }
        self.invalidate(Invalidation::User { user_id: id.to_owned() }).await;
        if patch.banned == Some(true) {
            self.invalidate(Invalidation::UserSessions { user_id: id.to_owned() }).await;
        }
        Ok(user)
    }

    /// Deletes a user with their sessions, calls, cooldowns and blocks.
    pub async fn delete_user(&self, id: &str) -> Result<(), StoreError> {
        if !self.db.delete_user(id).await? {
            return Err(StoreError::NotFound("user"));
        }
        self.invalidate(Invalidation::User { user_id: id.to_owned() }).await;
        self.invalidate(Invalidation::UserSessions { user_id: id.to_owned() }).await;
        Ok(())
    }

    /// Issues a session token (at least 128 bits; here 256) for an existing user.
    pub async fn issue_session(
        &self,
        user_id: &str,
        ttl: Option<Duration>,
        user_agent: Option<String>,
        ip: Option<String>,
    ) -> Result<IssuedSession, StoreError> {
        if self.user(user_id).await?.is_none() {
            return Err(StoreError::NotFound("user"));
        }
        let raw: [u8; 32] = rand::random();
        let token = format!("rv_{}", URL_SAFE_NO_PAD.encode(raw));
        let now = now_ms();
        let max = Duration::from_millis(self.cfg.session_ttl_ms);
        let ttl = ttl.map_or(max, |t| t.min(max));
        let session = Session {
            id: uuid::Uuid::new_v4().to_string(),
            user_id: user_id.to_owned(),
            created_at: now,
            expires_at: now + ttl.as_millis() as i64,
            revoked_at: None,
            user_agent,
            ip,
        };
        self.db.insert_session(&session, &hash_token(&token)).await?;
        Ok(IssuedSession { token, session })
    }

    /// Resolves a token: session LRU, then the database. `Ok(None)` means invalid,
    /// expired, revoked or banned; `Err` means the database could not be asked.
    pub async fn authenticate(&self, token: &str) -> Result<Option<AuthSession>, StoreError> {
        let hash = hash_token(token);
        let now = now_ms();
        if let Some(s) = self.sessions.get(&hash) {
            if s.expires_at > now {
                return Ok(Some(s));
            }
            self.sessions.invalidate(&hash);
        }
        let key = format!("session:{}", URL_SAFE_NO_PAD.encode(hash));
        let loaded = self
            .queries
            .get_or_load(&key, || async { Ok(Cached::Session(self.db.session_by_hash(&hash, now).await?)) })
            .await?;
        // Negative answers are not kept: a token issued a moment later must work at once.
        self.queries.invalidate(&key);
        match loaded {
            Cached::Session(Some(s)) => {
                self.sessions.put(hash, s.clone());
                Ok(Some(s))
            }
            _ => Ok(None),
        }
    }

    /// Revokes one session everywhere; its live connections close within a second.
    pub async fn revoke_session(&self, session_id: &str) -> Result<(), StoreError> {
        let owner = self.db.revoke_session(session_id, now_ms()).await?.ok_or(StoreError::NotFound("session"))?;
        self.invalidate(Invalidation::Session { session_id: session_id.to_owned(), user_id: owner }).await;
        Ok(())
    }

    /// Revokes every session of a user; returns how many were live.
    pub async fn revoke_user_sessions(&self, user_id: &str) -> Result<usize, StoreError> {
        let ids = self.db.revoke_user_sessions(user_id, now_ms()).await?;
        self.invalidate(Invalidation::UserSessions { user_id: user_id.to_owned() }).await;
        Ok(ids.len())
    }

    /// A user's sessions, newest first (tokens are not recoverable).
    pub async fn sessions_of(&self, user_id: &str) -> Result<Vec<Session>, StoreError> {
        self.db.sessions_of(user_id).await
    }

    /// Records the start of a call.
    pub async fn start_call(&self, user_a: &str, user_b: &str) -> Result<Call, StoreError> {
        let call = Call {
            id: uuid::Uuid::new_v4().to_string(),
            user_a: user_a.to_owned(),
            user_b: user_b.to_owned(),
            started_at: now_ms(),
            ended_at: None,
            end_reason: None,
            ended_by: None,
            duration_ms: None,
        };
        self.db.insert_call(&call).await?;
        self.invalidate_calls(user_a, user_b).await;
        Ok(call)
    }

    /// Records the end of a call: why, and who ended it (`None` for a disconnect or shutdown).
    pub async fn end_call(&self, call: &Call, reason: &str, ended_by: Option<&str>) -> Result<(), StoreError> {
        self.db.end_call(&call.id, now_ms(), reason, ended_by).await?;
        self.invalidate_calls(&call.user_a, &call.user_b).await;
        Ok(())
    }

    async fn invalidate_calls(&self, a: &str, b: &str) {
        for user in [a, b] {
            self.invalidate(Invalidation::UserCalls { user_id: user.to_owned() }).await;
        }
    }

    /// A user's call history, newest first, cached for the query-cache TTL.
    pub async fn calls_of(&self, user_id: &str, before: Option<i64>, limit: u32) -> Result<Arc<Vec<Call>>, StoreError> {
        let before = before.unwrap_or(i64::MAX);
        let key = format!("user:{user_id}:calls:{before}:{limit}");
        match self
            .queries
            .get_or_load(&key, || async {
                Ok(Cached::Calls(Arc::new(self.db.calls_of(user_id, before, limit).await?)))
            })
            .await?
        {
            Cached::Calls(c) => Ok(c),
            _ => Ok(Arc::default()),
        }
    }

    /// Starts (or extends) a cooldown between two users.
    pub async fn put_cooldown(&self, a: &str, b: &str, until: i64) -> Result<(), StoreError> {
        self.db.put_cooldown(a, b, until).await?;
        self.invalidate(Invalidation::Key { key: pair_key(a, b) }).await;
        for user in [a, b] {
            self.invalidate(Invalidation::Key { key: cooldowns_key(user) }).await;
        }
        Ok(())
    }

    /// Everyone `user_id` is in a cooldown with right now, with when each ends (Unix ms):
    /// matchmaking loads this once per join instead of asking per pair.
    pub async fn cooldowns_of(&self, user_id: &str) -> Result<Arc<Vec<(String, i64)>>, StoreError> {
        let loaded = self
            .queries
            .get_or_load(&cooldowns_key(user_id), || async {
                Ok(Cached::Cooldowns(Arc::new(self.db.cooldowns_of(user_id, now_ms()).await?)))
            })
            .await?;
        match loaded {
            // A cached list may hold cooldowns that ended since it was loaded.
            Cached::Cooldowns(c) if c.iter().any(|(_, until)| *until <= now_ms()) => {
                let now = now_ms();
                Ok(Arc::new(c.iter().filter(|(_, until)| *until > now).cloned().collect()))
            }
            Cached::Cooldowns(c) => Ok(c),
            _ => Ok(Arc::default()),
        }
    }

    /// Whether two users are in a cooldown right now.
    pub async fn in_cooldown(&self, a: &str, b: &str) -> Result<bool, StoreError> {
        let key = pair_key(a, b);
        match self
            .queries
            .get_or_load(&key, || async { Ok(Cached::Cooldown(self.db.cooldown_until(a, b).await?)) })
            .await?
        {
            Cached::Cooldown(Some(until)) => Ok(until > now_ms()),
            _ => Ok(false),
        }
    }

    /// `blocker` blocks `blocked`.
    pub async fn block(&self, blocker: &str, blocked: &str) -> Result<(), StoreError> {
        self.db.put_block(blocker, blocked, now_ms()).await?;
        self.invalidate(Invalidation::User { user_id: blocker.to_owned() }).await;
        self.invalidate(Invalidation::User { user_id: blocked.to_owned() }).await;
        Ok(())
    }

    /// Users that `user_id` blocked or was blocked by.
    pub async fn blocks_of(&self, user_id: &str) -> Result<Arc<Vec<String>>, StoreError> {
        let key = format!("user:{user_id}:blocks");
        match self
            .queries
            .get_or_load(&key, || async { Ok(Cached::Blocks(Arc::new(self.db.blocks_of(user_id).await?))) })
            .await?
        {
            Cached::Blocks(b) => Ok(b),
            _ => Ok(Arc::default()),
        }
    }

    /// Files a report, with optional free text.
    pub async fn report(
        &self,
        reporter: &str,
        reported: &str,
        reason: &str,
        details: Option<&str>,
    ) -> Result<(), StoreError> {
        let id = uuid::Uuid::new_v4().to_string();
        self.db.insert_report(&id, reporter, reported, reason, details, now_ms()).await
    }

    /// Reports for the app backend, newest first, filed before `before` (Unix ms).
    pub async fn reports(&self, before: Option<i64>, limit: u32) -> Result<Vec<Report>, StoreError> {
        self.db.reports(before.unwrap_or(i64::MAX), limit).await
    }

    /// Notes that a user was active now; written behind in batches. For many users
    /// at once use [`Store::record_activity`].
    pub fn touch(&self, user_id: &str) {
        self.record_activity([(user_id, now_ms())]);
    }

    /// Notes when each user was last seen (`(user_id, unix ms)`), taking the buffer's lock
    /// once for the whole batch; a user's latest time wins. Written behind in batches.
    pub fn record_activity<'a>(&self, seen: impl IntoIterator<Item = (&'a str, i64)>) {
        self.activity.record(seen);
    }

    /// Writes buffered activity now, 1,000 rows per transaction (so API writes are not
    /// held up behind one huge transaction); on failure the unwritten rows are kept for
    /// the next try.
    pub async fn flush_activity(&self) -> Result<usize, StoreError> {
        let batch = self.activity.take();
        let mut written = 0;
        for chunk in batch.chunks(ACTIVITY_ROWS_PER_TRANSACTION) {
            if let Err(e) = self.db.touch_many(chunk).await {
                self.activity.restore(batch[written..].to_vec());
                return Err(e);
            }
            written += chunk.len();
            self.activity.flushed(chunk.len());
        }
        Ok(written)
    }

    /// Closes the database pool, after the final flush; later queries fail as unavailable.
    pub async fn close(&self) {
        self.db.close().await;
    }

    /// Deletes expired sessions and cooldowns now.
    pub async fn cleanup(&self) -> Result<(u64, u64), StoreError> {
        self.db.cleanup(now_ms()).await
    }
}

fn cooldowns_key(user_id: &str) -> String {
    format!("user:{user_id}:cooldowns")
}

fn pair_key(a: &str, b: &str) -> String {
    let (a, b) = if a <= b { (a, b) } else { (b, a) };
    format!("pair:{a}:{b}:cooldown")
}
