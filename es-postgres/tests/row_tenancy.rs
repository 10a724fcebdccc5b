//! Row tenancy: tenants sharing one store's tables, kept apart by row-level security. A
//! service's role (not a superuser) opens each tenant's store; whatever stream ids, event ids
//! or SQL it uses, it reads and writes its tenant's rows only. Projection runners and
//! rebuilds are per tenant, and maintenance of one tenant's stream leaves another's alone.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use async_trait::async_trait;
use es_core::testing::evolution::LedgerEvent;
use es_core::{
    BoxError, Envelope, EventStore, ExpectedVersion, NewEvent, Position, StreamId, StreamLifecycle,
};
use es_postgres::testing::{TestDatabase, TestTenancy};
use es_postgres::{
    ErrorPolicy, PgError, PgEventStore, PgProjection, ProjectionError, ProjectionRunner,
    RowTenancy, SchemaName,
};
use sqlx::{AssertSqlSafe, PgConnection};
use uuid::Uuid;

use common::{credit, wait_until};

fn event(n: u32) -> NewEvent {
    NewEvent::new(
        "Ticked",
        1,
        serde_json::value::to_raw_value(&serde_json::json!({ "n": n })).unwrap(),
    )
}

async fn whole_log(store: &PgEventStore) -> Vec<es_core::RecordedEvent> {
    store.read_all(Position::START, 10_000).await.unwrap()
}

#[tokio::test]
async fn tenants_share_tables_but_never_see_or_touch_each_others_rows() {
    let fixture = TestTenancy::new(&["acme", "globex"]).await;
    let (tenancy, service) = (&fixture.tenancy, &fixture.service);
    {
        let acme = fixture.open("acme").await;
        let globex = fixture.open("globex").await;
        assert_eq!(acme.tenant(), Some("acme"));
        assert_eq!(acme.scope(), format!("{}/acme", tenancy.schema()));

        // The same stream id in two tenants: two streams.
        let account = StreamId::new("account-1").unwrap();
        for n in 0..3 {
            acme.append(&account, ExpectedVersion::Any, vec![event(n)])
                .await
                .unwrap();
        }
        let first = globex
            .append(&account, ExpectedVersion::NoStream, vec![event(42)])
            .await
            .unwrap();
        assert_eq!(first.last_version, 1, "globex's account-1 is its own");
        assert_eq!(acme.stream_version(&account).await.unwrap(), Some(3));

        // Crafted stream ids are only ever the appending tenant's own streams.
        for crafted in [
            "globex/account-1",
            "account-1' OR tenant_id = 'globex",
            "globex:account-1",
            "account-1\" ; SET es.tenant = 'globex'; --",
        ] {
            let stream = StreamId::new(crafted).unwrap();
            acme.append(&stream, ExpectedVersion::NoStream, vec![event(7)])
                .await
                .unwrap();
            assert_eq!(globex.stream_version(&stream).await.unwrap(), None);
        }
        let globex_events = globex.read_stream_to_vec(&account, 1).await.unwrap();
        assert_eq!(globex_events.len(), 1);

        // Each tenant's global log holds its events only, in order (once the horizon, which
        // other tests' transactions hold back, has passed them).
        fixture.db.settle().await;
        let acme_log = whole_log(&acme).await;
        let globex_log = whole_log(&globex).await;
        assert_eq!(acme_log.len(), 7);
        assert_eq!(globex_log.len(), 1);
        // The schema gate counts each tenant's own types.
        let counted: Vec<(String, u64)> = globex
            .stored_types()
            .await
            .unwrap()
            .into_iter()
            .map(|t| (t.category, t.events))
            .collect();
        assert_eq!(counted, [("account".to_owned(), 1)]);
        let acme_events: u64 = acme
            .stored_types()
            .await
            .unwrap()
            .iter()
            .map(|t| t.events)
            .sum();
        assert_eq!(acme_events, 7);
        assert!(acme_log.windows(2).all(|w| w[0].position < w[1].position));
        assert!(
            acme_log
                .iter()
                .all(|e| !globex_log.iter().any(|g| g.event_id == e.event_id))
        );
        assert_eq!(
            globex.head().await.unwrap(),
            globex_log[0].position,
            "a tenant's head is its own newest event"
        );

        // An event id or a correlation id of another tenant finds nothing.
        let theirs = &globex_log[0];
        assert!(acme.read_event(theirs.event_id).await.unwrap().is_none());
        assert!(
            acme.read_correlated(theirs.correlation_id, 10)
                .await
                .unwrap()
                .is_empty()
        );

        // Event ids are unique per tenant: the same id in another tenant is another event,
        // and a repeat within the tenant is recognised as one.
        let id = Uuid::now_v7();
        let stream = StreamId::new("orders-1").unwrap();
        for store in [&acme, &globex] {
            let written = store
                .append(&stream, ExpectedVersion::Any, vec![event(1).with_id(id)])
                .await
                .unwrap();
            assert_eq!(written.last_version, 1);
        }
        let repeated = acme
            .append(&stream, ExpectedVersion::Any, vec![event(1).with_id(id)])
            .await
            .unwrap();
        assert_eq!(repeated.last_version, 1, "a repeat, not a second event");
        assert_eq!(acme.stream_version(&stream).await.unwrap(), Some(1));

        // Plain SQL on a tenant's session is filtered and checked by the database.
        let s = tenancy.schema().as_str();
        let mut conn = acme.pool().acquire().await.unwrap();
        let visible: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM \"{s}\".events"
        )))
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        assert_eq!(visible, 8);
        let forged = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO \"{s}\".events (tenant_id, event_id, stream_id, stream_version, \
                 event_type, schema_version, correlation_id, payload) \
             VALUES ('globex', gen_random_uuid(), 'account-1', 2, 'Forged', 1, \
                 gen_random_uuid(), '{{}}')"
        )))
        .execute(&mut *conn)
        .await;
        assert!(
            forged
                .as_ref()
                .is_err_and(|e| e.to_string().contains("row-level security")),
            "{forged:?}"
        );
        let moved = sqlx::query(AssertSqlSafe(format!(
            "UPDATE \"{s}\".streams SET version = version + 1 WHERE stream_id = 'account-1'"
        )))
        .execute(&mut *conn)
        .await
        .unwrap();
        assert_eq!(moved.rows_affected(), 1, "acme's own stream row only");
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE \"{s}\".streams SET version = version - 1 WHERE stream_id = 'account-1'"
        )))
        .execute(&mut *conn)
        .await
        .unwrap();
        drop(conn);
        assert_eq!(globex.stream_version(&account).await.unwrap(), Some(1));
        assert_eq!(tenancy.tenants().await.unwrap(), ["acme", "globex"]);
        let own_entry: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT tenant_id FROM \"{s}\".tenants"
        )))
        .fetch_all(acme.pool())
        .await
        .unwrap();
        assert_eq!(own_entry, ["acme"]);

        // A session naming no tenant sees nothing and writes nothing.
        let nobody = PgEventStore::with_schema(service.clone(), s).unwrap();
        assert!(whole_log(&nobody).await.is_empty());
        let refused = nobody
            .append(&account, ExpectedVersion::Any, vec![event(0)])
            .await;
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| format!("{e:?}").contains("names no tenant")),
            "{refused:?}"
        );
    }
}

#[tokio::test]
async fn opening_refuses_what_would_not_keep_tenants_apart() {
    let fixture = TestTenancy::new(&["acme", "globex"]).await;
    let (tenancy, service) = (&fixture.tenancy, &fixture.service);
    {
        // The owner here is a superuser, whom row-level security does not hold.
        assert!(matches!(
            tenancy.open("acme").await,
            Err(PgError::RowSecurityBypassed { .. })
        ));
        let as_service = RowTenancy::new(service.clone(), tenancy.schema().as_str()).unwrap();
        assert!(matches!(
            as_service.open("initech").await,
            Err(PgError::NoSuchTenant { tenant, .. }) if tenant == "initech"
        ));
        for hostile in [
            "",
            "Acme",
            "a-b",
            "acme globex",
            "acme -c es.tenant=globex",
            "a\\b",
            "acme'",
            &"a".repeat(64),
        ] {
            assert!(
                matches!(
                    as_service.open(hostile).await,
                    Err(PgError::InvalidTenant { .. })
                ),
                "{hostile:?}"
            );
            assert!(matches!(
                tenancy.create(hostile).await,
                Err(PgError::InvalidTenant { .. })
            ));
        }

        // A plain store is not a row-tenancy store, and one with streams cannot become one.
        let plain = TestDatabase::new().await;
        let plain_tenancy = RowTenancy::new(plain.pool.clone(), plain.schema.as_str()).unwrap();
        assert!(matches!(
            plain_tenancy.create("acme").await,
            Err(PgError::NotRowTenancy { .. })
        ));
        plain
            .store
            .append(
                &StreamId::new("account-1").unwrap(),
                ExpectedVersion::Any,
                vec![event(1)],
            )
            .await
            .unwrap();
        assert!(matches!(
            plain_tenancy.install().await,
            Err(PgError::TenancyRefused { .. })
        ));
        plain.settle().await;
        assert_eq!(
            plain
                .store
                .read_all(Position::START, 10)
                .await
                .unwrap()
                .len(),
            1
        );
        plain.drop().await;
    }
}

/// Per stream of a tenant: events and net amount, in a table every tenant shares.
struct TenantTotals {
    schema: SchemaName,
}

#[async_trait]
impl PgProjection for TenantTotals {
    type Event = LedgerEvent;

    fn name(&self) -> &str {
        "totals"
    }

    fn wants_category(&self, category: &str) -> bool {
        category == "ledger"
    }

    async fn setup(&self, conn: &mut PgConnection) -> Result<(), BoxError> {
        let s = &self.schema;
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS \"{s}\".totals ( \
                 tenant_id text NOT NULL DEFAULT \"{s}\".current_tenant(), \
                 stream_id text NOT NULL, events bigint NOT NULL, net bigint NOT NULL, \
                 PRIMARY KEY (tenant_id, stream_id))"
        )))
        .execute(&mut *conn)
        .await?;
        RowTenancy::isolate_table(conn, &self.schema, "totals").await?;
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), BoxError> {
        sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM \"{}\".totals",
            self.schema
        )))
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &Envelope<LedgerEvent>,
    ) -> Result<(), BoxError> {
        let net = match &event.payload {
            LedgerEvent::Credited { cents, .. } => *cents as i64,
            LedgerEvent::Debited { cents } => -(*cents as i64),
            LedgerEvent::Annotated { .. } => 0,
        };
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO \"{}\".totals AS t (stream_id, events, net) VALUES ($1, 1, $2) \
             ON CONFLICT (tenant_id, stream_id) \
             DO UPDATE SET events = t.events + 1, net = t.net + $2",
            self.schema
        )))
        .bind(event.stream_id.as_str())
        .bind(net)
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// The rows `store`'s tenant sees; none before a runner created the table.
async fn totals(store: &PgEventStore) -> Vec<(String, i64, i64)> {
    let rows = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT stream_id, events, net FROM \"{}\".totals ORDER BY stream_id",
        store.schema()
    )))
    .fetch_all(store.pool())
    .await;
    match rows {
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => Vec::new(),
        rows => rows.unwrap(),
    }
}

fn runner(store: &PgEventStore) -> ProjectionRunner<TenantTotals> {
    ProjectionRunner::new(
        store.clone(),
        TenantTotals {
            schema: store.schema().clone(),
        },
    )
    .poll_interval(Duration::from_millis(50))
    .lock_retry_interval(Duration::from_millis(50))
}

#[tokio::test]
async fn each_tenant_runs_and_rebuilds_its_own_projection() {
    let fixture = TestTenancy::new(&["acme", "globex"]).await;
    {
        let acme = fixture.open("acme").await;
        let globex = fixture.open("globex").await;
        let ledger = StreamId::new("ledger-1").unwrap();
        acme.append(
            &ledger,
            ExpectedVersion::Any,
            vec![credit(5, ""), credit(7, "")],
        )
        .await
        .unwrap();
        globex
            .append(&ledger, ExpectedVersion::Any, vec![credit(100, "")])
            .await
            .unwrap();

        // The same projection, one runner per tenant, both active at once: each its own
        // instance, checkpoint and rows.
        let acme_runner = runner(&acme);
        let globex_runner = runner(&globex);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let run = |r: ProjectionRunner<TenantTotals>| {
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                r.run(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
            })
        };
        let acme_task = run(runner(&acme));
        let globex_task = run(runner(&globex));
        wait_until(
            "both tenants' runners have applied their events",
            async || {
                totals(&acme).await == [("ledger-1".to_owned(), 2, 12)]
                    && totals(&globex).await == [("ledger-1".to_owned(), 1, 100)]
            },
        )
        .await;
        stop.send(true).unwrap();
        acme_task.await.unwrap().unwrap();
        globex_task.await.unwrap().unwrap();
        assert_eq!(acme_runner.status().await.unwrap().lag_events, 0);

        // Rebuilding acme's read model rebuilds acme's rows; globex's stay as they were.
        acme.append(&ledger, ExpectedVersion::Any, vec![credit(1, "")])
            .await
            .unwrap();
        fixture.db.settle().await;
        let rebuilt = acme_runner
            .rebuild_from_scratch(ErrorPolicy::default(), |_| {})
            .await
            .unwrap();
        assert_eq!(rebuilt, 3);
        assert_eq!(totals(&acme).await, [("ledger-1".to_owned(), 3, 13)]);
        assert_eq!(totals(&globex).await, [("ledger-1".to_owned(), 1, 100)]);
        assert_eq!(globex_runner.catch_up().await.unwrap(), 0);

        // A blue/green rebuild would swap tables every tenant shares: refused.
        let blue_green = acme_runner
            .rebuild_blue_green(
                TenantTotals {
                    schema: acme.schema().clone(),
                },
                ErrorPolicy::default(),
                |_| {},
            )
            .await;
        assert!(
            matches!(blue_green, Err(ProjectionError::BlueGreen { .. })),
            "{blue_green:?}"
        );
    }
}

#[tokio::test]
async fn maintenance_of_one_tenants_stream_leaves_the_others_alone() {
    let fixture = TestTenancy::new(&["acme", "globex"]).await;
    let tenancy = &fixture.tenancy;
    {
        let acme = fixture.open("acme").await;
        let globex = fixture.open("globex").await;
        let account = StreamId::new("account-1").unwrap();
        for store in [&acme, &globex] {
            store
                .append(&account, ExpectedVersion::Any, vec![event(1), event(2)])
                .await
                .unwrap();
        }
        acme.delete_stream(&account, ExpectedVersion::Any)
            .await
            .unwrap();
        assert_eq!(
            globex.read_stream_to_vec(&account, 1).await.unwrap().len(),
            2
        );

        let archived = tenancy
            .archive_stream("acme", &account, "retired")
            .await
            .unwrap();
        assert_eq!(archived.events, 3, "two events and the tombstone");
        assert_eq!(acme.read_archived_stream(&account).await.unwrap().len(), 3);
        assert!(
            globex
                .read_archived_stream(&account)
                .await
                .unwrap()
                .is_empty()
        );
        let removed = tenancy
            .hard_delete_stream("acme", &account, "erasure")
            .await
            .unwrap();
        assert_eq!(removed.events, 3);
        assert_eq!(acme.stream_version(&account).await.unwrap(), None);
        assert_eq!(acme.maintenance_log(&account).await.unwrap().len(), 2);
        assert!(globex.maintenance_log(&account).await.unwrap().is_empty());
        assert_eq!(
            globex.read_stream_to_vec(&account, 1).await.unwrap().len(),
            2
        );
        assert_eq!(globex.stream_version(&account).await.unwrap(), Some(2));
        // Maintenance refuses what the tenant does not have, whatever another tenant has.
        assert!(matches!(
            tenancy.archive_stream("initech", &account, "x").await,
            Err(PgError::MaintenanceRefused { .. })
        ));
    }
}

/// Every table of a row-tenancy store, including those a later migration adds, must carry
/// the tenant, force row-level security and lead its unique keys with the tenant: a table
/// the layer misses would be shared by every tenant.
#[tokio::test]
async fn every_table_of_the_store_is_held_to_its_tenant() {
    let fixture = TestTenancy::new(&[]).await;
    let s = fixture.db.schema.as_str();
    let tables: Vec<(String, bool, bool, bool)> = sqlx::query_as(
        "SELECT c.relname::text, c.relrowsecurity, c.relforcerowsecurity, \
             EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = c.oid \
                 AND a.attname = 'tenant_id' AND NOT a.attisdropped) \
         FROM pg_class c WHERE c.relnamespace = $1::regnamespace AND c.relkind = 'r' \
           AND c.relname NOT IN ('_sqlx_migrations', 'row_tenancy', 'tenants') \
         ORDER BY 1",
    )
    .bind(s)
    .fetch_all(&fixture.db.pool)
    .await
    .unwrap();
    assert!(tables.len() >= 16, "{tables:?}");
    for &(ref table, enabled, forced, column) in &tables {
        assert!(
            enabled && forced && column,
            "{table}: rls {enabled}, forced {forced}, tenant_id {column}"
        );
    }
    // Unique keys: every one leads with tenant_id, even those drawn from an identity (a
    // session may override it).
    let keys: Vec<(String, String)> = sqlx::query_as(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) \
         FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid \
         WHERE c.relnamespace = $1::regnamespace AND i.indisunique \
           AND c.relname NOT IN ('_sqlx_migrations', 'row_tenancy', 'tenants')",
    )
    .bind(s)
    .fetch_all(&fixture.db.pool)
    .await
    .unwrap();
    for (index, definition) in keys {
        assert!(definition.contains("(tenant_id,"), "{index}: {definition}");
    }
}

#[derive(Clone, Debug, PartialEq, es_core::DomainEvent, serde::Serialize, serde::Deserialize)]
enum CustomerEvent {
    /// The subject is the stream.
    Registered {
        #[event(personal)]
        email: es_core::Personal<String>,
    },
}

fn emails(events: &[es_core::RecordedEvent]) -> Vec<es_core::Personal<String>> {
    use es_core::DomainEvent as _;
    events
        .iter()
        .map(
            |e| match CustomerEvent::decode(&e.event_type, e.payload.get()).unwrap() {
                CustomerEvent::Registered { email } => email,
            },
        )
        .collect()
}

#[tokio::test]
async fn forgetting_and_snapshots_are_per_tenant() {
    use es_core::{Personal, Snapshot, SnapshotStore};
    let fixture = TestTenancy::new(&["acme", "globex"]).await;
    let acme = fixture.open("acme").await;
    let globex = fixture.open("globex").await;
    let customer = StreamId::new("customer-1").unwrap();
    for (store, email) in [(&acme, "a@acme.example"), (&globex, "g@globex.example")] {
        let registered = CustomerEvent::Registered {
            email: email.to_owned().into(),
        };
        store
            .append(
                &customer,
                ExpectedVersion::Any,
                vec![NewEvent::from_event(&registered).unwrap()],
            )
            .await
            .unwrap();
        let state =
            serde_json::value::to_raw_value(&serde_json::json!({ "tenant": email })).unwrap();
        es_postgres::PgSnapshotStore::new(store)
            .save(Snapshot {
                stream_id: customer.clone(),
                stream_version: 1,
                snapshot_version: 1,
                state,
                taken_at: chrono::Utc::now(),
            })
            .await
            .unwrap();
    }
    let snapshot_of = async |store: &PgEventStore| {
        es_postgres::PgSnapshotStore::new(store)
            .load(&customer)
            .await
            .unwrap()
            .map(|s| s.state.get().to_owned())
    };
    assert_eq!(
        snapshot_of(&globex).await.as_deref(),
        Some(r#"{"tenant":"g@globex.example"}"#)
    );

    // acme forgets its customer-1; globex's customer-1, the same subject name, is another
    // person with another key.
    acme.forget("customer-1").await.unwrap();
    let acme_events = acme.read_stream_to_vec(&customer, 1).await.unwrap();
    assert_eq!(emails(&acme_events[..1]), [Personal::Redacted]);
    assert_eq!(
        snapshot_of(&acme).await,
        None,
        "the forgotten subject's snapshot is dropped"
    );
    let globex_events = globex.read_stream_to_vec(&customer, 1).await.unwrap();
    assert_eq!(
        emails(&globex_events),
        [Personal::from("g@globex.example".to_owned())]
    );
    assert_eq!(
        snapshot_of(&globex).await.as_deref(),
        Some(r#"{"tenant":"g@globex.example"}"#)
    );
}

#[tokio::test]
async fn imports_write_the_importing_tenants_streams() {
    let fixture = TestTenancy::new(&["acme", "globex"]).await;
    let acme = fixture.open("acme").await;
    let globex = fixture.open("globex").await;
    let account = StreamId::new("account-1").unwrap();
    globex
        .append(&account, ExpectedVersion::Any, vec![event(0)])
        .await
        .unwrap();
    let id = Uuid::now_v7();
    let report = acme
        .import(&[
            (account.clone(), vec![event(1).with_id(id), event(2)]),
            (StreamId::new("account-2").unwrap(), vec![event(3)]),
        ])
        .await
        .unwrap();
    assert_eq!((report.streams, report.events), (2, 3));
    let versions: Vec<u64> = acme
        .read_stream_to_vec(&account, 1)
        .await
        .unwrap()
        .iter()
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(versions, [1, 2]);
    assert_eq!(globex.stream_version(&account).await.unwrap(), Some(1));
    // The same event id again, in the same tenant: refused, naming it; in another: its own.
    let reused = acme
        .import(&[(
            StreamId::new("account-3").unwrap(),
            vec![event(4).with_id(id)],
        )])
        .await;
    assert!(
        matches!(&reused, Err(es_core::StoreError::EventIdReused { event_id, .. }) if *event_id == id),
        "{reused:?}"
    );
    globex
        .import(&[(
            StreamId::new("account-3").unwrap(),
            vec![event(4).with_id(id)],
        )])
        .await
        .unwrap();
}

/// What a session of one tenant could try, in plain SQL, to stall, probe or corrupt the
/// others: every attempt is refused or touches its own tenant only.
#[tokio::test]
async fn a_tenants_session_cannot_stall_probe_or_corrupt_the_others() {
    let fixture = TestTenancy::new(&["acme", "globex"]).await;
    let acme = fixture.open("acme").await;
    let globex = fixture.open("globex").await;
    let account = StreamId::new("account-1").unwrap();
    globex
        .append(&account, ExpectedVersion::Any, vec![event(0)])
        .await
        .unwrap();
    let theirs = globex.read_stream_to_vec(&account, 1).await.unwrap()[0].clone();
    let s = fixture.db.schema.as_str();
    let mut conn = acme.pool().acquire().await.unwrap();
    for refused in [
        // Sequences every tenant draws from.
        format!("SELECT setval('\"{s}\".events_position_seq', 9223372036854775807)"),
        format!("SELECT nextval('\"{s}\".saga_outbox_seq_seq')"),
        // The record of applied migrations every tenant's store checks.
        format!(
            "INSERT INTO \"{s}\"._sqlx_migrations (version, description, success, checksum, execution_time) VALUES (99999, 'x', true, '\\x00', 0)"
        ),
        format!("DELETE FROM \"{s}\"._sqlx_migrations"),
        format!("TRUNCATE \"{s}\".events"),
    ] {
        let result = sqlx::raw_sql(AssertSqlSafe(refused.clone()))
            .execute(&mut *conn)
            .await;
        assert!(result.is_err(), "{refused}: {result:?}");
    }
    // Keys drawn from an identity lead with the tenant too: another tenant's position, outbox
    // sequence or maintenance id, given explicitly, neither collides nor tells it exists.
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO \"{s}\".events (transaction_id, position, event_id, stream_id, \
             stream_version, event_type, schema_version, correlation_id, payload) \
         OVERRIDING SYSTEM VALUE \
         SELECT $1, $2, gen_random_uuid(), 'probe-1', 1, 'Probe', 1, gen_random_uuid(), '{{}}'"
    )))
    .bind(i64::try_from(theirs.position.transaction).unwrap())
    .bind(i64::try_from(theirs.position.sequence).unwrap())
    .execute(&mut *conn)
    .await
    .unwrap();
    drop(conn);
    // globex goes on as before.
    globex
        .append(&account, ExpectedVersion::Exact(1), vec![event(1)])
        .await
        .unwrap();
    assert_eq!(
        globex.read_stream_to_vec(&account, 1).await.unwrap().len(),
        2
    );
}

#[tokio::test]
async fn a_tool_connected_for_a_tenant_meets_that_tenants_runner() {
    let fixture = TestTenancy::new(&["acme", "globex"]).await;
    let acme = fixture.open("acme").await;
    let running = runner(&acme);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        running
            .run(async move {
                let _ = stopped.await;
            })
            .await
    });
    // An operator's tool connected with the tenant in its URL options, its store made as for
    // any schema: it finds the running instance and does not become a second one.
    let options = fixture
        .service
        .connect_options()
        .as_ref()
        .clone()
        .options([("es.tenant", "acme")]);
    let tool_pool = es_postgres::sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .unwrap();
    let tool = PgEventStore::in_schema(tool_pool, fixture.db.schema.clone());
    let tool_runner = runner(&tool);
    wait_until("acme's runner is active", async || {
        tool_runner.holder().await.unwrap().is_some()
    })
    .await;
    assert_eq!(
        tool_runner
            .try_rebuild(ErrorPolicy::default(), |_| {})
            .await
            .unwrap(),
        None,
        "the running instance holds acme's projection"
    );
    // globex's runner of the same projection is not held up by acme's.
    let globex = fixture.open("globex").await;
    assert!(runner(&globex).holder().await.unwrap().is_none());
    assert_eq!(
        runner(&globex)
            .try_rebuild(ErrorPolicy::default(), |_| {})
            .await
            .unwrap(),
        Some(0)
    );
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

/// A store made for the schema as any other (an operator's tool) on a row-tenancy schema: it
/// works for the tenant its connection names, as a role row-level security holds, and refuses
/// to run, rebuild, count or swap anything otherwise.
#[tokio::test]
async fn a_store_made_for_the_schema_must_name_a_tenant_and_be_held_by_row_security() {
    let fixture = TestTenancy::new(&["acme", "globex"]).await;
    let acme = fixture.open("acme").await;
    let ledger = StreamId::new("ledger-1").unwrap();
    acme.append(&ledger, ExpectedVersion::Any, vec![credit(5, "")])
        .await
        .unwrap();
    fixture.db.settle().await;
    let pool_as = |options: es_postgres::sqlx::postgres::PgConnectOptions| async move {
        es_postgres::sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .unwrap()
    };
    let service = fixture.service.connect_options().as_ref().clone();
    let owner = fixture.db.pool.connect_options().as_ref().clone();
    let schema = fixture.db.schema.clone();

    // No tenant named: refused, saying what to do.
    let nobody = PgEventStore::in_schema(pool_as(service.clone()).await, schema.clone());
    let refused = runner(&nobody).catch_up().await;
    assert!(format!("{refused:?}").contains("NoTenant"), "{refused:?}");
    assert!(nobody.stored_types().await.is_err());
    // A superuser naming a tenant would see every tenant's rows: refused.
    let superuser = PgEventStore::in_schema(
        pool_as(owner.options([("es.tenant", "acme")])).await,
        schema.clone(),
    );
    let refused = runner(&superuser)
        .rebuild_from_scratch(ErrorPolicy::default(), |_| {})
        .await;
    assert!(
        format!("{refused:?}").contains("RowSecurityBypassed"),
        "{refused:?}"
    );
    assert!(superuser.stored_types().await.is_err());
    assert!(
        superuser
            .import(&[(StreamId::new("ledger-9").unwrap(), vec![credit(1, "")])])
            .await
            .is_err()
    );
    // The service's role naming acme: acme's, as if opened (imports included).
    let tool = PgEventStore::in_schema(
        pool_as(service.options([("es.tenant", "acme")])).await,
        schema.clone(),
    );
    assert_eq!(runner(&tool).catch_up().await.unwrap(), 1);
    tool.import(&[(StreamId::new("ledger-2").unwrap(), vec![credit(2, "")])])
        .await
        .unwrap();
    assert_eq!(
        acme.stream_version(&StreamId::new("ledger-2").unwrap())
            .await
            .unwrap(),
        Some(1)
    );
    // Blue/green swaps tables every tenant shares: refused however the store was made.
    let swapped = runner(&tool)
        .rebuild_blue_green(
            TenantTotals {
                schema: schema.clone(),
            },
            ErrorPolicy::default(),
            |_| {},
        )
        .await;
    assert!(
        matches!(swapped, Err(ProjectionError::BlueGreen { .. })),
        "{swapped:?}"
    );

    // A read model whose key does not lead with the tenant is refused by isolate_table, and
    // a table of the application's own in the schema does not stop tenants from opening.
    let mut conn = acme.pool().acquire().await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE \"{schema}\".loose (tenant_id text NOT NULL DEFAULT \"{schema}\".current_tenant(), \
             account text PRIMARY KEY)"
    )))
    .execute(&mut *conn)
    .await
    .unwrap();
    let loose = RowTenancy::isolate_table(&mut conn, &schema, "loose").await;
    assert!(
        matches!(&loose, Err(PgError::TenancyRefused { reason, .. }) if reason.contains("does not lead with tenant_id")),
        "{loose:?}"
    );
    drop(conn);
    fixture.open("globex").await;
}
