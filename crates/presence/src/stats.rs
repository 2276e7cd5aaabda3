//! Counters for `/health` and `/metrics`, written by the presence task, read by anyone.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

use crate::topic::TickReport;

/// A snapshot of the presence service's counters. Totals count since start.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PresenceStats {
    /// Topics tracked (with local subscribers, or known from other instances).
    pub topics: u64,
    /// Subscriptions of local connections.
    pub subscribers: u64,
    /// Users connected here (or inside their offline grace).
    pub local_users: u64,
    /// Other instances currently heard on the bus.
    pub peers: u64,
    /// Entries (joins + updates + leaves) published per second, over the last few ticks.
    pub entries_changed_per_sec: f64,
    /// Entries published to subscribers.
    pub entries_changed_total: u64,
    /// Changes that never reached a subscriber because a later change in the same tick
    /// superseded them (a burst of states, a join and leave).
    pub changes_coalesced_total: u64,
    /// Messages serialized for subscribers (one per topic per tick, plus filtered copies).
    pub batches_total: u64,
    /// Messages queued to connections (a shared batch counts once per recipient).
    pub messages_sent_total: u64,
    /// Bytes queued to connections before compression (the gateway counts compressed bytes).
    pub bytes_sent_total: u64,
    /// Messages sent as a copy filtered for blocks.
    pub filtered_copies_total: u64,
    /// Sends refused because the connection was closing or a slow consumer.
    pub send_failures_total: u64,
    /// Requests refused with `busy` because the command queue was full.
    pub busy_total: u64,
    /// Times this instance asked the others for their full state.
    pub resyncs_total: u64,
    /// Bus publications dropped (queue full or transport error); peers resynchronize.
    pub bus_dropped_total: u64,
    /// 99th percentile of the last 256 tick durations, in microseconds.
    pub tick_p99_us: u64,
}

#[derive(Debug, Default)]
pub(crate) struct StatsCell {
    topics: AtomicU64,
    subscribers: AtomicU64,
    local_users: AtomicU64,
    peers: AtomicU64,
    per_sec_bits: AtomicU64,
    entries: AtomicU64,
    coalesced: AtomicU64,
    batches: AtomicU64,
    messages: AtomicU64,
    bytes: AtomicU64,
    filtered: AtomicU64,
    send_failures: AtomicU64,
    busy: AtomicU64,
    resyncs: AtomicU64,
    bus_dropped: AtomicU64,
    tick_p99_us: AtomicU64,
}

impl StatsCell {
    pub(crate) fn after_tick(
        &self,
        r: &TickReport,
        p99_us: u64,
        per_sec: f64,
        topics: u64,
        subscribers: u64,
        users: u64,
    ) {
        self.entries.fetch_add(r.entries, Relaxed);
        self.coalesced.fetch_add(r.coalesced, Relaxed);
        self.batches.fetch_add(r.batches, Relaxed);
        self.messages.fetch_add(r.messages, Relaxed);
        self.bytes.fetch_add(r.bytes, Relaxed);
        self.filtered.fetch_add(r.filtered, Relaxed);
        self.send_failures.fetch_add(r.send_failures, Relaxed);
        self.tick_p99_us.store(p99_us, Relaxed);
        self.per_sec_bits.store(per_sec.to_bits(), Relaxed);
        self.topics.store(topics, Relaxed);
        self.subscribers.store(subscribers, Relaxed);
        self.local_users.store(users, Relaxed);
    }

    pub(crate) fn peers(&self, n: u64) {
        self.peers.store(n, Relaxed);
    }

    pub(crate) fn busy(&self) {
        self.busy.fetch_add(1, Relaxed);
    }

    pub(crate) fn resync(&self) {
        self.resyncs.fetch_add(1, Relaxed);
    }

    pub(crate) fn bus_dropped(&self) {
        self.bus_dropped.fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> PresenceStats {
        PresenceStats {
            topics: self.topics.load(Relaxed),
            subscribers: self.subscribers.load(Relaxed),
            local_users: self.local_users.load(Relaxed),
            peers: self.peers.load(Relaxed),
            entries_changed_per_sec: f64::from_bits(self.per_sec_bits.load(Relaxed)),
            entries_changed_total: self.entries.load(Relaxed),
            changes_coalesced_total: self.coalesced.load(Relaxed),
            batches_total: self.batches.load(Relaxed),
            messages_sent_total: self.messages.load(Relaxed),
            bytes_sent_total: self.bytes.load(Relaxed),
            filtered_copies_total: self.filtered.load(Relaxed),
            send_failures_total: self.send_failures.load(Relaxed),
            busy_total: self.busy.load(Relaxed),
            resyncs_total: self.resyncs.load(Relaxed),
            bus_dropped_total: self.bus_dropped.load(Relaxed),
            tick_p99_us: self.tick_p99_us.load(Relaxed),
        }
    }
}
