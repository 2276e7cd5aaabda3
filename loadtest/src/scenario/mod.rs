//! Load scenarios.

pub mod connect_rate;
pub mod idle;
pub mod setup;
pub mod zipf;
