//! The PostgreSQL store passes the same conformance suite as the in-memory store, each check in
//! a schema of its own.

use std::sync::Arc;

use es_core::EventStore;
use es_postgres::testing::TestDatabase;

es_core::event_store_conformance_tests!(async {
    Arc::new(TestDatabase::with_pool_size(10).await) as Arc<dyn EventStore>
});
