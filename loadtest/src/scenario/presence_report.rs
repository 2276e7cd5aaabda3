//! The pure half of the `presence` scenario: reading presence frames, the receipt-spread
//! lag, and the report.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::{self, Write};
use std::sync::{Arc, Mutex};

use serde::de::{IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::report::Latency;
use crate::usage::Spent;

/// The number of items in a JSON array, read without keeping them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counted(pub u32);

impl<'de> Deserialize<'de> for Counted {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Count;
        impl<'de> Visitor<'de> for Count {
            type Value = Counted;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Counted, A::Error> {
                let mut n = 0;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(Counted(n))
            }
        }
        d.deserialize_seq(Count)
    }
}

/// What the scenario needs from any server frame.
#[derive(Debug, Default, Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    seq: Option<u64>,
    #[serde(default)]
    entries: Counted,
    #[serde(default)]
    joins: Counted,
    #[serde(default)]
    updates: Counted,
    #[serde(default)]
    leaves: Counted,
    code: Option<&'a str>,
    tick_at: Option<i64>,
}

/// A server frame, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// `presence.snapshot` (`snapshot: true`) or `presence.diff`, with its entry count
    /// (snapshot entries, or diff joins + updates + leaves).
    /// `tick_at`: the server's time of the tick that published it (Unix ms), if sent.
    Presence { snapshot: bool, seq: u64, entries: u32, tick_at: Option<i64> },
    /// An `error` frame's code.
    Error(String),
    /// Anything else (`presence.ack`, `pong`, ...), by type.
    Other(String),
}

/// Classifies one text frame; text that is not a typed JSON object is an `Err`.
pub fn parse(text: &str) -> Result<Parsed, String> {
    let f: Frame<'_> = serde_json::from_str(text).map_err(|e| format!("bad frame: {e}"))?;
    let presence = |snapshot: bool, entries: u32| -> Result<Parsed, String> {
        let seq = f.seq.ok_or_else(|| format!("{} without seq", f.kind))?;
        Ok(Parsed::Presence { snapshot, seq, entries, tick_at: f.tick_at })
    };
    match f.kind {
        "presence.snapshot" => presence(true, f.entries.0),
        "presence.diff" => presence(false, f.joins.0 + f.updates.0 + f.leaves.0),
        "error" => Ok(Parsed::Error(f.code.unwrap_or("no code").to_owned())),
        other => Ok(Parsed::Other(other.to_owned())),
    }
}

/// Frames at least this long go through [`Frames`]; shorter ones are cheap to parse anyway.
const SHARED_MIN: usize = 512;
/// Distinct long frames [`Frames`] remembers.
const SHARED_KEEP: usize = 8;

/// [`parse`] for every connection of one process, each distinct long frame parsed once.
///
/// A tick sends the same bytes to every subscriber, so in one process thousands of
/// connections receive identical text. The first is parsed; the others are recognized by
/// comparing the whole text byte for byte with the few kept (about a microsecond for a
/// 13 KB window, against tens for a JSON parse), so the tool spends its CPU, which the
/// server's shares, on receiving rather than on re-reading what it has already read.
#[derive(Debug, Default)]
pub struct Frames {
    recent: Mutex<VecDeque<Known>>,
}

/// A frame's text and what [`parse`] made of it.
type Known = (Arc<str>, Result<Parsed, String>);

impl Frames {
    /// What [`parse`] gives for `text`.
    pub fn parse(&self, text: &str) -> Result<Parsed, String> {
        if text.len() < SHARED_MIN {
            return parse(text);
        }
        let known = |recent: &VecDeque<Known>| recent.iter().find(|(t, _)| **t == *text).map(|(_, p)| p.clone());
        if let Some(p) = known(&self.recent.lock().unwrap_or_else(|e| e.into_inner())) {
            return p;
        }
        let parsed = parse(text);
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if known(&recent).is_none() {
            if recent.len() == SHARED_KEEP {
                recent.pop_front();
            }
            recent.push_back((Arc::from(text), parsed.clone()));
        }
        parsed
    }
}

/// One presence message received: its `seq`, when (µs since the run's origin), and how
/// long after the tick that published it (wall clock − the message's `tick_at`; server and
/// tool share the machine's clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub seq: u64,
    pub at_us: u64,
    pub tick_lag_us: Option<u64>,
}

/// How long after `tick_at_ms` (Unix ms) the wall clock `now` is, in µs (0 if earlier:
/// the tick time has millisecond resolution).
pub fn tick_lag_us(tick_at_ms: i64, now: std::time::SystemTime) -> u64 {
    let now_us = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
    (now_us - tick_at_ms.saturating_mul(1000)).max(0) as u64
}

/// For every receipt, how long after the earliest receipt of the same `seq` it came: the
/// fan-out spread, a lower bound of the lag after the tick that needs no shared clock.
pub fn spread_lags_us(receipts: &[Receipt]) -> Vec<u64> {
    let mut first: HashMap<u64, u64> = HashMap::new();
    for r in receipts {
        first.entry(r.seq).and_modify(|t| *t = (*t).min(r.at_us)).or_insert(r.at_us);
    }
    receipts.iter().map(|r| r.at_us - first[&r.seq]).collect()
}

/// Memory of the server with every connection idle, then subscribed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    pub idle_allocated_bytes: Option<u64>,
    pub idle_vmrss_bytes: Option<u64>,
    pub subscribed_allocated_bytes: Option<u64>,
    pub subscribed_vmrss_bytes: Option<u64>,
    /// (subscribed − idle) allocated bytes per subscribed connection.
    pub per_subscriber_allocated_bytes: Option<f64>,
    /// (subscribed − idle) VmRSS per subscribed connection.
    pub per_subscriber_vmrss_bytes: Option<f64>,
}

impl Memory {
    pub fn per_subscriber(mut self, subscribers: usize) -> Self {
        let per = |a: Option<u64>, b: Option<u64>| Some((b? as f64 - a? as f64) / subscribers.max(1) as f64);
        self.per_subscriber_allocated_bytes = per(self.idle_allocated_bytes, self.subscribed_allocated_bytes);
        self.per_subscriber_vmrss_bytes = per(self.idle_vmrss_bytes, self.subscribed_vmrss_bytes);
        self
    }
}

/// The whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub target_addr: String,
    pub topic: String,
    pub sources: usize,
    pub subscribers: usize,
    pub changers: usize,
    pub change_rate: f64,
    pub deflate_requested: bool,
    pub deflate_negotiated: usize,
    pub connected: usize,
    pub failed: BTreeMap<String, usize>,
    /// Connections that got their first snapshot.
    pub subscribed: usize,
    /// Connections that ended before the run did, by reason.
    pub dropped: BTreeMap<String, usize>,
    /// `error` frames received, by code.
    pub error_frames: BTreeMap<String, usize>,
    pub measured_secs: f64,
    pub changes_sent: usize,
    pub changes_per_sec: f64,
    pub snapshots: usize,
    pub diffs: usize,
    pub entries_delivered: u64,
    pub entries_per_sec: f64,
    /// `entries_per_sec` divided by the server's cores used over the same interval.
    pub entries_per_server_core_per_sec: Option<f64>,
    /// Receipt − earliest receipt of the same `seq` (see [`spread_lags_us`]).
    pub fanout_spread: Latency,
    /// Receipt − the tick that published it (the message's `tick_at`), for messages of
    /// the measured interval; `None` from a server that does not send `tick_at`.
    #[serde(default)]
    pub tick_lag: Option<Latency>,
    /// `presence.tick_p99_us` from `/health` after the run: the server's own time per tick
    /// (merge, diff, one serialization, enqueueing to every subscriber), last 256 ticks.
    #[serde(default)]
    pub server_tick_p99_us: Option<u64>,
    pub server: Spent,
    /// This load generator's own CPU over the interval (it shares the machine).
    pub client_cores_used: Option<f64>,
    pub memory: Memory,
    pub elapsed_secs: f64,
}

impl Report {
    pub fn table(&self) -> String {
        let mut t = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(t, "  {k:<34} {v}");
        };
        let opt = |v: Option<f64>, unit: &str| v.map_or("-".into(), |x| format!("{x:.2}{unit}"));
        let kib = |v: Option<f64>| v.map_or("-".into(), |b| format!("{:.2} KiB", b / 1024.0));
        row("scenario", format!("{} (topic {})", self.scenario, self.topic));
        row("target", self.target_addr.clone());
        row("subscribers / changers / sources", format!("{} / {} / {}", self.subscribers, self.changers, self.sources));
        row("connected / subscribed", format!("{} / {}", self.connected, self.subscribed));
        for (title, map) in [("failed", &self.failed), ("dropped", &self.dropped), ("error frames", &self.error_frames)]
        {
            row(title, map.values().sum::<usize>().to_string());
            for (reason, n) in map {
                row(&format!("  {reason}"), n.to_string());
            }
        }
        row(
            "deflate negotiated",
            if self.deflate_requested {
                format!("{} of {}", self.deflate_negotiated, self.connected)
            } else {
                "not requested".into()
            },
        );
        row("measured", format!("{:.2} s", self.measured_secs));
        row(
            "changes sent",
            format!("{} ({:.0}/s, asked {:.0}/s)", self.changes_sent, self.changes_per_sec, self.change_rate),
        );
        row("snapshots / diffs received", format!("{} / {}", self.snapshots, self.diffs));
        row("entries delivered", format!("{} ({:.0}/s)", self.entries_delivered, self.entries_per_sec));
        row("entries per server core per s", opt(self.entries_per_server_core_per_sec, ""));
        let l = self.fanout_spread;
        row("fan-out spread p50/p99/max", format!("{:.1} / {:.1} / {:.1} ms", l.p50_ms, l.p99_ms, l.max_ms));
        if let Some(us) = self.server_tick_p99_us {
            row("server tick p99 (enqueue to all)", format!("{:.1} ms", us as f64 / 1e3));
        }
        if let Some(l) = self.tick_lag {
            row("lag after the tick p50/p99/max", format!("{:.1} / {:.1} / {:.1} ms", l.p50_ms, l.p99_ms, l.max_ms));
        }
        row("server CPU", format!("{} s = {} cores", opt(self.server.cpu_secs, ""), opt(self.server.cores_used, "")));
        row("client CPU (this tool)", format!("{} cores", opt(self.client_cores_used, "")));
        row("server bytes out (wire)", opt(self.server.bytes_out_per_sec_wire.map(|b| b / 1_048_576.0), " MiB/s"));
        row("server messages out", opt(self.server.messages_out_per_sec, "/s"));
        row("memory per subscriber (allocated)", kib(self.memory.per_subscriber_allocated_bytes));
        row("memory per subscriber (VmRSS)", kib(self.memory.per_subscriber_vmrss_bytes));
        row("elapsed", format!("{:.2} s", self.elapsed_secs));
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_frames_parse_like_parse_and_differing_ones_separately() {
        let frames = Frames::default();
        let padding = "x".repeat(SHARED_MIN);
        let text = |seq: u64, n: usize| {
            let entries: Vec<String> = (0..n).map(|i| format!(r#"{{"id":"u{i}","status":"{padding}"}}"#)).collect();
            format!(r#"{{"type":"presence.diff","seq":{seq},"joins":[{}],"tick_at":7}}"#, entries.join(","))
        };
        let (a, b, c) = (text(1, 3), text(1, 4), text(2, 3));
        for t in [&a, &b, &a, &c, &a, &b] {
            assert_eq!(frames.parse(t), parse(t), "{}", &t[..60]);
        }
        assert_eq!(frames.recent.lock().unwrap().len(), 3, "a repeated frame is kept once, not parsed again");
        assert_eq!(frames.parse(&b), Ok(Parsed::Presence { snapshot: false, seq: 1, entries: 4, tick_at: Some(7) }));
        let broken = format!("{a} trailing");
        assert!(frames.parse(&broken).is_err() && frames.parse(&broken).is_err());
        assert!(frames.parse(r#"{"type":"pong"}"#) == Ok(Parsed::Other("pong".into())));
        for seq in 0..20 {
            frames.parse(&text(seq, 1)).unwrap();
        }
        assert_eq!(frames.recent.lock().unwrap().len(), SHARED_KEEP, "bounded");
    }

    #[test]
    fn frames_are_classified_and_counted() {
        let snap = r#"{"type":"presence.snapshot","topic":"t","seq":41,"count":3,
            "entries":[{"id":"a","state":"away","tags":[1,2]},{"id":"b"},{"id":"c"}]}"#;
        assert_eq!(parse(snap), Ok(Parsed::Presence { snapshot: true, seq: 41, entries: 3, tick_at: None }));
        let diff = r#"{"type":"presence.diff","topic":"t","seq":42,"count":3,
            "joins":[{"id":"d"}],"updates":[{"id":"a"},{"id":"b"}],"leaves":["c"],"tick_at":1700000000123}"#;
        assert_eq!(
            parse(diff),
            Ok(Parsed::Presence { snapshot: false, seq: 42, entries: 4, tick_at: Some(1_700_000_000_123) })
        );
        assert_eq!(
            parse(r#"{"type":"error","code":"rate_limited","message":"x"}"#),
            Ok(Parsed::Error("rate_limited".into()))
        );
        assert_eq!(parse(r#"{"type":"presence.ack","id":7}"#), Ok(Parsed::Other("presence.ack".into())));
        assert!(parse(r#"{"type":"presence.diff","joins":[]}"#).unwrap_err().contains("seq"));
        assert!(parse("[1]").is_err());
        assert!(parse(r#"{"type":"presence.snapshot","seq":1,"entries":{}}"#).is_err());
    }

    #[test]
    fn spread_is_measured_from_the_first_receipt_of_each_seq() {
        let r = |seq, at_us| Receipt { seq, at_us, tick_lag_us: None };
        let lags = spread_lags_us(&[r(1, 500), r(1, 100), r(2, 2_000_100), r(1, 350), r(2, 2_000_000)]);
        assert_eq!(lags, vec![400, 0, 100, 250, 0]);
        assert!(spread_lags_us(&[]).is_empty());
    }

    #[test]
    fn tick_lag_is_wall_clock_minus_the_tick() {
        let at = |ms: u64| std::time::UNIX_EPOCH + std::time::Duration::from_micros(ms);
        assert_eq!(tick_lag_us(1_000, at(1_012_500)), 12_500);
        assert_eq!(tick_lag_us(1_000, at(999_000)), 0, "never negative");
    }

    #[test]
    fn memory_per_subscriber_is_the_delta() {
        let m = Memory {
            idle_allocated_bytes: Some(20_000),
            subscribed_allocated_bytes: Some(25_120),
            idle_vmrss_bytes: Some(1000),
            ..Memory::default()
        }
        .per_subscriber(10);
        assert_eq!((m.per_subscriber_allocated_bytes, m.per_subscriber_vmrss_bytes), (Some(512.0), None));
    }
}
