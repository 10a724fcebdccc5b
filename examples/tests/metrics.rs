//! The metrics an operator scrapes, read back from the Prometheus text after a run of the bank:
//! commands and their refusals, appends with a conflict and a repeat, a saga's commands, a
//! projection that parks an event and falls behind, and the state of a runner.
//!
//! One test in this binary: the recorder is the process's.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use es_admin::{Admin, prometheus_recorder};
use es_core::{
    BoxError, CommandContext, CommandError, Envelope, EventStore, ExpectedVersion, NewEvent,
    StreamId,
};
use es_examples::account::{self, AccountCommand, AccountEvent};
use es_examples::bank::Bank;
use es_postgres::sqlx::{self, PgConnection};
use es_postgres::testing::TestDatabase;
use es_postgres::{
    ErrorPolicy, PgProjection, PgSnapshotStore, ProjectionRunner, SchemaName, async_trait,
};

/// Counts deposits; a deposit of 13 cents is unlucky and fails.
struct Picky {
    schema: SchemaName,
}

#[async_trait]
impl PgProjection for Picky {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        "picky"
    }

    async fn setup(&self, conn: &mut PgConnection) -> Result<(), BoxError> {
        sqlx::raw_sql(self.schema.sql(
            "CREATE TABLE IF NOT EXISTS {schema}.picky (n bigint NOT NULL); \
             INSERT INTO {schema}.picky SELECT 0 WHERE NOT EXISTS (SELECT FROM {schema}.picky)",
        ))
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), BoxError> {
        sqlx::query(self.schema.sql("UPDATE {schema}.picky SET n = 0"))
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &Envelope<AccountEvent>,
    ) -> Result<(), BoxError> {
        if let AccountEvent::Deposited { amount } = event.payload {
            if amount == 13 {
                return Err("13 cents is unlucky".into());
            }
            sqlx::query(self.schema.sql("UPDATE {schema}.picky SET n = n + 1"))
                .execute(conn)
                .await?;
        }
        Ok(())
    }
}

/// One sample of the text: a metric name and its labels.
struct Sample {
    name: String,
    labels: HashMap<String, String>,
    value: f64,
}

fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|p| !p.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap();
                    (k.to_owned(), v.trim_matches('"').to_owned())
                })
                .collect();
            Sample {
                name: name.to_owned(),
                labels,
                value: value.parse().unwrap(),
            }
        })
        .collect()
}

/// The value of the one sample named `name` with (at least) these labels.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)], text: &str) -> f64 {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?} in\n{text}");
    found[0].value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_reads_commands_appends_sagas_and_a_failing_projection_in_the_metrics() {
    let handle = prometheus_recorder().unwrap();
    let db = TestDatabase::new().await;
    let store = db
        .store
        .clone()
        .with_upcasters(Arc::new(account::upcasters()));
    let schema = store.schema().to_string();
    let bank = Bank::new(
        Arc::new(store.clone()),
        Arc::new(PgSnapshotStore::new(&store)),
    );
    let picky = || {
        ProjectionRunner::new(
            store.clone(),
            Picky {
                schema: db.schema.clone(),
            },
        )
        .error_policy(ErrorPolicy::retry_then_park(1, Duration::from_millis(10)))
        .poll_interval(Duration::from_millis(50))
        .lock_retry_interval(Duration::from_millis(50))
    };
    let (transfers, _) = bank.pg_sagas(&store);
    let (observed_transfers, _) = bank.pg_sagas(&store);
    let admin = Admin::new(store.clone())
        .projection(picky())
        .saga(observed_transfers);

    for (id, owner) in [("alice", "Alice"), ("bob", "Bob")] {
        let open = AccountCommand::Open {
            owner: owner.into(),
            currency: "EUR".into(),
        };
        bank.accounts
            .execute_with(id, open, CommandContext::new())
            .await
            .unwrap();
    }
    for amount in [10_000, 13, 7] {
        bank.accounts
            .execute_with(
                "alice",
                AccountCommand::Deposit { amount },
                CommandContext::new(),
            )
            .await
            .unwrap();
    }
    let refused = bank
        .accounts
        .execute_with(
            "bob",
            AccountCommand::Withdraw { amount: 500 },
            CommandContext::new(),
        )
        .await;
    assert!(matches!(refused, Err(CommandError::Domain(_))));

    // One conflict and one repeat, straight on the store.
    let stream = StreamId::new("account-alice").unwrap();
    let deposit = NewEvent::from_event(&AccountEvent::Deposited { amount: 1 }).unwrap();
    let conflict = store
        .append(&stream, ExpectedVersion::Exact(1), vec![deposit.clone()])
        .await;
    assert!(conflict.is_err());
    store
        .append(&stream, ExpectedVersion::Any, vec![deposit.clone()])
        .await
        .unwrap();
    let repeat = store
        .append(&stream, ExpectedVersion::Any, vec![deposit])
        .await
        .unwrap();
    assert!(repeat.deduplicated);

    bank.request_transfer("t-1", "alice", "bob", 2_500)
        .await
        .unwrap();
    for _ in 0..20 {
        db.settle().await;
        transfers.catch_up().await.unwrap();
        if transfers.dispatch_pending().await.unwrap() == 0
            && transfers.pending().await.unwrap() == 0
        {
            break;
        }
    }
    db.settle().await;
    picky().catch_up().await.unwrap();
    // Three events the projection has not seen.
    for _ in 0..3 {
        bank.accounts
            .execute_with(
                "bob",
                AccountCommand::Deposit { amount: 1 },
                CommandContext::new(),
            )
            .await
            .unwrap();
    }
    db.settle().await;

    assert_eq!(admin.observe().await, 0, "every target observed");
    let text = handle.render();
    println!("{text}");
    let samples = parse(&text);
    let at = |name: &str, labels: &[(&str, &str)]| value(&samples, name, labels, &text);

    // Commands: 2 opens, 3 + 3 deposits, 3 saga steps executed; 1 refusal.
    assert_eq!(
        at(
            "es_commands_total",
            &[("aggregate", "account"), ("outcome", "refused")]
        ),
        1.0
    );
    assert_eq!(
        at(
            "es_commands_total",
            &[("aggregate", "account"), ("outcome", "executed")]
        ),
        10.0
    );
    assert_eq!(
        at(
            "es_commands_total",
            &[("aggregate", "transfer"), ("outcome", "executed")]
        ),
        2.0
    );
    assert_eq!(
        at(
            "es_command_duration_seconds_count",
            &[("aggregate", "account"), ("outcome", "executed")]
        ),
        10.0
    );
    // Appends: every command's, the direct ones; one conflict, one repeat.
    let s = schema.as_str();
    assert_eq!(
        at(
            "es_appends_total",
            &[("schema", s), ("outcome", "conflict")]
        ),
        1.0
    );
    assert_eq!(
        at("es_appends_total", &[("schema", s), ("outcome", "repeat")]),
        1.0
    );
    assert_eq!(
        at("es_appends_total", &[("schema", s), ("outcome", "written")]),
        13.0
    );
    assert_eq!(at("es_appended_events_total", &[("schema", s)]), 13.0);
    assert_eq!(
        at("es_append_duration_seconds_count", &[("schema", s)]),
        15.0
    );
    let head = store.head().await.unwrap();
    assert_eq!(
        at("es_log_head_position", &[("schema", s)]),
        head.sequence as f64
    );
    at("es_horizon_held_back_events", &[("schema", s)]);
    // The saga: three commands dispatched, none waiting.
    let saga = [("saga", "transfer_saga")];
    assert_eq!(
        at(
            "es_saga_commands_total",
            &[("saga", "transfer_saga"), ("outcome", "dispatched")]
        ),
        3.0
    );
    assert_eq!(at("es_saga_outbox_pending", &saga), 0.0);
    assert_eq!(at("es_saga_outbox_dead_lettered", &saga), 0.0);
    assert_eq!(
        at(
            "es_projection_lag_events",
            &[("projection", "transfer_saga")]
        ),
        3.0
    );
    // The projection: the unlucky deposit parked, three events behind, nobody running it.
    let picky_label = [("projection", "picky")];
    assert_eq!(at("es_projection_parked_events", &picky_label), 1.0);
    assert_eq!(at("es_projection_lag_events", &picky_label), 3.0);
    assert!(at("es_projection_lag_seconds", &picky_label) > 0.0);
    // Every event of the log read so far (ten), those it does not take included.
    assert_eq!(at("es_projection_events_total", &picky_label), 10.0);
    assert_eq!(
        at(
            "es_projection_state",
            &[("projection", "picky"), ("state", "idle")]
        ),
        1.0
    );

    // Running it: caught up, and its state says so.
    let runner = Arc::new(picky());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn({
        let runner = Arc::clone(&runner);
        async move {
            runner
                .run(async {
                    let _ = stopped.await;
                })
                .await
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert_eq!(admin.observe().await, 0, "every target observed");
        let text = handle.render();
        let samples = parse(&text);
        let running_now = value(
            &samples,
            "es_projection_state",
            &[("projection", "picky"), ("state", "running")],
            &text,
        );
        let lag = value(&samples, "es_projection_lag_events", &picky_label, &text);
        let read = value(&samples, "es_projection_events_total", &picky_label, &text);
        // The counter moves once the batch's commit has returned to the runner, a moment
        // after the checkpoint is visible to observe().
        if running_now == 1.0 && lag == 0.0 && read == 13.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the runner did not catch up\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    db.drop().await;
}
