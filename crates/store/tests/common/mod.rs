//! Test support: a fresh store on Postgres (own schema) or SQLite (own file).

use std::sync::Arc;

use rendezvous_bus::Bus;
use rendezvous_store::{DatabaseConfig, Store, StoreConfig};

pub use rendezvous_store::testing::{Backend, fresh_database};

pub async fn open(backend: Backend) -> Arc<Store> {
    open_with(fresh_database(backend).await, StoreConfig::default(), Bus::in_process("test", 64)).await
}

pub async fn open_with(db: DatabaseConfig, cfg: StoreConfig, bus: Bus) -> Arc<Store> {
    Store::open(&db, cfg, bus).await.expect("store should open")
}
