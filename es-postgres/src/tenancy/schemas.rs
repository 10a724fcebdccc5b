//! Schema-per-tenant: every tenant's store in a schema of its own (`{prefix}_{tenant}`) of one
//! database, its events, snapshots, read models and checkpoints beside it. Isolation is
//! PostgreSQL's: a role granted one tenant's schema cannot name another's tables.

use std::sync::Arc;

use es_core::Upcasters;
use sqlx::{AssertSqlSafe, PgPool};

use crate::schema::{MAX_SCHEMA_NAME_LEN, MigrationState, SchemaName};
use crate::{PgError, PgEventStore};

/// The stores of many tenants in one database, a schema each.
///
/// ```no_run
/// # async fn example(pool: es_postgres::sqlx::PgPool) -> Result<(), es_postgres::PgError> {
/// use es_postgres::TenantStores;
/// let tenants = TenantStores::new(pool, "shop")?;
/// let acme = tenants.create("acme").await?; // schema shop_acme, migrated
/// // At deploy: bring every tenant's schema to this release.
/// let migrated = tenants.migrate_all().await?;
/// // One projection runner per tenant, each over that tenant's store:
/// for tenant in tenants.tenants().await? {
///     let store = tenants.open(&tenant).await?;
///     // ProjectionRunner::new(store, MyReadModel::new(store.schema())) ...
/// #   let _ = store;
/// }
/// # let _ = (acme, migrated);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TenantStores {
    pool: PgPool,
    prefix: String,
    upcasters: Option<Arc<Upcasters>>,
}

impl std::fmt::Debug for TenantStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantStores")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl TenantStores {
    /// Tenants' stores in schemas named `{prefix}_{tenant}`. The prefix is a plain identifier
    /// (lowercase letters, digits, `_`) short enough to leave room for tenant ids.
    pub fn new(pool: PgPool, prefix: &str) -> Result<Self, PgError> {
        SchemaName::new(format!("{prefix}_x"))?;
        Ok(Self {
            pool,
            prefix: prefix.to_owned(),
            upcasters: None,
        })
    }

    /// Every tenant's store reads through `upcasters` (see
    /// [`PgEventStore::with_upcasters`]).
    pub fn with_upcasters(mut self, upcasters: Arc<Upcasters>) -> Self {
        self.upcasters = Some(upcasters);
        self
    }

    /// The schema of `tenant`: `{prefix}_{tenant}`. A tenant id is lowercase ASCII letters,
    /// digits and `_`, and must fit in a schema name with the prefix; anything else is refused
    /// (an id never reaches SQL unless it is a plain identifier).
    pub fn schema_of(&self, tenant: &str) -> Result<SchemaName, PgError> {
        let room = MAX_SCHEMA_NAME_LEN.saturating_sub(self.prefix.len() + 1);
        let plain = !tenant.is_empty()
            && tenant
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !plain || tenant.len() > room {
            return Err(PgError::InvalidSchemaName {
                name: format!("{}_{tenant}", self.prefix),
                reason: "a tenant id is 1 or more lowercase ASCII letters, digits and \
                         underscores, short enough to fit a schema name with the prefix",
            });
        }
        SchemaName::new(format!("{}_{tenant}", self.prefix))
    }

    fn store(&self, schema: SchemaName) -> PgEventStore {
        let store = PgEventStore::in_schema(self.pool.clone(), schema);
        match &self.upcasters {
            Some(upcasters) => store.with_upcasters(Arc::clone(upcasters)),
            None => store,
        }
    }

    /// The store of a new (or existing) tenant, its schema created and migrated.
    pub async fn create(&self, tenant: &str) -> Result<PgEventStore, PgError> {
        let store = self.store(self.schema_of(tenant)?);
        store.migrate().await?;
        Ok(store)
    }

    /// The store of an existing tenant, current with this release; creates nothing.
    /// [`PgError::NoSuchSchema`] for an unknown tenant, [`PgError::MigrationMismatch`] for one
    /// whose schema is behind (run [`migrate_all`](Self::migrate_all)) or ahead.
    pub async fn open(&self, tenant: &str) -> Result<PgEventStore, PgError> {
        let schema = self.schema_of(tenant)?;
        let store = self.store(schema.clone());
        match store.migration_state().await? {
            MigrationState::Current => Ok(store),
            MigrationState::Missing => Err(PgError::NoSuchSchema {
                schema: schema.as_str().to_owned(),
            }),
            MigrationState::Behind { applied, required } => Err(PgError::MigrationMismatch {
                schema: schema.as_str().to_owned(),
                applied,
                known: required,
                advice: "migrate every tenant first (TenantStores::migrate_all)",
            }),
            MigrationState::Ahead { applied, known } => Err(PgError::MigrationMismatch {
                schema: schema.as_str().to_owned(),
                applied,
                known,
                advice: "a newer release migrated this tenant: run that release",
            }),
        }
    }

    /// The tenants that have a store: schemas named `{prefix}_...` holding one, sorted.
    pub async fn tenants(&self) -> Result<Vec<String>, PgError> {
        let schemas: Vec<String> = sqlx::query_scalar(
            "SELECT table_schema::text FROM information_schema.tables \
             WHERE table_name = '_sqlx_migrations' ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await?;
        let head = format!("{}_", self.prefix);
        Ok(schemas
            .into_iter()
            .filter_map(|schema| schema.strip_prefix(&head).map(str::to_owned))
            .filter(|tenant| self.schema_of(tenant).is_ok())
            .collect())
    }

    /// Migrates every tenant's schema to this release, one after the other (each under its
    /// own advisory lock, so several instances deploying at once do not collide), and returns
    /// the tenants migrated. Stops at the first failure, naming the tenant's schema; tenants
    /// before it stay migrated, and running it again resumes.
    pub async fn migrate_all(&self) -> Result<Vec<String>, PgError> {
        let tenants = self.tenants().await?;
        for tenant in &tenants {
            self.store(self.schema_of(tenant)?).migrate().await?;
        }
        Ok(tenants)
    }

    /// Lets the database role `role` use `tenant`'s store, and nothing else of this database
    /// that it was not granted otherwise: usage of the schema (and creating read models in
    /// it), reading and writing its tables (events stay immutable: their triggers refuse
    /// updates and deletes whoever asks), its sequences and functions, except what is the
    /// owner's: the maintenance functions that archive and hard-delete streams
    /// (docs/lifecycle.md), writing the archive and the maintenance log, deleting stream rows
    /// and un-archiving a stream. Run it as the schema's
    /// owner after [`create`](Self::create), and connect the tenant's service as `role`.
    pub async fn grant(&self, tenant: &str, role: &str) -> Result<(), PgError> {
        let schema = self.schema_of(tenant)?;
        sqlx::raw_sql(AssertSqlSafe(super::grant_sql(&schema, role)?))
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
