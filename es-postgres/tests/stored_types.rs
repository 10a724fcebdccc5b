//! The start-up check of event types: the store counts what it holds per category, type and
//! schema version, and a projection names every stored type it cannot read in the categories
//! it reads, before any event is passed over or parked.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Totals, credit};
use std::sync::Arc;

use es_core::testing::evolution::{LedgerEvent, ledger_upcasters};
use es_core::{EventStore, ExpectedVersion, NewEvent, StreamId};
use es_postgres::testing::TestDatabase;
use es_postgres::{ProjectionError, ProjectionRunner, StoredType};
use serde_json::value::to_raw_value;

fn raw(event_type: &str, version: u32) -> NewEvent {
    NewEvent::new(
        event_type,
        version,
        to_raw_value(&serde_json::json!({"cents": 1})).unwrap(),
    )
}

async fn append(db: &TestDatabase, stream: &str, events: Vec<NewEvent>) {
    db.store
        .append(
            &StreamId::new(stream).unwrap(),
            ExpectedVersion::Any,
            events,
        )
        .await
        .unwrap();
    // Counted as of the transaction horizon, which other tests' transactions can hold back.
    db.settle().await;
}

fn counts(types: &[StoredType]) -> Vec<(String, String, u32, u64)> {
    types
        .iter()
        .map(|t| {
            (
                t.category.clone(),
                t.event_type.clone(),
                t.schema_version,
                t.events,
            )
        })
        .collect()
}

#[tokio::test]
async fn stored_types_are_counted_once_per_event_however_many_ask_at_once() {
    let db = TestDatabase::new().await;
    append(&db, "ledger-1", vec![credit(1, "a"), credit(2, "b")]).await;
    append(&db, "ledger-2", vec![raw("Debited", 1)]).await;
    append(&db, "audit", vec![raw("Checked", 2)]).await;
    assert_eq!(
        counts(&db.store.stored_types().await.unwrap()),
        vec![
            ("audit".into(), "Checked".into(), 2, 1),
            ("ledger".into(), "Credited".into(), 3, 2),
            ("ledger".into(), "Debited".into(), 1, 1),
        ]
    );

    // Only what is new is counted, once, whoever asks.
    for n in 0..30 {
        append(&db, &format!("ledger-{n}"), vec![credit(n, "more")]).await;
    }
    let store = db.store.clone();
    let asks: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.stored_types().await.unwrap() })
        })
        .collect();
    for ask in asks {
        ask.await.unwrap();
    }
    assert_eq!(
        counts(&db.store.stored_types().await.unwrap()),
        vec![
            ("audit".into(), "Checked".into(), 2, 1),
            ("ledger".into(), "Credited".into(), 3, 32),
            ("ledger".into(), "Debited".into(), 1, 1),
        ]
    );
    db.drop().await;
}

#[tokio::test]
async fn a_projection_names_every_stored_type_it_cannot_read_in_its_categories() {
    let db = TestDatabase::new().await;
    append(&db, "ledger-1", vec![credit(5, "ok"), raw("Debited", 1)]).await;
    // Old versions the upcasters lift, and the old name of Annotated.
    append(&db, "ledger-2", vec![raw("Credited", 1), raw("Noted", 1)]).await;
    let runner = ProjectionRunner::new(db.store.clone(), Totals::new(&db, "totals"))
        .with_upcasters(std::sync::Arc::new(ledger_upcasters()));
    assert_eq!(runner.unreadable_types().await.unwrap(), vec![]);
    runner.check_stored_types().await.unwrap();

    // A type renamed without an upcaster, a version from a newer release, and, in a
    // category the projection does not read, a type it does not know.
    append(&db, "ledger-3", vec![raw("Credit", 1), raw("Debited", 2)]).await;
    append(&db, "audit-1", vec![raw("Checked", 1)]).await;
    let unreadable = runner.unreadable_types().await.unwrap();
    let named: Vec<(&str, u32)> = unreadable
        .iter()
        .map(|t| (t.stored.event_type.as_str(), t.stored.schema_version))
        .collect();
    assert_eq!(named, vec![("Credit", 1), ("Debited", 2)]);
    assert!(
        unreadable[0].reason.contains("no upcaster lifts it"),
        "{}",
        unreadable[0]
    );
    assert!(unreadable[1].reason.contains("newer"), "{}", unreadable[1]);
    match runner.check_stored_types().await {
        Err(error @ ProjectionError::UnreadableTypes { .. }) => {
            let text = error.to_string();
            assert!(
                text.contains("totals") && text.contains("Credit v1"),
                "{text}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // Without the upcasters, the old versions and the old name are unreadable too.
    let bare = ProjectionRunner::new(db.store.clone(), Totals::new(&db, "bare"));
    let named: Vec<(String, u32)> = bare
        .unreadable_types()
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.stored.event_type, t.stored.schema_version))
        .collect();
    assert_eq!(
        named,
        vec![
            ("Credit".to_owned(), 1),
            ("Credited".to_owned(), 1),
            ("Debited".to_owned(), 2),
            ("Noted".to_owned(), 1)
        ]
    );
    db.drop().await;
}

#[tokio::test]
async fn the_schema_gate_runs_a_stored_sample_through_each_upcaster_chain() {
    let db = TestDatabase::new().await;
    let euros = NewEvent::new(
        "Credited",
        1,
        to_raw_value(&serde_json::json!({"amount": 5})).unwrap(),
    );
    append(
        &db,
        "ledger-1",
        vec![credit(1, "a"), euros, raw("Noted", 1)],
    )
    .await;
    // A release whose upcaster renames `Old` into a type it no longer has.
    append(&db, "legacy-1", vec![raw("Old", 1)]).await;
    let upcasters = Arc::new(ledger_upcasters().add_transform("Old", 1, |payload| {
        Ok(vec![es_core::Upcasted {
            event_type: "Gone".into(),
            schema_version: 1,
            payload,
        }])
    }));
    let catalogue = es_core::EventCatalogue::new(upcasters).add::<LedgerEvent>();
    let unreadable = db.store.unreadable_types(&catalogue).await.unwrap();
    let named: Vec<String> = unreadable.iter().map(ToString::to_string).collect();
    assert_eq!(unreadable.len(), 1, "{named:?}");
    assert!(
        named[0].contains("Old v1") && named[0].contains("Gone v1"),
        "{named:?}"
    );

    // Without upcasters, the old versions and names are named too; nothing is a false ok.
    let bare =
        es_core::EventCatalogue::new(Arc::new(es_core::Upcasters::new())).add::<LedgerEvent>();
    let unreadable = db.store.unreadable_types(&bare).await.unwrap();
    let named: Vec<String> = unreadable.iter().map(ToString::to_string).collect();
    assert_eq!(unreadable.len(), 3, "{named:?}");
    db.drop().await;
}
