//! Test doubles and helpers shared by the matchmaker suites: a directory in memory, a
//! presence recorder, and clients over `ChannelOutbox`.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rendezvous_bus::{Bus, BusConfig};
use rendezvous_gateway::testing::{ChannelOutbox, OutboxRx, Sent};
use rendezvous_matchmaker::{
    Activity, ActivitySink, BoxFuture, CallEnd, CallOrigin, CooldownList, Directory, DirectoryError, InProcessLocator,
    InProcessQueue, Matchmaker, MatchmakerConfig, MatchmakerDeps, MatchmakerHandle, Profile, PublicProfile, Report,
    StartedCall, now_ms,
};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// One row of call history as the fake directory keeps it.
#[derive(Debug, Clone)]
pub struct CallRow {
    pub id: String,
    pub a: String,
    pub b: String,
    pub origin: CallOrigin,
    pub started_at: i64,
    pub end: Option<CallEnd>,
}

#[derive(Default)]
struct Dir {
    profiles: HashMap<String, Profile>,
    /// (blocker, blocked) → when.
    blocks: HashMap<(String, String), i64>,
    cooldowns: HashMap<(String, String), i64>,
    calls: Vec<CallRow>,
    reports: Vec<Report>,
}

fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b { (a.into(), b.into()) } else { (b.into(), a.into()) }
}

/// The store, in memory. `fail` makes every call fail.
#[derive(Default)]
pub struct FakeDirectory {
    dir: Mutex<Dir>,
    pub fail: AtomicBool,
    next: AtomicU64,
    pub queries: AtomicU64,
}

impl FakeDirectory {
    pub fn add_user(&self, id: &str, gender: &str) {
        let public = PublicProfile {
            user_id: id.into(),
            display_name: format!("User {id}"),
            gender: gender.into(),
            selfie_url: None,
            video_url: None,
            bio: String::new(),
        };
        self.dir.lock().unwrap().profiles.insert(id.into(), Profile { public, banned: false });
    }

    pub fn ban(&self, id: &str) {
        self.dir.lock().unwrap().profiles.get_mut(id).unwrap().banned = true;
    }

    pub fn block_now(&self, blocker: &str, blocked: &str) {
        self.dir.lock().unwrap().blocks.insert((blocker.into(), blocked.into()), now_ms());
    }

    pub fn cooldown(&self, a: &str, b: &str, until: i64) {
        self.dir.lock().unwrap().cooldowns.insert(pair(a, b), until);
    }

    pub fn calls(&self) -> Vec<CallRow> {
        self.dir.lock().unwrap().calls.clone()
    }

    pub fn blocks(&self) -> Vec<((String, String), i64)> {
        self.dir.lock().unwrap().blocks.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    pub fn reports(&self) -> Vec<Report> {
        self.dir.lock().unwrap().reports.clone()
    }

    pub fn cooldown_until(&self, a: &str, b: &str) -> Option<i64> {
        self.dir.lock().unwrap().cooldowns.get(&pair(a, b)).copied()
    }

    fn check(&self) -> Result<(), DirectoryError> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        if self.fail.load(Ordering::Relaxed) {
            return Err(DirectoryError("directory down".into()));
        }
        Ok(())
    }
}

fn ready<'a, T: Send + 'a>(v: T) -> BoxFuture<'a, T> {
    Box::pin(std::future::ready(v))
}

impl Directory for FakeDirectory {
    fn profile<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<Option<Profile>, DirectoryError>> {
        ready(self.check().map(|_| self.dir.lock().unwrap().profiles.get(user_id).cloned()))
    }

    fn blocks<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<Arc<Vec<String>>, DirectoryError>> {
        ready(self.check().map(|_| {
            let d = self.dir.lock().unwrap();
            let mut out: Vec<String> = d
                .blocks
                .keys()
                .filter_map(|(a, b)| {
                    if a == user_id {
                        Some(b.clone())
                    } else if b == user_id {
                        Some(a.clone())
                    } else {
                        None
                    }
                })
                .collect();
            out.sort();
            out.dedup();
            Arc::new(out)
        }))
    }

    fn cooldowns<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<CooldownList, DirectoryError>> {
        ready(self.check().map(|_| {
            let now = now_ms();
            let d = self.dir.lock().unwrap();
            let mut out: Vec<(String, i64)> = d
                .cooldowns
                .iter()
                .filter(|(_, until)| **until > now)
                .filter_map(|((a, b), until)| match () {
                    _ if a == user_id => Some((b.clone(), *until)),
                    _ if b == user_id => Some((a.clone(), *until)),
                    _ => None,
                })
                .collect();
            out.sort();
            Arc::new(out)
        }))
    }

    fn start_call<'a>(
        &'a self,
        a: &'a str,
        b: &'a str,
        origin: CallOrigin,
    ) -> BoxFuture<'a, Result<StartedCall, DirectoryError>> {
        ready(self.check().map(|_| {
            let id = format!("call-{}", self.next.fetch_add(1, Ordering::Relaxed));
            let started_at = now_ms();
            self.dir.lock().unwrap().calls.push(CallRow {
                id: id.clone(),
                a: a.into(),
                b: b.into(),
                origin,
                started_at,
                end: None,
            });
            StartedCall { call_id: id, started_at_ms: started_at }
        }))
    }

    fn end_call<'a>(&'a self, end: &'a CallEnd) -> BoxFuture<'a, Result<(), DirectoryError>> {
        ready(self.check().map(|_| {
            let mut d = self.dir.lock().unwrap();
            let row = d.calls.iter_mut().find(|c| c.id == end.call_id).expect("ending a call that was started");
            assert!(row.end.is_none(), "call {} ended twice", end.call_id);
            row.end = Some(end.clone());
        }))
    }

    fn put_cooldown<'a>(&'a self, a: &'a str, b: &'a str, until_ms: i64) -> BoxFuture<'a, Result<(), DirectoryError>> {
        ready(self.check().map(|_| {
            self.dir.lock().unwrap().cooldowns.insert(pair(a, b), until_ms);
        }))
    }

    fn block<'a>(&'a self, blocker: &'a str, blocked: &'a str) -> BoxFuture<'a, Result<(), DirectoryError>> {
        ready(self.check().map(|_| {
            self.dir.lock().unwrap().blocks.entry((blocker.into(), blocked.into())).or_insert_with(now_ms);
        }))
    }

    fn report<'a>(&'a self, report: &'a Report) -> BoxFuture<'a, Result<(), DirectoryError>> {
        ready(self.check().map(|_| self.dir.lock().unwrap().reports.push(report.clone())))
    }
}

/// Presence as the matchmaker drives it; users in `away` refuse invites.
#[derive(Default)]
pub struct RecordingActivity {
    pub shown: Mutex<HashMap<String, Activity>>,
    pub away: Mutex<HashSet<String>>,
}

impl RecordingActivity {
    pub fn of(&self, user: &str) -> Option<Activity> {
        self.shown.lock().unwrap().get(user).copied()
    }
}

impl ActivitySink for RecordingActivity {
    fn set_activity(&self, user_id: &str, activity: Activity) {
        self.shown.lock().unwrap().insert(user_id.into(), activity);
    }

    fn is_available(&self, user_id: &str) -> bool {
        !self.away.lock().unwrap().contains(user_id)
    }
}

pub type Handle = MatchmakerHandle<ChannelOutbox>;

/// Several instances on one in-process bus, sharing a queue, locator and directory.
pub struct Cluster {
    pub dir: Arc<FakeDirectory>,
    pub activity: Arc<RecordingActivity>,
    pub queue: InProcessQueue,
    pub locator: InProcessLocator,
    pub handles: Vec<Handle>,
    pub tokens: Vec<CancellationToken>,
    pub tracker: TaskTracker,
    next_conn: u64,
}

/// Short deadlines so paused-time tests stay readable.
pub fn test_config() -> MatchmakerConfig {
    MatchmakerConfig {
        proposal_timeout_ms: 15_000,
        invite_timeout_ms: 20_000,
        cooldown_ms: 60_000,
        reconnect_grace_ms: 10_000,
        match_interval_ms: 100,
        ..MatchmakerConfig::default()
    }
}

impl Cluster {
    pub async fn new(instances: usize, cfg: MatchmakerConfig) -> Self {
        let dir = Arc::new(FakeDirectory::default());
        let activity = Arc::new(RecordingActivity::default());
        let queue = InProcessQueue::new();
        let locator = InProcessLocator::new();
        let bus = Bus::in_process("i0", &BusConfig { capacity: 1 << 16 });
        let tracker = TaskTracker::new();
        let mut handles = Vec::new();
        let mut tokens = Vec::new();
        for i in 0..instances {
            let deps = MatchmakerDeps {
                directory: dir.clone(),
                activity: activity.clone(),
                queue: Arc::new(queue.clone()),
                locator: Arc::new(locator.clone()),
                registry: None,
            };
            let token = CancellationToken::new();
            let h = Matchmaker::spawn(cfg.clone(), bus.as_instance(format!("i{i}")), deps, token.clone(), &tracker)
                .await
                .unwrap();
            handles.push(h);
            tokens.push(token);
        }
        Self { dir, activity, queue, locator, handles, tokens, tracker, next_conn: 1 }
    }

    /// A connected client of `user` on instance `i`.
    pub fn client(&mut self, i: usize, user: &str) -> Client {
        let id = self.next_conn;
        self.next_conn += 1;
        let (conn, rx) = ChannelOutbox::new(id, user);
        let h = self.handles[i].clone();
        h.connect(conn.clone()).unwrap();
        Client { conn, rx, user: user.into(), h }
    }

    /// A user with a profile, connected on instance `i`.
    pub fn user(&mut self, i: usize, user: &str, gender: &str) -> Client {
        self.dir.add_user(user, gender);
        self.client(i, user)
    }
}

/// Lets every task run until all are waiting (paused time advances 1 ms).
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

pub struct Client {
    pub conn: ChannelOutbox,
    pub rx: OutboxRx,
    pub user: String,
    pub h: Handle,
}

impl Client {
    /// The next message, waiting (in paused time) up to 10 minutes.
    pub async fn next(&mut self) -> Value {
        match tokio::time::timeout(Duration::from_secs(600), self.rx.next()).await {
            Ok(Some(Sent::Message(m))) => serde_json::from_str(m.as_text().unwrap()).unwrap(),
            Ok(Some(other)) => panic!("{}: expected a message, got {other:?}", self.user),
            Ok(None) => panic!("{}: outbox closed", self.user),
            Err(_) => panic!("{}: nothing arrived", self.user),
        }
    }

    /// The next message, which must have type `ty`.
    pub async fn expect(&mut self, ty: &str) -> Value {
        let m = self.next().await;
        assert_eq!(m["type"], ty, "{}: unexpected {m}", self.user);
        m
    }

    /// The next message, which must be an error with `code`.
    pub async fn expect_error(&mut self, code: &str) -> Value {
        let m = self.expect("error").await;
        assert_eq!(m["code"], code, "{}: {m}", self.user);
        m
    }

    /// Everything queued now.
    pub fn drain(&mut self) -> Vec<Value> {
        self.rx
            .drain()
            .into_iter()
            .filter_map(|s| match s {
                Sent::Message(m) => serde_json::from_str(m.as_text()?).ok(),
                Sent::Close(..) => None,
            })
            .collect()
    }

    /// Asserts nothing arrives once everything has run.
    pub async fn expect_nothing(&mut self) {
        settle().await;
        let got = self.drain();
        assert!(got.is_empty(), "{}: unexpected {got:?}", self.user);
    }

    pub fn disconnect(&self) {
        self.h.disconnect(rendezvous_gateway::Outbox::id(&self.conn), &self.user).unwrap();
    }
}
