//! Idempotent commands delivered twice at once: the second delivery returns the first one's
//! outcome, whatever the interleaving, and never applies its events twice.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use es_core::{
    Aggregate, AppendResult, CommandContext, CommandError, CommandHandler, DomainEvent, EventStore,
    ExpectedVersion, NewEvent, Position, RecordedEvent, StoreError, StreamId,
};
use es_postgres::PgEventStore;
use es_postgres::testing::TestDatabase;
use futures_core::stream::BoxStream;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use uuid::Uuid;

#[derive(Clone, Debug)]
enum WalletCommand {
    Fund(i64),
    Spend(i64),
}

#[derive(Clone, Debug, PartialEq, DomainEvent, Serialize, Deserialize)]
#[event(apply_trait = ApplyWallet)]
enum WalletEvent {
    Funded { amount: i64 },
    Spent { amount: i64 },
}

#[derive(Debug, thiserror::Error)]
#[error("insufficient funds")]
struct Insufficient;

#[derive(Clone, Debug, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(category = "wallet", command = WalletCommand, event = WalletEvent, error = Insufficient)]
struct Wallet {
    balance: i64,
}

impl Wallet {
    fn decide(&self, command: &WalletCommand) -> Result<Vec<WalletEvent>, Insufficient> {
        match command {
            WalletCommand::Fund(amount) => Ok(vec![WalletEvent::Funded { amount: *amount }]),
            WalletCommand::Spend(amount) if *amount > self.balance => Err(Insufficient),
            WalletCommand::Spend(amount) => Ok(vec![WalletEvent::Spent { amount: *amount }]),
        }
    }
}

impl ApplyWallet for Wallet {
    fn on_funded(&mut self, amount: &i64) {
        self.balance += amount;
    }
    fn on_spent(&mut self, amount: &i64) {
        self.balance -= amount;
    }
}

/// Where the gated delivery stops until the other delivery is done.
#[derive(Clone, Copy, PartialEq)]
enum Gate {
    /// Before loading the aggregate.
    Load,
    /// Before appending its decision.
    Append,
}

/// The PostgreSQL store, holding one delivery at `gate`, once, until `open` is notified.
struct Gated {
    inner: PgEventStore,
    gate: Gate,
    passed: AtomicBool,
    reached: Notify,
    open: Notify,
}

impl Gated {
    async fn pass(&self, here: Gate) {
        if self.gate == here && !self.passed.swap(true, Ordering::SeqCst) {
            self.reached.notify_one();
            self.open.notified().await;
        }
    }
}

#[async_trait]
impl EventStore for Gated {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        self.pass(Gate::Append).await;
        self.inner.append(stream, expected, events).await
    }
    fn read_stream<'a>(
        &'a self,
        stream: &'a StreamId,
        from: u64,
    ) -> BoxStream<'a, Result<RecordedEvent, StoreError>> {
        Box::pin(async_stream(self, stream, from))
    }
    async fn read_all(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_all(after, limit).await
    }
    async fn read_event(&self, id: Uuid) -> Result<Option<RecordedEvent>, StoreError> {
        self.inner.read_event(id).await
    }
    async fn read_correlated(
        &self,
        id: Uuid,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_correlated(id, limit).await
    }
    async fn stream_version(&self, stream: &StreamId) -> Result<Option<u64>, StoreError> {
        self.inner.stream_version(stream).await
    }
    async fn head(&self) -> Result<Position, StoreError> {
        self.inner.head().await
    }
}

/// The stream read, after the load gate.
fn async_stream<'a>(
    store: &'a Gated,
    stream: &'a StreamId,
    from: u64,
) -> impl futures_core::Stream<Item = Result<RecordedEvent, StoreError>> + Send + 'a {
    use futures_util::StreamExt;
    futures_util::stream::once(async move {
        store.pass(Gate::Load).await;
        store.inner.read_stream(stream, from)
    })
    .flatten()
}

/// Funds a wallet with 100, then delivers "spend 100" (one idempotent command) twice: the
/// first delivery runs while the second waits at `gate`.
async fn deliver_twice(
    gate: Gate,
) -> (
    Result<es_core::Executed<Wallet>, CommandError<Insufficient>>,
    Result<es_core::Executed<Wallet>, CommandError<Insufficient>>,
    TestDatabase,
) {
    let db = TestDatabase::new().await;
    let wallet = format!("w-{}", Uuid::now_v7());
    let plain = CommandHandler::<Wallet>::new(Arc::new(db.store.clone()));
    plain
        .execute(&wallet, WalletCommand::Fund(100))
        .await
        .unwrap();
    let gated = Arc::new(Gated {
        inner: db.store.clone(),
        gate,
        passed: AtomicBool::new(false),
        reached: Notify::new(),
        open: Notify::new(),
    });
    let second_handler = CommandHandler::<Wallet>::new(Arc::clone(&gated) as Arc<dyn EventStore>);
    let context = CommandContext::new().idempotent(Uuid::now_v7());

    let second = {
        let (wallet, context) = (wallet.clone(), context.clone());
        tokio::spawn(async move {
            second_handler
                .execute_with(&wallet, WalletCommand::Spend(100), context)
                .await
        })
    };
    gated.reached.notified().await;
    let first = plain
        .execute_with(&wallet, WalletCommand::Spend(100), context)
        .await;
    gated.open.notify_one();
    let second = second.await.unwrap();
    (first, second, db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_delivery_that_loads_after_the_first_returns_its_outcome() {
    // The second delivery loads after the first spent the money: deciding again would refuse
    // ("insufficient funds") a command that went through.
    let (first, second, db) = deliver_twice(Gate::Load).await;
    let first = first.unwrap();
    assert!(!first.deduplicated);
    assert_eq!(first.state.balance, 0);
    let second = second.expect("the first delivery's outcome, not a refusal");
    assert!(second.deduplicated);
    assert!(second.events.is_empty());
    assert_eq!(second.state.balance, 0);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_delivery_decided_beside_the_first_never_applies_twice() {
    // The second delivery decided against the state before the spend and appends the same
    // event ids after the first did: a repeat, reported as such, the spend applied once.
    let (first, second, db) = deliver_twice(Gate::Append).await;
    assert_eq!(first.unwrap().state.balance, 0);
    let second = second.unwrap();
    assert!(second.deduplicated, "the repeat is reported as one");
    assert!(second.events.is_empty());
    assert_eq!(second.state.balance, 0, "the spend is in the state once");
    db.drop().await;
}
