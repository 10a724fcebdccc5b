//! Bulk import of 1,000,000 events: `PgEventStore::import` beside a hand-written `COPY` of the
//! same rows.

use std::time::{Duration, Instant};

use es_core::{NewEvent, StreamId};
use sqlx::{AssertSqlSafe, Connection, PgPool};
use uuid::Uuid;

use crate::commands::line_event;
use crate::harness::{BoxError, Figure, Rep, Side, compare_rates, fresh_store};

pub const STREAMS: usize = 10_000;
pub const PER_STREAM: usize = 100;
/// Streams per import call (20,000 events).
const CHUNK: usize = 200;

/// Imports 1,000,000 events on each side; the framework's schema keeps them for the rebuild.
pub async fn run(pool: &PgPool) -> Result<Figure, BoxError> {
    compare_rates(
        "bulk import of 1,000,000 events (raw: COPY)",
        STREAMS * PER_STREAM,
        |rep| import(pool, rep),
    )
    .await
}

/// The same orders on both sides: `PER_STREAM` lines per order.
fn chunk(first: usize) -> Result<Vec<(StreamId, Vec<NewEvent>)>, BoxError> {
    orders(first, CHUNK)
}

/// Orders `first..first + count` (`order-{n}`), each of `PER_STREAM` lines.
pub fn orders(first: usize, count: usize) -> Result<Vec<(StreamId, Vec<NewEvent>)>, BoxError> {
    (first..first + count)
        .map(|s| {
            let order_id = Uuid::now_v7();
            let events = (0..PER_STREAM)
                .map(|n| line_event(order_id, s * PER_STREAM + n))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((StreamId::new(format!("order-{s}"))?, events))
        })
        .collect()
}

async fn import(pool: &PgPool, rep: Rep) -> Result<Duration, BoxError> {
    let schema = rep.side.schema();
    let store = fresh_store(pool, schema).await?;
    let start = Instant::now();
    for first in (0..STREAMS).step_by(CHUNK) {
        let streams = chunk(first)?;
        match rep.side {
            Side::Framework => {
                store.import(&streams).await?;
            }
            Side::Raw => raw_import(pool, schema, &streams).await?,
        }
    }
    let elapsed = start.elapsed();
    crate::harness::vacuum(pool, schema).await?;
    Ok(elapsed)
}

/// One transaction: the stream rows in one `INSERT`, then the events through `COPY`.
async fn raw_import(
    pool: &PgPool,
    schema: &str,
    streams: &[(StreamId, Vec<NewEvent>)],
) -> Result<(), BoxError> {
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    let names: Vec<&str> = streams.iter().map(|(s, _)| s.as_str()).collect();
    let versions: Vec<i64> = streams.iter().map(|(_, e)| e.len() as i64).collect();
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {schema}.streams (stream_id, version) \
         SELECT * FROM UNNEST($1::text[], $2::bigint[])"
    )))
    .bind(&names)
    .bind(&versions)
    .execute(&mut *tx)
    .await?;
    let mut text = String::with_capacity(streams.len() * PER_STREAM * 600);
    for (stream, events) in streams {
        for (i, e) in events.iter().enumerate() {
            let causation = e.causation_id.map_or("\\N".to_owned(), |id| id.to_string());
            text.push_str(&format!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{causation}\t{}\t{}\n",
                e.event_id,
                copy_escape(stream.as_str()),
                i + 1,
                copy_escape(&e.event_type),
                e.schema_version,
                e.correlation_id,
                copy_escape(&serde_json::to_string(&e.metadata)?),
                copy_escape(e.payload.get()),
            ));
        }
    }
    let mut copy = tx
        .copy_in_raw(&format!(
            "COPY {schema}.events (event_id, stream_id, stream_version, event_type, \
             schema_version, correlation_id, causation_id, metadata, payload) FROM STDIN"
        ))
        .await?;
    copy.send(text.as_bytes()).await?;
    copy.finish().await?;
    tx.commit().await?;
    Ok(())
}

fn copy_escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('\t', "\\t")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}
