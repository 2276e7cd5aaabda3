//! The per-address limit on guest sign-ins: each one creates a user row, so an open
//! endpoint without a limit is a way to fill the database.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use rendezvous_gateway::{TokioClock, client_ip};

use super::extract::ApiError;

type Keyed = RateLimiter<IpAddr, DashMapStateStore<IpAddr>, TokioClock, NoOpMiddleware<std::time::Instant>>;

/// How many checks pass between prunes of addresses back at a full burst.
const PRUNE_EVERY: u64 = 1024;

pub(crate) struct GuestLimiter {
    limiter: Option<Keyed>,
    trusted_proxies: Vec<IpAddr>,
    checks: AtomicU64,
}

impl GuestLimiter {
    /// `per_minute = 0` turns the limit off.
    pub(crate) fn new(per_minute: u32, burst: u32, trusted_proxies: Vec<IpAddr>) -> Self {
        let limiter = (per_minute > 0).then(|| {
            let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
            let quota = Quota::with_period(Duration::from_secs(60) / per_minute)
                .unwrap_or_else(|| Quota::per_minute(NonZeroU32::MIN))
                .allow_burst(burst);
            RateLimiter::new(quota, DashMapStateStore::default(), TokioClock)
        });
        Self { limiter, trusted_proxies, checks: AtomicU64::new(0) }
    }

    /// A 429 with `Retry-After` when the client address is over its budget.
    pub(crate) fn check(&self, peer: SocketAddr, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(limiter) = &self.limiter else { return Ok(()) };
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            limiter.retain_recent();
        }
        let ip = client_ip(&self.trusted_proxies, peer, headers);
        limiter.check_key(&ip).map_err(|not_until| {
            let wait = not_until.wait_time_from(TokioClock.now());
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                "too many guest sign-ins from this address",
            )
            .retry_after(wait.as_secs_f64().ceil().max(1.0) as u64)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(last: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, last], 4000))
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_the_sustained_rate_per_address() {
        let l = GuestLimiter::new(6, 3, vec![]);
        let h = HeaderMap::new();
        for _ in 0..3 {
            l.check(peer(1), &h).unwrap();
        }
        assert!(l.check(peer(1), &h).is_err(), "the fourth in a burst is refused");
        l.check(peer(2), &h).expect("another address has its own budget");
        tokio::time::advance(Duration::from_secs(10)).await;
        l.check(peer(1), &h).expect("one more every 10 s at 6 per minute");
        assert!(l.check(peer(1), &h).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn behind_a_trusted_proxy_the_forwarded_address_counts() {
        let proxy = peer(9);
        let l = GuestLimiter::new(6, 1, vec![proxy.ip()]);
        let from = |client: &str| {
            let mut h = HeaderMap::new();
            h.insert("x-forwarded-for", client.parse().unwrap());
            h
        };
        l.check(proxy, &from("192.0.2.1")).unwrap();
        l.check(proxy, &from("192.0.2.2")).expect("a second client behind the same proxy");
        assert!(l.check(proxy, &from("192.0.2.1")).is_err());
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let l = GuestLimiter::new(0, 0, vec![]);
        for _ in 0..100 {
            l.check(peer(1), &HeaderMap::new()).unwrap();
        }
    }
}
