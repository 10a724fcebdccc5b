//! The saga outbox under slow and poison commands: no transaction waits on a command (a slow
//! one does not hold back global-log readers), failing commands back off and are
//! dead-lettered without blocking the others, deadlines that fail are recorded and retried.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::DateTime;
use es_core::testing::conformance::{test_event, unique_stream};
use es_core::{
    BoxError, CommandContext, CommandDispatcher, Deadline, DomainEvent, Envelope, EventStore,
    ExpectedVersion, NewEvent, Saga, StreamId,
};
use es_postgres::testing::TestDatabase;
use es_postgres::{PgEventStore, PgSagaRunner};
use serde::{Deserialize, Serialize};
use sqlx::AssertSqlSafe;

#[derive(Clone, Debug, PartialEq, DomainEvent, Serialize, Deserialize)]
enum JobEvent {
    Queued { job: String, action: String },
}

/// Turns each queued job into one command: the action to run for it. Jobs named `late-*`
/// also wait on a deadline (already due) whose reaction fails while `fail_deadline` says so.
struct Jobs;

impl Saga for Jobs {
    type Event = JobEvent;
    type State = Option<String>;
    type Command = (String, String);

    fn name(&self) -> &str {
        "jobs"
    }

    fn instance_of(&self, event: &Envelope<JobEvent>) -> Option<String> {
        let JobEvent::Queued { job, .. } = &event.payload;
        Some(job.clone())
    }

    fn react(
        &self,
        state: &mut Option<String>,
        event: &Envelope<JobEvent>,
    ) -> Vec<(String, String)> {
        let JobEvent::Queued { job, action } = &event.payload;
        *state = Some(job.clone());
        vec![(job.clone(), action.clone())]
    }

    fn deadlines(&self, state: &Option<String>) -> Vec<Deadline> {
        match state {
            Some(job) if job.starts_with("late") => {
                vec![Deadline::new("late", DateTime::UNIX_EPOCH)]
            }
            _ => Vec::new(),
        }
    }

    fn on_deadline(
        &self,
        job: &str,
        _: &mut Option<String>,
        _: &Deadline,
    ) -> Vec<(String, String)> {
        vec![(job.to_owned(), "deadline".to_owned())]
    }
}

/// Runs actions: `sleep` takes 5 s, `fail` always fails, anything else succeeds. Records what
/// ran, in order.
#[derive(Clone, Default)]
struct Worker {
    ran: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl CommandDispatcher<(String, String)> for Worker {
    async fn dispatch(
        &self,
        (job, action): (String, String),
        _: CommandContext,
    ) -> Result<(), BoxError> {
        match action.as_str() {
            "sleep" => tokio::time::sleep(Duration::from_secs(5)).await,
            "fail" => return Err(format!("job {job} cannot run").into()),
            _ => {}
        }
        self.ran.lock().unwrap().push(format!("{job}:{action}"));
        Ok(())
    }
}

fn queued(job: &str, action: &str) -> NewEvent {
    NewEvent::from_event(&JobEvent::Queued {
        job: job.into(),
        action: action.into(),
    })
    .unwrap()
}

async fn queue(store: &PgEventStore, jobs: &[(&str, &str)]) {
    for (job, action) in jobs {
        store
            .append(
                &StreamId::new(format!("job-{job}")).unwrap(),
                ExpectedVersion::Any,
                vec![queued(job, action)],
            )
            .await
            .unwrap();
    }
}

fn runner(db: &TestDatabase, worker: Worker) -> PgSagaRunner<Jobs, Worker> {
    PgSagaRunner::new(db.store.clone(), Jobs, worker)
        .configure(|r| r.poll_interval(Duration::from_millis(20)))
        .dispatch_interval(Duration::from_millis(20))
        .retry_backoff(Duration::from_millis(50))
        .max_attempts(3)
}

async fn feed(runner: &PgSagaRunner<Jobs, Worker>, events: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut read = 0;
    while read < events {
        read += runner.catch_up().await.unwrap();
        assert!(
            Instant::now() < deadline,
            "only {read} of {events} events readable"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_command_does_not_hold_back_global_log_readers() {
    let db = TestDatabase::with_pool_size(12).await;
    queue(&db.store, &[("slow", "sleep")]).await;
    let runner = runner(&db, Worker::default());
    feed(&runner, 1).await;
    let dispatching = tokio::spawn(async move { runner.dispatch_pending().await });
    tokio::time::sleep(Duration::from_millis(300)).await;

    // While the 5 s command runs, appends elsewhere are readable at once.
    let mut worst = Duration::ZERO;
    let mut after = db.store.head().await.unwrap();
    for i in 0..10 {
        let appended = db
            .store
            .append(
                &unique_stream("other"),
                ExpectedVersion::NoStream,
                vec![test_event(i)],
            )
            .await
            .unwrap();
        let started = Instant::now();
        loop {
            let read = db.store.read_all(after, 100).await.unwrap();
            if read.iter().any(|e| e.position == appended.positions[0]) {
                after = appended.positions[0];
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "never readable"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        worst = worst.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !dispatching.is_finished(),
        "the slow command was running throughout"
    );
    assert!(
        worst < Duration::from_secs(1),
        "a reader waited {worst:?} while the command ran"
    );
    assert_eq!(dispatching.await.unwrap().unwrap(), 1);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_command_backs_off_and_is_dead_lettered_without_blocking_others() {
    let db = TestDatabase::new().await;
    queue(&db.store, &[("a", "fail"), ("b", "ok"), ("c", "ok")]).await;
    let worker = Worker::default();
    let runner = runner(&db, worker.clone());
    feed(&runner, 3).await;

    // The first round runs b and c and records a's failure; a waits its backoff.
    runner.dispatch_pending().await.unwrap();
    let mut ran = worker.ran.lock().unwrap().clone();
    ran.sort();
    assert_eq!(
        ran,
        vec!["b:ok", "c:ok"],
        "the failing command blocks no one"
    );
    assert_eq!(runner.outbox_status().await.unwrap().pending, 1);

    // Retried after its backoff, then dead-lettered at the third failure.
    let deadline = Instant::now() + Duration::from_secs(20);
    while runner.outbox_status().await.unwrap().dead_lettered == 0 {
        assert!(Instant::now() < deadline, "never dead-lettered");
        runner.dispatch_pending().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dead = runner.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].instance.as_str(), dead[0].attempts), ("a", 3));
    assert!(dead[0].error.as_deref().unwrap().contains("cannot run"));
    assert_eq!(runner.outbox_status().await.unwrap().pending, 0);

    // A command that does not deserialize is dead-lettered at once, naming why.
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO \"{}\".saga_outbox (saga, command_id, instance, command, correlation_id, \
         causation_id) VALUES ('jobs', gen_random_uuid(), 'z', '{{\"not\": \"a command\"}}', \
         gen_random_uuid(), gen_random_uuid())",
        db.schema
    )))
    .execute(&db.pool)
    .await
    .unwrap();
    runner.dispatch_pending().await.unwrap();
    let dead = runner.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 2);
    let unreadable = dead.iter().find(|d| d.instance == "z").unwrap();
    assert_eq!(unreadable.attempts, 1);
    assert!(
        unreadable
            .error
            .as_deref()
            .unwrap()
            .contains("does not deserialize")
    );

    // Retried by an operator: back in line (and failing again); discarded: gone.
    let ids: Vec<_> = dead.iter().map(|d| d.command_id).collect();
    assert_eq!(runner.retry_dead_letters(&ids[..1]).await.unwrap(), 1);
    assert_eq!(runner.outbox_status().await.unwrap().pending, 1);
    assert_eq!(runner.discard_dead_letters(&ids[1..]).await.unwrap(), 1);
    assert_eq!(runner.outbox_status().await.unwrap().dead_lettered, 0);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_of_one_instance_run_in_order_even_when_the_first_fails_once() {
    let db = TestDatabase::new().await;
    let worker = Worker::default();
    let runner = runner(&db, worker.clone()).max_attempts(10);
    // Two commands for instance j: the first fails until the test lets it pass.
    queue(&db.store, &[("j", "fail")]).await;
    feed(&runner, 1).await;
    runner.dispatch_pending().await.unwrap();
    queue(&db.store, &[("j", "second")]).await;
    feed(&runner, 1).await;
    runner.dispatch_pending().await.unwrap();
    assert!(
        worker.ran.lock().unwrap().is_empty(),
        "the second command waits for the first"
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_deadline_is_recorded_and_the_others_fire() {
    let db = TestDatabase::new().await;
    queue(&db.store, &[("late-1", "ok"), ("late-2", "ok")]).await;
    let worker = Worker::default();
    let runner = runner(&db, worker.clone());
    feed(&runner, 2).await;
    // late-1's state no longer deserializes (written by other code): its deadline fails.
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE \"{}\".saga_states SET state = '[\"garbage\"]' WHERE saga = 'jobs' AND instance = 'late-1'",
        db.schema
    )))
    .execute(&db.pool)
    .await
    .unwrap();
    let fired = runner.fire_due_deadlines().await.unwrap();
    assert_eq!(fired, 1, "late-2 fires although late-1 fails first");
    let status = runner.deadline_status().await.unwrap();
    assert_eq!((status.waiting, status.failing), (1, 1));
    let error: Option<String> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT last_error FROM \"{}\".saga_deadlines WHERE instance = 'late-1'",
        db.schema
    )))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(error.unwrap().contains("late-1"));
    // Not retried at once: it waits its backoff.
    assert_eq!(runner.fire_due_deadlines().await.unwrap(), 0);
    runner.dispatch_pending().await.unwrap();
    assert!(
        worker
            .ran
            .lock()
            .unwrap()
            .contains(&"late-2:deadline".to_owned())
    );
    db.drop().await;
}

/// A dispatcher whose run of a command was cut short (here cancelled; in production a claim
/// whose reply a cut connection lost) takes the command back at its next claim instead of
/// waiting out its own 60 s lease; another dispatcher leaves it to the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_takes_back_its_own_lease_of_a_command_it_no_longer_runs() {
    let db = TestDatabase::new().await;
    let worker = Worker::default();
    let other = runner(&db, Worker::default());
    let runner = runner(&db, worker.clone());
    queue(&db.store, &[("c", "sleep")]).await;
    feed(&runner, 1).await;
    let cut = tokio::time::timeout(Duration::from_millis(300), runner.dispatch_pending()).await;
    assert!(
        cut.is_err(),
        "the run was cut short while the command slept"
    );
    assert!(worker.ran.lock().unwrap().is_empty());
    assert_eq!(
        other.dispatch_pending().await.unwrap(),
        0,
        "another dispatcher respects the lease"
    );
    let started = Instant::now();
    assert_eq!(runner.dispatch_pending().await.unwrap(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "taken back at once, not after the lease"
    );
    assert_eq!(*worker.ran.lock().unwrap(), ["c:sleep"]);
    assert_eq!(runner.pending().await.unwrap(), 0);
    db.drop().await;
}
