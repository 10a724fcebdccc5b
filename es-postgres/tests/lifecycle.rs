//! Stream lifecycle on PostgreSQL: the conformance checks every store passes, and what only
//! this store offers: archiving, hard deletion through the privileged maintenance functions,
//! the immutability triggers staying in force for everything else, and deletes serialised with
//! appends held open in a transaction.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use es_core::testing::conformance::{read_all_until, test_event, unique_stream};
use es_core::{
    EventStore, ExpectedVersion, Position, STREAM_DELETED, Snapshot, SnapshotStore, StoreError,
    StreamId, StreamLifecycle,
};
use es_postgres::testing::TestDatabase;
use es_postgres::{
    ErrorPolicy, MaintenanceOperation, MaintenanceRefusal, PgError, PgSnapshotStore,
};
use sqlx::{AssertSqlSafe, Connection};

mod conformance {
    use std::sync::Arc;

    use es_core::{SnapshotStore, StreamLifecycle};
    use es_postgres::PgSnapshotStore;
    use es_postgres::testing::TestDatabase;

    es_core::stream_lifecycle_conformance_tests!(async {
        let db = Arc::new(TestDatabase::with_pool_size(10).await);
        let snapshots = Arc::new(PgSnapshotStore::new(&db.store));
        (
            db as Arc<dyn StreamLifecycle>,
            snapshots as Arc<dyn SnapshotStore>,
        )
    });
}

fn sql(db: &TestDatabase, template: &str) -> AssertSqlSafe<String> {
    AssertSqlSafe(template.replace("{s}", &format!("\"{}\"", db.schema)))
}

fn code(err: &sqlx::Error) -> String {
    err.as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned())
        .unwrap_or_default()
}

async fn session_user(db: &TestDatabase) -> String {
    sqlx::query_scalar("SELECT session_user::text")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn archived_streams_leave_the_live_log_and_stay_readable_on_request() {
    let db = TestDatabase::new().await;
    let store = &db.store;
    let kept = [
        StreamId::new("ledger-kept1").unwrap(),
        StreamId::new("ledger-kept2").unwrap(),
    ];
    let retired = StreamId::new("ledger-retired").unwrap();
    // Interleaved, so the retired stream's rows sit between the live streams' in the log.
    for round in 0..5u64 {
        for stream in kept.iter().chain([&retired]) {
            store
                .append(
                    stream,
                    ExpectedVersion::Any,
                    vec![common::credit(round + 1, ""), common::credit(2, "")],
                )
                .await
                .unwrap();
        }
    }
    store
        .delete_stream(&retired, ExpectedVersion::Exact(10))
        .await
        .unwrap();
    // Deleted but not archived: its events and tombstone stay in the live log.
    let closed = StreamId::new("ledger-closed").unwrap();
    store
        .append(
            &closed,
            ExpectedVersion::NoStream,
            vec![common::credit(3, ""), common::credit(4, "")],
        )
        .await
        .unwrap();
    store
        .delete_stream(&closed, ExpectedVersion::Exact(2))
        .await
        .unwrap();
    let before: Vec<_> = read_all_until(store, Position::START, 34)
        .await
        .into_iter()
        .filter(|e| e.stream_id == retired)
        .collect();
    assert_eq!(before.len(), 11);

    let record = store
        .archive_stream(&retired, "retired after its account closed")
        .await
        .unwrap();
    assert_eq!(record.operation, MaintenanceOperation::Archive);
    assert_eq!(record.stream, retired);
    assert_eq!(record.events, 11);
    assert_eq!(record.versions, Some((1, 11)));
    assert_eq!(
        record.positions,
        Some((before[0].position.sequence, before[10].position.sequence))
    );
    assert_eq!(record.reason, "retired after its account closed");
    assert_eq!(record.performed_by, session_user(&db).await);

    // Live reads and appends: gone, with a typed error naming the stream.
    match store.read_stream_to_vec(&retired, 1).await {
        Err(StoreError::StreamArchived { stream }) => assert_eq!(stream, retired),
        other => panic!("reading an archived stream: {other:?}"),
    }
    assert!(matches!(
        store.stream_version(&retired).await,
        Err(StoreError::StreamArchived { .. })
    ));
    assert!(matches!(
        store
            .append(&retired, ExpectedVersion::Any, vec![test_event(1)])
            .await,
        Err(StoreError::StreamArchived { .. })
    ));
    assert!(matches!(
        store.recreate_stream(&retired, vec![test_event(1)]).await,
        Err(StoreError::StreamArchived { .. })
    ));

    // On request: all there, as stored.
    let archived = store.read_archived_stream(&retired).await.unwrap();
    assert_eq!(
        archived.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        before.iter().map(|e| e.event_id).collect::<Vec<_>>()
    );
    assert_eq!(
        archived.iter().map(|e| e.position).collect::<Vec<_>>(),
        before.iter().map(|e| e.position).collect::<Vec<_>>()
    );
    assert_eq!(archived[10].event_type, STREAM_DELETED);
    assert!(
        store
            .read_archived_stream(&kept[0])
            .await
            .unwrap()
            .is_empty(),
        "a live stream has nothing archived"
    );

    // The live log: every live event, in order, each stream's versions gap-free; none of the
    // retired stream's.
    db.settle().await;
    let live = read_all_until(store, Position::START, 23).await;
    assert_eq!(live.len(), 23);
    assert!(live.iter().all(|e| e.stream_id != retired));
    assert!(live.windows(2).all(|w| w[0].position < w[1].position));
    for stream in &kept {
        let versions: Vec<_> = live
            .iter()
            .filter(|e| &e.stream_id == stream)
            .map(|e| e.stream_version)
            .collect();
        assert_eq!(versions, (1..=10).collect::<Vec<_>>());
    }

    let closed_versions: Vec<_> = live
        .iter()
        .filter(|e| e.stream_id == closed)
        .map(|e| (e.stream_version, e.event_type.as_str()))
        .collect();
    assert_eq!(
        closed_versions,
        [(1, "Credited"), (2, "Credited"), (3, STREAM_DELETED)],
        "a deleted stream's events and tombstone stay in the live log"
    );

    // A projection rebuilt from scratch after the archiving applies every live event once,
    // passing over the tombstone, and nothing of the archived stream.
    let runner = common::runner(&db, "totals");
    // The tombstone's type is the store's own: no start-up check or deploy gate takes it for
    // a type renamed without an upcaster.
    runner.check_stored_types().await.unwrap();
    let catalogue = es_core::EventCatalogue::new(Arc::new(es_core::Upcasters::new()));
    let gate = db.store.unreadable_types(&catalogue).await.unwrap();
    assert!(
        gate.iter().all(|t| t.stored.event_type != STREAM_DELETED),
        "{gate:?}"
    );
    runner.rebuild(ErrorPolicy::STOP, |_| {}).await.unwrap();
    let totals = common::totals(&db, "totals").await;
    assert_eq!(
        totals,
        vec![
            ("ledger-closed".to_owned(), 2, 7),
            ("ledger-kept1".to_owned(), 10, 25),
            ("ledger-kept2".to_owned(), 10, 25),
        ]
    );

    // Once archived, twice refused; a stream that does not exist, refused.
    match store.archive_stream(&retired, "again").await {
        Err(PgError::MaintenanceRefused { stream, reason }) => {
            assert_eq!(stream, retired);
            assert_eq!(reason, MaintenanceRefusal::AlreadyArchived);
        }
        other => panic!("archiving twice: {other:?}"),
    }
    assert!(matches!(
        store.archive_stream(&unique_stream("absent"), "").await,
        Err(PgError::MaintenanceRefused {
            reason: MaintenanceRefusal::NoSuchStream,
            ..
        })
    ));
    assert_eq!(store.maintenance_log(&retired).await.unwrap(), vec![record]);

    // A hard deletion of the archived stream removes the archived rows too.
    let removed = store
        .hard_delete_stream(&retired, "erasure request 42")
        .await
        .unwrap();
    assert_eq!(
        (removed.operation, removed.events),
        (MaintenanceOperation::HardDelete, 11)
    );
    assert!(
        store
            .read_archived_stream(&retired)
            .await
            .unwrap()
            .is_empty()
    );
    db.drop().await;
}

#[tokio::test]
async fn hard_deletion_records_what_it_removed_and_plain_deletes_stay_refused() {
    let db = TestDatabase::new().await;
    let store = &db.store;
    let stream = unique_stream("forget");
    let other = unique_stream("keep");
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            (1..=3).map(test_event).collect(),
        )
        .await
        .unwrap();
    store
        .append(&other, ExpectedVersion::NoStream, vec![test_event(1)])
        .await
        .unwrap();
    let snapshots = PgSnapshotStore::new(store);
    snapshots
        .save(Snapshot {
            stream_id: stream.clone(),
            stream_version: 3,
            snapshot_version: 1,
            state: serde_json::value::to_raw_value(&serde_json::json!({"n": 3})).unwrap(),
            taken_at: chrono::Utc::now(),
        })
        .await
        .unwrap();

    // A live stream is not hard-deleted.
    match store.hard_delete_stream(&stream, "too early").await {
        Err(PgError::MaintenanceRefused { stream: s, reason }) => {
            assert_eq!(s, stream);
            assert_eq!(reason, MaintenanceRefusal::StreamLive);
        }
        other => panic!("hard-deleting a live stream: {other:?}"),
    }

    // Plain statements stay refused, whoever asks, and also right after a maintenance call in
    // the same transaction (the functions reset what lets their own DELETE through).
    for statement in [
        "DELETE FROM {s}.events WHERE stream_id = $1",
        "UPDATE {s}.events SET payload = '{}' WHERE stream_id = $1",
    ] {
        let err = sqlx::query(sql(&db, statement))
            .bind(stream.as_str())
            .execute(&db.pool)
            .await
            .expect_err(statement);
        assert_eq!(code(&err), "ES001", "{statement}: {err}");
    }
    for statement in [
        "TRUNCATE {s}.events",
        "TRUNCATE {s}.events_archive",
        "TRUNCATE {s}.maintenance_log",
    ] {
        let err = sqlx::query(sql(&db, statement))
            .execute(&db.pool)
            .await
            .expect_err(statement);
        assert_eq!(code(&err), "ES001", "{statement}: {err}");
    }
    store
        .delete_stream(&stream, ExpectedVersion::Exact(3))
        .await
        .unwrap();
    {
        let mut tx = db.pool.begin().await.unwrap();
        let archived: i64 = sqlx::query_scalar(sql(
            &db,
            "SELECT events FROM {s}.archive_stream($1, 'in a transaction')",
        ))
        .bind(other.as_str())
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        assert_eq!(archived, 1);
        let err = sqlx::query(sql(&db, "DELETE FROM {s}.events WHERE stream_id = $1"))
            .bind(stream.as_str())
            .execute(&mut *tx)
            .await
            .expect_err("a plain DELETE after a maintenance call");
        assert_eq!(code(&err), "ES001", "{err}");
        tx.rollback().await.unwrap();
    }

    // A role that is not the owner: the setting does not help it, and the function is not
    // for it.
    let role = format!("es_lifecycle_{}", uuid::Uuid::now_v7().simple());
    let setup = [
        format!("CREATE ROLE {role} NOLOGIN"),
        format!("GRANT USAGE ON SCHEMA \"{}\" TO {role}", db.schema),
        format!("GRANT SELECT, DELETE ON \"{}\".events TO {role}", db.schema),
    ];
    for statement in &setup {
        sqlx::query(AssertSqlSafe(statement.clone()))
            .execute(&db.pool)
            .await
            .unwrap();
    }
    let outcome = async {
        let mut conn = db.pool.acquire().await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        sqlx::query(AssertSqlSafe(format!("SET LOCAL ROLE {role}")))
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query("SELECT set_config('es.maintenance', 'remove_events', true)")
            .execute(&mut *tx)
            .await
            .unwrap();
        let mut savepoint = tx.begin().await.unwrap();
        let delete = sqlx::query(sql(&db, "DELETE FROM {s}.events WHERE stream_id = $1"))
            .bind(stream.as_str())
            .execute(&mut *savepoint)
            .await
            .map(|_| ());
        savepoint.rollback().await.unwrap();
        let call = sqlx::query(sql(
            &db,
            "SELECT * FROM {s}.hard_delete_stream($1, 'sneaky')",
        ))
        .bind(stream.as_str())
        .execute(&mut *tx)
        .await
        .map(|_| ());
        tx.rollback().await.unwrap();
        (delete, call)
    }
    .await;
    for statement in [
        format!("REVOKE ALL ON \"{}\".events FROM {role}", db.schema),
        format!("REVOKE ALL ON SCHEMA \"{}\" FROM {role}", db.schema),
        format!("DROP ROLE {role}"),
    ] {
        sqlx::query(AssertSqlSafe(statement))
            .execute(&db.pool)
            .await
            .unwrap();
    }
    assert_eq!(code(&outcome.0.unwrap_err()), "ES001");
    assert_eq!(code(&outcome.1.unwrap_err()), "42501", "permission denied");
    // The privileged function removes the retired stream and says what it removed.
    let events = sqlx::query_as::<_, (i64, i64)>(sql(
        &db,
        "SELECT min(position), max(position) FROM {s}.events WHERE stream_id = $1",
    ))
    .bind(stream.as_str())
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let record = store
        .hard_delete_stream(&stream, "erasure request 7")
        .await
        .unwrap();
    assert_eq!(record.operation, MaintenanceOperation::HardDelete);
    assert_eq!(record.stream, stream);
    assert_eq!(record.events, 4, "three events and the tombstone");
    assert_eq!(record.versions, Some((1, 4)));
    assert_eq!(record.positions, Some((events.0 as u64, events.1 as u64)));
    assert_eq!(record.reason, "erasure request 7");
    assert_eq!(record.performed_by, session_user(&db).await);
    let age = chrono::Utc::now() - record.performed_at;
    assert!(age < chrono::Duration::minutes(5), "performed_at is now");
    assert_eq!(store.maintenance_log(&stream).await.unwrap(), vec![record]);
    for statement in [
        "DELETE FROM {s}.maintenance_log WHERE stream_id = $1",
        "UPDATE {s}.maintenance_log SET reason = '' WHERE stream_id = $1",
    ] {
        let err = sqlx::query(sql(&db, statement))
            .bind(stream.as_str())
            .execute(&db.pool)
            .await
            .expect_err(statement);
        assert_eq!(code(&err), "ES001", "{statement}: {err}");
    }
    let left: i64 = sqlx::query_scalar(sql(
        &db,
        "SELECT (SELECT count(*) FROM {s}.events WHERE stream_id = $1) \
              + (SELECT count(*) FROM {s}.events_archive WHERE stream_id = $1) \
              + (SELECT count(*) FROM {s}.snapshots WHERE stream_id = $1) \
              + (SELECT count(*) FROM {s}.streams WHERE stream_id = $1)",
    ))
    .bind(stream.as_str())
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(left, 0, "nothing of the stream is left");
    assert_eq!(store.stream_version(&stream).await.unwrap(), None);
    assert_eq!(
        store.read_stream_to_vec(&other, 1).await.unwrap().len(),
        1,
        "other streams keep their events"
    );
    let fresh = store
        .append(&stream, ExpectedVersion::NoStream, vec![test_event(1)])
        .await
        .unwrap();
    assert_eq!(fresh.first_version, 1, "the id is free again");
    db.drop().await;
}

#[tokio::test]
async fn a_delete_waits_for_an_append_holding_the_stream_and_checks_after_it() {
    let db = TestDatabase::new().await;
    let store = db.store.clone();
    let stream = unique_stream("held");
    store
        .append(&stream, ExpectedVersion::NoStream, vec![test_event(1)])
        .await
        .unwrap();

    for (expected, outcome) in [
        (ExpectedVersion::Exact(1), "conflict"),
        (ExpectedVersion::Any, "deleted"),
    ] {
        let stream = if outcome == "conflict" {
            stream.clone()
        } else {
            let s = unique_stream("held");
            store
                .append(&s, ExpectedVersion::NoStream, vec![test_event(1)])
                .await
                .unwrap();
            s
        };
        let mut conn = db.pool.acquire().await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        store
            .append_in(
                &mut tx,
                &stream,
                ExpectedVersion::Exact(1),
                vec![test_event(2), test_event(3)],
            )
            .await
            .unwrap();
        let deleting = {
            let store = store.clone();
            let stream = stream.clone();
            tokio::spawn(async move { store.delete_stream(&stream, expected).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!deleting.is_finished(), "the delete waits for the append");
        tx.commit().await.unwrap();
        let result = deleting.await.unwrap();
        match outcome {
            "conflict" => match result {
                Err(StoreError::Conflict(c)) => assert_eq!(c.actual, Some(3)),
                other => panic!("expected a conflict after the append, got {other:?}"),
            },
            _ => {
                let r = result.unwrap();
                assert_eq!(r.first_version, 4, "the tombstone follows the whole append");
            }
        }
    }
    db.drop().await;
}

#[tokio::test]
async fn hostile_stream_ids_go_through_every_lifecycle_step_as_data() {
    let db = TestDatabase::new().await;
    let store = &db.store;
    let snapshots = PgSnapshotStore::new(store);
    let bystander = unique_stream("bystander");
    store
        .append(&bystander, ExpectedVersion::NoStream, vec![test_event(1)])
        .await
        .unwrap();
    let hostile = [
        "x'); DELETE FROM streams; --",
        "a\"; DROP TABLE events; --",
        "$1 $2 %s %I",
        "ünï-cødé-😀",
        "back\\slash-'quote'",
    ];
    for id in hostile {
        let stream = StreamId::new(id).unwrap();
        store
            .append(
                &stream,
                ExpectedVersion::NoStream,
                (1..=3).map(test_event).collect(),
            )
            .await
            .unwrap();
        snapshots
            .save(Snapshot {
                stream_id: stream.clone(),
                stream_version: 2,
                snapshot_version: 1,
                state: serde_json::value::to_raw_value(&serde_json::json!({})).unwrap(),
                taken_at: chrono::Utc::now(),
            })
            .await
            .unwrap();
        assert_eq!(store.truncate_before(&stream, 3).await.unwrap(), 3, "{id}");
        assert_eq!(
            store.read_stream_to_vec(&stream, 1).await.unwrap().len(),
            1,
            "{id}"
        );
        store
            .delete_stream(&stream, ExpectedVersion::Exact(3))
            .await
            .unwrap();
        store
            .recreate_stream(&stream, vec![test_event(5)])
            .await
            .unwrap();
        store
            .delete_stream(&stream, ExpectedVersion::Exact(5))
            .await
            .unwrap();
        let archived = store.archive_stream(&stream, id).await.unwrap();
        assert_eq!((archived.events, archived.reason.as_str()), (6, id));
        assert_eq!(store.read_archived_stream(&stream).await.unwrap().len(), 6);
        let removed = store.hard_delete_stream(&stream, id).await.unwrap();
        assert_eq!(removed.stream, stream);
        assert_eq!(store.maintenance_log(&stream).await.unwrap().len(), 2);
    }
    assert_eq!(
        store.read_stream_to_vec(&bystander, 1).await.unwrap().len(),
        1,
        "nothing else was touched"
    );
    let streams: i64 = sqlx::query_scalar(sql(&db, "SELECT count(*) FROM {s}.streams"))
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(streams, 1);
    db.drop().await;
}

#[tokio::test]
async fn recreation_through_the_repository_and_the_command_handler() {
    use es_core::testing::evolution::{Ledger, LedgerCommand};
    use es_core::{CommandError, CommandHandler};
    let db = TestDatabase::new().await;
    let store: Arc<dyn EventStore> = Arc::new(db.store.clone());
    let handler = CommandHandler::<Ledger>::new(Arc::clone(&store));
    handler
        .execute("acct", LedgerCommand::Credit(10))
        .await
        .unwrap();
    let stream = StreamId::for_aggregate("ledger", "acct").unwrap();
    db.store
        .delete_stream(&stream, ExpectedVersion::Any)
        .await
        .unwrap();
    match handler.execute("acct", LedgerCommand::Credit(1)).await {
        Err(CommandError::Store(StoreError::StreamDeleted { stream: s })) => assert_eq!(s, stream),
        other => panic!("a command on a deleted aggregate: {other:?}"),
    }
    db.store
        .recreate_stream(&stream, vec![common::credit(3, "")])
        .await
        .unwrap();
    let done = handler
        .execute("acct", LedgerCommand::Credit(4))
        .await
        .unwrap();
    assert_eq!((done.state.balance, done.version), (7, 4));
    db.drop().await;
}

#[tokio::test]
async fn appends_cannot_forge_the_stores_own_event_types() {
    let db = TestDatabase::new().await;
    let stream = unique_stream("ledger");
    let payload =
        serde_json::value::to_raw_value(&serde_json::json!({ "last_version": 0 })).unwrap();
    let forged = es_core::NewEvent::new(STREAM_DELETED, 1, payload);
    for result in [
        db.store
            .append(&stream, ExpectedVersion::Any, vec![forged.clone()])
            .await,
        db.store
            .import(&[(stream.clone(), vec![forged.clone()])])
            .await
            .map(|_| es_core::AppendResult {
                first_version: 1,
                last_version: 1,
                positions: Vec::new(),
                deduplicated: false,
            }),
    ] {
        assert!(
            matches!(result, Err(StoreError::InvalidEvent { .. })),
            "{result:?}"
        );
    }
    assert_eq!(db.store.stream_version(&stream).await.unwrap(), None);
    db.drop().await;
}

#[tokio::test]
async fn append_in_refuses_a_deleted_stream_and_leaves_the_transaction_usable() {
    let db = TestDatabase::new().await;
    let stream = unique_stream("txdel");
    let other = unique_stream("txother");
    db.store
        .append(&stream, ExpectedVersion::NoStream, vec![test_event(1)])
        .await
        .unwrap();
    db.store
        .delete_stream(&stream, ExpectedVersion::Exact(1))
        .await
        .unwrap();
    let mut conn = db.pool.acquire().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    for expected in [ExpectedVersion::Any, ExpectedVersion::Exact(2)] {
        match db
            .store
            .append_in(&mut tx, &stream, expected, vec![test_event(2)])
            .await
        {
            Err(StoreError::StreamDeleted { stream: s }) => assert_eq!(s, stream),
            other => panic!("append_in to a deleted stream ({expected}): {other:?}"),
        }
    }
    db.store
        .append_in(
            &mut tx,
            &other,
            ExpectedVersion::NoStream,
            vec![test_event(1)],
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(db.store.stream_version(&other).await.unwrap(), Some(1));
    db.drop().await;
}

#[tokio::test]
async fn truncated_reads_page_from_the_truncation_point() {
    let db = TestDatabase::new().await;
    let store = &db.store;
    let snapshots = PgSnapshotStore::new(store);
    let stream = unique_stream("long");
    for chunk in 0..5u64 {
        store
            .append(
                &stream,
                ExpectedVersion::Any,
                (0..500).map(|i| test_event(chunk * 500 + i)).collect(),
            )
            .await
            .unwrap();
    }
    let snapshot = |version: u64| Snapshot {
        stream_id: stream.clone(),
        stream_version: version,
        snapshot_version: 1,
        state: serde_json::value::to_raw_value(&serde_json::json!({})).unwrap(),
        taken_at: chrono::Utc::now(),
    };
    let versions = |events: Vec<es_core::RecordedEvent>| {
        events.iter().map(|e| e.stream_version).collect::<Vec<_>>()
    };
    // Within the first page of a read, then past several pages.
    for before in [500u64, 2100] {
        snapshots.save(snapshot(before - 1)).await.unwrap();
        assert_eq!(
            store.truncate_before(&stream, before).await.unwrap(),
            before
        );
        let read = store.read_stream_to_vec(&stream, 1).await.unwrap();
        assert_eq!(versions(read), (before..=2500).collect::<Vec<_>>());
        let from = store
            .read_stream_to_vec(&stream, before + 10)
            .await
            .unwrap();
        assert_eq!(versions(from), (before + 10..=2500).collect::<Vec<_>>());
        let range = futures_util::TryStreamExt::try_collect::<Vec<_>>(store.read_stream_range(
            &stream,
            1,
            before + 1,
        ))
        .await
        .unwrap();
        assert_eq!(versions(range), vec![before, before + 1]);
    }
    db.drop().await;
}
