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
//!   implementations ([`InProcessQueue`], [`InProcessLocator`]); Redis ones plug in later.
//! - [`MatchEvent`]: what clients receive; [`MatchmakerStats`]: figures for `/health`.
//! - Internals: `task` (the loop), `home` (this instance's connections), `matching`
//!   (scans and proposals), `invites`, `calls` (relay, grace, end, sweep, drain), `wire`
//!   (inter-instance messages on `matchmaker.inbox.<instance>`), `stats`, `ice`, `clock`.

mod calls;
mod clock;
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
mod stats;
mod task;
mod wire;

pub use clock::now_ms;
pub use config::{ConfigError, IceConfig, MatchmakerConfig};
pub use directory::{
    Activity, ActivitySink, BoxFuture, CallEnd, CallOrigin, Directory, DirectoryError, EndReason, Profile,
    PublicProfile, Report, StartedCall,
};
pub use events::{CancelReason, InviteEnd, MatchEvent, Role};
pub use handle::{MatchError, MatchmakerHandle};
pub use ice::{IceServer, turn_credentials};
pub use locator::{InProcessLocator, Locator};
pub use queue::{
    Engagement, EngagementKind, InProcessQueue, JoinOutcome, MatchQueue, PairBan, QueueEntry, QueueError, UserStatus,
};
pub use stats::{InviteStats, MatchmakerStats, ProposalStats};
pub use task::{Matchmaker, MatchmakerDeps, SpawnError};
