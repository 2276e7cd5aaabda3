//! Unix milliseconds on tokio's clock, so deadlines, cooldowns and wait times follow
//! `tokio::time::pause()` in tests while staying wall-clock times in production.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

static BASE: OnceLock<(i64, Instant)> = OnceLock::new();

/// Unix ms now: the wall clock read once, advanced by tokio's monotonic clock.
pub fn now_ms() -> i64 {
    let (wall, at) = *BASE.get_or_init(|| {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        (wall, Instant::now())
    });
    wall + Instant::now().saturating_duration_since(at).as_millis() as i64
}

/// Unix seconds now (TURN credential expiry).
pub(crate) fn now_unix_secs() -> u64 {
    (now_ms() / 1000).max(0) as u64
}
