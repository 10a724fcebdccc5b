//! The PostgreSQL schema a store lives in, and the migrations that build it.

use std::fmt;

use std::borrow::Cow;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AssertSqlSafe, Connection, Executor, PgPool};

use crate::PgError;

/// The longest schema name accepted, leaving room for the notification channel name
/// (`{schema}.events`) within PostgreSQL's 63-byte identifier limit.
pub const MAX_SCHEMA_NAME_LEN: usize = 48;

/// The migrations, embedded: (version, description, SQL). Built by hand rather than with
/// `sqlx::migrate!`, which would compile sqlx's macro crates (and sqlx itself a second time)
/// into every service; checksums are the same. A test checks every file of `migrations/` is
/// listed here.
pub(crate) const MIGRATIONS: [(i64, &str, &str); 16] = [
    (
        1,
        "event store",
        include_str!("../migrations/0001_event_store.sql"),
    ),
    (
        2,
        "snapshots",
        include_str!("../migrations/0002_snapshots.sql"),
    ),
    (
        3,
        "projections",
        include_str!("../migrations/0003_projections.sql"),
    ),
    (4, "sagas", include_str!("../migrations/0004_sagas.sql")),
    (
        5,
        "saga deadlines",
        include_str!("../migrations/0005_saga_deadlines.sql"),
    ),
    (6, "edges", include_str!("../migrations/0006_edges.sql")),
    (
        7,
        "validate checks",
        include_str!("../migrations/0007_validate_checks.sql"),
    ),
    (
        8,
        "outbox leases",
        include_str!("../migrations/0008_outbox_leases.sql"),
    ),
    (
        9,
        "coalesced wakeup",
        include_str!("../migrations/0009_coalesced_wakeup.sql"),
    ),
    (
        10,
        "one row check",
        include_str!("../migrations/0010_one_row_check.sql"),
    ),
    (
        11,
        "validate row check",
        include_str!("../migrations/0011_validate_row_check.sql"),
    ),
    (
        12,
        "event types",
        include_str!("../migrations/0012_event_types.sql"),
    ),
    (
        13,
        "row check pinned",
        include_str!("../migrations/0013_row_check_pinned.sql"),
    ),
    (
        14,
        "streams by category",
        include_str!("../migrations/0014_streams_by_category.sql"),
    ),
    (
        15,
        "personal data",
        include_str!("../migrations/0015_personal_data.sql"),
    ),
    (
        16,
        "stream lifecycle",
        include_str!("../migrations/0016_stream_lifecycle.sql"),
    ),
];

fn migrator() -> Migrator {
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*description),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    sql.starts_with("-- no-transaction"),
                )
            })
            .collect(),
    )
}

/// A validated PostgreSQL schema name: lowercase ASCII letters, digits and `_`, not starting
/// with a digit, at most [`MAX_SCHEMA_NAME_LEN`] bytes.
///
/// Table names are the one part of the store's SQL that cannot be a bound parameter; this type
/// is what makes putting the schema into SQL text safe.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SchemaName(String);

impl SchemaName {
    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<Self, PgError> {
        let name = name.into();
        match check_identifier(&name, MAX_SCHEMA_NAME_LEN) {
            Ok(()) => Ok(Self(name)),
            Err(reason) => Err(PgError::InvalidSchemaName { name, reason }),
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a quoted SQL identifier.
    pub(crate) fn quoted(&self) -> String {
        // Validation admits no quote character, so no escaping is needed.
        format!("\"{}\"", self.0)
    }

    /// SQL text for a read model in this schema: `template` with every `{schema}` replaced by
    /// the schema's quoted name. sqlx 0.9 takes dynamic SQL only as `AssertSqlSafe`; this is
    /// safe because the schema is a validated identifier and nothing else is spliced in, so
    /// bind every value as a parameter. Hand multi-statement setup to `sqlx::raw_sql`:
    ///
    /// ```
    /// # use es_postgres::SchemaName;
    /// let schema = SchemaName::new("shop")?;
    /// let insert = schema.sql("INSERT INTO {schema}.units (sku, units) VALUES ($1, $2)");
    /// assert_eq!(insert.0, "INSERT INTO \"shop\".units (sku, units) VALUES ($1, $2)");
    /// # Ok::<(), es_postgres::PgError>(())
    /// ```
    pub fn sql(&self, template: &str) -> AssertSqlSafe<String> {
        AssertSqlSafe(template.replace("{schema}", &self.quoted()))
    }

    /// The LISTEN/NOTIFY channel appends notify on.
    pub fn channel(&self) -> String {
        format!("{}.events", self.0)
    }
}

/// Whether `name` is a plain identifier of at most `max` bytes: lowercase ASCII letters, digits
/// and `_`, not starting with a digit nor with `pg_`. Such a name needs no escaping in SQL text.
pub(crate) fn check_identifier(name: &str, max: usize) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > max {
        return Err(if max == MAX_SCHEMA_NAME_LEN {
            "it is longer than 48 bytes"
        } else {
            "it is longer than 63 bytes"
        });
    }
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("it starts with a digit");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err("only lowercase ASCII letters, digits and underscores are allowed");
    }
    if name.starts_with("pg_") {
        return Err("names starting with pg_ are reserved by PostgreSQL");
    }
    Ok(())
}

impl Default for SchemaName {
    fn default() -> Self {
        Self("es".to_owned())
    }
}

impl fmt::Display for SchemaName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a store's schema stands against this release's migrations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MigrationState {
    /// No store in that schema: nothing was ever written there.
    Missing,
    /// Migrated up to `applied`; this release needs `required` (run `migrate`).
    Behind {
        /// The last migration applied.
        applied: i64,
        /// The last one this release has.
        required: i64,
    },
    /// Migrated by this release.
    Current,
    /// Migrated by a newer release than this one (up to `applied`; this one knows `known`).
    Ahead {
        /// The last migration applied.
        applied: i64,
        /// The last one this release has.
        known: i64,
    },
}

/// Where `schema` stands, without changing anything.
pub(crate) async fn migration_state(
    pool: &PgPool,
    schema: &SchemaName,
) -> Result<MigrationState, PgError> {
    let table: Option<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = $1 AND table_name = '_sqlx_migrations'",
    )
    .bind(schema.as_str())
    .fetch_optional(pool)
    .await?;
    if table.is_none() {
        return Ok(MigrationState::Missing);
    }
    let applied: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT max(version) FROM {}._sqlx_migrations WHERE success",
        schema.quoted()
    )))
    .fetch_one(pool)
    .await?;
    let latest = MIGRATIONS[MIGRATIONS.len() - 1].0;
    Ok(match applied {
        None => MigrationState::Missing,
        Some(applied) if applied < latest => MigrationState::Behind {
            applied,
            required: latest,
        },
        Some(applied) if applied > latest => MigrationState::Ahead {
            applied,
            known: latest,
        },
        Some(_) => MigrationState::Current,
    })
}

/// Creates the schema if needed and applies every migration not yet applied. Idempotent, and
/// safe to call from several processes at once: they serialise on an advisory lock per schema.
///
/// Runs on a connection of its own (not one from the pool) because it changes `search_path`.
pub(crate) async fn migrate(pool: &PgPool, schema: &SchemaName) -> Result<(), PgError> {
    let options = pool.connect_options();
    let mut conn = sqlx::PgConnection::connect_with(&options).await?;
    let result = migrate_on(&mut conn, schema).await;
    // Closing ends the session, releasing the advisory lock even after a failed migration.
    let _ = conn.close().await;
    result
}

async fn migrate_on(conn: &mut sqlx::PgConnection, schema: &SchemaName) -> Result<(), PgError> {
    sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))")
        .bind(format!("es-postgres migrate {schema}"))
        .execute(&mut *conn)
        .await?;
    conn.execute(AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS {}",
        schema.quoted()
    )))
    .await?;
    sqlx::query("SELECT set_config('search_path', $1, false)")
        .bind(schema.quoted())
        .execute(&mut *conn)
        .await?;
    let mut migrator = migrator();
    // Our per-schema lock above already serialises migrators of this schema; sqlx's own lock is
    // per database and would serialise unrelated schemas too.
    migrator.set_locking(false);
    migrator.run(&mut *conn).await?;
    sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
        .bind(format!("es-postgres migrate {schema}"))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checksum of every released migration. sqlx refuses to migrate a database whose
    /// applied migration's text changed since: a released migration is never edited, its
    /// changes go into a new one. Add the new one's checksum here.
    const RELEASED: [&str; 16] = [
        "4e40d51ec5368ec567a44341d900df3f32fe782227ebea8f8c8899a2b806cb9ecfe9ab7bc0ca6cff281b0b8775c24129",
        "60adec5713da08d6253034feb72eb74713d2bc8147d320aecc8a9faf227f7e70396a7a3864f4ed024f5190aa2aa826a9",
        "c0f0ce96c82c4c8af2d930b66ceebaac30fb52a0026d7046443113514a9353978fafbe79df3ee0fd2c5e29e976299d22",
        "4a34bf6add919e1ebc96de0db84c6fdf21050ab2d189505c2f8aa96cafdf156dd2601d66c3dc78f2d966c9ecb398115c",
        "7caf0e78dd8c010cc199e2b2c5fd63ab32a9e6e9e5746171528787645775f45d815747fa9f7b3c874cb3824a6139c0d3",
        "13cc98260cd97042e24ff0265a54a446438ee71201d7df0c4c8c91b7141d3ec8044f5b1c2d6fa076b9735430f9cdc601",
        "34b94af66b0ae2b1e00d040ad419e6032889f54cdbdd802bee4c7f8bc83247da97061c9cacb9c6dcf273fe650f272fb0",
        "919b39dae4ed155cabbebc87918155f2d2d37c98a80939c3f780797144ad10704296dc4fa9c5c1085463eba832483444",
        "f0ee7fb2e108215ec452f23f24ab759ce0f53d9bc694f4fa59c86762cb51c490a79b62c1529fed10d81c6c4e33b38220",
        "497378e7c276cada97e5c520b14b2b6dbf2da0ad06798a218c70e9bb216679003d1abadd55c0e035cf902fc262e7e276",
        "fde3c407116f96b12c72080f164b7b81f6094ec0bc65a3ecb68a29a4b09917db74406cb209c6aedd860279c5ba20dee2",
        "5b0a468817cc3747a032a5daeff4ffa67afedb47e987c21f6a469a1f1b0b66af5af060f5990600a7044c956cd8ed47e4",
        "78e8f7335fc354a96aacd9d08a890ae40920fdaf62e03d22df334d0885d46351627422a2c64ca25842b5c8abadc11590",
        "f118f8cebbf88c619719b0c3ecbcc69df4d147cfa56cd000a9b008a50ed9d51ce816b55ffdc36acaf34fb3201703b3ab",
        "b2027768215b54a590bd84acb72352e91d6a0c09e876460b13a77b253f8a1a3051b2ab1789f245ce4d7249bb7152188a",
        "0049d1a430049009ca51d070534cb9235c4ff13bd887329cb1ac236685f80ae9daedfdf5677e1dc2b6e05d06218a71dd",
    ];

    #[test]
    fn released_migrations_never_change() {
        let checksums: Vec<String> = migrator()
            .iter()
            .map(|m| m.checksum.iter().map(|b| format!("{b:02x}")).collect())
            .collect();
        assert_eq!(
            checksums.len(),
            RELEASED.len(),
            "a new migration needs its checksum pinned"
        );
        for ((version, ..), (found, pinned)) in
            MIGRATIONS.iter().zip(checksums.iter().zip(RELEASED))
        {
            assert_eq!(
                found, pinned,
                "migration {version} was edited after its release"
            );
        }
    }

    #[test]
    fn every_migration_file_is_embedded_in_order() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|name| name.ends_with(".sql"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        assert_eq!(files.len(), MIGRATIONS.len(), "{files:?}");
        for (file, (version, _, sql)) in files.iter().zip(MIGRATIONS) {
            let number: i64 = file[..4].parse().unwrap_or(-1);
            assert_eq!(number, version, "{file}");
            let text = std::fs::read_to_string(format!("{dir}/{file}")).unwrap_or_default();
            assert_eq!(text, sql, "{file} is embedded as it is");
        }
    }

    #[test]
    fn schema_names_admit_only_plain_identifiers() {
        assert!(SchemaName::new("es").is_ok());
        assert!(SchemaName::new("tenant_42").is_ok());
        for bad in [
            "",
            "Es",
            "1st",
            "a-b",
            "a\"b",
            "pg_x",
            "a b",
            &"x".repeat(49),
        ] {
            assert!(SchemaName::new(bad).is_err(), "{bad:?} must be refused");
        }
        assert_eq!(SchemaName::default().channel(), "es.events");
    }
}
