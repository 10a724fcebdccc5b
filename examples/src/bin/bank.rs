//! The main example: a bank account service, end to end.
//!
//! Runs on the in-memory store when `DATABASE_URL` is unset, and on PostgreSQL (schema
//! `bank_example`, recreated each run) when it is set.

use std::sync::Arc;

use es_core::{
    CommandContext, CommandError, CommandHandler, EventStore, InMemoryEventStore,
    InMemorySnapshotStore, Position, Repository, SnapshotStore,
};
use es_examples::account::{Account, AccountCommand, AccountError};
use es_postgres::{PgEventStore, PgSnapshotStore};

type Handler = CommandHandler<Account>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (store, snapshots) = open_store().await?;
    // Accounts snapshot every 100 events (#[aggregate(snapshot_every = 100)]).
    let accounts: Handler = CommandHandler::with_repository(
        Repository::new(Arc::clone(&store)).with_snapshot_store(snapshots),
    );

    println!("\n1. Commands are decided by the aggregate and recorded as events.");
    let open = accounts
        .execute(
            "alice",
            AccountCommand::Open {
                owner: "Alice".into(),
            },
        )
        .await?;
    println!("   alice opened at version {}", open.version);
    let deposit = accounts
        .execute("alice", AccountCommand::Deposit { amount: 10_000 })
        .await?;
    println!(
        "   deposit of 100.00 recorded as {:?}; balance {}, version {}",
        deposit.events,
        cents(deposit.state.balance),
        deposit.version
    );

    println!("\n2. A command the domain refuses comes back as the domain's own error type.");
    match accounts
        .execute("alice", AccountCommand::Withdraw { amount: 50_000 })
        .await
    {
        Err(CommandError::Domain(AccountError::InsufficientFunds { balance, asked })) => println!(
            "   withdrawal of {} refused: balance is only {}; nothing was written",
            cents(asked),
            cents(balance)
        ),
        other => return Err(format!("expected a refusal, got {other:?}").into()),
    }

    println!(
        "\n3. Concurrent commands on one account: optimistic concurrency, retried on conflict."
    );
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let accounts = accounts.clone();
        tasks.push(tokio::spawn(async move {
            accounts
                .execute("alice", AccountCommand::Withdraw { amount: 500 })
                .await
        }));
    }
    for task in tasks {
        task.await??;
    }
    let alice = accounts.load("alice").await?;
    println!(
        "   8 parallel withdrawals of 5.00: balance {}, version {} (no update lost)",
        cents(alice.state.balance),
        alice.version
    );

    println!("\n4. Correlation and causation ids trace one piece of work across aggregates.");
    let transfer = CommandContext::new();
    let withdrawn = accounts
        .execute_with(
            "alice",
            AccountCommand::Withdraw { amount: 1_000 },
            transfer.clone(),
        )
        .await?;
    accounts
        .execute_with(
            "bob",
            AccountCommand::Open {
                owner: "Bob".into(),
            },
            CommandContext::new().correlated_with(transfer.effective_correlation_id()),
        )
        .await?;
    let cause = withdrawn
        .append
        .as_ref()
        .and_then(|a| a.positions.first().copied())
        .ok_or("the withdrawal wrote an event")?;
    let withdrawal_event = find_event_at(store.as_ref(), cause).await?;
    accounts
        .execute_with(
            "bob",
            AccountCommand::Deposit { amount: 1_000 },
            CommandContext::new()
                .correlated_with(withdrawal_event.correlation_id)
                .caused_by(withdrawal_event.event_id),
        )
        .await?;

    println!(
        "   transfer {}: alice's withdrawal, bob's opening and bob's deposit (caused by the \
         withdrawal event {}) share its correlation id",
        transfer.effective_correlation_id(),
        withdrawal_event.event_id
    );

    println!("\n5. The global log, as a projection would read it:");
    let mut after = Position::START;
    loop {
        let page = store.read_all(after, 100).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        for event in page {
            let mark = if event.correlation_id == transfer.effective_correlation_id() {
                "  <- transfer"
            } else {
                ""
            };
            println!(
                "   {:>9}  {:<14} {:<10} v{}  {}{mark}",
                event.position.to_string(),
                event.stream_id.as_str(),
                event.event_type,
                event.stream_version,
                event.payload.get(),
            );
        }
    }
    let bob = accounts.load("bob").await?;
    println!(
        "\nDone: alice holds {}, bob holds {}.",
        cents(accounts.load("alice").await?.state.balance),
        cents(bob.state.balance)
    );
    Ok(())
}

type Stores = (Arc<dyn EventStore>, Arc<dyn SnapshotStore>);

async fn open_store() -> Result<Stores, Box<dyn std::error::Error>> {
    match std::env::var("DATABASE_URL") {
        Ok(url) => {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(10)
                .connect(&url)
                .await
                .map_err(|e| format!("cannot connect to DATABASE_URL={url}: {e}"))?;
            sqlx::query("DROP SCHEMA IF EXISTS bank_example CASCADE")
                .execute(&pool)
                .await?;
            let store = PgEventStore::with_schema(pool, "bank_example")?;
            store.migrate().await?;
            println!("Running on PostgreSQL ({url}), schema bank_example.");
            let snapshots = Arc::new(PgSnapshotStore::new(&store));
            Ok((Arc::new(store), snapshots))
        }
        Err(_) => {
            println!(
                "Running on the in-memory store (set DATABASE_URL to run the same on PostgreSQL)."
            );
            Ok((
                Arc::new(InMemoryEventStore::new()),
                Arc::new(InMemorySnapshotStore::new()),
            ))
        }
    }
}

async fn find_event_at(
    store: &dyn EventStore,
    position: Position,
) -> Result<es_core::RecordedEvent, Box<dyn std::error::Error>> {
    let mut after = Position::START;
    loop {
        let page = store.read_all(after, 1000).await?;
        let Some(last) = page.last() else {
            return Err(format!("no event at {position}").into());
        };
        after = last.position;
        if let Some(found) = page.into_iter().find(|e| e.position == position) {
            return Ok(found);
        }
    }
}

fn cents(amount: u64) -> String {
    format!("{}.{:02}", amount / 100, amount % 100)
}
