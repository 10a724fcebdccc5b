//! Schema-per-tenant: tenants' stores side by side in one database, the same stream id in each
//! independent, every tenant migrated at once, and a tenant's role that cannot read or append
//! another tenant's events.

#![allow(clippy::unwrap_used)]

use std::panic::AssertUnwindSafe;
use std::str::FromStr;

use es_core::{EventStore, ExpectedVersion, NewEvent, StreamId};
use es_postgres::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use es_postgres::testing::database_url;
use es_postgres::{PgError, PgEventStore, TenantStores};
use futures_util::FutureExt;
use sqlx::AssertSqlSafe;

fn event(n: u32) -> NewEvent {
    NewEvent::new(
        "Ticked",
        1,
        serde_json::value::to_raw_value(&serde_json::json!({ "n": n })).unwrap(),
    )
}

async fn admin_pool() -> sqlx::PgPool {
    PgPoolOptions::new()
        .max_connections(4)
        .connect(&database_url())
        .await
        .unwrap()
}

/// A prefix no other test run uses.
fn prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("tn{}_{nanos}", std::process::id())
}

/// Runs `body`, then drops the tenants' schemas and `roles`, pass or fail.
async fn with_cleanup(
    pool: &sqlx::PgPool,
    prefix: &str,
    roles: &[String],
    body: impl std::future::Future<Output = ()>,
) {
    let result = AssertUnwindSafe(body).catch_unwind().await;
    let schemas: Vec<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname, $1)")
            .bind(format!("{prefix}_"))
            .fetch_all(pool)
            .await
            .unwrap();
    for schema in schemas {
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
        )))
        .execute(pool)
        .await
        .unwrap();
    }
    for role in roles {
        let _ = sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP OWNED BY \"{role}\"; DROP ROLE IF EXISTS \"{role}\""
        )))
        .execute(pool)
        .await;
    }
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test]
async fn tenants_are_stores_side_by_side_migrated_together() {
    let pool = admin_pool().await;
    let prefix = prefix();
    let tenants = TenantStores::new(pool.clone(), &prefix).unwrap();
    with_cleanup(&pool, &prefix, &[], async {
        let acme = tenants.create("acme").await.unwrap();
        let globex = tenants.create("globex").await.unwrap();
        let stream = StreamId::new("account-1").unwrap();
        for n in 0..3 {
            acme.append(&stream, ExpectedVersion::Any, vec![event(n)])
                .await
                .unwrap();
        }
        let first = globex
            .append(&stream, ExpectedVersion::NoStream, vec![event(9)])
            .await
            .unwrap();
        assert_eq!(first.last_version, 1, "the same stream id, another tenant");
        assert_eq!(acme.read_stream_to_vec(&stream, 1).await.unwrap().len(), 3);
        assert_eq!(
            globex.read_stream_to_vec(&stream, 1).await.unwrap().len(),
            1
        );

        assert_eq!(tenants.tenants().await.unwrap(), ["acme", "globex"]);
        assert_eq!(tenants.migrate_all().await.unwrap(), ["acme", "globex"]);
        let reopened = tenants.open("acme").await.unwrap();
        assert_eq!(reopened.schema(), acme.schema());
        assert!(matches!(
            tenants.open("initech").await,
            Err(PgError::NoSuchSchema { .. })
        ));
        for hostile in [
            "",
            "Acme",
            "a-b",
            "a\"b",
            "../x",
            "acme; DROP TABLE x",
            &"a".repeat(60),
        ] {
            assert!(
                matches!(
                    tenants.schema_of(hostile),
                    Err(PgError::InvalidSchemaName { .. })
                ),
                "{hostile:?}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn a_tenants_role_cannot_read_or_append_another_tenants_events() {
    let pool = admin_pool().await;
    let prefix = prefix();
    let role = format!("{prefix}_acme_app");
    let tenants = TenantStores::new(pool.clone(), &prefix).unwrap();
    with_cleanup(&pool, &prefix, std::slice::from_ref(&role), async {
        let acme = tenants.create("acme").await.unwrap();
        let globex = tenants.create("globex").await.unwrap();
        let secret = StreamId::new("account-1").unwrap();
        globex
            .append(&secret, ExpectedVersion::Any, vec![event(42)])
            .await
            .unwrap();
        sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE ROLE \"{role}\" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"
        )))
        .execute(&pool)
        .await
        .unwrap();
        tenants.grant("acme", &role).await.unwrap();

        let options = PgConnectOptions::from_str(&database_url())
            .unwrap()
            .username(&role);
        let as_acme = PgPoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .unwrap();
        // Its own tenant works, projections' tables included.
        let own = PgEventStore::in_schema(as_acme.clone(), acme.schema().clone());
        own.append(&secret, ExpectedVersion::Any, vec![event(1)])
            .await
            .unwrap();
        assert_eq!(own.read_stream_to_vec(&secret, 1).await.unwrap().len(), 1);
        // It may soft-delete its streams, but archiving and hard deletion stay the owner's.
        es_core::StreamLifecycle::delete_stream(&own, &secret, ExpectedVersion::Any)
            .await
            .unwrap();
        for maintenance in [
            own.archive_stream(&secret, "tenant").await,
            own.hard_delete_stream(&secret, "tenant").await,
        ] {
            match maintenance {
                Err(es_postgres::PgError::Database(e)) => {
                    assert!(e.to_string().contains("permission denied"), "{e}");
                }
                other => panic!("maintenance as the tenant's role: {other:?}"),
            }
        }
        // Nor can it un-archive, un-truncate by deleting rows, or forge the maintenance log.
        let s = acme.schema().as_str();
        for statement in [
            format!("UPDATE \"{s}\".streams SET archived_at = NULL"),
            format!("DELETE FROM \"{s}\".streams"),
            format!(
                "INSERT INTO \"{s}\".maintenance_log (operation, stream_id, events, reason) \
                 VALUES ('hard_delete', 'x', 0, 'forged')"
            ),
            format!("DELETE FROM \"{s}\".events_archive"),
        ] {
            let refused = sqlx::raw_sql(AssertSqlSafe(statement.clone()))
                .execute(&as_acme)
                .await;
            assert!(
                refused
                    .as_ref()
                    .is_err_and(|e| e.to_string().contains("permission denied")),
                "{statement}: {refused:?}"
            );
        }
        // The other tenant's store, named outright: refused, to read and to append.
        let other = PgEventStore::in_schema(as_acme.clone(), globex.schema().clone());
        let read = other.read_stream_to_vec(&secret, 1).await;
        assert!(read.is_err(), "{read:?}");
        assert!(read.unwrap_err().to_string().contains("permission denied"));
        let appended = other
            .append(&secret, ExpectedVersion::Any, vec![event(2)])
            .await;
        assert!(appended.is_err(), "{appended:?}");
        let raw = sqlx::query(AssertSqlSafe(format!(
            "SELECT payload::text FROM \"{}\".events",
            globex.schema().as_str()
        )))
        .fetch_all(&as_acme)
        .await;
        assert!(raw.is_err());
        // Globex's stream still holds its one event.
        assert_eq!(
            globex.read_stream_to_vec(&secret, 1).await.unwrap().len(),
            1
        );
        as_acme.close().await;
    })
    .await;
}
