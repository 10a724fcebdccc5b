//! The in-memory saga runner: reactions dispatched as idempotent, correlated commands, a failed
//! dispatch redelivered without doing anything twice, and deadlines.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use es_core::testing::evolution::{Ledger, LedgerCommand, LedgerEvent};
use es_core::{
    BoxError, CommandContext, CommandDispatcher, CommandHandler, Deadline, Envelope, EventStore,
    InMemoryEventStore, Saga, SagaRunner, StreamId,
};

/// Mirrors every debit of ledger `source` as a credit to ledger `mirror`; counts them.
struct Mirror;

impl Saga for Mirror {
    type Event = LedgerEvent;
    type State = u32;
    type Command = u64;

    fn name(&self) -> &str {
        "mirror"
    }

    fn instance_of(&self, event: &Envelope<LedgerEvent>) -> Option<String> {
        (event.stream_id.id() == "source").then(|| "source".to_owned())
    }

    fn react(&self, mirrored: &mut u32, event: &Envelope<LedgerEvent>) -> Vec<u64> {
        match event.payload {
            LedgerEvent::Debited { cents } => {
                *mirrored += 1;
                vec![cents]
            }
            _ => Vec::new(),
        }
    }
}

/// Runs each issued command on ledger `ledger` as `command` makes it, then reports failure the
/// first `lose` times, as if the acknowledgement was lost after the command ran.
struct Deliver<T> {
    ledgers: CommandHandler<Ledger>,
    ledger: &'static str,
    command: fn(T) -> LedgerCommand,
    lose: AtomicU32,
}

impl<T> Deliver<T> {
    fn new(
        store: &Arc<dyn EventStore>,
        ledger: &'static str,
        command: fn(T) -> LedgerCommand,
    ) -> Self {
        Self {
            ledgers: CommandHandler::new(Arc::clone(store)),
            ledger,
            command,
            lose: AtomicU32::new(1),
        }
    }
}

#[async_trait]
impl<T: Send + 'static> CommandDispatcher<T> for Deliver<T> {
    async fn dispatch(&self, issued: T, context: CommandContext) -> Result<(), BoxError> {
        self.ledgers
            .execute_with(self.ledger, (self.command)(issued), context)
            .await?;
        if self.lose.load(Ordering::SeqCst) > 0 {
            self.lose.fetch_sub(1, Ordering::SeqCst);
            return Err("acknowledgement lost".into());
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_redelivered_reaction_runs_its_command_once_and_carries_the_correlation() {
    let store: Arc<dyn EventStore> = Arc::new(InMemoryEventStore::new());
    let ledgers = CommandHandler::<Ledger>::new(Arc::clone(&store));
    let first = CommandContext::new();
    let correlation = first.effective_correlation_id();
    ledgers
        .execute_with("source", LedgerCommand::Debit(5), first)
        .await
        .unwrap();
    ledgers
        .execute("source", LedgerCommand::Debit(7))
        .await
        .unwrap();
    let runner = SagaRunner::new(
        Arc::clone(&store),
        Mirror,
        Deliver::new(&store, "mirror", LedgerCommand::Credit),
    );

    assert!(
        runner.catch_up().await.is_err(),
        "the lost acknowledgement stops the round"
    );
    assert_eq!(
        runner.state("source"),
        None,
        "the state waits for its commands"
    );
    runner.catch_up().await.unwrap();
    assert_eq!(runner.state("source"), Some(2));

    let mirror = store
        .read_stream_to_vec(&StreamId::new("ledger-mirror").unwrap(), 1)
        .await
        .unwrap();
    assert_eq!(
        mirror.len(),
        2,
        "one credit per debit, despite the redelivery"
    );
    assert_eq!(mirror[0].correlation_id, correlation);
    let source = store
        .read_stream_to_vec(&StreamId::new("ledger-source").unwrap(), 1)
        .await
        .unwrap();
    assert_eq!(mirror[0].causation_id, Some(source[0].event_id));
    assert_eq!(mirror[1].causation_id, Some(source[1].event_id));
}

/// Waits ten minutes after a debit for a credit; when none comes, notes the ledger overdue.
struct CreditWatch;

impl Saga for CreditWatch {
    type Event = LedgerEvent;
    /// When the ledger was debited without a credit since.
    type State = Option<DateTime<Utc>>;
    type Command = String;

    fn name(&self) -> &str {
        "credit_watch"
    }

    fn instance_of(&self, event: &Envelope<LedgerEvent>) -> Option<String> {
        Some(event.stream_id.id().to_owned())
    }

    fn react(&self, waiting: &mut Self::State, event: &Envelope<LedgerEvent>) -> Vec<String> {
        match event.payload {
            LedgerEvent::Debited { .. } => *waiting = Some(event.recorded_at),
            LedgerEvent::Credited { .. } => *waiting = None,
            LedgerEvent::Annotated { .. } => {}
        }
        Vec::new()
    }

    fn deadlines(&self, waiting: &Self::State) -> Vec<Deadline> {
        waiting
            .map(|since| Deadline::new("credit", since + chrono::Duration::minutes(10)))
            .into_iter()
            .collect()
    }

    fn on_deadline(
        &self,
        ledger: &str,
        waiting: &mut Self::State,
        deadline: &Deadline,
    ) -> Vec<String> {
        assert_eq!((ledger, deadline.name()), ("late", "credit"));
        *waiting = None;
        vec!["overdue".into()]
    }
}

#[tokio::test]
async fn a_deadline_fires_once_when_due_and_not_after_it_was_cancelled() {
    let store: Arc<dyn EventStore> = Arc::new(InMemoryEventStore::new());
    let ledgers = CommandHandler::<Ledger>::new(Arc::clone(&store));
    let debit = CommandContext::new();
    let correlation = debit.effective_correlation_id();
    ledgers
        .execute_with("late", LedgerCommand::Debit(5), debit)
        .await
        .unwrap();
    ledgers
        .execute("paid", LedgerCommand::Debit(5))
        .await
        .unwrap();
    ledgers
        .execute("paid", LedgerCommand::Credit(5))
        .await
        .unwrap();
    let runner = SagaRunner::new(
        Arc::clone(&store),
        CreditWatch,
        Deliver::new(&store, "late", LedgerCommand::Annotate),
    );
    runner.catch_up().await.unwrap();
    let debited = store
        .read_stream_to_vec(&StreamId::new("ledger-late").unwrap(), 1)
        .await
        .unwrap()
        .remove(0);
    let due = debited.recorded_at + chrono::Duration::minutes(10);
    assert_eq!(runner.deadlines("late"), [Deadline::new("credit", due)]);
    assert!(
        runner.deadlines("paid").is_empty(),
        "the credit cancelled it"
    );

    assert_eq!(
        runner
            .fire_deadlines(due - chrono::Duration::seconds(1))
            .await
            .unwrap(),
        0
    );
    assert!(
        runner.fire_deadlines(due).await.is_err(),
        "the lost acknowledgement fails the round"
    );
    assert_eq!(runner.deadlines("late").len(), 1, "still waiting to fire");
    assert_eq!(runner.fire_deadlines(due).await.unwrap(), 1);
    assert_eq!(runner.fire_deadlines(due).await.unwrap(), 0, "fired once");
    assert!(runner.deadlines("late").is_empty());
    assert_eq!(runner.state("late"), Some(None));

    let late = store
        .read_stream_to_vec(&StreamId::new("ledger-late").unwrap(), 1)
        .await
        .unwrap();
    let notes: Vec<_> = late
        .iter()
        .filter(|e| e.event_type == "Annotated")
        .collect();
    assert_eq!(notes.len(), 1, "one note despite the redelivery");
    assert_eq!(notes[0].correlation_id, correlation);
    assert_eq!(notes[0].causation_id, Some(debited.event_id));
}
