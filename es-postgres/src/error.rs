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
    /// The server could not be reached or refused the connection.
    #[error("cannot connect to {target}: {reason}; {hint}")]
    Connect {
        /// `user@host:port/database` (never the password).
        target: String,
        /// The failure, in the server's words when it gave any.
        reason: String,
        /// What to check.
        hint: String,
    },
    /// The store's schema does not exist (nothing was ever written there): read-only
    /// operations do not create it.
    #[error(
        "schema {schema} does not exist in this database: nothing has been written there yet \
         (run the service first, or pass the schema it uses)"
    )]
    NoSuchSchema {
        /// The schema.
        schema: String,
    },
    /// The store's schema was migrated by another release than this one.
    #[error(
        "the store in schema {schema} is at migration {applied}, this release has {known}: \
         {advice}"
    )]
    MigrationMismatch {
        /// The schema.
        schema: String,
        /// The last migration applied there.
        applied: i64,
        /// The last one this release has.
        known: i64,
        /// What to do.
        advice: &'static str,
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
    /// A maintenance function (archiving, hard deletion) refused the stream; nothing changed.
    #[error("maintenance of stream {stream} refused: {reason}")]
    MaintenanceRefused {
        /// The stream.
        stream: es_core::StreamId,
        /// Why.
        reason: crate::MaintenanceRefusal,
    },
    /// A tenant id that is not 1 to 63 lowercase ASCII letters, digits and `_`.
    #[error("invalid tenant id {tenant:?}: {reason}")]
    InvalidTenant {
        /// The id given.
        tenant: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The tenant was never created in this row-tenancy schema ([`crate::RowTenancy::create`]).
    #[error("tenant {tenant:?} does not exist in the row-tenancy store in schema {schema}")]
    NoSuchTenant {
        /// The schema.
        schema: String,
        /// The tenant.
        tenant: String,
    },
    /// The schema holds a store without row tenancy ([`crate::RowTenancy::install`] it).
    #[error(
        "the store in schema {schema} is not a row-tenancy store: install row tenancy \
         (RowTenancy::install) when creating it"
    )]
    NotRowTenancy {
        /// The schema.
        schema: String,
    },
    /// The session names no tenant, on a schema whose tenants share its tables: what it read
    /// would mix them, and it could write nothing.
    #[error(
        "the store in schema {schema} is shared by tenants (row tenancy) and this session names \
         none: open the tenant's store (RowTenancy::open), or name the tenant in the \
         connection's options (options=-c es.tenant=<tenant>)"
    )]
    NoTenant {
        /// The schema.
        schema: String,
    },
    /// The role connecting for a tenant is not held by row-level security (a superuser, or a
    /// role with `BYPASSRLS`): its sessions would see and change every tenant's rows.
    #[error(
        "role {role} bypasses row-level security (superuser or BYPASSRLS): a tenant's store \
         must connect as a role without it, so that the database keeps the tenants apart"
    )]
    RowSecurityBypassed {
        /// The role.
        role: String,
    },
    /// Row tenancy cannot be installed in this store; nothing changed.
    #[error("row tenancy refused for the store in schema {schema}: {reason}")]
    TenancyRefused {
        /// The schema.
        schema: String,
        /// Why.
        reason: String,
    },
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

/// Error text as PostgreSQL can store it in a `text` column: a NUL character (which text cannot
/// hold, and which would make the statement recording the error fail) is written `\0`.
pub(crate) fn storable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', "\\0"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// Whether retrying may get past an error: what supervised runners retry with backoff
/// instead of stopping. See [`is_transient`] for the classification of driver errors.
pub(crate) trait Transient {
    fn is_transient(&self) -> bool;
}

impl Transient for sqlx::Error {
    fn is_transient(&self) -> bool {
        is_transient(self)
    }
}

impl Transient for StoreError {
    fn is_transient(&self) -> bool {
        StoreError::is_transient(self)
    }
}

impl Transient for es_core::BoxError {
    fn is_transient(&self) -> bool {
        transient_source(self.as_ref())
    }
}

impl Transient for serde_json::Error {
    fn is_transient(&self) -> bool {
        false
    }
}

impl Transient for String {
    fn is_transient(&self) -> bool {
        false
    }
}

impl Transient for &str {
    fn is_transient(&self) -> bool {
        false
    }
}

/// Whether an error (or one it wraps) is a transient driver or store error. User code such
/// as a projection's `apply` returns boxed errors that often wrap the driver's.
pub(crate) fn transient_source(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(sqlx) = error.downcast_ref::<sqlx::Error>() {
            return is_transient(sqlx);
        }
        if let Some(store) = error.downcast_ref::<StoreError>() {
            return store.is_transient();
        }
        current = error.source();
    }
    false
}

/// The classification of driver errors, documented in docs/operations.md ("Faults"):
/// transient are I/O errors (connection refused, reset, closed), TLS failures, pool acquire
/// timeouts and a closed pool's worker, and these SQLSTATEs: class 08 (connection exception),
/// 40001 (serialization failure), 40P01 (deadlock), 55P03 (lock not available, from
/// `lock_timeout`), 57014 (statement cancelled: `statement_timeout` or an operator), 57P01,
/// 57P02, 57P03 (administrator or crash shutdown, cannot connect now: the server is starting
/// or stopping), class 53 (insufficient resources: disk full, out of memory, too many
/// connections), 25P03 (idle in transaction timeout), 57P05 (idle session timeout),
/// 58000/58030 (system I/O error).
/// Everything else (constraint violations, syntax, permissions, a missing table, data that
/// does not decode) is permanent: retrying the same work fails the same way.
pub fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08")
                || code.starts_with("53")
                || matches!(
                    &*code,
                    "40001"
                        | "40P01"
                        | "55P03"
                        | "57014"
                        | "57P01"
                        | "57P02"
                        | "57P03"
                        | "57P05"
                        | "25P03"
                        | "58000"
                        | "58030"
                )
        }),
        _ => false,
    }
}
