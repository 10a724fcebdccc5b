//! Crypto-shredding on PostgreSQL: personal fields never reach the database in plaintext, read
//! back whole while their subject is remembered, and as `Personal::Redacted` (never an error)
//! in every reader once it is forgotten; snapshots of a forgotten subject's streams stop being
//! kept or read; a projection rebuilt after forgetting holds no plaintext either.

#![allow(clippy::unwrap_used)]

use async_trait::async_trait;
use es_core::personal::{SUBJECT_FORGOTTEN, forgotten_stream};
use es_core::{
    BoxError, DomainEvent, Envelope, EventStore, ExpectedVersion, NewEvent, Personal, Position,
    Snapshot, SnapshotStore, StreamId,
};
use es_postgres::testing::TestDatabase;
use es_postgres::{
    ErrorPolicy, PgEventStore, PgProjection, PgSnapshotStore, ProjectionRunner, SchemaName,
};
use serde::{Deserialize, Serialize};
use sqlx::{AssertSqlSafe, PgConnection};

const EMAIL: &str = "alice.liddell@example.org";
const NAME: &str = "Alice Pleasance Liddell";
const ADDRESS: &str = "Christ Church, Oxford";

#[derive(Clone, Debug, PartialEq, DomainEvent, Serialize, Deserialize)]
enum CustomerEvent {
    /// The subject is the stream (`customer-...`).
    Registered {
        #[event(personal)]
        email: Personal<String>,
        #[event(personal)]
        name: Personal<String>,
        plan: String,
    },
    /// In an order's stream; the subject is the customer's stream, named by a field.
    OrderPlaced {
        #[event(subject)]
        customer: String,
        #[event(personal)]
        ship_to: Personal<String>,
        items: u32,
    },
    PlanChanged {
        plan: String,
    },
}

fn registered() -> CustomerEvent {
    CustomerEvent::Registered {
        email: EMAIL.to_owned().into(),
        name: NAME.to_owned().into(),
        plan: "gold".into(),
    }
}

fn order(customer: &str) -> CustomerEvent {
    CustomerEvent::OrderPlaced {
        customer: customer.into(),
        ship_to: ADDRESS.to_owned().into(),
        items: 3,
    }
}

async fn append(store: &PgEventStore, stream: &StreamId, event: &CustomerEvent) -> NewEvent {
    let new = NewEvent::from_event(event).unwrap();
    store
        .append(stream, ExpectedVersion::Any, vec![new.clone()])
        .await
        .unwrap();
    new
}

async fn decoded(store: &PgEventStore, stream: &StreamId) -> Vec<CustomerEvent> {
    store
        .read_stream_to_vec(stream, 1)
        .await
        .unwrap()
        .iter()
        .map(|e| CustomerEvent::decode(&e.event_type, e.payload.get()).unwrap())
        .collect()
}

/// Every table of the schema whose rows' text holds `needle`.
async fn tables_holding(db: &TestDatabase, needle: &str) -> Vec<String> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = $1 AND table_type = 'BASE TABLE'",
    )
    .bind(db.schema.to_string())
    .fetch_all(db.store.pool())
    .await
    .unwrap();
    assert!(tables.iter().any(|t| t == "events"), "{tables:?}");
    let mut holding = Vec::new();
    for table in tables {
        let found: bool = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT EXISTS (SELECT FROM \"{}\".\"{table}\" t WHERE t::text LIKE '%' || $1 || '%')",
            db.schema
        )))
        .bind(needle)
        .fetch_one(db.store.pool())
        .await
        .unwrap();
        if found {
            holding.push(table);
        }
    }
    holding
}

async fn assert_no_plaintext(db: &TestDatabase) {
    for needle in [EMAIL, NAME, ADDRESS] {
        let holding = tables_holding(db, needle).await;
        assert!(holding.is_empty(), "{needle:?} in plaintext in {holding:?}");
    }
}

#[tokio::test]
async fn personal_fields_are_stored_sealed_and_read_back_whole() {
    let db = TestDatabase::new().await;
    let customer = StreamId::new("customer-c1").unwrap();
    let order_stream = StreamId::new("order-o1").unwrap();
    let first = append(&db.store, &customer, &registered()).await;
    append(&db.store, &order_stream, &order("customer-c1")).await;
    assert_no_plaintext(&db).await;
    let stored: String = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT payload::text FROM {}.events WHERE event_id = $1",
        db.schema
    )))
    .bind(first.event_id)
    .fetch_one(db.store.pool())
    .await
    .unwrap();
    assert!(
        stored.contains("$personal") && stored.contains("\"plan\":\"gold\""),
        "{stored}"
    );

    // Every read path opens them: a stream, one event, the global log, a correlation.
    assert_eq!(decoded(&db.store, &customer).await, [registered()]);
    assert_eq!(
        decoded(&db.store, &order_stream).await,
        [order("customer-c1")]
    );
    let one = db.store.read_event(first.event_id).await.unwrap().unwrap();
    assert_eq!(
        CustomerEvent::decode(&one.event_type, one.payload.get()).unwrap(),
        registered()
    );
    db.settle().await;
    let all = db.store.read_all(Position::default(), 100).await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|e| !e.payload.get().contains("$personal")));
    let correlated = db
        .store
        .read_correlated(first.correlation_id, 10)
        .await
        .unwrap();
    assert!(correlated[0].payload.get().contains(EMAIL));

    // Sealing is fresh each time (new nonces), yet a repeat is a repeat.
    let repeat = db
        .store
        .append(&customer, ExpectedVersion::Any, vec![first.clone()])
        .await
        .unwrap();
    assert!(repeat.deduplicated);
    let mut conn = db.store.pool().acquire().await.unwrap();
    let repeat_in = db
        .store
        .append_in(&mut conn, &customer, ExpectedVersion::Any, vec![first])
        .await
        .unwrap();
    assert!(repeat_in.deduplicated);
    drop(conn);
    db.drop().await;
}

/// Keeps each customer's email, as read models that copy personal data do.
struct Emails {
    schema: SchemaName,
}

#[async_trait]
impl PgProjection for Emails {
    type Event = CustomerEvent;

    fn name(&self) -> &str {
        "emails"
    }

    async fn setup(&self, conn: &mut PgConnection) -> Result<(), BoxError> {
        sqlx::raw_sql(self.schema.sql(
            "CREATE TABLE IF NOT EXISTS {schema}.emails (stream_id text PRIMARY KEY, email text)",
        ))
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), BoxError> {
        sqlx::query(self.schema.sql("DELETE FROM {schema}.emails"))
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &Envelope<CustomerEvent>,
    ) -> Result<(), BoxError> {
        if let CustomerEvent::Registered { email, .. } = &event.payload {
            sqlx::query(self.schema.sql(
                "INSERT INTO {schema}.emails VALUES ($1, $2) \
                 ON CONFLICT (stream_id) DO UPDATE SET email = EXCLUDED.email",
            ))
            .bind(event.stream_id.as_str())
            .bind(email.known())
            .execute(conn)
            .await?;
        }
        Ok(())
    }
}

#[tokio::test]
async fn forgetting_redacts_every_reader_and_a_rebuild_keeps_no_plaintext() {
    let db = TestDatabase::new().await;
    let customer = StreamId::new("customer-c2").unwrap();
    let other = StreamId::new("customer-c3").unwrap();
    let order_stream = StreamId::new("order-o2").unwrap();
    append(&db.store, &customer, &registered()).await;
    append(&db.store, &order_stream, &order("customer-c2")).await;
    append(&db.store, &other, &registered()).await;
    let emails = ProjectionRunner::new(
        db.store.clone(),
        Emails {
            schema: db.schema.clone(),
        },
    )
    .error_policy(ErrorPolicy::STOP);
    db.settle().await;
    emails.catch_up().await.unwrap();
    // The read model copied the plaintext, as read models do until they hear of forgetting.
    assert_eq!(tables_holding(&db, EMAIL).await, ["emails"]);

    let forgotten = db.store.forget("customer-c2").await.unwrap();
    assert!(forgotten.had_key);
    let redacted = CustomerEvent::Registered {
        email: Personal::Redacted,
        name: Personal::Redacted,
        plan: "gold".into(),
    };
    assert_eq!(decoded(&db.store, &customer).await, [redacted]);
    assert_eq!(
        decoded(&db.store, &order_stream).await,
        [CustomerEvent::OrderPlaced {
            customer: "customer-c2".into(),
            ship_to: Personal::Redacted,
            items: 3,
        }]
    );
    // Another subject is untouched.
    assert_eq!(decoded(&db.store, &other).await, [registered()]);
    // The forgetting is in the log, naming the subject, not its data.
    let record = db
        .store
        .read_stream_to_vec(&forgotten_stream("customer-c2"), 1)
        .await
        .unwrap();
    assert_eq!(record.len(), 1);
    assert_eq!(record[0].event_type, SUBJECT_FORGOTTEN);
    assert_eq!(record[0].payload.get(), r#"{"subject":"customer-c2"}"#);
    // Twice is still recorded; nothing more to destroy.
    assert!(!db.store.forget("customer-c2").await.unwrap().had_key);

    // A rebuild reads the redacted fields as such: no error, no plaintext left of c2.
    db.settle().await;
    emails
        .try_rebuild(ErrorPolicy::STOP, |_| {})
        .await
        .unwrap()
        .unwrap();
    let rows: Vec<(String, Option<String>)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT stream_id, email FROM {}.emails ORDER BY stream_id",
        db.schema
    )))
    .fetch_all(db.store.pool())
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            ("customer-c2".to_owned(), None),
            ("customer-c3".to_owned(), Some(EMAIL.to_owned()))
        ]
    );

    // What is written for the forgotten subject afterwards (a command that loaded its data
    // before the forgetting, say) is sealed with a key nobody keeps: it reads redacted.
    append(&db.store, &customer, &registered()).await;
    let read = decoded(&db.store, &customer).await;
    assert_eq!(read.len(), 2);
    assert!(matches!(&read[1], CustomerEvent::Registered { email, .. } if email.is_redacted()));
    // (The read model holds the other customer's email, as it should.)
    assert_eq!(tables_holding(&db, EMAIL).await, ["emails"]);
    assert!(tables_holding(&db, NAME).await.is_empty());
    // Readmitted, it gets a new key: new data reads back, the old stays redacted.
    assert!(db.store.readmit("customer-c2").await.unwrap());
    append(&db.store, &customer, &registered()).await;
    let read = decoded(&db.store, &customer).await;
    assert_eq!(read.len(), 3);
    assert_eq!(read[2], registered());
    assert!(matches!(&read[0], CustomerEvent::Registered { email, .. } if email.is_redacted()));
    db.drop().await;
}

#[tokio::test]
async fn a_repeat_after_forgetting_is_still_a_repeat_and_imports_are_sealed() {
    let db = TestDatabase::new().await;
    let customer = StreamId::new("customer-c5").unwrap();
    let first = append(&db.store, &customer, &registered()).await;
    db.store.forget("customer-c5").await.unwrap();
    // The command's retry sends the same event (same id, same plaintext): the stored one
    // reads redacted now, and the repeat is judged on the other fields.
    let repeat = db
        .store
        .append(&customer, ExpectedVersion::Any, vec![first])
        .await
        .unwrap();
    assert!(repeat.deduplicated);

    let imported = StreamId::new("customer-c6").unwrap();
    let events = vec![
        NewEvent::from_event(&registered()).unwrap(),
        NewEvent::from_event(&order("customer-c6")).unwrap(),
    ];
    db.store
        .import(&[(imported.clone(), events)])
        .await
        .unwrap();
    assert_no_plaintext(&db).await;
    assert_eq!(
        decoded(&db.store, &imported).await,
        [registered(), order("customer-c6")]
    );

    // A value shaped like a sealed field, in an event that declares no personal field, is
    // refused: readers would take it for one.
    let forged = NewEvent::new(
        "Webhook",
        1,
        serde_json::value::to_raw_value(&serde_json::json!({
            "body": { "$redacted": true }
        }))
        .unwrap(),
    );
    let refused = db
        .store
        .append(&customer, ExpectedVersion::Any, vec![forged])
        .await;
    assert!(
        matches!(refused, Err(es_core::StoreError::InvalidEvent { .. })),
        "{refused:?}"
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_loads_of_personal_streams_at_once_do_not_starve_a_small_pool() {
    let db = TestDatabase::new().await;
    let pool = es_postgres::sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .after_connect({
            let schema = db.schema.to_string();
            move |conn, _| {
                let schema = schema.clone();
                Box::pin(async move {
                    sqlx::query(AssertSqlSafe(format!("SET search_path TO \"{schema}\"")))
                        .execute(conn)
                        .await?;
                    Ok(())
                })
            }
        })
        .connect(&es_postgres::testing::database_url())
        .await
        .unwrap();
    let store = PgEventStore::in_schema(pool, db.schema.clone());
    let streams: Vec<StreamId> = (0..8)
        .map(|i| StreamId::new(format!("customer-p{i}")).unwrap())
        .collect();
    for stream in &streams {
        for _ in 0..3 {
            append(&store, stream, &registered()).await;
        }
    }
    let loads = streams.iter().map(|stream| {
        let store = store.clone();
        let stream = stream.clone();
        tokio::spawn(async move { decoded(&store, &stream).await })
    });
    for load in futures_util::future::join_all(loads).await {
        assert_eq!(load.unwrap(), vec![registered(); 3]);
    }
    db.drop().await;
}

#[tokio::test]
async fn a_truncated_stream_stays_loadable_after_its_subject_is_forgotten() {
    use es_core::StreamLifecycle;
    let db = TestDatabase::new().await;
    let snapshots = PgSnapshotStore::new(&db.store);
    let customer = StreamId::new("customer-c7").unwrap();
    for _ in 0..3 {
        append(&db.store, &customer, &registered()).await;
    }
    let state = serde_json::value::to_raw_value(&serde_json::json!({ "n": 3 })).unwrap();
    snapshots
        .save(Snapshot {
            stream_id: customer.clone(),
            stream_version: 3,
            snapshot_version: 1,
            state,
            taken_at: chrono::Utc::now(),
        })
        .await
        .unwrap();
    db.store.truncate_before(&customer, 3).await.unwrap();
    assert_eq!(
        db.store
            .read_stream_to_vec(&customer, 1)
            .await
            .unwrap()
            .len(),
        1
    );
    // Forgetting drops the snapshot for good (no new one is kept): the whole stream is
    // readable again, its fields redacted, so its aggregate can still be loaded.
    db.store.forget("customer-c7").await.unwrap();
    let read = decoded(&db.store, &customer).await;
    assert_eq!(read.len(), 3);
    assert!(
        read.iter()
            .all(|e| matches!(e, CustomerEvent::Registered { email, .. } if email.is_redacted()))
    );
    db.drop().await;
}

#[tokio::test]
async fn snapshots_are_sealed_and_dropped_with_their_subject() {
    let db = TestDatabase::new().await;
    let snapshots = PgSnapshotStore::new(&db.store);
    let customer = StreamId::new("customer-c4").unwrap();
    let plain_stream = StreamId::new("counter-1").unwrap();
    append(&db.store, &customer, &registered()).await;
    let state = serde_json::value::to_raw_value(&serde_json::json!({ "email": EMAIL })).unwrap();
    let snapshot = |stream: &StreamId| Snapshot {
        stream_id: stream.clone(),
        stream_version: 1,
        snapshot_version: 1,
        state: state.clone(),
        taken_at: chrono::Utc::now(),
    };
    snapshots.save(snapshot(&customer)).await.unwrap();
    // A stream without personal data keeps its snapshot as it is.
    snapshots.save(snapshot(&plain_stream)).await.unwrap();
    let stored: String = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT state::text FROM {}.snapshots WHERE stream_id = $1",
        db.schema
    )))
    .bind(customer.as_str())
    .fetch_one(db.store.pool())
    .await
    .unwrap();
    assert!(
        stored.contains("$sealed_state") && !stored.contains(EMAIL),
        "{stored}"
    );
    let loaded = snapshots.load(&customer).await.unwrap().unwrap();
    assert_eq!(loaded.state.get(), state.get());

    let forgotten = db.store.forget("customer-c4").await.unwrap();
    assert_eq!(forgotten.snapshots_dropped, 1);
    assert!(snapshots.load(&customer).await.unwrap().is_none());
    // A state loaded before the forgetting may hold the subject's data: not kept.
    snapshots.save(snapshot(&customer)).await.unwrap();
    assert!(snapshots.load(&customer).await.unwrap().is_none());
    let rows: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {}.snapshots WHERE stream_id = $1",
        db.schema
    )))
    .bind(customer.as_str())
    .fetch_one(db.store.pool())
    .await
    .unwrap();
    assert_eq!(rows, 0);
    assert!(snapshots.load(&plain_stream).await.unwrap().is_some());
    db.drop().await;
}
