//! The PostgreSQL event store: [`PgEventStore`] implements `es_core`'s
//! [`EventStore`](es_core::EventStore) with optimistic concurrency, idempotent appends, stored
//! events the database itself refuses to change, and a global log that readers follow without
//! ever skipping an event.
//!
//! Everything lives in one PostgreSQL schema (default `es`), built by embedded sqlx migrations
//! that [`PgEventStore::migrate`] applies.
//!
//! # Layout
//! - `schema.rs`: [`SchemaName`] and the migrations (`migrations/*.sql`).
//! - `store.rs`: [`PgEventStore`]: appends, reads, the [`Horizon`] readers are held to.
//! - `import.rs`: [`PgEventStore::import`]: whole new streams in bulk through `COPY`.
//! - `lifecycle.rs`: soft deletion, recreation and truncation ([`es_core::StreamLifecycle`]);
//!   archiving and hard deletion through privileged SQL functions, recorded in
//!   `maintenance_log` ([`MaintenanceRecord`]).
//! - `snapshot.rs`: [`PgSnapshotStore`]: the newest snapshot per stream.
//! - `follower.rs`: [`LogFollower`]: catch up, then follow live (LISTEN/NOTIFY, polling fallback).
//! - `projection/`: [`PgProjection`] and [`ProjectionRunner`]: read models fed the global log,
//!   checkpointed in the same transaction as their writes, one active instance at a time, an
//!   [`ErrorPolicy`] that retries, parks, skips or stops, in-place and blue/green rebuilds
//!   (a [`ReadModel`] built beside the live one, then swapped in atomically), status and lag.
//! - `saga.rs`: [`PgSagaRunner`]: sagas with durable state, an outbox of issued commands and a
//!   dispatcher, exactly once in effect across crashes.
//! - `row.rs`: rows to envelopes; malformed rows become typed errors naming the event.
//! - `error.rs`: [`PgError`], and how driver errors map onto `StoreError`.
//! - `convert.rs`: unsigned numbers and positions to and from `bigint` columns.
//! - `testing.rs` (feature `testing`): a database schema of its own for each test.
//!
//! # Example
//! ```no_run
//! use es_core::{EventStore, ExpectedVersion, NewEvent, Position, StreamId};
//! use es_postgres::PgEventStore;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = PgEventStore::connect("postgres://postgres@127.0.0.1:5432/postgres").await?;
//! let stream = StreamId::new("order-42")?;
//! let payload = serde_json::value::to_raw_value(&serde_json::json!({ "sku": "A-1" }))?;
//! store
//!     .append(&stream, ExpectedVersion::NoStream, vec![NewEvent::new("OrderPlaced", 1, payload)])
//!     .await?;
//!
//! let mut follower = store.follow(Position::START);
//! for event in follower.next_batch().await? {
//!     println!("{} {} v{}", event.position, event.event_type, event.stream_version);
//! }
//! # Ok(())
//! # }
//! ```

mod connect;
mod convert;
mod error;
mod follower;
mod import;
mod lifecycle;
mod personal;
mod projection;
mod row;
mod saga;
mod schema;
mod snapshot;
mod store;
mod telemetry;
mod tenancy;
mod types;
mod wakeup;

#[cfg(feature = "testing")]
pub mod testing;

/// Re-exported for implementing [`PgProjection`]: `#[es_postgres::async_trait]`.
pub use async_trait::async_trait;
pub use connect::{connect_pool, parse_url};
pub use error::{PgError, is_transient};
pub use follower::LogFollower;
pub use import::ImportReport;
pub use lifecycle::{MaintenanceOperation, MaintenanceRecord, MaintenanceRefusal};
pub use personal::{Forgotten, PgKeyStore};
pub use projection::{
    ErrorPolicy, LockHolder, OnFailure, ParkedEvent, PgProjection, Progress, ProjectionError,
    ProjectionRunner, ProjectionStatus, ReadModel, ReplayReport, RunnerState, UnreadableType,
};
pub use saga::{DeadLetter, DeadlineStatus, OutboxStatus, PgSagaRunner, SagaProjection};
pub use schema::{MAX_SCHEMA_NAME_LEN, MigrationState, SchemaName};
pub use snapshot::PgSnapshotStore;
/// The driver, re-exported: read models write through `sqlx::PgConnection` with the version the
/// store uses.
pub use sqlx;
pub use store::{Horizon, PgEventStore};
pub use tenancy::{RowTenancy, TenantStores};
pub use types::StoredType;
