//! Measures the relay beside hand-written code doing the same work, in the same run: read the
//! global log in pages of 500, publish each event with its envelope in headers, await the
//! broker's acks, save a checkpoint per page.
//!
//! ```text
//! cargo run --release -p es-relay --example relay-bench            # both brokers
//! cargo run --release -p es-relay --example relay-bench -- nats    # or one: nats, rabbitmq
//! ```
//!
//! Uses `DATABASE_URL`, `NATS_URL` and `AMQP_URL` (defaults: the local servers). The events
//! (50,000: in streams of 100, then in streams of one) live in schema `bench_relay`, dropped at
//! the end; each run
//! publishes into a JetStream stream or a queue of its own, deleted after it. Each figure is
//! the median of 3 runs, the sides alternating which goes first. docs/benchmarks.md holds the
//! last figures.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream::Config};
use es_core::testing::evolution::LedgerEvent;
use es_core::{NewEvent, StreamId};
use es_postgres::sqlx::{self, PgPool, Row};
use es_postgres::{PgEventStore, ProjectionRunner, SchemaName};
use es_relay::lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use es_relay::lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use es_relay::lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use es_relay::{JetStreamPublisher, RabbitMqPublisher, Relay, async_nats, format_position, header};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Headers = Vec<(&'static str, String)>;

const EVENTS: usize = 50_000;
const PAGE: i64 = 500;
const SCHEMA: &str = "bench_relay";

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let nats_url = std::env::var("NATS_URL").unwrap_or_else(|_| "127.0.0.1:4222".to_owned());
    let amqp_url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let args: Vec<String> = std::env::args().skip(1).collect();
    let pool = es_postgres::connect_pool(&url, 8).await?;
    // Streams of 100 events written one after another (a bulk import: each page holds 5
    // streams), and 50,000 streams of one event (interleaved, as live appends mostly are).
    for per_stream in [100, 1] {
        let store = seed(&pool, per_stream).await?;
        println!(
            "\n{EVENTS} events, {per_stream} per stream, pages of {PAGE}; events/s, median of 3"
        );
        run(&args, &pool, &store, &nats_url, &amqp_url).await?;
    }
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {SCHEMA} CASCADE")))
        .execute(&pool)
        .await?;
    Ok(())
}

async fn run(
    args: &[String],
    pool: &PgPool,
    store: &PgEventStore,
    nats_url: &str,
    amqp_url: &str,
) -> Result<(), BoxError> {
    let wanted = |name: &str| args.is_empty() || args.iter().any(|a| a == name);
    if wanted("nats") {
        let client = async_nats::connect(nats_url).await?;
        let figures = alternate(3, |rep, framework_first| {
            let (store, pool, client) = (store.clone(), pool.clone(), client.clone());
            async move {
                let (a, b) = in_turn(
                    framework_first,
                    nats_framework(&store, &client, rep),
                    nats_raw(&pool, &client, rep, true),
                )
                .await?;
                Ok([a, b, nats_raw(&pool, &client, rep + 100, false).await?])
            }
        })
        .await?;
        report("NATS JetStream", figures);
    }
    if wanted("rabbitmq") {
        let figures = alternate(3, |rep, framework_first| {
            let (store, pool, amqp_url) = (store.clone(), pool.clone(), amqp_url.to_owned());
            async move {
                let (a, b) = in_turn(
                    framework_first,
                    rabbit_framework(&store, &amqp_url, rep),
                    rabbit_raw(&pool, &amqp_url, rep, true),
                )
                .await?;
                Ok([a, b, rabbit_raw(&pool, &amqp_url, rep + 100, false).await?])
            }
        })
        .await?;
        report("RabbitMQ", figures);
    }
    Ok(())
}

fn report(broker: &str, [framework, raw, sequential]: [f64; 3]) {
    println!("{broker}:");
    println!("  relay (framework)             {framework:>9.0}");
    println!(
        "  raw loop, pipelined publishes {raw:>9.0}   relay/raw = {:.2}",
        framework / raw
    );
    println!("  raw loop, one ack at a time   {sequential:>9.0}");
}

/// The framework's figure and the raw side's, measured one after the other in the order
/// asked (futures do nothing until awaited).
async fn in_turn(
    framework_first: bool,
    framework: impl std::future::Future<Output = Result<f64, BoxError>>,
    raw: impl std::future::Future<Output = Result<f64, BoxError>>,
) -> Result<(f64, f64), BoxError> {
    if framework_first {
        let framework = framework.await?;
        Ok((framework, raw.await?))
    } else {
        let raw = raw.await?;
        Ok((framework.await?, raw))
    }
}

/// Runs `measure` `reps` times and returns the median of each of its figures.
async fn alternate<F, Fut>(reps: usize, measure: F) -> Result<[f64; 3], BoxError>
where
    F: Fn(usize, bool) -> Fut,
    Fut: std::future::Future<Output = Result<[f64; 3], BoxError>>,
{
    let mut runs = Vec::new();
    for rep in 0..reps {
        runs.push(measure(rep, rep % 2 == 0).await?);
    }
    let median = |i: usize| {
        let mut v: Vec<f64> = runs.iter().map(|r| r[i]).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok([median(0), median(1), median(2)])
}

async fn seed(pool: &PgPool, per_stream: usize) -> Result<PgEventStore, BoxError> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"
    )))
    .execute(pool)
    .await?;
    let store = PgEventStore::in_schema(pool.clone(), SchemaName::new(SCHEMA)?);
    store.migrate().await?;
    let streams: Vec<(StreamId, Vec<NewEvent>)> = (0..EVENTS / per_stream)
        .map(|s| {
            let events = (0..per_stream)
                .map(|i| {
                    NewEvent::from_event(&LedgerEvent::Credited {
                        cents: i as u64 + 1,
                        memo: "a memo of some forty characters, as memos go".to_owned(),
                    })
                    .unwrap()
                })
                .collect();
            (StreamId::new(format!("ledger-{s}")).unwrap(), events)
        })
        .collect();
    for chunk in streams.chunks(20_000 / per_stream) {
        store.import(chunk).await?;
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {SCHEMA}.raw_checkpoint (id int PRIMARY KEY, transaction_id bigint, position bigint)"
    )))
    .execute(pool)
    .await?;
    Ok(store)
}

fn rate(started: Instant) -> f64 {
    EVENTS as f64 / started.elapsed().as_secs_f64()
}

async fn nats_framework(
    store: &PgEventStore,
    client: &async_nats::Client,
    rep: usize,
) -> Result<f64, BoxError> {
    let name = format!("BENCH_FW_{rep}_{}", std::process::id());
    let publisher = JetStreamPublisher::new(client.clone(), &name, &name.to_lowercase()).await?;
    let runner = ProjectionRunner::new(
        store.clone(),
        Relay::<LedgerEvent>::new(
            store,
            format!("bench-{rep}-{}", std::process::id()),
            publisher,
        ),
    )
    .batch_size(PAGE as usize);
    let started = Instant::now();
    runner.catch_up().await?;
    let rate = rate(started);
    jetstream::new(client.clone()).delete_stream(&name).await?;
    Ok(rate)
}

/// The same rows the store reads, in the same order.
async fn page(
    conn: &mut sqlx::PgConnection,
    after: (i64, i64),
) -> Result<Vec<sqlx::postgres::PgRow>, BoxError> {
    Ok(sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT transaction_id, position, event_id, stream_id, stream_version, event_type, \
         schema_version, recorded_at, correlation_id, causation_id, metadata::text, payload::text \
         FROM {SCHEMA}.events WHERE (transaction_id, position) > ($1, $2) \
         ORDER BY transaction_id, position LIMIT $3"
    )))
    .bind(after.0)
    .bind(after.1)
    .bind(PAGE)
    .fetch_all(&mut *conn)
    .await?)
}

/// The headers the relay sends, from a row.
fn headers_of(row: &sqlx::postgres::PgRow) -> Result<(String, Headers), BoxError> {
    let event_id: uuid::Uuid = row.try_get(2)?;
    let recorded: chrono::DateTime<chrono::Utc> = row.try_get(7)?;
    let causation: Option<uuid::Uuid> = row.try_get(9)?;
    let position = es_core::Position::new(
        row.try_get::<i64, _>(0)? as u64,
        row.try_get::<i64, _>(1)? as u64,
    );
    let mut headers = vec![
        (header::EVENT_ID, event_id.to_string()),
        (header::EVENT_TYPE, row.try_get::<String, _>(5)?),
        (
            header::SCHEMA_VERSION,
            row.try_get::<i32, _>(6)?.to_string(),
        ),
        (header::STREAM, row.try_get::<String, _>(3)?),
        (
            header::STREAM_VERSION,
            row.try_get::<i64, _>(4)?.to_string(),
        ),
        (header::POSITION, format_position(position)),
        (header::SPLIT, "0".to_owned()),
        (
            header::CORRELATION_ID,
            row.try_get::<uuid::Uuid, _>(8)?.to_string(),
        ),
        (
            header::RECORDED_AT,
            recorded.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        ),
        (header::RELAY, "raw".to_owned()),
    ];
    if let Some(c) = causation {
        headers.push((header::CAUSATION_ID, c.to_string()));
    }
    Ok((event_id.to_string(), headers))
}

async fn save_checkpoint(pool: &PgPool, after: (i64, i64)) -> Result<(), BoxError> {
    let mut tx = pool.begin().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {SCHEMA}.raw_checkpoint VALUES (1, $1, $2) ON CONFLICT (id) DO UPDATE \
         SET transaction_id = EXCLUDED.transaction_id, position = EXCLUDED.position"
    )))
    .bind(after.0)
    .bind(after.1)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn nats_raw(
    pool: &PgPool,
    client: &async_nats::Client,
    rep: usize,
    pipelined: bool,
) -> Result<f64, BoxError> {
    let name = format!("BENCH_RAW_{rep}_{}", std::process::id());
    let prefix = name.to_lowercase();
    let js = jetstream::new(client.clone());
    js.create_stream(Config {
        name: name.clone(),
        subjects: vec![format!("{prefix}.>")],
        ..Config::default()
    })
    .await?;
    let mut conn = pool.acquire().await?;
    let started = Instant::now();
    let mut after = (0i64, 0i64);
    loop {
        let rows = page(&mut conn, after).await?;
        let Some(last) = rows.last() else { break };
        after = (last.try_get(0)?, last.try_get(1)?);
        let mut acks = Vec::with_capacity(rows.len());
        for row in &rows {
            let (id, headers) = headers_of(row)?;
            let mut map = async_nats::HeaderMap::new();
            for (n, v) in &headers {
                map.insert(*n, v.as_str());
            }
            map.insert("Nats-Msg-Id", id.as_str());
            let payload: String = row.try_get(11)?;
            let subject = format!("{prefix}.ledger.{}", row.try_get::<&str, _>(5)?);
            let ack = js
                .publish_with_headers(subject, map, payload.into_bytes().into())
                .await?;
            if pipelined {
                acks.push(ack);
            } else {
                ack.await?;
            }
        }
        for ack in acks {
            ack.await?;
        }
        save_checkpoint(pool, after).await?;
    }
    let rate = rate(started);
    js.delete_stream(&name).await?;
    Ok(rate)
}

async fn rabbit_topology(
    amqp_url: &str,
    exchange: &str,
) -> Result<(Connection, es_relay::lapin::Channel), BoxError> {
    let connection = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .exchange_declare(
            ShortString::from(exchange),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            ShortString::from(exchange),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            ShortString::from(exchange),
            ShortString::from(exchange),
            ShortString::from("#"),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((connection, channel))
}

async fn rabbit_clean(channel: &es_relay::lapin::Channel, exchange: &str) -> Result<(), BoxError> {
    channel
        .queue_delete(ShortString::from(exchange), QueueDeleteOptions::default())
        .await?;
    channel
        .exchange_delete(ShortString::from(exchange), Default::default())
        .await?;
    // Let the broker settle what it wrote before the next run.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(())
}

async fn rabbit_framework(
    store: &PgEventStore,
    amqp_url: &str,
    rep: usize,
) -> Result<f64, BoxError> {
    let exchange = format!("bench.fw.{rep}.{}", std::process::id());
    let (_connection, channel) = rabbit_topology(amqp_url, &exchange).await?;
    let publisher = RabbitMqPublisher::connect(amqp_url, &exchange).await?;
    let runner = ProjectionRunner::new(
        store.clone(),
        Relay::<LedgerEvent>::new(
            store,
            format!("bench-rabbit-{rep}-{}", std::process::id()),
            publisher,
        ),
    )
    .batch_size(PAGE as usize);
    let started = Instant::now();
    runner.catch_up().await?;
    let rate = rate(started);
    rabbit_clean(&channel, &exchange).await?;
    Ok(rate)
}

async fn rabbit_raw(
    pool: &PgPool,
    amqp_url: &str,
    rep: usize,
    pipelined: bool,
) -> Result<f64, BoxError> {
    let exchange = format!("bench.raw.{rep}.{}", std::process::id());
    let (_connection, channel) = rabbit_topology(amqp_url, &exchange).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut conn = pool.acquire().await?;
    let started = Instant::now();
    let mut after = (0i64, 0i64);
    loop {
        let rows = page(&mut conn, after).await?;
        let Some(last) = rows.last() else { break };
        after = (last.try_get(0)?, last.try_get(1)?);
        let mut confirms = Vec::with_capacity(rows.len());
        for row in &rows {
            let (id, headers) = headers_of(row)?;
            let mut table = FieldTable::default();
            for (n, v) in &headers {
                table.insert(
                    ShortString::from(*n),
                    AMQPValue::LongString(LongString::from(v.as_str())),
                );
            }
            let payload: &str = row.try_get(11)?;
            let confirm = channel
                .basic_publish(
                    ShortString::from(exchange.as_str()),
                    ShortString::from(format!("ledger.{}", row.try_get::<&str, _>(5)?)),
                    BasicPublishOptions::default(),
                    payload.as_bytes(),
                    BasicProperties::default()
                        .with_message_id(ShortString::from(id))
                        .with_content_type(ShortString::from("application/json"))
                        .with_delivery_mode(2)
                        .with_headers(table),
                )
                .await?;
            if pipelined {
                confirms.push(confirm);
            } else {
                confirm.await?;
            }
        }
        for confirm in confirms {
            confirm.await?;
        }
        save_checkpoint(pool, after).await?;
    }
    let rate = rate(started);
    rabbit_clean(&channel, &exchange).await?;
    Ok(rate)
}
