//! Appends of new events, single and batched, beside the same rows written by hand.

use std::time::{Duration, Instant};

use es_core::{EventStore, ExpectedVersion, NewEvent, StreamId};
use sqlx::{AssertSqlSafe, PgPool};

use crate::harness::{
    BoxError, Figure, Rep, Side, add_notify_trigger, alternate, compare_rates, event, fresh_store,
};

/// What the per-append NOTIFY trigger of earlier releases cost: the framework's appends of 1
/// event to new streams from 8 clients with the coalesced wake-up ("framework") and with the
/// trigger put back ("raw" column), alternating, same run.
pub async fn notify_cost(pool: &PgPool) -> Result<Figure, BoxError> {
    let (clients, appends) = (8, 1_000);
    let (coalesced, triggered) = alternate(|rep| async move {
        let schema = "bench_fw";
        let store = fresh_store(pool, schema).await?;
        if rep.side == Side::Raw {
            add_notify_trigger(pool, schema).await?;
        }
        let elapsed = framework_appends(&store, rep, clients, appends).await?;
        Ok((clients * appends) as f64 / elapsed.as_secs_f64())
    })
    .await?;
    eprintln!(
        "NOTIFY cost: coalesced {coalesced:.0}/s, per-append trigger {triggered:.0}/s, ratio {:.2}",
        coalesced / triggered
    );
    Ok(Figure {
        name: "append 1 event, 8 clients: coalesced wake-up vs NOTIFY per append".to_owned(),
        framework: coalesced,
        raw: triggered,
        note: String::new(),
    })
}

/// The framework's side of 1-event appends to new streams.
async fn framework_appends(
    store: &es_postgres::PgEventStore,
    rep: Rep,
    clients: usize,
    appends: usize,
) -> Result<Duration, BoxError> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for a in 0..appends {
                let stream = StreamId::new(format!("order-{}-{client}-{a}", rep.index))?;
                store
                    .append(&stream, ExpectedVersion::NoStream, vec![event(a)])
                    .await?;
            }
            Ok::<_, BoxError>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(start.elapsed())
}

pub async fn run(pool: &PgPool) -> Result<Vec<Figure>, BoxError> {
    let mut figures = Vec::new();
    for (name, clients, appends, batch) in [
        ("append 1 event, new streams, 1 client", 1, 2_000, 1),
        ("append 1 event, new streams, 8 clients", 8, 1_000, 1),
        ("append 10-event batches, 8 clients", 8, 200, 10),
        ("append 100-event batches, 8 clients", 8, 40, 100),
    ] {
        figures.push(
            compare_rates(name, clients * appends * batch, |rep| {
                run_appends(pool, rep, clients, appends, batch)
            })
            .await?,
        );
    }
    Ok(figures)
}

/// `clients` tasks each make `appends` appends of `batch` events to streams of their own.
async fn run_appends(
    pool: &PgPool,
    rep: Rep,
    clients: usize,
    appends: usize,
    batch: usize,
) -> Result<Duration, BoxError> {
    let store = fresh_store(pool, rep.side.schema()).await?;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let store = store.clone();
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            for a in 0..appends {
                let events: Vec<_> = (0..batch).map(|i| event(a * batch + i)).collect();
                // Single events go to new streams; batches grow one stream per client.
                let (stream, expected) = if batch == 1 {
                    (
                        format!("order-{}-{client}-{a}", rep.index),
                        ExpectedVersion::NoStream,
                    )
                } else {
                    (
                        format!("order-{}-{client}", rep.index),
                        ExpectedVersion::Any,
                    )
                };
                match rep.side {
                    Side::Framework => {
                        store
                            .append(&StreamId::new(stream)?, expected, events)
                            .await?;
                    }
                    Side::Raw => {
                        raw_append(&pool, "bench_raw", &stream, expected, &events).await?;
                    }
                }
            }
            Ok::<_, BoxError>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(start.elapsed())
}

/// An append written by hand: one statement whose CTE creates or bumps the stream row (only
/// from `expected`, when given) and inserts the events with a multi-row `VALUES` list; the best a
/// hand-written append does in one round trip.
pub async fn raw_append(
    pool: &PgPool,
    schema: &str,
    stream: &str,
    expected: ExpectedVersion,
    events: &[NewEvent],
) -> Result<(), BoxError> {
    let stream_cte = match expected {
        ExpectedVersion::NoStream => format!(
            "INSERT INTO {schema}.streams (stream_id, version) VALUES ($1, $2) RETURNING version"
        ),
        ExpectedVersion::Exact(v) => format!(
            "UPDATE {schema}.streams SET version = version + $2 \
             WHERE stream_id = $1 AND version = {v} RETURNING version"
        ),
        _ => format!(
            "INSERT INTO {schema}.streams AS t (stream_id, version) VALUES ($1, $2) \
             ON CONFLICT (stream_id) DO UPDATE SET version = t.version + EXCLUDED.version \
             RETURNING version"
        ),
    };
    let mut query = sqlx::query(AssertSqlSafe(raw_sql(schema, &stream_cte, events)))
        .bind(stream)
        .bind(events.len() as i64);
    for e in events {
        query = query
            .bind(e.event_id)
            .bind(&e.event_type)
            .bind(e.schema_version as i32)
            .bind(e.correlation_id)
            .bind(e.causation_id)
            .bind(serde_json::to_string(&e.metadata)?)
            .bind(e.payload.get());
    }
    let written = query.execute(pool).await?.rows_affected();
    if written != events.len() as u64 {
        return Err(format!("raw append to {stream} refused: {expected:?}").into());
    }
    Ok(())
}

fn raw_sql(schema: &str, stream_cte: &str, events: &[NewEvent]) -> String {
    let values: Vec<_> = events
        .iter()
        .enumerate()
        .map(|(i, _)| {
            let p = 3 + i * 7;
            format!(
                "(${p}::uuid, $1, (SELECT version FROM s) - $2 + {}, ${}, ${}::int4, ${}::uuid, ${}::uuid, ${}::json, ${}::json)",
                i + 1,
                p + 1,
                p + 2,
                p + 3,
                p + 4,
                p + 5,
                p + 6
            )
        })
        .collect();
    format!(
        "WITH s AS ({stream_cte}) INSERT INTO {schema}.events (event_id, stream_id, \
         stream_version, event_type, schema_version, correlation_id, causation_id, metadata, \
         payload) VALUES {}",
        values.join(", ")
    )
}
