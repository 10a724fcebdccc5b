//! A saga through the console: its instances' state, outbox, deadlines and dead letters, and
//! retrying or discarding a dead letter with the admin token.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use chrono::{TimeZone, Utc};
use common::*;
use es_admin::Admin;
use es_console::Console;
use es_core::{BoxError, CommandContext, CommandDispatcher, Deadline, Envelope, Saga};
use es_postgres::testing::TestDatabase;
use es_postgres::{PgSagaRunner, async_trait};
use serde::{Deserialize, Serialize};

const TOKEN: &str = "saga-admin-token";

/// Echoes every note of a stream as a command, and waits on a reminder far in the future.
struct Echo;

#[derive(Debug, Serialize, Deserialize)]
enum EchoCommand {
    Echo { text: String },
}

impl Saga for Echo {
    type Event = Note;
    type State = Vec<String>;
    type Command = EchoCommand;

    fn name(&self) -> &str {
        "echo"
    }

    fn instance_of(&self, event: &Envelope<Note>) -> Option<String> {
        Some(event.stream_id.as_str().to_owned())
    }

    fn react(&self, state: &mut Vec<String>, event: &Envelope<Note>) -> Vec<EchoCommand> {
        let Note::Written { text } = &event.payload;
        state.push(text.clone());
        vec![EchoCommand::Echo { text: text.clone() }]
    }

    fn deadlines(&self, state: &Vec<String>) -> Vec<Deadline> {
        if state.is_empty() {
            return Vec::new();
        }
        let due = Utc.with_ymd_and_hms(2100, 1, 1, 0, 0, 0).unwrap();
        vec![Deadline::new("reminder", due)]
    }
}

/// Refuses to echo poison.
struct Echoer;

#[async_trait]
impl CommandDispatcher<EchoCommand> for Echoer {
    async fn dispatch(&self, command: EchoCommand, _: CommandContext) -> Result<(), BoxError> {
        let EchoCommand::Echo { text } = command;
        if text.contains("poison") {
            return Err(format!("will not echo {text:?}").into());
        }
        Ok(())
    }
}

fn echo(db: &TestDatabase) -> PgSagaRunner<Echo, Echoer> {
    PgSagaRunner::new(db.store.clone(), Echo, Echoer)
        .max_attempts(1)
        .retry_backoff(Duration::from_millis(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_shows_its_state_outbox_deadlines_and_dead_letters() {
    let db = TestDatabase::new().await;
    work(&db.store, "order-1", "payment-1", true).await;
    db.settle().await;
    let runner = echo(&db);
    runner.catch_up().await.unwrap();
    runner.dispatch_pending().await.unwrap();
    assert_eq!(runner.dead_letters().await.unwrap().len(), 1);

    let router = Console::new(Admin::new(db.store.clone()).saga(echo(&db)))
        .admin_token(TOKEN)
        .unwrap()
        .router();
    let overview = get(&router, "/api/sagas").await.json();
    assert_eq!(overview[0]["name"], "echo");
    assert_eq!(overview[0]["dead_lettered"], 1);
    assert_eq!(overview[0]["deadlines_waiting"], 2);
    let saga = get(&router, "/api/saga?name=echo").await.json();
    let instances: Vec<_> = saga["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["instance"].clone(), i["state"].clone()))
        .collect();
    assert_eq!(
        instances,
        vec![
            (serde_json::json!("order-1"), serde_json::json!(["asked"])),
            (
                serde_json::json!("payment-1"),
                serde_json::json!(["effect poison", "done"])
            ),
        ]
    );
    assert_eq!(saga["deadlines"][0]["name"], "reminder");
    let dead = &saga["dead_letters"][0];
    assert!(dead["command"].as_str().unwrap().contains("effect poison"));
    let page = get(&router, "/saga?name=echo").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("will not echo") && page.body.contains("reminder"));
    assert!(
        page.body.contains("action=\"/saga/retry\""),
        "{}",
        page.body
    );

    // Retry: back in the outbox; failing again, dead again; then discarded for good.
    let id = dead["command_id"].as_str().unwrap().to_owned();
    let csrf = csrf_of(&page.body);
    let form = [
        ("name", "echo"),
        ("command_id", id.as_str()),
        ("token", TOKEN),
        ("csrf", csrf.as_str()),
    ];
    let same_origin = [("origin", "http://127.0.0.1:8080")];
    let retried = post_form(&router, "/saga/retry", &form, &same_origin).await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.body);
    assert!(retried.body.contains("Retried 1"), "{}", retried.body);
    let saga = get(&router, "/api/saga?name=echo").await.json();
    assert!(saga["dead_letters"].as_array().unwrap().is_empty());
    assert_eq!(saga["saga"]["outbox_pending"], 1);
    runner.dispatch_pending().await.unwrap();
    let discarded = post_form(&router, "/saga/discard", &form, &same_origin).await;
    assert!(discarded.body.contains("Discarded 1"), "{}", discarded.body);
    assert!(runner.dead_letters().await.unwrap().is_empty());
    assert_eq!(runner.outbox_status().await.unwrap().pending, 0);
    let wrong = post_form(
        &router,
        "/saga/discard",
        &[
            ("name", "echo"),
            ("command_id", id.as_str()),
            ("csrf", csrf.as_str()),
        ],
        &same_origin,
    )
    .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_read_a_page_at_a_time() {
    let db = TestDatabase::new().await;
    for i in 0..3 {
        work(
            &db.store,
            &format!("order-{i}"),
            &format!("payment-{i}"),
            true,
        )
        .await;
    }
    db.settle().await;
    let runner = echo(&db);
    runner.catch_up().await.unwrap();
    runner.dispatch_pending().await.unwrap();
    let all = runner.dead_letters().await.unwrap();
    assert_eq!(all.len(), 3);

    let router = Console::new(Admin::new(db.store.clone()).saga(echo(&db))).router();
    let first = get(&router, "/api/saga?name=echo&limit=2").await.json();
    let first = first["dead_letters"].as_array().unwrap().clone();
    assert_eq!(first.len(), 2, "a page holds at most `limit` dead letters");
    let last_seq = first[1]["seq"].as_i64().unwrap();
    let rest = get(
        &router,
        &format!("/api/saga?name=echo&limit=2&dead_after={last_seq}"),
    )
    .await
    .json();
    let rest = rest["dead_letters"].as_array().unwrap().clone();
    assert_eq!(rest.len(), 1);
    let mut ids: Vec<String> = first
        .iter()
        .chain(&rest)
        .map(|d| d["command_id"].as_str().unwrap().to_owned())
        .collect();
    let mut expected: Vec<String> = all.iter().map(|d| d.command_id.to_string()).collect();
    assert_eq!(ids, expected, "in the order they were issued");
    ids.sort();
    expected.sort();
    assert_eq!(ids, expected);

    // The page links to the rest (keeping its size) only when it is full.
    let page = get(&router, "/saga?name=echo&limit=2").await;
    assert!(
        page.body
            .contains(&format!("dead_after={last_seq}&amp;limit=2")),
        "{}",
        page.body
    );
    let page = get(&router, "/saga?name=echo").await;
    assert!(!page.body.contains("more dead letters"), "{}", page.body);
    assert!(!page.body.contains("more instances"), "{}", page.body);
    let page = get(&router, "/saga?name=echo&limit=1").await;
    assert!(
        page.body.contains("after=order-0&amp;limit=1"),
        "{}",
        page.body
    );
    let page = get(&router, "/saga?name=echo&after=order%00").await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST, "{}", page.body);
    db.drop().await;
}
