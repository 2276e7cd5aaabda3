//! Which instances are alive. Each instance renews a liveness key in Redis every
//! `cluster.heartbeat_interval_ms`; the key expires `cluster.instance_timeout_ms` after
//! the last renewal. The same script that renews it also claims every instance whose key
//! is gone and cleans up after it, all in one atomic step, so exactly one survivor does
//! the cleanup: the dead instance's users leave the locator and the queue, and the
//! engagements and call records it coordinated are handed back to the claimer, whose
//! matchmaker ends them. Every survivor hears of every departure through
//! [`InstanceRegistry::subscribe`] (other parts, like a per-user connection registry,
//! forget the instance there). A clean shutdown deregisters at once.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::broadcast;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::config::ClusterConfig;
use crate::queue::{CallRecord, Engagement, QueueError};
use crate::redis::{RedisState, Script};

/// Departures and losses of state, as every instance sees them.
#[derive(Debug, Clone)]
pub enum ClusterEvent {
    /// `instance` stopped heartbeating or deregistered. `cleanup` is set on the one
    /// survivor that claimed it: that instance ends what the dead one coordinated.
    Died {
        /// The departed instance.
        instance: Arc<str>,
        /// What the claimer took over, if this instance is the claimer.
        cleanup: Option<Arc<DeadInstance>>,
    },
    /// This instance's own liveness key was gone at a heartbeat: Redis lost its keys (a
    /// restart) or the others declared this instance dead. Local truth must be re-asserted.
    StateLost,
}

/// What a dead instance left, taken out of Redis by its claimer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadInstance {
    /// Users who were connected only there (now out of the locator and the queue).
    pub users: Vec<String>,
    /// Engagements it coordinated, per user, now released.
    pub engagements: Vec<(String, Engagement)>,
    /// Calls it coordinated, now forgotten; the claimer writes their history rows.
    pub calls: Vec<CallRecord>,
}

/// Heartbeat, claim the dead, clean up after them, and list who is alive: one step.
/// KEYS: instances, loc, queue, entries, engaged, calls. ARGV: base, me, ttl ms, now ms.
static TICK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local base, me = ARGV[1], ARGV[2]
local alive = base .. 'alive:'
local had = redis.call('EXISTS', alive .. me)
redis.call('SET', alive .. me, ARGV[4], 'PX', ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[4], me)
local dead = {}
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if m ~= me and redis.call('EXISTS', alive .. m) == 0 then
    redis.call('ZREM', KEYS[1], m)
    local at = base .. 'at:' .. m
    local users = {}
    for _, u in ipairs(redis.call('SMEMBERS', at)) do
      if redis.call('HGET', KEYS[2], u) == m then
        redis.call('HDEL', KEYS[2], u)
        if redis.call('ZREM', KEYS[3], u) == 1 then redis.call('HDEL', KEYS[4], u) end
        users[#users + 1] = u
      end
    end
    redis.call('DEL', at)
    local engaged = {}
    local all = redis.call('HGETALL', KEYS[5])
    for i = 1, #all, 2 do
      local ok, e = pcall(cjson.decode, all[i + 1])
      if ok and type(e) == 'table' and e.coordinator == m then
        redis.call('HDEL', KEYS[5], all[i])
        engaged[#engaged + 1] = {all[i], all[i + 1]}
      end
    end
    local calls = {}
    all = redis.call('HGETALL', KEYS[6])
    for i = 1, #all, 2 do
      local ok, c = pcall(cjson.decode, all[i + 1])
      if ok and type(c) == 'table' and c.coordinator == m then
        redis.call('HDEL', KEYS[6], all[i])
        calls[#calls + 1] = all[i + 1]
      end
    end
    dead[#dead + 1] = {m, users, engaged, calls}
  end
end
return cjson.encode({had, dead, redis.call('ZRANGE', KEYS[1], 0, -1)})",
    )
});

/// Leave at once: KEYS: instances, loc. ARGV: base, me.
static DEREGISTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local base, me = ARGV[1], ARGV[2]
redis.call('DEL', base .. 'alive:' .. me)
redis.call('ZREM', KEYS[1], me)
local at = base .. 'at:' .. me
for _, u in ipairs(redis.call('SMEMBERS', at)) do
  if redis.call('HGET', KEYS[2], u) == me then redis.call('HDEL', KEYS[2], u) end
end
redis.call('DEL', at)
return 1",
    )
});

/// This instance's membership in the registry. Clones share state.
#[derive(Clone)]
pub struct InstanceRegistry {
    state: RedisState,
    me: Arc<str>,
    cfg: ClusterConfig,
    events: broadcast::Sender<ClusterEvent>,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Whether the last heartbeat reached Redis.
    beating: AtomicBool,
    known: std::sync::Mutex<HashSet<Arc<str>>>,
}

impl std::fmt::Debug for InstanceRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceRegistry").field("instance", &self.me).finish_non_exhaustive()
    }
}

impl InstanceRegistry {
    pub(crate) fn new(state: RedisState, instance: &str, cfg: &ClusterConfig) -> Self {
        let (events, _) = broadcast::channel(256);
        Self { state, me: Arc::from(instance), cfg: cfg.clone(), events, shared: Arc::default() }
    }

    /// Departures (every survivor) and this instance's own losses of state. A receiver
    /// that lags should treat it as `StateLost` and resynchronize.
    pub fn subscribe(&self) -> broadcast::Receiver<ClusterEvent> {
        self.events.subscribe()
    }

    /// The heartbeat interval, so listeners can wait for every instance to have re-asserted
    /// its state after a loss (one interval plus slack).
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.cfg.heartbeat_interval_ms)
    }

    /// Whether the last heartbeat reached Redis.
    pub fn is_beating(&self) -> bool {
        self.shared.beating.load(Ordering::Relaxed)
    }

    /// The first heartbeat, at start: fails if Redis cannot be reached.
    pub async fn register(&self) -> Result<(), QueueError> {
        self.tick(true).await
    }

    /// Heartbeats until `shutdown`, then deregisters. Failed heartbeats are retried at the
    /// next interval; the instance is declared dead by the others if they keep failing
    /// for `cluster.instance_timeout_ms`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut beat = tokio::time::interval(self.heartbeat_interval());
        beat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        beat.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = beat.tick() => {
                    if let Err(e) = self.heartbeat().await {
                        if self.shared.beating.swap(false, Ordering::Relaxed) {
                            tracing::warn!(error = %e, "instance heartbeat failed; retrying");
                        }
                    }
                }
            }
        }
        self.deregister().await;
    }

    /// Leaves the registry at once (a clean shutdown): the others see the departure at
    /// their next heartbeat instead of after the timeout.
    pub async fn deregister(&self) {
        let keys = vec![self.state.keys().key("instances"), self.state.keys().key("loc")];
        let args = vec![self.state.keys().base.clone(), self.me.to_string()];
        match self.state.run::<i64>(&DEREGISTER, keys, args).await {
            Ok(_) => tracing::info!(instance = %self.me, "left the instance registry"),
            Err(e) => tracing::warn!(error = %e, "could not leave the instance registry; the others time it out"),
        }
        self.shared.beating.store(false, Ordering::Relaxed);
    }

    /// One heartbeat: renews this instance's liveness, claims and cleans up after dead
    /// instances, and sends the events. [`InstanceRegistry::run`] calls it every interval.
    pub async fn heartbeat(&self) -> Result<(), QueueError> {
        self.tick(false).await
    }

    async fn tick(&self, first: bool) -> Result<(), QueueError> {
        let k = self.state.keys();
        let keys = ["instances", "loc", "queue", "entries", "engaged", "calls"].map(|n| k.key(n)).to_vec();
        let args = vec![
            k.base.clone(),
            self.me.to_string(),
            self.cfg.instance_timeout_ms.to_string(),
            crate::clock::now_ms().to_string(),
        ];
        let reply: String = self.state.run(&TICK, keys, args).await?;
        let tick = parse_tick(&reply).map_err(crate::redis::unavailable)?;
        self.shared.beating.store(true, Ordering::Relaxed);
        if !tick.had_key && !first {
            tracing::warn!(
                "this instance's liveness key was gone (Redis restarted, or we were declared dead); resynchronizing"
            );
            let _ = self.events.send(ClusterEvent::StateLost);
        }
        let claimed: HashSet<&str> = tick.dead.iter().map(|(name, _)| name.as_str()).collect();
        for (name, dead) in &tick.dead {
            tracing::warn!(
                instance = %name,
                users = dead.users.len(),
                engagements = dead.engagements.len(),
                calls = dead.calls.len(),
                "instance stopped heartbeating; cleaned up after it"
            );
            let _ = self
                .events
                .send(ClusterEvent::Died { instance: Arc::from(name.as_str()), cleanup: Some(Arc::new(dead.clone())) });
        }
        let alive: HashSet<Arc<str>> = tick.members.iter().map(|m| Arc::from(m.as_str())).collect();
        let departed: Vec<Arc<str>> = {
            let mut known = self.shared.known.lock().unwrap_or_else(|p| p.into_inner());
            let gone = known.iter().filter(|m| !alive.contains(*m) && m.as_ref() != &*self.me).cloned().collect();
            *known = alive;
            gone
        };
        for instance in departed {
            if !claimed.contains(&*instance) {
                tracing::info!(%instance, "instance left the cluster");
                let _ = self.events.send(ClusterEvent::Died { instance, cleanup: None });
            }
        }
        Ok(())
    }
}

struct Tick {
    had_key: bool,
    dead: Vec<(String, DeadInstance)>,
    members: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("unexpected heartbeat reply: {0}")]
struct BadReply(String);

/// cjson encodes an empty table as `{}`, so every list may arrive as an empty object.
fn list(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

fn text(v: &Value) -> Result<String, BadReply> {
    v.as_str().map(str::to_owned).ok_or_else(|| BadReply(v.to_string()))
}

fn parse_tick(reply: &str) -> Result<Tick, BadReply> {
    let v: Value = serde_json::from_str(reply).map_err(|e| BadReply(e.to_string()))?;
    let [had, dead, members] = list(&v) else { return Err(BadReply(reply.to_owned())) };
    let mut out = Tick { had_key: had.as_i64() == Some(1), dead: Vec::new(), members: Vec::new() };
    for m in list(members) {
        out.members.push(text(m)?);
    }
    for d in list(dead) {
        let [name, users, engaged, calls] = list(d) else { return Err(BadReply(d.to_string())) };
        let mut dead = DeadInstance::default();
        for u in list(users) {
            dead.users.push(text(u)?);
        }
        for pair in list(engaged) {
            let [user, e] = list(pair) else { return Err(BadReply(pair.to_string())) };
            let e = serde_json::from_str(&text(e)?).map_err(|e| BadReply(e.to_string()))?;
            dead.engagements.push((text(user)?, e));
        }
        for c in list(calls) {
            dead.calls.push(serde_json::from_str(&text(c)?).map_err(|e| BadReply(e.to_string()))?);
        }
        out.dead.push((text(name)?, dead));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::locator::Locator;
    use crate::queue::tests::test_redis;
    use crate::queue::{EngagementKind, JoinOutcome, MatchQueue, QueueEntry, UserStatus};

    const FAST: ClusterConfig = ClusterConfig { heartbeat_interval_ms: 50, instance_timeout_ms: 300 };

    fn entry(user: &str) -> QueueEntry {
        QueueEntry {
            profile: crate::directory::PublicProfile {
                user_id: user.into(),
                display_name: user.into(),
                gender: "x".into(),
                selfie_url: None,
                video_url: None,
                bio: String::new(),
            },
            prefs: Default::default(),
            blocked: vec![],
            cooldowns: vec![],
            joined_at_ms: 1,
        }
    }

    async fn until<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !check().await {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn the_redis_locator_follows_the_latest_binding_and_never_names_a_dead_instance() {
        let Some(state) = test_redis().await else { return };
        let (a, b) = (state.registry("a", &FAST), state.registry("b", &FAST));
        a.register().await.unwrap();
        b.register().await.unwrap();
        let l = state.locator();
        l.bind("u", "a").await.unwrap();
        l.bind("u", "b").await.unwrap();
        l.unbind("u", "a").await.unwrap();
        assert_eq!(l.instance_of("u").await.unwrap().as_deref(), Some("b"), "a stale unbind is ignored");
        l.unbind("u", "b").await.unwrap();
        assert_eq!(l.instance_of("u").await.unwrap(), None);
        l.bind("v", "b").await.unwrap();
        assert_eq!(l.instance_of("nobody").await.unwrap(), None);
        // b stops heartbeating: v stops being located there once b's key expires, before
        // anyone has cleaned up after b.
        until("b's liveness to expire", || async { l.instance_of("v").await.unwrap().is_none() }).await;
        state.delete_all_for_tests().await;
    }

    #[tokio::test]
    async fn the_redis_locator_answers_many_at_once_in_order() {
        let Some(state) = test_redis().await else { return };
        let slow = ClusterConfig { heartbeat_interval_ms: 1_000, instance_timeout_ms: 60_000 };
        let (a, b) = (state.registry("a", &slow), state.registry("b", &slow));
        a.register().await.unwrap();
        b.register().await.unwrap();
        let l = state.locator();
        // More users than one script call takes, on both instances, with gaps.
        let users: Vec<String> = (0..2_500).map(|i| format!("u{i}")).collect();
        for (i, u) in users.iter().enumerate() {
            match i % 3 {
                0 => l.bind(u, "a").await.unwrap(),
                1 => l.bind(u, "b").await.unwrap(),
                _ => {}
            }
        }
        let expected = |dead: Option<&str>| -> Vec<Option<&str>> {
            (0..users.len()).map(|i| [Some("a"), Some("b"), None][i % 3].filter(|inst| Some(*inst) != dead)).collect()
        };
        let found = l.instances_of(&users).await.unwrap();
        assert_eq!(found.iter().map(Option::as_deref).collect::<Vec<_>>(), expected(None));
        b.deregister().await;
        let found = l.instances_of(&users).await.unwrap();
        assert_eq!(
            found.iter().map(Option::as_deref).collect::<Vec<_>>(),
            expected(Some("b")),
            "b's users are nowhere"
        );
        assert_eq!(l.instances_of(&[]).await.unwrap(), vec![]);
        state.delete_all_for_tests().await;
    }

    #[tokio::test]
    async fn exactly_one_survivor_cleans_up_after_a_dead_instance() {
        let Some(state) = test_redis().await else { return };
        let regs: Vec<InstanceRegistry> = ["a", "b", "c"].iter().map(|i| state.registry(i, &FAST)).collect();
        for r in &regs {
            r.register().await.unwrap();
        }
        let (q, l) = (state.queue(), state.locator());
        for (user, at) in [("u", "c"), ("v", "a"), ("w", "a"), ("x", "b")] {
            l.bind(user, at).await.unwrap();
            assert_eq!(q.enqueue(entry(user)).await.unwrap(), JoinOutcome::Queued);
        }
        let call = Engagement { id: "call1".into(), kind: EngagementKind::Call, coordinator: "c".into() };
        assert!(q.claim("w", "x", call.clone(), 0).await.unwrap());
        let record = CallRecord {
            call_id: "call1".into(),
            user_a: "w".into(),
            user_b: "x".into(),
            started_at_ms: 7,
            coordinator: "c".into(),
        };
        q.record_call(&record).await.unwrap();
        let mut events = [regs[0].subscribe(), regs[1].subscribe()];
        // a and b keep beating (at the same moments); c is silent, as if killed.
        let mut heard = [None, None];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while heard.iter().any(Option::is_none) {
            assert!(tokio::time::Instant::now() < deadline, "c was never declared dead: {heard:?}");
            let (ra, rb) = tokio::join!(regs[0].heartbeat(), regs[1].heartbeat());
            ra.unwrap();
            rb.unwrap();
            for (k, rx) in events.iter_mut().enumerate() {
                while let Ok(ev) = rx.try_recv() {
                    match ev {
                        ClusterEvent::Died { instance, cleanup } if &*instance == "c" => heard[k] = Some(cleanup),
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let cleanups: Vec<Arc<DeadInstance>> = heard.into_iter().flatten().flatten().collect();
        assert_eq!(cleanups.len(), 1, "exactly one survivor claimed c");
        let dead = &cleanups[0];
        assert_eq!(dead.users, ["u"]);
        let mut engaged = dead.engagements.clone();
        engaged.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(engaged, [("w".to_owned(), call.clone()), ("x".to_owned(), call)]);
        assert_eq!(dead.calls, [record]);
        assert_eq!(l.instance_of("u").await.unwrap(), None);
        assert_eq!(q.status("u").await.unwrap(), UserStatus::Idle, "out of the queue");
        assert_eq!(q.status("v").await.unwrap(), UserStatus::Queued, "others' users stay");
        assert_eq!(q.status("w").await.unwrap(), UserStatus::Idle, "engagements it coordinated are released");
        assert_eq!(l.instance_of("v").await.unwrap().as_deref(), Some("a"));
        state.delete_all_for_tests().await;
    }

    #[tokio::test]
    async fn a_lost_liveness_key_is_reported_and_a_clean_exit_is_seen_at_once() {
        let Some(state) = test_redis().await else { return };
        let slow = ClusterConfig { heartbeat_interval_ms: 1_000, instance_timeout_ms: 60_000 };
        let (a, b) = (state.registry("a", &slow), state.registry("b", &slow));
        a.register().await.unwrap();
        b.register().await.unwrap();
        let mut rx = a.subscribe();
        a.heartbeat().await.unwrap();
        assert!(rx.try_recv().is_err(), "nothing happened yet");
        b.deregister().await;
        a.heartbeat().await.unwrap();
        assert!(
            matches!(rx.try_recv(), Ok(ClusterEvent::Died { instance, cleanup: None }) if &*instance == "b"),
            "a deregistered instance is gone at the next heartbeat, long before its timeout"
        );
        // Redis restarted (every key gone): the next heartbeat says so.
        state.delete_all_for_tests().await;
        a.heartbeat().await.unwrap();
        assert!(matches!(rx.try_recv(), Ok(ClusterEvent::StateLost)));
        assert!(a.is_beating());
        state.delete_all_for_tests().await;
    }

    #[test]
    fn empty_lists_may_come_as_objects() {
        let t = parse_tick(r#"[1,{},["a","b"]]"#).unwrap();
        assert!(t.had_key && t.dead.is_empty());
        assert_eq!(t.members, ["a", "b"]);
        let e = r#"{\"id\":\"p\",\"kind\":\"call\",\"coordinator\":\"x\"}"#;
        let c = r#"{\"call_id\":\"c\",\"user_a\":\"u\",\"user_b\":\"v\",\"started_at_ms\":5,\"coordinator\":\"x\"}"#;
        let t = parse_tick(&format!(r#"[0,[["x",["u"],[["v","{e}"]],["{c}"]],["y",{{}},{{}},{{}}]],{{}}]"#)).unwrap();
        assert!(!t.had_key && t.members.is_empty());
        assert_eq!(t.dead[0].1.users, ["u"]);
        assert_eq!(t.dead[0].1.engagements[0].1.coordinator, "x");
        assert_eq!(t.dead[0].1.calls[0].started_at_ms, 5);
        assert_eq!(t.dead[1].1, DeadInstance::default());
        assert!(parse_tick("[1]").is_err());
    }
}
