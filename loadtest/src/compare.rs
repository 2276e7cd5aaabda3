//! `compare OLD NEW`: two JSON summaries of the same scenario, figure by figure.
//!
//! Every number in a summary is a figure, named by its path (`connect_latency.p99_ms`,
//! `phases[cached].connects_per_sec`: array items go by their `name` when they have one).
//! Which direction is better follows from the name. A setting (`users`, `concurrency`) is
//! flagged when it differs, since the runs then measured different things; a figure with no
//! better direction (`elapsed_secs`, a cache's `size`) is shown but never judged.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::path::Path;
use std::process::ExitCode;

use serde_json::Value;

use crate::cli::CompareArgs;

/// Which way a figure should move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
    /// How the run was set up: should not move at all between comparable runs.
    Setting,
    /// A fact with no better direction.
    Neither,
}

/// What the change of one figure means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Worse by more than the threshold.
    Regression,
    /// Better by more than the threshold.
    Improvement,
    /// Within the threshold (or equal).
    Same,
    /// A setting that changed: the runs were set up differently.
    Differs,
    /// Changed, but has no better direction.
    Unjudged,
    OnlyOld,
    OnlyNew,
}

/// One figure in both summaries.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub figure: String,
    pub old: Option<f64>,
    pub new: Option<f64>,
    pub verdict: Verdict,
}

impl Row {
    /// `new - old`.
    pub fn change(&self) -> Option<f64> {
        Some(self.new? - self.old?)
    }

    /// The change in percent of `old`; `None` when `old` is 0 or missing.
    pub fn percent(&self) -> Option<f64> {
        let old = self.old.filter(|o| *o != 0.0)?;
        Some(self.change()? / old.abs() * 100.0)
    }
}

/// Two summaries compared.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub scenario: String,
    pub threshold_pct: f64,
    pub rows: Vec<Row>,
}

/// Every number in `v`, by path.
pub fn figures(v: &Value) -> BTreeMap<String, f64> {
    fn walk(path: String, v: &Value, out: &mut BTreeMap<String, f64>) {
        match v {
            Value::Number(n) => {
                if let Some(x) = n.as_f64() {
                    out.insert(path, x);
                }
            }
            Value::Object(map) => {
                for (k, v) in map {
                    walk(if path.is_empty() { k.clone() } else { format!("{path}.{k}") }, v, out);
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let key = item.get("name").and_then(Value::as_str).map_or_else(|| i.to_string(), str::to_owned);
                    walk(format!("{path}[{key}]"), item, out);
                }
            }
            // Strings, booleans and nulls are labels and settings, not figures.
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    walk(String::new(), v, &mut out);
    out
}

/// The path's segments (`phases[cached].failed.timeout` → phases, cached, failed, timeout).
fn segments(figure: &str) -> Vec<&str> {
    figure.split(['.', '[', ']']).filter(|s| !s.is_empty()).collect()
}

/// Counts by failure reason: a reason missing from one summary counted 0 there.
fn in_count_map(figure: &str) -> bool {
    let segs = segments(figure);
    segs[..segs.len().saturating_sub(1)]
        .iter()
        .any(|s| matches!(*s, "failed" | "dropped" | "error_frames" | "cancelled" | "double_matches"))
}

/// Which way `figure` should move, from its name.
pub fn better(figure: &str) -> Better {
    let last = segments(figure).last().copied().unwrap_or("");
    if in_count_map(figure)
        || matches!(last, "failed_total" | "close_failed" | "join_retries" | "unfinished" | "cores_used" | "cpu_secs")
    {
        return Better::Lower;
    }
    if last.ends_with("_per_sec")
        || matches!(
            last,
            "connected"
                | "closed_cleanly"
                | "deflate_negotiated"
                | "ok"
                | "hits"
                | "hit_rate"
                | "users_created"
                | "sessions_issued"
                | "subscribed"
                | "entries_delivered"
                | "matches"
                | "delivered"
        )
    {
        return Better::Higher;
    }
    // Durations of work (`secs`, `connect_phase_secs`) but not `elapsed_secs`, which
    // includes the settle and hold times the run was told to wait.
    if last.ends_with("_ms")
        || last.ends_with("_us")
        || last.ends_with("_bytes")
        || matches!(last, "misses" | "evictions" | "loads" | "secs" | "connect_phase_secs")
    {
        return Better::Lower;
    }
    if matches!(
        last,
        "target"
            | "processes"
            | "sources"
            | "users"
            | "users_requested"
            | "reads"
            | "zipf_s"
            | "seed"
            | "concurrency"
            | "attempts"
            | "capacity"
            | "session_cache_capacity"
            | "subscribers"
            | "changers"
            | "change_rate"
            | "rounds_requested"
            | "signals_per_side"
            | "signal_rate"
            | "conns"
            | "bytes"
            | "rounds"
            | "writers"
    ) {
        return Better::Setting;
    }
    Better::Neither
}

fn judge(better: Better, old: Option<f64>, new: Option<f64>, threshold_pct: f64) -> Verdict {
    let (old, new) = match (old, new) {
        (Some(o), Some(n)) => (o, n),
        (Some(_), None) => return Verdict::OnlyOld,
        _ => return Verdict::OnlyNew,
    };
    let delta = new - old;
    if delta == 0.0 {
        return Verdict::Same;
    }
    match better {
        Better::Setting => return Verdict::Differs,
        Better::Neither => return Verdict::Unjudged,
        Better::Higher | Better::Lower => {}
    }
    let rel = if old == 0.0 { f64::INFINITY } else { (delta / old.abs() * 100.0).abs() };
    if rel <= threshold_pct {
        Verdict::Same
    } else if (delta > 0.0) == (better == Better::Higher) {
        Verdict::Improvement
    } else {
        Verdict::Regression
    }
}

/// Compares two summaries; they must be of the same scenario.
pub fn compare(old: &Value, new: &Value, threshold_pct: f64) -> Result<Comparison, String> {
    if !old.is_object() || !new.is_object() {
        return Err("a summary is a JSON object (written by --json FILE)".into());
    }
    let scenario_of = |v: &Value| v.get("scenario").and_then(Value::as_str).map(str::to_owned);
    let scenario = match (scenario_of(old), scenario_of(new)) {
        (Some(a), Some(b)) if a != b => {
            return Err(format!("the old summary is of `{a}`, the new one of `{b}`: nothing to compare"));
        }
        (a, b) => a.or(b).unwrap_or_else(|| "?".into()),
    };
    let (old, new) = (figures(old), figures(new));
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let rows = names
        .into_iter()
        .map(|figure| {
            let zero = in_count_map(figure).then_some(0.0);
            let (o, n) = (old.get(figure).copied().or(zero), new.get(figure).copied().or(zero));
            Row { figure: figure.clone(), old: o, new: n, verdict: judge(better(figure), o, n, threshold_pct) }
        })
        .collect();
    Ok(Comparison { scenario, threshold_pct, rows })
}

impl Comparison {
    pub fn count(&self, verdict: Verdict) -> usize {
        self.rows.iter().filter(|r| r.verdict == verdict).count()
    }

    /// The comparison as a table, one figure a row, with a closing tally.
    pub fn table(&self, old_name: &str, new_name: &str) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "  {}: {old_name} -> {new_name} (changes over {} % are judged)",
            self.scenario,
            num(self.threshold_pct)
        );
        let w = self.rows.iter().map(|r| r.figure.len()).max().unwrap_or(0).max(6);
        let _ = writeln!(t, "  {:<w$}  {:>14}  {:>14}  {:>12}  {:>9}", "figure", "old", "new", "change", "%");
        for r in &self.rows {
            let opt = |v: Option<f64>| v.map_or("-".into(), num);
            let change = r.change().map_or("".into(), |c| if c > 0.0 { format!("+{}", num(c)) } else { num(c) });
            let pct = match (r.percent(), r.change()) {
                (Some(p), _) => format!("{p:+.1} %"),
                (None, Some(c)) if c != 0.0 => "new".into(),
                _ => "".into(),
            };
            let flag = match r.verdict {
                Verdict::Regression => "REGRESSION",
                Verdict::Improvement => "better",
                Verdict::Same | Verdict::Unjudged => "",
                Verdict::Differs => "differs (setting)",
                Verdict::OnlyOld => "only in old",
                Verdict::OnlyNew => "only in new",
            };
            let line =
                format!("  {:<w$}  {:>14}  {:>14}  {change:>12}  {pct:>9}  {flag}", r.figure, opt(r.old), opt(r.new));
            let _ = writeln!(t, "{}", line.trim_end());
        }
        let _ = writeln!(
            t,
            "  {} regressions, {} improvements, {} settings differ, {} judged figures within {} %",
            self.count(Verdict::Regression),
            self.count(Verdict::Improvement),
            self.count(Verdict::Differs),
            self.rows
                .iter()
                .filter(|r| r.verdict == Verdict::Same && matches!(better(&r.figure), Better::Higher | Better::Lower))
                .count(),
            num(self.threshold_pct)
        );
        t
    }
}

/// Up to three decimals, trailing zeros dropped.
fn num(x: f64) -> String {
    let s = format!("{x:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.to_owned() }
}

/// Reads a summary file.
pub fn load(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))
}

/// `compare`: exit 0 without regressions, 1 with, 2 when the files cannot be compared.
pub fn run(args: &CompareArgs) -> ExitCode {
    let compared = load(&args.old).and_then(|old| compare(&old, &load(&args.new)?, args.threshold));
    match compared {
        Ok(c) => {
            print!("{}", c.table(&args.old.display().to_string(), &args.new.display().to_string()));
            if c.count(Verdict::Regression) > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
        }
        Err(e) => {
            eprintln!("rendezvous-loadtest: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn row<'a>(c: &'a Comparison, figure: &str) -> &'a Row {
        c.rows.iter().find(|r| r.figure == figure).unwrap_or_else(|| panic!("no row {figure}"))
    }

    #[test]
    fn figures_are_named_by_path_and_array_items_by_name() {
        let v = json!({"scenario": "x", "a": {"b": 1, "c": "label", "d": null, "e": true},
                       "phases": [{"name": "cached", "n": 2.5}, {"n": 3}]});
        let f = figures(&v);
        assert_eq!(
            f.into_iter().collect::<Vec<_>>(),
            vec![("a.b".to_owned(), 1.0), ("phases[1].n".to_owned(), 3.0), ("phases[cached].n".to_owned(), 2.5)]
        );
    }

    #[test]
    fn direction_follows_the_name() {
        for (figure, want) in [
            ("connect_latency.p99_ms", Better::Lower),
            ("phases[uncached].connects_per_sec", Better::Higher),
            ("requests_per_sec", Better::Higher),
            ("failed.timeout", Better::Lower),
            ("phases[cached].failed.http 503", Better::Lower),
            ("dropped.eof while held", Better::Lower),
            ("failed_total", Better::Lower),
            ("cache.users.hit_rate", Better::Higher),
            ("server.vmrss_bytes", Better::Lower),
            ("connected", Better::Higher),
            ("users", Better::Setting),
            ("phases[cached].attempts", Better::Setting),
            ("cache.users.capacity", Better::Setting),
            ("elapsed_secs", Better::Neither),
            ("cache.users.size", Better::Neither),
            ("entries_per_server_core_per_sec", Better::Higher),
            ("fanout_spread.p99_ms", Better::Lower),
            ("memory.per_subscriber_allocated_bytes", Better::Lower),
            ("error_frames.busy", Better::Lower),
            ("double_matches.overlapping", Better::Lower),
            ("server.cores_used", Better::Lower),
            ("rounds[2].unfinished", Better::Lower),
            ("matches", Better::Higher),
            ("subscribers", Better::Setting),
            ("signal_rate", Better::Setting),
            ("server.bytes_out_per_sec_wire", Better::Neither),
            ("cpu_per_msg_us", Better::Lower),
            ("receipt_after_round.p99_ms", Better::Lower),
            ("delivered", Better::Higher),
            ("writers", Better::Setting),
            ("bytes", Better::Setting),
        ] {
            assert_eq!(better(figure), want, "{figure}");
        }
    }

    #[test]
    fn judges_each_figure_against_the_threshold() {
        let old = json!({"scenario": "zipf", "users": 100, "elapsed_secs": 3, "requests_per_sec": 1000.0,
            "latency": {"p50_ms": 1.0, "p99_ms": 10.0}, "failed": {}, "ok": 500, "gone": 1});
        let new = json!({"scenario": "zipf", "users": 200, "elapsed_secs": 9, "requests_per_sec": 1200.0,
            "latency": {"p50_ms": 1.05, "p99_ms": 12.5}, "failed": {"timeout": 3}, "ok": 500, "fresh": 2});
        let c = compare(&old, &new, 10.0).unwrap();
        assert_eq!(row(&c, "requests_per_sec").verdict, Verdict::Improvement);
        assert_eq!(row(&c, "latency.p50_ms").verdict, Verdict::Same);
        let p99 = row(&c, "latency.p99_ms");
        assert_eq!((p99.verdict, p99.change(), p99.percent()), (Verdict::Regression, Some(2.5), Some(25.0)));
        // A failure reason that is new counts from 0, so it is a regression, not "only in new".
        let t = row(&c, "failed.timeout");
        assert_eq!((t.old, t.new, t.verdict, t.percent()), (Some(0.0), Some(3.0), Verdict::Regression, None));
        assert_eq!(row(&c, "users").verdict, Verdict::Differs);
        assert_eq!(row(&c, "elapsed_secs").verdict, Verdict::Unjudged);
        assert_eq!(row(&c, "ok").verdict, Verdict::Same);
        assert_eq!((row(&c, "gone").verdict, row(&c, "fresh").verdict), (Verdict::OnlyOld, Verdict::OnlyNew));
        assert_eq!((c.count(Verdict::Regression), c.count(Verdict::Improvement)), (2, 1));
        // A tighter threshold judges the small change too.
        assert_eq!(row(&compare(&old, &new, 1.0).unwrap(), "latency.p50_ms").verdict, Verdict::Regression);

        let table = c.table("old.json", "new.json");
        let p99_line = table.lines().find(|l| l.contains("latency.p99_ms")).unwrap();
        assert!(p99_line.contains("+2.5") && p99_line.contains("+25.0 %") && p99_line.ends_with("REGRESSION"));
        assert!(table.lines().last().unwrap().contains("2 regressions, 1 improvements, 1 settings differ"));
    }

    #[test]
    fn refuses_different_scenarios_and_non_summaries() {
        let err = compare(&json!({"scenario": "idle"}), &json!({"scenario": "zipf"}), 10.0).unwrap_err();
        assert!(err.contains("idle") && err.contains("zipf"));
        assert!(compare(&json!([1]), &json!({}), 10.0).is_err());
    }

    #[test]
    fn numbers_print_short() {
        assert_eq!(
            (num(5.0), num(5.1), num(0.751234), num(-0.0001)),
            ("5".into(), "5.1".into(), "0.751".into(), "0".into())
        );
    }
}
