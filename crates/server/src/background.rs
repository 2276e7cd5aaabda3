//! Long-running server tasks of the domain shutdown phase: activity recording and the
//! followers of the store's broadcasts (revocations, user changes).

use std::sync::Arc;
use std::time::Duration;

use rendezvous_gateway::{Connection, GatewayHandle};
use rendezvous_protocol::CloseCode;
use rendezvous_store::{Revocation, Store};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Records the activity of connections that sent anything during the last period, from
/// each connection's own last-seen time: one pass per period instead of a store call per
/// message.
pub(crate) async fn record_activity(
    gateway: GatewayHandle,
    store: Arc<Store>,
    period: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = rendezvous_store::now_ms();
        let mut seen: Vec<(Arc<str>, i64)> = Vec::new();
        gateway.for_each_connection(|conn| {
            let idle = gateway.idle_for(conn);
            if idle < period {
                seen.push((Arc::from(conn.user_id()), now - idle.as_millis() as i64));
            }
        });
        store.record_activity(seen.iter().map(|(user, at)| (&**user, *at)));
    }
}

/// Calls `each` for every item of a store broadcast until `stop`; `lagged` says in the
/// log what a lag costs (these streams cannot be replayed).
async fn follow<T: Clone>(
    mut rx: broadcast::Receiver<T>,
    stop: CancellationToken,
    lagged: &'static str,
    mut each: impl FnMut(T),
) {
    loop {
        let received = tokio::select! {
            () = stop.cancelled() => return,
            r = rx.recv() => r,
        };
        match received {
            Ok(item) => each(item),
            Err(broadcast::error::RecvError::Lagged(n)) => warn!(missed = n, "{lagged}"),
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Has presence re-read users whose profile or blocks changed (edits, blocks after a call),
/// so display names and block filters follow the store on every instance.
pub(crate) async fn refresh_presence(
    changes: broadcast::Receiver<Arc<str>>,
    presence: rendezvous_presence::PresenceHandle<Connection>,
    stop: CancellationToken,
) {
    let lagged = "user-change stream lagged; some profile changes show at the users' next connection";
    follow(changes, stop, lagged, |user| {
        if presence.refresh(&user).is_err() {
            warn!(user_id = %user, "presence is busy; a profile change shows at the user's next connection");
        }
    })
    .await
}

/// Closes the live connections of revoked sessions (4001), whichever instance revoked them.
pub(crate) async fn close_revoked(
    revocations: broadcast::Receiver<Revocation>,
    gateway: GatewayHandle,
    stop: CancellationToken,
) {
    let lagged = "revocation stream lagged; some connections may outlive their session";
    follow(revocations, stop, lagged, |r| {
        for conn in gateway.connections_of(&r.user_id) {
            if r.session_id.is_none() || conn.session_id() == r.session_id.as_deref() {
                conn.close(CloseCode::SessionRevoked, CloseCode::SessionRevoked.default_reason());
            }
        }
    })
    .await
}
