//! Many tenants in one database, two ways: a schema per tenant ([`TenantStores`], the stronger
//! isolation: nothing of one tenant is in a table another reads) or tenants sharing one
//! store's tables, row-level security keeping each session to its tenant's rows
//! ([`RowTenancy`], one set of tables however many tenants there are).

mod rows;
mod schemas;

pub use rows::RowTenancy;
pub use schemas::TenantStores;

use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::{PgConnection, PgPool};

use crate::schema::{SchemaName, check_identifier};
use crate::{PgError, PgEventStore};

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
    pool.options()
        .clone()
        .connect_lazy_with(tenant_options(pool, tenant))
}

/// How `pool` connects, with sessions that name `tenant`.
pub(crate) fn tenant_options(pool: &PgPool, tenant: &str) -> sqlx::postgres::PgConnectOptions {
    (*pool.connect_options())
        .clone()
        .options([("es.tenant", tenant)])
}

/// The statements that let `role` use the store in `schema`: usage of the schema (and creating
/// read models in it), reading and writing its tables (events stay immutable: their triggers
/// refuse updates and deletes whoever asks), its sequences and functions, except what is the
/// owner's: the maintenance functions that archive and hard-delete streams, writing the archive
/// and the maintenance log, deleting stream rows and un-archiving a stream, and writing the
/// record of applied migrations. Sent as one query string they take effect together or not at
/// all.
pub(crate) fn grant_sql(schema: &SchemaName, role: &str) -> Result<String, PgError> {
    check_identifier(role, 63).map_err(|reason| PgError::InvalidSchemaName {
        name: role.to_owned(),
        reason,
    })?;
    let s = schema.as_str();
    Ok(format!(
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
    ))
}

/// Whether the schema holds a row-tenancy store (its tenants share its tables).
pub(crate) async fn is_row_tenancy(
    conn: &mut PgConnection,
    schema: &SchemaName,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(format!("{}.row_tenancy", schema.quoted()))
        .fetch_one(conn)
        .await
}

/// Refuses a session on a row-tenancy schema that would mix its tenants' rows: one naming no
/// tenant, or one row-level security does not hold (a superuser, `BYPASSRLS`), whose reads
/// return every tenant's rows and whose writes go to one. A store made by
/// [`RowTenancy::open`] was checked when opened; one made for the schema as any other (a tool
/// connected with the tenant in its URL) is checked here, once, by what rebuilds, runs and
/// counts through it.
pub(crate) async fn check_session(
    store: &PgEventStore,
    conn: &mut PgConnection,
    checked: &AtomicBool,
) -> Result<(), PgError> {
    if store.tenant().is_some() || checked.load(Ordering::Relaxed) {
        return Ok(());
    }
    let (shared, tenant, bypasses, role): (bool, String, bool, String) = sqlx::query_as(
        "SELECT to_regclass($1) IS NOT NULL, \
             coalesce(current_setting('es.tenant', true), ''), \
             r.rolsuper OR r.rolbypassrls, current_user::text \
         FROM pg_roles r WHERE r.rolname = current_user",
    )
    .bind(format!("{}.row_tenancy", store.schema().quoted()))
    .fetch_one(&mut *conn)
    .await?;
    if shared && tenant.is_empty() {
        return Err(PgError::NoTenant {
            schema: store.schema().to_string(),
        });
    }
    if shared && bypasses {
        return Err(PgError::RowSecurityBypassed { role });
    }
    checked.store(true, Ordering::Relaxed);
    Ok(())
}
