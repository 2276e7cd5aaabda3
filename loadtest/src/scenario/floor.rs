//! `floor`: what the kernel alone charges to deliver one message over loopback TCP, with no
//! WebSocket framing, JSON, async runtime or server — the floor under the presence fan-out.
//!
//! `--writers` threads write `--bytes` to each of `--conns` accepted sockets in turn
//! (blocking, `TCP_NODELAY`, an equal share each), as a presence tick's recipients are
//! written by the runtime's worker threads; another thread reads the other ends through
//! epoll (mio), as a client process would. Every round starts
//! after `--pause-ms`, so the sockets have gone cold as they do between two ticks. Thread CPU
//! clocks give the CPU per write and per read; the reader stamps when each socket's message
//! is complete, measured from the round's start (the analogue of the presence lag after the
//! tick, for a sender that does nothing else). On loopback the receive side's TCP work runs
//! in the writer's system call, so the write figure includes it.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use serde::{Deserialize, Serialize};

use crate::cli::FloorArgs;
use crate::report::Latency;
use crate::summary;

/// Open files the process needs besides two per connection (listener, epoll, stdio, slack).
const SPARE_FILES: u64 = 32;

/// What one run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FloorReport {
    pub scenario: String,
    pub conns: u64,
    pub bytes: u64,
    pub rounds: u64,
    pub writers: u64,
    /// Messages that arrived whole, of `conns × rounds`.
    pub delivered: u64,
    /// Writer threads' CPU per message (µs): the write, and on loopback the receive-side TCP work.
    pub write_cpu_per_msg_us: f64,
    /// Reader thread CPU per message (µs): epoll and the read.
    pub read_cpu_per_msg_us: f64,
    /// Both together: the CPU one delivered message costs the machine at the least.
    pub cpu_per_msg_us: f64,
    /// One round's writes, wall time (ms), median over rounds.
    pub write_wall_median_ms: f64,
    /// When each message was complete at the reader, after its round started (ms).
    pub receipt_after_round: Latency,
}

/// Thread CPU time so far.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec.max(0) as u64, t.tv_nsec.clamp(0, 999_999_999) as u32)
}

/// Runs the scenario and prints its summary.
pub fn run(args: &FloorArgs) -> ExitCode {
    match measure(args).and_then(|r| summary::emit(&args.output, &r, &table(&r)).map(|()| r)) {
        Ok(r) if r.delivered == r.conns * r.rounds => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("rendezvous-loadtest floor: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Sets up the socket pairs, runs the rounds and returns the figures.
pub fn measure(args: &FloorArgs) -> Result<FloorReport, String> {
    let conns = args.conns;
    let need = 2 * conns as u64 + SPARE_FILES;
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let (soft, hard) = (limit.current.unwrap_or(u64::MAX), limit.maximum.unwrap_or(u64::MAX));
    if need > soft {
        if need > hard {
            return Err(format!(
                "--conns {conns} needs {need} open files (two per connection); this process may open at most \
                 {hard} (ulimit -Hn): lower --conns"
            ));
        }
        let raised = rustix::process::Rlimit { current: Some(need), maximum: limit.maximum };
        rustix::process::setrlimit(rustix::process::Resource::Nofile, raised)
            .map_err(|e| format!("cannot raise the open-file limit to {need}: {e}"))?;
    }
    let deadline = Instant::now() + args.max;
    let listener = TcpListener::bind(SocketAddr::from((args.host, 0))).map_err(|e| format!("listen: {e}"))?;
    let addr = listener.local_addr().map_err(|e| format!("listen: {e}"))?;
    let (mut writers, mut readers) = (Vec::with_capacity(conns), Vec::with_capacity(conns));
    for i in 0..conns {
        let client = TcpStream::connect(addr).map_err(|e| format!("connect {i} of {conns}: {e}"))?;
        let (server, _) = listener.accept().map_err(|e| format!("accept {i} of {conns}: {e}"))?;
        for s in [&client, &server] {
            s.set_nodelay(true).map_err(|e| format!("TCP_NODELAY: {e}"))?;
        }
        client.set_nonblocking(true).map_err(|e| format!("non-blocking: {e}"))?;
        writers.push(server);
        readers.push(mio::net::TcpStream::from_std(client));
        if Instant::now() >= deadline {
            return Err(format!("--max-secs passed while opening connections ({i} of {conns})"));
        }
    }
    let starts: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let reader = {
        let (starts, bytes, rounds) = (starts.clone(), args.bytes, args.rounds);
        std::thread::Builder::new()
            .name("floor-reader".into())
            .spawn(move || read_all(readers, bytes, rounds, &starts, deadline))
            .map_err(|e| format!("cannot start the reader thread: {e}"))?
    };
    let message = vec![b'x'; args.bytes];
    let (mut write_cpu, mut walls) = (Duration::ZERO, Vec::with_capacity(args.rounds));
    let mut failure = None;
    let share = conns.div_ceil(args.writers);
    for _ in 0..args.rounds {
        std::thread::sleep(args.pause);
        let t0 = Instant::now();
        starts.lock().unwrap_or_else(|e| e.into_inner()).push(t0);
        // Each writer thread writes its share of the sockets in turn, as a runtime's workers do.
        let results: Vec<Result<Duration, String>> = std::thread::scope(|scope| {
            let handles: Vec<_> = writers
                .chunks_mut(share)
                .map(|chunk| {
                    let message = &message;
                    scope.spawn(move || {
                        let cpu0 = thread_cpu();
                        for w in chunk {
                            w.write_all(message).map_err(|e| format!("write: {e}"))?;
                        }
                        Ok(thread_cpu() - cpu0)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("a writer thread panicked".into()))).collect()
        });
        walls.push(t0.elapsed());
        for r in results {
            match r {
                Ok(cpu) => write_cpu += cpu,
                Err(e) => failure = Some(e),
            }
        }
        if failure.is_none() && Instant::now() >= deadline {
            failure = Some("--max-secs passed while writing".into());
        }
        if failure.is_some() {
            break;
        }
    }
    if failure.is_some() {
        // The reader stops once every socket has ended (or at the deadline).
        drop(writers);
    }
    let mut read = reader.join().map_err(|_| "the reader thread panicked".to_string())??;
    if let Some(e) = failure {
        return Err(e);
    }
    walls.sort_unstable();
    let sent = (conns * args.rounds) as f64;
    let per_msg = |d: Duration| d.as_secs_f64() * 1e6 / sent;
    let (write_us, read_us) = (per_msg(write_cpu), per_msg(read.cpu));
    Ok(FloorReport {
        scenario: "floor".into(),
        conns: conns as u64,
        bytes: args.bytes as u64,
        rounds: args.rounds as u64,
        writers: args.writers as u64,
        delivered: read.receipts_us.len() as u64,
        write_cpu_per_msg_us: write_us,
        read_cpu_per_msg_us: read_us,
        cpu_per_msg_us: write_us + read_us,
        write_wall_median_ms: walls.get(walls.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1e3),
        receipt_after_round: Latency::of(&mut read.receipts_us),
    })
}

struct Received {
    cpu: Duration,
    /// Per complete message: µs after its round started.
    receipts_us: Vec<u64>,
}

/// Reads every socket until each has had `rounds` messages of `bytes` (or the deadline).
fn read_all(
    mut socks: Vec<mio::net::TcpStream>,
    bytes: usize,
    rounds: usize,
    starts: &Mutex<Vec<Instant>>,
    deadline: Instant,
) -> Result<Received, String> {
    let mut poll = Poll::new().map_err(|e| format!("epoll: {e}"))?;
    for (i, s) in socks.iter_mut().enumerate() {
        poll.registry().register(s, Token(i), Interest::READABLE).map_err(|e| format!("epoll add: {e}"))?;
    }
    let total = socks.len() * rounds;
    let mut got = vec![0usize; socks.len()];
    let (mut ended, mut eof) = (0usize, vec![false; socks.len()]);
    let mut receipts_us = Vec::with_capacity(total);
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    let cpu0 = thread_cpu();
    while receipts_us.len() < total && ended < socks.len() {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        match poll.poll(&mut events, Some((deadline - now).min(Duration::from_millis(200)))) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("epoll wait: {e}")),
        }
        for ev in &events {
            let i = ev.token().0;
            loop {
                match socks[i].read(&mut buf) {
                    Ok(0) => {
                        // The writer's end closed (it failed): nothing more will come.
                        if !std::mem::replace(&mut eof[i], true) {
                            ended += 1;
                        }
                        break;
                    }
                    Ok(n) => {
                        let before = got[i] / bytes;
                        got[i] += n;
                        let done = got[i] / bytes;
                        if done > before {
                            let starts = starts.lock().unwrap_or_else(|e| e.into_inner());
                            stamp(before..done, Instant::now(), &starts, &mut receipts_us);
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(format!("read: {e}")),
                }
            }
        }
    }
    Ok(Received { cpu: thread_cpu() - cpu0, receipts_us })
}

/// Records messages `rounds` of one socket, all complete at `at`: each measured from the
/// start of its own round (a socket's k-th message belongs to round k).
fn stamp(rounds: std::ops::Range<usize>, at: Instant, starts: &[Instant], out: &mut Vec<u64>) {
    for round in rounds {
        let start = starts.get(round).copied().unwrap_or(at);
        out.push(at.saturating_duration_since(start).as_micros() as u64);
    }
}

fn table(r: &FloorReport) -> String {
    let q = &r.receipt_after_round;
    format!(
        "floor: {} loopback TCP connections, {} B per message, {} rounds, {} writer threads\n\
         \x20 delivered                          {} / {}\n\
         \x20 CPU per message: write / read      {:.2} / {:.2} µs (together {:.2} µs)\n\
         \x20 one round's writes (median)        {:.1} ms\n\
         \x20 complete after the round p50/p99   {:.1} / {:.1} ms\n\
         \x20 so one tick to {} recipients needs {:.0} ms of CPU at least\n",
        r.conns,
        r.bytes,
        r.rounds,
        r.writers,
        r.delivered,
        r.conns * r.rounds,
        r.write_cpu_per_msg_us,
        r.read_cpu_per_msg_us,
        r.cpu_per_msg_us,
        r.write_wall_median_ms,
        q.p50_ms,
        q.p99_ms,
        r.conns,
        r.cpu_per_msg_us * r.conns as f64 / 1e3,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_arrives_whole_and_is_stamped_after_its_round() {
        let args = FloorArgs {
            conns: 40,
            bytes: 3000,
            rounds: 3,
            writers: 2,
            pause: Duration::from_millis(5),
            host: std::net::Ipv4Addr::new(127, 0, 0, 1),
            max: Duration::from_secs(60),
            output: Default::default(),
        };
        let r = measure(&args).unwrap();
        assert_eq!(r.delivered, 120);
        assert!(r.write_cpu_per_msg_us > 0.0 && r.read_cpu_per_msg_us > 0.0, "{r:?}");
        let text = table(&r);
        assert!(text.contains("120 / 120"), "{text}");
    }

    #[test]
    fn a_message_is_measured_from_the_start_of_its_own_round() {
        let t0 = Instant::now();
        let starts = [t0, t0 + Duration::from_millis(500), t0 + Duration::from_millis(1000)];
        let mut out = Vec::new();
        // Rounds 1 and 2 of one socket completed by one read, 1,003 ms after round 0 began.
        stamp(1..3, t0 + Duration::from_millis(1003), &starts, &mut out);
        assert_eq!(out, vec![503_000, 3_000]);
        // A round whose start is not recorded yet counts as complete on arrival.
        stamp(3..4, t0, &starts, &mut out);
        assert_eq!(out[2], 0);
    }

    #[test]
    fn too_many_connections_for_the_open_file_limit_is_a_clear_error() {
        let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .maximum
            .expect("RLIMIT_NOFILE has a finite hard limit on Linux (fs.nr_open)");
        let args = FloorArgs {
            conns: hard as usize,
            bytes: 1,
            rounds: 1,
            writers: 1,
            pause: Duration::ZERO,
            host: std::net::Ipv4Addr::new(127, 0, 0, 1),
            max: Duration::from_secs(5),
            output: Default::default(),
        };
        let e = measure(&args).unwrap_err();
        assert!(e.contains("open files") && e.contains("--conns"), "{e}");
    }
}
