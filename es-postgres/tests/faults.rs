//! The fault suite: writers, a live projection (two instances) and a saga keep going through
//! what production does to a database: restarts (fast and immediate), backends terminated at
//! random, sessions killed for idling. Each test starts a PostgreSQL cluster of its own on a
//! free port and tears it down: the shared server other tests use is never touched.
//!
//! After each fault the same `run()` calls carry on by themselves (no caller restarts them);
//! at the end every append that returned Ok is stored exactly once, and the projection and the
//! saga's effects equal a clean replay of the log.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::{Totals, credit};
use es_core::testing::evolution::LedgerEvent;
use es_core::{
    BoxError, CommandContext, CommandDispatcher, Envelope, EventStore, ExpectedVersion, NewEvent,
    Position, Saga, StreamId, derived_event_id,
};
use es_postgres::testing::TestCluster;
use es_postgres::{PgEventStore, PgSagaRunner, ProjectionRunner, SchemaName};
use rand::Rng;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

/// Mirrors every ledger credit into a `mirror-{stream}` stream, one command per credit: the
/// saga's effects, countable.
struct Mirror;

impl Saga for Mirror {
    type Event = LedgerEvent;
    type State = u64;
    type Command = (String, u64);

    fn name(&self) -> &str {
        "mirror"
    }

    fn instance_of(&self, event: &Envelope<LedgerEvent>) -> Option<String> {
        event
            .stream_id
            .as_str()
            .starts_with("ledger-")
            .then(|| event.stream_id.id().to_owned())
    }

    fn react(&self, seen: &mut u64, event: &Envelope<LedgerEvent>) -> Vec<(String, u64)> {
        *seen += 1;
        match &event.payload {
            LedgerEvent::Credited { cents, .. } => vec![(event.stream_id.id().to_owned(), *cents)],
            _ => Vec::new(),
        }
    }
}

/// Appends the mirrored credit under an id derived from the command: idempotent.
struct MirrorWriter(PgEventStore);

#[async_trait]
impl CommandDispatcher<(String, u64)> for MirrorWriter {
    async fn dispatch(
        &self,
        (id, cents): (String, u64),
        context: CommandContext,
    ) -> Result<(), BoxError> {
        let mut event = credit(cents, "mirror");
        event.event_id = derived_event_id(context.command_id, 0);
        let event = event.caused_by(context.effective_causation_id());
        self.0
            .append(
                &StreamId::new(format!("mirror-{id}"))?,
                ExpectedVersion::Any,
                vec![event],
            )
            .await?;
        Ok(())
    }
}

/// A cluster of the test's own with a store in schema `es`, and what runs against it.
struct Rig {
    cluster: TestCluster,
    store: PgEventStore,
    /// Every event id whose append returned Ok.
    acknowledged: Arc<Mutex<Vec<Uuid>>>,
    stop: Arc<AtomicBool>,
    probes: AtomicU64,
}

async fn rig(settings: &[&str]) -> Rig {
    let cluster = TestCluster::start(settings);
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&cluster.url())
        .await
        .unwrap();
    let store = PgEventStore::new(pool);
    store.migrate().await.unwrap();
    Rig {
        cluster,
        store,
        acknowledged: Arc::new(Mutex::new(Vec::new())),
        stop: Arc::new(AtomicBool::new(false)),
        probes: AtomicU64::new(0),
    }
}

impl Rig {
    fn projection(&self) -> ProjectionRunner<Totals> {
        ProjectionRunner::new(
            self.store.clone(),
            Totals::in_schema(SchemaName::default(), "totals", 1),
        )
        .poll_interval(Duration::from_millis(50))
        .lock_retry_interval(Duration::from_millis(50))
        .lock_check_interval(Duration::from_millis(200))
        .batch_size(50)
    }

    fn saga(&self) -> PgSagaRunner<Mirror, MirrorWriter> {
        PgSagaRunner::new(self.store.clone(), Mirror, MirrorWriter(self.store.clone()))
            .configure(|r| {
                r.poll_interval(Duration::from_millis(50))
                    .lock_retry_interval(Duration::from_millis(50))
                    .lock_check_interval(Duration::from_millis(200))
                    .batch_size(50)
            })
            .dispatch_interval(Duration::from_millis(20))
            .retry_backoff(Duration::from_millis(50))
            .max_attempts(1000)
    }

    /// Appends `event` to `stream`, re-sending the same event (same id) after a failure until
    /// it is acknowledged: an unknown outcome is resolved by the store's idempotence.
    async fn append_until_acknowledged(
        store: &PgEventStore,
        acknowledged: &Mutex<Vec<Uuid>>,
        stream: &StreamId,
        event: NewEvent,
    ) {
        let id = event.event_id;
        let started = Instant::now();
        loop {
            match store
                .append(stream, ExpectedVersion::Any, vec![event.clone()])
                .await
            {
                Ok(_) => {
                    acknowledged.lock().unwrap().push(id);
                    return;
                }
                Err(error) => {
                    assert!(
                        started.elapsed() < Duration::from_secs(120),
                        "an append never got through: {error}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Writers appending credits to their own streams until stopped.
    fn writers(&self, count: usize) -> Vec<tokio::task::JoinHandle<()>> {
        (0..count)
            .map(|w| {
                let (store, acknowledged, stop) = (
                    self.store.clone(),
                    Arc::clone(&self.acknowledged),
                    Arc::clone(&self.stop),
                );
                tokio::spawn(async move {
                    let stream = StreamId::new(format!("ledger-w{w}")).unwrap();
                    let mut i = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        let event = credit(i % 9 + 1, "");
                        Self::append_until_acknowledged(&store, &acknowledged, &stream, event)
                            .await;
                        i += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
            .collect()
    }

    /// How long until an event appended now is applied by the projection.
    async fn time_to_apply(&self) -> Duration {
        let started = Instant::now();
        let stream = StreamId::new("ledger-probe").unwrap();
        let probes = self.probes.fetch_add(1, Ordering::SeqCst) as i64 + 1;
        Self::append_until_acknowledged(&self.store, &self.acknowledged, &stream, credit(1, ""))
            .await;
        loop {
            let applied: Option<i64> =
                sqlx::query_scalar("SELECT events FROM es.totals WHERE stream_id = 'ledger-probe'")
                    .fetch_optional(self.store.pool())
                    .await
                    .ok()
                    .flatten();
            if applied.is_some_and(|events| events >= probes) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the projection never recovered\n{}",
                self.cluster.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the writers, waits until the projection and the saga have taken everything in,
    /// and checks the invariants.
    async fn settle_and_check(&self, writers: Vec<tokio::task::JoinHandle<()>>) {
        self.stop.store(true, Ordering::SeqCst);
        for writer in writers {
            writer.await.unwrap();
        }
        let pool = self.store.pool();
        // Every acknowledged append is stored exactly once, and nothing else of the writers'.
        let acknowledged = self.acknowledged.lock().unwrap().clone();
        let stored: Vec<(Uuid, i64)> = sqlx::query_as(
            "SELECT event_id, count(*) OVER (PARTITION BY event_id) FROM es.events \
             WHERE stream_id LIKE 'ledger-%'",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        let stored_ids: HashMap<Uuid, i64> = stored.into_iter().collect();
        assert_eq!(
            stored_ids.len(),
            acknowledged.len(),
            "stored vs acknowledged appends"
        );
        for id in &acknowledged {
            assert_eq!(stored_ids.get(id), Some(&1), "event {id} stored once");
        }
        // The projection equals a clean replay; the saga mirrored every credit once.
        let expected: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT stream_id, count(*), sum((payload->>'cents')::bigint)::bigint FROM es.events \
             WHERE stream_id LIKE 'ledger-%' GROUP BY stream_id ORDER BY stream_id",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        // Each saga instance's count of mirrored credits, and since when it stands still. An
        // instance runs its commands one after another, ~70 a second here: one that is behind
        // and makes no progress for 20 s is stalled (a command left to its 60 s lease after a
        // fault while recording its outcome held up every later command of its instance).
        let mut progress: HashMap<String, (i64, Instant)> = HashMap::new();
        loop {
            let totals: Vec<(String, i64, i64)> =
                sqlx::query_as("SELECT stream_id, events, net FROM es.totals ORDER BY stream_id")
                    .fetch_all(pool)
                    .await
                    .unwrap_or_default();
            let mirrored: Vec<(String, i64, i64)> = sqlx::query_as(
                "SELECT 'ledger-' || substr(stream_id, 8), count(*), \
                   sum((payload->>'cents')::bigint)::bigint FROM es.events \
                 WHERE stream_id LIKE 'mirror-%' GROUP BY stream_id ORDER BY 1",
            )
            .fetch_all(pool)
            .await
            .unwrap();
            if totals == expected && mirrored == expected {
                break;
            }
            let done: HashMap<&str, i64> =
                mirrored.iter().map(|(s, n, _)| (s.as_str(), *n)).collect();
            for (stream, events, _) in &expected {
                let count = done.get(stream.as_str()).copied().unwrap_or(0);
                let seen = progress
                    .entry(stream.clone())
                    .or_insert((count, Instant::now()));
                if seen.0 != count {
                    *seen = (count, Instant::now());
                }
                if count < *events && seen.1.elapsed() >= Duration::from_secs(20) {
                    // What holds it up: its outbox's head, and where the saga's feed is.
                    let head: Option<String> = sqlx::query_scalar(
                        "SELECT format('seq %s, attempts %s, ready %s, claimed by %s, lease left \
                             %s s, next attempt in %s s, last error %s', seq, attempts, ready, \
                             claimed_by, \
                             extract(epoch FROM claimed_until - clock_timestamp())::int, \
                             extract(epoch FROM next_attempt_at - clock_timestamp())::int, \
                             last_error) \
                         FROM es.saga_outbox WHERE instance = $1 AND dead_at IS NULL \
                         ORDER BY seq LIMIT 1",
                    )
                    .bind(stream)
                    .fetch_optional(pool)
                    .await
                    .unwrap_or(None);
                    let checkpoints: Vec<(String, i64, i64)> = sqlx::query_as(
                        "SELECT projection, transaction_id, position FROM es.projection_checkpoints",
                    )
                    .fetch_all(pool)
                    .await
                    .unwrap_or_default();
                    panic!(
                        "the saga's instance {stream} stalled at {count} of {events} commands for \
                         20 s; its outbox head: {head:?}; checkpoints {checkpoints:?}; \
                         saga {mirrored:?}"
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "did not converge:\nexpected {expected:?}\nprojection {totals:?}\nsaga {mirrored:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let duplicates: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT causation_id FROM es.events WHERE stream_id LIKE 'mirror-%' \
             GROUP BY causation_id HAVING count(*) > 1) d",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(duplicates, 0, "a credit mirrored twice");
    }
}

/// Runs `runner.run` until `stop`, on a task.
fn spawn_projection(
    runner: Arc<ProjectionRunner<Totals>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Result<(), es_postgres::ProjectionError>> {
    tokio::spawn(async move {
        runner
            .run(async move {
                while !stop.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await
    })
}

/// A plain `LogFollower` reading the whole log through the faults; when told to stop, it
/// reads what is left and returns every event id it saw, in order. It must never return an
/// error: transient ones are its to ride out.
fn spawn_follower(
    store: PgEventStore,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(Uuid, Position)>> {
    tokio::spawn(async move {
        let mut follower = store
            .follow(Position::START)
            .poll_interval(Duration::from_millis(50));
        let mut seen = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let next = tokio::time::timeout(Duration::from_millis(200), follower.next_batch());
            if let Ok(batch) = next.await {
                let batch = batch.expect("a follower returns only permanent errors");
                seen.extend(batch.iter().map(|e| (e.event_id, e.position)));
            }
        }
        // Drain what the log holds now (the servers are up again by then).
        let head = store.head().await.unwrap();
        while follower.position() < head {
            let batch = follower.next_batch().await.unwrap();
            seen.extend(batch.iter().map(|e| (e.event_id, e.position)));
        }
        seen
    })
}

/// What a follower saw is the log: every stored event once, in the log's order.
async fn check_follower(store: &PgEventStore, seen: Vec<(Uuid, Position)>) {
    assert!(
        seen.windows(2).all(|w| w[0].1 < w[1].1),
        "the follower saw positions out of order or twice"
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM es.events")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(
        seen.len() as i64,
        stored,
        "the follower saw every stored event"
    );
}

fn spawn_saga(
    runner: Arc<PgSagaRunner<Mirror, MirrorWriter>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Result<(), es_postgres::ProjectionError>> {
    tokio::spawn(async move {
        runner
            .run(async move {
                while !stop.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await
    })
}

/// Samples, until `stop`, how many projection instances report active; returns the longest
/// stretch during which more than one did.
fn watch_single_active(
    runners: Vec<Arc<ProjectionRunner<Totals>>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Duration> {
    tokio::spawn(async move {
        let (mut longest, mut since) = (Duration::ZERO, None::<Instant>);
        while !stop.load(Ordering::SeqCst) {
            let active = runners.iter().filter(|r| r.is_active()).count();
            match (active > 1, since) {
                (true, None) => since = Some(Instant::now()),
                (false, Some(start)) => {
                    longest = longest.max(start.elapsed());
                    since = None;
                }
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        longest
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn everything_recovers_by_itself_through_server_restarts() {
    let rig = rig(&["max_connections = 100"]).await;
    let runners_stop = Arc::new(AtomicBool::new(false));
    let projections: Vec<_> = (0..2).map(|_| Arc::new(rig.projection())).collect();
    let projection_tasks: Vec<_> = projections
        .iter()
        .map(|p| spawn_projection(Arc::clone(p), Arc::clone(&runners_stop)))
        .collect();
    let saga_task = spawn_saga(Arc::new(rig.saga()), Arc::clone(&runners_stop));
    let watcher = watch_single_active(projections.clone(), Arc::clone(&runners_stop));
    let follower_stop = Arc::new(AtomicBool::new(false));
    let following = spawn_follower(rig.store.clone(), Arc::clone(&follower_stop));
    let writers = rig.writers(4);
    eprintln!("first apply: {:?}", rig.time_to_apply().await);

    let mut recoveries = Vec::new();
    for mode in ["fast", "immediate"] {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        rig.cluster.restart(mode);
        let recovered = rig.time_to_apply().await;
        eprintln!("recovery after a {mode} restart: {recovered:?}");
        recoveries.push(recovered);
    }
    rig.settle_and_check(writers).await;
    runners_stop.store(true, Ordering::SeqCst);
    for task in projection_tasks {
        task.await.unwrap().unwrap();
    }
    saga_task.await.unwrap().unwrap();
    follower_stop.store(true, Ordering::SeqCst);
    check_follower(&rig.store, following.await.unwrap()).await;
    let overlap = watcher.await.unwrap();
    assert!(
        overlap < Duration::from_millis(1500),
        "two instances reported active for {overlap:?}"
    );
    for recovered in recoveries {
        assert!(
            recovered < Duration::from_secs(30),
            "recovery took {recovered:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn everything_recovers_while_backends_are_terminated_at_random() {
    let rig = rig(&["max_connections = 100"]).await;
    let runners_stop = Arc::new(AtomicBool::new(false));
    let projections: Vec<_> = (0..2).map(|_| Arc::new(rig.projection())).collect();
    let projection_tasks: Vec<_> = projections
        .iter()
        .map(|p| spawn_projection(Arc::clone(p), Arc::clone(&runners_stop)))
        .collect();
    let saga_task = spawn_saga(Arc::new(rig.saga()), Arc::clone(&runners_stop));
    let watcher = watch_single_active(projections.clone(), Arc::clone(&runners_stop));
    let follower_stop = Arc::new(AtomicBool::new(false));
    let following = spawn_follower(rig.store.clone(), Arc::clone(&follower_stop));
    let writers = rig.writers(4);
    rig.time_to_apply().await;

    // For 30 s, a random client backend is terminated every 200-500 ms.
    let killer_pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&rig.cluster.url())
        .await
        .unwrap();
    let terminated = AtomicU64::new(0);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        let killed: Option<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE pid <> pg_backend_pid() AND backend_type = 'client backend' \
             ORDER BY random() LIMIT 1",
        )
        .fetch_optional(&killer_pool)
        .await
        .unwrap_or(None);
        if killed == Some(true) {
            terminated.fetch_add(1, Ordering::SeqCst);
        }
        let pause = rand::rng().random_range(200..500);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    eprintln!("terminated {} backends", terminated.load(Ordering::SeqCst));
    eprintln!(
        "apply after the terminations: {:?}",
        rig.time_to_apply().await
    );
    rig.settle_and_check(writers).await;
    runners_stop.store(true, Ordering::SeqCst);
    for task in projection_tasks {
        task.await.unwrap().unwrap();
    }
    saga_task.await.unwrap().unwrap();
    follower_stop.store(true, Ordering::SeqCst);
    check_follower(&rig.store, following.await.unwrap()).await;
    let overlap = watcher.await.unwrap();
    assert!(
        overlap < Duration::from_millis(1500),
        "two instances reported active for {overlap:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runners_ride_out_sessions_killed_for_idling() {
    let rig = rig(&[
        "idle_session_timeout = '1s'",
        "idle_in_transaction_session_timeout = '1s'",
    ])
    .await;
    let runners_stop = Arc::new(AtomicBool::new(false));
    let projection = Arc::new(rig.projection());
    let projection_task = spawn_projection(Arc::clone(&projection), Arc::clone(&runners_stop));
    let saga_task = spawn_saga(Arc::new(rig.saga()), Arc::clone(&runners_stop));
    // Bursts of appends between idle gaps longer than the timeouts.
    for burst in 0..4u64 {
        let stream = StreamId::new(format!("ledger-b{burst}")).unwrap();
        for i in 0..20 {
            Rig::append_until_acknowledged(
                &rig.store,
                &rig.acknowledged,
                &stream,
                credit(i + 1, ""),
            )
            .await;
        }
        let applied = rig.time_to_apply().await;
        eprintln!("burst {burst} applied after {applied:?}");
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    rig.settle_and_check(Vec::new()).await;
    runners_stop.store(true, Ordering::SeqCst);
    projection_task.await.unwrap().unwrap();
    saga_task.await.unwrap().unwrap();
}
