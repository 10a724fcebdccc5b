//! Crypto-shredding on PostgreSQL: the subjects' keys (`subject_keys`), the streams holding
//! data of each (`subject_streams`), sealing and opening events on their way in and out of the
//! store, sealed snapshots, and [`PgEventStore::forget`]. The format and the rules are
//! `es_core::personal`'s.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use es_core::personal::{self, KeyStore, SubjectKey};
use es_core::{ExpectedVersion, NewEvent, Position, RecordedEvent, StoreError, StreamId};
use sqlx::{AssertSqlSafe, PgPool, Row};
use uuid::Uuid;

use crate::PgEventStore;
use crate::error::store_error;
use crate::schema::SchemaName;

/// The keys of the data subjects whose personal fields a store holds, in its schema. Every
/// [`PgEventStore`] has one (see [`PgEventStore::key_store`]); forgetting goes through
/// [`PgEventStore::forget`], which also records the forgetting in the log.
#[derive(Clone)]
pub struct PgKeyStore {
    pool: PgPool,
    sql: Arc<Statements>,
}

struct Statements {
    existing: String,
    create: String,
    keys: String,
    stream_keys: String,
    forget: String,
    drop_snapshots: String,
}

impl PgKeyStore {
    pub(crate) fn new(pool: PgPool, schema: &SchemaName) -> Self {
        let s = schema.quoted();
        let sql = Statements {
            // The key, recording the stream beside it, in one round trip when it exists.
            existing: format!(
                "WITH k AS (SELECT key_id, key FROM {s}.subject_keys WHERE subject = $1), \
                 s AS (INSERT INTO {s}.subject_streams (key_id, stream_id) \
                       SELECT key_id, $2 FROM k ON CONFLICT DO NOTHING) \
                 SELECT key_id, key FROM k"
            ),
            create: format!(
                "INSERT INTO {s}.subject_keys (subject, key_id, key) VALUES ($1, $2, $3) \
                 ON CONFLICT (subject) DO NOTHING"
            ),
            keys: format!("SELECT key_id, key FROM {s}.subject_keys WHERE key_id = ANY($1)"),
            // Every key a stream's data was sealed with; `key` is null for a forgotten one.
            stream_keys: format!(
                "SELECT ss.key_id, k.key FROM {s}.subject_streams ss \
                 LEFT JOIN {s}.subject_keys k ON k.key_id = ss.key_id \
                 WHERE ss.stream_id = $1 ORDER BY ss.key_id"
            ),
            forget: format!("DELETE FROM {s}.subject_keys WHERE subject = $1 RETURNING key_id"),
            drop_snapshots: format!(
                "DELETE FROM {s}.snapshots WHERE stream_id IN \
                 (SELECT stream_id FROM {s}.subject_streams WHERE key_id = $1)"
            ),
        };
        Self {
            pool,
            sql: Arc::new(sql),
        }
    }

    /// The keys a stream's data was sealed with. `None` when one of them is gone (a subject was
    /// forgotten): a snapshot of the stream may hold that subject's data, so none is kept or
    /// read.
    pub(crate) async fn keys_of_stream(
        &self,
        stream: &StreamId,
    ) -> Result<Option<Vec<SubjectKey>>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(self.sql.stream_keys.clone()))
            .bind(stream.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        let mut keys = Vec::with_capacity(rows.len());
        for row in rows {
            let id: Uuid = row.try_get(0).map_err(store_error)?;
            let key: Option<Vec<u8>> = row.try_get(1).map_err(store_error)?;
            match key {
                Some(key) => keys.push(subject_key(id, &key)?),
                None => return Ok(None),
            }
        }
        Ok(Some(keys))
    }
}

fn subject_key(id: Uuid, key: &[u8]) -> Result<SubjectKey, StoreError> {
    let key: [u8; 32] = key.try_into().map_err(|_| StoreError::Malformed {
        event_id: None,
        position: None,
        field: "subject_keys.key",
        reason: format!("key {id} is {} bytes, not 32", key.len()),
    })?;
    Ok(SubjectKey { id, key })
}

#[async_trait]
impl KeyStore for PgKeyStore {
    async fn key_for(&self, subject: &str, stream: &StreamId) -> Result<SubjectKey, StoreError> {
        // Two tries: a writer racing to create the same subject's key wins, and the second
        // read (a new statement, so a new snapshot) finds its key.
        for _ in 0..2 {
            let row = sqlx::query(AssertSqlSafe(self.sql.existing.clone()))
                .bind(subject)
                .bind(stream.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(store_error)?;
            if let Some(row) = row {
                let id: Uuid = row.try_get(0).map_err(store_error)?;
                let key: Vec<u8> = row.try_get(1).map_err(store_error)?;
                return subject_key(id, &key);
            }
            let fresh = SubjectKey::generate();
            sqlx::query(AssertSqlSafe(self.sql.create.clone()))
                .bind(subject)
                .bind(fresh.id)
                .bind(&fresh.key[..])
                .execute(&self.pool)
                .await
                .map_err(store_error)?;
        }
        Err(StoreError::Backend {
            source: format!(
                "the key of a data subject was created but cannot be read (stream {stream})"
            )
            .into(),
            transient: true,
        })
    }

    async fn keys(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, SubjectKey>, StoreError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = sqlx::query(AssertSqlSafe(self.sql.keys.clone()))
            .bind(ids)
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        let mut keys = HashMap::with_capacity(rows.len());
        for row in rows {
            let id: Uuid = row.try_get(0).map_err(store_error)?;
            let key: Vec<u8> = row.try_get(1).map_err(store_error)?;
            keys.insert(id, subject_key(id, &key)?);
        }
        Ok(keys)
    }
}

/// What [`PgEventStore::forget`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Forgotten {
    /// Whether the subject had a key (it had personal data stored).
    pub had_key: bool,
    /// Snapshots dropped (of streams holding the subject's data).
    pub snapshots_dropped: u64,
    /// Where the `SubjectForgotten` event was recorded.
    pub position: Position,
}

impl PgEventStore {
    /// The store's key store (the subjects' keys, in its schema).
    pub fn key_store(&self) -> &PgKeyStore {
        self.keys()
    }

    /// Forgets a data subject, in one transaction: destroys its key (from then on every sealed
    /// field of it reads as `Personal::Redacted`, in every reader, for good), drops the
    /// snapshots of the streams holding its data, and appends a `SubjectForgotten` event
    /// (payload `{"subject": ...}`) to the stream [`personal::forgotten_stream`] names, so
    /// projections that copied the subject's data into read models can erase it. Forgetting
    /// a subject twice, or one that never had data, still records the request.
    ///
    /// The subject should be an opaque id (a customer id, the stream), not personal data itself:
    /// it is what the `SubjectForgotten` event carries.
    pub async fn forget(&self, subject: &str) -> Result<Forgotten, StoreError> {
        let keys = self.keys();
        let mut tx = self.pool().begin().await.map_err(store_error)?;
        let destroyed: Vec<Uuid> = sqlx::query_scalar(AssertSqlSafe(keys.sql.forget.clone()))
            .bind(subject)
            .fetch_all(&mut *tx)
            .await
            .map_err(store_error)?;
        let mut snapshots_dropped = 0;
        for key in &destroyed {
            snapshots_dropped += sqlx::query(AssertSqlSafe(keys.sql.drop_snapshots.clone()))
                .bind(key)
                .execute(&mut *tx)
                .await
                .map_err(store_error)?
                .rows_affected();
        }
        let payload = serde_json::value::to_raw_value(&serde_json::json!({ "subject": subject }))
            .map_err(|e| StoreError::Backend {
            source: e.into(),
            transient: false,
        })?;
        let event = NewEvent::new(personal::SUBJECT_FORGOTTEN, 1, payload);
        let appended = self
            .append_in(
                &mut tx,
                &personal::forgotten_stream(subject),
                ExpectedVersion::Any,
                vec![event],
            )
            .await?;
        tx.commit().await.map_err(store_error)?;
        self.wake_followers();
        Ok(Forgotten {
            had_key: !destroyed.is_empty(),
            snapshots_dropped,
            position: appended.positions.first().copied().unwrap_or_default(),
        })
    }

    /// Seals the personal fields of `events` when any has some: the events to write, beside
    /// the originals (kept for judging a repeat).
    pub(crate) async fn sealed(
        &self,
        stream: &StreamId,
        events: &[NewEvent],
    ) -> Result<Option<Vec<NewEvent>>, StoreError> {
        if events.iter().all(|e| e.personal.is_none()) {
            return Ok(None);
        }
        let mut sealed = events.to_vec();
        personal::seal(self.keys(), stream, &mut sealed).await?;
        Ok(Some(sealed))
    }

    /// [`reveal`](Self::reveal) of one event.
    pub(crate) async fn revealed(&self, event: RecordedEvent) -> Result<RecordedEvent, StoreError> {
        if !event.payload.get().contains(personal::SEALED) {
            return Ok(event);
        }
        let mut one = [event];
        self.reveal(&mut one).await?;
        let [event] = one;
        Ok(event)
    }

    /// Opens the sealed fields of events read back (redacted where the key is gone).
    pub(crate) async fn reveal(&self, events: &mut [RecordedEvent]) -> Result<(), StoreError> {
        personal::reveal(self.keys(), events).await
    }
}
