//! Test support: a fresh store on Postgres (own schema) or SQLite (own file).

use std::sync::Arc;

use rendezvous_bus::{Bus, BusConfig};
use rendezvous_store::{DatabaseConfig, Store, StoreConfig};

pub use rendezvous_store::testing::{Backend, fresh_database};

pub async fn open(backend: Backend) -> Arc<Store> {
    open_with(
        fresh_database(backend).await,
        StoreConfig::default(),
        Bus::in_process("test", &BusConfig { capacity: 64 }),
    )
    .await
}

pub async fn open_with(db: DatabaseConfig, cfg: StoreConfig, bus: Bus) -> Arc<Store> {
    Store::open(&db, cfg, bus).await.expect("store should open")
}

/// Two store instances ("a" and "b") on one database and one bus, background tasks running.
pub async fn two_instances(
    backend: Backend,
) -> (Arc<Store>, Arc<Store>, tokio_util::task::TaskTracker, tokio_util::sync::CancellationToken) {
    let db = fresh_database(backend).await;
    let bus = Bus::in_process("a", &BusConfig { capacity: 64 });
    let a = open_with(db.clone(), StoreConfig::default(), bus.clone()).await;
    let b = open_with(db, StoreConfig::default(), bus.as_instance("b")).await;
    let tracker = tokio_util::task::TaskTracker::new();
    let stop = tokio_util::sync::CancellationToken::new();
    a.spawn_background(&tracker, stop.clone()).await.unwrap();
    b.spawn_background(&tracker, stop.clone()).await.unwrap();
    (a, b, tracker, stop)
}
