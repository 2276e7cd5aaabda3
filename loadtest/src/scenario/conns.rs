//! Opening the domain scenarios' connections: many at once, a bounded number of
//! handshakes in flight, each up to its `welcome`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use rendezvous_protocol::ServerMessage;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::connect::Target;
use crate::progress::Progress;
use crate::rawws::{self, Incoming, RawWs};

/// What [`open_all`] got.
pub struct Opened {
    /// Connection `i` (the index of its token), if it came up.
    pub conns: Vec<Option<RawWs>>,
    /// Failed attempts by reason.
    pub failed: BTreeMap<String, usize>,
    pub deflate_negotiated: usize,
    pub secs: f64,
}

impl Opened {
    pub fn connected(&self) -> usize {
        self.conns.iter().filter(|c| c.is_some()).count()
    }
}

/// Opens one connection per token (sources round-robin), `concurrency` handshakes at a
/// time; each finished attempt is an item on `progress`. Attempts still running at
/// `deadline` count as failed.
pub async fn open_all(
    target: &Target,
    sources: &[Ipv4Addr],
    tokens: &[String],
    concurrency: usize,
    progress: &Progress,
    deadline: Instant,
) -> Opened {
    let started = Instant::now();
    let target = Arc::new(target.clone());
    let sem = Arc::new(Semaphore::new(concurrency));
    let mut tasks = JoinSet::new();
    for (i, token) in tokens.iter().enumerate() {
        let (target, sem, token, source) = (target.clone(), sem.clone(), token.clone(), sources[i % sources.len()]);
        tasks.spawn(async move {
            let Ok(_permit) = sem.acquire_owned().await else { return (i, Err("closed".to_owned())) };
            (i, open_welcomed(&target, source, &token).await)
        });
    }
    let mut out = Opened {
        conns: (0..tokens.len()).map(|_| None).collect(),
        failed: BTreeMap::new(),
        deflate_negotiated: 0,
        secs: 0.0,
    };
    let mut seen = 0;
    while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, tasks.join_next()).await {
        seen += 1;
        match joined {
            Ok((i, Ok(ws))) => {
                progress.item(true);
                out.deflate_negotiated += usize::from(ws.deflate());
                out.conns[i] = Some(ws);
            }
            Ok((_, Err(reason))) => {
                progress.item(false);
                *out.failed.entry(reason).or_default() += 1;
            }
            Err(_) => *out.failed.entry("task failed".into()).or_default() += 1,
        }
    }
    tasks.abort_all();
    if seen < tokens.len() {
        *out.failed.entry("not finished before --max-secs".into()).or_default() += tokens.len() - seen;
    }
    out.secs = started.elapsed().as_secs_f64();
    out
}

/// Upgrades and waits for `welcome` (answering pings on the way).
async fn open_welcomed(target: &Target, source: Ipv4Addr, token: &str) -> Result<RawWs, String> {
    let opening = async {
        let mut ws = rawws::open(target, source, token).await?;
        loop {
            match ws.next().await? {
                Incoming::Text(t) => {
                    return match serde_json::from_str::<ServerMessage>(&t) {
                        Ok(ServerMessage::Welcome { .. }) => Ok(ws),
                        _ => Err("first message not welcome".into()),
                    };
                }
                Incoming::Ping(p) => ws.pong(&p).await?,
                Incoming::Close(code) => return Err(format!("closed before welcome ({code:?})")),
            }
        }
    };
    tokio::time::timeout(target.timeout, opening).await.unwrap_or_else(|_| Err("timeout".into()))
}

/// Adds `n` under `reason`.
pub fn count(map: &mut BTreeMap<String, usize>, reason: impl Into<String>, n: usize) {
    if n > 0 {
        *map.entry(reason.into()).or_default() += n;
    }
}

/// Collects what the simulated users' tasks return until `deadline` (counting each in
/// `progress` as `ok` says), then aborts those still running.
pub async fn collect<T: 'static>(
    tasks: &mut JoinSet<T>,
    deadline: Instant,
    progress: &Progress,
    ok: impl Fn(&T) -> bool,
) -> Vec<T> {
    let mut seen = Vec::with_capacity(tasks.len());
    while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, tasks.join_next()).await {
        if let Ok(s) = joined {
            progress.item(ok(&s));
            seen.push(s);
        }
    }
    tasks.abort_all();
    seen
}

/// Waits until `counter` reaches `target` or `until`, showing it in `progress` (a load
/// tool's progress line, polled every 100 ms); answers the count reached.
pub async fn wait_for_count(
    counter: &std::sync::atomic::AtomicUsize,
    target: usize,
    until: Instant,
    progress: &Progress,
) -> usize {
    use std::sync::atomic::Ordering;
    while counter.load(Ordering::Relaxed) < target && Instant::now() < until {
        progress.set(counter.load(Ordering::Relaxed), 0);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    counter.load(Ordering::Relaxed)
}
