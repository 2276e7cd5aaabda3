//! Test support shared by every suite that needs a database (feature `testing`).

use crate::config::DatabaseConfig;

/// Which backend a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The real Postgres at `TEST_DATABASE_URL`.
    Postgres,
    /// A fresh SQLite file.
    Sqlite,
}

/// The Postgres URL tests use. Missing means a broken setup, never a skip:
/// `scripts/test` sets it (starting Postgres if needed).
pub fn postgres_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!("TEST_DATABASE_URL is not set: run the suite with scripts/test, which starts PostgreSQL and sets it")
    })
}

/// A database config for a fresh, empty database: its own Postgres schema, or its own SQLite file.
pub async fn fresh_database(backend: Backend) -> DatabaseConfig {
    let id = uuid::Uuid::new_v4().simple().to_string();
    match backend {
        Backend::Postgres => {
            let base = postgres_url();
            let schema = format!("rv_test_{id}");
            let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&base)
                .await
                .unwrap_or_else(|e| panic!("cannot reach TEST_DATABASE_URL: {e}"));
            sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&mut admin).await.unwrap();
            DatabaseConfig { url: Some(with_search_path(&base, &schema)), max_connections: 5, ..Default::default() }
        }
        Backend::Sqlite => {
            let dir = std::env::temp_dir().join("rendezvous-tests");
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("{id}.sqlite")).to_string_lossy().into_owned();
            DatabaseConfig { url: None, sqlite_path: path, ..Default::default() }
        }
    }
}

/// `url` with `search_path` set to `schema` for every pooled connection.
pub fn with_search_path(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-c%20search_path%3D{schema}")
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
                let $backend = $crate::testing::Backend::Postgres;
                $body
            }

            #[tokio::test]
            async fn sqlite() {
                let $backend = $crate::testing::Backend::Sqlite;
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
                let $backend = $crate::testing::Backend::Postgres;
                $body
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let $backend = $crate::testing::Backend::Sqlite;
                $body
            }
        }
    };
}
