//! What the server spent over a measured interval: CPU from `/proc/<pid>/stat`, bytes and
//! messages from `/health`'s gateway counters, memory from `/health` and VmRSS.

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::health::vmrss_bytes;
use crate::http::{HttpUrl, fetch_json};

/// Clock ticks per second of `/proc/<pid>/stat` times. `sysconf(_SC_CLK_TCK)` is 100 on
/// every Linux this runs on (x86-64, arm64); reading it would need libc.
const CLK_TCK: f64 = 100.0;

/// One reading of the server.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reading {
    at: Option<Instant>,
    /// utime + stime, in clock ticks.
    cpu_ticks: Option<u64>,
    bytes_out: Option<u64>,
    messages_out: Option<u64>,
    /// `memory.allocated_bytes` (jemalloc), else VmRSS.
    pub allocated_bytes: Option<u64>,
    pub vmrss_bytes: Option<u64>,
}

impl Reading {
    /// Reads `/proc/<pid>/stat` (if `pid`) and `/health` (if `url`); a part that fails is `None`.
    pub async fn take(url: Option<&HttpUrl>, pid: Option<u32>) -> Self {
        let mut r = Reading {
            at: Some(Instant::now()),
            cpu_ticks: pid
                .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
                .and_then(|s| cpu_ticks(&s)),
            vmrss_bytes: pid.and_then(vmrss_bytes),
            ..Reading::default()
        };
        if let Some(Ok(v)) = match url {
            Some(u) => Some(fetch_json(u).await),
            None => None,
        } {
            let get = |p: &str| v.pointer(p).and_then(serde_json::Value::as_u64);
            r.bytes_out = get("/gateway/bytes_out");
            r.messages_out = get("/gateway/messages_out");
            r.allocated_bytes = get("/memory/allocated_bytes");
        }
        r
    }
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name (field
/// 2) may hold spaces and parentheses, so fields are counted after its last `)`.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name: state is field 3, so utime (14) is the 12th field here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The server's spending between two readings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Spent {
    pub secs: f64,
    /// CPU seconds (user + system) of the server process.
    pub cpu_secs: Option<f64>,
    /// `cpu_secs / secs`: cores the server kept busy on average.
    pub cores_used: Option<f64>,
    /// Gateway `bytes_out` (compressed bytes when deflate is on) per second.
    pub bytes_out_per_sec_wire: Option<f64>,
    pub messages_out_per_sec: Option<f64>,
}

impl Spent {
    pub fn between(a: &Reading, b: &Reading) -> Self {
        let secs = match (a.at, b.at) {
            (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        let per_sec = |x: Option<u64>, y: Option<u64>| {
            y.zip(x).filter(|_| secs > 0.0).map(|(y, x)| y.saturating_sub(x) as f64 / secs)
        };
        let cpu_secs = b.cpu_ticks.zip(a.cpu_ticks).map(|(b, a)| b.saturating_sub(a) as f64 / CLK_TCK);
        Self {
            secs,
            cpu_secs,
            cores_used: cpu_secs.filter(|_| secs > 0.0).map(|c| c / secs),
            bytes_out_per_sec_wire: per_sec(a.bytes_out, b.bytes_out),
            messages_out_per_sec: per_sec(a.messages_out, b.messages_out),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn cpu_ticks_skip_a_name_with_spaces_and_parens() {
        let stat = "4242 (rende (zv) us) S 1 4242 4242 0 -1 4194560 5000 0 0 0 1234 567 0 0 20 0 9 0 100 0";
        assert_eq!(cpu_ticks(stat), Some(1234 + 567));
        assert_eq!(cpu_ticks("1 (x) S 1 2"), None);
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn spent_is_a_rate_over_the_interval() {
        let t = Instant::now();
        let a = Reading { at: Some(t), cpu_ticks: Some(100), bytes_out: Some(1000), ..Reading::default() };
        let b = Reading {
            at: Some(t + Duration::from_secs(4)),
            cpu_ticks: Some(700),
            bytes_out: Some(9000),
            ..Reading::default()
        };
        let s = Spent::between(&a, &b);
        assert_eq!((s.secs, s.cpu_secs, s.cores_used), (4.0, Some(6.0), Some(1.5)));
        assert_eq!((s.bytes_out_per_sec_wire, s.messages_out_per_sec), (Some(2000.0), None));
    }
}
