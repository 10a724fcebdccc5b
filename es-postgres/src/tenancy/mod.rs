//! Many tenants in one database, two ways: a schema per tenant ([`TenantStores`], the stronger
//! isolation: nothing of one tenant is in a table another reads) or tenants sharing one
//! store's tables, row-level security keeping each session to its tenant's rows
//! ([`RowTenancy`], one set of tables however many tenants there are).

mod rows;
mod schemas;

pub use rows::RowTenancy;
pub use schemas::TenantStores;

use sqlx::{AssertSqlSafe, PgPool};

use crate::PgError;
use crate::schema::{SchemaName, check_identifier};

/// The longest tenant id: a PostgreSQL identifier's length.
const MAX_TENANT_LEN: usize = 63;

/// Refuses a tenant id that is not 1 to 63 lowercase ASCII letters, digits and `_`: an id
/// travels in a connection's startup options and in lock keys and metric labels, where
/// nothing else needs quoting then.
pub(crate) fn check_tenant(tenant: &str) -> Result<(), PgError> {
    let reason = if tenant.is_empty() {
        Some("it is empty")
    } else if tenant.len() > MAX_TENANT_LEN {
        Some("it is longer than 63 bytes")
    } else if !tenant
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        Some("it may hold lowercase ASCII letters, digits and `_` only")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(PgError::InvalidTenant {
            tenant: tenant.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// A pool like `pool` (same server, role, sizes and hooks) whose sessions name `tenant`: the
/// setting `es.tenant`, given when each connection starts, which row-level security filters
/// on. Connections are made when first needed.
pub(crate) fn tenant_pool(pool: &PgPool, tenant: &str) -> PgPool {
    let options = (*pool.connect_options())
        .clone()
        .options([("es.tenant", tenant)]);
    pool.options().clone().connect_lazy_with(options)
}

/// Lets `role` use the store in `schema`: usage of the schema (and creating read models in
/// it), reading and writing its tables (events stay immutable: their triggers refuse updates
/// and deletes whoever asks), its sequences and functions, except what is the owner's: the
/// maintenance functions that archive and hard-delete streams, writing the archive and the
/// maintenance log, deleting stream rows and un-archiving a stream, and writing the record of
/// applied migrations.
pub(crate) async fn grant_store(
    pool: &PgPool,
    schema: &SchemaName,
    role: &str,
) -> Result<(), PgError> {
    check_identifier(role, 63).map_err(|reason| PgError::InvalidSchemaName {
        name: role.to_owned(),
        reason,
    })?;
    let s = schema.as_str();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "GRANT USAGE, CREATE ON SCHEMA \"{s}\" TO \"{role}\"; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA \"{s}\" TO \"{role}\"; \
         GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA \"{s}\" TO \"{role}\"; \
         GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA \"{s}\" TO \"{role}\"; \
         REVOKE EXECUTE ON FUNCTION \"{s}\".archive_stream(text, text), \
             \"{s}\".hard_delete_stream(text, text) FROM \"{role}\"; \
         REVOKE INSERT, UPDATE, DELETE ON \"{s}\".events_archive, \"{s}\".maintenance_log \
             FROM \"{role}\"; \
         REVOKE UPDATE, DELETE ON \"{s}\".streams FROM \"{role}\"; \
         REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON \"{s}\"._sqlx_migrations FROM \"{role}\"; \
         GRANT UPDATE (version, transaction_id, deleted_at, truncated_before) \
             ON \"{s}\".streams TO \"{role}\";"
    )))
    .execute(pool)
    .await?;
    Ok(())
}
