//! Running `n` numbered jobs on a fixed number of workers, each with its own state
//! (a kept-alive HTTP connection, say), until they are done or a deadline passes.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

/// How long after the deadline a job already started may still finish (every job is
/// bounded by its own timeouts, well under this).
const GRACE: Duration = Duration::from_secs(20);

/// The outcome of [`run`].
pub struct Done<T> {
    /// Result of job `i` at index `i`; `None` if it never ran (deadline).
    pub results: Vec<Option<T>>,
    /// From the first job's start to the last job's end.
    pub secs: f64,
}

/// Runs jobs `0..n`, each on the next free worker, never starting one after `deadline`.
/// `job(state, i)` hands the worker's state back with its result.
pub async fn run<S, T, F, Fut>(n: usize, states: Vec<S>, deadline: Instant, job: F) -> Done<T>
where
    S: Send + 'static,
    T: Send + 'static,
    F: Fn(S, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = (S, T)> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let job = Arc::new(job);
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for mut state in states {
        let (next, job) = (next.clone(), job.clone());
        workers.spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n || Instant::now() >= deadline {
                    break;
                }
                let (s, t) = job(state, i).await;
                state = s;
                out.push((i, t));
            }
            out
        });
    }
    let mut results: Vec<Option<T>> = (0..n).map(|_| None).collect();
    loop {
        match tokio::time::timeout_at(deadline + GRACE, workers.join_next()).await {
            Ok(Some(Ok(out))) => {
                for (i, t) in out {
                    results[i] = Some(t);
                }
            }
            Ok(Some(Err(_))) => {}
            Ok(None) => break,
            Err(_) => {
                workers.abort_all();
                break;
            }
        }
    }
    Done { results, secs: started.elapsed().as_secs_f64() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_job_runs_once() {
        let done = run(100, vec![0usize; 7], Instant::now() + Duration::from_secs(5), |count, i| async move {
            tokio::task::yield_now().await;
            (count + 1, i * 2)
        })
        .await;
        assert_eq!(done.results.len(), 100);
        assert!(done.results.iter().enumerate().all(|(i, r)| *r == Some(i * 2)));
    }

    #[tokio::test]
    async fn nothing_starts_after_the_deadline() {
        let done = run(10, vec![(); 2], Instant::now(), |s, i| async move { (s, i) }).await;
        assert!(done.results.iter().all(Option::is_none));
    }
}
