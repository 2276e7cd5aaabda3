//! The Rendezvous store: users, sessions, call history, cooldowns, blocks and
//! reports in Postgres (or an embedded SQLite file), behind a user LRU, a session
//! LRU and a 60 s query cache with single-flight loading. Writes invalidate locally
//! and over the bus so other instances drop their copies. It knows no sockets.
//!
//! # Layout
//! - [`Store`]: the API the server uses; share it as `Arc<Store>`.
//! - [`DatabaseConfig`], [`StoreConfig`]: the `[database]` and `[store]` sections.
//! - `db`: one set of runtime queries over either backend (on SQLite, writes through
//!   one connection of their own, reads through a pool); migrations per backend in
//!   `migrations/postgres` and `migrations/sqlite`, embedded and applied at start.
//! - `cache`: [`CountingLru`] and [`QueryCache`], both reporting [`CacheStats`].
//! - [`Invalidation`]: what instances tell each other after a write.
//! - [`StoreError`]: every failure, with its cause as `source()`.
//! - `testing` (feature `testing`): fresh databases for test suites, and the test
//!   hooks on `Db` (statement counts, stored rows) reached through `Store::db`.

mod activity;
mod cache;
mod config;
mod db;
mod error;
mod invalidation;
mod model;
mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use activity::ActivityStats;
pub use cache::{CacheStats, CountingLru, QueryCache};
pub use config::{ConfigError, DatabaseConfig, StoreConfig};
#[cfg(feature = "testing")]
pub use db::Db;
pub use db::PoolStats;
pub use error::StoreError;
pub use invalidation::{INVALIDATION_TOPIC, Invalidation, Revocation};
pub use model::{AuthSession, Call, GENDERS, Invalid, IssuedSession, NewUser, Report, Session, User, UserPatch};
pub use store::{Store, StoreStats, now_ms};
