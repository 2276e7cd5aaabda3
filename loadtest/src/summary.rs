//! Where a run's summary goes: the table on stdout, JSON on stdout (`--json`), or both
//! the table and a JSON file (`--json FILE`) for `compare` to read later.

use std::path::Path;

use serde::Serialize;

use crate::cli::Output;

/// Prints or writes the summary as `output` asks.
pub fn emit<R: Serialize>(output: &Output, report: &R, table: &str) -> Result<(), String> {
    match output.json.as_deref() {
        None => print!("{table}"),
        Some(path) if path == Path::new("-") => println!("{}", to_json(report)?),
        Some(path) => {
            print!("{table}");
            write_json(path, report)?;
            eprintln!("summary written to {}", path.display());
        }
    }
    Ok(())
}

fn to_json<R: Serialize>(report: &R) -> Result<String, String> {
    serde_json::to_string_pretty(report).map_err(|e| format!("cannot encode the summary: {e}"))
}

/// Writes `report` to `path` as pretty JSON.
pub fn write_json<R: Serialize>(path: &Path, report: &R) -> Result<(), String> {
    let text = to_json(report)? + "\n";
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::de::DeserializeOwned;

    use super::*;
    use crate::compare::{self, Verdict};
    use crate::health::{HealthReport, ServerSample};
    use crate::report::{Meta, Report, Tally};

    /// Writes `report` as `--json FILE` does, reads it back typed and as `compare` does.
    fn round_trip<R: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(name: &str, report: &R) {
        let path = std::env::temp_dir().join(format!("rv-loadtest-{}-{name}.json", std::process::id()));
        write_json(&path, report).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(&serde_json::from_str::<R>(&text).unwrap(), report, "{name}");
        let loaded = compare::load(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(compare::figures(&loaded), compare::figures(&serde_json::to_value(report).unwrap()));
        let same = compare::compare(&loaded, &loaded, 0.0).unwrap();
        assert!(same.rows.iter().all(|r| r.verdict == Verdict::Same), "{name}");
    }

    fn idle_report() -> Report {
        let mut tally = Tally { target: 3, connected: 2, latencies_us: vec![1500, 2500], ..Tally::default() };
        tally.fail("timeout".into());
        tally.closed_cleanly = 2;
        let meta = Meta { target_addr: "ws://127.0.0.1:8080/ws".into(), processes: 1, sources: 1, deflate: true };
        let server = ServerSample { connections_total: Some(2), vmrss_bytes: Some(1 << 20), ..ServerSample::default() };
        Report::new(tally, meta, Some(server), 1.25)
    }

    #[test]
    fn idle_and_health_summaries_survive_the_file() {
        let report = idle_report();
        round_trip("idle", &report);
        let figures = compare::figures(&serde_json::to_value(&report).unwrap());
        assert_eq!(figures["failed.timeout"], 1.0);
        assert_eq!(figures["connect_latency.p99_ms"], 2.5);
        assert_eq!(figures["server.vmrss_bytes"], 1048576.0);
        let sample = ServerSample { allocated_bytes: Some(7), error: Some("x".into()), ..ServerSample::default() };
        round_trip("health", &HealthReport { scenario: "health".into(), sample });
    }

    #[test]
    fn store_summaries_survive_the_file() {
        let setup = crate::scenario::setup::SetupReport {
            users_requested: 2,
            users_created: 2,
            sessions_issued: 2,
            failed: BTreeMap::new(),
            secs: 0.5,
            requests_per_sec: 8.0,
        };
        let phase = crate::scenario::connect_rate::Phase {
            name: "cached".into(),
            attempts: 2,
            connected: 2,
            failed: BTreeMap::from([("http 503".to_owned(), 1)]),
            closed_cleanly: 2,
            secs: 0.1,
            connects_per_sec: 20.0,
            welcome_latency: Default::default(),
            cycle_latency: Default::default(),
            cache: Some(Default::default()),
        };
        let report = crate::scenario::connect_rate::Report {
            scenario: "connect-rate".into(),
            target_addr: "ws://127.0.0.1:8080/ws".into(),
            users: 2,
            concurrency: 1,
            sources: 1,
            session_cache_capacity: Some(10),
            setup,
            phases: vec![phase],
            elapsed_secs: 1.0,
        };
        round_trip("connect-rate", &report);
        let figures = compare::figures(&serde_json::to_value(&report).unwrap());
        assert_eq!(figures["phases[cached].connects_per_sec"], 20.0);
        assert_eq!(figures["phases[cached].failed.http 503"], 1.0);
    }
}
