//! Growth: append and read latency at 1 million and at 10 million stored events, in the same
//! run (bulk import gets the store there), and the bytes each stored event takes.

use std::time::{Duration, Instant};

use es_core::{EventStore, ExpectedVersion, Position, StreamId};
use es_postgres::PgEventStore;
use sqlx::{AssertSqlSafe, PgPool};

use crate::harness::{BoxError, event, fresh_store, settle, vacuum};
use crate::import::{PER_STREAM, orders};

const SCHEMA: &str = "bench_growth";
/// Operations timed per round.
const SAMPLES: usize = 1_000;
/// Rounds per measurement: each percentile is the median of the rounds' (a checkpoint or
/// an autovacuum in one round would otherwise decide the 99th percentile).
const ROUNDS: usize = 3;
/// Orders imported per call (20,000 events).
const CHUNK: usize = 200;

/// Latencies at one store size.
pub struct Sizes {
    pub events: u64,
    pub rows: Vec<(String, Percentiles)>,
    pub bytes: Vec<(String, f64)>,
}

#[derive(Clone, Copy)]
pub struct Percentiles {
    pub p50: Duration,
    pub p99: Duration,
}

/// Sizes in events; `STORE_BENCH_GROWTH=100000,1000000` overrides for a quick look.
fn sizes() -> Result<Vec<usize>, BoxError> {
    match std::env::var("STORE_BENCH_GROWTH") {
        Ok(list) => list
            .split(',')
            .map(|n| {
                n.trim()
                    .parse::<usize>()
                    .map_err(|e| format!("{n:?}: {e}").into())
            })
            .collect(),
        Err(_) => Ok(vec![1_000_000, 10_000_000]),
    }
}

pub async fn run(pool: &PgPool) -> Result<Vec<Sizes>, BoxError> {
    let store = fresh_store(pool, SCHEMA).await?;
    let mut figures = Vec::new();
    let mut orders_stored = 0;
    for size in sizes()? {
        let target = size / PER_STREAM;
        let start = Instant::now();
        while orders_stored < target {
            let count = CHUNK.min(target - orders_stored);
            store.import(&orders(orders_stored, count)?).await?;
            orders_stored += count;
        }
        vacuum(pool, SCHEMA).await?;
        settle(pool).await?;
        eprintln!(
            "growth: {size} events stored ({:.0} s to import and vacuum)",
            start.elapsed().as_secs_f64()
        );
        figures.push(measure(pool, &store, size, orders_stored).await?);
    }
    sqlx::query(AssertSqlSafe(format!("DROP SCHEMA {SCHEMA} CASCADE")))
        .execute(pool)
        .await?;
    Ok(figures)
}

/// A spread of order numbers below `orders`, the same at every size for a given sample.
fn pick(sample: usize, orders: usize) -> usize {
    (sample.wrapping_mul(2_654_435_761) ^ (sample >> 3)) % orders
}

async fn measure(
    pool: &PgPool,
    store: &PgEventStore,
    size: usize,
    orders: usize,
) -> Result<Sizes, BoxError> {
    let names = [
        "append 1 event to a new stream",
        "append 1 event to a stored order (random)",
        "read a 100-event order (random)",
        "read the newest page of the global log",
    ];
    let mut rounds: Vec<Vec<Percentiles>> = vec![Vec::new(); names.len()];
    for round in 0..ROUNDS {
        let seed = round * SAMPLES;
        let mut times = Vec::with_capacity(SAMPLES);
        for n in seed..seed + SAMPLES {
            let stream = StreamId::new(format!("fresh-{size}-{n}"))?;
            let start = Instant::now();
            store
                .append(&stream, ExpectedVersion::NoStream, vec![event(n)])
                .await?;
            times.push(start.elapsed());
        }
        rounds[0].push(percentiles(times));

        let mut times = Vec::with_capacity(SAMPLES);
        for n in seed..seed + SAMPLES {
            let stream = StreamId::new(format!("order-{}", pick(n, orders)))?;
            let start = Instant::now();
            store
                .append(&stream, ExpectedVersion::Any, vec![event(n)])
                .await?;
            times.push(start.elapsed());
        }
        rounds[1].push(percentiles(times));

        let mut times = Vec::with_capacity(SAMPLES);
        for n in seed..seed + SAMPLES {
            let stream = StreamId::new(format!("order-{}", pick(n + 7 * SAMPLES, orders)))?;
            let start = Instant::now();
            let events = store.read_stream_to_vec(&stream, 1).await?;
            times.push(start.elapsed());
            if events.len() < PER_STREAM {
                return Err(format!("{stream} has {} events", events.len()).into());
            }
        }
        rounds[2].push(percentiles(times));

        // A follower at the head: the newest page of the log.
        let mut times = Vec::with_capacity(SAMPLES / 10);
        let head = store.head().await?;
        for _ in 0..SAMPLES / 10 {
            let after = Position::new(head.transaction.saturating_sub(600), 0);
            let start = Instant::now();
            store.read_all(after, 500).await?;
            times.push(start.elapsed());
        }
        rounds[3].push(percentiles(times));
    }
    let rows: Vec<(String, Percentiles)> = names
        .iter()
        .zip(rounds)
        .map(|(name, rounds)| ((*name).to_owned(), median_of(rounds)))
        .collect();

    let bytes = bytes_per_event(pool).await?;
    for (name, p) in &rows {
        eprintln!("growth at {size}: {name}: p50 {:?}, p99 {:?}", p.p50, p.p99);
    }
    Ok(Sizes {
        events: size as u64,
        rows,
        bytes,
    })
}

/// Each percentile's median over the rounds.
fn median_of(rounds: Vec<Percentiles>) -> Percentiles {
    let middle = |mut values: Vec<Duration>| {
        values.sort();
        values[values.len() / 2]
    };
    Percentiles {
        p50: middle(rounds.iter().map(|p| p.p50).collect()),
        p99: middle(rounds.iter().map(|p| p.p99).collect()),
    }
}

fn percentiles(mut times: Vec<Duration>) -> Percentiles {
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    Percentiles {
        p50: at(0.5),
        p99: at(0.99),
    }
}

/// The events table, its TOAST, each index and the streams table, per stored event.
async fn bytes_per_event(pool: &PgPool) -> Result<Vec<(String, f64)>, BoxError> {
    let count: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {SCHEMA}.events"
    )))
    .fetch_one(pool)
    .await?;
    let relations: Vec<(String, i64)> = sqlx::query_as(
        "SELECT c.relname::text, pg_relation_size(c.oid) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'i') \
           AND (c.relname LIKE 'events%' OR c.relname LIKE 'streams%') \
         UNION ALL \
         SELECT 'events (TOAST)', pg_relation_size(c.reltoastrelid) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relname = 'events' AND c.reltoastrelid <> 0 \
         ORDER BY 1",
    )
    .bind(SCHEMA)
    .fetch_all(pool)
    .await?;
    Ok(relations
        .into_iter()
        .map(|(name, bytes)| (name, bytes as f64 / count.max(1) as f64))
        .collect())
}

pub fn print(figures: &[Sizes]) {
    let [first, .., last] = figures else {
        return;
    };
    println!(
        "\n### Growth: latency at {} and {} stored events (lower is better)\n",
        first.events, last.events
    );
    println!(
        "| operation | p50 ms at {0} | p99 ms at {0} | p50 ms at {1} | p99 ms at {1} | p50 ratio | p99 ratio |",
        first.events, last.events
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for ((name, a), (_, b)) in first.rows.iter().zip(&last.rows) {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            ms(a.p50),
            ms(a.p99),
            ms(b.p50),
            ms(b.p99),
            ms(b.p50) / ms(a.p50),
            ms(b.p99) / ms(a.p99)
        );
    }
    println!(
        "\n| relation | bytes per event at {} | at {} |",
        first.events, last.events
    );
    println!("|---|---:|---:|");
    for ((name, a), (_, b)) in first.bytes.iter().zip(&last.bytes) {
        println!("| {name} | {a:.1} | {b:.1} |");
    }
}
