//! Errors of the PostgreSQL stores, and how driver errors map onto the store contract's.

use es_core::StoreError;

/// What setting up or running a PostgreSQL store can fail with, beyond the store contract's
/// [`StoreError`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgError {
    /// A schema name that is not a plain identifier.
    #[error("invalid schema name {name:?}: {reason}")]
    InvalidSchemaName {
        /// The name given.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A read-model table name that is not a plain identifier.
    #[error("invalid table name {name:?}: {reason}")]
    InvalidTableName {
        /// The name given.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// Applying the migrations failed.
    #[error("migrating the event store schema failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A store operation failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// SQLSTATE of a unique violation.
pub(crate) const UNIQUE_VIOLATION: &str = "23505";

/// The SQLSTATE and constraint name of a database error, when it is one.
pub(crate) fn db_code(err: &sqlx::Error) -> Option<(String, Option<String>)> {
    match err {
        sqlx::Error::Database(db) => Some((
            db.code().map(|c| c.into_owned()).unwrap_or_default(),
            db.constraint().map(str::to_owned),
        )),
        _ => None,
    }
}

/// Maps a driver error to the store contract's error, classifying what a retry may fix.
pub(crate) fn store_error(err: sqlx::Error) -> StoreError {
    let transient = is_transient(&err);
    StoreError::Backend {
        source: Box::new(err),
        transient,
    }
}

fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // Connection exceptions, serialization failures and deadlocks, a server shutting
            // down or not yet accepting connections, too many connections.
            code.starts_with("08")
                || matches!(
                    &*code,
                    "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "53300"
                )
        }),
        _ => false,
    }
}
