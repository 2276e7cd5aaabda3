//! Integration tests: the real server on port 0, real sockets, real clients.

mod api;
mod cluster;
mod cluster_cap;
mod cluster_invalidation;
mod compression;
mod deploy;
mod framing;
mod health;
mod lifecycle;
mod limits;
mod matchmaking;
mod outage;
mod pending;
mod presence;
mod protocol;
mod redis_cluster;
mod sessions;
mod shutdown;
mod support;
mod tls;
