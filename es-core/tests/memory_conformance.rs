//! The in-memory store passes the same conformance suite as the PostgreSQL store.

use std::sync::Arc;

use es_core::{EventStore, InMemoryEventStore};

es_core::event_store_conformance_tests!(async {
    Arc::new(InMemoryEventStore::new()) as Arc<dyn EventStore>
});

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checks_may_share_one_store() {
    use es_core::testing::conformance::*;
    let store: Arc<dyn EventStore> = Arc::new(InMemoryEventStore::new());
    tokio::join!(
        appends_and_reads_back(Arc::clone(&store)),
        global_log_is_ordered_and_resumable(Arc::clone(&store)),
        concurrent_writers_never_lose_a_version(Arc::clone(&store), 4, 50),
        global_log_is_ordered_and_resumable(Arc::clone(&store)),
    );
}

mod lifecycle {
    use std::sync::Arc;

    use es_core::{InMemoryEventStore, InMemorySnapshotStore, SnapshotStore, StreamLifecycle};

    es_core::stream_lifecycle_conformance_tests!(async {
        let snapshots = Arc::new(InMemorySnapshotStore::new());
        let store = InMemoryEventStore::new().with_snapshot_store(snapshots.clone());
        (
            Arc::new(store) as Arc<dyn StreamLifecycle>,
            snapshots as Arc<dyn SnapshotStore>,
        )
    });
}
