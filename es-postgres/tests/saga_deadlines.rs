//! Saga deadlines on PostgreSQL: scheduled from the state, cancelled by the events that make
//! them moot, fired once when due however many processes fire, and fired by a live runner.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use es_core::{
    Aggregate, BoxError, CommandContext, CommandDispatcher, CommandHandler, Deadline, DomainEvent,
    Envelope, EventStore, Repository, Saga, StreamId,
};
use es_postgres::testing::TestDatabase;
use es_postgres::{PgEventStore, PgSagaRunner};
use rand::Rng;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug)]
enum OrderCommand {
    Place,
    Pay,
    Cancel,
}

#[derive(Clone, Debug, PartialEq, DomainEvent, Serialize, Deserialize)]
#[event(apply_trait = ApplyOrder)]
enum OrderEvent {
    Placed,
    Paid,
    Cancelled,
}

#[derive(Debug, thiserror::Error)]
#[error("the order is closed")]
struct Closed;

#[derive(Clone, Debug, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(category = "order", command = OrderCommand, event = OrderEvent, error = Closed)]
struct Order {
    status: String,
}

impl Order {
    fn decide(&self, command: &OrderCommand) -> Result<Vec<OrderEvent>, Closed> {
        match (command, self.status.as_str()) {
            (OrderCommand::Place, "") => Ok(vec![OrderEvent::Placed]),
            (OrderCommand::Pay, "placed") => Ok(vec![OrderEvent::Paid]),
            (OrderCommand::Cancel, "placed") => Ok(vec![OrderEvent::Cancelled]),
            _ => Err(Closed),
        }
    }
}

impl ApplyOrder for Order {
    fn on_placed(&mut self) {
        self.status = "placed".into();
    }
    fn on_paid(&mut self) {
        self.status = "paid".into();
    }
    fn on_cancelled(&mut self) {
        self.status = "cancelled".into();
    }
}

/// Cancels an order not paid within `after` of being placed.
struct PaymentTimeout {
    after: chrono::Duration,
}

impl Saga for PaymentTimeout {
    type Event = OrderEvent;
    /// When the order was placed, while it waits for payment.
    type State = Option<DateTime<Utc>>;
    /// The order to cancel.
    type Command = String;

    fn name(&self) -> &str {
        "payment_timeout"
    }

    fn instance_of(&self, event: &Envelope<OrderEvent>) -> Option<String> {
        Some(event.stream_id.id().to_owned())
    }

    fn react(&self, waiting: &mut Self::State, event: &Envelope<OrderEvent>) -> Vec<String> {
        *waiting = match event.payload {
            OrderEvent::Placed => Some(event.recorded_at),
            OrderEvent::Paid | OrderEvent::Cancelled => None,
        };
        Vec::new()
    }

    fn deadlines(&self, waiting: &Self::State) -> Vec<Deadline> {
        waiting
            .map(|placed| Deadline::new("payment", placed + self.after))
            .into_iter()
            .collect()
    }

    /// Leaves the state as it is: the deadline fired once and does not fire again while
    /// still listed; the Cancelled event clears it.
    fn on_deadline(&self, order: &str, _: &mut Self::State, _: &Deadline) -> Vec<String> {
        vec![order.to_owned()]
    }
}

struct Orders(CommandHandler<Order>);

#[async_trait]
impl CommandDispatcher<String> for Orders {
    async fn dispatch(&self, order: String, context: CommandContext) -> Result<(), BoxError> {
        match self
            .0
            .execute_with(&order, OrderCommand::Cancel, context)
            .await
        {
            // Paid in the meantime: nothing to cancel.
            Ok(_) | Err(es_core::CommandError::Domain(_)) => Ok(()),
            Err(other) => Err(other.into()),
        }
    }
}

fn runner(db: &TestDatabase, after: chrono::Duration) -> PgSagaRunner<PaymentTimeout, Orders> {
    runner_on(&db.store, after)
}

fn runner_on(
    store: &PgEventStore,
    after: chrono::Duration,
) -> PgSagaRunner<PaymentTimeout, Orders> {
    let handler_store: Arc<dyn EventStore> = Arc::new(store.clone());
    PgSagaRunner::new(
        store.clone(),
        PaymentTimeout { after },
        Orders(CommandHandler::new(handler_store)),
    )
    .configure(|r| r.poll_interval(Duration::from_millis(20)))
    .dispatch_interval(Duration::from_millis(10))
}

async fn status(db: &TestDatabase, order: &str) -> String {
    Repository::<Order>::new(Arc::new(db.store.clone()))
        .load(&StreamId::for_aggregate("order", order).unwrap())
        .await
        .unwrap()
        .state
        .status
}

async fn catch_up_on(runner: &PgSagaRunner<PaymentTimeout, Orders>, events: u64) {
    // Other tests may hold the cluster-wide horizon for a moment: poll until read.
    let mut read = 0;
    for _ in 0..500 {
        read += runner.catch_up().await.unwrap();
        if read >= events {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the saga read {read} of {events} events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_fires_once_when_due_unless_an_event_cancelled_it() {
    let db = TestDatabase::new().await;
    let orders = CommandHandler::<Order>::new(Arc::new(db.store.clone()));
    let placement = CommandContext::new();
    let correlation = placement.effective_correlation_id();
    orders
        .execute_with("late", OrderCommand::Place, placement)
        .await
        .unwrap();
    orders.execute("paid", OrderCommand::Place).await.unwrap();
    orders.execute("paid", OrderCommand::Pay).await.unwrap();

    let after = chrono::Duration::minutes(15);
    let first = runner(&db, after);
    catch_up_on(&first, 3).await;
    let placed = db
        .store
        .read_stream_to_vec(&StreamId::new("order-late").unwrap(), 1)
        .await
        .unwrap()
        .remove(0);
    let due = placed.recorded_at + after;
    assert_eq!(
        first.deadlines("late").await.unwrap(),
        [Deadline::new("payment", due)]
    );
    assert!(
        first.deadlines("paid").await.unwrap().is_empty(),
        "paying cancelled it"
    );
    let waiting = first.deadline_status().await.unwrap();
    assert_eq!(
        (waiting.waiting, waiting.due, waiting.next),
        (1, 0, Some(due))
    );

    assert_eq!(
        first
            .fire_deadlines_due_by(due - chrono::Duration::seconds(1))
            .await
            .unwrap(),
        0
    );
    // Two processes fire at once: the deadline fires in one of them.
    let second = runner(&db, after);
    let (a, b) = tokio::join!(
        first.fire_deadlines_due_by(due),
        second.fire_deadlines_due_by(due)
    );
    assert_eq!(a.unwrap() + b.unwrap(), 1);
    assert_eq!(
        first.fire_deadlines_due_by(due).await.unwrap(),
        0,
        "fired once"
    );
    assert_eq!(
        first.pending().await.unwrap(),
        1,
        "its command waits in the outbox"
    );
    assert!(first.deadlines("late").await.unwrap().is_empty());
    assert_eq!(first.deadline_status().await.unwrap().waiting, 0);

    assert_eq!(first.dispatch_pending().await.unwrap(), 1);
    assert_eq!(status(&db, "late").await, "cancelled");
    assert_eq!(status(&db, "paid").await, "paid");
    let late = db
        .store
        .read_stream_to_vec(&StreamId::new("order-late").unwrap(), 1)
        .await
        .unwrap();
    assert_eq!(late[1].event_type, "Cancelled");
    assert_eq!(late[1].correlation_id, correlation);
    assert_eq!(late[1].causation_id, Some(placed.event_id));

    // The cancellation reaches the saga and clears the instance's deadline for good.
    catch_up_on(&first, 1).await;
    assert_eq!(first.state("late").await.unwrap(), Some(None));
    let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{}\".saga_deadlines",
        db.schema
    )))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows, 0);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_runner_fires_deadlines_as_they_fall_due() {
    let db = TestDatabase::new().await;
    let orders = CommandHandler::<Order>::new(Arc::new(db.store.clone()));
    let runner = Arc::new(runner(&db, chrono::Duration::milliseconds(300)));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = {
        let runner = Arc::clone(&runner);
        let mut stopped = stopped;
        tokio::spawn(async move {
            runner
                .run(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
        })
    };
    orders.execute("slow", OrderCommand::Place).await.unwrap();
    orders.execute("quick", OrderCommand::Place).await.unwrap();
    orders.execute("quick", OrderCommand::Pay).await.unwrap();

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while status(&db, "slow").await != "cancelled" {
        assert!(
            std::time::Instant::now() < deadline,
            "the deadline never fired"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status(&db, "quick").await, "paid");
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deadlines_fire_once_through_crashes() {
    let db = TestDatabase::new().await;
    let orders = CommandHandler::<Order>::new(Arc::new(db.store.clone()));
    let count = 40;
    for n in 0..count {
        orders
            .execute(&format!("o{n}"), OrderCommand::Place)
            .await
            .unwrap();
        // Every fourth order is paid: its deadline is cancelled.
        if n % 4 == 0 {
            orders
                .execute(&format!("o{n}"), OrderCommand::Pay)
                .await
                .unwrap();
        }
    }
    // Already due once read: the runner fires them as soon as it has seen the orders.
    let after = chrono::Duration::zero();
    let mut kills = 0;
    for _ in 0..40 {
        // Each run is a process of its own, with its own connections, which die with it.
        let process = db.another_process(6).await;
        let runner = Arc::new(runner_on(&process, after));
        let task = {
            let runner = Arc::clone(&runner);
            tokio::spawn(async move { runner.run(std::future::pending()).await })
        };
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(5..60))).await;
        task.abort();
        let _ = task.await;
        process.pool().close().await;
        kills += 1;
        let mut open = 0;
        for n in 0..count {
            open += u32::from(status(&db, &format!("o{n}")).await == "placed");
        }
        if open == 0 && kills > 1 {
            break;
        }
    }
    // Finish the work with a runner that is not killed.
    let last = runner(&db, after);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        last.catch_up().await.unwrap();
        last.fire_due_deadlines().await.unwrap();
        last.dispatch_pending().await.unwrap();
        let mut open = 0;
        for n in 0..count {
            open += u32::from(status(&db, &format!("o{n}")).await == "placed");
        }
        if open == 0 && last.pending().await.unwrap() == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{open} orders never cancelled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    for n in 0..count {
        let events = db
            .store
            .read_stream_to_vec(&StreamId::new(format!("order-o{n}")).unwrap(), 1)
            .await
            .unwrap();
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        let expected: &[&str] = if n % 4 == 0 {
            &["Placed", "Paid"]
        } else {
            &["Placed", "Cancelled"]
        };
        assert_eq!(types, expected, "order o{n} after {kills} kills");
    }
    let fired: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{}\".saga_deadlines WHERE fired_at IS NULL",
        db.schema
    )))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(fired, 0, "no deadline left unfired");
    db.drop().await;
}
