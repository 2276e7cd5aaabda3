//! The `cluster` scenario's report, and the bus publish counters it samples: Redis
//! `INFO commandstats` (PUBLISH + SPUBLISH calls) and each instance's `/health` `bus.published`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::cli::ClusterArgs;
use crate::http::{HttpUrl, fetch_json};
use crate::report::Latency;
use crate::scenario::setup::SetupReport;

/// Signaling relay latency, same instance vs across instances.
#[derive(Debug, Clone, Serialize)]
pub struct Signaling {
    pub setup: SetupReport,
    pub pairs: usize,
    pub signal_rate: f64,
    pub connected: usize,
    pub failed: BTreeMap<String, usize>,
    pub call_sides_up: usize,
    pub signals_sent: usize,
    pub signals_received: usize,
    /// Sent over the sending window.
    pub signals_per_sec: f64,
    pub same_instance_samples: usize,
    pub cross_instance_samples: usize,
    pub same_instance: Latency,
    pub cross_instance: Latency,
    /// Cross-instance minus same-instance, measured in the same window.
    pub added_p99_ms: f64,
    pub added_p50_ms: f64,
    pub error_frames: BTreeMap<String, usize>,
    pub dropped: BTreeMap<String, usize>,
}

/// Presence fan-out across instances and the bus traffic it takes.
#[derive(Debug, Clone, Serialize)]
pub struct Presence {
    pub subscribers: usize,
    pub topics: usize,
    pub changers: usize,
    pub change_rate: f64,
    pub tick_ms: u64,
    pub connected: usize,
    pub failed: BTreeMap<String, usize>,
    pub subscribed: usize,
    pub measured_secs: f64,
    pub changes_sent: usize,
    /// Snapshot entries + diff joins/updates/leaves, over all subscribers, in the window.
    pub entries_delivered: u64,
    pub entries_per_sec: f64,
    pub lag_same_instance_samples: usize,
    pub lag_other_instance_samples: usize,
    /// `presence.set` sent → the entry with that status received, changer on the subscriber's instance.
    pub change_to_receipt_same_instance: Latency,
    /// The same, changer on another instance.
    pub change_to_receipt_other_instance: Latency,
    /// How long after the first subscriber of its (instance, topic) each got a tick's frame.
    pub receipt_spread: Latency,
    /// Redis PUBLISH + SPUBLISH calls per presence tick, subscribed but nobody changing.
    pub redis_publishes_per_tick_idle: Option<f64>,
    /// The same while changes flow.
    pub redis_publishes_per_tick: Option<f64>,
    /// Each instance's `bus.published` per tick while changes flow.
    pub bus_publishes_per_tick_per_instance: Vec<Option<f64>>,
    pub bus_publishes_per_tick_per_instance_idle: Vec<Option<f64>>,
    /// The target: one publish per topic per instance per tick.
    pub publish_bound_per_tick: usize,
    pub error_frames: BTreeMap<String, usize>,
    pub dropped: BTreeMap<String, usize>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub instances: usize,
    pub ports: Vec<u16>,
    pub signaling: Signaling,
    pub presence: Presence,
    pub elapsed_secs: f64,
}

impl Report {
    /// Everything came up, nothing was dropped, and every signal sent arrived.
    pub fn ok(&self) -> bool {
        let (s, p) = (&self.signaling, &self.presence);
        s.failed.is_empty()
            && s.dropped.is_empty()
            && s.call_sides_up == s.connected
            && s.signals_received == s.signals_sent
            && p.failed.is_empty()
            && p.dropped.is_empty()
            && p.subscribed == p.connected
    }

    pub fn table(&self) -> String {
        let (s, p) = (&self.signaling, &self.presence);
        let lat = |l: &Latency| {
            format!("p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  max {:.2} ms", l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms)
        };
        let opt = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.2}"));
        let list = |v: &[Option<f64>]| v.iter().map(|x| opt(*x)).collect::<Vec<_>>().join(" / ");
        let mut t = String::new();
        let _ =
            writeln!(t, "cluster: {} instances (ports {:?}), {:.1} s", self.instances, self.ports, self.elapsed_secs);
        let _ = writeln!(
            t,
            "signaling: {} pairs asked, {} sides connected, {} in a call",
            s.pairs, s.connected, s.call_sides_up
        );
        let _ = writeln!(
            t,
            "  signals: {} sent, {} received, {:.0}/s (asked {:.0}/s)",
            s.signals_sent, s.signals_received, s.signals_per_sec, s.signal_rate
        );
        let _ = writeln!(t, "  same instance  ({:>7}): {}", s.same_instance_samples, lat(&s.same_instance));
        let _ = writeln!(t, "  cross instance ({:>7}): {}", s.cross_instance_samples, lat(&s.cross_instance));
        let _ = writeln!(t, "  crossing adds: p50 {:+.2} ms, p99 {:+.2} ms", s.added_p50_ms, s.added_p99_ms);
        let _ = writeln!(t, "  failed {:?}  dropped {:?}  errors {:?}", s.failed, s.dropped, s.error_frames);
        let _ = writeln!(
            t,
            "presence: {} subscribers over {} topics ({} subscribed), {} changers at {:.0}/s, tick {} ms",
            p.subscribers, p.topics, p.subscribed, p.changers, p.change_rate, p.tick_ms
        );
        let _ = writeln!(
            t,
            "  {:.1} s: {} changes sent, {} entries delivered ({:.0}/s)",
            p.measured_secs, p.changes_sent, p.entries_delivered, p.entries_per_sec
        );
        let _ = writeln!(
            t,
            "  change → receipt, same instance  ({:>7}): {}",
            p.lag_same_instance_samples,
            lat(&p.change_to_receipt_same_instance)
        );
        let _ = writeln!(
            t,
            "  change → receipt, other instance ({:>7}): {}",
            p.lag_other_instance_samples,
            lat(&p.change_to_receipt_other_instance)
        );
        let _ = writeln!(t, "  receipt spread within an instance: {}", lat(&p.receipt_spread));
        let _ = writeln!(
            t,
            "  Redis publishes per tick: {} idle, {} changing (bound: {} topics x instances)",
            opt(p.redis_publishes_per_tick_idle),
            opt(p.redis_publishes_per_tick),
            p.publish_bound_per_tick
        );
        let _ = writeln!(
            t,
            "  bus publishes per tick per instance: {} idle, {} changing",
            list(&p.bus_publishes_per_tick_per_instance_idle),
            list(&p.bus_publishes_per_tick_per_instance)
        );
        let _ = writeln!(t, "  failed {:?}  dropped {:?}  errors {:?}", p.failed, p.dropped, p.error_frames);
        t
    }
}

/// Publish counters at one moment.
#[derive(Debug, Clone)]
pub struct BusCounts {
    pub at: Instant,
    /// PUBLISH + SPUBLISH calls on the Redis server, if `--redis-port` was given and answered.
    pub redis: Option<u64>,
    /// `bus.published` of each instance's `/health`.
    pub instances: Vec<Option<u64>>,
}

/// Counts between two samples.
#[derive(Debug, Clone)]
pub struct BusDelta {
    pub redis: Option<u64>,
    pub instances: Vec<Option<u64>>,
}

impl BusCounts {
    pub async fn take(args: &ClusterArgs) -> Self {
        let at = Instant::now();
        let redis = match args.redis_port {
            Some(port) => redis_publishes(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).await.ok(),
            None => None,
        };
        let mut instances = Vec::new();
        for port in &args.ports {
            let url = HttpUrl { addr: SocketAddrV4::new(args.host, *port), path: "/health".into() };
            let published = fetch_json(&url).await.ok().and_then(|v| v["bus"]["published"].as_u64());
            instances.push(published);
        }
        Self { at, redis, instances }
    }

    pub fn minus(&self, earlier: &Self) -> BusDelta {
        let sub = |a: Option<u64>, b: Option<u64>| Some(a?.saturating_sub(b?));
        BusDelta {
            redis: sub(self.redis, earlier.redis),
            instances: self.instances.iter().zip(&earlier.instances).map(|(a, b)| sub(*a, *b)).collect(),
        }
    }
}

/// PUBLISH + SPUBLISH calls so far, from `INFO commandstats` (a raw RESP exchange, 5 s bound).
async fn redis_publishes(addr: SocketAddrV4) -> Result<u64, String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        stream.write_all(b"*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n").await.map_err(|e| e.to_string())?;
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        reader.read_line(&mut head).await.map_err(|e| e.to_string())?;
        let len: usize = head.trim().strip_prefix('$').and_then(|n| n.parse().ok()).ok_or(format!("redis: {head}"))?;
        let mut body = vec![0; len.min(1 << 20)];
        reader.read_exact(&mut body).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(publish_calls(&String::from_utf8_lossy(&body)))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange).await.map_err(|_| "redis: timeout".to_owned())?
}

/// The `calls=` of `cmdstat_publish` and `cmdstat_spublish`, summed.
pub fn publish_calls(info: &str) -> u64 {
    info.lines()
        .filter_map(|l| l.strip_prefix("cmdstat_publish:").or_else(|| l.strip_prefix("cmdstat_spublish:")))
        .filter_map(|rest| rest.split(',').find_map(|kv| kv.strip_prefix("calls=")?.parse::<u64>().ok()))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_calls_sums_publish_and_spublish_only() {
        let info = "# Commandstats\r\ncmdstat_publish:calls=12,usec=30,usec_per_call=2.50\r\n\
                    cmdstat_spublish:calls=3,usec=9\r\ncmdstat_psubscribe:calls=100,usec=1\r\n\
                    cmdstat_set:calls=7,usec=1\r\n";
        assert_eq!(publish_calls(info), 15);
        assert_eq!(publish_calls("# Commandstats\r\n"), 0);
    }
}
