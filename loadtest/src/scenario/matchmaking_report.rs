//! The pure half of the `matchmaking` scenario: reading matchmaking frames, finding
//! double matches, and the report.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::report::Latency;
use crate::scenario::setup::SetupReport;
use crate::usage::Spent;

#[derive(Debug, Deserialize)]
struct Peer {
    user_id: String,
}

/// What a load client puts in a `call.signal` payload: its send time and number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// µs since the run's origin, on the sender's clock (one process: one clock).
    pub t: u64,
    pub n: u32,
}

#[derive(Debug, Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    proposal_id: Option<String>,
    call_id: Option<String>,
    peer: Option<Peer>,
    role: Option<String>,
    payload: Option<Stamp>,
    code: Option<String>,
    reason: Option<String>,
    requeued: Option<bool>,
}

/// A server frame the scenario acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Queued,
    Proposed { proposal_id: String },
    Confirmed { call_id: String, peer: String, offerer: bool },
    Cancelled { reason: String, requeued: bool },
    Signal { call_id: String, stamp: Option<Stamp> },
    Ended { call_id: String },
    Error { code: String },
    Other(String),
}

/// Classifies one text frame; a known type missing a field it needs is an `Err`.
pub fn parse(text: &str) -> Result<Event, String> {
    let f: Frame = serde_json::from_str(text).map_err(|e| format!("bad frame: {e}"))?;
    let need = |v: Option<String>, field: &str| v.ok_or_else(|| format!("{} without {field}", f.kind));
    Ok(match f.kind.as_str() {
        "match.queued" => Event::Queued,
        "match.proposed" => Event::Proposed { proposal_id: need(f.proposal_id, "proposal_id")? },
        "match.confirmed" => Event::Confirmed {
            call_id: need(f.call_id, "call_id")?,
            peer: f.peer.map(|p| p.user_id).ok_or("match.confirmed without peer")?,
            offerer: f.role.as_deref() == Some("offerer"),
        },
        "match.cancelled" => {
            Event::Cancelled { reason: f.reason.unwrap_or_default(), requeued: f.requeued.unwrap_or(false) }
        }
        "call.signal" => Event::Signal { call_id: need(f.call_id, "call_id")?, stamp: f.payload },
        "call.ended" => Event::Ended { call_id: need(f.call_id, "call_id")? },
        "error" => Event::Error { code: f.code.unwrap_or_else(|| "no code".into()) },
        other => Event::Other(other.to_owned()),
    })
}

/// One confirmed call as one of its users saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallSeen {
    pub user: String,
    pub call_id: String,
    pub peer: String,
    pub confirmed_us: u64,
    /// `None` if `call.ended` never came.
    pub ended_us: Option<u64>,
}

/// Ways the server matched someone twice or inconsistently.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoubleMatches {
    /// A user confirmed into a call while an earlier call of theirs had not ended.
    pub overlapping: usize,
    /// A call id confirmed to other than exactly two users who name each other as peer.
    pub inconsistent_calls: usize,
}

impl DoubleMatches {
    pub fn total(&self) -> usize {
        self.overlapping + self.inconsistent_calls
    }
}

/// Checks every user's calls for overlap in time and every call for its two sides.
pub fn double_matches(calls: &[CallSeen]) -> DoubleMatches {
    let mut by_user: HashMap<&str, Vec<&CallSeen>> = HashMap::new();
    let mut by_call: HashMap<&str, Vec<&CallSeen>> = HashMap::new();
    for c in calls {
        by_user.entry(&c.user).or_default().push(c);
        by_call.entry(&c.call_id).or_default().push(c);
    }
    let mut out = DoubleMatches::default();
    for list in by_user.values_mut() {
        list.sort_by_key(|c| c.confirmed_us);
        // A call that never ended overlaps everything after it.
        out.overlapping += list.windows(2).filter(|w| w[0].ended_us.is_none_or(|end| end > w[1].confirmed_us)).count();
    }
    for sides in by_call.values() {
        let paired = matches!(sides.as_slice(), [a, b] if a.peer == b.user && b.peer == a.user && a.user != b.user);
        out.inconsistent_calls += usize::from(!paired);
    }
    out
}

/// One round's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Round {
    pub name: String,
    /// Users whose call was confirmed this round, over 2.
    pub matches: usize,
    /// First `match.join` sent → last `match.confirmed` received.
    pub match_secs: f64,
    pub matches_per_sec: f64,
    /// Users still not done when the round timed out.
    pub unfinished: usize,
}

/// The whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub target_addr: String,
    pub users: usize,
    pub rounds_requested: usize,
    pub signals_per_side: usize,
    pub signal_rate: f64,
    pub setup: SetupReport,
    pub connected: usize,
    pub failed: BTreeMap<String, usize>,
    pub dropped: BTreeMap<String, usize>,
    pub error_frames: BTreeMap<String, usize>,
    pub cancelled: BTreeMap<String, usize>,
    /// `match.join`s sent again after `busy` (or a cancel that left the queue).
    pub join_retries: usize,
    pub rounds: Vec<Round>,
    pub matches: usize,
    /// All matches over the summed match phases.
    pub matches_per_sec: f64,
    /// `match.join` sent → `match.confirmed` received.
    pub time_to_match: Latency,
    pub double_matches: DoubleMatches,
    pub signals_relayed: usize,
    /// Signals received per second over the summed signaling phases.
    pub signals_per_sec: f64,
    /// `call.signal` sent → received by the peer (both clients in this process).
    pub relay_latency: Latency,
    /// The server's own relay time (`matchmaking.relay_us_p50`/`_p99` from `/health`: handle
    /// call → relayed frame handed on, last 4096 signals), to tell server from client time.
    #[serde(default)]
    pub server_relay_us: Option<(u64, u64)>,
    pub server: Spent,
    pub client_cores_used: Option<f64>,
    pub elapsed_secs: f64,
}

impl Report {
    pub fn table(&self) -> String {
        let mut t = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(t, "  {k:<34} {v}");
        };
        let opt = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.2}"));
        let lat = |l: Latency| format!("{:.1} / {:.1} / {:.1} ms", l.p50_ms, l.p99_ms, l.max_ms);
        row("scenario", self.scenario.clone());
        row("target", self.target_addr.clone());
        row(
            "users / rounds / signals per side",
            format!("{} / {} / {}", self.users, self.rounds_requested, self.signals_per_side),
        );
        row(
            "setup",
            format!(
                "{} users, {} sessions, {:.1} s",
                self.setup.users_created, self.setup.sessions_issued, self.setup.secs
            ),
        );
        row("connected", self.connected.to_string());
        for (title, map) in [
            ("failed", &self.failed),
            ("dropped", &self.dropped),
            ("error frames", &self.error_frames),
            ("match.cancelled", &self.cancelled),
        ] {
            row(title, map.values().sum::<usize>().to_string());
            for (reason, n) in map {
                row(&format!("  {reason}"), n.to_string());
            }
        }
        row("join retries (after busy)", self.join_retries.to_string());
        for r in &self.rounds {
            row(
                &format!("round {}", r.name),
                format!(
                    "{} matches in {:.2} s = {:.0}/s, {} unfinished",
                    r.matches, r.match_secs, r.matches_per_sec, r.unfinished
                ),
            );
        }
        row("matches", format!("{} ({:.0}/s)", self.matches, self.matches_per_sec));
        row("time to match p50/p99/max", lat(self.time_to_match));
        let d = self.double_matches;
        row(
            "double matches",
            format!("{} ({} overlapping, {} inconsistent calls)", d.total(), d.overlapping, d.inconsistent_calls),
        );
        row("signals relayed", format!("{} ({:.0}/s)", self.signals_relayed, self.signals_per_sec));
        row("relay latency p50/p99/max", lat(self.relay_latency));
        if let Some((p50, p99)) = self.server_relay_us {
            row("server relay time p50/p99", format!("{:.3} / {:.3} ms", p50 as f64 / 1e3, p99 as f64 / 1e3));
        }
        row("server CPU", format!("{} s = {} cores", opt(self.server.cpu_secs), opt(self.server.cores_used)));
        row("client CPU (this tool)", format!("{} cores", opt(self.client_cores_used)));
        row("elapsed", format!("{:.2} s", self.elapsed_secs));
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_read() {
        let confirmed = r#"{"type":"match.confirmed","call_id":"c1","role":"offerer",
            "peer":{"user_id":"u2","display_name":"B","gender":"female"}}"#;
        assert_eq!(parse(confirmed), Ok(Event::Confirmed { call_id: "c1".into(), peer: "u2".into(), offerer: true }));
        let signal = r#"{"type":"call.signal","call_id":"c1","kind":"ice","payload":{"t":123,"n":4}}"#;
        assert_eq!(parse(signal), Ok(Event::Signal { call_id: "c1".into(), stamp: Some(Stamp { t: 123, n: 4 }) }));
        assert_eq!(
            parse(r#"{"type":"match.proposed","proposal_id":"p","peer":{"user_id":"x"},"deadline_ms":1}"#),
            Ok(Event::Proposed { proposal_id: "p".into() })
        );
        assert_eq!(
            parse(r#"{"type":"call.ended","call_id":"c1","reason":"hangup"}"#),
            Ok(Event::Ended { call_id: "c1".into() })
        );
        assert_eq!(parse(r#"{"type":"error","code":"busy"}"#), Ok(Event::Error { code: "busy".into() }));
        assert_eq!(
            parse(r#"{"type":"match.cancelled","proposal_id":"p","reason":"peer_timeout","requeued":true}"#),
            Ok(Event::Cancelled { reason: "peer_timeout".into(), requeued: true })
        );
        assert!(parse(r#"{"type":"match.confirmed","call_id":"c"}"#).unwrap_err().contains("peer"));
        assert!(parse("nope").is_err());
    }

    fn call(user: &str, call_id: &str, peer: &str, confirmed_us: u64, ended_us: Option<u64>) -> CallSeen {
        CallSeen { user: user.into(), call_id: call_id.into(), peer: peer.into(), confirmed_us, ended_us }
    }

    #[test]
    fn clean_rounds_have_no_double_match() {
        let calls = [
            call("a", "c1", "b", 10, Some(20)),
            call("b", "c1", "a", 11, Some(21)),
            call("a", "c2", "b", 30, Some(40)),
            call("b", "c2", "a", 30, Some(40)),
        ];
        assert_eq!(double_matches(&calls), DoubleMatches::default());
    }

    #[test]
    fn overlaps_and_odd_calls_are_found() {
        let calls = [
            // a is confirmed into c2 with c3's user before c1 ended.
            call("a", "c1", "b", 10, Some(50)),
            call("b", "c1", "a", 10, Some(50)),
            call("a", "c2", "c", 20, Some(60)),
            call("c", "c2", "a", 20, Some(60)),
            // c1 again never ended for d, whose call names the wrong peer.
            call("d", "c3", "e", 5, None),
            call("e", "c3", "x", 5, Some(9)),
            call("d", "c4", "f", 70, Some(80)),
        ];
        let d = double_matches(&calls);
        // a overlaps (c1, c2); d overlaps (c3 never ended, c4); c3 names x; c4 has one side.
        assert_eq!(d, DoubleMatches { overlapping: 2, inconsistent_calls: 2 });
        assert_eq!(d.total(), 4);
    }
}
