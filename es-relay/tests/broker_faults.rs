//! The relay through broker faults, on NATS servers of the test's own (never the shared one):
//! a server killed and restarted while the relay publishes, a crash between the broker's ack
//! and the checkpoint, and a 3-node JetStream cluster losing a node.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use es_core::testing::evolution::LedgerEvent;
use es_core::{EventStore, ExpectedVersion, StreamId};
use es_postgres::testing::TestDatabase;
use es_postgres::{ProjectionRunner, RunnerState};
use es_relay::async_nats::jetstream::{self, stream::Config};
use es_relay::{JetStreamPublisher, Publisher, Relay};

/// `n` distinct free ports: the listeners are held until all are taken, so the OS cannot hand
/// out one twice.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// A nats-server of the test's own, with JetStream, on a free port; killed when dropped.
struct OwnNats {
    name: String,
    port: u16,
    dir: PathBuf,
    config: PathBuf,
    child: Option<Child>,
}

impl OwnNats {
    /// One server alone; on another free port when the first one was taken meanwhile.
    fn start(tag: &str) -> Self {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start_with(tag, free_ports(1)[0], "") {
                Ok(own) => return own,
                Err(error) => last = error,
            }
        }
        panic!("{last}")
    }

    /// A server with `extra` configuration (a cluster block); `Err` with its log when it
    /// did not come up.
    fn try_start_with(tag: &str, port: u16, extra: &str) -> Result<Self, String> {
        let (name, _) = unique(tag);
        let dir = std::env::temp_dir().join(format!("es-relay-{}", name.to_lowercase()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "server_name: {name}\nhost: 127.0.0.1\nport: {port}\n\
                 jetstream {{ store_dir: \"{}\" }}\n{extra}\n",
                dir.join("js").display()
            ),
        )
        .unwrap();
        let mut own = Self {
            name,
            port,
            dir,
            config,
            child: None,
        };
        own.try_start_again()?;
        Ok(own)
    }

    fn url(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn start_again(&mut self) {
        self.try_start_again()
            .unwrap_or_else(|error| panic!("{error}"));
    }

    fn try_start_again(&mut self) -> Result<(), String> {
        let log = self.dir.join("server.log");
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).map_err(|e| e.to_string())?)
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot start nats-server ({error}): install it (Debian: apt-get install \
                     nats-server) so that broker fault tests can run servers of their own"
                )
            });
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
                .is_some();
            if exited || started.elapsed() > Duration::from_secs(20) {
                self.kill();
                return Err(format!(
                    "nats-server {} did not listen on {} ({}): {}",
                    self.name,
                    self.port,
                    if exited { "it exited" } else { "20 s" },
                    std::fs::read_to_string(&log).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Kills the server at once (SIGKILL): no goodbye to its clients.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn relay(
    store: &es_postgres::PgEventStore,
    publisher: JetStreamPublisher,
) -> ProjectionRunner<Relay<LedgerEvent>> {
    ProjectionRunner::new(
        store.clone(),
        Relay::<LedgerEvent>::new(store, "fault-relay", publisher).categories(["ledger"]),
    )
    .batch_size(20)
    .poll_interval(Duration::from_millis(50))
}

/// Appends `events` credits over 16 streams, `pause` after every 4.
fn writers(db: &TestDatabase, events: u64, pause: Duration) -> tokio::task::JoinHandle<()> {
    let store = db.store.clone();
    tokio::spawn(async move {
        for i in 0..events {
            let stream = StreamId::new(format!("ledger-{}", i % 16)).unwrap();
            store
                .append(&stream, ExpectedVersion::Any, vec![credit(i + 1)])
                .await
                .unwrap();
            if i % 4 == 0 {
                tokio::time::sleep(pause).await;
            }
        }
    })
}

#[tokio::test]
async fn the_relay_rides_out_its_broker_killed_and_restarted() {
    let db = TestDatabase::new().await;
    let mut nats = OwnNats::start("restart");
    let client = connect(&nats.url()).await;
    let (name, prefix) = unique("restart");
    let publisher = JetStreamPublisher::new(client.clone(), &name, &prefix)
        .await
        .unwrap();
    let runner = Arc::new(relay(&db.store, publisher));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn({
        let runner = Arc::clone(&runner);
        async move {
            runner
                .run(async {
                    let _ = stopped.await;
                })
                .await
        }
    });
    // Appends go on for about 4 s, through both outages.
    let writing = writers(&db, 300, Duration::from_millis(50));
    let mut reconnecting = false;
    // A short outage (publishes wait for their acks across it) and one longer than the
    // client's 5 s ack timeout (publishes fail and the runner retries with backoff).
    for outage in [Duration::from_millis(700), Duration::from_secs(9)] {
        tokio::time::sleep(Duration::from_millis(400)).await;
        nats.kill();
        let down = Instant::now();
        while down.elapsed() < outage {
            reconnecting |= matches!(runner.state(), RunnerState::Reconnecting { .. });
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        nats.start_again();
    }
    writing.await.unwrap();
    wait_for_count(&client, &name, 300, Duration::from_secs(90)).await;
    assert!(
        reconnecting,
        "the runner said it was reconnecting while the broker was down"
    );
    let messages = held(&client, &name).await;
    assert_exactly_once_in_order(&db, &messages).await;
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    db.drop().await;
}

#[tokio::test]
async fn a_crash_between_the_ack_and_the_checkpoint_republishes_nothing() {
    let db = TestDatabase::new().await;
    let nats = OwnNats::start("crash_window");
    let client = connect(&nats.url()).await;
    let (name, prefix) = unique("crash_window");
    jetstream::new(client.clone())
        .create_stream(Config {
            name: name.clone(),
            subjects: vec![format!("{prefix}.>")],
            duplicate_window: DEDUPE_WINDOW,
            ..Config::default()
        })
        .await
        .unwrap();
    seed(&db, 3, 10).await;

    // A relay that published a batch and died before its checkpoint committed: the messages
    // are on the stream, the checkpoint is still at the start.
    let dead = Relay::<LedgerEvent>::new(
        &db.store,
        "fault-relay",
        JetStreamPublisher::from_context(jetstream::new(client.clone()), &name, &prefix),
    );
    let stored = db
        .store
        .read_all(es_core::Position::START, 20)
        .await
        .unwrap();
    let batch: Vec<&es_core::RecordedEvent> = stored.iter().collect();
    let messages = dead.messages(&batch).unwrap();
    let publisher =
        JetStreamPublisher::from_context(jetstream::new(client.clone()), &name, &prefix);
    publisher.publish("fault-relay", &messages).await.unwrap();
    assert_eq!(count(&client, &name).await, 20);

    // Long past the duplicate window, another instance starts from the checkpoint.
    tokio::time::sleep(DEDUPE_WINDOW * 3).await;
    let runner = relay(
        &db.store,
        JetStreamPublisher::from_context(jetstream::new(client.clone()), &name, &prefix),
    );
    runner.catch_up().await.unwrap();
    let messages = held(&client, &name).await;
    assert_eq!(messages.len(), 30, "the first 20 were not published again");
    assert_exactly_once_in_order(&db, &messages).await;
    db.drop().await;
}

#[tokio::test]
async fn a_three_node_cluster_losing_a_node_loses_and_repeats_nothing() {
    let db = TestDatabase::new().await;
    let (cluster_name, _) = unique("cluster");
    // Ports picked now may be taken by another test before a node binds them: start afresh
    // on new ones when a node does not come up.
    let mut attempt = 0;
    let mut nodes: Vec<OwnNats> = loop {
        attempt += 1;
        let free = free_ports(6);
        let routes = (0..3)
            .map(|i| format!("\"nats-route://127.0.0.1:{}\"", free[2 * i + 1]))
            .collect::<Vec<_>>()
            .join(", ");
        let started: Result<Vec<OwnNats>, String> = (0..3)
            .map(|i| {
                OwnNats::try_start_with(
                    "node",
                    free[2 * i],
                    &format!(
                        "cluster {{ name: {cluster_name}, listen: \"127.0.0.1:{}\", routes: [{routes}] }}",
                        free[2 * i + 1]
                    ),
                )
            })
            .collect();
        match started {
            Ok(nodes) => break nodes,
            Err(error) if attempt < 3 => eprintln!("starting the cluster again: {error}"),
            Err(error) => panic!("{error}"),
        }
    };
    let urls: Vec<String> = nodes.iter().map(OwnNats::url).collect();
    let servers: Vec<es_relay::async_nats::ServerAddr> = urls
        .iter()
        .map(|u| format!("nats://{u}").parse().unwrap())
        .collect();
    let client = es_relay::async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(servers)
        .await
        .unwrap();
    let js = jetstream::new(client.clone());
    let (name, prefix) = unique("replicated");
    // The cluster needs a moment to elect its meta leader.
    let started = Instant::now();
    loop {
        match js
            .create_stream(Config {
                name: name.clone(),
                subjects: vec![format!("{prefix}.>")],
                num_replicas: 3,
                duplicate_window: DEDUPE_WINDOW,
                ..Config::default()
            })
            .await
        {
            Ok(_) => break,
            Err(error) => {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "the cluster never took the stream: {error}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let runner = Arc::new(relay(
        &db.store,
        JetStreamPublisher::from_context(js.clone(), &name, &prefix),
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn({
        let runner = Arc::clone(&runner);
        async move {
            runner
                .run(async {
                    let _ = stopped.await;
                })
                .await
        }
    });
    let writing = writers(&db, 300, Duration::from_millis(10));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Kill the stream's leader: the worst node to lose.
    let leader = js
        .get_stream(&name)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .unwrap();
    let victim = nodes.iter().position(|n| n.name == leader).unwrap();
    nodes[victim].kill();
    writing.await.unwrap();
    wait_for_count(&client, &name, 300, Duration::from_secs(90)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let messages = held(&client, &name).await;
    assert_exactly_once_in_order(&db, &messages).await;
    println!("stream leader {leader} killed; 300 events published once each, in order");
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    drop(nodes);
    db.drop().await;
}
