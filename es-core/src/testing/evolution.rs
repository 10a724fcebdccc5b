//! Checks for schema evolution and snapshots against any event store and snapshot store, with
//! a `Ledger` aggregate whose events have a history: a type at schema version 3 (stored v1 and
//! v2 payloads must still load), a renamed type, a split one and a retired one.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    Aggregate, CommandHandler, EventStore, ExpectedVersion, NewEvent, Repository, Snapshot,
    SnapshotPolicy, SnapshotStore, Upcasted, Upcasters,
};

/// A ledger: credits, debits and notes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    /// In cents.
    pub balance: i64,
    /// Notes, in order.
    pub notes: Vec<String>,
}

/// Commands of [`Ledger`].
#[derive(Clone, Debug)]
pub enum LedgerCommand {
    /// Add cents.
    Credit(u64),
    /// Remove cents.
    Debit(u64),
    /// Add a note.
    Annotate(String),
}

/// Events of [`Ledger`], at their current schema versions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LedgerEvent {
    /// v1 `{"amount": euros}`, v2 `{"cents": n}`, v3 adds `memo`.
    Credited {
        /// In cents.
        cents: u64,
        /// Free text.
        memo: String,
    },
    /// v1 `{"cents": n}`.
    Debited {
        /// In cents.
        cents: u64,
    },
    /// Stored as `Noted` before it was renamed.
    Annotated {
        /// The note.
        text: String,
    },
}

impl crate::DomainEvent for LedgerEvent {
    const TYPES: &'static [crate::EventType] = &[
        crate::EventType {
            name: "Credited",
            version: 3,
        },
        crate::EventType {
            name: "Debited",
            version: 1,
        },
        crate::EventType {
            name: "Annotated",
            version: 1,
        },
    ];
    fn event_type(&self) -> &'static str {
        match self {
            Self::Credited { .. } => "Credited",
            Self::Debited { .. } => "Debited",
            Self::Annotated { .. } => "Annotated",
        }
    }
    fn encode(&self) -> Result<Box<serde_json::value::RawValue>, serde_json::Error> {
        crate::encode_tagged(self)
    }
    fn decode(event_type: &str, payload: &str) -> Result<Self, crate::DecodeError> {
        if crate::current_version::<Self>(event_type).is_none() {
            return Err(crate::DecodeError::UnknownType(event_type.to_owned()));
        }
        Ok(crate::decode_tagged(event_type, payload)?)
    }
}

/// The ledger never refuses a command.
#[derive(Debug, thiserror::Error)]
#[error("never")]
pub struct Never;

impl Aggregate for Ledger {
    const CATEGORY: &'static str = "ledger";
    const SNAPSHOT_VERSION: u32 = 2;
    type Command = LedgerCommand;
    type Event = LedgerEvent;
    type Error = Never;

    fn decide(&self, command: &LedgerCommand) -> Result<Vec<LedgerEvent>, Never> {
        Ok(vec![match command {
            LedgerCommand::Credit(cents) => LedgerEvent::Credited {
                cents: *cents,
                memo: String::new(),
            },
            LedgerCommand::Debit(cents) => LedgerEvent::Debited { cents: *cents },
            LedgerCommand::Annotate(text) => LedgerEvent::Annotated { text: text.clone() },
        }])
    }

    fn apply(&mut self, event: &LedgerEvent) {
        match event {
            LedgerEvent::Credited { cents, .. } => self.balance += *cents as i64,
            LedgerEvent::Debited { cents } => self.balance -= *cents as i64,
            LedgerEvent::Annotated { text } => self.notes.push(text.clone()),
        }
    }
}

/// The ledger's upcasters: its whole schema history.
pub fn ledger_upcasters() -> Upcasters {
    Upcasters::new()
        .add("Credited", 1, |mut p| {
            let euros = p["amount"].as_u64().ok_or("amount is not a whole number")?;
            p = json!({ "cents": euros * 100 });
            Ok(p)
        })
        .add("Credited", 2, |mut p| {
            p["memo"] = json!("");
            Ok(p)
        })
        .add_transform("Noted", 1, |p| {
            Ok(vec![Upcasted {
                event_type: "Annotated".into(),
                schema_version: 1,
                payload: json!({ "text": p["note"] }),
            }])
        })
        // A transfer out used to be one event; it is now a debit and a note.
        .add_transform("Transferred", 1, |p| {
            let to = p["to"].as_str().ok_or("to is not a string")?;
            Ok(vec![
                Upcasted {
                    event_type: "Debited".into(),
                    schema_version: 1,
                    payload: json!({ "cents": p["cents"] }),
                },
                Upcasted {
                    event_type: "Annotated".into(),
                    schema_version: 1,
                    payload: json!({ "text": format!("transfer to {to}") }),
                },
            ])
        })
        // Audit markers carried no state; they are retired.
        .add_transform("Audited", 1, |_| Ok(vec![]))
}

fn stored(event_type: &str, version: u32, payload: Value) -> NewEvent {
    NewEvent::new(
        event_type,
        version,
        serde_json::value::to_raw_value(&payload).expect("JSON"),
    )
}

/// Fixtures written by older releases, as they sit in a store.
pub fn ledger_v1_fixtures() -> Vec<NewEvent> {
    vec![
        stored("Credited", 1, json!({ "amount": 12 })),
        stored("Credited", 2, json!({ "cents": 250 })),
        stored("Noted", 1, json!({ "note": "opened by migration" })),
        stored("Audited", 1, json!({ "by": "auditor" })),
        stored("Transferred", 1, json!({ "cents": 300, "to": "savings" })),
        stored("Credited", 3, json!({ "cents": 5, "memo": "tip" })),
    ]
}

/// The state the fixtures must load as.
pub fn ledger_fixture_state() -> Ledger {
    Ledger {
        balance: 1200 + 250 - 300 + 5,
        notes: vec!["opened by migration".into(), "transfer to savings".into()],
    }
}

/// Events stored at old schema versions, under old names, since split or retired, load through
/// the upcasters for aggregates and for readers of the global log alike.
pub async fn old_events_load_through_upcasters(store: Arc<dyn EventStore>) {
    let upcasters = Arc::new(ledger_upcasters());
    upcasters
        .validate::<LedgerEvent>()
        .expect("the ledger's upcaster chain has no hole");
    let stream = super::conformance::unique_stream("ledger");
    store
        .append(&stream, ExpectedVersion::NoStream, ledger_v1_fixtures())
        .await
        .expect("store the fixtures");

    let repository =
        Repository::<Ledger>::new(Arc::clone(&store)).with_upcasters(Arc::clone(&upcasters));
    let loaded = repository.load(&stream).await.expect("old events load");
    assert_eq!(loaded.state, ledger_fixture_state());
    assert_eq!(loaded.version, 6);

    // A reader of the global log gets the same typed events.
    let recorded = store.read_stream_to_vec(&stream, 1).await.expect("read");
    let mut replayed = Ledger::default();
    let mut decoded = Vec::new();
    for event in recorded {
        for envelope in upcasters.decode::<LedgerEvent>(event).expect("upcast") {
            assert_eq!(
                envelope.schema_version,
                crate::current_version::<LedgerEvent>(&envelope.event_type).expect("known type")
            );
            replayed.apply(&envelope.payload);
            decoded.push((envelope.stream_version, envelope.payload));
        }
    }
    assert_eq!(replayed, ledger_fixture_state());
    assert_eq!(decoded.len(), 6, "one retired, one split in two");
    let versions: Vec<_> = decoded.iter().map(|(v, _)| *v).collect();
    assert_eq!(
        versions,
        [1, 2, 3, 5, 5, 6],
        "the retired event (4) is skipped; the split one's parts keep its version"
    );

    // New events are written at the current version.
    let handler = CommandHandler::with_repository(repository);
    let id = stream.as_str().trim_start_matches("ledger-");
    handler
        .execute(id, LedgerCommand::Credit(1))
        .await
        .expect("command on an upcast aggregate");
    let last = store.read_stream_to_vec(&stream, 7).await.expect("read");
    assert_eq!(
        (last[0].event_type.as_str(), last[0].schema_version),
        ("Credited", 3)
    );
}

/// An upcaster that fails is a typed error naming the stored event and the version; nothing of
/// the event is applied.
pub async fn failing_upcasters_name_the_event(store: Arc<dyn EventStore>) {
    let stream = super::conformance::unique_stream("ledger");
    let bad = stored("Credited", 1, json!({ "amount": "twelve" }));
    let bad_id = bad.event_id;
    store
        .append(&stream, ExpectedVersion::NoStream, vec![bad])
        .await
        .expect("store");
    let repository =
        Repository::<Ledger>::new(Arc::clone(&store)).with_upcasters(Arc::new(ledger_upcasters()));
    match repository.load(&stream).await {
        Err(crate::CommandError::Decode(err)) => {
            assert_eq!(err.event.event_id, bad_id);
            assert_eq!(err.event.stream_id, stream);
            assert_eq!(err.event.stream_version, 1);
            assert!(
                matches!(err.source, crate::DecodeError::Upcast { from: 1, .. }),
                "{err}"
            );
        }
        other => panic!("expected an upcast error, got {other:?}"),
    }
}

/// Loading with snapshots yields the same state and version as a full replay, after every
/// command of `commands`, with a snapshot every `every` events.
pub async fn snapshots_only_shorten_replay(
    store: Arc<dyn EventStore>,
    snapshots: Arc<dyn SnapshotStore>,
    commands: Vec<LedgerCommand>,
    every: u64,
) {
    let stream = super::conformance::unique_stream("ledger");
    let id = stream.as_str().trim_start_matches("ledger-").to_owned();
    let plain = Repository::<Ledger>::new(Arc::clone(&store));
    let snapshotting = Repository::<Ledger>::new(Arc::clone(&store))
        .with_snapshots(Arc::clone(&snapshots), SnapshotPolicy::EveryNEvents(every));
    let handler = CommandHandler::with_repository(snapshotting.clone());
    for (i, command) in commands.into_iter().enumerate() {
        let executed = handler.execute(&id, command).await.expect("command");
        let replayed = plain.load(&stream).await.expect("full replay");
        let fast = snapshotting.load(&stream).await.expect("snapshot load");
        assert_eq!(fast.state, replayed.state, "after command {i}");
        assert_eq!(fast.version, replayed.version);
        assert_eq!(executed.state, replayed.state);
        assert_eq!(
            fast.snapshot_at,
            (replayed.version / every) * every,
            "the newest due snapshot is used"
        );
    }
}

/// A snapshot of another snapshot version, or one that does not deserialize, is ignored: the
/// load replays every event instead of misreading it.
pub async fn unusable_snapshots_are_ignored(
    store: Arc<dyn EventStore>,
    snapshots: Arc<dyn SnapshotStore>,
) {
    let stream = super::conformance::unique_stream("ledger");
    let id = stream.as_str().trim_start_matches("ledger-").to_owned();
    let handler = CommandHandler::<Ledger>::new(Arc::clone(&store));
    for cents in [100, 20, 3] {
        handler
            .execute(&id, LedgerCommand::Credit(cents))
            .await
            .expect("command");
    }
    let repository = Repository::<Ledger>::new(Arc::clone(&store))
        .with_snapshots(Arc::clone(&snapshots), SnapshotPolicy::Never);

    let lying_state = serde_json::value::to_raw_value(&Ledger {
        balance: 999_999,
        notes: vec![],
    })
    .expect("JSON");
    for (snapshot_version, state) in [
        (Ledger::SNAPSHOT_VERSION - 1, lying_state.clone()),
        (
            Ledger::SNAPSHOT_VERSION,
            serde_json::value::to_raw_value(&json!({"balance": "x"})).expect("JSON"),
        ),
    ] {
        snapshots
            .save(Snapshot {
                stream_id: stream.clone(),
                stream_version: 2,
                snapshot_version,
                state,
                taken_at: chrono::Utc::now(),
            })
            .await
            .expect("save");
        let loaded = repository.load(&stream).await.expect("load");
        assert_eq!(
            loaded.state.balance, 123,
            "snapshot v{snapshot_version} ignored"
        );
        assert_eq!(loaded.snapshot_at, 0, "a full replay");
    }
    // A usable snapshot is used, and only events after it are applied.
    snapshots
        .save(Snapshot {
            stream_id: stream.clone(),
            stream_version: 2,
            snapshot_version: Ledger::SNAPSHOT_VERSION,
            state: serde_json::value::to_raw_value(&Ledger {
                balance: 120,
                notes: vec![],
            })
            .expect("JSON"),
            taken_at: chrono::Utc::now(),
        })
        .await
        .expect("save");
    let loaded = repository.load(&stream).await.expect("load");
    assert_eq!(
        (loaded.state.balance, loaded.snapshot_at, loaded.version),
        (123, 2, 3)
    );
    // An older snapshot never replaces a newer one.
    snapshots
        .save(Snapshot {
            stream_id: stream.clone(),
            stream_version: 1,
            snapshot_version: Ledger::SNAPSHOT_VERSION,
            state: lying_state,
            taken_at: chrono::Utc::now(),
        })
        .await
        .expect("save");
    let kept = snapshots
        .load(&stream)
        .await
        .expect("load")
        .expect("a snapshot");
    assert_eq!(kept.stream_version, 2);
}

/// The state as of a stream version is its first events replayed; as of a time, the events
/// recorded by then; a snapshot past the asked version is not used.
pub async fn temporal_loads_replay_a_prefix(
    store: Arc<dyn EventStore>,
    snapshots: Arc<dyn SnapshotStore>,
) {
    let stream = super::conformance::unique_stream("ledger");
    let id = stream.as_str().trim_start_matches("ledger-").to_owned();
    let repository = Repository::<Ledger>::new(Arc::clone(&store))
        .with_snapshots(Arc::clone(&snapshots), SnapshotPolicy::EveryNEvents(2));
    let handler = CommandHandler::with_repository(repository.clone());
    let mut balances = vec![0];
    for cents in [1, 10, 100, 1000, 10000] {
        let done = handler
            .execute(&id, LedgerCommand::Credit(cents))
            .await
            .expect("command");
        balances.push(done.state.balance);
    }
    for (version, balance) in balances.iter().enumerate() {
        let loaded = repository
            .load_at_version(&stream, version as u64)
            .await
            .expect("load at version");
        assert_eq!(loaded.state.balance, *balance, "as of version {version}");
        assert_eq!(loaded.version, version as u64);
        assert!(loaded.snapshot_at <= version as u64);
    }
    let events = store.read_stream_to_vec(&stream, 1).await.expect("read");
    let as_of = repository
        .load_as_of(&stream, events[2].recorded_at)
        .await
        .expect("load as of");
    assert!(as_of.version >= 3, "events recorded by then are included");
    assert_eq!(as_of.state.balance, balances[as_of.version as usize]);
    let before = repository
        .load_as_of(
            &stream,
            events[0].recorded_at - chrono::Duration::seconds(1),
        )
        .await
        .expect("load as of");
    assert_eq!((before.version, before.state.balance), (0, 0));
}

/// Generates one `#[tokio::test]` per evolution check. `$make` is an expression evaluating to a
/// future of `(Arc<dyn EventStore>, Arc<dyn SnapshotStore>)`, called once per test.
#[macro_export]
macro_rules! evolution_tests {
    ($make:expr) => {
        #[tokio::test]
        async fn old_events_load_through_upcasters() {
            let (store, _) = $make.await;
            $crate::testing::evolution::old_events_load_through_upcasters(store).await;
        }

        #[tokio::test]
        async fn failing_upcasters_name_the_event() {
            let (store, _) = $make.await;
            $crate::testing::evolution::failing_upcasters_name_the_event(store).await;
        }

        #[tokio::test]
        async fn unusable_snapshots_are_ignored() {
            let (store, snapshots) = $make.await;
            $crate::testing::evolution::unusable_snapshots_are_ignored(store, snapshots).await;
        }

        #[tokio::test]
        async fn temporal_loads_replay_a_prefix() {
            let (store, snapshots) = $make.await;
            $crate::testing::evolution::temporal_loads_replay_a_prefix(store, snapshots).await;
        }
    };
}
