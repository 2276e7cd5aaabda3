//! Load scenarios.

pub mod idle;
