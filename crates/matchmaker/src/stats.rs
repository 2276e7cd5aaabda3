//! Counters the matchmaker task updates and `/health` / `/metrics` read without asking it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use serde::Serialize;

/// Wait times kept for the percentiles: the most recent matches only, so memory is fixed.
const WAIT_SAMPLES: usize = 1024;
/// Relay times kept for the percentiles: the most recent signals only.
const RELAY_SAMPLES: usize = 4096;

#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) queue_length: AtomicU64,
    pub(crate) proposals: AtomicU64,
    pub(crate) accepted: AtomicU64,
    pub(crate) declined: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) pending_proposals: AtomicI64,
    pub(crate) invites_sent: AtomicU64,
    pub(crate) invites_accepted: AtomicU64,
    pub(crate) invites_declined: AtomicU64,
    pub(crate) invites_expired: AtomicU64,
    pub(crate) invites_cancelled: AtomicU64,
    pub(crate) pending_invites: AtomicI64,
    pub(crate) active_calls: AtomicI64,
    pub(crate) calls_started: AtomicU64,
    pub(crate) calls_ended: AtomicU64,
    pub(crate) signals_relayed: AtomicU64,
    pub(crate) directory_errors: AtomicU64,
    pub(crate) bus_errors: AtomicU64,
    pub(crate) rejected_busy: AtomicU64,
    waits: Mutex<VecDeque<u64>>,
    relays: Mutex<VecDeque<u64>>,
    /// Matches per second over the last minute: (second, count) ring.
    per_second: Mutex<Vec<(i64, u64)>>,
}

pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn add(c: &AtomicI64, d: i64) {
    c.fetch_add(d, Ordering::Relaxed);
}

impl Stats {
    /// A match made at `now_ms` after the two users waited `waits_ms`.
    pub(crate) fn matched(&self, now_ms: i64, waits_ms: [u64; 2]) {
        inc(&self.proposals);
        {
            let mut w = self.waits.lock().unwrap_or_else(|p| p.into_inner());
            for x in waits_ms {
                if w.len() == WAIT_SAMPLES {
                    w.pop_front();
                }
                w.push_back(x);
            }
        }
        let sec = now_ms.div_euclid(1000);
        let mut ring = self.per_second.lock().unwrap_or_else(|p| p.into_inner());
        if ring.is_empty() {
            ring.resize(60, (i64::MIN, 0));
        }
        let slot = &mut ring[sec.rem_euclid(60) as usize];
        if slot.0 != sec {
            *slot = (sec, 0);
        }
        slot.1 += 1;
    }

    /// A signal relayed `took` after the handle took it.
    pub(crate) fn relayed(&self, took: std::time::Duration) {
        let mut r = self.relays.lock().unwrap_or_else(|p| p.into_inner());
        if r.len() == RELAY_SAMPLES {
            r.pop_front();
        }
        r.push_back(took.as_micros() as u64);
    }

    pub(crate) fn snapshot(&self, instance: &str, now_ms: i64) -> MatchmakerStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let gauge = |c: &AtomicI64| c.load(Ordering::Relaxed).max(0) as u64;
        let mut waits: Vec<u64> = self.waits.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect();
        waits.sort_unstable();
        let pct = |p: f64| percentile(&waits, p);
        let mut relays: Vec<u64> = self.relays.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect();
        relays.sort_unstable();
        let relay_pct = |p: f64| percentile(&relays, p);
        let sec = now_ms.div_euclid(1000);
        let ring = self.per_second.lock().unwrap_or_else(|p| p.into_inner());
        let matches_last_minute = ring.iter().filter(|(s, _)| *s > sec - 60 && *s <= sec).map(|(_, n)| n).sum();
        MatchmakerStats {
            instance: instance.to_owned(),
            queue_backend: "in_process",
            queue_reachable: true,
            queue_length: get(&self.queue_length),
            wait_ms_p50: pct(0.50),
            wait_ms_p99: pct(0.99),
            matches_per_minute: matches_last_minute,
            proposals: ProposalStats {
                made: get(&self.proposals),
                accepted: get(&self.accepted),
                declined: get(&self.declined),
                expired: get(&self.expired),
                pending: gauge(&self.pending_proposals),
            },
            invites: InviteStats {
                sent: get(&self.invites_sent),
                accepted: get(&self.invites_accepted),
                declined: get(&self.invites_declined),
                expired: get(&self.invites_expired),
                cancelled: get(&self.invites_cancelled),
                pending: gauge(&self.pending_invites),
            },
            active_calls: gauge(&self.active_calls),
            calls_started: get(&self.calls_started),
            calls_ended: get(&self.calls_ended),
            signals_relayed: get(&self.signals_relayed),
            relay_us_p50: relay_pct(0.50),
            relay_us_p99: relay_pct(0.99),
            directory_errors: get(&self.directory_errors),
            bus_errors: get(&self.bus_errors),
            rejected_busy: get(&self.rejected_busy),
        }
    }
}

/// The `p` quantile of sorted samples.
fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[idx])
}

/// Matchmaking figures for `/health` and `/metrics`. Proposal, invite and call counts
/// are those coordinated by this instance; the queue is the shared one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MatchmakerStats {
    /// This instance.
    pub instance: String,
    /// Where the shared queue lives: `in_process` or `redis`.
    pub queue_backend: &'static str,
    /// Whether the shared queue can be reached right now.
    pub queue_reachable: bool,
    /// Users queued (all instances), as of the last scan.
    pub queue_length: u64,
    /// Median wait from join to proposal over the last 1024 matched users.
    pub wait_ms_p50: Option<u64>,
    /// 99th percentile of the same.
    pub wait_ms_p99: Option<u64>,
    /// Proposals made in the last 60 s.
    pub matches_per_minute: u64,
    /// Proposal outcomes.
    pub proposals: ProposalStats,
    /// Invite outcomes.
    pub invites: InviteStats,
    /// Calls in progress.
    pub active_calls: u64,
    /// Calls started since start.
    pub calls_started: u64,
    /// Calls ended since start.
    pub calls_ended: u64,
    /// `call.signal` messages relayed.
    pub signals_relayed: u64,
    /// Median time in the matchmaker per relayed signal whose call this instance
    /// coordinates: from the handle call (the connection's read loop) to the relayed frame
    /// handed to the peer's instance; over the last 4096 such signals. Socket I/O excluded.
    pub relay_us_p50: Option<u64>,
    /// 99th percentile of the same.
    pub relay_us_p99: Option<u64>,
    /// Directory calls that failed.
    pub directory_errors: u64,
    /// Inbox messages that could not be published or decoded.
    pub bus_errors: u64,
    /// Handle calls refused because the command queue was full.
    pub rejected_busy: u64,
}

/// Proposal outcomes since start.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProposalStats {
    /// Proposals made.
    pub made: u64,
    /// Accepted by both.
    pub accepted: u64,
    /// Declined (or abandoned by a disconnect).
    pub declined: u64,
    /// Missed the deadline.
    pub expired: u64,
    /// Waiting for answers now.
    pub pending: u64,
}

/// Invite outcomes since start.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InviteStats {
    /// Invites delivered.
    pub sent: u64,
    /// Accepted.
    pub accepted: u64,
    /// Declined or refused.
    pub declined: u64,
    /// Missed the deadline.
    pub expired: u64,
    /// Withdrawn by the inviter.
    pub cancelled: u64,
    /// Waiting for answers now.
    pub pending: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_rate_window() {
        let s = Stats::default();
        assert_eq!(s.snapshot("i", 0).wait_ms_p50, None);
        for i in 1..=50u64 {
            s.matched(1_000, [i, 100 + i]);
        }
        let snap = s.snapshot("i", 1_500);
        assert_eq!(snap.wait_ms_p50, Some(50));
        assert_eq!(snap.wait_ms_p99, Some(149));
        assert_eq!(snap.matches_per_minute, 50);
        assert_eq!(snap.proposals.made, 50);
        s.matched(30_000, [1, 1]);
        assert_eq!(s.snapshot("i", 59_999).matches_per_minute, 51);
        assert_eq!(s.snapshot("i", 61_000).matches_per_minute, 1, "the first second fell out of the window");
        assert_eq!(s.snapshot("i", 200_000).matches_per_minute, 0);
    }
}
