//! Integration tests: the real server on port 0, real sockets, real clients.

mod compression;
mod framing;
mod health;
mod lifecycle;
mod limits;
mod protocol;
mod support;
mod tls;
