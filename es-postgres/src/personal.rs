//! Crypto-shredding on PostgreSQL: the subjects' keys (`subject_keys`), the streams holding
//! data of each (`subject_streams`), sealing and opening events on their way in and out of the
//! store, sealed snapshots, and [`PgEventStore::forget`]. The format and the rules are
//! `es_core::personal`'s.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use es_core::personal::{self, KeyStore, SubjectKey};
use es_core::{ExpectedVersion, NewEvent, Position, RecordedEvent, StoreError, StreamId};
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Row};
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
    record_stream: String,
    tombstone: String,
    readmit: String,
    create: String,
    keys: String,
    stream_keys: String,
    forget: String,
    drop_snapshots: String,
    untruncate: String,
}

impl PgKeyStore {
    pub(crate) fn new(pool: PgPool, schema: &SchemaName) -> Self {
        let s = schema.quoted();
        let sql = Statements {
            // The key, recording the stream beside it, in one round trip when it exists; or
            // whether the subject was forgotten.
            existing: format!(
                "WITH k AS (SELECT key_id, key FROM {s}.subject_keys WHERE subject = $1), \
                 s AS (INSERT INTO {s}.subject_streams (key_id, stream_id) \
                       SELECT key_id, $2 FROM k ON CONFLICT DO NOTHING) \
                 SELECT key_id, key FROM k \
                 UNION ALL SELECT NULL, NULL FROM {s}.forgotten_subjects \
                 WHERE subject_hash = $3 AND NOT EXISTS (SELECT FROM k)"
            ),
            record_stream: format!(
                "INSERT INTO {s}.subject_streams (key_id, stream_id) VALUES ($1, $2) \
                 ON CONFLICT DO NOTHING"
            ),
            tombstone: format!(
                "INSERT INTO {s}.forgotten_subjects (subject_hash) VALUES ($1) \
                 ON CONFLICT ON CONSTRAINT forgotten_subjects_pkey DO UPDATE SET forgotten_at = now()"
            ),
            readmit: format!("DELETE FROM {s}.forgotten_subjects WHERE subject_hash = $1"),
            create: format!(
                "INSERT INTO {s}.subject_keys (subject, key_id, key) VALUES ($1, $2, $3) \
                 ON CONFLICT ON CONSTRAINT subject_keys_pkey DO NOTHING"
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
            // Their truncation points go back to the start: with no snapshot kept of them
            // again, a truncated stream could not be loaded any more; its hidden events read
            // with the subject's fields redacted, so replaying them is safe.
            untruncate: format!(
                "UPDATE {s}.streams SET truncated_before = 1 WHERE truncated_before > 1 \
                 AND stream_id IN (SELECT stream_id FROM {s}.subject_streams WHERE key_id = $1)"
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

impl PgKeyStore {
    /// [`KeyStore::key_for`] on `conn` (the caller's transaction, when it has one).
    pub(crate) async fn key_for_on(
        &self,
        conn: &mut PgConnection,
        subject: &str,
        stream: &StreamId,
    ) -> Result<SubjectKey, StoreError> {
        // Two tries: a writer racing to create the same subject's key wins, and the second
        // read (a new statement, so a new snapshot) finds its key.
        for _ in 0..2 {
            let row = sqlx::query(AssertSqlSafe(self.sql.existing.clone()))
                .bind(subject)
                .bind(stream.as_str())
                .bind(subject_hash(subject))
                .fetch_optional(&mut *conn)
                .await
                .map_err(store_error)?;
            if let Some(row) = row {
                let id: Option<Uuid> = row.try_get(0).map_err(store_error)?;
                let key: Option<Vec<u8>> = row.try_get(1).map_err(store_error)?;
                return match (id, key) {
                    (Some(id), Some(key)) => subject_key(id, &key),
                    // Forgotten: a key nobody keeps, so what is sealed with it reads redacted;
                    // the stream is recorded under it, so no snapshot of it is kept.
                    _ => {
                        let throwaway = SubjectKey::generate();
                        sqlx::query(AssertSqlSafe(self.sql.record_stream.clone()))
                            .bind(throwaway.id)
                            .bind(stream.as_str())
                            .execute(&mut *conn)
                            .await
                            .map_err(store_error)?;
                        Ok(throwaway)
                    }
                };
            }
            let fresh = SubjectKey::generate();
            sqlx::query(AssertSqlSafe(self.sql.create.clone()))
                .bind(subject)
                .bind(fresh.id)
                .bind(&fresh.key[..])
                .execute(&mut *conn)
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

    /// [`KeyStore::keys`] on `conn`.
    pub(crate) async fn keys_on(
        &self,
        conn: &mut PgConnection,
        ids: &[Uuid],
    ) -> Result<HashMap<Uuid, SubjectKey>, StoreError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = sqlx::query(AssertSqlSafe(self.sql.keys.clone()))
            .bind(ids)
            .fetch_all(&mut *conn)
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

    /// The key store working on one connection: key lookups while that connection is held
    /// (a stream being read, the caller's transaction) need no second one from the pool.
    pub(crate) fn on<'c>(&self, conn: &'c mut PgConnection) -> OnConnection<'_, 'c> {
        OnConnection {
            keys: self,
            conn: tokio::sync::Mutex::new(conn),
        }
    }
}

/// The name-based UUID a forgotten subject is remembered by.
fn subject_hash(subject: &str) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("es-forgotten:{subject}").as_bytes(),
    )
}

/// [`PgKeyStore`] on one connection.
pub(crate) struct OnConnection<'k, 'c> {
    keys: &'k PgKeyStore,
    conn: tokio::sync::Mutex<&'c mut PgConnection>,
}

#[async_trait]
impl KeyStore for OnConnection<'_, '_> {
    async fn key_for(&self, subject: &str, stream: &StreamId) -> Result<SubjectKey, StoreError> {
        let mut conn = self.conn.lock().await;
        self.keys.key_for_on(&mut conn, subject, stream).await
    }

    async fn keys(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, SubjectKey>, StoreError> {
        let mut conn = self.conn.lock().await;
        self.keys.keys_on(&mut conn, ids).await
    }
}

#[async_trait]
impl KeyStore for PgKeyStore {
    async fn key_for(&self, subject: &str, stream: &StreamId) -> Result<SubjectKey, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(store_error)?;
        self.key_for_on(&mut conn, subject, stream).await
    }

    async fn keys(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, SubjectKey>, StoreError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let mut conn = self.pool.acquire().await.map_err(store_error)?;
        self.keys_on(&mut conn, ids).await
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
        sqlx::query(AssertSqlSafe(keys.sql.tombstone.clone()))
            .bind(subject_hash(subject))
            .execute(&mut *tx)
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
            sqlx::query(AssertSqlSafe(keys.sql.untruncate.clone()))
                .bind(key)
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
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

    /// Lets a forgotten subject's personal data be kept again: what it writes from now on is
    /// sealed with a new key and reads back (what was written before stays redacted). Until
    /// then, personal fields written for it are sealed with a key nobody keeps: a command
    /// that loaded its data before the forgetting cannot bring it back. Returns whether it
    /// was forgotten.
    pub async fn readmit(&self, subject: &str) -> Result<bool, StoreError> {
        let removed = sqlx::query(AssertSqlSafe(self.keys().sql.readmit.clone()))
            .bind(subject_hash(subject))
            .execute(self.pool())
            .await
            .map_err(store_error)?
            .rows_affected();
        Ok(removed > 0)
    }

    /// Seals the personal fields of `events` when any has some: the events to write, beside
    /// the originals (kept for judging a repeat). Key lookups run on `conn` when given (the
    /// caller's transaction), else on a pooled connection while none is held. Events without
    /// personal fields are checked for values shaped like sealed or redacted fields.
    pub(crate) async fn sealed(
        &self,
        conn: Option<&mut PgConnection>,
        stream: &StreamId,
        events: &[NewEvent],
    ) -> Result<Option<Vec<NewEvent>>, StoreError> {
        if events.iter().all(|e| e.personal.is_none()) {
            personal::refuse_forged(stream, events)?;
            return Ok(None);
        }
        let mut sealed = events.to_vec();
        match conn {
            Some(conn) => personal::seal(&self.keys().on(conn), stream, &mut sealed).await?,
            None => personal::seal(self.keys(), stream, &mut sealed).await?,
        }
        Ok(Some(sealed))
    }

    /// Opens the sealed fields of events read back (redacted where the key is gone), looking
    /// the keys up on `conn`.
    pub(crate) async fn reveal_on(
        &self,
        conn: &mut PgConnection,
        events: &mut [RecordedEvent],
    ) -> Result<(), StoreError> {
        personal::reveal(&self.keys().on(conn), events).await
    }

    /// [`reveal_on`](Self::reveal_on) with a pooled connection, taken only when an event is
    /// sealed (`personal::reveal` returns before asking for keys otherwise); call it while
    /// holding no other connection of the pool.
    pub(crate) async fn reveal(&self, events: &mut [RecordedEvent]) -> Result<(), StoreError> {
        personal::reveal(self.keys(), events).await
    }
}
