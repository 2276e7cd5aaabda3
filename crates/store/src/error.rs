//! Store errors.

use std::path::PathBuf;
use std::sync::Arc;

use crate::model::Invalid;

/// Everything a store call can fail with.
///
/// Causes sit behind `Arc` so the error is `Clone`: a single-flight load hands the same
/// error, cause chain included, to every caller that waited on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached (pool timeout, I/O, closed pool): answer 503.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] Arc<sqlx::Error>),
    /// Any other database error: answer 500.
    #[error("database error: {0}")]
    Database(#[source] Arc<sqlx::Error>),
    /// The directory for the SQLite file could not be created at start.
    #[error("cannot create the SQLite directory {}: {source}", path.display())]
    SqliteDir {
        /// The directory.
        path: PathBuf,
        /// Why not.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// Migrations failed at start.
    #[error("database migration failed: {0}")]
    Migration(#[source] Arc<sqlx::migrate::MigrateError>),
    /// The input failed validation: answer 400/422 naming the field.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The thing does not exist: answer 404.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The bus refused a subscription the store needs (at start).
    #[error("bus unavailable")]
    Bus(#[source] std::sync::Arc<rendezvous_bus::BusError>),
    /// This call waited for another caller's load of the same key, and that caller was
    /// dropped (its request went away) before the load finished; nothing was learnt, so
    /// retrying may succeed.
    #[error("the shared load of `{key}` was cancelled before it finished")]
    LoadCancelled {
        /// The query cache key.
        key: String,
    },
}

impl From<rendezvous_bus::BusError> for StoreError {
    fn from(e: rendezvous_bus::BusError) -> Self {
        StoreError::Bus(std::sync::Arc::new(e))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(Arc::new(e)),
            sqlx::Error::Database(ref db)
                if db.code().is_some_and(|c| c.starts_with("08") || c == "57P01" || c == "57P03") =>
            {
                // Postgres connection-exception class and admin shutdown.
                StoreError::Unavailable(Arc::new(e))
            }
            other => StoreError::Database(Arc::new(other)),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migration(Arc::new(e))
    }
}

impl StoreError {
    /// True when retrying later may succeed (the database is down, not the request bad).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Bus(_))
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn database_errors_keep_their_cause_through_clones() {
        let e = StoreError::from(sqlx::Error::PoolTimedOut);
        assert!(e.is_unavailable());
        let shared = e.clone();
        let cause = shared.source().expect("the sqlx error is the source");
        let cause = cause.downcast_ref::<Arc<sqlx::Error>>().expect("an sqlx error");
        assert!(matches!(**cause, sqlx::Error::PoolTimedOut));
        let other = StoreError::from(sqlx::Error::RowNotFound);
        assert!(matches!(other, StoreError::Database(_)));
        assert!(other.source().is_some());
    }
}
