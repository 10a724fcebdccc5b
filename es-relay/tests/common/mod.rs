//! Shared by the relay tests: a NATS connection that says how to start the server when there is
//! none, JetStream streams of each test's own, and reading back what a stream holds.

// Test code: a failed unwrap is a failed test, and not every test file uses every helper.
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use es_core::testing::evolution::LedgerEvent;
use es_core::{EventStore, ExpectedVersion, NewEvent, Position, StreamId};
use es_postgres::sqlx;
use es_postgres::testing::TestDatabase;
use es_relay::async_nats::jetstream::{self, stream::Config};
use es_relay::{Mark, header};

/// The NATS server tests use: `NATS_URL`, or the local one.
pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "127.0.0.1:4222".to_owned())
}

/// A client of the test server.
///
/// # Panics
/// When no server answers, saying how to start one.
pub async fn nats() -> es_relay::async_nats::Client {
    connect(&nats_url()).await
}

pub async fn connect(url: &str) -> es_relay::async_nats::Client {
    match tokio::time::timeout(
        Duration::from_secs(5),
        es_relay::async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(url),
    )
    .await
    {
        Ok(Ok(client)) => client,
        Ok(Err(error)) => panic!(
            "cannot reach NATS at {url} ({error}). Start a server with JetStream: \
             `nats-server -js -a 127.0.0.1 -p 4222 &` (or set NATS_URL)"
        ),
        Err(_) => panic!(
            "no NATS server answered at {url} within 5 s. Start one with JetStream: \
             `nats-server -js -a 127.0.0.1 -p 4222 &` (or set NATS_URL)"
        ),
    }
}

/// A stream name and subject prefix no other test uses.
pub fn unique(tag: &str) -> (String, String) {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let id = format!(
        "{tag}_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos % 1_000_000_000
    );
    (id.to_uppercase(), id.to_lowercase())
}

/// Creates a stream whose duplicate window is 100 ms, the shortest JetStream allows: what the
/// relay publishes once must come from its own bookkeeping, not from JetStream dropping
/// repeats (tests wait longer than that between a kill and the next relay).
pub async fn stream_without_dedupe(
    client: &es_relay::async_nats::Client,
    name: &str,
    prefix: &str,
) {
    jetstream::new(client.clone())
        .create_stream(Config {
            name: name.to_owned(),
            subjects: vec![format!("{prefix}.>")],
            duplicate_window: DEDUPE_WINDOW,
            ..Config::default()
        })
        .await
        .unwrap();
}

pub async fn delete_stream(client: &es_relay::async_nats::Client, name: &str) {
    let _ = jetstream::new(client.clone()).delete_stream(name).await;
}

/// The duplicate window of [`stream_without_dedupe`].
pub const DEDUPE_WINDOW: Duration = Duration::from_millis(100);

/// One message the stream holds.
#[derive(Clone, Debug)]
pub struct Held {
    pub sequence: u64,
    pub subject: String,
    pub headers: HashMap<String, String>,
    pub payload: String,
}

impl Held {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("message {} has no header {name}", self.sequence))
    }

    pub fn mark(&self) -> Mark {
        Mark::from_headers(|n| self.headers.get(n).map(String::as_str)).unwrap()
    }
}

/// Every message of the stream, in order.
pub async fn held(client: &es_relay::async_nats::Client, name: &str) -> Vec<Held> {
    let js = jetstream::new(client.clone());
    let mut stream = js.get_stream(name).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for sequence in 1..=last {
        // A cluster that just lost a node may time out a request or two.
        let mut tries = 0;
        let message = loop {
            match stream.get_raw_message(sequence).await {
                Ok(message) => break message,
                Err(error) if tries < 20 => {
                    tries += 1;
                    eprintln!("reading message {sequence} failed ({error}); again");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(error) => panic!("reading message {sequence}: {error}"),
            }
        };
        let headers = message
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    v.first().map(|v| v.as_str().to_owned()).unwrap_or_default(),
                )
            })
            .collect();
        out.push(Held {
            sequence,
            subject: message.subject.to_string(),
            headers,
            payload: String::from_utf8(message.payload.to_vec()).unwrap(),
        });
    }
    out
}

/// How many messages the stream holds.
pub async fn count(client: &es_relay::async_nats::Client, name: &str) -> u64 {
    let js = jetstream::new(client.clone());
    // A cluster that just lost a node may time out a request or two.
    for _ in 0..20 {
        let info = match js.get_stream(name).await {
            Ok(mut stream) => stream
                .info()
                .await
                .map(|i| i.state.messages)
                .map_err(|e| e.to_string()),
            Err(error) => Err(error.to_string()),
        };
        match info {
            Ok(messages) => return messages,
            Err(error) => eprintln!("reading stream {name} failed ({error}); again"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("stream {name} did not answer")
}

pub async fn wait_for_count(
    client: &es_relay::async_nats::Client,
    name: &str,
    expected: u64,
    limit: Duration,
) {
    let started = Instant::now();
    loop {
        let n = count(client, name).await;
        if n >= expected {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "the stream holds {n} messages after {limit:?}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn credit(cents: u64) -> NewEvent {
    NewEvent::from_event(&LedgerEvent::Credited {
        cents,
        memo: String::new(),
    })
    .unwrap()
}

/// Appends `per_stream` credits to each of `streams` ledgers, one event per append; returns
/// the number appended.
pub async fn seed(db: &TestDatabase, streams: usize, per_stream: usize) -> u64 {
    for s in 0..streams {
        let stream = StreamId::new(format!("ledger-{s}")).unwrap();
        for i in 0..per_stream {
            db.store
                .append(&stream, ExpectedVersion::Any, vec![credit(i as u64 + 1)])
                .await
                .unwrap();
        }
    }
    // Readers see events as of the transaction horizon, which other tests' transactions can
    // hold back: what a test seeded must be visible before it counts on it.
    db.settle().await;
    (streams * per_stream) as u64
}

/// Checks the stream holds each stored event of the `ledger` category exactly once, each
/// stream's events in stream order, and global positions increasing.
pub async fn assert_exactly_once_in_order(db: &TestDatabase, messages: &[Held]) {
    let stored: Vec<(uuid::Uuid, String, i64)> = sqlx::query_as(
        es_postgres::SchemaName::new(db.schema.as_str())
            .unwrap()
            .sql("SELECT event_id, stream_id, stream_version FROM {schema}.events WHERE stream_id LIKE 'ledger-%'"),
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let mut ids: HashMap<String, u32> = HashMap::new();
    for m in messages {
        *ids.entry(m.header("Nats-Msg-Id").to_owned()).or_default() += 1;
    }
    let repeated: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "published more than once: {repeated:?}"
    );
    for (event_id, stream, version) in &stored {
        assert!(
            ids.contains_key(&event_id.to_string()),
            "event {event_id} ({stream} v{version}) was never published"
        );
    }
    assert_eq!(messages.len(), stored.len(), "one message per stored event");
    let mut last_version: HashMap<String, u64> = HashMap::new();
    let mut last_position = Position::START;
    for m in messages {
        let version: u64 = m.header(header::STREAM_VERSION).parse().unwrap();
        let previous = last_version.insert(m.header(header::STREAM).to_owned(), version);
        assert_eq!(
            version,
            previous.unwrap_or(0) + 1,
            "stream {} out of order at message {}",
            m.header(header::STREAM),
            m.sequence
        );
        let position = m.mark().position;
        assert!(
            position > last_position,
            "positions go back at message {}",
            m.sequence
        );
        last_position = position;
    }
}

/// The head of the store, for waiting.
pub async fn head(db: &TestDatabase) -> Position {
    db.store.head().await.unwrap()
}
