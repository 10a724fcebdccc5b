//! The in-memory saga runner: reactions dispatched as idempotent, correlated commands, and a
//! failed dispatch redelivered without doing anything twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use es_core::testing::evolution::{Ledger, LedgerCommand, LedgerEvent};
use es_core::{
    BoxError, CommandContext, CommandDispatcher, CommandHandler, Envelope, EventStore,
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

/// Credits the mirror, then reports failure the first `lose` times, as if the acknowledgement
/// was lost after the command ran.
struct Credit {
    ledgers: CommandHandler<Ledger>,
    lose: AtomicU32,
}

#[async_trait]
impl CommandDispatcher<u64> for Credit {
    async fn dispatch(&self, cents: u64, context: CommandContext) -> Result<(), BoxError> {
        self.ledgers
            .execute_with("mirror", LedgerCommand::Credit(cents), context)
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
        Credit {
            ledgers: CommandHandler::new(Arc::clone(&store)),
            lose: AtomicU32::new(1),
        },
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
