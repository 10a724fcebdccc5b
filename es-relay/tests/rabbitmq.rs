//! The relay and the consumer helper against a real RabbitMQ: the envelope on the wire, stream
//! order through relays killed at random and a dropped connection, consumers killed at random
//! ending with each effect once, poison messages to the dead-letter exchange.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use es_core::BoxError;
use es_core::testing::evolution::LedgerEvent;
use es_core::{ExpectedVersion, StreamId};
use es_postgres::sqlx::{self, PgConnection};
use es_postgres::testing::TestDatabase;
use es_postgres::{PgEventStore, ProjectionRunner, SchemaName};
use es_relay::lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use es_relay::lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use es_relay::lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use es_relay::{Handler, Inbox, RabbitMqInbox, RabbitMqPublisher, Received, Relay, Replay, header};
use rand::Rng;

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A channel on the test server.
///
/// # Panics
/// When no server answers, saying how to start one.
async fn open_channel() -> (Connection, Channel) {
    let url = amqp_url();
    let connection = match tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(&url, ConnectionProperties::default()),
    )
    .await
    {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => panic!(
            "cannot reach RabbitMQ at {url} ({error}). Start it: \
             `rabbitmq-server -detached` (or `systemctl start rabbitmq-server`), or set AMQP_URL"
        ),
        Err(_) => panic!("no RabbitMQ answered at {url} within 10 s; start it or set AMQP_URL"),
    };
    let channel = connection.create_channel().await.unwrap();
    (connection, channel)
}

/// An exchange and a durable queue bound to everything on it, with a dead-letter exchange and
/// queue: names no other test uses.
struct Topology {
    exchange: String,
    queue: String,
    dead: String,
}

async fn topology(channel: &Channel, tag: &str) -> Topology {
    let (_, id) = unique(tag);
    let t = Topology {
        exchange: format!("{id}.events"),
        queue: format!("{id}.queue"),
        dead: format!("{id}.dead"),
    };
    for (exchange, kind) in [
        (&t.exchange, ExchangeKind::Topic),
        (&t.dead, ExchangeKind::Fanout),
    ] {
        channel
            .exchange_declare(
                ShortString::from(exchange.as_str()),
                kind,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
    }
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from("x-dead-letter-exchange"),
        AMQPValue::LongString(LongString::from(t.dead.as_str())),
    );
    for (queue, exchange, args) in [
        (&t.queue, &t.exchange, arguments),
        (&t.dead, &t.dead, FieldTable::default()),
    ] {
        channel
            .queue_declare(
                ShortString::from(queue.as_str()),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                args,
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                ShortString::from(queue.as_str()),
                ShortString::from(exchange.as_str()),
                ShortString::from("#"),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }
    t
}

async fn clean_up(channel: &Channel, t: &Topology) {
    for queue in [&t.queue, &t.dead] {
        let _ = channel
            .queue_delete(
                ShortString::from(queue.as_str()),
                QueueDeleteOptions::default(),
            )
            .await;
    }
    for exchange in [&t.exchange, &t.dead] {
        let _ = channel
            .exchange_delete(ShortString::from(exchange.as_str()), Default::default())
            .await;
    }
}

/// One message taken from a queue.
#[derive(Debug)]
struct Taken {
    id: String,
    routing_key: String,
    headers: HashMap<String, String>,
    payload: String,
}

/// Takes every message the queue holds now (acknowledging them).
async fn drain(channel: &Channel, queue: &str) -> Vec<Taken> {
    let mut out = Vec::new();
    while let Some(message) = channel
        .basic_get(ShortString::from(queue), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let headers = message
            .delivery
            .properties
            .headers()
            .as_ref()
            .map(|t| {
                t.inner()
                    .iter()
                    .filter_map(|(n, v)| match v {
                        AMQPValue::LongString(s) => Some((
                            n.as_str().to_owned(),
                            String::from_utf8_lossy(s.as_bytes()).into_owned(),
                        )),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(Taken {
            id: message
                .delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
            routing_key: message.delivery.routing_key.as_str().to_owned(),
            headers,
            payload: String::from_utf8(message.delivery.data.clone()).unwrap(),
        });
    }
    out
}

fn relay(
    store: &PgEventStore,
    publisher: RabbitMqPublisher,
) -> ProjectionRunner<Relay<LedgerEvent>> {
    ProjectionRunner::new(
        store.clone(),
        Relay::<LedgerEvent>::new(store, "rabbit-relay", publisher).categories(["ledger"]),
    )
    .batch_size(20)
    .poll_interval(Duration::from_millis(50))
    .lock_retry_interval(Duration::from_millis(50))
}

/// Every stored ledger event is in `taken` at least once, and in each stream the first
/// occurrences of its events come in stream order. Returns how many were repeats.
async fn assert_every_event_in_stream_order(db: &TestDatabase, taken: &[Taken]) -> usize {
    let stored: Vec<(uuid::Uuid,)> = sqlx::query_as(
        db.schema
            .sql("SELECT event_id FROM {schema}.events WHERE stream_id LIKE 'ledger-%'"),
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut next_version: HashMap<String, u64> = HashMap::new();
    let mut repeats = 0;
    for m in taken {
        assert_eq!(
            m.headers[header::EVENT_ID],
            m.id,
            "message id is the event id"
        );
        if !seen.insert(m.id.clone()) {
            repeats += 1;
            continue;
        }
        let version: u64 = m.headers[header::STREAM_VERSION].parse().unwrap();
        let expected = next_version
            .entry(m.headers[header::STREAM].clone())
            .or_insert(1);
        assert_eq!(
            version,
            *expected,
            "stream {} out of order: {m:?}",
            m.headers[header::STREAM]
        );
        *expected += 1;
    }
    for (id,) in &stored {
        assert!(seen.contains(&id.to_string()), "event {id} never arrived");
    }
    assert_eq!(seen.len(), stored.len());
    repeats
}

#[tokio::test]
async fn each_event_reaches_a_bound_queue_with_its_envelope_in_stream_order() {
    let db = TestDatabase::new().await;
    let (_connection, channel) = open_channel().await;
    let t = topology(&channel, "rabbit_envelope").await;
    seed(&db, 3, 10).await;
    let hostile = StreamId::new(format!("ledger-{}", "x.#*".repeat(100))).unwrap();
    es_core::EventStore::append(
        &db.store,
        &hostile,
        ExpectedVersion::NoStream,
        vec![credit(5)],
    )
    .await
    .unwrap();
    db.settle().await;
    let publisher = RabbitMqPublisher::connect(&amqp_url(), &t.exchange)
        .await
        .unwrap();
    relay(&db.store, publisher).catch_up().await.unwrap();
    let taken = drain(&channel, &t.queue).await;
    assert_eq!(taken.len(), 31);
    let repeats = assert_every_event_in_stream_order(&db, &taken).await;
    assert_eq!(repeats, 0, "a relay that did not crash publishes each once");
    let first = &taken[0];
    assert_eq!(first.routing_key, "ledger.Credited");
    assert_eq!(first.headers[header::EVENT_TYPE], "Credited");
    assert_eq!(first.headers[header::SCHEMA_VERSION], "3");
    assert!(first.headers.contains_key(header::POSITION));
    assert!(first.headers.contains_key(header::CORRELATION_ID));
    let payload: serde_json::Value = serde_json::from_str(&first.payload).unwrap();
    assert_eq!(payload["cents"], 1);
    // Streams go out side by side (each in its own order): find the hostile one's message.
    let odd = taken
        .iter()
        .find(|m| m.headers[header::STREAM] == es_relay::header_value(hostile.as_str()))
        .unwrap();
    assert_eq!(odd.routing_key, "ledger.Credited");
    clean_up(&channel, &t).await;
    db.drop().await;
}

/// Counts each event's applications: a redelivery applied twice shows as 2.
struct Effects {
    schema: SchemaName,
    poisoned: AtomicBool,
}

#[es_relay::async_trait]
impl Handler for Effects {
    async fn handle(&self, tx: &mut PgConnection, message: &Received) -> Result<(), BoxError> {
        let LedgerEvent::Credited { cents, .. } = message.decode()? else {
            return Ok(());
        };
        if cents == 3 && self.poisoned.load(Ordering::SeqCst) {
            return Err("a credit of 3 is poison".into());
        }
        sqlx::query(self.schema.sql(
            "INSERT INTO {schema}.effects (event_id, applied) VALUES ($1, 1)
             ON CONFLICT (event_id) DO UPDATE SET applied = effects.applied + 1",
        ))
        .bind(message.event_id().ok_or("no event id")?)
        .execute(&mut *tx)
        .await?;
        tokio::time::sleep(Duration::from_millis(2)).await;
        Ok(())
    }
}

async fn effects(db: &TestDatabase) -> Vec<i32> {
    sqlx::query_scalar(db.schema.sql("SELECT applied FROM {schema}.effects"))
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

async fn setup_effects(db: &TestDatabase) -> Inbox {
    let inbox = Inbox::new(db.schema.clone());
    inbox.setup(&db.pool).await.unwrap();
    sqlx::query(
        db.schema
            .sql("CREATE TABLE {schema}.effects (event_id uuid PRIMARY KEY, applied int NOT NULL)"),
    )
    .execute(&db.pool)
    .await
    .unwrap();
    inbox
}

/// Closes the relay's connection from the broker's side, as a network fault or an operator
/// would: only that one, found by the name the publisher gives it.
fn drop_connection(exchange: &str) -> bool {
    let listed = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "pid", "client_properties"])
        .output();
    let Ok(listed) = listed else {
        return false;
    };
    let text = String::from_utf8_lossy(&listed.stdout).into_owned();
    let mut closed = false;
    for line in text.lines() {
        if line.contains(&format!("es-relay to {exchange}")) {
            let pid = line.split_whitespace().next().unwrap_or_default();
            closed |= std::process::Command::new("rabbitmqctl")
                .args([
                    "-q",
                    "close_connection",
                    pid,
                    "test drops the relay's connection",
                ])
                .status()
                .is_ok_and(|s| s.success());
        }
    }
    closed
}

#[tokio::test]
async fn relays_and_consumers_killed_at_random_end_with_each_effect_once_in_order() {
    let db = TestDatabase::new().await;
    let (_connection, channel) = open_channel().await;
    let t = topology(&channel, "rabbit_kills").await;
    let writers = {
        let store = db.store.clone();
        tokio::spawn(async move {
            for i in 0..280u64 {
                let stream = StreamId::new(format!("ledger-{}", i % 12)).unwrap();
                es_core::EventStore::append(
                    &store,
                    &stream,
                    ExpectedVersion::Any,
                    vec![credit(i + 10)],
                )
                .await
                .unwrap();
                if i % 4 == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        })
    };
    for _ in 0..20 {
        let process = db.another_process(4).await;
        let publisher = RabbitMqPublisher::connect(&amqp_url(), &t.exchange)
            .await
            .unwrap();
        let runner = Arc::new(relay(&process, publisher).batch_size(7));
        let task = {
            let runner = Arc::clone(&runner);
            tokio::spawn(async move { runner.run(std::future::pending()).await })
        };
        let wait = rand::rng().random_range(5..120);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        task.abort();
        let _ = task.await;
        drop(runner);
        process.pool().close().await;
    }
    writers.await.unwrap();
    db.settle().await;
    // A relay left to finish, whose connection the broker drops midway.
    let runner = Arc::new(relay(
        &db.store,
        RabbitMqPublisher::connect(&amqp_url(), &t.exchange)
            .await
            .unwrap(),
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let finishing = tokio::spawn({
        let runner = Arc::clone(&runner);
        async move {
            runner
                .run(async {
                    let _ = stopped.await;
                })
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    let dropped = drop_connection(&t.exchange);
    assert!(dropped, "the relay's connection was found and closed");
    // Work for after the drop: the relay must open a new connection for it.
    seed(&db, 1, 20).await;
    let started = Instant::now();
    while runner.status().await.unwrap().lag_events > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the relay never caught up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(()).unwrap();
    finishing.await.unwrap().unwrap();

    // What the queue holds: every event, each stream in order, repeats only of batches a
    // killed relay had published without committing its checkpoint.
    let inbox = setup_effects(&db).await;
    let taken = drain(&channel, &t.queue).await;
    let repeats = assert_every_event_in_stream_order(&db, &taken).await;
    println!(
        "{} messages for 300 events ({repeats} repeats); the relay's connection dropped by the broker",
        taken.len()
    );

    // Put them back and consume them with the inbox, the consumer killed at random.
    for m in &taken {
        use es_relay::lapin::BasicProperties;
        let mut headers = FieldTable::default();
        for (n, v) in &m.headers {
            headers.insert(
                ShortString::from(n.as_str()),
                AMQPValue::LongString(LongString::from(v.as_str())),
            );
        }
        channel
            .basic_publish(
                ShortString::from(t.exchange.as_str()),
                ShortString::from(m.routing_key.as_str()),
                Default::default(),
                m.payload.as_bytes(),
                BasicProperties::default()
                    .with_message_id(ShortString::from(m.id.as_str()))
                    .with_headers(headers),
            )
            .await
            .unwrap();
    }
    let mut mid_work = 0;
    for _ in 0..20 {
        let process = db.another_process(3).await;
        let (own, own_channel) = open_channel().await;
        let helper = RabbitMqInbox::new(process.pool().clone(), inbox.clone(), "effects");
        let handler = Effects {
            schema: db.schema.clone(),
            poisoned: AtomicBool::new(false),
        };
        let queue = t.queue.clone();
        let task = tokio::spawn(async move {
            helper
                .run(&own_channel, &queue, &handler, std::future::pending())
                .await
        });
        let wait = rand::rng().random_range(10..150);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        task.abort();
        let _ = task.await;
        // The process dies: its connection goes, and with it its unacknowledged deliveries.
        let _ = own.close(200, ShortString::from("killed")).await;
        process.pool().close().await;
        if (effects(&db).await.len()) < 300 {
            mid_work += 1;
        }
    }
    let (_own, own_channel) = open_channel().await;
    let helper = RabbitMqInbox::new(db.pool.clone(), inbox.clone(), "effects");
    let handler = Effects {
        schema: db.schema.clone(),
        poisoned: AtomicBool::new(false),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let consuming = helper.run(&own_channel, &t.queue, &handler, async {
        let _ = stopped.await;
    });
    let waiting = async {
        let started = Instant::now();
        while effects(&db).await.len() < 300 {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "effects missing"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.send(()).unwrap();
    };
    let (consumed, ()) = tokio::join!(consuming, waiting);
    consumed.unwrap();
    let applied = effects(&db).await;
    assert_eq!(applied.len(), 300);
    assert!(applied.iter().all(|n| *n == 1), "an effect applied twice");
    assert!(
        mid_work >= 5,
        "only {mid_work} consumer kills came mid-work"
    );
    clean_up(&channel, &t).await;
    db.drop().await;
}

#[tokio::test]
async fn a_poison_message_goes_to_the_dead_letter_exchange_and_replays() {
    let db = TestDatabase::new().await;
    let (_connection, channel) = open_channel().await;
    let t = topology(&channel, "rabbit_poison").await;
    seed(&db, 2, 5).await;
    relay(
        &db.store,
        RabbitMqPublisher::connect(&amqp_url(), &t.exchange)
            .await
            .unwrap(),
    )
    .catch_up()
    .await
    .unwrap();
    let inbox = setup_effects(&db).await;
    let helper = RabbitMqInbox::new(db.pool.clone(), inbox.clone(), "effects").max_deliveries(3);
    let handler = Effects {
        schema: db.schema.clone(),
        poisoned: AtomicBool::new(true),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let consuming = helper.run(&channel, &t.queue, &handler, async {
        let _ = stopped.await;
    });
    let waiting = async {
        let started = Instant::now();
        while effects(&db).await.len() < 8
            || inbox.dead_letters(&db.pool, "effects").await.unwrap().len() < 2
        {
            assert!(started.elapsed() < Duration::from_secs(30), "stuck");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.send(()).unwrap();
    };
    let (consumed, ()) = tokio::join!(consuming, waiting);
    consumed.unwrap();
    let letters = inbox.dead_letters(&db.pool, "effects").await.unwrap();
    assert_eq!(letters.len(), 2);
    assert!(
        letters
            .iter()
            .all(|l| l.deliveries == 3 && l.error.contains("poison"))
    );
    // The broker routed both to the dead-letter exchange.
    let started = Instant::now();
    let mut dead = Vec::new();
    while dead.len() < 2 && started.elapsed() < Duration::from_secs(10) {
        dead.extend(drain(&channel, &t.dead).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dead.len(), 2, "both in the dead-letter queue");

    handler.poisoned.store(false, Ordering::SeqCst);
    for letter in &letters {
        assert_eq!(
            helper
                .replay_dead_letter(&letter.message_id, &handler)
                .await
                .unwrap(),
            Replay::Applied
        );
    }
    let applied = effects(&db).await;
    assert_eq!(applied.len(), 10);
    assert!(applied.iter().all(|n| *n == 1));
    clean_up(&channel, &t).await;
    db.drop().await;
}

#[tokio::test]
async fn an_unroutable_batch_is_retried_until_a_queue_is_bound_and_a_message_without_id_is_dead_lettered()
 {
    let db = TestDatabase::new().await;
    let (_connection, channel) = open_channel().await;
    let (_, id) = unique("rabbit_unroutable");
    let exchange = format!("{id}.events");
    seed(&db, 1, 3).await;
    // No queue is bound: the relay does not count the batch as published.
    let publisher = RabbitMqPublisher::connect(&amqp_url(), &exchange)
        .await
        .unwrap();
    let error = relay(&db.store, publisher).catch_up().await.unwrap_err();
    assert!(error.to_string().contains("no queue is bound"), "{error}");
    assert!(
        error.is_transient(),
        "retried until a queue is bound: {error}"
    );
    // Unless told that unroutable messages may be dropped.
    let publisher = RabbitMqPublisher::connect(&amqp_url(), &exchange)
        .await
        .unwrap()
        .allow_unroutable();
    relay(&db.store, publisher).catch_up().await.unwrap();

    // A consumer given a message without a message_id cannot make it effective once: it
    // dead-letters it instead of handling it, and takes the next.
    let t = topology(&channel, "rabbit_no_id").await;
    channel
        .basic_publish(
            ShortString::from(t.exchange.as_str()),
            ShortString::from("ledger.Credited"),
            Default::default(),
            br#"{"cents":1,"memo":""}"#,
            es_relay::lapin::BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let inbox = setup_effects(&db).await;
    let helper = RabbitMqInbox::new(db.pool.clone(), inbox.clone(), "effects");
    let handler = Effects {
        schema: db.schema.clone(),
        poisoned: AtomicBool::new(false),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let consuming = helper.run(&channel, &t.queue, &handler, async {
        let _ = stopped.await;
    });
    let waiting = async {
        let started = Instant::now();
        while inbox
            .dead_letters(&db.pool, "effects")
            .await
            .unwrap()
            .is_empty()
        {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no dead letter"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.send(()).unwrap();
    };
    let (consumed, ()) = tokio::join!(consuming, waiting);
    consumed.unwrap();
    let letters = inbox.dead_letters(&db.pool, "effects").await.unwrap();
    assert!(
        letters[0].error.contains("no message_id"),
        "{}",
        letters[0].error
    );
    assert!(effects(&db).await.is_empty(), "not handled");
    let _ = channel
        .exchange_delete(ShortString::from(exchange.as_str()), Default::default())
        .await;
    clean_up(&channel, &t).await;
    db.drop().await;
}
