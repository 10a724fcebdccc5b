//! PostgreSQL-specific guarantees of the store: immutability, typed errors for bad rows,
//! migrations, transactional appends, isolation by schema, notifications.

use std::sync::Arc;
use std::time::{Duration, Instant};

use es_core::testing::conformance::{test_event, unique_stream};
use es_core::{
    Aggregate, CommandError, CommandHandler, DecodeError, DomainEvent, EventStore, EventType,
    ExpectedVersion, Position, StoreError, StreamId,
};
use es_postgres::testing::TestDatabase;
use es_postgres::{PgError, PgEventStore};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sqlx::AssertSqlSafe;

fn sql(db: &TestDatabase, template: &str) -> AssertSqlSafe<String> {
    AssertSqlSafe(template.replace("{s}", &format!("\"{}\"", db.schema)))
}

#[tokio::test]
async fn the_database_refuses_to_change_or_remove_stored_events() {
    let db = TestDatabase::new().await;
    let stream = unique_stream("imm");
    db.store
        .append(&stream, ExpectedVersion::NoStream, vec![test_event(1)])
        .await
        .unwrap();
    for statement in [
        "UPDATE {s}.events SET event_type = 'Changed'",
        "UPDATE {s}.events SET payload = '{}'",
        "DELETE FROM {s}.events",
        "TRUNCATE {s}.events",
    ] {
        let err = sqlx::query(sql(&db, statement))
            .execute(&db.pool)
            .await
            .expect_err(statement);
        let code = err.as_database_error().and_then(|e| e.code()).unwrap();
        assert_eq!(code, "ES001", "{statement}: {err}");
    }
    let events = db.store.read_stream_to_vec(&stream, 1).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_type, "TestEvent");
    db.drop().await;
}

#[tokio::test]
async fn a_malformed_row_is_a_typed_error_naming_the_event() {
    let db = TestDatabase::new().await;
    let stream = unique_stream("bad");
    let id = uuid::Uuid::now_v7();
    // Metadata that is JSON but not an object: the database refuses it since migration 0006,
    // but rows stored before it may hold it.
    sqlx::query(sql(
        &db,
        "ALTER TABLE {s}.events DROP CONSTRAINT events_row_is_valid",
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(sql(
        &db,
        "INSERT INTO {s}.events (event_id, stream_id, stream_version, event_type, schema_version, \
         correlation_id, metadata, payload) VALUES ($1, $2, 1, 'TestEvent', 1, $1, '[1]', '{}')",
    ))
    .bind(id)
    .bind(stream.as_str())
    .execute(&db.pool)
    .await
    .unwrap();
    let err = db.store.read_stream_to_vec(&stream, 1).await.unwrap_err();
    match &err {
        StoreError::Malformed {
            event_id,
            position,
            field,
            ..
        } => {
            assert_eq!(*event_id, Some(id));
            assert!(position.is_some());
            assert_eq!(*field, "metadata");
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
    assert!(err.to_string().contains(&id.to_string()), "{err}");
    // Readable once no older transaction anywhere in the cluster holds the horizon.
    let err = loop {
        match db.store.read_all(Position::START, 10).await {
            Ok(events) if events.is_empty() => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            Ok(events) => panic!("the malformed row was read as {events:?}"),
            Err(err) => break err,
        }
    };
    assert!(matches!(
        err,
        StoreError::Malformed {
            field: "metadata",
            ..
        }
    ));
    db.drop().await;
}

#[derive(Debug, Default)]
struct Door {
    open: bool,
}

#[derive(Debug, Serialize, Deserialize)]
enum DoorEvent {
    Opened { by: String },
}

impl DomainEvent for DoorEvent {
    const TYPES: &'static [EventType] = &[EventType {
        name: "Opened",
        version: 1,
    }];
    fn event_type(&self) -> &'static str {
        "Opened"
    }
    fn encode(&self) -> Result<Box<RawValue>, serde_json::Error> {
        es_core::encode_tagged(self)
    }
    fn decode(event_type: &str, payload: &str) -> Result<Self, DecodeError> {
        match event_type {
            "Opened" => Ok(es_core::decode_tagged(event_type, payload)?),
            other => Err(DecodeError::UnknownType(other.to_owned())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Aggregate for Door {
    const CATEGORY: &'static str = "door";
    type Command = ();
    type Event = DoorEvent;
    type Error = Never;
    fn decide(&self, _: &()) -> Result<Vec<DoorEvent>, Never> {
        Ok(vec![DoorEvent::Opened { by: "me".into() }])
    }
    fn apply(&mut self, _: &DoorEvent) {
        self.open = true;
    }
}

#[tokio::test]
async fn unknown_types_and_undecodable_payloads_name_the_event() {
    let db = TestDatabase::new().await;
    let handler = CommandHandler::<Door>::new(Arc::new(db.store.clone()));
    let stream = StreamId::new("door-1").unwrap();
    let odd = es_core::NewEvent::new("Painted", 1, RawValue::from_string("{}".into()).unwrap());
    let odd_id = odd.event_id;
    db.store
        .append(&stream, ExpectedVersion::NoStream, vec![odd])
        .await
        .unwrap();
    match handler.load("1").await {
        Err(CommandError::Decode(err)) => {
            assert_eq!(err.event.event_id, odd_id);
            assert_eq!(err.event.stream_id, stream);
            assert_eq!(err.event.stream_version, 1);
            assert!(matches!(err.source, DecodeError::UnknownType(_)));
        }
        other => panic!("expected a decode error, got {other:?}"),
    }

    let stream = StreamId::new("door-2").unwrap();
    let wrong = es_core::NewEvent::new(
        "Opened",
        1,
        RawValue::from_string(r#"{"by": 7}"#.into()).unwrap(),
    );
    let wrong_id = wrong.event_id;
    db.store
        .append(&stream, ExpectedVersion::NoStream, vec![wrong])
        .await
        .unwrap();
    match handler.load("2").await {
        Err(CommandError::Decode(err)) => {
            assert_eq!(err.event.event_id, wrong_id);
            assert!(matches!(err.source, DecodeError::Payload(_)));
            assert!(err.to_string().contains("door-2"), "{err}");
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_and_safe_to_run_concurrently() {
    let db = TestDatabase::new().await;
    let schema = format!("{}_m", db.schema);
    let stores: Vec<_> = (0..4)
        .map(|_| PgEventStore::with_schema(db.pool.clone(), &schema).unwrap())
        .collect();
    let results = futures_util::future::join_all(stores.iter().map(|store| store.migrate())).await;
    for result in results {
        result.unwrap();
    }
    stores[0].migrate().await.unwrap();
    stores[1]
        .append(
            &unique_stream("m"),
            ExpectedVersion::NoStream,
            vec![test_event(1)],
        )
        .await
        .unwrap();
    sqlx::query(AssertSqlSafe(format!("DROP SCHEMA \"{schema}\" CASCADE")))
        .execute(&db.pool)
        .await
        .unwrap();
    db.drop().await;
}

#[tokio::test]
async fn schemas_isolate_stores_and_bad_schema_names_are_refused() {
    let a = TestDatabase::new().await;
    let b = PgEventStore::with_schema(a.pool.clone(), &format!("{}_b", a.schema)).unwrap();
    b.migrate().await.unwrap();
    let stream = unique_stream("iso");
    a.store
        .append(&stream, ExpectedVersion::NoStream, vec![test_event(1)])
        .await
        .unwrap();
    assert_eq!(b.stream_version(&stream).await.unwrap(), None);
    assert!(b.read_all(Position::START, 10).await.unwrap().is_empty());
    b.append(&stream, ExpectedVersion::NoStream, vec![test_event(1)])
        .await
        .unwrap();

    for bad in ["es; DROP TABLE x", "Es", "a\"b"] {
        assert!(matches!(
            PgEventStore::with_schema(a.pool.clone(), bad),
            Err(PgError::InvalidSchemaName { .. })
        ));
    }
    sqlx::query(AssertSqlSafe(format!(
        "DROP SCHEMA \"{}\" CASCADE",
        b.schema()
    )))
    .execute(&a.pool)
    .await
    .unwrap();
    a.drop().await;
}

#[tokio::test]
async fn user_data_is_bound_never_spliced_into_sql() {
    let db = TestDatabase::new().await;
    let hostile = StreamId::new("x'); DROP TABLE streams; --").unwrap();
    let mut event = test_event(1);
    event.event_type = "T'; DELETE FROM events; --".into();
    db.store
        .append(&hostile, ExpectedVersion::NoStream, vec![event])
        .await
        .unwrap();
    let read = db.store.read_stream_to_vec(&hostile, 1).await.unwrap();
    assert_eq!(read[0].stream_id, hostile);
    assert_eq!(read[0].event_type, "T'; DELETE FROM events; --");
    db.drop().await;
}

#[tokio::test]
async fn appends_in_a_caller_transaction_commit_or_roll_back_with_it() {
    let db = TestDatabase::new().await;
    let stream = unique_stream("tx");

    let mut tx = db.pool.begin().await.unwrap();
    db.store
        .append_in(
            &mut tx,
            &stream,
            ExpectedVersion::NoStream,
            vec![test_event(1)],
        )
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(db.store.stream_version(&stream).await.unwrap(), None);

    let mut tx = db.pool.begin().await.unwrap();
    db.store
        .append_in(
            &mut tx,
            &stream,
            ExpectedVersion::NoStream,
            vec![test_event(1)],
        )
        .await
        .unwrap();
    // A refused append inside the transaction leaves it usable.
    let refused = db
        .store
        .append_in(
            &mut tx,
            &stream,
            ExpectedVersion::NoStream,
            vec![test_event(2)],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(refused, StoreError::Conflict(ref c) if c.actual == Some(1)),
        "{refused:?}"
    );
    db.store
        .append_in(
            &mut tx,
            &stream,
            ExpectedVersion::Exact(1),
            vec![test_event(3)],
        )
        .await
        .unwrap();
    assert_eq!(
        db.store.stream_version(&stream).await.unwrap(),
        None,
        "not visible before commit"
    );
    tx.commit().await.unwrap();
    assert_eq!(db.store.stream_version(&stream).await.unwrap(), Some(2));
    db.drop().await;
}

/// A follower that has read the (empty) log and is listening, polling only every 30 s: whatever
/// it reads sooner, a notification (or the held-back backoff) brought it.
async fn listening_follower(db: &TestDatabase) -> es_postgres::LogFollower {
    let mut follower = db
        .store
        .follow(Position::START)
        .poll_interval(Duration::from_secs(30));
    let first = follower.try_next_batch().await.expect("reading the log");
    assert!(first.is_none(), "the test's log starts empty");
    follower
}

/// The follower's next batch and how long it took, failing after 10 s.
async fn next_batch_timed(
    follower: &mut es_postgres::LogFollower,
) -> (Vec<es_core::RecordedEvent>, Duration) {
    let started = Instant::now();
    let batch = tokio::time::timeout(Duration::from_secs(10), follower.next_batch())
        .await
        .expect("a batch within 10 s, far below the 30 s poll interval")
        .expect("reading the log");
    (batch, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_wakes_on_notification_not_on_its_poll_interval() {
    let db = TestDatabase::new().await;
    let mut follower = listening_follower(&db).await;

    let store = db.store.clone();
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        store
            .append(
                &unique_stream("f"),
                ExpectedVersion::Any,
                vec![test_event(1)],
            )
            .await
            .unwrap();
    });
    let (batch, waited) = next_batch_timed(&mut follower).await;
    assert_eq!(batch.len(), 1);
    assert!(
        waited < Duration::from_secs(5),
        "woken well before the 30 s poll interval"
    );
    assert_eq!(follower.position(), batch[0].position);
    writer.await.unwrap();
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_without_notifications_still_sees_every_event_by_polling() {
    let db = TestDatabase::new().await;
    let mut follower = db
        .store
        .follow(Position::START)
        .poll_interval(Duration::from_millis(50))
        .batch_size(2);
    // Events written without any notification: by hand, around the store.
    for n in 0..5 {
        sqlx::query(sql(
            &db,
            "INSERT INTO {s}.events (event_id, stream_id, stream_version, event_type, \
             schema_version, correlation_id, payload) \
             VALUES (gen_random_uuid(), $1, 1, 'TestEvent', 1, gen_random_uuid(), $2::json)",
        ))
        .bind(format!("p-{n}"))
        .bind(format!("{{\"n\": {n}}}"))
        .execute(&db.pool)
        .await
        .unwrap();
    }
    let mut seen = 0;
    while seen < 5 {
        let batch = tokio::time::timeout(Duration::from_secs(5), follower.next_batch())
            .await
            .expect("polling finds the events")
            .unwrap();
        assert!(batch.len() <= 2);
        seen += batch.len();
    }
    assert_eq!(seen, 5);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notified_event_held_back_by_an_older_transaction_is_read_when_it_ends() {
    let db = TestDatabase::new().await;
    let mut follower = listening_follower(&db).await;

    // An older transaction takes a transaction id and appends nothing: its end notifies no one.
    let mut older = db.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *older)
        .await
        .unwrap();
    db.store
        .append(
            &unique_stream("h"),
            ExpectedVersion::Any,
            vec![test_event(1)],
        )
        .await
        .unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        older.commit().await.unwrap();
    });
    let (batch, waited) = next_batch_timed(&mut follower).await;
    assert_eq!(batch.len(), 1);
    assert!(waited >= Duration::from_millis(250), "held back meanwhile");
    assert!(
        waited < Duration::from_secs(5),
        "read soon after the older transaction ends"
    );
    release.await.unwrap();
    db.drop().await;
}
