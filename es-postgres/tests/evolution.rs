//! Schema evolution and snapshots against PostgreSQL: old events load through upcasters, and
//! snapshots only shorten replays.

use std::sync::Arc;

use es_core::testing::evolution::{LedgerCommand, snapshots_only_shorten_replay};
use es_core::{EventStore, SnapshotStore};
use es_postgres::PgSnapshotStore;
use es_postgres::testing::TestDatabase;
use proptest::prelude::*;

es_core::evolution_tests!(async {
    // The test database is the event store: its schema goes when the test is done with it.
    let db = Arc::new(TestDatabase::new().await);
    let snapshots = PgSnapshotStore::new(&db.store);
    (
        db as Arc<dyn EventStore>,
        Arc::new(snapshots) as Arc<dyn SnapshotStore>,
    )
});

fn command() -> impl Strategy<Value = LedgerCommand> {
    prop_oneof![
        (1u64..10_000).prop_map(LedgerCommand::Credit),
        (1u64..10_000).prop_map(LedgerCommand::Debit),
        "[a-z]{0,8}".prop_map(LedgerCommand::Annotate),
    ]
}

#[test]
fn loading_with_snapshots_equals_a_full_replay() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let db = runtime.block_on(TestDatabase::new());
    let snapshots: Arc<dyn SnapshotStore> = Arc::new(PgSnapshotStore::new(&db.store));
    let store: Arc<dyn EventStore> = Arc::new(db.store.clone());
    proptest!(ProptestConfig::with_cases(16), |(
        commands in prop::collection::vec(command(), 1..25),
        every in 1u64..6,
    )| {
        runtime.block_on(snapshots_only_shorten_replay(
            Arc::clone(&store),
            Arc::clone(&snapshots),
            commands,
            every,
        ));
    });
    runtime.block_on(db.drop());
}
