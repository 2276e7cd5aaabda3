//! What a run measured: per-process tallies, their merge, and the printed report.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::health::ServerSample;

/// Everything one process counted; children send it to the parent as JSON.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Tally {
    pub target: usize,
    pub connected: usize,
    /// Failed connection attempts by reason (`http 503`, `io ConnectionRefused`, `timeout`, ...).
    pub failed: BTreeMap<String, usize>,
    pub deflate_negotiated: usize,
    /// Connections that were up but ended before the release, by reason.
    pub dropped: BTreeMap<String, usize>,
    /// Connections that completed the closing handshake after the release.
    pub closed_cleanly: usize,
    /// Connections whose close did not complete (timeout or error).
    pub close_failed: usize,
    /// Time from starting the TCP connect to receiving `welcome`, per connection.
    pub latencies_us: Vec<u64>,
    /// Seconds from start until every attempt had finished.
    pub connect_phase_secs: f64,
}

impl Tally {
    pub fn merge(&mut self, other: Tally) {
        self.target += other.target;
        self.connected += other.connected;
        add_all(&mut self.failed, other.failed);
        self.deflate_negotiated += other.deflate_negotiated;
        add_all(&mut self.dropped, other.dropped);
        self.closed_cleanly += other.closed_cleanly;
        self.close_failed += other.close_failed;
        self.latencies_us.extend(other.latencies_us);
        self.connect_phase_secs = self.connect_phase_secs.max(other.connect_phase_secs);
    }

    pub fn fail(&mut self, reason: String) {
        *self.failed.entry(reason).or_default() += 1;
    }

    pub fn drop_reason(&mut self, reason: String) {
        *self.dropped.entry(reason).or_default() += 1;
    }
}

fn add_all(into: &mut BTreeMap<String, usize>, from: BTreeMap<String, usize>) {
    for (k, v) in from {
        *into.entry(k).or_default() += v;
    }
}

/// Connect latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(samples: &mut [u64]) -> Self {
        samples.sort_unstable();
        let at = |q: f64| -> f64 {
            if samples.is_empty() {
                return 0.0;
            }
            // Nearest rank.
            let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            samples[rank - 1] as f64 / 1000.0
        };
        Self { p50_ms: at(0.50), p95_ms: at(0.95), p99_ms: at(0.99), max_ms: at(1.0) }
    }
}

/// The final report of an `idle` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub target_addr: String,
    pub processes: usize,
    pub sources: usize,
    pub target: usize,
    pub connected: usize,
    pub failed_total: usize,
    pub failed: BTreeMap<String, usize>,
    pub deflate_requested: bool,
    pub deflate_negotiated: usize,
    pub connect_latency: Latency,
    pub connect_phase_secs: f64,
    pub dropped: BTreeMap<String, usize>,
    pub closed_cleanly: usize,
    pub close_failed: usize,
    /// The server as sampled once every connection was up (and `--settle-secs` passed).
    pub server: Option<ServerSample>,
    pub elapsed_secs: f64,
}

impl Report {
    pub fn new(mut tally: Tally, meta: Meta, server: Option<ServerSample>, elapsed: f64) -> Self {
        Self {
            scenario: "idle".into(),
            target_addr: meta.target_addr,
            processes: meta.processes,
            sources: meta.sources,
            target: tally.target,
            connected: tally.connected,
            failed_total: tally.failed.values().sum(),
            failed: tally.failed,
            deflate_requested: meta.deflate,
            deflate_negotiated: tally.deflate_negotiated,
            connect_latency: Latency::of(&mut tally.latencies_us),
            connect_phase_secs: tally.connect_phase_secs,
            dropped: tally.dropped,
            closed_cleanly: tally.closed_cleanly,
            close_failed: tally.close_failed,
            server,
            elapsed_secs: elapsed,
        }
    }

    pub fn table(&self) -> String {
        let mut t = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(t, "  {k:<30} {v}");
        };
        row("scenario", self.scenario.clone());
        row("target", self.target_addr.clone());
        row("processes / sources", format!("{} / {}", self.processes, self.sources));
        row("connections requested", self.target.to_string());
        row("connected", self.connected.to_string());
        row("failed", self.failed_total.to_string());
        for (reason, n) in &self.failed {
            row(&format!("  {reason}"), n.to_string());
        }
        row(
            "deflate negotiated",
            if self.deflate_requested {
                format!("{} of {}", self.deflate_negotiated, self.connected)
            } else {
                "not requested".into()
            },
        );
        let l = self.connect_latency;
        row("connect latency p50/p95/p99", format!("{:.1} / {:.1} / {:.1} ms", l.p50_ms, l.p95_ms, l.p99_ms));
        row("connect latency max", format!("{:.1} ms", l.max_ms));
        row("connect phase", format!("{:.2} s", self.connect_phase_secs));
        row("dropped while held", self.dropped.values().sum::<usize>().to_string());
        for (reason, n) in &self.dropped {
            row(&format!("  {reason}"), n.to_string());
        }
        row("closed cleanly", self.closed_cleanly.to_string());
        row("close failed", self.close_failed.to_string());
        if let Some(s) = &self.server {
            for line in s.lines() {
                row(&line.0, line.1);
            }
        }
        row("elapsed", format!("{:.2} s", self.elapsed_secs));
        t
    }
}

/// Run facts the tallies do not carry.
#[derive(Debug, Clone)]
pub struct Meta {
    pub target_addr: String,
    pub processes: usize,
    pub sources: usize,
    pub deflate: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut v: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        let l = Latency::of(&mut v);
        assert_eq!((l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms), (50.0, 95.0, 99.0, 100.0));
        assert_eq!(Latency::of(&mut []).max_ms, 0.0);
    }

    #[test]
    fn merge_adds_up() {
        let mut a =
            Tally { target: 2, connected: 1, latencies_us: vec![5], connect_phase_secs: 1.0, ..Tally::default() };
        a.fail("timeout".into());
        let mut b =
            Tally { target: 3, connected: 3, latencies_us: vec![1, 2, 3], connect_phase_secs: 2.0, ..Tally::default() };
        b.fail("timeout".into());
        a.merge(b);
        assert_eq!((a.target, a.connected, a.latencies_us.len()), (5, 4, 4));
        assert_eq!(a.failed["timeout"], 2);
        assert_eq!(a.connect_phase_secs, 2.0);
    }
}
