//! Row tenancy: tenants share one store's tables; every row carries its tenant, and row-level
//! security shows each session its own tenant's rows only (`sql/row_tenancy.sql`).

use std::sync::Arc;

use es_core::{StreamId, Upcasters};
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};

use super::{check_tenant, grant_sql, tenant_options, tenant_pool};
use crate::schema::{self, MigrationState, SchemaName, check_identifier};
use crate::{MaintenanceRecord, PgError, PgEventStore};

/// The layer that turns a store into a row-tenancy store, applied once over its migrations.
const LAYER: &str = include_str!("../../sql/row_tenancy.sql");
/// The layer's version: what a store records in `row_tenancy` once the layer is applied.
const LAYER_VERSION: i32 = 1;
/// The layer's policy expression as PostgreSQL prints it back (`pg_get_expr`), quoted as an SQL
/// literal: what the checks compare a table's policy with.
const POLICY_SQL: &str = "'(tenant_id = current_setting(''es.tenant''::text, true))'";
/// The store's tables the layer holds to their tenant (the list in `sql/row_tenancy.sql`).
const STORE_TABLES: [&str; 16] = [
    "streams",
    "events",
    "snapshots",
    "projection_checkpoints",
    "parked_events",
    "saga_states",
    "saga_outbox",
    "saga_deadlines",
    "projection_layouts",
    "event_types",
    "event_types_counted",
    "subject_keys",
    "subject_streams",
    "forgotten_subjects",
    "events_archive",
    "maintenance_log",
];

/// Tenants sharing one store's tables in one schema, kept apart by PostgreSQL's row-level
/// security: each row holds its tenant's id, and a session sees and writes the rows of the
/// tenant it names only. Two tenants may use the same stream ids, event ids, projection and
/// saga names without meeting; each tenant has its own global log (a subsequence of the
/// store's positions), its own checkpoints, snapshots, keys and saga state.
///
/// The operator installs it once, as the schema's owner, and creates tenants; a tenant's
/// service [`open`](Self::open)s its store, connected as a role that row-level security holds
/// (not a superuser, not `BYPASSRLS`: [`PgError::RowSecurityBypassed`] otherwise).
///
/// ```no_run
/// # async fn example(owner: es_postgres::sqlx::PgPool, service: es_postgres::sqlx::PgPool)
/// # -> Result<(), es_postgres::PgError> {
/// use es_postgres::RowTenancy;
/// // Operator, as the schema's owner: the store, its tenants, the services' role.
/// let shop = RowTenancy::new(owner, "shop")?;
/// shop.install().await?;
/// shop.create("acme").await?;
/// shop.grant("shop_app").await?;
///
/// // A service connected as shop_app: acme's store, which sees acme's rows only.
/// let acme = RowTenancy::new(service, "shop")?.open("acme").await?;
/// # let _ = acme;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RowTenancy {
    pool: PgPool,
    schema: SchemaName,
    upcasters: Option<Arc<Upcasters>>,
}

impl std::fmt::Debug for RowTenancy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowTenancy")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl RowTenancy {
    /// The row-tenancy store in `schema`, reached through `pool`: the owner's pool to install
    /// and administer it, a tenant service's pool to open a tenant's store.
    pub fn new(pool: PgPool, schema: &str) -> Result<Self, PgError> {
        Ok(Self {
            pool,
            schema: SchemaName::new(schema)?,
            upcasters: None,
        })
    }

    /// Every tenant's store reads through `upcasters` (see [`PgEventStore::with_upcasters`]).
    pub fn with_upcasters(mut self, upcasters: Arc<Upcasters>) -> Self {
        self.upcasters = Some(upcasters);
        self
    }

    /// The schema the tenants share.
    pub fn schema(&self) -> &SchemaName {
        &self.schema
    }

    /// Creates the store (migrating it as [`PgEventStore::migrate`] does) and makes it a
    /// row-tenancy store: a tenant column on every table of the store, each unique key led by
    /// it, row-level security forced on every table (the owner is held too, unless a
    /// superuser). Idempotent, and safe from several processes at once (they take the store's
    /// migration lock). Refuses a store that holds streams already
    /// ([`PgError::TenancyRefused`]): their rows would belong to no tenant. Run it as the
    /// schema's owner, and at every deploy, as `migrate`.
    pub async fn install(&self) -> Result<(), PgError> {
        schema::migrate(&self.pool, &self.schema).await?;
        let mut conn = PgConnection::connect_with(&self.pool.connect_options()).await?;
        let result = self.install_on(&mut conn).await;
        // Closing ends the session, releasing the lock even after a failure.
        let _ = conn.close().await;
        result
    }

    async fn install_on(&self, conn: &mut PgConnection) -> Result<(), PgError> {
        let s = self.schema.quoted();
        let mut tx = conn.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("es-postgres migrate {}", self.schema))
            .execute(&mut *tx)
            .await?;
        if let Some(version) = self.layer_version(&mut tx).await? {
            return if version == LAYER_VERSION {
                self.verify_layer(&mut tx).await
            } else {
                Err(PgError::TenancyRefused {
                    schema: self.schema.to_string(),
                    reason: if version == 0 {
                        "its row tenancy record (table row_tenancy) is empty: restore its row \
                         (the version of the layer applied)"
                            .to_owned()
                    } else {
                        format!(
                            "its row tenancy is at version {version}, this release knows \
                             {LAYER_VERSION}: run the newer release"
                        )
                    },
                })
            };
        }
        sqlx::query("SELECT set_config('search_path', $1, true)")
            .bind(&s)
            .execute(&mut *tx)
            .await?;
        if let Err(error) = sqlx::raw_sql(AssertSqlSafe(LAYER)).execute(&mut *tx).await {
            return Err(match crate::error::db_code(&error) {
                Some((code, _)) if code == "ES021" => PgError::TenancyRefused {
                    schema: self.schema.to_string(),
                    reason: database_message(&error),
                },
                _ => PgError::Database(error),
            });
        }
        tx.commit().await?;
        Ok(())
    }

    /// Refuses a store whose tables the layer does not hold to their tenant: a table a later
    /// migration added, a unique key not led by the tenant, a policy other than the layer's,
    /// or a maintenance function replaced by one that does not name the tenant. A store so
    /// found would share rows between tenants. Tables the store does not own (read models,
    /// an application's) are not judged here; [`isolate_table`](Self::isolate_table) judges a
    /// read model's.
    async fn verify_layer(&self, conn: &mut PgConnection) -> Result<(), PgError> {
        let uncovered: Option<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "WITH t AS (SELECT c.oid, c.relname, c.relrowsecurity, c.relforcerowsecurity \
                 FROM pg_class c WHERE c.relnamespace = to_regnamespace($1) \
                   AND c.relname = ANY($2::text[])) \
             SELECT what FROM ( \
               SELECT 0 AS o, format('table %s is missing', n) AS what \
               FROM unnest($2::text[]) n WHERE n NOT IN (SELECT relname FROM t) \
               UNION ALL \
               SELECT 1, format('table %s is not held to its tenant', t.relname) FROM t \
               WHERE NOT (t.relrowsecurity AND t.relforcerowsecurity) \
                  OR NOT EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = t.oid \
                       AND a.attname = 'tenant_id' AND NOT a.attisdropped) \
                  OR (SELECT count(*) FROM pg_policy p WHERE p.polrelid = t.oid) <> 1 \
                  OR NOT EXISTS (SELECT FROM pg_policy p WHERE p.polrelid = t.oid \
                       AND p.polname = 'tenant_rows' AND p.polcmd = '*' AND p.polpermissive \
                       AND p.polroles = '{{0}}' \
                       AND pg_get_expr(p.polqual, t.oid) = {POLICY} \
                       AND pg_get_expr(p.polwithcheck, t.oid) = {POLICY}) \
               UNION ALL \
               SELECT 2, format('unique key %s does not lead with tenant_id', i.indexrelid::regclass) \
               FROM pg_index i JOIN t ON t.oid = i.indrelid \
               WHERE (i.indisunique OR i.indisexclusion) AND i.indkey[0] IS DISTINCT FROM ( \
                   SELECT a.attnum FROM pg_attribute a \
                   WHERE a.attrelid = t.oid AND a.attname = 'tenant_id') \
               UNION ALL \
               SELECT 3, format('function %s does not name the tenant', p.proname) \
               FROM pg_proc p WHERE p.pronamespace = to_regnamespace($1) \
                 AND p.proname IN ('archive_stream', 'hard_delete_stream') \
                 AND p.prosrc NOT LIKE '%current_tenant()%') w \
             ORDER BY o LIMIT 1",
            POLICY = POLICY_SQL
        )))
        .bind(self.schema.as_str())
        .bind(&STORE_TABLES[..])
        .fetch_optional(&mut *conn)
        .await?;
        match uncovered {
            None => Ok(()),
            Some(what) => Err(PgError::TenancyRefused {
                schema: self.schema.to_string(),
                reason: format!(
                    "{what}: this store's row tenancy does not cover it (a release whose \
                     migrations the layer, es-postgres/sql/row_tenancy.sql, misses, or a change \
                     by hand)"
                ),
            }),
        }
    }

    /// The layer's version in the store, `None` when it is not a row-tenancy store.
    async fn layer_version(&self, conn: &mut PgConnection) -> Result<Option<i32>, PgError> {
        if !super::is_row_tenancy(conn, &self.schema).await? {
            return Ok(None);
        }
        let version: Option<i32> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT version FROM {}.row_tenancy",
            self.schema.quoted()
        )))
        .fetch_optional(&mut *conn)
        .await?;
        // An emptied version table is a broken layer, never a missing one.
        Ok(Some(version.unwrap_or(0)))
    }

    /// Adds `tenant` to the store (nothing when it is there already). Run it as the owner.
    pub async fn create(&self, tenant: &str) -> Result<(), PgError> {
        check_tenant(tenant)?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {}.tenants (tenant_id) VALUES ($1) \
             ON CONFLICT ON CONSTRAINT tenants_pkey DO NOTHING",
            self.schema.quoted()
        )))
        .bind(tenant)
        .execute(&self.pool)
        .await
        .map_err(|e| self.missing_layer(e))?;
        Ok(())
    }

    /// The store's tenants, sorted: every one to the owner, a tenant's own to its service.
    pub async fn tenants(&self) -> Result<Vec<String>, PgError> {
        sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT tenant_id FROM {}.tenants ORDER BY tenant_id",
            self.schema.quoted()
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.missing_layer(e))
    }

    /// Lets the database role `role` open tenants' stores: what
    /// [`TenantStores::grant`](super::TenantStores::grant) grants on a schema but changing
    /// the sequences, which every tenant's rows draw from (identity columns need no grant; a
    /// session that could set a sequence could stall every tenant's writes), and reading the
    /// tenant list (a session sees its own tenant's entry only). Run it again after a release
    /// that added tables. Which tenant a session
    /// acts for is what its connection names: a role granted here may act for every tenant,
    /// so give each tenant's service its own credentials only where the service, not the
    /// database, chooses the tenant; for isolation the database enforces per role, prefer
    /// [`TenantStores`](super::TenantStores).
    pub async fn grant(&self, role: &str) -> Result<(), PgError> {
        let s = self.schema.quoted();
        // One query string: the grants and the revokes that narrow them take effect together.
        let statements = format!(
            "{} \
             REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {s}.tenants, {s}.row_tenancy \
                 FROM \"{role}\"; \
             REVOKE ALL ON ALL SEQUENCES IN SCHEMA {s} FROM \"{role}\"; \
             GRANT SELECT ON ALL SEQUENCES IN SCHEMA {s} TO \"{role}\";",
            grant_sql(&self.schema, role)?
        );
        sqlx::raw_sql(AssertSqlSafe(statements))
            .execute(&self.pool)
            .await
            .map_err(|e| self.missing_layer(e))?;
        Ok(())
    }

    /// The store of `tenant`: every connection of its pool (one like this one's, connecting
    /// the same way) names the tenant, and everything it reads or writes is the tenant's.
    /// Projection and saga runners made over it are the tenant's (their checkpoints, locks
    /// and metrics apart from other tenants'); rebuilding one rebuilds that tenant only.
    ///
    /// Refuses a role that bypasses row-level security ([`PgError::RowSecurityBypassed`]), a
    /// schema without row tenancy ([`PgError::NotRowTenancy`]) or behind this release
    /// ([`PgError::MigrationMismatch`]), and a tenant never created
    /// ([`PgError::NoSuchTenant`]).
    pub async fn open(&self, tenant: &str) -> Result<PgEventStore, PgError> {
        check_tenant(tenant)?;
        let pool = tenant_pool(&self.pool, tenant);
        let store = PgEventStore::of_tenant(pool.clone(), self.schema.clone(), tenant);
        let store = match &self.upcasters {
            Some(upcasters) => store.with_upcasters(Arc::clone(upcasters)),
            None => store,
        };
        let mut conn = pool.acquire().await?;
        let (role, bypasses): (String, bool) = sqlx::query_as(
            "SELECT current_user::text, rolsuper OR rolbypassrls FROM pg_roles \
             WHERE rolname = current_user",
        )
        .fetch_one(&mut *conn)
        .await?;
        if bypasses {
            return Err(PgError::RowSecurityBypassed { role });
        }
        if self.layer_version(&mut conn).await?.is_none() {
            return Err(PgError::NotRowTenancy {
                schema: self.schema.to_string(),
            });
        }
        self.verify_layer(&mut conn).await?;
        drop(conn);
        match store.migration_state().await? {
            MigrationState::Current => {}
            MigrationState::Missing => {
                return Err(PgError::NoSuchSchema {
                    schema: self.schema.to_string(),
                });
            }
            MigrationState::Behind { applied, required } => {
                return Err(PgError::MigrationMismatch {
                    schema: self.schema.to_string(),
                    applied,
                    known: required,
                    advice: "install this release first (RowTenancy::install)",
                });
            }
            MigrationState::Ahead { applied, known } => {
                return Err(PgError::MigrationMismatch {
                    schema: self.schema.to_string(),
                    applied,
                    known,
                    advice: "a newer release migrated this store: run that release",
                });
            }
        }
        let known: bool = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT EXISTS (SELECT FROM {}.tenants WHERE tenant_id = $1)",
            self.schema.quoted()
        )))
        .bind(tenant)
        .fetch_one(store.pool())
        .await?;
        if !known {
            return Err(PgError::NoSuchTenant {
                schema: self.schema.to_string(),
                tenant: tenant.to_owned(),
            });
        }
        Ok(store)
    }

    /// Archives `tenant`'s stream `stream` (see [`PgEventStore::archive_stream`]); other
    /// tenants' streams of the same id stay as they are. Run it as the owner (or a role
    /// granted the maintenance functions).
    pub async fn archive_stream(
        &self,
        tenant: &str,
        stream: &StreamId,
        reason: &str,
    ) -> Result<MaintenanceRecord, PgError> {
        let store = self.maintenance_store(tenant)?;
        let record = store.archive_stream(stream, reason).await;
        store.pool().close().await;
        record
    }

    /// Removes `tenant`'s retired stream `stream` for good (see
    /// [`PgEventStore::hard_delete_stream`]); other tenants' streams of the same id stay as
    /// they are. Run it as the owner (or a role granted the maintenance functions).
    pub async fn hard_delete_stream(
        &self,
        tenant: &str,
        stream: &StreamId,
        reason: &str,
    ) -> Result<MaintenanceRecord, PgError> {
        let store = self.maintenance_store(tenant)?;
        let record = store.hard_delete_stream(stream, reason).await;
        store.pool().close().await;
        record
    }

    /// A one-connection store of `tenant` on this pool, whatever its role: for the
    /// maintenance functions only, which name the session's tenant themselves.
    fn maintenance_store(&self, tenant: &str) -> Result<PgEventStore, PgError> {
        check_tenant(tenant)?;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with(tenant_options(&self.pool, tenant));
        Ok(PgEventStore::of_tenant(pool, self.schema.clone(), tenant))
    }

    /// Holds a read model's table to the session's tenant, as the store's tables are: call it
    /// in [`PgProjection::setup`](crate::PgProjection::setup) after creating the table, which
    /// must have a column `tenant_id text NOT NULL DEFAULT {schema}.current_tenant()` leading
    /// its unique keys (so that two tenants' rows of the same key do not collide; a key that
    /// does not is refused, as is a plain table that is partitioned or not a table). Forces
    /// row-level security on the table with a policy on that column; idempotent. Reset the
    /// read model with `DELETE`, which the policy limits to the tenant's rows, never with
    /// `TRUNCATE`, which empties the table for every tenant.
    pub async fn isolate_table(
        conn: &mut PgConnection,
        schema: &SchemaName,
        table: &str,
    ) -> Result<(), PgError> {
        check_identifier(table, 63).map_err(|reason| PgError::InvalidTableName {
            name: table.to_owned(),
            reason,
        })?;
        let s = schema.quoted();
        let state: Option<TableState> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT c.relrowsecurity, c.relforcerowsecurity, \
                     EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = c.oid \
                         AND a.attname = 'tenant_id' AND NOT a.attisdropped), \
                     (SELECT pg_get_expr(p.polqual, c.oid) = {POLICY} \
                             AND pg_get_expr(p.polwithcheck, c.oid) = {POLICY} \
                             AND p.polcmd = '*' AND p.polpermissive \
                      FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname = 'tenant_rows'), \
                     (SELECT string_agg(i.indexrelid::regclass::text, ', ') FROM pg_index i \
                      WHERE i.indrelid = c.oid AND (i.indisunique OR i.indisexclusion) \
                        AND i.indkey[0] IS DISTINCT FROM (SELECT a.attnum FROM pg_attribute a \
                            WHERE a.attrelid = c.oid AND a.attname = 'tenant_id')) \
                 FROM pg_class c WHERE c.oid = to_regclass($1) AND c.relkind = 'r'",
            POLICY = POLICY_SQL
        )))
        .bind(format!("{s}.\"{table}\""))
        .fetch_optional(&mut *conn)
        .await?;
        let refuse = |reason: String| PgError::TenancyRefused {
            schema: schema.to_string(),
            reason,
        };
        let Some((enabled, forced, has_column, policy, loose_keys)) = state else {
            return Err(refuse(format!(
                "table {table} does not exist (or is not a plain table)"
            )));
        };
        if !has_column {
            return Err(refuse(format!(
                "table {table} has no tenant_id column (tenant_id text NOT NULL DEFAULT \
                 {s}.current_tenant())"
            )));
        }
        if let Some(keys) = loose_keys {
            return Err(refuse(format!(
                "unique key {keys} of table {table} does not lead with tenant_id: two tenants' \
                 rows of one key would collide"
            )));
        }
        if policy == Some(false) {
            return Err(refuse(format!(
                "table {table} has a policy tenant_rows other than the tenant's"
            )));
        }
        let has_policy = policy.is_some();
        // Each change takes the table's exclusive lock: once held to its tenant, a table is
        // left alone, so that runners starting (and rebuilds) do not queue behind its readers.
        let mut changes = Vec::new();
        if !has_policy {
            changes.push(format!(
                "CREATE POLICY tenant_rows ON {s}.\"{table}\" \
                 USING (tenant_id = pg_catalog.current_setting('es.tenant', true)) \
                 WITH CHECK (tenant_id = pg_catalog.current_setting('es.tenant', true))"
            ));
        }
        if !enabled {
            changes.push(format!(
                "ALTER TABLE {s}.\"{table}\" ENABLE ROW LEVEL SECURITY"
            ));
        }
        if !forced {
            changes.push(format!(
                "ALTER TABLE {s}.\"{table}\" FORCE ROW LEVEL SECURITY"
            ));
        }
        if !changes.is_empty() {
            sqlx::raw_sql(AssertSqlSafe(changes.join("; ")))
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// A database error, or [`PgError::NotRowTenancy`] when the cause is the layer's tables
    /// missing.
    fn missing_layer(&self, error: sqlx::Error) -> PgError {
        match crate::error::db_code(&error) {
            Some((code, _)) if code == "42P01" => PgError::NotRowTenancy {
                schema: self.schema.to_string(),
            },
            _ => PgError::Database(error),
        }
    }
}

/// A read model's table as `isolate_table` finds it: row security enabled, forced, a
/// `tenant_id` column, its `tenant_rows` policy (whether it is the tenant's, when there is
/// one), and its unique keys not led by the tenant.
type TableState = (bool, bool, bool, Option<bool>, Option<String>);

/// The message of a database error, without the driver's wrapping.
fn database_message(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) => db.message().to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_layer_covers_every_migration_of_this_release() {
        // sql/row_tenancy.sql was written against migrations 1 to 16: a migration that adds a
        // table, a unique key, a seeded row or replaces a maintenance function must extend the
        // layer (and bump its version, with an upgrade for installed stores) before this
        // number moves. `every_table_of_the_store_is_held_to_its_tenant` checks the result.
        assert_eq!(
            crate::schema::MIGRATIONS.len(),
            16,
            "a new migration: extend sql/row_tenancy.sql for it, then update this number"
        );
    }

    #[test]
    fn the_layer_and_its_check_name_the_same_tables() {
        let array = super::LAYER
            .split("v_tables text[] := ARRAY[")
            .nth(1)
            .and_then(|rest| rest.split("];").next())
            .unwrap_or_default();
        let named: Vec<&str> = array
            .split(',')
            .map(|name| name.trim().trim_matches('\''))
            .collect();
        assert_eq!(named, super::STORE_TABLES);
    }
}
