//! Write latency of the store under concurrent writers, without HTTP in the way: the
//! store benchmark (`scripts/bench-store`, scenario `writes`) runs it on a fresh database.
//!
//! `--writers` tasks each create users and issue each one a session (the two writes of
//! the load tool's setup; `issue_session` also reads the user back), until `--users`
//! users exist. Every call is timed from the caller's side, so a wait for a pooled
//! connection counts as much as a wait inside SQLite. Prints one JSON object.
//!
//! Usage: write_latency --url URL [--writers 16] [--users 10000] [--max-connections 10]
//! URL is `postgres://…` or `sqlite:<file>`; the database should be empty.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rendezvous_bus::Bus;
use rendezvous_store::{DatabaseConfig, NewUser, Store, StoreConfig};

struct Args {
    url: String,
    writers: usize,
    users: usize,
    max_connections: u32,
}

fn parse() -> Result<Args, String> {
    let mut args = Args { url: String::new(), writers: 16, users: 10_000, max_connections: 10 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |v: &str| v.parse::<usize>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--url" => args.url = value,
            "--writers" => args.writers = number(&value)?,
            "--users" => args.users = number(&value)?,
            "--max-connections" => {
                args.max_connections = u32::try_from(number(&value)?).map_err(|e| format!("{flag}: {e}"))?
            }
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if args.url.is_empty() || args.writers == 0 || args.users == 0 || args.max_connections == 0 {
        return Err("usage: write_latency --url URL [--writers N>0] [--users N>0] [--max-connections N>0]".into());
    }
    Ok(args)
}

/// The `q` quantile (0..=1) of sorted samples, in milliseconds (nearest rank).
fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse()?;
    let db = DatabaseConfig {
        url: Some(args.url.clone()),
        max_connections: args.max_connections,
        ..DatabaseConfig::default()
    };
    let store = Store::open(&db, StoreConfig::default(), Bus::in_process("write-latency", &Default::default())).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.writers {
        let (store, next, users) = (store.clone(), next.clone(), args.users);
        tasks.push(tokio::spawn(async move {
            let (mut samples, mut failures) = (Vec::new(), Vec::new());
            while next.fetch_add(1, Ordering::Relaxed) < users {
                let t = Instant::now();
                let user = store.create_user(NewUser { display_name: "bench".into(), ..NewUser::default() }).await;
                samples.push(t.elapsed());
                let id = match user {
                    Ok(u) => u.id,
                    Err(e) => {
                        failures.push(e.to_string());
                        continue;
                    }
                };
                let t = Instant::now();
                let issued = store.issue_session(&id, None, None, None).await;
                samples.push(t.elapsed());
                if let Err(e) = issued {
                    failures.push(e.to_string());
                }
            }
            (samples, failures)
        }));
    }
    let (mut samples, mut failures) = (Vec::new(), std::collections::BTreeMap::<String, usize>::new());
    for t in tasks {
        let (s, f) = t.await?;
        samples.extend(s);
        for reason in f {
            *failures.entry(reason).or_default() += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    samples.sort_unstable();
    let report = serde_json::json!({
        "scenario": "writes",
        "writers": args.writers,
        "users": args.users,
        "writes": samples.len(),
        "failed": failures.values().sum::<usize>(),
        "failure_reasons": failures,
        "secs": secs,
        "writes_per_sec": samples.len() as f64 / secs.max(1e-9),
        "latency_ms": {
            "p50": quantile_ms(&samples, 0.50),
            "p90": quantile_ms(&samples, 0.90),
            "p99": quantile_ms(&samples, 0.99),
            "p999": quantile_ms(&samples, 0.999),
            "max": quantile_ms(&samples, 1.0),
        },
        "over_1s": samples.iter().filter(|d| d.as_secs_f64() > 1.0).count(),
        "pool": serde_json::to_value(store.stats().pool)?,
    });
    println!("{report}");
    Ok(())
}
