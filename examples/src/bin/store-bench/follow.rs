//! A live follower's latency: how long after an append returns its event reaches a
//! `LogFollower` that has caught up, with writers appending at a steady rate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use es_core::{EventStore, ExpectedVersion, StreamId};
use es_postgres::PgEventStore;
use sqlx::PgPool;
use uuid::Uuid;

use crate::harness::{BoxError, event, fresh_store};

/// Latency percentiles of one steady-rate run.
pub struct Latency {
    pub name: String,
    pub events: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// Writers, each a store of its own as separate processes would have, append one event every
/// `period`; one follower reads. Latency: from the moment an append returned (its commit
/// acknowledged) to the moment the follower has the event; zero when the follower had it first.
pub async fn run(pool: &PgPool) -> Result<Vec<Latency>, BoxError> {
    let mut figures = Vec::new();
    for (writers, per_second) in [(1, 100), (4, 200), (8, 1000)] {
        figures.push(steady(pool, writers, per_second, Duration::from_secs(10)).await?);
    }
    Ok(figures)
}

async fn steady(
    pool: &PgPool,
    writers: usize,
    per_second: usize,
    length: Duration,
) -> Result<Latency, BoxError> {
    let schema = "bench_follow";
    let reader = fresh_store(pool, schema).await?;
    let appended: Arc<Mutex<HashMap<Uuid, Instant>>> = Arc::default();
    let received: Arc<Mutex<HashMap<Uuid, Instant>>> = Arc::default();
    let total = per_second * length.as_secs() as usize;

    let mut follower = reader.follow(reader.head().await?);
    let follow = {
        let received = Arc::clone(&received);
        tokio::spawn(async move {
            let mut seen = 0;
            while seen < total {
                let batch = follower.next_batch().await?;
                let now = Instant::now();
                let mut received = received.lock().expect("not poisoned");
                for event in batch {
                    received.insert(event.event_id, now);
                    seen += 1;
                }
            }
            Ok::<_, BoxError>(())
        })
    };

    let period = Duration::from_secs_f64(writers as f64 / per_second as f64);
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let store = PgEventStore::with_schema(pool.clone(), schema)?;
        let appended = Arc::clone(&appended);
        tasks.push(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for n in 0..total / writers {
                ticks.tick().await;
                let new = event(n);
                let id = new.event_id;
                let stream = StreamId::new(format!("order-{writer}-{n}"))?;
                store
                    .append(&stream, ExpectedVersion::NoStream, vec![new])
                    .await?;
                appended
                    .lock()
                    .expect("not poisoned")
                    .insert(id, Instant::now());
            }
            Ok::<_, BoxError>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    tokio::time::timeout(Duration::from_secs(30), follow)
        .await
        .map_err(|_| "the follower did not receive every event within 30 s")???;

    let appended = appended.lock().expect("not poisoned");
    let received = received.lock().expect("not poisoned");
    let mut latencies: Vec<Duration> = appended
        .iter()
        .map(|(id, at)| {
            received
                .get(id)
                .map(|got| got.saturating_duration_since(*at))
                .ok_or_else(|| format!("event {id} never reached the follower"))
        })
        .collect::<Result<_, _>>()?;
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    let figure = Latency {
        name: format!("{writers} writer(s), {per_second} appends/s in all"),
        events: latencies.len(),
        p50: at(0.5),
        p99: at(0.99),
        max: latencies[latencies.len() - 1],
    };
    eprintln!(
        "follower latency, {}: p50 {:?}, p99 {:?}, max {:?}",
        figure.name, figure.p50, figure.p99, figure.max
    );
    Ok(figure)
}

pub fn print(figures: &[Latency]) {
    if figures.is_empty() {
        return;
    }
    println!("\n### Live follower latency, append returned -> event read (lower is better)\n");
    println!("| workload | events | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    for f in figures {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} |",
            f.name,
            f.events,
            f.p50.as_secs_f64() * 1e3,
            f.p99.as_secs_f64() * 1e3,
            f.max.as_secs_f64() * 1e3
        );
    }
}
