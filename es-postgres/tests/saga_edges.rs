//! Sagas at the edges: command ids that never collide (two sagas on one event, an event an
//! upcaster split), a feed that fails ends the run, deadlines listed twice are refused.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use es_core::{
    Aggregate, BoxError, CommandContext, CommandDispatcher, CommandHandler, Deadline, DomainEvent,
    Envelope, EventStore, ExpectedVersion, NewEvent, Repository, Saga, SagaRunner, StreamId,
    Upcasted, Upcasters,
};
use es_postgres::testing::TestDatabase;
use es_postgres::{PgEventStore, PgSagaRunner};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// What the sagas read: an order's items.
#[derive(Clone, Debug, PartialEq, DomainEvent, Serialize, Deserialize)]
enum ShopEvent {
    Placed { order: String, item: String },
}

#[derive(Clone, Debug)]
enum NoteCommand {
    Write(String),
}

#[derive(Clone, Debug, PartialEq, DomainEvent, Serialize, Deserialize)]
#[event(apply_trait = ApplyNote)]
enum NoteEvent {
    Written { text: String },
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

/// A list of lines: what the sagas' commands write.
#[derive(Clone, Debug, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(category = "note", command = NoteCommand, event = NoteEvent, error = Never)]
struct Note {
    lines: Vec<String>,
}

impl Note {
    fn decide(&self, command: &NoteCommand) -> Result<Vec<NoteEvent>, Never> {
        let NoteCommand::Write(text) = command;
        Ok(vec![NoteEvent::Written { text: text.clone() }])
    }
}

impl ApplyNote for Note {
    fn on_written(&mut self, text: &str) {
        self.lines.push(text.to_owned());
    }
}

/// Writes a line to note `{prefix}-{order}` for each item placed.
struct Writer {
    name: &'static str,
    prefix: &'static str,
    /// Lists one deadline twice, which no runner may accept.
    twice: bool,
}

impl Saga for Writer {
    type Event = ShopEvent;
    type State = u32;
    /// (note id, line)
    type Command = (String, String);

    fn name(&self) -> &str {
        self.name
    }

    fn instance_of(&self, event: &Envelope<ShopEvent>) -> Option<String> {
        let ShopEvent::Placed { order, .. } = &event.payload;
        Some(order.clone())
    }

    fn react(&self, seen: &mut u32, event: &Envelope<ShopEvent>) -> Vec<(String, String)> {
        *seen += 1;
        let ShopEvent::Placed { order, item } = &event.payload;
        vec![(format!("{}-{order}", self.prefix), item.clone())]
    }

    fn deadlines(&self, seen: &u32) -> Vec<Deadline> {
        let due = chrono::DateTime::UNIX_EPOCH + chrono::Duration::days(i64::from(*seen) + 30_000);
        if self.twice {
            vec![Deadline::new("remind", due), Deadline::new("remind", due)]
        } else {
            Vec::new()
        }
    }
}

struct Notes(CommandHandler<Note>);

#[async_trait]
impl CommandDispatcher<(String, String)> for Notes {
    async fn dispatch(
        &self,
        (note, line): (String, String),
        context: CommandContext,
    ) -> Result<(), BoxError> {
        self.0
            .execute_with(&note, NoteCommand::Write(line), context)
            .await?;
        Ok(())
    }
}

/// Old orders were stored as one `PlacedMany` event listing every item: split into one
/// `Placed` per item, each keeping the stored event's id.
fn upcasters() -> Arc<Upcasters> {
    Arc::new(Upcasters::new().add_transform("PlacedMany", 1, |payload| {
        let order = payload["order"].clone();
        let items = payload["items"].as_array().cloned().unwrap_or_default();
        Ok(items
            .into_iter()
            .map(|item| Upcasted {
                event_type: "Placed".into(),
                schema_version: 1,
                payload: json!({ "order": order, "item": item }),
            })
            .collect())
    }))
}

fn runner(store: &PgEventStore, saga: Writer) -> PgSagaRunner<Writer, Notes> {
    let notes = Notes(CommandHandler::new(Arc::new(store.clone())));
    PgSagaRunner::new(store.clone(), saga, notes).configure(|r| {
        r.with_upcasters(upcasters())
            .poll_interval(Duration::from_millis(20))
            .lock_retry_interval(Duration::from_millis(20))
    })
}

fn writer(name: &'static str, prefix: &'static str) -> Writer {
    Writer {
        name,
        prefix,
        twice: false,
    }
}

async fn lines(db: &TestDatabase, note: &str) -> Vec<String> {
    let repository = Repository::<Note>::new(Arc::new(db.store.clone()));
    let stream = StreamId::for_aggregate("note", note).unwrap();
    let mut lines = repository.load(&stream).await.unwrap().state.lines;
    lines.sort();
    lines
}

fn placed(order: &str, item: &str) -> NewEvent {
    NewEvent::from_event(&ShopEvent::Placed {
        order: order.into(),
        item: item.into(),
    })
    .unwrap()
}

/// Feeds `runner` until it has read `events` events (the cluster's horizon may hold some back
/// for a moment), then runs its outbox.
async fn settle(runner: &PgSagaRunner<Writer, Notes>, events: u64) {
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
    runner.dispatch_pending().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sagas_reacting_to_one_event_both_have_their_commands_run() {
    let db = TestDatabase::new().await;
    db.store
        .append(
            &StreamId::new("shop-1").unwrap(),
            ExpectedVersion::NoStream,
            vec![placed("o1", "book")],
        )
        .await
        .unwrap();
    let mailer = runner(&db.store, writer("mailer", "mail"));
    let biller = runner(&db.store, writer("biller", "bill"));
    settle(&mailer, 1).await;
    settle(&biller, 1).await;
    assert_eq!(lines(&db, "mail-o1").await, vec!["book"]);
    assert_eq!(
        lines(&db, "bill-o1").await,
        vec!["book"],
        "not taken for the mailer's"
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_an_upcaster_split_issues_a_command_for_each_part() {
    let db = TestDatabase::new().await;
    let stored = NewEvent::new(
        "PlacedMany",
        1,
        serde_json::value::to_raw_value(&json!({ "order": "o2", "items": ["pen", "ink"] }))
            .unwrap(),
    );
    db.store
        .append(
            &StreamId::new("shop-2").unwrap(),
            ExpectedVersion::NoStream,
            vec![stored],
        )
        .await
        .unwrap();
    let mailer = runner(&db.store, writer("mailer", "mail"));
    settle(&mailer, 1).await;
    assert_eq!(lines(&db, "mail-o2").await, vec!["ink", "pen"]);
    assert_eq!(mailer.state("o2").await.unwrap(), Some(2));

    // The in-memory runner derives the same, distinct ids.
    let memory: Arc<dyn EventStore> = Arc::new(es_core::InMemoryEventStore::new());
    let stored = NewEvent::new(
        "PlacedMany",
        1,
        serde_json::value::to_raw_value(&json!({ "order": "o3", "items": ["cup", "mug"] }))
            .unwrap(),
    );
    memory
        .append(
            &StreamId::new("shop-3").unwrap(),
            ExpectedVersion::NoStream,
            vec![stored],
        )
        .await
        .unwrap();
    let notes = Notes(CommandHandler::new(Arc::clone(&memory)));
    let in_memory = SagaRunner::new(Arc::clone(&memory), writer("mailer", "mail"), notes)
        .with_upcasters(upcasters());
    in_memory.catch_up().await.unwrap();
    let note = Repository::<Note>::new(memory)
        .load(&StreamId::new("note-mail-o3").unwrap())
        .await
        .unwrap();
    assert_eq!(note.state.lines.len(), 2);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_run_returns_the_error_when_its_feed_fails() {
    let db = TestDatabase::new().await;
    // A state this saga cannot read (written by other code, or by hand).
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO \"{}\".saga_states (saga, instance, state) VALUES ('mailer', 'o4', '\"garbage\"')",
        db.schema
    )))
    .execute(&db.pool)
    .await
    .unwrap();
    db.store
        .append(
            &StreamId::new("shop-4").unwrap(),
            ExpectedVersion::NoStream,
            vec![placed("o4", "lamp")],
        )
        .await
        .unwrap();
    let mailer = runner(&db.store, writer("mailer", "mail"));
    let result = tokio::time::timeout(Duration::from_secs(30), mailer.run(std::future::pending()))
        .await
        .expect("run returns once the feed failed");
    let error = result.expect_err("the feed's failure is the run's");
    assert!(error.to_string().contains("o4"), "{error}");
    assert!(!mailer.is_active());
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_listed_twice_is_refused_by_both_runners() {
    let db = TestDatabase::new().await;
    db.store
        .append(
            &StreamId::new("shop-5").unwrap(),
            ExpectedVersion::NoStream,
            vec![placed("o5", "desk")],
        )
        .await
        .unwrap();
    let twice = || Writer {
        name: "reminder",
        prefix: "remind",
        twice: true,
    };
    let on_postgres = runner(&db.store, twice());
    let deadline = Instant::now() + Duration::from_secs(30);
    let error = loop {
        match on_postgres.catch_up().await {
            Err(error) => break error,
            Ok(_) => {
                assert!(Instant::now() < deadline, "the event never became readable");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    assert!(error.to_string().contains("remind"), "{error}");

    let memory: Arc<dyn EventStore> = Arc::new(es_core::InMemoryEventStore::new());
    memory
        .append(
            &StreamId::new("shop-5").unwrap(),
            ExpectedVersion::NoStream,
            vec![placed("o5", "desk")],
        )
        .await
        .unwrap();
    let notes = Notes(CommandHandler::new(Arc::clone(&memory)));
    let error = SagaRunner::new(memory, twice(), notes)
        .catch_up()
        .await
        .unwrap_err();
    assert!(error.to_string().contains("twice"), "{error}");
    db.drop().await;
}
