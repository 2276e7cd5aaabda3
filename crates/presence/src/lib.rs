//! Presence: who is online in which topic (a lobby per region or interest), across every
//! instance. Subscribers get a snapshot, then at most one diff per topic per tick
//! (`presence.tick_ms`), serialized once and shared by every subscriber; blocked pairs never
//! see each other; large topics send a count plus a window. Each instance owns its own
//! connections' presence and exchanges per-tick deltas with the others over the bus,
//! in the manner of Phoenix.Tracker. The protocol is in `docs/protocol.md` (Presence).
//!
//! # Layout
//! - [`Presence::spawn`] starts the task and returns a [`PresenceHandle`], which the server
//!   calls from its connection handler (never blocking; states are the protocol's
//!   `SettableState`) and matchmaking calls with [`Activity`].
//! - [`Directory`]: profiles and block lists, implemented by the server over the store.
//! - [`PresenceConfig`]: the `[presence]` section. [`PresenceStats`]: counters for `/health`.
//! - [`PresenceMessage`]: what clients receive. [`codes`]: the error codes presence adds.
//! - Internals: `state` (everything the task owns, and the tick), `local` (this instance's
//!   connections, users and grace periods), `topic` (merge, window, diff, fan-out),
//!   `peers` (other instances: deltas, full state, timeouts), `link` (the bus), `service`
//!   (the task loop).

mod config;
mod directory;
mod entry;
mod handle;
mod link;
mod local;
mod peers;
mod service;
mod small;
mod state;
mod stats;
mod topic;
mod wire;

pub use config::{ConfigError, PresenceConfig};
pub use directory::{Directory, Profile};
pub use entry::{Activity, PresenceState, ShownEntry};
pub use handle::{PresenceError, PresenceHandle, validate_status, validate_topic};
pub use rendezvous_gateway::Outbox;
pub use service::Presence;
pub use stats::PresenceStats;
pub use wire::{Diff, PresenceMessage, Snapshot, codes};
