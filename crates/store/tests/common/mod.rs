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

/// Runs the same async test body against both backends (on a current-thread runtime
/// when the body pauses time).
#[macro_export]
macro_rules! both_backends {
    (current_thread $name:ident, |$backend:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test]
            async fn postgres() {
                let $backend = rendezvous_store::testing::Backend::Postgres;
                $body
            }

            #[tokio::test]
            async fn sqlite() {
                let $backend = rendezvous_store::testing::Backend::Sqlite;
                $body
            }
        }
    };
    ($name:ident, |$backend:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let $backend = rendezvous_store::testing::Backend::Postgres;
                $body
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let $backend = rendezvous_store::testing::Backend::Sqlite;
                $body
            }
        }
    };
}
