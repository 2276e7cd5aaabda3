//! The database behind the store: Postgres or an embedded SQLite file, one set of
//! runtime queries (no compile-time database needed), migrations embedded per backend.
//!
//! SQLite allows one writer at a time. Rather than let every pooled connection compete
//! for the write lock (the loser sleeps in SQLite's busy handler, in steps of up to
//! 100 ms, and can lose again), SQLite writes go through a pool of exactly one
//! connection, so writers queue in order in the pool instead; reads use their own pool.

mod queries;
mod rows;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

use crate::config::DatabaseConfig;
use crate::error::StoreError;

enum Pool {
    Pg(PgPool),
    /// `write` has exactly one connection.
    Lite {
        read: SqlitePool,
        write: SqlitePool,
    },
}

/// Pool figures for `/health`.
#[derive(Debug, Clone, Serialize)]
pub struct PoolStats {
    /// `postgres` or `sqlite`.
    pub backend: &'static str,
    /// Open connections (on SQLite, readers plus the writer).
    pub size: u32,
    /// Idle connections.
    pub idle: usize,
    /// Connections in use.
    pub in_use: usize,
    /// Configured maximum (on SQLite, `database.max_connections` readers plus the one writer).
    pub max: u32,
    /// Open connections that run writes: on SQLite the single writer (0 or 1), on
    /// Postgres every open connection.
    pub writers: u32,
    /// Most connections that may write at once: 1 on SQLite (writes queue for it), `max` on Postgres.
    pub writers_max: u32,
    /// Acquisitions so far.
    pub acquires: u64,
    /// Acquisitions that failed (timeout or connection error).
    pub acquire_failures: u64,
    /// Mean wait for a connection, microseconds.
    pub acquire_wait_avg_us: u64,
    /// Longest wait for a connection, microseconds.
    pub acquire_wait_max_us: u64,
    /// Whether the last acquisition succeeded (false while the database is unreachable).
    pub reachable: bool,
}

/// Handle to the database.
pub struct Db {
    pool: Pool,
    max: u32,
    acquires: AtomicU64,
    acquire_failures: AtomicU64,
    wait_total_us: AtomicU64,
    wait_max_us: AtomicU64,
    reachable: AtomicBool,
    /// Statements run, by name; only test builds count (a lock per statement otherwise).
    #[cfg(feature = "testing")]
    statements: std::sync::Mutex<std::collections::HashMap<&'static str, u64>>,
}

/// Runs `$body` with `$c` bound to a pooled connection of either backend: from the
/// write pool for `write` statements, from the read pool for `read` ones.
macro_rules! with_conn {
    ($db:expr, read $name:literal, |$c:ident| $body:expr) => {
        with_conn!(@run $db, $name, read, |$c| $body)
    };
    ($db:expr, write $name:literal, |$c:ident| $body:expr) => {
        with_conn!(@run $db, $name, write, |$c| $body)
    };
    (@run $db:expr, $name:literal, $side:ident, |$c:ident| $body:expr) => {{
        $db.count($name);
        match &$db.pool {
            $crate::db::Pool::Pg(p) => {
                let mut $c = $db.acquire(p).await?;
                $body
            }
            $crate::db::Pool::Lite { $side: p, .. } => {
                let mut $c = $db.acquire(p).await?;
                $body
            }
        }
    }};
}
use with_conn;

impl Db {
    /// Connects (Postgres for `postgres://` URLs, SQLite otherwise) and applies migrations.
    pub(crate) async fn connect(cfg: &DatabaseConfig) -> Result<Db, StoreError> {
        let url = cfg.effective_url();
        let (max, acquire_timeout) = (cfg.max_connections, Duration::from_millis(cfg.acquire_timeout_ms));
        let pool = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts: PgConnectOptions = url.parse()?;
            let pool =
                PgPoolOptions::new().max_connections(max).acquire_timeout(acquire_timeout).connect_with(opts).await?;
            sqlx::migrate!("./migrations/postgres").run(&pool).await?;
            Pool::Pg(pool)
        } else {
            let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(&url);
            if let Some(dir) = std::path::Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StoreError::SqliteDir { path: dir.to_owned(), source: e.into() })?;
            }
            // NORMAL is durable in WAL mode except for the last commits before a power
            // loss (never corrupt); FULL would fsync the WAL on every commit.
            let opts = SqliteConnectOptions::new()
                .filename(path)
                .busy_timeout(Duration::from_millis(cfg.sqlite_busy_timeout_ms))
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true);
            // The writer creates the file and switches it to WAL (a lasting property of
            // the file, so the readers need not ask again) before the readers open it.
            let write = SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(acquire_timeout)
                .connect_with(opts.clone().create_if_missing(true).journal_mode(SqliteJournalMode::Wal))
                .await?;
            sqlx::migrate!("./migrations/sqlite").run(&write).await?;
            let read = SqlitePoolOptions::new()
                .max_connections(max)
                .acquire_timeout(acquire_timeout)
                .connect_with(opts)
                .await?;
            Pool::Lite { read, write }
        };
        Ok(Db {
            pool,
            max,
            acquires: AtomicU64::new(0),
            acquire_failures: AtomicU64::new(0),
            wait_total_us: AtomicU64::new(0),
            wait_max_us: AtomicU64::new(0),
            reachable: AtomicBool::new(true),
            #[cfg(feature = "testing")]
            statements: Default::default(),
        })
    }

    #[cfg(feature = "testing")]
    fn count(&self, name: &'static str) {
        *self.statements.lock().unwrap_or_else(|e| e.into_inner()).entry(name).or_default() += 1;
    }

    #[cfg(not(feature = "testing"))]
    fn count(&self, _name: &'static str) {}

    async fn acquire<DB: sqlx::Database>(&self, pool: &sqlx::Pool<DB>) -> Result<PoolConnection<DB>, StoreError> {
        let started = Instant::now();
        let result = pool.acquire().await;
        let waited = started.elapsed().as_micros() as u64;
        self.acquires.fetch_add(1, Ordering::Relaxed);
        self.wait_total_us.fetch_add(waited, Ordering::Relaxed);
        self.wait_max_us.fetch_max(waited, Ordering::Relaxed);
        if result.is_err() {
            self.acquire_failures.fetch_add(1, Ordering::Relaxed);
        }
        self.reachable.store(result.is_ok(), Ordering::Relaxed);
        // Whatever stops us getting a connection (refused, reset, garbled handshake,
        // timeout) means the database is unavailable, not that the request was bad.
        result.map_err(|e| StoreError::Unavailable(e.into()))
    }

    /// Pool figures.
    pub fn pool_stats(&self) -> PoolStats {
        let (backend, size, idle, max, writers, writers_max) = match &self.pool {
            Pool::Pg(p) => ("postgres", p.size(), p.num_idle(), self.max, p.size(), self.max),
            Pool::Lite { read, write } => (
                "sqlite",
                read.size() + write.size(),
                read.num_idle() + write.num_idle(),
                self.max + 1,
                write.size(),
                1,
            ),
        };
        let acquires = self.acquires.load(Ordering::Relaxed);
        PoolStats {
            backend,
            size,
            idle,
            in_use: (size as usize).saturating_sub(idle),
            max,
            writers,
            writers_max,
            acquires,
            acquire_failures: self.acquire_failures.load(Ordering::Relaxed),
            acquire_wait_avg_us: self.wait_total_us.load(Ordering::Relaxed).checked_div(acquires).unwrap_or(0),
            acquire_wait_max_us: self.wait_max_us.load(Ordering::Relaxed),
            reachable: self.reachable.load(Ordering::Relaxed),
        }
    }
}

impl Db {
    /// Closes every pool (at shutdown); later calls fail with [`StoreError::Unavailable`].
    pub async fn close(&self) {
        match &self.pool {
            Pool::Pg(p) => p.close().await,
            Pool::Lite { read, write } => {
                read.close().await;
                write.close().await;
            }
        }
    }
}

/// Hooks for tests (feature `testing`); production builds have none of these.
#[cfg(feature = "testing")]
impl Db {
    /// How many times each statement ran (the single-flight tests count here).
    pub fn statement_count(&self, name: &str) -> u64 {
        self.statements.lock().unwrap_or_else(|e| e.into_inner()).get(name).copied().unwrap_or(0)
    }

    /// `last_active` as stored (tests check the write-behind through it).
    pub async fn stored_last_active(&self, user_id: &str) -> Result<Option<i64>, StoreError> {
        let row: Option<(i64,)> = with_conn!(self, read "stored_last_active", |c| {
            sqlx::query_as("SELECT last_active FROM users WHERE id = $1").bind(user_id).fetch_optional(&mut *c).await?
        });
        Ok(row.map(|(t,)| t))
    }
}
