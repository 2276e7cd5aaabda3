//! The WebSocket protocol pieces, all sans I/O so they can be property-tested and fuzzed.

pub mod deflate;
pub mod frame;
pub mod handshake;
pub mod reader;
