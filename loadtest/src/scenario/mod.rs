//! Load scenarios.

pub mod cluster;
pub mod cluster_presence;
pub mod cluster_report;
pub mod connect_rate;
pub mod conns;
pub mod floor;
pub mod idle;
pub mod matchmaking;
pub mod matchmaking_report;
pub mod matchmaking_user;
pub mod presence;
pub mod presence_report;
pub mod setup;
pub mod zipf;
