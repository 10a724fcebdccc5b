//! Stream lifecycle on PostgreSQL: soft deletion, recreation and truncation
//! ([`StreamLifecycle`]), and the maintenance that takes events out of the live log: archiving
//! and hard deletion, through the privileged SQL functions of migration 0016. See
//! docs/lifecycle.md.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use es_core::{
    AppendResult, ConflictError, ExpectedVersion, NewEvent, RecordedEvent, STREAM_DELETED,
    StoreError, StreamId, StreamLifecycle, TruncationRefusal, validate_append,
};
use sqlx::{AssertSqlSafe, Row};
use uuid::Uuid;

use crate::convert::{finite, position_from_columns, to_i64};
use crate::error::store_error;
use crate::row::{EVENT_COLUMNS, decode_event};
use crate::{PgError, PgEventStore, SchemaName};

/// The condition on a `streams` row that takes appends.
pub(crate) const LIVE: &str = "deleted_at IS NULL AND archived_at IS NULL";

/// The lifecycle statements, built once per store with the schema name in them.
pub(crate) struct Statements {
    recreate: Arc<str>,
    recreate_one: Arc<str>,
    delete_exact: Arc<str>,
    delete_any: Arc<str>,
    truncate: Arc<str>,
    newest_snapshot: Arc<str>,
    read_archived: Arc<str>,
    archive: Arc<str>,
    hard_delete: Arc<str>,
    log: Arc<str>,
}

/// The columns of a `maintenance_log` row, in the order [`record`] reads them.
fn log_columns() -> String {
    format!(
        "id, operation, stream_id, events, first_position, last_position, first_version, \
         last_version, reason, {}, performed_by",
        finite("performed_at")
    )
}

impl Statements {
    pub(crate) fn new(schema: &SchemaName, recreate: Arc<str>, recreate_one: Arc<str>) -> Self {
        let s = schema.quoted();
        let xid = "pg_current_xact_id()::text::bigint";
        // The tombstone: one event at the next version, ordered in the global log as appends
        // are (see store.rs), written under the stream row's lock.
        let delete = |condition: &str| -> Arc<str> {
            format!(
                "WITH s AS (UPDATE {s}.streams SET version = version + 1, \
                     transaction_id = GREATEST(transaction_id, {xid}), \
                     deleted_at = clock_timestamp() \
                   WHERE stream_id = $1 AND {LIVE}{condition} \
                   RETURNING version, transaction_id) \
                 INSERT INTO {s}.events (transaction_id, event_id, stream_id, stream_version, \
                     event_type, schema_version, correlation_id, payload) \
                 SELECT s.transaction_id, $2, $1, s.version, $3, 1, $2, \
                     ('{{\"last_version\":' || (s.version - 1) || '}}')::json \
                 FROM s RETURNING transaction_id, position, stream_version"
            )
            .into()
        };
        let log = log_columns();
        Self {
            recreate,
            recreate_one,
            delete_exact: delete(" AND version = $4"),
            delete_any: delete(""),
            truncate: format!(
                "UPDATE {s}.streams SET truncated_before = $2 \
                 WHERE stream_id = $1 AND {LIVE} AND truncated_before < $2 AND $2 <= version \
                   AND EXISTS (SELECT 1 FROM {s}.snapshots \
                               WHERE stream_id = $1 AND stream_version >= $2 - 1) \
                 RETURNING truncated_before"
            )
            .into(),
            newest_snapshot: format!(
                "SELECT stream_version FROM {s}.snapshots WHERE stream_id = $1"
            )
            .into(),
            read_archived: format!(
                "SELECT {EVENT_COLUMNS} FROM {s}.events_archive WHERE stream_id = $1 \
                 ORDER BY stream_version"
            )
            .into(),
            archive: format!("SELECT {log} FROM {s}.archive_stream($1, $2)").into(),
            hard_delete: format!("SELECT {log} FROM {s}.hard_delete_stream($1, $2)").into(),
            log: format!("SELECT {log} FROM {s}.maintenance_log WHERE stream_id = $1 ORDER BY id")
                .into(),
        }
    }
}

/// What a maintenance operation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MaintenanceOperation {
    /// The stream's events moved into `events_archive`.
    Archive,
    /// The stream's events, live and archived, its snapshot and its row were removed.
    HardDelete,
}

/// A row of the `maintenance_log` table: what one maintenance call removed, when, and who
/// called it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MaintenanceRecord {
    /// The row's id, growing with time.
    pub id: i64,
    /// What was done.
    pub operation: MaintenanceOperation,
    /// The stream.
    pub stream: StreamId,
    /// How many events were moved or removed.
    pub events: u64,
    /// The smallest and largest global position (the identity part) among them, when any.
    pub positions: Option<(u64, u64)>,
    /// The first and last stream version among them, when any.
    pub versions: Option<(u64, u64)>,
    /// The reason the operator gave.
    pub reason: String,
    /// When it was done (the database's clock).
    pub performed_at: DateTime<Utc>,
    /// The login role that called the maintenance function.
    pub performed_by: String,
}

/// Why a maintenance function refused a stream; nothing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MaintenanceRefusal {
    /// The stream does not exist.
    #[error("the stream does not exist")]
    NoSuchStream,
    /// Hard deletion takes retired streams only: delete or archive the stream first.
    #[error("the stream is live: delete or archive it first")]
    StreamLive,
    /// The stream is archived already.
    #[error("the stream is archived already")]
    AlreadyArchived,
}

fn record(row: &sqlx::postgres::PgRow) -> Result<MaintenanceRecord, StoreError> {
    let malformed = |field: &'static str, reason: String| StoreError::Malformed {
        event_id: None,
        position: None,
        field,
        reason,
    };
    let get = |index: usize, field: &'static str| -> Result<Option<i64>, StoreError> {
        row.try_get(index)
            .map_err(|e| malformed(field, e.to_string()))
    };
    let unsigned = |n: i64| n.max(0) as u64;
    let pair = |a: Option<i64>, b: Option<i64>| a.zip(b).map(|(a, b)| (unsigned(a), unsigned(b)));
    let operation: String = row
        .try_get(1)
        .map_err(|e| malformed("maintenance_log.operation", e.to_string()))?;
    let stream: String = row
        .try_get(2)
        .map_err(|e| malformed("maintenance_log.stream_id", e.to_string()))?;
    Ok(MaintenanceRecord {
        id: get(0, "maintenance_log.id")?.unwrap_or_default(),
        operation: match operation.as_str() {
            "archive" => MaintenanceOperation::Archive,
            "hard_delete" => MaintenanceOperation::HardDelete,
            other => {
                return Err(malformed(
                    "maintenance_log.operation",
                    format!("unknown operation {other:?}"),
                ));
            }
        },
        stream: StreamId::new(stream)
            .map_err(|e| malformed("maintenance_log.stream_id", e.to_string()))?,
        events: unsigned(get(3, "maintenance_log.events")?.unwrap_or_default()),
        positions: pair(
            get(4, "maintenance_log.first_position")?,
            get(5, "maintenance_log.last_position")?,
        ),
        versions: pair(
            get(6, "maintenance_log.first_version")?,
            get(7, "maintenance_log.last_version")?,
        ),
        reason: row
            .try_get(8)
            .map_err(|e| malformed("maintenance_log.reason", e.to_string()))?,
        performed_at: row
            .try_get::<Option<DateTime<Utc>>, _>(9)
            .map_err(|e| malformed("maintenance_log.performed_at", e.to_string()))?
            .ok_or_else(|| {
                malformed(
                    "maintenance_log.performed_at",
                    "not a time a date can hold".into(),
                )
            })?,
        performed_by: row
            .try_get(10)
            .map_err(|e| malformed("maintenance_log.performed_by", e.to_string()))?,
    })
}

impl PgEventStore {
    fn lifecycle_sql(&self) -> &Statements {
        &self.statements().lifecycle
    }

    /// Archives `stream`: its events move from the live log into `events_archive`, in one
    /// transaction, and the stream is retired: reads and appends are refused with
    /// [`StoreError::StreamArchived`], and readers of the global log (projections, rebuilds)
    /// no longer see its events; every other stream's events stay where they were, so the
    /// live log stays gap-free for them. [`read_archived_stream`](Self::read_archived_stream)
    /// still reads it. Records the move in `maintenance_log` with `reason`.
    ///
    /// Runs the SQL function `archive_stream`, which only the schema owner and roles it grants
    /// `EXECUTE` to may call (others get a permission error, [`PgError::Database`]).
    pub async fn archive_stream(
        &self,
        stream: &StreamId,
        reason: &str,
    ) -> Result<MaintenanceRecord, PgError> {
        self.maintain(&self.lifecycle_sql().archive, stream, reason)
            .await
    }

    /// Removes a retired (deleted or archived) stream from the store for good: its events,
    /// live and archived, its snapshot, and its row, so that its id is free again (a new
    /// stream of that id starts at version 1). Records what it removed in `maintenance_log`
    /// with `reason`: how many events, their positions and versions, when, and the login role.
    /// Only the SQL function `hard_delete_stream` can do this (the immutability triggers refuse
    /// every other `DELETE`), and only the schema owner and roles it grants `EXECUTE` to may
    /// call it.
    pub async fn hard_delete_stream(
        &self,
        stream: &StreamId,
        reason: &str,
    ) -> Result<MaintenanceRecord, PgError> {
        self.maintain(&self.lifecycle_sql().hard_delete, stream, reason)
            .await
    }

    async fn maintain(
        &self,
        statement: &Arc<str>,
        stream: &StreamId,
        reason: &str,
    ) -> Result<MaintenanceRecord, PgError> {
        let row = sqlx::query(AssertSqlSafe(statement.clone()))
            .bind(stream.as_str())
            .bind(crate::error::storable(reason).as_ref())
            .fetch_one(self.pool())
            .await;
        let row = match row {
            Ok(row) => row,
            Err(err) => {
                let refusal = match crate::error::db_code(&err) {
                    Some((code, _)) if code == "ES010" => MaintenanceRefusal::NoSuchStream,
                    Some((code, _)) if code == "ES011" => MaintenanceRefusal::StreamLive,
                    Some((code, _)) if code == "ES012" => MaintenanceRefusal::AlreadyArchived,
                    _ => return Err(PgError::Database(err)),
                };
                return Err(PgError::MaintenanceRefused {
                    stream: stream.clone(),
                    reason: refusal,
                });
            }
        };
        Ok(record(&row)?)
    }

    /// Every event of an archived stream, in version order (empty for a stream that was never
    /// archived): the archive read on request.
    pub async fn read_archived_stream(
        &self,
        stream: &StreamId,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut events = sqlx::query(AssertSqlSafe(self.lifecycle_sql().read_archived.clone()))
            .bind(stream.as_str())
            .fetch_all(self.pool())
            .await
            .map_err(store_error)?
            .iter()
            .map(decode_event)
            .collect::<Result<Vec<_>, _>>()?;
        self.reveal(&mut events).await?;
        Ok(events)
    }

    /// What maintenance did to `stream`, oldest first (the `maintenance_log` rows).
    pub async fn maintenance_log(
        &self,
        stream: &StreamId,
    ) -> Result<Vec<MaintenanceRecord>, StoreError> {
        sqlx::query(AssertSqlSafe(self.lifecycle_sql().log.clone()))
            .bind(stream.as_str())
            .fetch_all(self.pool())
            .await
            .map_err(store_error)?
            .iter()
            .map(record)
            .collect()
    }

    /// Why a delete wrote nothing.
    async fn delete_refused(&self, stream: &StreamId, expected: ExpectedVersion) -> StoreError {
        let status = match self.status_on(self.pool(), stream).await {
            Ok(status) => status,
            Err(error) => return error,
        };
        let actual = match status.map(|s| s.live(stream)).transpose() {
            Ok(actual) => actual,
            Err(refusal) => return refusal,
        };
        ConflictError {
            stream: stream.clone(),
            expected,
            actual,
        }
        .into()
    }

    /// Why a truncation changed nothing: `Ok` with the point in effect when it is at or past
    /// `before` already, `Err` with the refusal, `Ok(None)` when nothing stands in the way now
    /// (a snapshot or an append arrived meanwhile: try again).
    async fn truncation_refused(
        &self,
        stream: &StreamId,
        before: u64,
    ) -> Result<Option<u64>, StoreError> {
        let refused = |reason| StoreError::TruncationRefused {
            stream: stream.clone(),
            before,
            reason,
        };
        let Some(status) = self.status_on(self.pool(), stream).await? else {
            return Err(refused(TruncationRefusal::NoStream));
        };
        let version = status.live(stream)?;
        if before <= status.truncated_before {
            return Ok(Some(status.truncated_before));
        }
        if before > version {
            return Err(refused(TruncationRefusal::BeyondEnd { version }));
        }
        let newest: Option<i64> =
            sqlx::query_scalar(AssertSqlSafe(self.lifecycle_sql().newest_snapshot.clone()))
                .bind(stream.as_str())
                .fetch_optional(self.pool())
                .await
                .map_err(store_error)?;
        let newest = newest.map(|v| v.max(0) as u64);
        if newest.is_none_or(|at| at + 1 < before) {
            return Err(refused(TruncationRefusal::NoCoveringSnapshot { newest }));
        }
        Ok(None)
    }
}

#[async_trait]
impl StreamLifecycle for PgEventStore {
    async fn delete_stream(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
    ) -> Result<AppendResult, StoreError> {
        let sql = self.lifecycle_sql();
        let query = match expected {
            // A stream that does not exist cannot be deleted.
            ExpectedVersion::NoStream | ExpectedVersion::Exact(0) => {
                return Err(self.delete_refused(stream, expected).await);
            }
            ExpectedVersion::Exact(n) => sqlx::query(AssertSqlSafe(sql.delete_exact.clone()))
                .bind(stream.as_str())
                .bind(Uuid::now_v7())
                .bind(STREAM_DELETED)
                .bind(to_i64(n)),
            ExpectedVersion::Any | ExpectedVersion::StreamExists => {
                sqlx::query(AssertSqlSafe(sql.delete_any.clone()))
                    .bind(stream.as_str())
                    .bind(Uuid::now_v7())
                    .bind(STREAM_DELETED)
            }
        };
        let row = query
            .fetch_optional(self.pool())
            .await
            .map_err(store_error)?;
        let Some(row) = row else {
            return Err(self.delete_refused(stream, expected).await);
        };
        let transaction: i64 = row.try_get(0).map_err(store_error)?;
        let position: i64 = row.try_get(1).map_err(store_error)?;
        let version: i64 = row.try_get(2).map_err(store_error)?;
        self.wake_followers();
        Ok(AppendResult {
            first_version: version.max(0) as u64,
            last_version: version.max(0) as u64,
            positions: vec![position_from_columns(transaction, position)],
            deduplicated: false,
        })
    }

    async fn recreate_stream(
        &self,
        stream: &StreamId,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        validate_append(stream, &events)?;
        let sql = self.lifecycle_sql();
        let statement = if events.len() == 1 {
            &sql.recreate_one
        } else {
            &sql.recreate
        };
        // Personal fields are sealed as an append seals them.
        let sealed = self.sealed(None, stream, &events).await?;
        let writing = sealed.as_deref().unwrap_or(&events);
        for _ in 0..3 {
            if !events.is_empty()
                && let Some(result) = self
                    .try_write(self.pool(), stream, statement, None, writing)
                    .await?
            {
                self.wake_followers();
                return Ok(result);
            }
            let mut conn = self.pool().acquire().await.map_err(store_error)?;
            if !events.is_empty()
                && let Some(repeat) = self.repeat_of(&mut conn, stream, &events).await?
            {
                return Ok(repeat);
            }
            match self.status_on(&mut *conn, stream).await? {
                Some(status) if status.archived => {
                    return Err(StoreError::StreamArchived {
                        stream: stream.clone(),
                    });
                }
                Some(status) if !status.deleted => {
                    return Err(ConflictError {
                        stream: stream.clone(),
                        expected: ExpectedVersion::NoStream,
                        actual: Some(status.version),
                    }
                    .into());
                }
                status if events.is_empty() => {
                    let current = status.map_or(0, |s| s.version);
                    return Ok(AppendResult {
                        first_version: current + 1,
                        last_version: current,
                        positions: Vec::new(),
                        deduplicated: false,
                    });
                }
                // Deleted or absent: the stream changed between the two statements.
                _ => continue,
            }
        }
        Err(StoreError::Backend {
            source: format!("recreating {stream} was refused three times without a cause").into(),
            transient: true,
        })
    }

    async fn truncate_before(&self, stream: &StreamId, before: u64) -> Result<u64, StoreError> {
        for _ in 0..3 {
            let done: Option<i64> =
                sqlx::query_scalar(AssertSqlSafe(self.lifecycle_sql().truncate.clone()))
                    .bind(stream.as_str())
                    .bind(to_i64(before))
                    .fetch_optional(self.pool())
                    .await
                    .map_err(store_error)?;
            if let Some(point) = done {
                return Ok(point.max(1) as u64);
            }
            if let Some(point) = self.truncation_refused(stream, before).await? {
                return Ok(point);
            }
        }
        Err(StoreError::Backend {
            source: format!("truncating {stream} was refused three times without a cause").into(),
            transient: true,
        })
    }
}
