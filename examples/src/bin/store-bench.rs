//! Measures the PostgreSQL store beside raw SQL doing the same database work in the same run.
//!
//! Usage: `cargo run --release -p es-examples --bin store-bench` (uses `DATABASE_URL`, default
//! the local server). Works in schemas `bench_fw` and `bench_raw`, recreated each run, both built
//! by the same migrations so the tables, indexes and triggers are identical. Each figure is the
//! median of 3 repetitions. Payloads are ~300 bytes and metadata ~150 bytes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use es_core::{EventStore, ExpectedVersion, Metadata, NewEvent, Position, StreamId};
use es_postgres::PgEventStore;
use serde_json::value::RawValue;
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool, Row};
use uuid::Uuid;

const REPS: usize = 3;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .connect(&url)
        .await?;
    print_machine(&pool).await?;

    let mut rows = Vec::new();
    rows.push(
        compare("append 1 event, new streams, 1 client", 2_000, |rep| {
            appends(&pool, rep, 1, 2_000, 1)
        })
        .await?,
    );
    rows.push(
        compare("append 1 event, new streams, 8 clients", 8 * 1_000, |rep| {
            appends(&pool, rep, 8, 1_000, 1)
        })
        .await?,
    );
    rows.push(
        compare("append 10-event batches, 8 clients", 8 * 200 * 10, |rep| {
            appends(&pool, rep, 8, 200, 10)
        })
        .await?,
    );
    rows.push(
        compare("append 100-event batches, 8 clients", 8 * 40 * 100, |rep| {
            appends(&pool, rep, 8, 40, 100)
        })
        .await?,
    );
    rows.push(
        compare("read one 10,000-event stream", 10_000, |rep| {
            read_stream(&pool, rep)
        })
        .await?,
    );
    rows.push(
        compare(
            "read global log, 20,000 events, pages of 1000",
            20_000,
            |rep| read_log(&pool, rep),
        )
        .await?,
    );

    let loads = aggregate_loads(&pool).await?;

    println!("\n| workload | framework events/s | raw SQL events/s | framework/raw |");
    println!("|---|---:|---:|---:|");
    for (name, fw, raw) in rows {
        println!("| {name} | {fw:.0} | {raw:.0} | {:.2} |", fw / raw);
    }
    println!(
        "\n| load a 10,000-event account | framework ms | raw SQL ms (same rows) | framework/raw |"
    );
    println!("|---|---:|---:|---:|");
    for (name, fw, raw) in loads {
        println!("| {name} | {fw:.2} | {raw:.2} | {:.2} |", fw / raw);
    }
    Ok(())
}

/// Loads one 10,000-event account through the repository, by full replay and from a snapshot
/// 99 events behind the head (the worst case of a snapshot every 100 events), beside raw SQL
/// reading the same rows (all events; or the snapshot row and the events after it).
async fn aggregate_loads(pool: &PgPool) -> Result<Vec<(String, f64, f64)>, BoxError> {
    use es_core::{Repository, Snapshot, SnapshotPolicy, SnapshotStore};
    use es_examples::account::{Account, AccountEvent};
    use es_postgres::PgSnapshotStore;

    let store = fresh_store(pool, "bench_load").await?;
    let stream = StreamId::new("account-big")?;
    let mut version = 0u64;
    let mut state = Account::default();
    for chunk in 0..100 {
        let events: Vec<AccountEvent> = (0..100)
            .map(|i| {
                if chunk == 0 && i == 0 {
                    AccountEvent::Opened {
                        owner: "bench".into(),
                    }
                } else {
                    AccountEvent::Deposited { amount: 1 }
                }
            })
            .collect();
        let new: Vec<NewEvent> = events
            .iter()
            .map(|e| NewEvent::from_event(e).map(|n| n.with_metadata(metadata())))
            .collect::<Result<_, _>>()?;
        store.append(&stream, ExpectedVersion::Any, new).await?;
        for event in &events {
            version += 1;
            es_core::Aggregate::apply(&mut state, event);
            if version == 9_901 {
                let snapshots = PgSnapshotStore::new(&store);
                snapshots
                    .save(Snapshot {
                        stream_id: stream.clone(),
                        stream_version: version,
                        snapshot_version: <Account as es_core::Aggregate>::SNAPSHOT_VERSION,
                        state: serde_json::value::to_raw_value(&state)?,
                        taken_at: chrono::Utc::now(),
                    })
                    .await?;
            }
        }
    }
    sqlx::query("VACUUM ANALYZE bench_load.events")
        .execute(pool)
        .await?;
    let shared: Arc<dyn EventStore> = Arc::new(store.clone());
    let plain = Repository::<Account>::new(Arc::clone(&shared));
    let snapshotting = Repository::<Account>::new(Arc::clone(&shared)).with_snapshots(
        Arc::new(PgSnapshotStore::new(&store)),
        SnapshotPolicy::Never,
    );

    let raw_events = |from: i64| {
        let pool = pool.clone();
        async move {
            let rows = sqlx::query(
                "SELECT transaction_id, position, event_id, stream_id, stream_version, event_type, \
                 schema_version, recorded_at, correlation_id, causation_id, metadata::text, \
                 payload::text FROM bench_load.events WHERE stream_id = 'account-big' \
                 AND stream_version >= $1 ORDER BY stream_version",
            )
            .bind(from)
            .fetch_all(&pool)
            .await?;
            Ok::<_, BoxError>(rows.len())
        }
    };
    let mut results = Vec::new();
    for snapshot in [false, true] {
        let (mut fw, mut raw) = (Vec::new(), Vec::new());
        for _ in 0..REPS {
            let start = Instant::now();
            let loaded = if snapshot {
                snapshotting.load(&stream).await?
            } else {
                plain.load(&stream).await?
            };
            fw.push(start.elapsed().as_secs_f64() * 1000.0);
            assert_eq!((loaded.version, loaded.state.balance), (10_000, 9_999));

            let start = Instant::now();
            if snapshot {
                let state: String = sqlx::query_scalar(
                    "SELECT state::text FROM bench_load.snapshots WHERE stream_id = 'account-big'",
                )
                .fetch_one(pool)
                .await?;
                assert!(!state.is_empty());
                assert_eq!(raw_events(9_902).await?, 99);
            } else {
                assert_eq!(raw_events(1).await?, 10_000);
            }
            raw.push(start.elapsed().as_secs_f64() * 1000.0);
        }
        let name = if snapshot {
            "from a snapshot 99 events behind (snapshot every 100)"
        } else {
            "full replay, no snapshot"
        };
        results.push((name.to_owned(), median(fw), median(raw)));
    }
    Ok(results)
}

/// Runs `work` REPS times for each side; returns events/s medians.
async fn compare<F, Fut>(name: &str, events: usize, work: F) -> Result<(String, f64, f64), BoxError>
where
    F: Fn(Rep) -> Fut,
    Fut: std::future::Future<Output = Result<Duration, BoxError>>,
{
    let mut fw = Vec::new();
    let mut raw = Vec::new();
    for i in 0..REPS {
        // Alternate which side goes first so neither always gets the warmer cache.
        for side in if i % 2 == 0 {
            [Side::Framework, Side::Raw]
        } else {
            [Side::Raw, Side::Framework]
        } {
            let elapsed = work(Rep { side, index: i }).await?;
            let rate = events as f64 / elapsed.as_secs_f64();
            match side {
                Side::Framework => fw.push(rate),
                Side::Raw => raw.push(rate),
            }
        }
    }
    let (fw, raw) = (median(fw), median(raw));
    eprintln!(
        "{name}: framework {fw:.0}/s, raw {raw:.0}/s, ratio {:.2}",
        fw / raw
    );
    Ok((name.to_owned(), fw, raw))
}

#[derive(Clone, Copy, PartialEq)]
enum Side {
    Framework,
    Raw,
}

#[derive(Clone, Copy)]
struct Rep {
    side: Side,
    index: usize,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

async fn fresh_store(pool: &PgPool, schema: &str) -> Result<PgEventStore, BoxError> {
    sqlx::query(AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE"
    )))
    .execute(pool)
    .await?;
    let store = PgEventStore::with_schema(pool.clone(), schema)?;
    store.migrate().await?;
    Ok(store)
}

fn payload(n: usize) -> Box<RawValue> {
    let text = format!(
        r#"{{"order_id":"{}","customer":"customer-{n:08}","amount_cents":{n},"currency":"EUR","lines":[{{"sku":"SKU-{n:06}","quantity":2,"unit_price":1999}},{{"sku":"SKU-{:06}","quantity":1,"unit_price":4999}}],"note":"benchmark payload padded to about three hundred bytes ....."}}"#,
        Uuid::now_v7(),
        n + 1
    );
    RawValue::from_string(text).expect("valid JSON")
}

fn metadata() -> Metadata {
    let mut m = Metadata::new();
    m.insert("user".into(), "bench-user-0001".into());
    m.insert("tenant".into(), "tenant-bench".into());
    m.insert("trace_id".into(), Uuid::now_v7().to_string().into());
    m.insert("source".into(), "store-bench/append-workload/v1".into());
    m
}

fn event(n: usize) -> NewEvent {
    NewEvent::new("OrderPlaced", 1, payload(n)).with_metadata(metadata())
}

/// `clients` tasks each make `appends` appends of `batch` events to streams of their own.
async fn appends(
    pool: &PgPool,
    rep: Rep,
    clients: usize,
    appends: usize,
    batch: usize,
) -> Result<Duration, BoxError> {
    let schema = match rep.side {
        Side::Framework => "bench_fw",
        Side::Raw => "bench_raw",
    };
    let store = fresh_store(pool, schema).await?;
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
                    Side::Raw => raw_append(&pool, &stream, batch == 1, &events).await?,
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

/// The same rows written by hand: one statement that creates or bumps the stream row and
/// inserts the events with a multi-row VALUES list.
async fn raw_append(
    pool: &PgPool,
    stream: &str,
    new_stream: bool,
    events: &[NewEvent],
) -> Result<(), BoxError> {
    let stream_cte = if new_stream {
        "INSERT INTO bench_raw.streams (stream_id, version) VALUES ($1, $2) RETURNING version"
    } else {
        "INSERT INTO bench_raw.streams AS t (stream_id, version) VALUES ($1, $2) \
         ON CONFLICT (stream_id) DO UPDATE SET version = t.version + EXCLUDED.version \
         RETURNING version"
    };
    let mut query = sqlx::query(AssertSqlSafe(raw_sql(stream_cte, events.len())))
        .bind(stream)
        .bind(events.len() as i64);
    for e in events {
        query = query
            .bind(e.event_id)
            .bind(e.correlation_id)
            .bind(serde_json::to_string(&e.metadata)?)
            .bind(e.payload.get());
    }
    query.execute(pool).await?;
    Ok(())
}

fn raw_sql(stream_cte: &str, n: usize) -> String {
    let values: Vec<_> = (0..n)
        .map(|i| {
            let p = 3 + i * 4;
            format!(
                "(${p}::uuid, $1, (SELECT version FROM s) - $2 + {}, 'OrderPlaced', 1, ${}::uuid, NULL::uuid, ${}::json, ${}::json)",
                i + 1,
                p + 1,
                p + 2,
                p + 3
            )
        })
        .collect();
    format!(
        "WITH s AS ({stream_cte}) INSERT INTO bench_raw.events (event_id, stream_id, \
         stream_version, event_type, schema_version, correlation_id, causation_id, metadata, \
         payload) VALUES {}",
        values.join(", ")
    )
}

/// Seeds both schemas with one 10,000-event stream (once), then reads it whole.
async fn read_stream(pool: &PgPool, rep: Rep) -> Result<Duration, BoxError> {
    let store = seeded(pool).await?;
    let stream = StreamId::new("order-big")?;
    let start = Instant::now();
    let count = match rep.side {
        Side::Framework => store.read_stream_to_vec(&stream, 1).await?.len(),
        Side::Raw => {
            let rows = sqlx::query(
                "SELECT transaction_id, position, event_id, stream_id, stream_version, event_type, \
                 schema_version, recorded_at, correlation_id, causation_id, metadata::text, \
                 payload::text FROM bench_fw.events WHERE stream_id = $1 AND stream_version >= 1 \
                 ORDER BY stream_version",
            )
            .bind(stream.as_str())
            .fetch_all(pool)
            .await?;
            let mut n = 0;
            for row in &rows {
                let payload: &str = row.try_get(11)?;
                n += usize::from(!payload.is_empty());
            }
            n
        }
    };
    assert_eq!(count, 10_000);
    Ok(start.elapsed())
}

/// Reads the first 20,000 events of the seeded log in pages: the framework's gap-safe read
/// beside a plain `ORDER BY position` read of the same rows.
async fn read_log(pool: &PgPool, rep: Rep) -> Result<Duration, BoxError> {
    let store = seeded(pool).await?;
    let start = Instant::now();
    let mut count = 0;
    match rep.side {
        Side::Framework => {
            let mut after = Position::START;
            while count < 20_000 {
                let page = store.read_all(after, 1000).await?;
                after = page.last().ok_or("log too short")?.position;
                count += page.len();
            }
        }
        Side::Raw => {
            // The same index walk, without the horizon and without decoding envelopes.
            let mut after = (0i64, 0i64);
            while count < 20_000 {
                let rows = sqlx::query(
                    "SELECT transaction_id, position, event_id, stream_id, stream_version, \
                     event_type, schema_version, recorded_at, correlation_id, causation_id, \
                     metadata::text, payload::text FROM bench_fw.events \
                     WHERE (transaction_id, position) > ($1, $2) \
                     ORDER BY transaction_id, position LIMIT 1000",
                )
                .bind(after.0)
                .bind(after.1)
                .fetch_all(pool)
                .await?;
                let last = rows.last().ok_or("log too short")?;
                after = (last.try_get(0)?, last.try_get(1)?);
                count += rows.len();
            }
        }
    }
    Ok(start.elapsed())
}

/// The read workloads share one seeded schema, written once per run.
async fn seeded(pool: &PgPool) -> Result<PgEventStore, BoxError> {
    static SEEDED: tokio::sync::OnceCell<PgEventStore> = tokio::sync::OnceCell::const_new();
    SEEDED
        .get_or_try_init(|| async {
            let store = fresh_store(pool, "bench_fw").await?;
            let big = StreamId::new("order-big")?;
            for chunk in 0..100 {
                let events = (0..100).map(|i| event(chunk * 100 + i)).collect();
                store.append(&big, ExpectedVersion::Any, events).await?;
            }
            for s in 0..100 {
                let events = (0..100).map(event).collect();
                store
                    .append(
                        &StreamId::new(format!("order-s{s}"))?,
                        ExpectedVersion::NoStream,
                        events,
                    )
                    .await?;
            }
            sqlx::query("VACUUM ANALYZE bench_fw.events")
                .execute(pool)
                .await?;
            Ok::<_, BoxError>(store)
        })
        .await
        .cloned()
}

async fn print_machine(pool: &PgPool) -> Result<(), BoxError> {
    let version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(pool)
        .await?;
    let mut settings = Vec::new();
    for name in [
        "fsync",
        "synchronous_commit",
        "shared_buffers",
        "wal_level",
        "max_connections",
    ] {
        let value: String = sqlx::query_scalar("SELECT current_setting($1)")
            .bind(name)
            .fetch_one(pool)
            .await?;
        settings.push(format!("{name}={value}"));
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "machine: {cores} cores; PostgreSQL {version}; {}",
        settings.join(", ")
    );
    Ok(())
}
