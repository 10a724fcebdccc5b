//! Which event store the CLI works on, and opening it without creating anything.

use es_postgres::{PgError, PgEventStore, SchemaName};

use crate::AdminError;

/// The server and schema, as command-line options a service's CLI flattens into its own:
/// `--database-url` (or `DATABASE_URL`) and `--schema`.
#[derive(Clone, Debug, clap::Args)]
pub struct Database {
    /// The PostgreSQL server, as postgres://user:password@host:port/database.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        hide_env_values = true
    )]
    pub database_url: String,
    /// The event store's schema.
    #[arg(long, default_value = "es")]
    pub schema: String,
    /// Connections in the pool the commands (and `run`'s runners) share.
    #[arg(long, default_value_t = 16)]
    pub pool_size: u32,
}

impl Database {
    /// The store, connected (failing at once with the reason when the server cannot be
    /// reached) but not migrated: nothing is created.
    pub async fn connect(&self) -> Result<PgEventStore, AdminError> {
        let schema = SchemaName::new(self.schema.clone())?;
        let pool = es_postgres::connect_pool(&self.database_url, self.pool_size).await?;
        Ok(PgEventStore::in_schema(pool, schema))
    }

    /// The store, which must exist already: for commands that only read or repair, which
    /// must never create a schema in whatever database they were pointed at.
    pub async fn open_existing(&self) -> Result<PgEventStore, AdminError> {
        let store = self.connect().await?;
        if !store.exists().await? {
            return Err(PgError::NoSuchSchema {
                schema: self.schema.clone(),
            }
            .into());
        }
        Ok(store)
    }
}
