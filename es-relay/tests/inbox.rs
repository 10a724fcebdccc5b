//! The consumer side against a real JetStream: a consumer with the inbox, killed at random
//! points, ends with each event's effect exactly once; a message that keeps failing is
//! dead-lettered without holding up the others, and replays once fixed.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use es_core::BoxError;
use es_core::testing::evolution::LedgerEvent;
use es_postgres::sqlx::{self, PgConnection};
use es_postgres::testing::TestDatabase;
use es_postgres::{PgEventStore, ProjectionRunner, SchemaName};
use es_relay::async_nats::jetstream::{self, consumer::PullConsumer, consumer::pull};
use es_relay::{Handler, Inbox, JetStreamInbox, JetStreamPublisher, Received, Relay, Replay};
use rand::Rng;

/// Counts each event's applications: a redelivery applied twice shows as 2.
struct Effects {
    schema: SchemaName,
    poison: Option<u64>,
    poisoned: AtomicBool,
}

#[es_relay::async_trait]
impl Handler for Effects {
    async fn handle(&self, tx: &mut PgConnection, message: &Received) -> Result<(), BoxError> {
        let event: LedgerEvent = message.decode()?;
        let LedgerEvent::Credited { cents, .. } = event else {
            return Ok(());
        };
        if self.poison == Some(cents) && self.poisoned.load(Ordering::SeqCst) {
            // A panicking handler counts as a failing one.
            panic!("credit of {cents} is poison");
        }
        sqlx::query(self.schema.sql(
            "INSERT INTO {schema}.effects (event_id, applied) VALUES ($1, 1)
             ON CONFLICT (event_id) DO UPDATE SET applied = effects.applied + 1",
        ))
        .bind(message.event_id().ok_or("no event id")?)
        .execute(&mut *tx)
        .await?;
        // Work that takes a while, so that kills land in the middle of it.
        tokio::time::sleep(Duration::from_millis(2)).await;
        Ok(())
    }
}

struct Rig {
    db: TestDatabase,
    client: es_relay::async_nats::Client,
    stream: String,
    inbox: Inbox,
    events: u64,
}

/// A stream filled by a relay with `streams` x `per_stream` credits (cents 1..=per_stream),
/// an inbox and an effects table.
async fn rig(tag: &str, streams: usize, per_stream: usize) -> Rig {
    let db = TestDatabase::new().await;
    let client = nats().await;
    let (stream, prefix) = unique(tag);
    let events = seed(&db, streams, per_stream).await;
    let publisher = JetStreamPublisher::new(client.clone(), &stream, &prefix)
        .await
        .unwrap();
    ProjectionRunner::new(
        db.store.clone(),
        Relay::<LedgerEvent>::new(&db.store, "to-consumers", publisher),
    )
    .catch_up()
    .await
    .unwrap();
    assert_eq!(count(&client, &stream).await, events);
    let inbox = Inbox::new(db.schema.clone());
    inbox.setup(&db.pool).await.unwrap();
    sqlx::query(
        db.schema
            .sql("CREATE TABLE {schema}.effects (event_id uuid PRIMARY KEY, applied int NOT NULL)"),
    )
    .execute(&db.pool)
    .await
    .unwrap();
    Rig {
        db,
        client,
        stream,
        inbox,
        events,
    }
}

async fn consumer(client: &es_relay::async_nats::Client, stream: &str) -> PullConsumer {
    jetstream::new(client.clone())
        .get_stream(stream)
        .await
        .unwrap()
        .get_or_create_consumer(
            "effects",
            pull::Config {
                durable_name: Some("effects".to_owned()),
                ack_wait: Duration::from_secs(1),
                ..pull::Config::default()
            },
        )
        .await
        .unwrap()
}

async fn effects(db: &TestDatabase) -> Vec<i32> {
    sqlx::query_scalar(db.schema.sql("SELECT applied FROM {schema}.effects"))
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

async fn wait_for_effects(db: &TestDatabase, expected: usize, limit: Duration) {
    let started = Instant::now();
    while effects(db).await.len() < expected {
        assert!(
            started.elapsed() < limit,
            "{} effects after {limit:?}, expected {expected}",
            effects(db).await.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_consumer_killed_at_random_applies_each_event_exactly_once() {
    let rig = rig("inbox_kills", 8, 40).await;
    let mut kills = 0;
    let mut mid_work = 0;
    while kills < 20 {
        // A process of its own: its own database pool and NATS connection.
        let process: PgEventStore = rig.db.another_process(3).await;
        let own = connect(&nats_url()).await;
        let consumer = consumer(&own, &rig.stream).await;
        let helper = JetStreamInbox::new(process.pool().clone(), rig.inbox.clone(), "effects");
        let handler = Effects {
            schema: rig.db.schema.clone(),
            poison: None,
            poisoned: AtomicBool::new(false),
        };
        let task = tokio::spawn(async move {
            helper
                .run(&consumer, &handler, std::future::pending())
                .await
        });
        let wait = rand::rng().random_range(10..150);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        task.abort();
        let _ = task.await;
        drop(own);
        process.pool().close().await;
        kills += 1;
        if (effects(&rig.db).await.len() as u64) < rig.events {
            mid_work += 1;
        }
    }
    assert!(mid_work >= 5, "only {mid_work} kills came before the end");
    // One more, left to finish (redeliveries come after the 1 s ack wait).
    let consumer = consumer(&rig.client, &rig.stream).await;
    let helper = JetStreamInbox::new(rig.db.pool.clone(), rig.inbox.clone(), "effects");
    let handler = Effects {
        schema: rig.db.schema.clone(),
        poison: None,
        poisoned: AtomicBool::new(false),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let finishing = async {
        helper
            .run(&consumer, &handler, async {
                let _ = stopped.await;
            })
            .await
    };
    let waiting = async {
        wait_for_effects(&rig.db, rig.events as usize, Duration::from_secs(60)).await;
        // Redeliveries still due would show as a second application.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stop.send(()).unwrap();
    };
    let (finished, ()) = tokio::join!(finishing, waiting);
    finished.unwrap();
    let applied = effects(&rig.db).await;
    assert_eq!(
        applied.len() as u64,
        rig.events,
        "every event has an effect"
    );
    assert!(
        applied.iter().all(|n| *n == 1),
        "an effect applied twice: {:?}",
        applied.iter().filter(|n| **n != 1).collect::<Vec<_>>()
    );
    println!(
        "{kills} consumers killed ({mid_work} mid-work); {} effects, each once",
        applied.len()
    );
    delete_stream(&rig.client, &rig.stream).await;
    rig.db.drop().await;
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_without_holding_up_the_rest_and_replays() {
    // Two streams of 5 credits: cents 3 appears twice and is poison.
    let rig = rig("inbox_poison", 2, 5).await;
    let consumer = consumer(&rig.client, &rig.stream).await;
    let helper = JetStreamInbox::new(rig.db.pool.clone(), rig.inbox.clone(), "effects")
        .max_deliveries(3)
        .retry_delay(Duration::from_millis(20));
    let handler = Arc::new(Effects {
        schema: rig.db.schema.clone(),
        poison: Some(3),
        poisoned: AtomicBool::new(true),
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = async {
        helper
            .run(&consumer, handler.as_ref(), async {
                let _ = stopped.await;
            })
            .await
    };
    let waiting = async {
        wait_for_effects(&rig.db, 8, Duration::from_secs(20)).await;
        let started = Instant::now();
        while rig
            .inbox
            .dead_letters(&rig.db.pool, "effects")
            .await
            .unwrap()
            .len()
            < 2
        {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no dead letters"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.send(()).unwrap();
    };
    let (ran, ()) = tokio::join!(running, waiting);
    ran.unwrap();
    let letters = rig
        .inbox
        .dead_letters(&rig.db.pool, "effects")
        .await
        .unwrap();
    assert_eq!(letters.len(), 2);
    for letter in &letters {
        assert_eq!(letter.deliveries, 3);
        assert!(letter.error.contains("poison"), "{}", letter.error);
        assert!(letter.headers.contains("Es-Event-Id"));
    }
    assert_eq!(effects(&rig.db).await.len(), 8, "the others flowed");

    // Fixed: replaying applies each once, and a second replay finds nothing.
    handler.poisoned.store(false, Ordering::SeqCst);
    for letter in &letters {
        assert_eq!(
            helper
                .replay_dead_letter(&letter.message_id, handler.as_ref())
                .await
                .unwrap(),
            Replay::Applied
        );
        assert_eq!(
            helper
                .replay_dead_letter(&letter.message_id, handler.as_ref())
                .await
                .unwrap(),
            Replay::NotFound
        );
    }
    let applied = effects(&rig.db).await;
    assert_eq!(applied.len(), 10);
    assert!(applied.iter().all(|n| *n == 1));
    assert!(
        rig.inbox
            .dead_letters(&rig.db.pool, "effects")
            .await
            .unwrap()
            .is_empty()
    );
    delete_stream(&rig.client, &rig.stream).await;
    rig.db.drop().await;
}
