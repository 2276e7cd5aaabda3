//! Test support: a fresh store on Postgres (own schema) or SQLite (own file).

use std::sync::Arc;

use rendezvous_bus::Bus;
use rendezvous_store::{DatabaseConfig, Store, StoreConfig};
use sqlx::Connection;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// The Postgres URL tests use. Missing means a broken setup, never a skip:
/// `scripts/test` sets it (starting Postgres if needed).
pub fn postgres_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!("TEST_DATABASE_URL is not set: run the suite with scripts/test, which starts PostgreSQL and sets it")
    })
}

/// A database config for a fresh, empty database of `backend`.
pub async fn fresh_database(backend: Backend) -> DatabaseConfig {
    let id = uuid::Uuid::new_v4().simple().to_string();
    match backend {
        Backend::Postgres => {
            let base = postgres_url();
            let schema = format!("rv_test_{id}");
            let mut admin = sqlx::PgConnection::connect(&base)
                .await
                .expect("cannot reach TEST_DATABASE_URL");
            sqlx::query(&format!("CREATE SCHEMA {schema}"))
                .execute(&mut admin)
                .await
                .unwrap();
            let sep = if base.contains('?') { '&' } else { '?' };
            let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
            DatabaseConfig {
                url: Some(url),
                max_connections: 5,
                ..Default::default()
            }
        }
        Backend::Sqlite => {
            let dir = std::env::temp_dir().join("rendezvous-tests");
            std::fs::create_dir_all(&dir).unwrap();
            DatabaseConfig {
                url: None,
                sqlite_path: dir
                    .join(format!("{id}.sqlite"))
                    .to_string_lossy()
                    .into_owned(),
                ..Default::default()
            }
        }
    }
}

pub async fn open(backend: Backend) -> Arc<Store> {
    open_with(
        fresh_database(backend).await,
        StoreConfig::default(),
        Bus::in_process("test", 64),
    )
    .await
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
                let $backend = $crate::common::Backend::Postgres;
                $body
            }

            #[tokio::test]
            async fn sqlite() {
                let $backend = $crate::common::Backend::Sqlite;
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
                let $backend = $crate::common::Backend::Postgres;
                $body
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let $backend = $crate::common::Backend::Sqlite;
                $body
            }
        }
    };
}
