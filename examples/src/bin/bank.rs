//! The main example: a bank, end to end. Accounts and transfers are aggregates; a saga moves
//! transfer money and refunds when a credit is refused; a policy pays welcome bonuses; read
//! models follow the log; one correlation id traces a transfer through every stream.
//!
//! Runs on the in-memory store when `DATABASE_URL` is unset, and on PostgreSQL (schema
//! `bank_example` unless `--schema` names another, recreated each run) when it is set.

use std::sync::Arc;
use std::time::{Duration, Instant};

use es_core::trace::trace;
use es_core::{
    CommandDispatcher, CommandError, EventStore, ExpectedVersion, InMemoryEventStore,
    InMemorySnapshotStore, NewEvent, Saga, SagaRunner, SnapshotStore, StreamId,
};
use es_examples::account::{self, AccountCommand, AccountError};
use es_examples::bank::Bank;
use es_examples::projections::{AccountBalances, ActivityByType, TransferHistory};
use es_examples::transfer::TransferStatus;
use es_examples::transfer_saga::TransferSaga;
use es_examples::welcome_bonus::WelcomeBonus;
use es_postgres::{PgEventStore, PgSagaRunner, PgSnapshotStore, ProjectionRunner};
use tokio::sync::watch;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The PostgreSQL schema to (re)create and use when `DATABASE_URL` is set: `bank_example`, or
/// the one `--schema NAME` names.
fn schema_argument() -> Result<String, BoxError> {
    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next()) {
        (None, _) => Ok("bank_example".to_owned()),
        (Some("--schema"), Some(schema)) if args.next().is_none() => Ok(schema),
        _ => Err("usage: bank [--schema NAME]".into()),
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let started = Instant::now();
    let schema = schema_argument()?;
    let backend = Backend::open(&schema).await?;
    let bank = Bank::new(backend.store(), backend.snapshots());
    let workflows = Workflows::start(&backend, &bank);

    step(
        1,
        "Commands go to aggregates, which decide and record events.",
    );
    for (id, owner) in [("alice", "Alice"), ("bob", "Bob"), ("dave", "Dave")] {
        let open = AccountCommand::Open {
            owner: owner.into(),
            currency: "EUR".into(),
        };
        let opened = bank.accounts.execute(id, open).await?;
        println!(
            "   {owner} opened account {id} (stream account-{id}, version {})",
            opened.version
        );
    }
    let deposit = bank
        .accounts
        .execute("alice", AccountCommand::Deposit { amount: euros(100) })
        .await?;
    println!(
        "   alice deposited 100.00: event {:?}, balance {}",
        deposit.events[0],
        cents(deposit.state.balance)
    );

    step(2, "A policy reacts to events with commands (choreography).");
    workflows.settle().await?;
    for id in ["alice", "bob", "dave"] {
        let account = bank.accounts.load(id).await?;
        println!(
            "   the welcome-bonus policy saw {id}'s opening and deposited {}: balance {}",
            cents(WelcomeBonus::default().amount),
            cents(account.state.balance)
        );
    }

    step(
        3,
        "The domain refuses what breaks its rules, with its own error type.",
    );
    match bank
        .accounts
        .execute("bob", AccountCommand::Withdraw { amount: euros(500) })
        .await
    {
        Err(CommandError::Domain(AccountError::InsufficientFunds { balance, asked })) => println!(
            "   bob asked to withdraw {}, but holds {}: refused, nothing was written",
            cents(asked),
            cents(balance)
        ),
        other => return Err(format!("expected a refusal, got {other:?}").into()),
    }

    step(
        4,
        "Concurrent commands on one account: optimistic concurrency, retried on conflict.",
    );
    let before = bank.accounts.load("alice").await?.state.balance;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let accounts = bank.accounts.clone();
        tasks.push(tokio::spawn(async move {
            accounts
                .execute("alice", AccountCommand::Withdraw { amount: euros(1) })
                .await
        }));
    }
    for task in tasks {
        task.await??;
    }
    let alice = bank.accounts.load("alice").await?;
    println!(
        "   8 withdrawals of 1.00 at once: balance {} -> {}, version {} (no update lost)",
        cents(before),
        cents(alice.state.balance),
        alice.version
    );

    step(
        5,
        "Old events still load: an upcaster lifts them to the current schema.",
    );
    // Written as the first version of this code wrote openings: no currency.
    let legacy = serde_json::value::to_raw_value(&serde_json::json!({ "owner": "Carol" }))?;
    backend
        .store()
        .append(
            &StreamId::new("account-carol")?,
            ExpectedVersion::NoStream,
            vec![NewEvent::new("Opened", 1, legacy)],
        )
        .await?;
    let carol = bank.accounts.load("carol").await?;
    println!(
        "   account-carol holds an `Opened` event at schema version 1: {{\"owner\":\"Carol\"}}"
    );
    println!(
        "   loaded through the upcaster: owner {}, currency {} (version 1 accounts were in euros)",
        carol.state.owner.as_deref().unwrap_or("?"),
        carol.state.currency.as_deref().unwrap_or("?")
    );

    step(
        6,
        "A saga carries out transfers across accounts (orchestration).",
    );
    let dave = bank.accounts.load("dave").await?.state.balance;
    bank.accounts
        .execute("dave", AccountCommand::Withdraw { amount: dave })
        .await?;
    bank.accounts.execute("dave", AccountCommand::Close).await?;
    println!("   (dave withdrew {} and closed his account)", cents(dave));
    let transfers = [
        ("t-1", "alice", "bob", euros(25), "a plain transfer"),
        ("t-2", "bob", "alice", euros(1_000), "more than bob holds"),
        ("t-3", "alice", "dave", euros(10), "to a closed account"),
    ];
    let mut correlations = Vec::new();
    for (id, from, to, amount, what) in transfers {
        let correlation = bank.request_transfer(id, from, to, amount).await?;
        println!(
            "   requested {id}: {from} -> {to}, {} ({what})",
            cents(amount)
        );
        correlations.push(correlation);
    }
    workflows.settle().await?;
    for (id, ..) in transfers {
        let transfer = bank.transfers.load(id).await?.state;
        let outcome = match transfer.status {
            TransferStatus::Completed => "completed: debited, then credited".to_owned(),
            TransferStatus::Rejected => format!(
                "rejected at the debit, nothing moved ({})",
                transfer.reason.unwrap_or_default()
            ),
            TransferStatus::Cancelled => format!(
                "cancelled: debited, credit refused ({}), so the saga refunded the debit",
                transfer.reason.unwrap_or_default()
            ),
            other => format!("still {other:?}"),
        };
        println!("   {id} {outcome}");
    }
    for id in ["alice", "bob"] {
        let balance = bank.accounts.load(id).await?.state.balance;
        println!("   {id} now holds {}", cents(balance));
    }

    step(
        7,
        "One correlation id follows a transfer through every stream it touched.",
    );
    println!("   transfer t-3, correlation id {}:", correlations[2]);
    let drawn = trace(backend.store().as_ref(), correlations[2])
        .await?
        .ok_or("the transfer has events")?;
    for line in drawn.lines() {
        println!("     {line}");
    }
    println!("   (each event sits under the event that caused it)");

    step(
        8,
        "Snapshots bound how much of a long stream a load replays.",
    );
    let savings = AccountCommand::Open {
        owner: "Alice".into(),
        currency: "EUR".into(),
    };
    bank.accounts.execute("savings", savings).await?;
    workflows.settle().await?; // its welcome bonus
    for _ in 0..250 {
        bank.accounts
            .execute("savings", AccountCommand::Deposit { amount: euros(1) })
            .await?;
    }
    let loaded = bank.accounts.load("savings").await?;
    println!(
        "   savings: {} events, balance {}; loaded from the snapshot at version {}, replaying \
         only the {} events after it",
        loaded.version,
        cents(loaded.state.balance),
        loaded.snapshot_at,
        loaded.version - loaded.snapshot_at
    );

    step(
        9,
        "Projections keep read models up to date from the global log.",
    );
    backend.show_read_models().await?;

    workflows.stop().await?;
    println!("\nDone in {:.1} s.", started.elapsed().as_secs_f64());
    if let Backend::Postgres { store, .. } = backend {
        let schema = match store.schema().to_string() {
            default if default == "bank_example" => String::new(),
            other => format!("--schema {other} "),
        };
        println!(
            "Try: cargo run -p es-examples --features admin --bin bank-admin -- {schema}trace {}",
            correlations[2]
        );
    }
    Ok(())
}

fn step(n: u32, title: &str) {
    println!("\n{n}. {title}");
}

/// Amounts are kept in cents.
const fn euros(amount: u64) -> u64 {
    amount * 100
}

fn cents(amount: u64) -> String {
    format!("{}.{:02}", amount / 100, amount % 100)
}

/// account, owner, currency, balance, closed
type BalanceRow = (String, Option<String>, Option<String>, i64, bool);
/// transfer, from, to, amount, status, reason
type TransferRow = (String, String, String, i64, String, Option<String>);

/// Where the events live.
enum Backend {
    Memory {
        store: Arc<InMemoryEventStore>,
        snapshots: Arc<InMemorySnapshotStore>,
    },
    Postgres {
        store: PgEventStore,
        snapshots: Arc<PgSnapshotStore>,
    },
}

impl Backend {
    async fn open(schema: &str) -> Result<Self, BoxError> {
        let Ok(url) = std::env::var("DATABASE_URL") else {
            println!(
                "Running on the in-memory store (set DATABASE_URL to run the same on PostgreSQL)."
            );
            return Ok(Self::Memory {
                // The one place the upcasters are registered: every reader of the store
                // (repositories, projections, sagas) lifts old events through them.
                store: Arc::new(
                    InMemoryEventStore::new().with_upcasters(Arc::new(account::upcasters())),
                ),
                snapshots: Arc::new(InMemorySnapshotStore::new()),
            });
        };
        let pool = es_postgres::connect_pool(&url, 12).await?;
        let store =
            PgEventStore::with_schema(pool, schema)?.with_upcasters(Arc::new(account::upcasters()));
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            store.schema()
        )))
        .execute(store.pool())
        .await?;
        store.migrate().await?;
        println!("Running on PostgreSQL ({url}), schema {schema} (recreated).");
        let snapshots = Arc::new(PgSnapshotStore::new(&store));
        Ok(Self::Postgres { store, snapshots })
    }

    fn store(&self) -> Arc<dyn EventStore> {
        match self {
            Self::Memory { store, .. } => store.clone(),
            Self::Postgres { store, .. } => Arc::new(store.clone()),
        }
    }

    fn snapshots(&self) -> Arc<dyn SnapshotStore> {
        match self {
            Self::Memory { snapshots, .. } => snapshots.clone(),
            Self::Postgres { snapshots, .. } => snapshots.clone(),
        }
    }

    async fn show_read_models(&self) -> Result<(), BoxError> {
        let Self::Postgres { store, .. } = self else {
            println!(
                "   Read models live in PostgreSQL: run again with DATABASE_URL set to see the \
                 account balances, transfer history and activity tables built here."
            );
            return Ok(());
        };
        let schema = store.schema();
        let balances = ProjectionRunner::new(store.clone(), AccountBalances::new(schema));
        let history = ProjectionRunner::new(store.clone(), TransferHistory::new(schema));
        let activity = ProjectionRunner::new(store.clone(), ActivityByType::new(schema));
        let read = [
            balances.catch_up().await?,
            history.catch_up().await?,
            activity.catch_up().await?,
        ];
        println!(
            "   three projections caught up, reading {} events each; each batch's writes commit \
             with its checkpoint",
            read[0]
        );

        let rows: Vec<BalanceRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT account, owner, currency, balance, closed FROM {schema}.account_balances \
                 ORDER BY account"
        )))
        .fetch_all(store.pool())
        .await?;
        println!("   {schema}.account_balances:");
        for (account, owner, currency, balance, closed) in rows {
            println!(
                "     {account:<8} {:<6} {:>9} {}{}",
                owner.unwrap_or_default(),
                cents(balance.max(0) as u64),
                currency.unwrap_or_default(),
                if closed { "  (closed)" } else { "" }
            );
        }
        let rows: Vec<TransferRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT transfer, from_account, to_account, amount, status, reason \
                 FROM {schema}.transfer_history ORDER BY transfer"
        )))
        .fetch_all(store.pool())
        .await?;
        println!("   {schema}.transfer_history:");
        for (transfer, from, to, amount, status, reason) in rows {
            println!(
                "     {transfer}  {from:>5} -> {to:<5} {:>9}  {status}{}",
                cents(amount.max(0) as u64),
                reason.map(|r| format!(" ({r})")).unwrap_or_default()
            );
        }
        let rows: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT event_type, events FROM {schema}.activity_by_type \
             ORDER BY events DESC, event_type"
        )))
        .fetch_all(store.pool())
        .await?;
        let counts: Vec<String> = rows.iter().map(|(t, n)| format!("{t} {n}")).collect();
        println!("   {schema}.activity_by_type: {}", counts.join(", "));
        println!(
            "   (bank-admin status | rebuild <projection> | trace <correlation id> operate them)"
        );
        Ok(())
    }
}

/// A saga runner as the demo runs it: polling every 200 ms besides the notifications, and
/// looking for commands and deadlines every 20 ms, so each step settles quickly.
fn live<S>(runner: PgSagaRunner<S, Bank>) -> Arc<PgSagaRunner<S, Bank>>
where
    S: Saga,
    Bank: CommandDispatcher<S::Command>,
{
    Arc::new(
        runner
            .configure(|r| r.poll_interval(Duration::from_millis(200)))
            .dispatch_interval(Duration::from_millis(20)),
    )
}

/// The transfer saga and the welcome-bonus policy, on the runner that fits the store.
enum Workflows {
    /// In memory: each `settle` feeds the runners until no event is left.
    Memory {
        transfers: Box<SagaRunner<TransferSaga, Bank>>,
        bonuses: Box<SagaRunner<WelcomeBonus, Bank>>,
    },
    /// On PostgreSQL: the runners run live in the background, as in a service, following the
    /// log through LISTEN/NOTIFY; `settle` waits until they have nothing left to do.
    Postgres {
        transfers: Arc<PgSagaRunner<TransferSaga, Bank>>,
        bonuses: Arc<PgSagaRunner<WelcomeBonus, Bank>>,
        stop: watch::Sender<bool>,
        tasks: Vec<tokio::task::JoinHandle<Result<(), es_postgres::ProjectionError>>>,
    },
}

impl Workflows {
    fn start(backend: &Backend, bank: &Bank) -> Self {
        match backend {
            Backend::Memory { store, .. } => {
                let (transfers, bonuses) = bank.memory_sagas(store.clone());
                Self::Memory {
                    transfers: Box::new(transfers),
                    bonuses: Box::new(bonuses),
                }
            }
            Backend::Postgres { store, .. } => {
                let (transfers, bonuses) = bank.pg_sagas(store);
                let (transfers, bonuses) = (live(transfers), live(bonuses));
                let (stop, stopped) = watch::channel(false);
                let run = |stopped: watch::Receiver<bool>| async move {
                    let mut stopped = stopped;
                    let _ = stopped.wait_for(|stop| *stop).await;
                };
                let tasks = vec![
                    tokio::spawn({
                        let runner = Arc::clone(&transfers);
                        let shutdown = run(stopped.clone());
                        async move { runner.run(shutdown).await }
                    }),
                    tokio::spawn({
                        let runner = Arc::clone(&bonuses);
                        let shutdown = run(stopped);
                        async move { runner.run(shutdown).await }
                    }),
                ];
                Self::Postgres {
                    transfers,
                    bonuses,
                    stop,
                    tasks,
                }
            }
        }
    }

    /// Returns once every event written so far has been handled and every command it issued
    /// has run.
    async fn settle(&self) -> Result<(), BoxError> {
        match self {
            Self::Memory { transfers, bonuses } => loop {
                if transfers.catch_up().await? + bonuses.catch_up().await? == 0 {
                    return Ok(());
                }
            },
            Self::Postgres {
                transfers, bonuses, ..
            } => {
                let deadline = Instant::now() + Duration::from_secs(30);
                let mut quiet = 0;
                while quiet < 2 {
                    if Instant::now() > deadline {
                        return Err("the sagas did not settle within 30 s".into());
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                    let t = transfers.feed().status().await?;
                    let b = bonuses.feed().status().await?;
                    let idle = t.lag_events
                        + b.lag_events
                        + transfers.pending().await?
                        + bonuses.pending().await?
                        == 0;
                    quiet = if idle { quiet + 1 } else { 0 };
                }
                Ok(())
            }
        }
    }

    async fn stop(self) -> Result<(), BoxError> {
        if let Self::Postgres { stop, tasks, .. } = self {
            stop.send(true)?;
            for task in tasks {
                task.await??;
            }
        }
        Ok(())
    }
}
