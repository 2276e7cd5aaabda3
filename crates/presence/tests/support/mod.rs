//! Shared test helpers: a directory double, a connection double that can turn into a slow
//! consumer, a client that applies snapshots and diffs like a real one, and paused-time steps.
#![allow(dead_code)]

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rendezvous_bus::{Bus, BusConfig};
use rendezvous_gateway::testing::{ChannelOutbox, OutboxRx, Sent};
use rendezvous_gateway::{SendError, SharedMessage};
use rendezvous_presence::{Directory, Outbox, Presence, PresenceConfig, PresenceHandle, Profile};
use rendezvous_protocol::CloseCode;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub const TICK_MS: u64 = 2_000;

/// Lets every ready task run at the current (paused) instant, then moves 1 ms on.
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// Moves paused time forward by `ms`, running every timer on the way.
pub async fn advance(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Moves forward by `n` whole ticks.
pub async fn ticks(n: u64) {
    advance(n * TICK_MS).await;
}

/// A directory double: profiles default to `Name <id>`, blocks are symmetric, calls counted.
#[derive(Clone, Default)]
pub struct Dir(Arc<DirInner>);

#[derive(Default)]
pub struct DirInner {
    blocks: Mutex<HashMap<String, Vec<String>>>,
    profile_calls: AtomicU64,
    failing: AtomicBool,
}

impl Dir {
    pub fn block(&self, a: &str, b: &str) {
        let mut m = self.0.blocks.lock().unwrap();
        m.entry(a.into()).or_default().push(b.into());
        m.entry(b.into()).or_default().push(a.into());
    }

    pub fn profile_calls(&self) -> u64 {
        self.0.profile_calls.load(Ordering::SeqCst)
    }

    pub fn fail(&self, on: bool) {
        self.0.failing.store(on, Ordering::SeqCst);
    }
}

impl Directory for Dir {
    type Error = String;

    async fn profile(&self, user_id: &str) -> Result<Option<Profile>, String> {
        self.0.profile_calls.fetch_add(1, Ordering::SeqCst);
        if self.0.failing.load(Ordering::SeqCst) {
            return Err("database down".into());
        }
        Ok(Some(Profile {
            display_name: format!("Name {user_id}").into(),
            gender: "unspecified".into(),
            selfie_url: Some(format!("https://img.invalid/{user_id}.jpg").into()),
        }))
    }

    async fn blocks(&self, user_id: &str) -> Result<Arc<Vec<String>>, String> {
        Ok(Arc::new(self.0.blocks.lock().unwrap().get(user_id).cloned().unwrap_or_default()))
    }
}

/// A connection double: a channel outbox that can be switched to fail like a slow consumer.
#[derive(Clone)]
pub struct Conn {
    inner: ChannelOutbox,
    broken: Arc<AtomicBool>,
}

impl Conn {
    pub fn new(id: u64, user: &str) -> (Self, OutboxRx) {
        let (inner, rx) = ChannelOutbox::new(id, user);
        (Self { inner, broken: Arc::default() }, rx)
    }

    pub fn break_it(&self) {
        self.broken.store(true, Ordering::SeqCst);
    }
}

impl Outbox for Conn {
    fn id(&self) -> u64 {
        self.inner.id()
    }
    fn user_id(&self) -> &str {
        self.inner.user_id()
    }
    fn send(&self, msg: &SharedMessage) -> Result<(), SendError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(SendError::SlowConsumer);
        }
        self.inner.send(msg)
    }
    fn close(&self, code: CloseCode, reason: Cow<'static, str>) {
        self.inner.close(code, reason)
    }
}

pub type Handle = PresenceHandle<Conn>;

/// One instance's presence service.
pub struct Node {
    pub handle: Handle,
    pub shutdown: CancellationToken,
}

pub fn bus(instance: &str) -> Bus {
    Bus::in_process(instance, &BusConfig::default())
}

pub fn node(bus: &Bus, cfg: PresenceConfig, dir: &Dir) -> Node {
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let handle = Presence::spawn(cfg, bus.clone(), dir.clone(), shutdown.clone(), &tracker).unwrap();
    Node { handle, shutdown }
}

/// What a client holds for one topic.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct View {
    pub seq: u64,
    pub count: u64,
    pub entries: BTreeMap<String, Value>,
}

/// A message as received: parsed, and the shared original (for identity checks).
pub struct Got {
    pub json: Value,
    pub msg: Option<SharedMessage>,
}

/// A client: applies snapshots and diffs as `docs/protocol.md` (Presence) says, and records gaps.
pub struct Client {
    pub conn: Conn,
    rx: OutboxRx,
    pub views: BTreeMap<String, View>,
    pub gaps: Vec<String>,
}

impl Client {
    pub fn new(id: u64, user: &str) -> Self {
        let (conn, rx) = Conn::new(id, user);
        Self { conn, rx, views: BTreeMap::new(), gaps: Vec::new() }
    }

    pub fn user(&self) -> &str {
        self.conn.user_id()
    }

    pub fn conn_id(&self) -> u64 {
        self.conn.id()
    }

    /// Takes everything queued so far and applies the presence messages.
    pub fn pump(&mut self) -> Vec<Got> {
        let mut out = Vec::new();
        for sent in self.rx.drain() {
            let json = sent.json();
            let msg = match sent {
                Sent::Message(m) => Some(m),
                Sent::Close(..) => None,
            };
            self.apply(&json);
            out.push(Got { json, msg });
        }
        out
    }

    /// Like `pump`, but throws the next diff for `topic` away unapplied (a lost message).
    pub fn lose_next_diff(&mut self, topic: &str) -> bool {
        for sent in self.rx.drain() {
            let json = sent.json();
            if json["type"] == "presence.diff" && json["topic"] == topic {
                return true;
            }
            self.apply(&json);
        }
        false
    }

    fn apply(&mut self, v: &Value) {
        let topic = v["topic"].as_str().unwrap_or_default().to_owned();
        match v["type"].as_str() {
            Some("presence.snapshot") => {
                let entries = v["entries"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| (e["id"].as_str().unwrap().to_owned(), e.clone()))
                    .collect();
                let view = View { seq: v["seq"].as_u64().unwrap(), count: v["count"].as_u64().unwrap(), entries };
                self.views.insert(topic, view);
            }
            Some("presence.diff") => {
                let seq = v["seq"].as_u64().unwrap();
                let Some(view) = self.views.get_mut(&topic).filter(|view| view.seq + 1 == seq) else {
                    self.gaps.push(topic.clone());
                    self.views.remove(&topic);
                    return;
                };
                for id in v["leaves"].as_array().unwrap() {
                    view.entries.remove(id.as_str().unwrap());
                }
                for e in v["joins"].as_array().unwrap().iter().chain(v["updates"].as_array().unwrap()) {
                    view.entries.insert(e["id"].as_str().unwrap().to_owned(), e.clone());
                }
                view.seq = seq;
                view.count = v["count"].as_u64().unwrap();
            }
            _ => {}
        }
    }

    /// Ids in the client's view of `topic`, sorted.
    pub fn ids(&self, topic: &str) -> Vec<String> {
        self.views.get(topic).map(|v| v.entries.keys().cloned().collect()).unwrap_or_default()
    }

    pub fn state_of(&self, topic: &str, user: &str) -> Option<String> {
        self.views.get(topic)?.entries.get(user).map(|e| e["state"].as_str().unwrap().to_owned())
    }
}

/// Only the presence messages of a batch, by type.
pub fn of_type<'a>(got: &'a [Got], kind: &str) -> Vec<&'a Value> {
    got.iter().map(|g| &g.json).filter(|j| j["type"] == kind).collect()
}

/// The `error` frames of a batch as (code, ref).
pub fn errors(got: &[Got]) -> Vec<(String, Value)> {
    of_type(got, "error").into_iter().map(|e| (e["code"].as_str().unwrap().to_owned(), e["ref"].clone())).collect()
}

pub fn cfg() -> PresenceConfig {
    PresenceConfig::default()
}
