//! Matchmaking for Rendezvous: a queue with preferences, proposals both sides accept,
//! direct invites, the WebRTC signaling relay and the call lifecycle (reconnect grace,
//! history, cooldowns, blocks, reports), designed for several instances from the start.
//! The full flow is in `docs/protocol.md` (Matchmaking); the choices in `docs/decisions.md`.
//!
//! # Layout
//! - [`Matchmaker::spawn`] starts one instance's task and returns a [`MatchmakerHandle`],
//!   whose synchronous methods the connection handler calls (full queue: [`MatchError::Busy`]).
//! - [`MatchmakerConfig`]: the `[matchmaking]` section.
//! - [`Directory`] (the store) and [`ActivitySink`] (presence): what the server plugs in.
//! - [`MatchQueue`] and [`Locator`]: the state shared by all instances, with in-process
//!   implementations ([`InProcessQueue`], [`InProcessLocator`]) and Redis ones
//!   ([`RedisQueue`], [`RedisLocator`]) built from one [`RedisState`] connection (`redis`).
//! - [`InstanceRegistry`] (`cluster`): heartbeats in Redis; the one survivor that claims a
//!   dead instance cleans up after it, every survivor hears [`ClusterEvent`]s.
//! - [`MatchEvent`]: what clients receive; [`MatchmakerStats`]: figures for `/health`.
//! - Internals: `task` (the loop), `home` (this instance's connections), `matching`
//!   (scans and proposals), `invites`, `calls` (relay, grace, end, sweep, drain), `wire`
//!   (inter-instance messages on `matchmaker.inbox.<instance>`), `resync` (dead instances,
//!   re-asserting state after Redis lost it), `stats`, `ice`, `clock`.

mod calls;
mod clock;
mod cluster;
mod config;
mod directory;
mod events;
mod handle;
mod home;
mod ice;
mod invites;
mod locator;
mod matching;
mod queue;
mod redis;
mod resync;
mod stats;
mod task;
mod wire;

pub use clock::now_ms;
pub use cluster::{ClusterEvent, DeadInstance, InstanceRegistry};
pub use config::{ClusterConfig, ConfigError, IceConfig, MatchmakerConfig};
pub use directory::{
    Activity, ActivitySink, BoxFuture, CallEnd, CallOrigin, CooldownList, Directory, DirectoryError, EndReason,
    Profile, PublicProfile, Report, StartedCall,
};
pub use events::{CancelReason, InviteEnd, MatchEvent, Role};
pub use handle::{MatchError, MatchmakerHandle};
pub use ice::{IceServer, turn_credentials};
pub use locator::{InProcessLocator, Locator, RedisLocator};
pub use queue::{
    CallRecord, Engagement, EngagementKind, InProcessQueue, JoinOutcome, MatchQueue, PairBan, QueueEntry, QueueError,
    RedisQueue, UserStatus,
};
pub use redis::{RedisState, RedisStateError};
pub use stats::{InviteStats, MatchmakerStats, ProposalStats};
pub use task::{Matchmaker, MatchmakerDeps, SpawnError};
