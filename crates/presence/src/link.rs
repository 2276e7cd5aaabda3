//! The presence task's connection to the bus: a publisher task behind a bounded queue (so a
//! slow transport never delays a tick), and a subscription that reports gaps and is
//! re-established when the transport drops it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rendezvous_bus::{Bus, Received, Subscription};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::peers::PeerMessage;
use crate::stats::StatsCell;

/// How long to wait before subscribing again after the transport refused or dropped us.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(1);

/// What the subscription yields.
pub(crate) enum Inbound {
    /// A peer's message (possibly our own; the state skips those).
    Message { origin: Arc<str>, msg: PeerMessage },
    /// Messages were lost, or the subscription was re-established: resynchronize.
    Gap,
}

pub(crate) struct BusLink {
    bus: Bus,
    topic: String,
    out: mpsc::Sender<Bytes>,
    sub: Option<Subscription>,
    stats: Arc<StatsCell>,
}

impl BusLink {
    /// Subscribes to `topic` (retrying later if the transport refuses) and starts the publisher task.
    pub(crate) async fn start(
        bus: Bus,
        topic: &str,
        queue: usize,
        stats: Arc<StatsCell>,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        let sub = match bus.subscribe(topic).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "presence: cannot subscribe to the bus yet; retrying");
                None
            }
        };
        let (out, mut rx) = mpsc::channel::<Bytes>(queue);
        let (publisher, topic_owned, pub_stats) = (bus.clone(), topic.to_owned(), stats.clone());
        tracker.spawn(async move {
            loop {
                let payload = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    p = rx.recv() => match p { Some(p) => p, None => break },
                };
                if let Err(e) = publisher.publish(&topic_owned, payload).await {
                    // The sequence number moved on, so peers notice the hole and resync.
                    tracing::debug!(error = %e, "presence: bus publish failed");
                    pub_stats.bus_dropped();
                }
            }
        });
        Self { bus, topic: topic.to_owned(), out, sub, stats }
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

    /// The next message or gap. Cancel-safe: a subscription is only replaced once established.
    pub(crate) async fn recv(&mut self) -> Inbound {
        loop {
            let Some(sub) = &mut self.sub else {
                tokio::time::sleep(RESUBSCRIBE_AFTER).await;
                match self.bus.subscribe(&self.topic).await {
                    Ok(s) => {
                        self.sub = Some(s);
                        return Inbound::Gap;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "presence: bus subscribe failed; retrying");
                        continue;
                    }
                }
            };
            match sub.recv().await {
                Some(Received::Message(m)) => match serde_json::from_slice(&m.payload) {
                    Ok(msg) => return Inbound::Message { origin: m.origin, msg },
                    Err(e) => tracing::warn!(origin = %m.origin, error = %e, "presence: undecodable bus message"),
                },
                Some(Received::Gap { .. }) => return Inbound::Gap,
                None => self.sub = None,
            }
        }
    }
}
