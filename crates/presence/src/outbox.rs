//! Where presence sends: the gateway's `Outbox` (a `Connection`, or a channel in tests).

pub use rendezvous_gateway::Outbox;
