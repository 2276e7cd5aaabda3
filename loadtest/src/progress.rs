//! The live progress line (`[idle] connecting 4512/10000 (45%), 3 failed, 12.3 s`),
//! redrawn in place on stdout while a run goes on — only when stdout is a terminal and
//! `CI` is not `true`, so files, pipes and CI logs get the summary alone.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// How often the line is redrawn.
const REDRAW: Duration = Duration::from_millis(200);
/// Erase the current terminal line and go back to its start.
const CLEAR: &str = "\r\x1b[2K";

/// A cloneable handle: scenarios count finished items on it; a ticker task draws.
#[derive(Clone)]
pub struct Progress {
    shared: Arc<Shared>,
}

struct Shared {
    scenario: &'static str,
    started: Instant,
    /// Phase name and its number of items (0: not counted, only the time is shown).
    phase: Mutex<(String, usize)>,
    done: AtomicUsize,
    failed: AtomicUsize,
    draw: bool,
    /// Something is on the line and must be erased before other output.
    drawn: AtomicBool,
    finished: AtomicBool,
}

/// Whether to draw: a terminal, and not CI.
pub fn should_draw(stdout_is_terminal: bool, ci: Option<&str>) -> bool {
    stdout_is_terminal && !ci.is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

impl Progress {
    /// Starts the line for `scenario` (drawing only when [`should_draw`] says so).
    pub fn start(scenario: &'static str) -> Self {
        let draw = should_draw(std::io::stdout().is_terminal(), std::env::var("CI").ok().as_deref());
        let p = Self::new(scenario, draw);
        if draw {
            let p = p.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(REDRAW);
                while !p.shared.finished.load(Ordering::Relaxed) {
                    tick.tick().await;
                    p.redraw();
                }
            });
        }
        p
    }

    /// A handle that counts but never draws (child processes, tests).
    pub fn silent(scenario: &'static str) -> Self {
        Self::new(scenario, false)
    }

    fn new(scenario: &'static str, draw: bool) -> Self {
        Self {
            shared: Arc::new(Shared {
                scenario,
                started: Instant::now(),
                phase: Mutex::new((String::new(), 0)),
                done: AtomicUsize::new(0),
                failed: AtomicUsize::new(0),
                draw,
                drawn: AtomicBool::new(false),
                finished: AtomicBool::new(false),
            }),
        }
    }

    /// Begins a phase of `total` items (0 if it has no count), resetting the counts.
    pub fn phase(&self, name: &str, total: usize) {
        if let Ok(mut p) = self.shared.phase.lock() {
            *p = (name.to_owned(), total);
        }
        self.set(0, 0);
    }

    /// One item finished, successfully or not.
    pub fn item(&self, ok: bool) {
        self.shared.done.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.shared.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sets the counts (a parent summing its children's).
    pub fn set(&self, done: usize, failed: usize) {
        self.shared.done.store(done, Ordering::Relaxed);
        self.shared.failed.store(failed, Ordering::Relaxed);
    }

    /// `(done, failed)` in the current phase.
    pub fn counts(&self) -> (usize, usize) {
        (self.shared.done.load(Ordering::Relaxed), self.shared.failed.load(Ordering::Relaxed))
    }

    /// Prints a status message on stderr, on its own line below any progress.
    pub fn note(&self, msg: &str) {
        self.clear();
        eprintln!("{msg}");
    }

    /// Stops drawing and erases the line; call before printing the summary.
    pub fn finish(&self) {
        self.shared.finished.store(true, Ordering::Relaxed);
        self.clear();
    }

    fn clear(&self) {
        if self.shared.drawn.swap(false, Ordering::Relaxed) {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(CLEAR.as_bytes());
            let _ = out.flush();
        }
    }

    fn redraw(&self) {
        if !self.shared.draw || self.shared.finished.load(Ordering::Relaxed) {
            return;
        }
        let line = self.line(self.shared.started.elapsed());
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "{CLEAR}{line}");
        let _ = out.flush();
        self.shared.drawn.store(true, Ordering::Relaxed);
    }

    /// The text of the line after `elapsed`.
    fn line(&self, elapsed: Duration) -> String {
        let (phase, total) = self.shared.phase.lock().map(|p| p.clone()).unwrap_or_default();
        let (done, failed) = self.counts();
        let mut s = format!("[{}] {phase}", self.shared.scenario);
        if let Some(pct) = (done * 100).checked_div(total) {
            s.push_str(&format!(" {done}/{total} ({pct}%)"));
        }
        if failed > 0 {
            s.push_str(&format!(", {failed} failed"));
        }
        s.push_str(&format!(", {:.1} s", elapsed.as_secs_f64()));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_off_a_terminal_and_in_ci() {
        assert!(should_draw(true, None));
        assert!(should_draw(true, Some("false")));
        assert!(!should_draw(true, Some("true")));
        assert!(!should_draw(true, Some("TRUE")));
        assert!(!should_draw(false, None));
    }

    #[test]
    fn line_shows_scenario_phase_count_and_time() {
        let p = Progress::silent("idle");
        p.phase("connecting", 200);
        for ok in [true, true, false] {
            p.item(ok);
        }
        assert_eq!(p.line(Duration::from_millis(12_340)), "[idle] connecting 3/200 (1%), 1 failed, 12.3 s");
        p.phase("holding", 0);
        assert_eq!(p.line(Duration::from_secs(2)), "[idle] holding, 2.0 s");
        p.finish();
    }
}
