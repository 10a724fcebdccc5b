//! The consumer side: an inbox of handled message ids, written in the handler's own
//! transaction, and dead letters for messages a handler keeps failing on.

use es_postgres::SchemaName;
use es_postgres::sqlx::{self, PgConnection, PgPool};

use crate::RelayError;

/// Makes handling a message effective once, however often the broker delivers it.
///
/// Brokers deliver at least once: after a consumer crashed before acknowledging, or when an
/// ack was lost, the message comes again. The handler calls [`Inbox::receive`] inside the
/// transaction that writes its effects: the message's id is recorded in that transaction, so
/// either both the id and the effects commit or neither does, and a redelivery finds the id
/// and does nothing. Acknowledge the message to the broker only after the commit.
///
/// ```no_run
/// # async fn handle(pool: es_postgres::sqlx::PgPool, message_id: &str) -> Result<(), Box<dyn std::error::Error>> {
/// use es_postgres::SchemaName;
/// use es_relay::Inbox;
///
/// let inbox = Inbox::new(SchemaName::new("billing")?);
/// inbox.setup(&pool).await?;
/// let mut tx = pool.begin().await?;
/// if inbox.receive(&mut tx, "invoicing", message_id).await? {
///     // First delivery: write the effects in `tx`.
/// }
/// tx.commit().await?;
/// // Now acknowledge the message to the broker.
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Inbox {
    schema: SchemaName,
}

/// A message a consumer gave up on, with the last error.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct InboxDeadLetter {
    /// The consumer.
    pub consumer: String,
    /// The message's id (the event id for relayed events).
    pub message_id: String,
    /// Where it came from (subject or routing key).
    pub topic: String,
    /// Its headers, as JSON (an object of strings).
    pub headers: String,
    /// Its payload.
    pub payload: Vec<u8>,
    /// The last error.
    pub error: String,
    /// How often it was delivered.
    pub deliveries: i64,
}

impl Inbox {
    /// An inbox whose tables live in `schema`.
    pub fn new(schema: SchemaName) -> Self {
        Self { schema }
    }

    /// The schema its tables live in.
    pub fn schema(&self) -> &SchemaName {
        &self.schema
    }

    /// Creates the inbox's tables if they do not exist.
    pub async fn setup(&self, pool: &PgPool) -> Result<(), RelayError> {
        let mut tx = pool.begin().await?;
        // Two consumers starting at once would otherwise race on the catalog.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('es_relay.inbox.setup'))")
            .execute(&mut *tx)
            .await?;
        sqlx::raw_sql(self.schema.sql(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.inbox (
                 consumer    text        NOT NULL,
                 message_id  text        NOT NULL,
                 received_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (consumer, message_id)
             );
             CREATE TABLE IF NOT EXISTS {schema}.inbox_dead_letters (
                 consumer    text        NOT NULL,
                 message_id  text        NOT NULL,
                 topic       text        NOT NULL,
                 headers     jsonb       NOT NULL,
                 payload     bytea       NOT NULL,
                 error       text        NOT NULL,
                 deliveries  bigint      NOT NULL,
                 failed_at   timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (consumer, message_id)
             );
             CREATE TABLE IF NOT EXISTS {schema}.inbox_failures (
                 consumer    text   NOT NULL,
                 message_id  text   NOT NULL,
                 failures    bigint NOT NULL,
                 PRIMARY KEY (consumer, message_id)
             );",
        ))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records `message_id` as handled by `consumer` in the caller's transaction: `true` the
    /// first time (apply the effects in the same transaction), `false` when it was handled
    /// before (do nothing). Two deliveries handled at once: the second waits for the first's
    /// transaction and then gets `false` (or `true` if the first rolled back).
    pub async fn receive(
        &self,
        tx: &mut PgConnection,
        consumer: &str,
        message_id: &str,
    ) -> Result<bool, RelayError> {
        let inserted = sqlx::query(self.schema.sql(
            "INSERT INTO {schema}.inbox (consumer, message_id) VALUES ($1, $2)
             ON CONFLICT DO NOTHING",
        ))
        .bind(consumer)
        .bind(message_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    /// Whether `consumer` has handled `message_id`.
    pub async fn has_received(
        &self,
        pool: &PgPool,
        consumer: &str,
        message_id: &str,
    ) -> Result<bool, RelayError> {
        let found: Option<i32> = sqlx::query_scalar(
            self.schema
                .sql("SELECT 1 FROM {schema}.inbox WHERE consumer = $1 AND message_id = $2"),
        )
        .bind(consumer)
        .bind(message_id)
        .fetch_optional(pool)
        .await?;
        Ok(found.is_some())
    }

    /// Records a message `consumer` gave up on (the broker is then told to stop delivering
    /// it). Recording it again keeps one row with the latest error.
    pub async fn dead_letter(
        &self,
        pool: &PgPool,
        letter: &InboxDeadLetter,
    ) -> Result<(), RelayError> {
        // NUL is the one character PostgreSQL text cannot hold.
        let error = letter.error.replace('\0', "\\0");
        sqlx::query(self.schema.sql(
            "INSERT INTO {schema}.inbox_dead_letters
                 (consumer, message_id, topic, headers, payload, error, deliveries)
             VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7)
             ON CONFLICT (consumer, message_id) DO UPDATE
             SET error = EXCLUDED.error, deliveries = EXCLUDED.deliveries, failed_at = now()",
        ))
        .bind(&letter.consumer)
        .bind(&letter.message_id)
        .bind(&letter.topic)
        .bind(&letter.headers)
        .bind(&letter.payload)
        .bind(error)
        .bind(letter.deliveries)
        .execute(pool)
        .await?;
        Ok(())
    }

    /// The messages `consumer` gave up on, oldest first.
    pub async fn dead_letters(
        &self,
        pool: &PgPool,
        consumer: &str,
    ) -> Result<Vec<InboxDeadLetter>, RelayError> {
        let rows: Vec<LetterRow> =
            sqlx::query_as(self.schema.sql(
                "SELECT consumer, message_id, topic, headers::text, payload, error, deliveries
                 FROM {schema}.inbox_dead_letters WHERE consumer = $1 ORDER BY failed_at, message_id",
            ))
            .bind(consumer)
            .fetch_all(pool)
            .await?;
        Ok(rows.into_iter().map(letter).collect())
    }

    /// Removes a dead letter within `tx`, returning it (for a replay through the handler, or
    /// to discard it); `None` when there is none.
    pub async fn take_dead_letter(
        &self,
        tx: &mut PgConnection,
        consumer: &str,
        message_id: &str,
    ) -> Result<Option<InboxDeadLetter>, RelayError> {
        let row: Option<LetterRow> = sqlx::query_as(self.schema.sql(
            "DELETE FROM {schema}.inbox_dead_letters WHERE consumer = $1 AND message_id = $2
             RETURNING consumer, message_id, topic, headers::text, payload, error, deliveries",
        ))
        .bind(consumer)
        .bind(message_id)
        .fetch_optional(&mut *tx)
        .await?;
        Ok(row.map(letter))
    }

    /// Counts one more failed handling of `message_id` by `consumer` (for brokers that do not
    /// count deliveries) and returns how many there were.
    pub async fn count_failure(
        &self,
        pool: &PgPool,
        consumer: &str,
        message_id: &str,
    ) -> Result<u64, RelayError> {
        let failures: i64 = sqlx::query_scalar(self.schema.sql(
            "INSERT INTO {schema}.inbox_failures (consumer, message_id, failures) VALUES ($1, $2, 1)
             ON CONFLICT (consumer, message_id) DO UPDATE
             SET failures = inbox_failures.failures + 1
             RETURNING failures",
        ))
        .bind(consumer)
        .bind(message_id)
        .fetch_one(pool)
        .await?;
        Ok(u64::try_from(failures).unwrap_or(0))
    }

    /// Forgets the failures counted for `message_id`.
    pub async fn clear_failures(
        &self,
        pool: &PgPool,
        consumer: &str,
        message_id: &str,
    ) -> Result<(), RelayError> {
        sqlx::query(
            self.schema
                .sql("DELETE FROM {schema}.inbox_failures WHERE consumer = $1 AND message_id = $2"),
        )
        .bind(consumer)
        .bind(message_id)
        .execute(pool)
        .await?;
        Ok(())
    }
}

/// A dead-letter row as selected: consumer, message id, topic, headers, payload, error,
/// deliveries.
type LetterRow = (String, String, String, String, Vec<u8>, String, i64);

fn letter(row: LetterRow) -> InboxDeadLetter {
    let (consumer, message_id, topic, headers, payload, error, deliveries) = row;
    InboxDeadLetter {
        consumer,
        message_id,
        topic,
        headers,
        payload,
        error,
        deliveries,
    }
}
