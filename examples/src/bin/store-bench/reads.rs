//! Reads: one long stream, the global log, and loading an aggregate (read, decode, apply) with
//! and without a snapshot.

use std::sync::Arc;
use std::time::{Duration, Instant};

use es_core::{
    Aggregate, EventStore, ExpectedVersion, Position, Repository, Snapshot, SnapshotPolicy,
    SnapshotStore, StreamId,
};
use es_postgres::{PgEventStore, PgSnapshotStore};
use serde::Deserialize;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::commands::{Order, add_line, line, line_event};
use crate::harness::{
    BoxError, Figure, Rep, Side, alternate, compare_rates, event, fresh_store, log_page, settle,
    stream_rows, vacuum,
};

/// Loads timed per repetition.
const LOADS: usize = 20;
/// Reads of the same stream or log timed per repetition: one takes only tens of
/// milliseconds.
const PASSES: usize = 5;

pub async fn run(pool: &PgPool) -> Result<Vec<Figure>, BoxError> {
    let store = seed(pool).await?;
    Ok(vec![
        compare_rates("read one 10,000-event stream", PASSES * 10_000, |rep| {
            read_stream(pool, &store, rep)
        })
        .await?,
        compare_rates(
            "read global log, 20,000 events, pages of 1000",
            PASSES * 20_000,
            |rep| read_log(pool, &store, rep),
        )
        .await?,
    ])
}

/// One schema read by both sides: a 10,000-event order, and 100 streams of 100 events.
async fn seed(pool: &PgPool) -> Result<PgEventStore, BoxError> {
    let store = fresh_store(pool, "bench_read").await?;
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
    vacuum(pool, "bench_read").await?;
    settle(pool).await?;
    Ok(store)
}

async fn read_stream(pool: &PgPool, store: &PgEventStore, rep: Rep) -> Result<Duration, BoxError> {
    let stream = StreamId::new("order-big")?;
    let start = Instant::now();
    for _ in 0..PASSES {
        let count = match rep.side {
            Side::Framework => store.read_stream_to_vec(&stream, 1).await?.len(),
            Side::Raw => stream_rows(pool, "bench_read", stream.as_str(), 1)
                .await?
                .len(),
        };
        assert_eq!(count, 10_000);
    }
    Ok(start.elapsed())
}

/// The framework's gap-safe read beside the same index walk without the horizon.
async fn read_log(pool: &PgPool, store: &PgEventStore, rep: Rep) -> Result<Duration, BoxError> {
    let start = Instant::now();
    for _ in 0..PASSES {
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
                let mut after = (0i64, 0i64);
                while count < 20_000 {
                    let rows = log_page(pool, "bench_read", after, 1000).await?;
                    let last = rows.last().ok_or("log too short")?;
                    after = (last.try_get(0)?, last.try_get(1)?);
                    count += rows.len();
                }
            }
        }
    }
    Ok(start.elapsed())
}

/// A line's payload, as hand-written code would deserialize it.
#[derive(Deserialize)]
#[allow(dead_code)]
struct LineAdded {
    order_id: Uuid,
    customer: String,
    sku: String,
    quantity: u32,
    unit_price: u64,
    currency: String,
    note: String,
}

/// Loads a 10,000-event order through the repository, by full replay and from a snapshot 99
/// events behind the head (the worst case of a snapshot every 100), beside hand-written code
/// reading the same rows and deserializing the same payloads into the same state.
pub async fn loads(pool: &PgPool) -> Result<Vec<Figure>, BoxError> {
    let store = fresh_store(pool, "bench_load").await?;
    let stream = StreamId::new("order-big")?;
    let order_id = Uuid::now_v7();
    let events = (0..10_000)
        .map(|n| line_event(order_id, n))
        .collect::<Result<Vec<_>, _>>()?;
    for chunk in events.chunks(100) {
        store
            .append(&stream, ExpectedVersion::Any, chunk.to_vec())
            .await?;
    }
    let mut expected = Order::default();
    for n in 0..10_000 {
        expected.apply(&line(order_id, &add_line(n)));
        if n + 1 == 9_901 {
            PgSnapshotStore::new(&store)
                .save(Snapshot {
                    stream_id: stream.clone(),
                    stream_version: 9_901,
                    snapshot_version: Order::SNAPSHOT_VERSION,
                    state: serde_json::value::to_raw_value(&expected)?,
                    taken_at: chrono::Utc::now(),
                })
                .await?;
        }
    }
    vacuum(pool, "bench_load").await?;
    settle(pool).await?;
    let shared: Arc<dyn EventStore> = Arc::new(store.clone());
    let plain = Repository::<Order>::new(Arc::clone(&shared));
    let snapshotting = Repository::<Order>::new(Arc::clone(&shared)).with_snapshots(
        Arc::new(PgSnapshotStore::new(&store)),
        SnapshotPolicy::Never,
    );

    let mut figures = Vec::new();
    for (name, snapshot, decode) in [
        ("full replay; raw side fetches rows only", false, false),
        (
            "full replay; raw side also deserializes and applies",
            false,
            true,
        ),
        (
            "from a snapshot 99 events behind; raw fetches only",
            true,
            false,
        ),
        (
            "from a snapshot 99 events behind; raw also deserializes and applies",
            true,
            true,
        ),
    ] {
        let (framework, raw) = alternate(|rep| {
            let (plain, snapshotting, expected) = (&plain, &snapshotting, &expected);
            async move {
                // One load is short: each repetition times LOADS of them.
                let start = Instant::now();
                for _ in 0..LOADS {
                    match rep.side {
                        Side::Framework => {
                            let repository = if snapshot { snapshotting } else { plain };
                            let loaded = repository.load(&StreamId::new("order-big")?).await?;
                            assert_eq!(
                                (loaded.version, loaded.state.total),
                                (10_000, expected.total)
                            );
                        }
                        Side::Raw => {
                            let state = raw_load(pool, snapshot, decode).await?;
                            if decode {
                                assert_eq!(state.total, expected.total);
                            }
                        }
                    }
                }
                Ok(start.elapsed().as_secs_f64() * 1000.0 / LOADS as f64)
            }
        })
        .await?;
        eprintln!("load {name}: framework {framework:.2} ms, raw {raw:.2} ms");
        figures.push(Figure {
            name: name.to_owned(),
            framework,
            raw,
            note: String::new(),
        });
    }
    Ok(figures)
}

async fn raw_load(pool: &PgPool, snapshot: bool, decode: bool) -> Result<Order, BoxError> {
    let (mut state, from) = if snapshot {
        let row = sqlx::query(
            "SELECT stream_version, snapshot_version, state::text FROM bench_load.snapshots \
             WHERE stream_id = 'order-big'",
        )
        .fetch_one(pool)
        .await?;
        let version: i64 = row.try_get(0)?;
        let state: &str = row.try_get(2)?;
        let state = if decode {
            serde_json::from_str(state)?
        } else {
            Order::default()
        };
        (state, version + 1)
    } else {
        (Order::default(), 1)
    };
    let rows = stream_rows(pool, "bench_load", "order-big", from).await?;
    assert_eq!(rows.len() as i64, 10_001 - from);
    if decode {
        for row in &rows {
            let event_type: &str = row.try_get(5)?;
            let payload: &str = row.try_get(11)?;
            if event_type == "LineAdded" {
                let line: LineAdded = serde_json::from_str(payload)?;
                state.id = Some(line.order_id);
                state.lines += 1;
                state.total += u64::from(line.quantity) * line.unit_price;
            }
        }
    }
    Ok(state)
}
