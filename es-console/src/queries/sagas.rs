//! A saga's own tables, read for the console: its instances' state, the commands in its
//! outbox, the deadlines it waits on. Each list is capped and served by the table's key.

use chrono::{DateTime, Utc};
use es_postgres::PgEventStore;
use serde::Serialize;
use serde_json::Value;
use sqlx::{AssertSqlSafe, Row};
use uuid::Uuid;

use super::{finite, limit, schema};
use crate::ConsoleError;

/// One saga instance's state.
#[derive(Clone, Debug, Serialize)]
pub struct SagaInstance {
    /// The instance's id.
    pub instance: String,
    /// Its state, as stored.
    pub state: Value,
    /// When it last changed.
    pub updated_at: Option<DateTime<Utc>>,
}

/// A command waiting in a saga's outbox.
#[derive(Clone, Debug, Serialize)]
pub struct OutboxCommand {
    /// The command's id.
    pub command_id: Uuid,
    /// The instance that issued it.
    pub instance: String,
    /// The command, as stored.
    pub command: Value,
    /// When it was issued.
    pub created_at: Option<DateTime<Utc>>,
    /// How many times it was tried.
    pub attempts: u32,
    /// The last error, if it failed.
    pub last_error: Option<String>,
}

/// A dead-lettered command.
#[derive(Clone, Debug, Serialize)]
pub struct DeadLetterView {
    /// Its place in the saga's outbox (the order commands were issued): what the next page of
    /// dead letters starts after.
    pub seq: i64,
    /// The command's id.
    pub command_id: Uuid,
    /// The instance that issued it.
    pub instance: String,
    /// The command as stored.
    pub command: String,
    /// How many times it was tried.
    pub attempts: u32,
    /// The last error.
    pub error: Option<String>,
    /// When it was dead-lettered.
    pub dead_at: Option<DateTime<Utc>>,
}

/// A saga's dead-lettered commands after the outbox `seq` `after` (from the first when
/// `None`), at most `limit`, in the order they were issued.
///
/// Keyed on `seq` and capped: a page costs the same with ten dead letters or half a million
/// (es-admin's `saga_dead_letters` reads them all). The outbox has no index on its dead letters
/// alone (a partial index on `(saga, seq) WHERE dead_at IS NOT NULL` would serve this query
/// exactly); until it has, the primary key is walked in `seq` order and the walk stops at
/// `limit` matches.
pub(crate) async fn dead_letters(
    store: &PgEventStore,
    saga: &str,
    after: Option<i64>,
    limit_to: usize,
) -> Result<Vec<DeadLetterView>, ConsoleError> {
    let s = schema(store);
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT seq, command_id, instance, command::text, attempts, last_error, {} \
         FROM {s}.saga_outbox WHERE saga = $1 AND dead_at IS NOT NULL AND seq > $2 \
         ORDER BY seq LIMIT $3",
        finite("dead_at")
    )))
    .bind(saga)
    .bind(after.unwrap_or(i64::MIN))
    .bind(limit(limit_to))
    .fetch_all(store.pool())
    .await?;
    rows.iter()
        .map(|row| {
            let attempts: i32 = row.try_get(4)?;
            Ok(DeadLetterView {
                seq: row.try_get(0)?,
                command_id: row.try_get(1)?,
                instance: row.try_get(2)?,
                command: row.try_get(3)?,
                attempts: attempts.max(0) as u32,
                error: row.try_get(5)?,
                dead_at: row.try_get(6)?,
            })
        })
        .collect()
}

/// A deadline a saga instance waits on.
#[derive(Clone, Debug, Serialize)]
pub struct Deadline {
    /// The instance.
    pub instance: String,
    /// The deadline's name.
    pub name: String,
    /// When it falls due.
    pub due: Option<DateTime<Utc>>,
}

/// A saga's instances after `after`, its pending commands and its waiting deadlines, each at
/// most `limit` (instances by id, commands oldest first, deadlines soonest first).
pub(crate) async fn saga_tables(
    store: &PgEventStore,
    saga: &str,
    after: Option<&str>,
    limit_to: usize,
) -> Result<(Vec<SagaInstance>, Vec<OutboxCommand>, Vec<Deadline>), ConsoleError> {
    let s = schema(store);
    let json = |text: String, what: String| {
        serde_json::from_str::<Value>(&text)
            .map_err(|e| ConsoleError::malformed(what, format!("not JSON: {e}")))
    };
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT instance, state::text, {} FROM {s}.saga_states \
         WHERE saga = $1 AND instance > $2 ORDER BY instance LIMIT $3",
        finite("updated_at")
    )))
    .bind(saga)
    .bind(after.unwrap_or(""))
    .bind(limit(limit_to))
    .fetch_all(store.pool())
    .await?;
    let mut instances = Vec::with_capacity(rows.len());
    for row in &rows {
        let instance: String = row.try_get(0)?;
        let state = json(
            row.try_get(1)?,
            format!("state of saga instance {instance:?}"),
        )?;
        instances.push(SagaInstance {
            state,
            updated_at: row.try_get(2)?,
            instance,
        });
    }
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT command_id, instance, command::text, {}, attempts, last_error \
         FROM {s}.saga_outbox WHERE saga = $1 AND dead_at IS NULL ORDER BY seq LIMIT $2",
        finite("created_at")
    )))
    .bind(saga)
    .bind(limit(limit_to))
    .fetch_all(store.pool())
    .await?;
    let mut outbox = Vec::with_capacity(rows.len());
    for row in &rows {
        let command_id: Uuid = row.try_get(0)?;
        let attempts: i32 = row.try_get(4)?;
        outbox.push(OutboxCommand {
            command_id,
            instance: row.try_get(1)?,
            command: json(row.try_get(2)?, format!("outbox command {command_id}"))?,
            created_at: row.try_get(3)?,
            attempts: attempts.max(0) as u32,
            last_error: row.try_get(5)?,
        });
    }
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT instance, name, {} FROM {s}.saga_deadlines \
         WHERE saga = $1 AND fired_at IS NULL ORDER BY due LIMIT $2",
        finite("due")
    )))
    .bind(saga)
    .bind(limit(limit_to))
    .fetch_all(store.pool())
    .await?;
    let deadlines = rows
        .iter()
        .map(|row| {
            Ok(Deadline {
                instance: row.try_get(0)?,
                name: row.try_get(1)?,
                due: row.try_get(2)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()?;
    Ok((instances, outbox, deadlines))
}
