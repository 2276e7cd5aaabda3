//! Store errors.

use crate::model::Invalid;

/// Everything a store call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached (pool timeout, I/O, closed pool): answer 503.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Any other database error: answer 500.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// Migrations failed at start.
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// The input failed validation: answer 400/422 naming the field.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The thing does not exist: answer 404.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The bus refused a subscription the store needs (at start).
    #[error("bus unavailable")]
    Bus(#[from] rendezvous_bus::BusError),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e),
            sqlx::Error::Database(ref db)
                if db.code().is_some_and(|c| c.starts_with("08") || c == "57P01" || c == "57P03") =>
            {
                // Postgres connection-exception class and admin shutdown.
                StoreError::Unavailable(e)
            }
            other => StoreError::Database(other),
        }
    }
}

impl StoreError {
    /// True when retrying later may succeed (the database is down, not the request bad).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Bus(_))
    }
}

/// A cloneable error, for results shared by single-flight waiters.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SharedError {
    /// The original error's text.
    pub message: String,
    /// Whether the database was unreachable.
    pub unavailable: bool,
}

impl From<&StoreError> for SharedError {
    fn from(e: &StoreError) -> Self {
        SharedError { message: e.to_string(), unavailable: e.is_unavailable() }
    }
}
