//! Schema evolution and snapshots on the in-memory stores, and the upcaster registry's rules.

use std::sync::Arc;

use async_trait::async_trait;
use es_core::testing::evolution::{
    Ledger, LedgerCommand, LedgerEvent, ledger_upcasters, snapshots_only_shorten_replay,
};
use es_core::{
    CommandHandler, DecodeError, EventStore, ExpectedVersion, InMemoryEventStore,
    InMemorySnapshotStore, NewEvent, Repository, Snapshot, SnapshotPolicy, SnapshotStore,
    StoreError, StreamId, UpcasterError, Upcasters,
};
use proptest::prelude::*;
use serde_json::json;

es_core::evolution_tests!(async {
    (
        Arc::new(InMemoryEventStore::new()) as Arc<dyn EventStore>,
        Arc::new(InMemorySnapshotStore::new()) as Arc<dyn SnapshotStore>,
    )
});

#[test]
fn a_chain_with_a_hole_is_refused_at_start_up() {
    // Credited is at v3: lifting v1 alone leaves v2 events unloadable.
    let holey = Upcasters::new().add("Credited", 1, Ok);
    assert_eq!(
        holey.validate::<LedgerEvent>(),
        Err(UpcasterError::Hole {
            event_type: "Credited".into(),
            missing: 2,
            current: 3
        })
    );
    let twice = ledger_upcasters().add("Credited", 2, Ok);
    assert!(matches!(
        twice.validate::<LedgerEvent>(),
        Err(UpcasterError::Duplicate { from: 2, .. })
    ));
    let beyond = ledger_upcasters().add("Debited", 1, Ok);
    assert!(matches!(
        beyond.validate::<LedgerEvent>(),
        Err(UpcasterError::BeyondCurrent {
            from: 1,
            current: 1,
            ..
        })
    ));
    ledger_upcasters().validate::<LedgerEvent>().unwrap();
}

#[tokio::test]
async fn events_from_a_newer_release_or_of_unknown_types_are_refused_not_misread() {
    let store = Arc::new(InMemoryEventStore::new());
    let upcasters = ledger_upcasters();
    for (event_type, version, expected) in [("Credited", 4, "future"), ("Frozen", 1, "unknown")] {
        let stream = StreamId::new(format!("ledger-{event_type}")).unwrap();
        let payload = serde_json::value::to_raw_value(&json!({ "cents": 1, "memo": "" })).unwrap();
        store
            .append(
                &stream,
                ExpectedVersion::NoStream,
                vec![NewEvent::new(event_type, version, payload)],
            )
            .await
            .unwrap();
        let recorded = store
            .read_stream_to_vec(&stream, 1)
            .await
            .unwrap()
            .remove(0);
        let err = upcasters.decode::<LedgerEvent>(recorded).unwrap_err();
        match (expected, &err.source) {
            (
                "future",
                DecodeError::FutureVersion {
                    stored: 4,
                    current: 3,
                },
            ) => {}
            ("unknown", DecodeError::UnknownType(t)) if t == "Frozen" => {}
            _ => panic!("{expected}: unexpected {err}"),
        }
        assert_eq!(err.event.stream_id, stream);
    }
}

/// A snapshot store that always fails.
struct Broken;

#[async_trait]
impl SnapshotStore for Broken {
    async fn load(&self, _: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        Err(StoreError::Backend {
            source: "snapshot store down".into(),
            transient: true,
        })
    }
    async fn save(&self, _: Snapshot) -> Result<(), StoreError> {
        Err(StoreError::Backend {
            source: "snapshot store down".into(),
            transient: true,
        })
    }
}

#[tokio::test]
async fn a_failing_snapshot_store_never_fails_a_command() {
    let store: Arc<dyn EventStore> = Arc::new(InMemoryEventStore::new());
    let repository = Repository::<Ledger>::new(Arc::clone(&store))
        .with_snapshots(Arc::new(Broken), SnapshotPolicy::EveryNEvents(1));
    let handler = CommandHandler::with_repository(repository);
    for _ in 0..3 {
        handler
            .execute("a", LedgerCommand::Credit(5))
            .await
            .unwrap();
    }
    let loaded = handler.load("a").await.unwrap();
    assert_eq!((loaded.state.balance, loaded.version), (15, 3));
}

fn command() -> impl Strategy<Value = LedgerCommand> {
    prop_oneof![
        (1u64..10_000).prop_map(LedgerCommand::Credit),
        (1u64..10_000).prop_map(LedgerCommand::Debit),
        "[a-z]{0,8}".prop_map(LedgerCommand::Annotate),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn loading_with_snapshots_equals_a_full_replay(
        commands in prop::collection::vec(command(), 1..40),
        every in 1u64..8,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(snapshots_only_shorten_replay(
            Arc::new(InMemoryEventStore::new()),
            Arc::new(InMemorySnapshotStore::new()),
            commands,
            every,
        ));
    }
}

/// A reader that takes only debits: a projection sharing the application's upcasters.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
enum DebitsOnly {
    Debited { cents: u64 },
}

impl es_core::DomainEvent for DebitsOnly {
    const TYPES: &'static [es_core::EventType] = &[es_core::EventType {
        name: "Debited",
        version: 1,
    }];
    fn event_type(&self) -> &'static str {
        "Debited"
    }
    fn encode(&self) -> Result<Box<serde_json::value::RawValue>, serde_json::Error> {
        es_core::encode_tagged(self)
    }
    fn decode(event_type: &str, payload: &str) -> Result<Self, DecodeError> {
        if es_core::current_version::<Self>(event_type).is_none() {
            return Err(DecodeError::UnknownType(event_type.to_owned()));
        }
        Ok(es_core::decode_tagged(event_type, payload)?)
    }
}

#[tokio::test]
async fn a_narrow_reader_selects_its_types_from_lifted_events() {
    let store = Arc::new(InMemoryEventStore::new());
    let stream = StreamId::new("ledger-select").unwrap();
    let raw = |v: serde_json::Value| serde_json::value::to_raw_value(&v).unwrap();
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![
                // Lifted to a type the reader does not take.
                NewEvent::new("Credited", 1, raw(json!({ "amount": 2 }))),
                // Split into a debit (taken) and a note (left out).
                NewEvent::new("Transferred", 1, raw(json!({ "cents": 7, "to": "bob" }))),
                // Current, of a type some upcaster starts from, not the reader's.
                NewEvent::new("Credited", 3, raw(json!({ "cents": 1, "memo": "" }))),
                NewEvent::new("Debited", 1, raw(json!({ "cents": 3 }))),
            ],
        )
        .await
        .unwrap();
    let upcasters = ledger_upcasters();
    let mut selected = Vec::new();
    for recorded in store.read_stream_to_vec(&stream, 1).await.unwrap() {
        upcasters
            .select_ref_into::<DebitsOnly>(&recorded, &mut selected)
            .unwrap();
    }
    let payloads: Vec<_> = selected.iter().map(|e| &e.payload).collect();
    assert_eq!(
        payloads,
        [
            &DebitsOnly::Debited { cents: 7 },
            &DebitsOnly::Debited { cents: 3 }
        ]
    );
    assert_eq!(
        selected[0].stream_version, 2,
        "the split keeps its envelope"
    );

    // What the reader does take must still decode: a broken debit is an error, not skipped.
    let broken = store
        .append(
            &stream,
            ExpectedVersion::Any,
            vec![NewEvent::new("Debited", 1, raw(json!({ "cents": "x" })))],
        )
        .await
        .unwrap();
    let recorded = store
        .read_stream_to_vec(&stream, broken.first_version)
        .await
        .unwrap();
    let err = upcasters
        .select_ref_into::<DebitsOnly>(&recorded[0], &mut selected)
        .unwrap_err();
    assert_eq!(err.event.stream_version, broken.first_version);
}
