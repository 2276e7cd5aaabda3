//! Rate limits: per-IP upgrade attempts and per-connection messages (governor),
//! on tokio's clock so tests can pause time.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::config::{ConnectRateConfig, MessageRateConfig};

/// governor's clock reading tokio's time, which `tokio::time::pause()` controls.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    type Instant = std::time::Instant;

    fn now(&self) -> Self::Instant {
        tokio::time::Instant::now().into_std()
    }
}

type Keyed = RateLimiter<IpAddr, DashMapStateStore<IpAddr>, TokioClock, NoOpMiddleware<std::time::Instant>>;
type Direct = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<std::time::Instant>>;

fn quota(per_period: Duration, burst: u32) -> Quota {
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(per_period).unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN)).allow_burst(burst)
}

/// Per-IP upgrade-attempt limiter. Its map only shrinks when [`ConnectLimiter::prune`] runs.
pub(crate) struct ConnectLimiter {
    limiter: Option<Keyed>,
}

impl ConnectLimiter {
    pub(crate) fn new(cfg: &ConnectRateConfig) -> Self {
        let limiter = (cfg.per_second > 0).then(|| {
            RateLimiter::new(
                quota(Duration::from_secs(1) / cfg.per_second, cfg.burst),
                DashMapStateStore::default(),
                TokioClock,
            )
        });
        Self { limiter }
    }

    /// `Err(wait)` when `ip` must wait before trying again.
    pub(crate) fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        match &self.limiter {
            None => Ok(()),
            Some(l) => l.check_key(&ip).map_err(|n| n.wait_time_from(TokioClock.now())),
        }
    }

    /// Drops state of addresses that are back to a full burst, and returns memory.
    pub(crate) fn prune(&self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// Addresses currently tracked.
    pub(crate) fn tracked(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }
}

/// What the message limiter says about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allow,
    /// Refuse this message with an error frame.
    Refuse,
    /// Refused too often: close with 4008.
    Close,
}

/// Per-connection message limiter plus a second limiter on how often the first refuses.
pub(crate) struct MessageLimiter {
    messages: Option<Direct>,
    violations: Direct,
}

impl MessageLimiter {
    pub(crate) fn new(cfg: &MessageRateConfig) -> Self {
        let messages = (cfg.per_second > 0).then(|| {
            RateLimiter::direct_with_clock(quota(Duration::from_secs(1) / cfg.per_second, cfg.burst), TokioClock)
        });
        let per = Duration::from_millis(cfg.violation_window_ms) / cfg.violations_before_close.max(1);
        let violations = RateLimiter::direct_with_clock(quota(per, cfg.violations_before_close), TokioClock);
        Self { messages, violations }
    }

    pub(crate) fn check(&self) -> Verdict {
        match &self.messages {
            None => Verdict::Allow,
            Some(l) if l.check().is_ok() => Verdict::Allow,
            Some(_) if self.violations.check().is_ok() => Verdict::Refuse,
            Some(_) => Verdict::Close,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn message_limit_refuses_then_closes_then_recovers() {
        let cfg =
            MessageRateConfig { per_second: 10, burst: 5, violations_before_close: 3, violation_window_ms: 10_000 };
        let l = MessageLimiter::new(&cfg);
        for _ in 0..5 {
            assert_eq!(l.check(), Verdict::Allow);
        }
        for _ in 0..3 {
            assert_eq!(l.check(), Verdict::Refuse);
        }
        assert_eq!(l.check(), Verdict::Close);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(l.check(), Verdict::Allow);
    }

    #[tokio::test(start_paused = true)]
    async fn connect_limit_is_per_ip_and_pruned() {
        let l = ConnectLimiter::new(&ConnectRateConfig { per_second: 1, burst: 2, prune_interval_ms: 1000 });
        let a = IpAddr::from([127, 0, 0, 1]);
        let b = IpAddr::from([127, 0, 0, 2]);
        assert!(l.check(a).is_ok());
        assert!(l.check(a).is_ok());
        let wait = l.check(a).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
        assert!(l.check(b).is_ok());
        assert_eq!(l.tracked(), 2);
        tokio::time::advance(Duration::from_secs(5)).await;
        l.prune();
        assert_eq!(l.tracked(), 0);
        assert!(l.check(a).is_ok());
    }
}
