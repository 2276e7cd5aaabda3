//! Sampling the server: `/health` and VmRSS from `/proc`.

use serde::{Deserialize, Serialize};

use crate::http::{HttpUrl, fetch_json};

/// The server's figures at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerSample {
    /// `connections.total` from `/health`.
    pub connections_total: Option<u64>,
    /// `memory.rss_bytes` from `/health`.
    pub rss_bytes: Option<u64>,
    /// `memory.allocated_bytes` from `/health` (jemalloc `stats.allocated`).
    pub allocated_bytes: Option<u64>,
    /// `memory.allocator_resident_bytes` from `/health`.
    pub allocator_resident_bytes: Option<u64>,
    /// VmRSS of `--server-pid`, read from `/proc/<pid>/status`.
    pub vmrss_bytes: Option<u64>,
    pub error: Option<String>,
}

/// The `health` scenario's summary: the sample, tagged with the scenario for `compare`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthReport {
    pub scenario: String,
    #[serde(flatten)]
    pub sample: ServerSample,
}

impl HealthReport {
    pub fn table(&self) -> String {
        self.sample.lines().iter().map(|(k, v)| format!("  {k:<30} {v}\n")).collect()
    }
}

impl ServerSample {
    /// Samples whichever of `/health` and VmRSS were asked for.
    pub async fn take(health_url: Option<&HttpUrl>, pid: Option<u32>) -> Self {
        let mut s = Self { vmrss_bytes: pid.and_then(vmrss_bytes), ..Self::default() };
        if let Some(url) = health_url {
            match fetch_json(url).await {
                Ok(v) => {
                    let get = |p: &str| v.pointer(p).and_then(serde_json::Value::as_u64);
                    s.connections_total = get("/connections/total");
                    s.rss_bytes = get("/memory/rss_bytes");
                    s.allocated_bytes = get("/memory/allocated_bytes");
                    s.allocator_resident_bytes = get("/memory/allocator_resident_bytes");
                }
                Err(e) => s.error = Some(e),
            }
        }
        s
    }

    /// Label/value rows for the table.
    pub fn lines(&self) -> Vec<(String, String)> {
        let mib = |v: Option<u64>| v.map_or("-".into(), |b| format!("{b} ({:.1} MiB)", b as f64 / (1024.0 * 1024.0)));
        let mut out = vec![
            ("server connections.total".into(), self.connections_total.map_or("-".into(), |v| v.to_string())),
            ("server memory.rss_bytes".into(), mib(self.rss_bytes)),
            ("server memory.allocated_bytes".into(), mib(self.allocated_bytes)),
            ("server allocator_resident".into(), mib(self.allocator_resident_bytes)),
            ("server VmRSS (/proc)".into(), mib(self.vmrss_bytes)),
        ];
        if let Some(e) = &self.error {
            out.push(("server sample error".into(), e.clone()));
        }
        out
    }
}

/// VmRSS of `pid` in bytes.
pub fn vmrss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
