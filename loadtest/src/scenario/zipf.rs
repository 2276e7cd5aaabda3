//! The `zipf` scenario: profile reads with a skewed popularity, to see how well the user
//! LRU (and the query cache behind it) serve them.
//!
//! Setup creates `--users` users through the app API. A seeded permutation assigns each
//! user a popularity rank; `--reads` ids are drawn from Zipf(`--zipf-s`) over the ranks
//! up front, then read with `GET /api/users/{id}` over `--concurrency` kept-alive
//! connections. `/health` before and after the reads gives the cache hit rates.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::cache::{Deltas, Snapshot};
use crate::cli::ZipfArgs;
use crate::dist::{Rng, Zipf};
use crate::http::Api;
use crate::pool;
use crate::progress::Progress;
use crate::report::Latency;
use crate::scenario::setup::{self, SetupReport};
use crate::summary;

/// The whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub users: usize,
    pub reads: usize,
    pub zipf_s: f64,
    pub seed: u64,
    pub concurrency: usize,
    pub setup: SetupReport,
    /// Distinct users among the reads.
    pub distinct_users_read: usize,
    /// Share of the Zipf mass on the `user_cache_capacity` most popular users: what a
    /// cache that always held exactly those would hit (cold misses aside).
    pub top_capacity_mass: f64,
    pub ok: usize,
    pub failed: BTreeMap<String, usize>,
    pub secs: f64,
    pub requests_per_sec: f64,
    pub latency: Latency,
    /// `/health` cache counters over the reads, after minus before.
    pub cache: Option<Deltas>,
    pub elapsed_secs: f64,
}

pub async fn run(args: &ZipfArgs, deadline: Instant) -> ExitCode {
    let started = Instant::now();
    let url = args.target.health_url(args.store.health_url.as_ref());
    let capacity = match Snapshot::take(&url).await {
        Ok(s) => s.users.capacity as usize,
        Err(e) => {
            eprintln!("rendezvous-loadtest: {e}");
            return ExitCode::FAILURE;
        }
    };
    let progress = Progress::start("zipf");
    let made = setup::make_users(&args.target, &args.store, args.users, false, &progress, deadline).await;
    let n = made.user_ids.len();
    if n == 0 {
        progress.finish();
        eprintln!("rendezvous-loadtest: setup created no users");
        return ExitCode::FAILURE;
    }
    let zipf = match Zipf::new(n, args.zipf_s) {
        Ok(z) => z,
        Err(e) => {
            progress.finish();
            eprintln!("rendezvous-loadtest: {e}");
            return ExitCode::FAILURE;
        }
    };
    let sequence = draw(&zipf, n, args.reads, args.seed);
    let distinct = {
        let mut seen = vec![false; n];
        sequence.iter().filter(|&&u| !std::mem::replace(&mut seen[u as usize], true)).count()
    };

    let ids = Arc::new(made.user_ids);
    let sequence = Arc::new(sequence);
    let addr = args.target.addr();
    let states = (0..args.concurrency).map(|_| Api::new(addr, &args.store.api_key)).collect();
    let before = Snapshot::take(&url).await;
    progress.phase("reads", args.reads);
    let job_progress = progress.clone();
    let done = pool::run(args.reads, states, deadline, move |mut api, i| {
        let (ids, sequence, progress) = (ids.clone(), sequence.clone(), job_progress.clone());
        async move {
            let t0 = Instant::now();
            let r = api.get_user(&ids[sequence[i] as usize]).await.map(|()| t0.elapsed().as_micros() as u64);
            progress.item(r.is_ok());
            (api, r)
        }
    })
    .await;
    let after = Snapshot::take(&url).await;
    progress.finish();

    let mut failed = BTreeMap::new();
    let mut latencies = Vec::with_capacity(args.reads);
    for r in done.results {
        match r {
            Some(Ok(us)) => latencies.push(us),
            Some(Err(reason)) => *failed.entry(reason).or_default() += 1,
            None => *failed.entry("not started before --max-secs".into()).or_default() += 1,
        }
    }
    let cache = match (before, after) {
        (Ok(b), Ok(a)) => Some(b.delta_to(&a)),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("warning: {e}");
            None
        }
    };
    let report = Report {
        scenario: "zipf".into(),
        users: n,
        reads: args.reads,
        zipf_s: args.zipf_s,
        seed: args.seed,
        concurrency: args.concurrency,
        setup: made.report,
        distinct_users_read: distinct,
        top_capacity_mass: zipf.mass_of_top(capacity),
        ok: latencies.len(),
        failed,
        secs: done.secs,
        requests_per_sec: latencies.len() as f64 / done.secs.max(1e-9),
        latency: Latency::of(&mut latencies),
        cache,
        elapsed_secs: started.elapsed().as_secs_f64(),
    };
    if let Err(e) = summary::emit(&args.output, &report, &table(&report)) {
        eprintln!("rendezvous-loadtest: {e}");
        return ExitCode::FAILURE;
    }
    let all_good = report.failed.is_empty() && report.setup.failed.is_empty() && report.cache.is_some();
    if all_good { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// `reads` user indexes: Zipf ranks mapped through a seeded permutation of `0..n`.
fn draw(zipf: &Zipf, n: usize, reads: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    let mut by_rank: Vec<u32> = (0..n as u32).collect();
    rng.shuffle(&mut by_rank);
    (0..reads).map(|_| by_rank[zipf.sample(&mut rng)]).collect()
}

fn table(r: &Report) -> String {
    use std::fmt::Write;
    let mut t = String::new();
    let mut row = |k: &str, v: String| {
        let _ = writeln!(t, "  {k:<30} {v}");
    };
    row("scenario", r.scenario.clone());
    row("users / reads / s / seed", format!("{} / {} / {} / {}", r.users, r.reads, r.zipf_s, r.seed));
    row("setup", format!("{} users in {:.1} s", r.setup.users_created, r.setup.secs));
    row("distinct users read", r.distinct_users_read.to_string());
    row("Zipf mass of cache-sized top", format!("{:.1} %", r.top_capacity_mass * 100.0));
    row("reads ok", format!("{} in {:.2} s = {:.0} requests/s", r.ok, r.secs, r.requests_per_sec));
    for (reason, n) in &r.failed {
        row(&format!("  failed: {reason}"), n.to_string());
    }
    let l = r.latency;
    row("latency p50/p99/max", format!("{:.2} / {:.2} / {:.2} ms", l.p50_ms, l.p99_ms, l.max_ms));
    if let Some(d) = &r.cache {
        row("cache.users", d.users.summary());
        row("cache.queries", format!("{}, loads {}", d.queries.summary(), d.queries.loads));
    }
    row("elapsed", format!("{:.2} s", r.elapsed_secs));
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_seeded_and_skewed() {
        let z = Zipf::new(1000, 1.0).unwrap();
        let a = draw(&z, 1000, 20_000, 5);
        assert_eq!(a, draw(&z, 1000, 20_000, 5));
        assert_ne!(a, draw(&z, 1000, 20_000, 6));
        let mut counts = vec![0usize; 1000];
        for &u in &a {
            counts[u as usize] += 1;
        }
        counts.sort_unstable_by(|x, y| y.cmp(x));
        // The most popular user gets about 1 / H_1000 ≈ 13 % of the reads.
        let top = counts[0] as f64 / a.len() as f64;
        assert!((0.12..0.146).contains(&top), "top share {top}");
    }
}
