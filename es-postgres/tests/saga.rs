//! Sagas on PostgreSQL: a money transfer across two accounts, with compensation when the
//! deposit is refused, delivered exactly once in effect through crashes and redeliveries.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use es_core::{
    Aggregate, BoxError, CommandContext, CommandDispatcher, CommandError, CommandHandler,
    DomainEvent, Envelope, EventStore, Repository, Saga, StreamId,
};
use es_postgres::testing::TestDatabase;
use es_postgres::{PgEventStore, PgSagaRunner};
use rand::Rng;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug)]
enum AccountCommand {
    Open(i64),
    Debit { transfer: String, amount: i64 },
    Credit { transfer: String, amount: i64 },
}

#[derive(Clone, Debug, PartialEq, DomainEvent, Serialize, Deserialize)]
#[event(apply_trait = ApplyAccount)]
enum AccountEvent {
    Opened { balance: i64 },
    Debited { transfer: String, amount: i64 },
    Credited { transfer: String, amount: i64 },
}

#[derive(Debug, thiserror::Error)]
enum AccountError {
    #[error("insufficient funds")]
    Insufficient,
    #[error("no such open account")]
    NotOpen,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(category = "acct", command = AccountCommand, event = AccountEvent, error = AccountError)]
struct Account {
    open: bool,
    balance: i64,
}

impl Account {
    fn decide(&self, command: &AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        match command {
            AccountCommand::Open(balance) => Ok(vec![AccountEvent::Opened { balance: *balance }]),
            _ if !self.open => Err(AccountError::NotOpen),
            AccountCommand::Debit { amount, .. } if *amount > self.balance => {
                Err(AccountError::Insufficient)
            }
            AccountCommand::Debit { transfer, amount } => Ok(vec![AccountEvent::Debited {
                transfer: transfer.clone(),
                amount: *amount,
            }]),
            AccountCommand::Credit { transfer, amount } => Ok(vec![AccountEvent::Credited {
                transfer: transfer.clone(),
                amount: *amount,
            }]),
        }
    }
}

impl ApplyAccount for Account {
    fn on_opened(&mut self, balance: &i64) {
        self.open = true;
        self.balance = *balance;
    }
    fn on_debited(&mut self, _: &str, amount: &i64) {
        self.balance -= amount;
    }
    fn on_credited(&mut self, _: &str, amount: &i64) {
        self.balance += amount;
    }
}

#[derive(Clone, Debug)]
enum TransferCommand {
    Request {
        from: String,
        to: String,
        amount: i64,
    },
    Fail {
        stage: String,
    },
    Finish {
        outcome: String,
    },
}

#[derive(Clone, Debug, PartialEq, DomainEvent, Serialize, Deserialize)]
#[event(apply_trait = ApplyTransfer)]
enum TransferEvent {
    Requested {
        from: String,
        to: String,
        amount: i64,
    },
    StepFailed {
        stage: String,
    },
    Finished {
        outcome: String,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

#[derive(Clone, Debug, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(category = "transfer", command = TransferCommand, event = TransferEvent, error = Never)]
struct Transfer {
    outcome: Option<String>,
}

impl Transfer {
    fn decide(&self, command: &TransferCommand) -> Result<Vec<TransferEvent>, Never> {
        Ok(vec![match command.clone() {
            TransferCommand::Request { from, to, amount } => {
                TransferEvent::Requested { from, to, amount }
            }
            TransferCommand::Fail { stage } => TransferEvent::StepFailed { stage },
            TransferCommand::Finish { outcome } => TransferEvent::Finished { outcome },
        }])
    }
}

impl ApplyTransfer for Transfer {
    fn on_requested(&mut self, _: &str, _: &str, _: &i64) {}
    fn on_step_failed(&mut self, _: &str) {}
    fn on_finished(&mut self, outcome: &str) {
        self.outcome = Some(outcome.to_owned());
    }
}

/// What the saga listens to: the transfer's events and the accounts' debits and credits.
#[derive(Clone, Debug, PartialEq, DomainEvent, Serialize, Deserialize)]
enum Flow {
    Requested {
        from: String,
        to: String,
        amount: i64,
    },
    StepFailed {
        stage: String,
    },
    Debited {
        transfer: String,
        amount: i64,
    },
    Credited {
        transfer: String,
        amount: i64,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
enum Step {
    Debit {
        account: String,
        amount: i64,
    },
    Credit {
        account: String,
        amount: i64,
        refund: bool,
    },
    Finish {
        outcome: String,
    },
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct TransferState {
    from: String,
    to: String,
    amount: i64,
    finished: bool,
    #[serde(default)]
    seen: Vec<String>,
}

/// Debit the source, credit the target; if the credit is refused, refund the source.
struct TransferSaga;

impl Saga for TransferSaga {
    type Event = Flow;
    type State = TransferState;
    type Command = (String, Step);

    fn name(&self) -> &str {
        "transfer_saga"
    }

    fn instance_of(&self, event: &Envelope<Flow>) -> Option<String> {
        match &event.payload {
            Flow::Requested { .. } | Flow::StepFailed { .. } => {
                Some(event.stream_id.id().to_owned())
            }
            Flow::Debited { transfer, .. } | Flow::Credited { transfer, .. } => {
                Some(transfer.clone())
            }
        }
    }

    fn react(&self, state: &mut TransferState, event: &Envelope<Flow>) -> Vec<(String, Step)> {
        let transfer = self.instance_of(event).unwrap_or_default();
        let seen = format!("{} {}", event.event_type, event.event_id);
        let step = match &event.payload {
            Flow::Requested { from, to, amount } => {
                *state = TransferState {
                    from: from.clone(),
                    to: to.clone(),
                    amount: *amount,
                    finished: false,
                    seen: Vec::new(),
                };
                Step::Debit {
                    account: from.clone(),
                    amount: *amount,
                }
            }
            Flow::Debited { .. } => Step::Credit {
                account: state.to.clone(),
                amount: state.amount,
                refund: false,
            },
            Flow::Credited { .. } if event.stream_id.id() == state.to => Step::Finish {
                outcome: "completed".into(),
            },
            Flow::Credited { .. } => Step::Finish {
                outcome: "refunded".into(),
            },
            Flow::StepFailed { stage } if stage == "debit" => Step::Finish {
                outcome: "rejected".into(),
            },
            Flow::StepFailed { .. } => Step::Credit {
                account: state.from.clone(),
                amount: state.amount,
                refund: true,
            },
        };
        if let Step::Finish { .. } = step {
            state.finished = true;
        }
        state.seen.push(seen);
        vec![(transfer, step)]
    }
}

struct Bank {
    accounts: CommandHandler<Account>,
    transfers: CommandHandler<Transfer>,
    /// Pretends to crash after a command ran, before the outbox forgets it, this often (%).
    lose_acks: u32,
    lost: AtomicU32,
}

#[async_trait]
impl CommandDispatcher<(String, Step)> for Bank {
    async fn dispatch(
        &self,
        (transfer, step): (String, Step),
        context: CommandContext,
    ) -> Result<(), BoxError> {
        let (account, command, stage) = match step {
            Step::Debit { account, amount } => (
                account,
                AccountCommand::Debit {
                    transfer: transfer.clone(),
                    amount,
                },
                "debit",
            ),
            Step::Credit {
                account,
                amount,
                refund,
            } => (
                account,
                AccountCommand::Credit {
                    transfer: transfer.clone(),
                    amount,
                },
                if refund { "refund" } else { "credit" },
            ),
            Step::Finish { outcome } => {
                self.transfers
                    .execute_with(&transfer, TransferCommand::Finish { outcome }, context)
                    .await?;
                return self.maybe_lose_ack();
            }
        };
        match self
            .accounts
            .execute_with(&account, command, context.clone())
            .await
        {
            Ok(_) => {}
            Err(CommandError::Domain(_)) => {
                // A refusal is an outcome: recorded, idempotently, for the saga to react to.
                let record = context.follow_up(0);
                self.transfers
                    .execute_with(
                        &transfer,
                        TransferCommand::Fail {
                            stage: stage.into(),
                        },
                        record,
                    )
                    .await?;
            }
            Err(other) => return Err(other.into()),
        }
        self.maybe_lose_ack()
    }
}

impl Bank {
    fn maybe_lose_ack(&self) -> Result<(), BoxError> {
        if rand::rng().random_range(0..100) < self.lose_acks {
            self.lost.fetch_add(1, Ordering::SeqCst);
            return Err("lost the acknowledgement after the command ran".into());
        }
        Ok(())
    }
}

fn bank(db: &TestDatabase, lose_acks: u32) -> Bank {
    bank_on(&db.store, lose_acks)
}

fn bank_on(store: &PgEventStore, lose_acks: u32) -> Bank {
    let store: Arc<dyn EventStore> = Arc::new(store.clone());
    Bank {
        accounts: CommandHandler::new(Arc::clone(&store)),
        transfers: CommandHandler::new(store),
        lose_acks,
        lost: AtomicU32::new(0),
    }
}

fn runner(db: &TestDatabase, lose_acks: u32) -> PgSagaRunner<TransferSaga, Bank> {
    runner_on(&db.store, lose_acks)
}

fn runner_on(store: &PgEventStore, lose_acks: u32) -> PgSagaRunner<TransferSaga, Bank> {
    PgSagaRunner::new(store.clone(), TransferSaga, bank_on(store, lose_acks))
        .configure(|r| {
            r.poll_interval(Duration::from_millis(20))
                .lock_retry_interval(Duration::from_millis(20))
                .batch_size(7)
        })
        .dispatch_interval(Duration::from_millis(10))
}

/// The state of aggregate `id`, loaded from the store.
async fn load<A: Aggregate>(db: &TestDatabase, id: &str) -> A {
    Repository::<A>::new(Arc::new(db.store.clone()))
        .load(&StreamId::for_aggregate(A::CATEGORY, id).unwrap())
        .await
        .unwrap()
        .state
}

async fn balance(db: &TestDatabase, account: &str) -> i64 {
    load::<Account>(db, account).await.balance
}

async fn outcome(db: &TestDatabase, transfer: &str) -> Option<String> {
    load::<Transfer>(db, transfer).await.outcome
}

/// Drives the saga until every transfer in `ids` has an outcome and no command waits. Reads
/// may lag behind commits while other tests hold the cluster-wide horizon, so it polls.
async fn settle(db: &TestDatabase, runner: &PgSagaRunner<TransferSaga, Bank>, ids: &[String]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        runner.catch_up().await.unwrap();
        let _ = runner.dispatch_pending().await;
        let mut done = runner.pending().await.unwrap() == 0;
        for id in ids {
            done &= outcome(db, id).await.is_some();
        }
        if done {
            return;
        }
        if std::time::Instant::now() > deadline {
            let mut missing = Vec::new();
            for id in ids {
                if outcome(db, id).await.is_none() {
                    let stream = StreamId::for_aggregate("transfer", id).unwrap();
                    let first = db.store.read_stream_to_vec(&stream, 1).await.unwrap();
                    let chain: Vec<String> = match first.first() {
                        Some(e) => db
                            .store
                            .read_correlated(e.correlation_id, 100)
                            .await
                            .unwrap()
                            .iter()
                            .map(|e| format!("{} {} {}", e.stream_id, e.event_type, e.event_id))
                            .collect(),
                        None => Vec::new(),
                    };
                    let state = runner.state(id).await.unwrap();
                    let mentions: Vec<(String, String, String, uuid::Uuid)> =
                        sqlx::query_as(sqlx::AssertSqlSafe(format!(
                            "SELECT stream_id, event_type, payload::text, correlation_id \
                             FROM \"{}\".events WHERE payload::text LIKE $1",
                            db.schema
                        )))
                        .bind(format!("%\"{id}\"%"))
                        .fetch_all(&db.pool)
                        .await
                        .unwrap();
                    missing.push(format!("{id}: mentioned by {mentions:?}"));
                    missing.push(format!("{id}: state {state:?}, events {chain:?}"));
                }
            }
            let outbox: Vec<(String, i32, Option<String>)> =
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT command::text, attempts, last_error FROM \"{}\".saga_outbox",
                    db.schema
                )))
                .fetch_all(&db.pool)
                .await
                .unwrap();
            let activity: Vec<(Option<String>, Option<String>, Option<String>)> = sqlx::query_as(
                "SELECT state, backend_xid::text, left(query, 120) FROM pg_stat_activity \
                 WHERE backend_xid IS NOT NULL OR state = 'idle in transaction'",
            )
            .fetch_all(&db.pool)
            .await
            .unwrap();
            panic!(
                "the saga did not settle: no outcome for {missing:?}; status {:?}; outbox \
                 {outbox:?}; transactions {activity:?}",
                runner.feed().status().await
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_completes_is_rejected_or_is_refunded() {
    let db = TestDatabase::new().await;
    let bank = bank(&db, 0);
    for (account, balance) in [("ann", 100), ("bob", 0)] {
        bank.accounts
            .execute(account, AccountCommand::Open(balance))
            .await
            .unwrap();
    }
    let first = CommandContext::new();
    let correlation = first.effective_correlation_id();
    for (id, from, to, amount, context) in [
        ("t1", "ann", "bob", 30, first),
        ("t2", "ann", "bob", 500, CommandContext::new()),
        ("t3", "ann", "nobody", 20, CommandContext::new()),
    ] {
        bank.transfers
            .execute_with(
                id,
                TransferCommand::Request {
                    from: from.into(),
                    to: to.into(),
                    amount,
                },
                context,
            )
            .await
            .unwrap();
    }
    let runner = runner(&db, 0);
    settle(&db, &runner, &["t1".into(), "t2".into(), "t3".into()]).await;

    assert_eq!(outcome(&db, "t1").await.as_deref(), Some("completed"));
    assert_eq!(outcome(&db, "t2").await.as_deref(), Some("rejected"));
    assert_eq!(outcome(&db, "t3").await.as_deref(), Some("refunded"));
    assert_eq!(balance(&db, "ann").await, 70);
    assert_eq!(balance(&db, "bob").await, 30);
    assert!(runner.state("t3").await.unwrap().unwrap().finished);

    // Every event the first transfer caused carries its correlation id.
    let chain: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT stream_id, event_type FROM \"{}\".events WHERE correlation_id = $1 \
         ORDER BY transaction_id, position",
        db.schema
    )))
    .bind(correlation)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let chain: Vec<_> = chain.iter().map(|(s, t)| format!("{s} {t}")).collect();
    assert_eq!(
        chain,
        [
            "transfer-t1 Requested",
            "acct-ann Debited",
            "acct-bob Credited",
            "transfer-t1 Finished"
        ]
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transfers_settle_exactly_once_through_crashes_and_lost_acknowledgements() {
    let db = TestDatabase::with_pool_size(16).await;
    let setup = bank(&db, 0);
    let accounts = ["a", "b", "c", "d"];
    for account in accounts {
        setup
            .accounts
            .execute(account, AccountCommand::Open(1_000))
            .await
            .unwrap();
    }
    let transfers = 60;
    for t in 0..transfers {
        let (from, to) = (accounts[t % 4], accounts[(t + 1) % 4]);
        // Every fifth one goes to an account that does not exist: refunded.
        let to = if t % 5 == 0 { "ghost" } else { to };
        setup
            .transfers
            .execute(
                &format!("x{t}"),
                TransferCommand::Request {
                    from: from.into(),
                    to: to.into(),
                    amount: (t as i64 % 7) + 1,
                },
            )
            .await
            .unwrap();
    }

    // Run the saga live, killing it at random points, with a dispatcher that loses a quarter of
    // its acknowledgements after the command ran.
    let mut kills = 0;
    for _ in 0..40 {
        // Each run is a process of its own, with its own connections, which die with it.
        let process = db.another_process(8).await;
        let runner = Arc::new(runner_on(&process, 25));
        let task = {
            let runner = Arc::clone(&runner);
            tokio::spawn(async move { runner.run(std::future::pending()).await })
        };
        let wait = rand::rng().random_range(5..80);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        task.abort();
        let _ = task.await;
        process.pool().close().await;
        kills += 1;
        let mut done = true;
        for t in 0..transfers {
            done &= outcome(&db, &format!("x{t}")).await.is_some();
        }
        if done {
            break;
        }
    }
    assert!(kills > 1, "the saga was killed mid-work at least once");
    let ids: Vec<String> = (0..transfers).map(|t| format!("x{t}")).collect();
    settle(&db, &runner(&db, 0), &ids).await;

    let mut expected = std::collections::HashMap::from(accounts.map(|a| (a, 1_000i64)));
    for t in 0..transfers {
        let outcome = outcome(&db, &format!("x{t}")).await;
        let (from, to, amount) = (accounts[t % 4], accounts[(t + 1) % 4], (t as i64 % 7) + 1);
        if t % 5 == 0 {
            assert_eq!(outcome.as_deref(), Some("refunded"), "transfer x{t}");
        } else {
            assert_eq!(outcome.as_deref(), Some("completed"), "transfer x{t}");
            *expected.get_mut(from).unwrap() -= amount;
            *expected.get_mut(to).unwrap() += amount;
        }
    }
    for account in accounts {
        assert_eq!(
            balance(&db, account).await,
            expected[account],
            "account {account} after {kills} kills"
        );
    }
    // Exactly one debit per transfer, whatever was redelivered.
    let debits: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{}\".events WHERE event_type = 'Debited'",
        db.schema
    )))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(debits, transfers as i64);
    db.drop().await;
}
