//! Which connections are open, per user, and the global cap.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use crate::config::PerUserPolicy;
use crate::conn::Connection;

/// Outcome of registering a connection under the per-user cap.
pub(crate) enum Admission {
    Admitted,
    /// Admitted; this older connection must be closed (close-oldest policy).
    AdmittedEvicting(Connection),
    /// The user is at the cap and the policy rejects new connections.
    Refused,
}

/// Every open WebSocket connection, indexed by id and by user.
#[derive(Default)]
pub(crate) struct Registry {
    by_id: DashMap<u64, Connection>,
    by_user: DashMap<Arc<str>, Vec<Connection>>,
    /// Slots held: registered connections plus upgrades in progress.
    reserved: AtomicUsize,
}

impl Registry {
    /// Takes one slot under the global cap; `false` when the cap is reached.
    pub(crate) fn reserve(&self, max: usize) -> bool {
        self.reserved.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_ok()
    }

    pub(crate) fn release(&self) {
        self.reserved.fetch_sub(1, Ordering::AcqRel);
    }

    /// Registers a connection whose slot is already reserved.
    pub(crate) fn register(&self, conn: &Connection, per_user: usize, policy: PerUserPolicy) -> Admission {
        let admission = match self.by_user.entry(conn.0.user_id.clone()) {
            Entry::Vacant(v) => {
                v.insert(vec![conn.clone()]);
                Admission::Admitted
            }
            Entry::Occupied(mut o) => {
                let list = o.get_mut();
                if list.len() < per_user {
                    list.push(conn.clone());
                    Admission::Admitted
                } else {
                    match policy {
                        PerUserPolicy::RejectNew => return Admission::Refused,
                        PerUserPolicy::CloseOldest => {
                            let oldest = list.remove(0);
                            list.push(conn.clone());
                            Admission::AdmittedEvicting(oldest)
                        }
                    }
                }
            }
        };
        self.by_id.insert(conn.id(), conn.clone());
        admission
    }

    /// Removes a registered connection and frees its slot.
    pub(crate) fn unregister(&self, conn: &Connection) {
        if self.by_id.remove(&conn.id()).is_none() {
            return;
        }
        if let Entry::Occupied(mut o) = self.by_user.entry(conn.0.user_id.clone()) {
            o.get_mut().retain(|c| c.id() != conn.id());
            if o.get().is_empty() {
                o.remove();
            }
        }
        self.release();
    }

    /// Open connections.
    pub(crate) fn connections(&self) -> usize {
        self.by_id.len()
    }

    /// Distinct users with at least one open connection.
    pub(crate) fn users(&self) -> usize {
        self.by_user.len()
    }

    /// Slots held, including upgrades still in progress.
    pub(crate) fn reserved(&self) -> usize {
        self.reserved.load(Ordering::Acquire)
    }

    /// A snapshot of every connection (for heartbeats and drain; not for hot paths).
    pub(crate) fn snapshot(&self) -> Vec<Connection> {
        self.by_id.iter().map(|e| e.value().clone()).collect()
    }

    /// Calls `f` on every open connection without building a list.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&Connection)) {
        for e in self.by_id.iter() {
            f(e.value());
        }
    }

    /// The open connections of one user.
    pub(crate) fn of_user(&self, user_id: &str) -> Vec<Connection> {
        self.by_user.get(user_id).map(|l| l.clone()).unwrap_or_default()
    }
}
