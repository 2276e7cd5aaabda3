//! `--processes P`: the parent forks P copies of itself, each with its share of the
//! connections and source addresses, and coordinates them over stdin/stdout.
//!
//! A child prints JSON lines on stdout: its count of finished attempts now and then
//! (`progress`), one when its connections are up (`established`); it holds them until the
//! parent writes a line on its stdin (or its own deadline), then prints its tally (`done`)
//! and exits.

use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::cli::IdleArgs;
use crate::health::ServerSample;
use crate::progress::Progress;
use crate::report::Tally;
use crate::scenario::idle::{self, close_budget};

/// How often a child reports how far it is while connecting.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// One line a child writes on stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum ChildLine {
    Progress { done: usize, failed: usize },
    Established { connected: usize, failed: usize },
    Done { tally: Tally },
}

fn emit(line: &ChildLine) {
    // Stdout is the pipe to the parent; one line per message.
    println!("{}", serde_json::to_string(line).unwrap_or_default());
}

/// The child side.
pub async fn run_child(args: &IdleArgs, deadline: Instant) -> Tally {
    let progress = Progress::silent("idle");
    let reporter = {
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut last = (0, 0);
            loop {
                tokio::time::sleep(PROGRESS_EVERY).await;
                let (done, failed) = progress.counts();
                if (done, failed) != last {
                    last = (done, failed);
                    emit(&ChildLine::Progress { done, failed });
                }
            }
        })
    };
    let est = idle::connect_all(args, &progress, deadline).await;
    reporter.abort();
    let _ = reporter.await;
    emit(&ChildLine::Established { connected: est.tally.connected, failed: est.tally.failed.values().sum() });
    let hold_until = deadline - close_budget(args.max);
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    tokio::select! {
        // A line or EOF (the parent went away) both mean: close now.
        _ = stdin.next_line() => {}
        () = tokio::time::sleep_until(hold_until) => {}
    }
    let tally = est.close_all(&progress, deadline).await;
    emit(&ChildLine::Done { tally: tally.clone() });
    tally
}

struct Kid {
    child: Child,
    stdin: Option<ChildStdin>,
    share: usize,
    /// Finished attempts and failures so far, from its `progress` lines.
    counts: (usize, usize),
    done: Option<Tally>,
}

/// The parent side: returns the merged tally and the server sample.
pub async fn run_parent(
    args: &IdleArgs,
    progress: &Progress,
    deadline: Instant,
) -> Result<(Tally, Option<ServerSample>), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    // Children stop a little before the parent does.
    let child_max = args.max.saturating_sub(Duration::from_secs(2));
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, ChildLine)>();
    let mut kids = Vec::with_capacity(args.processes);
    progress.phase("connecting", args.connections);
    for i in 0..args.processes {
        let argv = args.child_argv(i, child_max);
        let share = args.share_of(i);
        let mut child = Command::new(&exe)
            .args(&argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start child {i}: {e}"))?;
        let stdout = child.stdout.take().ok_or("child has no stdout")?;
        let stdin = child.stdin.take();
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<ChildLine>(&line) {
                    Ok(msg) => {
                        let _ = tx.send((i, msg));
                    }
                    Err(_) => eprintln!("child {i}: {line}"),
                }
            }
        });
        kids.push(Kid { child, stdin, share, counts: (0, 0), done: None });
    }
    drop(tx);

    let hold_until = deadline - close_budget(args.max);
    let mut up = 0;
    let (mut connected, mut failed) = (0, 0);
    while up < kids.len() {
        match tokio::time::timeout_at(hold_until, rx.recv()).await {
            Ok(Some((i, ChildLine::Progress { done, failed: f }))) => {
                kids[i].counts = (done, f);
                show_counts(&kids, progress);
            }
            Ok(Some((i, ChildLine::Established { connected: c, failed: f }))) => {
                up += 1;
                connected += c;
                failed += f;
                kids[i].counts = (c + f, f);
                show_counts(&kids, progress);
            }
            Ok(Some((i, ChildLine::Done { tally }))) => {
                up += 1;
                kids[i].done = Some(tally);
            }
            Ok(None) | Err(_) => break,
        }
    }
    progress.note(&format!("{up}/{} processes established: {connected} connected, {failed} failed", kids.len()));
    let sample = idle::settle_and_sample(args, progress, hold_until).await;
    progress.phase("closing", args.processes);

    for kid in &mut kids {
        if let Some(mut stdin) = kid.stdin.take() {
            let _ = stdin.write_all(b"release\n").await;
        }
    }
    while kids.iter().any(|k| k.done.is_none()) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((i, ChildLine::Done { tally }))) => {
                progress.item(true);
                kids[i].done = Some(tally);
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let mut total = Tally::default();
    for kid in &mut kids {
        match kid.done.take() {
            Some(t) => total.merge(t),
            None => {
                total.target += kid.share;
                *total.failed.entry("child process gave no result".into()).or_default() += kid.share;
            }
        }
        let bound = deadline.max(Instant::now()) + Duration::from_secs(1);
        if tokio::time::timeout_at(bound, kid.child.wait()).await.is_err() {
            let _ = kid.child.kill().await;
        }
    }
    Ok((total, sample))
}

/// The children's counts, summed, on the parent's progress line.
fn show_counts(kids: &[Kid], progress: &Progress) {
    let (done, failed) = kids.iter().fold((0, 0), |(d, f), k| (d + k.counts.0, f + k.counts.1));
    progress.set(done, failed);
}

impl IdleArgs {
    /// The arguments a child process gets: its share of connections, rate and sources.
    pub fn child_argv(&self, index: usize, max: Duration) -> Vec<String> {
        let p = self.processes;
        let share = self.connections / p + usize::from(index < self.connections % p);
        let sources = self.sources_of(index);
        let mut v: Vec<String> = vec![
            "idle".into(),
            "--child".into(),
            index.to_string(),
            "--host".into(),
            self.target.host.to_string(),
            "--port".into(),
            self.target.port.to_string(),
            "--path".into(),
            self.path.clone(),
            "--connections".into(),
            share.to_string(),
            "--sources".into(),
            sources.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            "--concurrency".into(),
            self.concurrency.to_string(),
            "--rate".into(),
            (self.rate / p as f64).to_string(),
            "--user-prefix".into(),
            self.user_prefix.clone(),
            "--connect-timeout-secs".into(),
            self.connect_timeout.as_secs_f64().to_string(),
            // The parent decides when to sample and release; the child only needs the bound.
            "--max-secs".into(),
            max.as_secs_f64().to_string(),
        ];
        if self.deflate {
            v.push("--deflate".into());
        }
        v
    }

    /// Connections process `index` opens (what [`Self::child_argv`] gives it).
    pub fn share_of(&self, index: usize) -> usize {
        self.connections / self.processes + usize::from(index < self.connections % self.processes)
    }

    /// Source addresses of process `index`: a share of the list when there are enough
    /// addresses to go round, otherwise one address shared with other processes.
    pub fn sources_of(&self, index: usize) -> Vec<Ipv4Addr> {
        let (p, all) = (self.processes, self.sources.addrs());
        if all.len() >= p { all.iter().skip(index).step_by(p).copied().collect() } else { vec![all[index % all.len()]] }
    }

    /// This process's number in user ids (0 for a single process).
    pub fn process_index(&self) -> usize {
        self.child.unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {

    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn idle(s: &str) -> IdleArgs {
        match Cli::try_parse_from(["rendezvous-loadtest", "idle"].into_iter().chain(s.split_whitespace())) {
            Ok(Cli { command: Command::Idle(a) }) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sources_are_shared_out_and_children_parse_back() {
        let a = idle("--source-count 4 --processes 2 --connections 5 --deflate --rate 10");
        assert_eq!(a.sources.addrs().len(), 4);
        assert_eq!(a.sources_of(0), vec![Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 4)]);
        assert_eq!(a.sources_of(1), vec![Ipv4Addr::new(127, 0, 0, 3), Ipv4Addr::new(127, 0, 0, 5)]);
        let b = idle("--sources 127.0.0.2 --processes 3");
        assert_eq!(b.sources_of(2), vec![Ipv4Addr::new(127, 0, 0, 2)]);
        let argv = a.child_argv(0, Duration::from_secs(30));
        let Command::Idle(child) = Cli::try_parse_from(std::iter::once("x".to_owned()).chain(argv)).unwrap().command
        else {
            panic!("child argv is not idle");
        };
        assert_eq!((child.child, child.connections, a.share_of(0), a.share_of(1)), (Some(0), 3, 3, 2));
        assert_eq!(child.sources.addrs(), a.sources_of(0));
        assert_eq!((child.rate, child.deflate, child.max), (5.0, true, Duration::from_secs(30)));
    }
}
