//! Bulk import through COPY: what it writes reads back exactly as appended events do, and what
//! it refuses leaves nothing behind.

use es_core::testing::conformance::test_event;
use es_core::{EventStore, ExpectedVersion, Metadata, NewEvent, StoreError, StreamId};
use es_postgres::ImportReport;
use es_postgres::testing::TestDatabase;
use serde_json::value::RawValue;

fn stream(name: &str) -> StreamId {
    StreamId::new(name).expect("valid stream id")
}

/// An event whose payload and metadata hold every character COPY's text format escapes.
fn awkward_event(n: u64) -> NewEvent {
    let payload = RawValue::from_string(format!(
        "{{\n\t\"memo\": \"tab\\tnewline\\nbackslash\\\\ quote\\\" {n}\",\r\n \"n\": {n}\n}}"
    ))
    .expect("valid JSON");
    let mut metadata = Metadata::new();
    metadata.insert("path", "C:\\imports\\2026");
    NewEvent::new("Imported", 1, payload)
        .with_metadata(metadata)
        .caused_by(uuid::Uuid::now_v7())
}

async fn event_count(db: &TestDatabase) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{}\".events",
        db.schema
    )))
    .fetch_one(&db.pool)
    .await
    .expect("count")
}

#[tokio::test]
async fn imported_streams_read_back_exactly_and_take_appends_after() {
    let db = TestDatabase::new().await;
    let imported = vec![
        (
            stream("legacy-1"),
            (1..=3).map(awkward_event).collect::<Vec<_>>(),
        ),
        (stream("legacy-2"), vec![test_event(7)]),
        (stream("legacy-empty"), Vec::new()),
    ];
    let report = db.store.import(&imported).await.expect("import");
    assert_eq!(
        report,
        ImportReport {
            streams: 2,
            events: 4
        }
    );

    let read = db
        .store
        .read_stream_to_vec(&stream("legacy-1"), 1)
        .await
        .unwrap();
    assert_eq!(read.len(), 3);
    for (stored, sent) in read.iter().zip(&imported[0].1) {
        assert_eq!(stored.event_id, sent.event_id);
        assert_eq!(
            stored.payload.get(),
            sent.payload.get(),
            "payload kept byte for byte"
        );
        assert_eq!(stored.metadata, sent.metadata);
        assert_eq!(stored.causation_id, sent.causation_id);
        assert_eq!(stored.correlation_id, sent.correlation_id);
        assert_eq!(stored.event_type, "Imported");
    }
    assert_eq!(
        read.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(
        db.store.stream_version(&stream("legacy-2")).await.unwrap(),
        Some(1)
    );
    assert_eq!(
        db.store
            .stream_version(&stream("legacy-empty"))
            .await
            .unwrap(),
        None
    );

    // The global log holds them in import order, and appends continue the streams.
    let log =
        es_core::testing::conformance::read_all_until(&db.store, es_core::Position::START, 4).await;
    let ids: Vec<_> = log.iter().map(|e| e.event_id).collect();
    let sent: Vec<_> = imported
        .iter()
        .flat_map(|(_, events)| events.iter().map(|e| e.event_id))
        .collect();
    assert_eq!(ids, sent);
    db.store
        .append(
            &stream("legacy-1"),
            ExpectedVersion::Exact(3),
            vec![test_event(4)],
        )
        .await
        .expect("appending after an import");
    db.drop().await;
}

#[tokio::test]
async fn a_refused_import_writes_nothing_and_names_the_culprit() {
    let db = TestDatabase::new().await;
    let existing = test_event(1);
    let existing_id = existing.event_id;
    db.store
        .append(
            &stream("taken-1"),
            ExpectedVersion::NoStream,
            vec![existing],
        )
        .await
        .unwrap();

    // A stream that exists.
    let err = db
        .store
        .import(&[
            (stream("fresh-1"), vec![test_event(1)]),
            (stream("taken-1"), vec![test_event(2)]),
        ])
        .await
        .unwrap_err();
    match err {
        StoreError::Conflict(conflict) => {
            assert_eq!(conflict.stream, stream("taken-1"));
            assert_eq!(conflict.actual, Some(1));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }

    // An event id already stored.
    let mut reused = test_event(3);
    reused.event_id = existing_id;
    let err = db
        .store
        .import(&[
            (stream("fresh-2"), vec![test_event(1)]),
            (stream("fresh-3"), vec![test_event(2), reused]),
        ])
        .await
        .unwrap_err();
    match err {
        StoreError::EventIdReused {
            event_id,
            stream: s,
            ..
        } => {
            assert_eq!(event_id, existing_id);
            assert_eq!(s, stream("fresh-3"));
        }
        other => panic!("expected a reused id, got {other:?}"),
    }

    // The same stream twice, the same id twice.
    let twice = test_event(1);
    for import in [
        vec![
            (stream("fresh-4"), vec![test_event(1)]),
            (stream("fresh-4"), vec![test_event(2)]),
        ],
        vec![
            (stream("fresh-5"), vec![twice.clone()]),
            (stream("fresh-6"), vec![twice.clone()]),
        ],
    ] {
        assert!(matches!(
            db.store.import(&import).await,
            Err(StoreError::InvalidEvent { .. })
        ));
    }

    assert_eq!(
        event_count(&db).await,
        1,
        "nothing of the refused imports was written"
    );
    for name in ["fresh-1", "fresh-2", "fresh-3", "fresh-4", "fresh-5"] {
        assert_eq!(db.store.stream_version(&stream(name)).await.unwrap(), None);
    }
    db.drop().await;
}
