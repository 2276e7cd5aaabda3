//! The server's cache counters from `/health` (`cache.users`, `cache.sessions`,
//! `cache.queries`) and their change over a phase.

use serde::{Deserialize, Serialize};

use crate::http::{HttpUrl, fetch_json};

/// Counters of one cache at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Counters {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    /// Query cache only: database loads (misses minus coalesced waiters).
    pub loads: u64,
    pub size: u64,
    pub capacity: u64,
}

/// All three caches at one moment.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Snapshot {
    pub users: Counters,
    pub sessions: Counters,
    pub queries: Counters,
}

/// What changed between two snapshots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    pub hits: u64,
    pub misses: u64,
    /// `hits / (hits + misses)` over the phase; 0 when the cache was not asked.
    pub hit_rate: f64,
    pub evictions: u64,
    pub loads: u64,
    /// Entries and capacity at the end of the phase.
    pub size: u64,
    pub capacity: u64,
}

/// The change of every cache over a phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Deltas {
    pub users: Delta,
    pub sessions: Delta,
    pub queries: Delta,
}

impl Snapshot {
    /// Reads `/health`.
    pub async fn take(health_url: &HttpUrl) -> Result<Self, String> {
        let v = fetch_json(health_url).await?;
        if v.pointer("/cache/users/hits").is_none() {
            return Err(format!("{health_url}: no cache figures (is the store configured?)"));
        }
        Ok(Self::from_health(&v))
    }

    pub fn from_health(v: &serde_json::Value) -> Self {
        let of = |cache: &str| {
            let get = |field: &str| v.pointer(&format!("/cache/{cache}/{field}")).and_then(|x| x.as_u64()).unwrap_or(0);
            Counters {
                hits: get("hits"),
                misses: get("misses"),
                evictions: get("evictions"),
                loads: get("loads"),
                size: get("size"),
                capacity: get("capacity"),
            }
        };
        Self { users: of("users"), sessions: of("sessions"), queries: of("queries") }
    }

    /// `later - self`, cache by cache.
    pub fn delta_to(&self, later: &Snapshot) -> Deltas {
        Deltas {
            users: delta(&self.users, &later.users),
            sessions: delta(&self.sessions, &later.sessions),
            queries: delta(&self.queries, &later.queries),
        }
    }
}

fn delta(a: &Counters, b: &Counters) -> Delta {
    let hits = b.hits.saturating_sub(a.hits);
    let misses = b.misses.saturating_sub(a.misses);
    Delta {
        hits,
        misses,
        hit_rate: if hits + misses == 0 { 0.0 } else { hits as f64 / (hits + misses) as f64 },
        evictions: b.evictions.saturating_sub(a.evictions),
        loads: b.loads.saturating_sub(a.loads),
        size: b.size,
        capacity: b.capacity,
    }
}

impl Delta {
    /// `hits 10 / misses 30 (25.0 %)`.
    pub fn summary(&self) -> String {
        format!(
            "hits {} / misses {} ({:.1} %), evictions {}, size {}/{}",
            self.hits,
            self.misses,
            self.hit_rate * 100.0,
            self.evictions,
            self.size,
            self.capacity
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_from_health() {
        let before = serde_json::json!({"cache": {
            "users": {"hits": 10, "misses": 5, "size": 3, "capacity": 800},
            "sessions": {"hits": 0, "misses": 0},
            "queries": {"hits": 1, "misses": 2, "loads": 2}}});
        let after = serde_json::json!({"cache": {
            "users": {"hits": 40, "misses": 15, "evictions": 4, "size": 9, "capacity": 800},
            "sessions": {"hits": 0, "misses": 0},
            "queries": {"hits": 1, "misses": 12, "loads": 9}}});
        let d = Snapshot::from_health(&before).delta_to(&Snapshot::from_health(&after));
        assert_eq!((d.users.hits, d.users.misses, d.users.evictions, d.users.size), (30, 10, 4, 9));
        assert!((d.users.hit_rate - 0.75).abs() < 1e-9);
        assert_eq!(d.sessions.hit_rate, 0.0);
        assert_eq!((d.queries.misses, d.queries.loads), (10, 7));
    }
}
