//! Command handling: decide, append with the loaded version, retry conflicts, propagate ids.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use es_core::testing::AggregateTest;
use es_core::{
    Aggregate, AppendResult, CommandContext, CommandError, CommandHandler, DecodeError,
    DomainEvent, EventStore, EventType, ExpectedVersion, InMemoryEventStore, NewEvent, Position,
    RecordedEvent, RetryPolicy, StoreError, StreamId,
};
use futures_core::stream::BoxStream;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

#[derive(Debug, Default, Clone)]
struct Account {
    open: bool,
    balance: i64,
}

#[derive(Debug)]
enum AccountCommand {
    Open,
    Deposit(i64),
    Withdraw(i64),
    Touch,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum AccountEvent {
    Opened,
    Deposited { amount: i64 },
    Withdrawn { amount: i64 },
}

impl DomainEvent for AccountEvent {
    const TYPES: &'static [EventType] = &[
        EventType {
            name: "Opened",
            version: 1,
        },
        EventType {
            name: "Deposited",
            version: 1,
        },
        EventType {
            name: "Withdrawn",
            version: 2,
        },
    ];
    fn event_type(&self) -> &'static str {
        match self {
            Self::Opened => "Opened",
            Self::Deposited { .. } => "Deposited",
            Self::Withdrawn { .. } => "Withdrawn",
        }
    }
    fn encode(&self) -> Result<Box<RawValue>, serde_json::Error> {
        es_core::encode_tagged(self)
    }
    fn decode(event_type: &str, payload: &str) -> Result<Self, DecodeError> {
        if es_core::current_version::<Self>(event_type).is_none() {
            return Err(DecodeError::UnknownType(event_type.to_owned()));
        }
        Ok(es_core::decode_tagged(event_type, payload)?)
    }
}

#[derive(Debug, PartialEq, thiserror::Error)]
enum AccountError {
    #[error("account is not open")]
    NotOpen,
    #[error("account is already open")]
    AlreadyOpen,
    #[error("insufficient funds: balance {balance}, asked {asked}")]
    InsufficientFunds { balance: i64, asked: i64 },
}

impl Aggregate for Account {
    const CATEGORY: &'static str = "account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;

    fn decide(&self, command: &AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        match *command {
            AccountCommand::Open if self.open => Err(AccountError::AlreadyOpen),
            AccountCommand::Open => Ok(vec![AccountEvent::Opened]),
            _ if !self.open => Err(AccountError::NotOpen),
            AccountCommand::Deposit(amount) => Ok(vec![AccountEvent::Deposited { amount }]),
            AccountCommand::Withdraw(asked) if asked > self.balance => {
                Err(AccountError::InsufficientFunds {
                    balance: self.balance,
                    asked,
                })
            }
            AccountCommand::Withdraw(amount) => Ok(vec![AccountEvent::Withdrawn { amount }]),
            AccountCommand::Touch => Ok(vec![]),
        }
    }

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened => self.open = true,
            AccountEvent::Deposited { amount } => self.balance += amount,
            AccountEvent::Withdrawn { amount } => self.balance -= amount,
        }
    }
}

fn handler() -> (Arc<InMemoryEventStore>, CommandHandler<Account>) {
    let store = Arc::new(InMemoryEventStore::new());
    let handler = CommandHandler::new(Arc::clone(&store) as Arc<dyn EventStore>);
    (store, handler)
}

#[test]
fn given_when_then_reads_like_the_rule() {
    AggregateTest::<Account>::given([AccountEvent::Opened, AccountEvent::Deposited { amount: 10 }])
        .when(AccountCommand::Withdraw(4))
        .then([AccountEvent::Withdrawn { amount: 4 }]);
    AggregateTest::<Account>::given([AccountEvent::Opened])
        .when(AccountCommand::Withdraw(1))
        .then_error(AccountError::InsufficientFunds {
            balance: 0,
            asked: 1,
        });
    AggregateTest::<Account>::given_nothing()
        .when(AccountCommand::Deposit(1))
        .then_error_matches(|e| matches!(e, AccountError::NotOpen));
}

#[tokio::test]
async fn commands_append_at_the_loaded_version_and_return_the_new_state() {
    let (store, handler) = handler();
    let opened = handler.execute("a1", AccountCommand::Open).await.unwrap();
    assert_eq!(opened.version, 1);
    let deposited = handler
        .execute("a1", AccountCommand::Deposit(50))
        .await
        .unwrap();
    assert_eq!(deposited.version, 2);
    assert_eq!(deposited.state.balance, 50);
    assert_eq!(deposited.append.unwrap().first_version, 2);

    let loaded = handler.load("a1").await.unwrap();
    assert_eq!((loaded.version, loaded.state.balance), (2, 50));
    let stream = StreamId::new("account-a1").unwrap();
    let stored = store.read_stream_to_vec(&stream, 1).await.unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[1].event_type, "Deposited");
}

#[tokio::test]
async fn rejected_commands_keep_the_domain_error_type_and_write_nothing() {
    let (store, handler) = handler();
    handler.execute("a1", AccountCommand::Open).await.unwrap();
    let err = handler
        .execute("a1", AccountCommand::Withdraw(5))
        .await
        .unwrap_err();
    match err {
        CommandError::Domain(AccountError::InsufficientFunds { balance, asked }) => {
            assert_eq!((balance, asked), (0, 5));
        }
        other => panic!("expected the domain error, got {other:?}"),
    }
    assert_eq!(store.len(), 1);
}

#[tokio::test]
async fn a_command_that_decides_nothing_appends_nothing() {
    let (store, handler) = handler();
    handler.execute("a1", AccountCommand::Open).await.unwrap();
    let done = handler.execute("a1", AccountCommand::Touch).await.unwrap();
    assert!(done.events.is_empty() && done.append.is_none());
    assert_eq!(done.version, 1);
    assert_eq!(store.len(), 1);
}

#[tokio::test]
async fn events_carry_the_command_correlation_causation_and_metadata() {
    let (store, handler) = handler();
    let ctx = CommandContext::new().with_metadata("user", serde_json::json!("ann"));
    handler
        .execute_with("a1", AccountCommand::Open, ctx.clone())
        .await
        .unwrap();

    // A follow-up caused by the first event, in the same piece of work.
    let stream = StreamId::new("account-a1").unwrap();
    let first = store
        .read_stream_to_vec(&stream, 1)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        first.correlation_id, ctx.command_id,
        "a new command starts its correlation"
    );
    assert_eq!(first.causation_id, Some(ctx.command_id));
    assert_eq!(first.metadata.get("user"), Some(serde_json::json!("ann")));

    let follow_up = CommandContext::new()
        .correlated_with(first.correlation_id)
        .caused_by(first.event_id);
    handler
        .execute_with("a1", AccountCommand::Deposit(5), follow_up)
        .await
        .unwrap();
    let second = store
        .read_stream_to_vec(&stream, 2)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(second.correlation_id, ctx.command_id);
    assert_eq!(second.causation_id, Some(first.event_id));
    assert_eq!(second.schema_version, 1);
}

#[tokio::test]
async fn events_are_written_at_their_current_schema_version() {
    let (store, handler) = handler();
    handler.execute("a1", AccountCommand::Open).await.unwrap();
    handler
        .execute("a1", AccountCommand::Deposit(9))
        .await
        .unwrap();
    handler
        .execute("a1", AccountCommand::Withdraw(4))
        .await
        .unwrap();
    let events = store
        .read_stream_to_vec(&StreamId::new("account-a1").unwrap(), 3)
        .await
        .unwrap();
    assert_eq!(events[0].schema_version, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commands_retry_conflicts_and_lose_no_update() {
    let (store, handler) = handler();
    handler.execute("a1", AccountCommand::Open).await.unwrap();
    let handler = handler.with_retry_policy(RetryPolicy {
        conflict_retries: 1_000,
        transient_retries: 0,
    });
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let handler = handler.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                handler
                    .execute("a1", AccountCommand::Deposit(1))
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let loaded = handler.load("a1").await.unwrap();
    assert_eq!(loaded.state.balance, 200);
    assert_eq!(loaded.version, 201);
    assert_eq!(store.len(), 201);
}

#[tokio::test]
async fn a_caller_expected_version_is_checked_not_retried() {
    let (_, handler) = handler();
    handler.execute("a1", AccountCommand::Open).await.unwrap();
    handler
        .execute("a1", AccountCommand::Deposit(1))
        .await
        .unwrap();
    let stale = CommandContext::new().expecting(ExpectedVersion::Exact(1));
    match handler
        .execute_with("a1", AccountCommand::Deposit(1), stale)
        .await
    {
        Err(CommandError::Conflict(conflict)) => {
            assert_eq!(conflict.expected, ExpectedVersion::Exact(1));
            assert_eq!(conflict.actual, Some(2));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let current = CommandContext::new().expecting(ExpectedVersion::Exact(2));
    handler
        .execute_with("a1", AccountCommand::Deposit(1), current)
        .await
        .unwrap();
}

#[tokio::test]
async fn invalid_aggregate_ids_are_typed_errors() {
    let (_, handler) = handler();
    let err = handler
        .execute("bad\0id", AccountCommand::Open)
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::InvalidId(_)), "{err:?}");
}

#[tokio::test]
async fn unknown_stored_event_types_name_the_event() {
    let (store, handler) = handler();
    let stream = StreamId::new("account-a1").unwrap();
    let payload = RawValue::from_string("{}".into()).unwrap();
    let odd = NewEvent::new("Frozen", 1, payload);
    let id = odd.event_id;
    store
        .append(&stream, ExpectedVersion::NoStream, vec![odd])
        .await
        .unwrap();
    match handler.load("a1").await {
        Err(CommandError::Decode(err)) => {
            assert_eq!(err.event.event_id, id);
            assert_eq!(err.event.stream_id, stream);
            assert!(matches!(err.source, DecodeError::UnknownType(ref t) if t == "Frozen"));
            assert!(err.to_string().contains(&id.to_string()));
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
}

/// A store whose first append commits but reports a dropped connection, as a real network can.
struct LosesFirstAck {
    inner: InMemoryEventStore,
    failures: AtomicU32,
}

#[async_trait]
impl EventStore for LosesFirstAck {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        let result = self.inner.append(stream, expected, events).await;
        if self.failures.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(StoreError::Backend {
                source: "connection reset after commit".into(),
                transient: true,
            });
        }
        result
    }
    fn read_stream<'a>(
        &'a self,
        stream: &'a StreamId,
        from: u64,
    ) -> BoxStream<'a, Result<RecordedEvent, StoreError>> {
        self.inner.read_stream(stream, from)
    }
    async fn read_all(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_all(after, limit).await
    }
    async fn read_event(&self, id: uuid::Uuid) -> Result<Option<RecordedEvent>, StoreError> {
        self.inner.read_event(id).await
    }
    async fn read_correlated(
        &self,
        id: uuid::Uuid,
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

#[tokio::test]
async fn an_append_with_unknown_outcome_is_resent_without_duplicating() {
    let store = Arc::new(LosesFirstAck {
        inner: InMemoryEventStore::new(),
        failures: AtomicU32::new(0),
    });
    let handler = CommandHandler::<Account>::new(Arc::clone(&store) as Arc<dyn EventStore>);
    let done = handler.execute("a1", AccountCommand::Open).await.unwrap();
    assert!(
        done.append.unwrap().deduplicated,
        "the re-send found the first write"
    );
    assert_eq!(store.inner.len(), 1);
}

#[tokio::test]
async fn an_idempotent_command_delivered_twice_runs_once() {
    let (store, handler) = handler();
    handler.execute("i1", AccountCommand::Open).await.unwrap();
    let command_id = uuid::Uuid::now_v7();
    let first = handler
        .execute_with(
            "i1",
            AccountCommand::Deposit(5),
            CommandContext::new().idempotent(command_id),
        )
        .await
        .unwrap();
    assert!(!first.deduplicated);
    let again = handler
        .execute_with(
            "i1",
            AccountCommand::Deposit(5),
            CommandContext::new().idempotent(command_id),
        )
        .await
        .unwrap();
    assert!(again.deduplicated, "the redelivery did nothing");
    assert_eq!((again.version, again.state.balance), (2, 5));
    let stored = store
        .read_stream_to_vec(&StreamId::new("account-i1").unwrap(), 1)
        .await
        .unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(
        stored[1].event_id,
        es_core::derived_event_id(command_id, 0),
        "the event id is derived from the command id"
    );
    assert_ne!(
        es_core::derived_event_id(command_id, 0),
        es_core::derived_event_id(command_id, 1)
    );
    assert_ne!(es_core::derived_event_id(command_id, 0), command_id);
    // Deriving twice never comes back to the start (a saga's command id is itself derived).
    let twice = es_core::derived_event_id(es_core::derived_event_id(command_id, 0), 0);
    assert_ne!(twice, command_id);
    assert_ne!(twice, es_core::derived_event_id(command_id, 0));
}
