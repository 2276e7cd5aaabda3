//! The shutdown tree: one root token, one child per subsystem, stopped in order.
//!
//! ```text
//! root ──┬── drain    the first SIGTERM/SIGINT: the gateway stops admitting and drains
//!        ├── domain   domain tasks, stopped once every connection has closed
//!        └── store    store tasks, stopped last (the write-behind flushes one last time);
//!                     then the database pool closes
//! ```
//!
//! [`Phases`] is where a new domain task (presence, the matchmaker) is spawned so that it
//! stops in the right place.
//!
//! Cancelling the root (a second signal, or a caller giving up) cancels every child at
//! once and cuts every remaining wait short.

use std::future::Future;
use std::time::Duration;

use rendezvous_store::Store;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::ShutdownConfig;

/// The process's shutdown: [`Shutdown::begin`] starts the ordered, graceful one,
/// [`Shutdown::force`] ends every wait at once.
#[derive(Debug, Clone)]
pub struct Shutdown {
    root: CancellationToken,
    drain: CancellationToken,
}

impl Default for Shutdown {
    fn default() -> Self {
        let root = CancellationToken::new();
        Self { drain: root.child_token(), root }
    }
}

impl Shutdown {
    /// A fresh tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the graceful shutdown (the first signal).
    pub fn begin(&self) {
        self.drain.cancel();
    }

    /// Ends every remaining wait now (the second signal).
    pub fn force(&self) {
        self.root.cancel();
    }

    /// The token [`Shutdown::begin`] cancels: what a gateway drains on.
    pub fn drain_token(&self) -> CancellationToken {
        self.drain.clone()
    }

    /// A subsystem's share of the shutdown.
    pub(crate) fn phase(&self, name: &'static str) -> Phase {
        Phase { name, stop: self.root.child_token(), tasks: TaskTracker::new() }
    }

    /// Runs `work` unless the shutdown is forced first; `None` if it was cut short.
    pub(crate) async fn unless_forced<F: Future>(&self, work: F) -> Option<F::Output> {
        tokio::select! {
            out = work => Some(out),
            () = self.root.cancelled() => None,
        }
    }

    /// Runs `work` for at most `limit` (and not past a forced shutdown); logs when it is cut short.
    pub(crate) async fn bounded<F: Future>(&self, what: &str, limit: Duration, work: F) -> Option<F::Output> {
        match self.unless_forced(tokio::time::timeout(limit, work)).await {
            Some(Ok(out)) => Some(out),
            Some(Err(_)) => {
                warn!(limit_ms = limit.as_millis() as u64, "{what} did not finish in time; moving on");
                None
            }
            None => {
                warn!("{what} cut short by a forced shutdown");
                None
            }
        }
    }

    /// Cancels the root: nothing started under this tree outlives the server.
    pub(crate) fn finish(&self) {
        self.root.cancel();
    }
}

/// One subsystem: a child of the root token and a tracker for its tasks.
pub(crate) struct Phase {
    name: &'static str,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Phase {
    /// The token this subsystem's tasks stop on.
    pub(crate) fn token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// The tracker this subsystem's tasks run on.
    pub(crate) fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// Cancels the subsystem and waits for its tasks, at most `limit`.
    pub(crate) async fn stop(&self, shutdown: &Shutdown, limit: Duration) {
        self.stop.cancel();
        self.tasks.close();
        let what = format!("stopping {}", self.name);
        if shutdown.bounded(&what, limit, self.tasks.wait()).await.is_some() {
            info!(phase = self.name, "stopped");
        }
    }
}

/// The subsystems that stop after the gateway's drain, in this order.
pub(crate) struct Phases {
    /// Domain tasks: whatever acts on connections or writes through the store. Today the
    /// revocation watcher and the memory guard; presence and the matchmaker join here
    /// (spawn on `domain.tasks()`, stop on `domain.token()`). They stop after the drain,
    /// when every connection's `on_close` has run, and before the store, so that what
    /// they write on their way out still reaches the final flush.
    pub(crate) domain: Phase,
    /// The store's tasks (write-behind, cleanup, invalidations). The write-behind task
    /// flushes one last time as it stops; then the pool closes.
    pub(crate) store: Phase,
}

impl Phases {
    pub(crate) fn new(shutdown: &Shutdown) -> Self {
        Self { domain: shutdown.phase("domain tasks"), store: shutdown.phase("store tasks and the final flush") }
    }

    /// Stops the domain, then the store (final flush), then closes the pool; each step bounded by `cfg`.
    pub(crate) async fn stop(&self, shutdown: &Shutdown, cfg: &ShutdownConfig, store: &Store) {
        self.domain.stop(shutdown, Duration::from_millis(cfg.tasks_ms)).await;
        self.store.stop(shutdown, Duration::from_millis(cfg.flush_ms)).await;
        shutdown.bounded("closing the database pool", Duration::from_millis(cfg.pool_close_ms), store.close()).await;
        let unwritten = store.stats().activity.pending;
        if unwritten > 0 {
            warn!(users = unwritten, "last_active updates were not written before exit");
        }
    }
}
