//! The presence task's connection to the bus: a publisher task behind a bounded queue (so a
//! slow transport never delays a tick), and a subscription that reports gaps.

use std::sync::Arc;

use bytes::Bytes;
use rendezvous_bus::{Bus, Received, Subscription};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::peers::PeerMessage;
use crate::stats::StatsCell;

/// What the subscription yields.
pub(crate) enum Inbound {
    /// A peer's message (possibly our own; the state skips those).
    Message { origin: Arc<str>, msg: PeerMessage },
    /// Messages were lost, or the subscription was (re)established: resynchronize.
    Gap,
}

pub(crate) struct BusLink {
    out: mpsc::Sender<Bytes>,
    sub: Subscription,
    stats: Arc<StatsCell>,
}

impl BusLink {
    /// Subscribes to `topic` and starts the publisher task.
    pub(crate) async fn start(
        bus: Bus,
        topic: &str,
        queue: usize,
        stats: Arc<StatsCell>,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        let sub = bus.subscribe(topic);
        let (out, mut rx) = mpsc::channel::<Bytes>(queue);
        let topic = topic.to_owned();
        tracker.spawn(async move {
            loop {
                let payload = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    p = rx.recv() => match p { Some(p) => p, None => break },
                };
                bus.publish(&topic, payload);
            }
        });
        Self { out, sub, stats }
    }

    /// Queues a message for the bus; when the queue is full it is dropped (and counted): the
    /// sequence number still advanced, so peers notice and ask for the full state.
    pub(crate) fn publish(&self, msg: &PeerMessage) {
        let payload = match serde_json::to_vec(msg) {
            Ok(p) => Bytes::from(p),
            Err(e) => {
                tracing::error!(error = %e, "presence: cannot encode a bus message");
                return;
            }
        };
        if self.out.try_send(payload).is_err() {
            self.stats.bus_dropped();
        }
    }

    /// The next message or gap; pends forever once the bus is gone.
    pub(crate) async fn recv(&mut self) -> Inbound {
        loop {
            match self.sub.recv().await {
                Some(Received::Message(m)) => match serde_json::from_slice(&m.payload) {
                    Ok(msg) => return Inbound::Message { origin: m.origin, msg },
                    Err(e) => tracing::warn!(origin = %m.origin, error = %e, "presence: undecodable bus message"),
                },
                Some(Received::Lagged(_)) => return Inbound::Gap,
                None => std::future::pending::<()>().await,
            }
        }
    }
}
