//! The relay against a real NATS JetStream: the envelope on the wire, catch-up then live,
//! upcasting, hostile stream ids, and exactly once in stream order through relays killed at
//! random, a second instance taking over, a checkpoint moved back, and the broker restarting.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use es_core::testing::evolution::{LedgerEvent, ledger_upcasters};
use es_core::{EventStore, ExpectedVersion, NewEvent, StreamId};
use es_postgres::testing::TestDatabase;
use es_postgres::{ErrorPolicy, OnFailure, PgEventStore, ProjectionError, ProjectionRunner};
use es_relay::{JetStreamPublisher, Outgoing, PayloadForm, Relay, decode_header_value, header};
use rand::Rng;

fn relay(
    store: &PgEventStore,
    publisher: JetStreamPublisher,
) -> ProjectionRunner<Relay<LedgerEvent>> {
    ProjectionRunner::new(
        store.clone(),
        Relay::<LedgerEvent>::new(store, "ledger-relay", publisher).categories(["ledger"]),
    )
    .batch_size(50)
    .poll_interval(Duration::from_millis(50))
    .lock_retry_interval(Duration::from_millis(50))
}

/// Runs `runner` in a task until the returned sender is dropped or sent to.
fn spawn<R>(
    runner: Arc<ProjectionRunner<R>>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), es_postgres::ProjectionError>>,
)
where
    R: es_postgres::PgProjection,
{
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        runner
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    (stop, task)
}

#[tokio::test]
async fn each_event_goes_out_once_with_its_envelope_then_live() {
    let db = TestDatabase::new().await;
    let client = nats().await;
    let (name, prefix) = unique("envelope");
    let store = db
        .store
        .clone()
        .with_upcasters(Arc::new(ledger_upcasters()));
    // Stored before the relay starts: a v1 credit (euros), which goes out as v3 (cents, memo);
    // a stream id full of characters subjects give a meaning to; another category.
    let old = serde_json::value::to_raw_value(&serde_json::json!({ "amount": 5 })).unwrap();
    let v1 = NewEvent::new("Credited", 1, old);
    let v1_id = v1.event_id;
    store
        .append(
            &StreamId::new("ledger-a").unwrap(),
            ExpectedVersion::NoStream,
            vec![v1],
        )
        .await
        .unwrap();
    let hostile = StreamId::new("ledger-x.*> <script>\r\nInjected: yes ").unwrap();
    store
        .append(&hostile, ExpectedVersion::Any, vec![credit(7)])
        .await
        .unwrap();
    store
        .append(
            &StreamId::new("other-1").unwrap(),
            ExpectedVersion::Any,
            vec![credit(1)],
        )
        .await
        .unwrap();

    let publisher = JetStreamPublisher::new(client.clone(), &name, &prefix)
        .await
        .unwrap();
    let runner = Arc::new(relay(&store, publisher));
    let (stop, task) = spawn(Arc::clone(&runner));
    wait_for_count(&client, &name, 2, Duration::from_secs(20)).await;

    // Live: appended while the relay follows.
    for i in 0..10 {
        store
            .append(
                &StreamId::new("ledger-b").unwrap(),
                ExpectedVersion::Any,
                vec![credit(i)],
            )
            .await
            .unwrap();
    }
    wait_for_count(&client, &name, 12, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let messages = held(&client, &name).await;
    assert_eq!(messages.len(), 12, "the other category is not relayed");

    let first = &messages[0];
    assert_eq!(first.header("Nats-Msg-Id"), v1_id.to_string());
    assert_eq!(first.header(header::EVENT_ID), v1_id.to_string());
    assert_eq!(first.header(header::EVENT_TYPE), "Credited");
    assert_eq!(
        first.header(header::SCHEMA_VERSION),
        "3",
        "upcast to the current version"
    );
    assert_eq!(first.header(header::STREAM), "ledger-a");
    assert_eq!(first.header(header::STREAM_VERSION), "1");
    assert_eq!(first.header(header::RELAY), "ledger-relay");
    assert!(!first.header(header::CORRELATION_ID).is_empty());
    assert!(first.header(header::RECORDED_AT).ends_with('Z'));
    assert_eq!(first.subject, format!("{prefix}.ledger.Credited"));
    let payload: serde_json::Value = serde_json::from_str(&first.payload).unwrap();
    assert_eq!(payload["cents"], 500, "payload as upcast: {payload}");

    let second = &messages[1];
    assert_eq!(
        decode_header_value(second.header(header::STREAM)),
        hostile.as_str(),
        "any stream id travels in a header and comes back exactly"
    );
    assert_eq!(
        second.subject,
        format!("{prefix}.ledger.Credited"),
        "the category is the part before the first '-'"
    );
    assert_exactly_once_in_order_of(&messages);

    let status = runner.status().await.unwrap();
    assert_eq!(
        status.lag_events, 0,
        "the checkpoint moved past what was published"
    );
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    delete_stream(&client, &name).await;
    db.drop().await;
}

/// No message id twice, each stream's versions one after another.
fn assert_exactly_once_in_order_of(messages: &[Held]) {
    let mut ids = std::collections::HashSet::new();
    let mut versions = std::collections::HashMap::new();
    for m in messages {
        assert!(
            ids.insert(m.header("Nats-Msg-Id").to_owned()),
            "repeated: {m:?}"
        );
        let v: u64 = m.header(header::STREAM_VERSION).parse().unwrap();
        let last = versions.insert(m.header(header::STREAM).to_owned(), v);
        assert_eq!(v, last.unwrap_or(0) + 1, "out of order: {m:?}");
    }
}

#[tokio::test]
async fn stored_payloads_and_integration_events_as_configured() {
    let db = TestDatabase::new().await;
    let client = nats().await;
    let store = db
        .store
        .clone()
        .with_upcasters(Arc::new(ledger_upcasters()));
    let old = serde_json::value::to_raw_value(&serde_json::json!({ "amount": 5 })).unwrap();
    store
        .append(
            &StreamId::new("ledger-a").unwrap(),
            ExpectedVersion::NoStream,
            vec![NewEvent::new("Credited", 1, old), credit(9)],
        )
        .await
        .unwrap();
    db.settle().await;

    // As stored: the v1 payload with its version.
    let (name, prefix) = unique("stored");
    let publisher = JetStreamPublisher::new(client.clone(), &name, &prefix)
        .await
        .unwrap();
    let runner = ProjectionRunner::new(
        store.clone(),
        Relay::<LedgerEvent>::new(&store, "as-stored", publisher).payload(PayloadForm::AsStored),
    );
    runner.catch_up().await.unwrap();
    let messages = held(&client, &name).await;
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0].header(header::SCHEMA_VERSION), "1");
    assert_eq!(messages[0].payload, r#"{"amount":5}"#);
    delete_stream(&client, &name).await;

    // Mapped: a public event for large credits only, on a topic of its own.
    let (name, prefix) = unique("mapped");
    let publisher = JetStreamPublisher::new(client.clone(), &name, &prefix)
        .await
        .unwrap();
    let runner = ProjectionRunner::new(
        store.clone(),
        Relay::<LedgerEvent>::new(&store, "mapped", publisher).map(|event| {
            let LedgerEvent::Credited { cents, .. } = &event.payload else {
                return Ok(None);
            };
            if *cents < 100 {
                return Ok(None);
            }
            let mut out = Outgoing::new("LargeCredit", &serde_json::json!({ "cents": cents }))?;
            out.topic = Some("public.large".to_owned());
            Ok(Some(out))
        }),
    );
    runner.catch_up().await.unwrap();
    let messages = held(&client, &name).await;
    assert_eq!(messages.len(), 1, "only the 500-cent credit: {messages:?}");
    assert_eq!(messages[0].subject, format!("{prefix}.public.large"));
    assert_eq!(messages[0].header(header::EVENT_TYPE), "LargeCredit");
    assert_eq!(messages[0].payload, r#"{"cents":500}"#);
    delete_stream(&client, &name).await;
    db.drop().await;
}

#[tokio::test]
async fn relays_killed_at_random_publish_each_event_once_in_stream_order() {
    let db = TestDatabase::new().await;
    let client = nats().await;
    let (name, prefix) = unique("kills");
    stream_without_dedupe(&client, &name, &prefix).await;

    // Writers keep appending while relays are started and killed.
    let writers = {
        let store = db.store.clone();
        tokio::spawn(async move {
            for i in 0..400u64 {
                let stream = StreamId::new(format!("ledger-{}", i % 16)).unwrap();
                store
                    .append(&stream, ExpectedVersion::Any, vec![credit(i + 1)])
                    .await
                    .unwrap();
                if i % 4 == 0 {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            }
        })
    };
    let mut kills = 0;
    let mut mid_work = 0;
    while kills < 24 {
        // A process of its own: its own database pool and NATS connection.
        let process = db.another_process(4).await;
        let own = connect(&nats_url()).await;
        let publisher = JetStreamPublisher::new(own.clone(), &name, &prefix)
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
        drop(own);
        process.pool().close().await;
        kills += 1;
        if count(&client, &name).await < 400 {
            mid_work += 1;
        }
        // Past the duplicate window: JetStream cannot drop a repeat the relay would send.
        tokio::time::sleep(DEDUPE_WINDOW * 2).await;
    }
    writers.await.unwrap();
    db.settle().await;
    // One more, left to finish.
    let publisher = JetStreamPublisher::new(client.clone(), &name, &prefix)
        .await
        .unwrap();
    let runner = relay(&db.store, publisher);
    runner.catch_up().await.unwrap();
    let messages = held(&client, &name).await;
    assert_exactly_once_in_order(&db, &messages).await;
    assert_eq!(messages.len(), 400);
    assert!(mid_work >= 5, "only {mid_work} kills came before the end");
    println!(
        "{kills} relays killed ({mid_work} before all was published); 400 events published once each, in order"
    );
    delete_stream(&client, &name).await;
    db.drop().await;
}

#[tokio::test]
async fn a_second_instance_takes_over_and_a_checkpoint_moved_back_republishes_nothing() {
    let db = TestDatabase::new().await;
    let client = nats().await;
    let (name, prefix) = unique("takeover");
    stream_without_dedupe(&client, &name, &prefix).await;
    seed(&db, 4, 25).await;

    let first_process = db.another_process(4).await;
    let first = Arc::new(relay(
        &first_process,
        JetStreamPublisher::new(connect(&nats_url()).await, &name, &prefix)
            .await
            .unwrap(),
    ));
    let second_process = db.another_process(4).await;
    let second = Arc::new(relay(
        &second_process,
        JetStreamPublisher::new(connect(&nats_url()).await, &name, &prefix)
            .await
            .unwrap(),
    ));
    let first_task = tokio::spawn({
        let first = Arc::clone(&first);
        async move { first.run(std::future::pending()).await }
    });
    wait_for_count(&client, &name, 100, Duration::from_secs(20)).await;
    let (stop_second, second_task) = spawn(Arc::clone(&second));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        first.is_active() && !second.is_active(),
        "one publishes at a time"
    );

    // The first dies; the second takes over and publishes what follows.
    first_task.abort();
    let _ = first_task.await;
    first_process.pool().close().await;
    seed(&db, 4, 10).await;
    wait_for_count(&client, &name, 140, Duration::from_secs(30)).await;
    assert!(second.is_active());
    stop_second.send(()).unwrap();
    second_task.await.unwrap().unwrap();

    // A rebuild moves the checkpoint back to the start: the stream's last message says all
    // of it was published, long after JetStream's duplicate window (100 ms here).
    second.rebuild(ErrorPolicy::STOP, |_| {}).await.unwrap();
    assert_eq!(count(&client, &name).await, 140);
    let messages = held(&client, &name).await;
    assert_exactly_once_in_order(&db, &messages).await;
    delete_stream(&client, &name).await;
    db.drop().await;
}

#[tokio::test]
async fn a_stream_with_messages_of_another_publisher_stops_the_relay_saying_so() {
    let db = TestDatabase::new().await;
    let client = nats().await;
    let (name, prefix) = unique("foreign");
    stream_without_dedupe(&client, &name, &prefix).await;
    let js = es_relay::async_nats::jetstream::new(client.clone());
    js.publish(format!("{prefix}.other"), "not ours".into())
        .await
        .unwrap()
        .await
        .unwrap();
    seed(&db, 1, 3).await;
    let runner = relay(
        &db.store,
        JetStreamPublisher::new(client.clone(), &name, &prefix)
            .await
            .unwrap(),
    );
    let error = runner.catch_up().await.unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("did not publish") && text.contains(&name),
        "names the stream and the cause: {text}"
    );
    assert!(!error.is_transient(), "retrying would not help: {text}");
    assert_eq!(count(&client, &name).await, 1);
    delete_stream(&client, &name).await;
    db.drop().await;
}

/// Set in the environment of a relay child process (see the next test): the test schema.
const CHILD_SCHEMA: &str = "ES_RELAY_CHILD_SCHEMA";
const CHILD_STREAM: &str = "ES_RELAY_CHILD_STREAM";
const CHILD_PREFIX: &str = "ES_RELAY_CHILD_PREFIX";

/// Not a test of its own: the body of the relay process the next test starts and kills.
#[tokio::test]
#[ignore = "run as a child process by relay_processes_killed_with_sigkill_publish_each_event_once"]
async fn relay_child_process() {
    let schema = std::env::var(CHILD_SCHEMA).expect("started by the parent test");
    let pool = es_postgres::connect_pool(&es_postgres::testing::database_url(), 4)
        .await
        .unwrap();
    let store = PgEventStore::in_schema(pool, es_postgres::SchemaName::new(schema).unwrap());
    let client = connect(&nats_url()).await;
    let publisher = JetStreamPublisher::new(
        client,
        &std::env::var(CHILD_STREAM).unwrap(),
        &std::env::var(CHILD_PREFIX).unwrap(),
    )
    .await
    .unwrap();
    relay(&store, publisher)
        .batch_size(7)
        .run(std::future::pending())
        .await
        .unwrap();
}

#[tokio::test]
async fn relay_processes_killed_with_sigkill_publish_each_event_once() {
    let db = TestDatabase::new().await;
    let client = nats().await;
    let (name, prefix) = unique("sigkill");
    stream_without_dedupe(&client, &name, &prefix).await;
    let writers = {
        let store = db.store.clone();
        tokio::spawn(async move {
            for i in 0..300u64 {
                let stream = StreamId::new(format!("ledger-{}", i % 12)).unwrap();
                store
                    .append(&stream, ExpectedVersion::Any, vec![credit(i + 1)])
                    .await
                    .unwrap();
                if i % 4 == 0 {
                    tokio::time::sleep(Duration::from_millis(90)).await;
                }
            }
        })
    };
    let exe = std::env::current_exe().unwrap();
    let mut mid_work = 0;
    for _ in 0..20 {
        let mut child = tokio::process::Command::new(&exe)
            .args(["--ignored", "--exact", "relay_child_process", "--nocapture"])
            .env(CHILD_SCHEMA, db.schema.as_str())
            .env(CHILD_STREAM, &name)
            .env(CHILD_PREFIX, &prefix)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let wait = rand::rng().random_range(100..400);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        assert!(
            child.try_wait().unwrap().is_none(),
            "the relay process ended by itself"
        );
        // SIGKILL: no destructor, no goodbye to the database or the broker.
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        if count(&client, &name).await < 300 {
            mid_work += 1;
        }
        tokio::time::sleep(DEDUPE_WINDOW * 2).await;
    }
    writers.await.unwrap();
    db.settle().await;
    let runner = relay(
        &db.store,
        JetStreamPublisher::new(client.clone(), &name, &prefix)
            .await
            .unwrap(),
    );
    runner.catch_up().await.unwrap();
    let messages = held(&client, &name).await;
    assert_exactly_once_in_order(&db, &messages).await;
    assert_eq!(messages.len(), 300);
    assert!(mid_work >= 5, "only {mid_work} kills came before the end");
    println!(
        "20 relay processes killed with SIGKILL ({mid_work} mid-work); 300 events once each, in order"
    );
    delete_stream(&client, &name).await;
    db.drop().await;
}

#[tokio::test]
async fn a_split_relay_publishes_each_part_to_its_own_stream_and_never_parks() {
    let db = TestDatabase::new().await;
    let client = nats().await;
    seed(&db, 8, 5).await;
    // One stream per part: each part's chain and mark are its own.
    let mut names = Vec::new();
    for index in 0..2 {
        let (name, prefix) = unique(&format!("part{index}"));
        let publisher = JetStreamPublisher::new(client.clone(), &name, &prefix)
            .await
            .unwrap();
        relay(&db.store, publisher)
            .part(index, 2)
            .catch_up()
            .await
            .unwrap();
        names.push(name);
    }
    let mut total = 0;
    let mut part_of = std::collections::HashMap::new();
    for (index, name) in names.iter().enumerate() {
        let messages = held(&client, name).await;
        assert!(!messages.is_empty(), "part {index} published");
        for m in &messages {
            assert_eq!(m.header(header::RELAY), format!("ledger-relay#{index}/2"));
            let part = part_of
                .entry(m.header(header::STREAM).to_owned())
                .or_insert(index);
            assert_eq!(*part, index, "each event stream belongs to one part");
        }
        assert_exactly_once_in_order_of(&messages);
        total += messages.len();
    }
    assert_eq!(total, 40, "every event in one part's stream");

    // A rebuild runs every part in one runner: refused for a split relay, before anything.
    let (name, prefix) = unique("refused");
    let publisher = JetStreamPublisher::new(client.clone(), &name, &prefix)
        .await
        .unwrap();
    let error = relay(&db.store, publisher)
        .part(0, 2)
        .rebuild(ErrorPolicy::STOP, |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(error, ProjectionError::Unsupported { .. })
            && error.to_string().contains("rebuilt"),
        "{error}"
    );
    // Parking is refused, and so is replaying parked events.
    let publisher = JetStreamPublisher::new(client.clone(), &name, &prefix)
        .await
        .unwrap();
    let parking = relay(&db.store, publisher)
        .part(0, 2)
        .error_policy(ErrorPolicy {
            then: OnFailure::Park,
            ..ErrorPolicy::default()
        });
    let error = parking.catch_up().await.unwrap_err();
    assert!(error.to_string().contains("cannot park"), "{error}");
    assert!(matches!(
        parking.replay_parked().await,
        Err(ProjectionError::Unsupported { .. })
    ));
    assert_eq!(count(&client, &name).await, 0, "nothing was published");
    for name in names.iter().chain([&name]) {
        delete_stream(&client, name).await;
    }
    db.drop().await;
}

#[tokio::test]
async fn a_batch_larger_than_the_clients_ack_limit_goes_through() {
    let db = TestDatabase::new().await;
    let client = nats().await;
    let (name, prefix) = unique("big_batch");
    let events: Vec<NewEvent> = (0..6000).map(|i| credit(i + 1)).collect();
    db.store
        .import(&[(StreamId::new("ledger-big").unwrap(), events)])
        .await
        .unwrap();
    db.settle().await;
    let runner = relay(
        &db.store,
        JetStreamPublisher::new(client.clone(), &name, &prefix)
            .await
            .unwrap(),
    )
    .batch_size(6000);
    tokio::time::timeout(Duration::from_secs(120), runner.catch_up())
        .await
        .expect("publishing 6,000 messages in one batch finishes")
        .unwrap();
    assert_eq!(count(&client, &name).await, 6000);
    delete_stream(&client, &name).await;
    db.drop().await;
}
