//! The admin CLI as an operator meets it: read-only commands that create nothing, rebuilds
//! refused or explained, output that survives a closed pipe, connection errors that say what
//! happened, a `run` that ends when a runner stops.

#![allow(clippy::unwrap_used)]

use std::io::{ErrorKind, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use es_admin::{Admin, AdminCommand, AdminError, Database, OnError, Out, SchemaCommand};
use es_core::testing::conformance::unique_stream;
use es_core::{BoxError, DomainEvent, Envelope, EventStore, ExpectedVersion, NewEvent, StreamId};
use es_postgres::sqlx::{self, PgConnection};
use es_postgres::testing::{TestDatabase, database_url};
use es_postgres::{PgEventStore, PgProjection, ProjectionRunner, SchemaName, async_trait};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, DomainEvent, Serialize, Deserialize)]
enum Tick {
    Ticked { n: i64 },
}

/// Counts ticks per stream; fails on tick 13 while `fail_13` is set.
struct Ticks {
    schema: SchemaName,
    fail_13: bool,
}

#[async_trait]
impl PgProjection for Ticks {
    type Event = Tick;

    fn name(&self) -> &str {
        "ticks"
    }

    async fn setup(&self, conn: &mut PgConnection) -> Result<(), BoxError> {
        sqlx::raw_sql(self.schema.sql(
            "CREATE TABLE IF NOT EXISTS {schema}.ticks (stream_id text PRIMARY KEY, n bigint NOT NULL)",
        ))
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), BoxError> {
        sqlx::query(self.schema.sql("DELETE FROM {schema}.ticks"))
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn apply(&self, conn: &mut PgConnection, event: &Envelope<Tick>) -> Result<(), BoxError> {
        let Tick::Ticked { n } = event.payload;
        if n == 13 && self.fail_13 {
            return Err("tick 13 is unlucky".into());
        }
        sqlx::query(self.schema.sql(
            "INSERT INTO {schema}.ticks AS t VALUES ($1, 1) \
             ON CONFLICT (stream_id) DO UPDATE SET n = t.n + 1",
        ))
        .bind(event.stream_id.as_str())
        .execute(conn)
        .await?;
        Ok(())
    }
}

fn ticks(db: &TestDatabase, fail_13: bool) -> ProjectionRunner<Ticks> {
    ProjectionRunner::new(
        db.store.clone(),
        Ticks {
            schema: db.schema.clone(),
            fail_13,
        },
    )
    .lock_retry_interval(Duration::from_millis(50))
    .poll_interval(Duration::from_millis(50))
}

async fn tick(store: &PgEventStore, stream: &StreamId, from: i64, to: i64) {
    for n in from..=to {
        let event = NewEvent::from_event(&Tick::Ticked { n }).unwrap();
        store
            .append(stream, ExpectedVersion::Any, vec![event])
            .await
            .unwrap();
    }
}

/// An output collected for the test to read.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

async fn execute(admin: &Admin, command: AdminCommand) -> (Result<(), AdminError>, String) {
    let captured = Captured::default();
    let mut out = Out::new(Box::new(captured.clone()));
    let result = admin.execute(command, &mut out).await;
    (result, captured.text())
}

async fn readable(store: &PgEventStore, events: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while store
        .read_all(es_core::Position::START, 10_000)
        .await
        .unwrap()
        .len()
        < events as usize
    {
        assert!(
            Instant::now() < deadline,
            "the events never became readable"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn database(schema: &str) -> Database {
    Database {
        database_url: database_url(),
        schema: schema.to_owned(),
        pool_size: 8,
    }
}

#[tokio::test]
async fn read_only_commands_never_create_a_schema() {
    let db = TestDatabase::new().await;
    let missing = format!("{}_missing", db.schema);
    let store = database(&missing).connect().await.unwrap();
    let admin = Admin::new(store);
    for command in [
        AdminCommand::Status,
        AdminCommand::Trace {
            correlation_id: uuid::Uuid::now_v7(),
        },
    ] {
        let (result, _) = execute(&admin, command).await;
        let error = result.unwrap_err();
        assert!(
            error.report().contains("does not exist"),
            "{}",
            error.report()
        );
    }
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(&missing)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(!exists, "the schema was created");
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_is_refused_at_once_while_another_process_runs_the_projection() {
    let db = TestDatabase::new().await;
    tick(&db.store, &unique_stream("clock"), 1, 3).await;
    let live = Arc::new(ticks(&db, false));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = {
        let live = Arc::clone(&live);
        tokio::spawn(async move {
            live.run(async {
                let _ = stopped.await;
            })
            .await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !live.is_active() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let admin = Admin::new(db.store.clone()).projection(ticks(&db, false));
    let started = Instant::now();
    let (result, _) = execute(
        &admin,
        AdminCommand::Rebuild {
            projection: "ticks".into(),
            blue_green: false,
            from_scratch: false,
            on_error: OnError::Stop,
        },
    )
    .await;
    let error = result.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "it waited");
    assert_eq!(error.exit_code(), 2);
    let report = error.report();
    assert!(
        report.contains("--blue-green") && report.contains("process"),
        "{report}"
    );
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    db.drop().await;
}

#[tokio::test]
async fn a_failed_rebuild_says_what_it_left_and_park_goes_on() {
    let db = TestDatabase::new().await;
    let stream = unique_stream("clock");
    tick(&db.store, &stream, 1, 20).await;
    readable(&db.store, 20).await;
    let admin = Admin::new(db.store.clone()).projection(ticks(&db, true));
    let rebuild = |on_error| AdminCommand::Rebuild {
        projection: "ticks".into(),
        blue_green: false,
        from_scratch: false,
        on_error,
    };
    let (result, out) = execute(&admin, rebuild(OnError::Stop)).await;
    let report = result.unwrap_err().report();
    assert!(
        report.contains("unlucky") && report.contains(&stream.to_string()),
        "{report}"
    );
    assert!(
        out.contains("the rebuild stopped") && out.contains("resume"),
        "{out}"
    );
    assert!(
        !report.contains("Store {") && !report.contains("Failed {"),
        "a sentence, not a Debug dump: {report}"
    );

    // Parking the failing event lets the rebuild through, and says so.
    let (result, out) = execute(&admin, rebuild(OnError::Park)).await;
    result.unwrap();
    assert!(out.contains("1 event(s) parked"), "{out}");
    let (result, out) = execute(
        &admin,
        AdminCommand::Parked {
            projection: "ticks".into(),
        },
    )
    .await;
    result.unwrap();
    assert!(out.contains("unlucky"), "{out}");
    db.drop().await;
}

#[tokio::test]
async fn status_shows_held_back_events() {
    let db = TestDatabase::new().await;
    let admin = Admin::new(db.store.clone()).projection(ticks(&db, false));
    // An older transaction holds the horizon while an event commits behind it.
    let mut holder = db.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *holder)
        .await
        .unwrap();
    tick(&db.store, &unique_stream("clock"), 1, 1).await;
    let (result, out) = execute(&admin, AdminCommand::Status).await;
    result.unwrap();
    holder.rollback().await.unwrap();
    assert!(out.contains("ticks"), "{out}");
    assert!(
        out.contains("wait") && out.contains("behind transaction"),
        "{out}"
    );
    db.drop().await;
}

/// A reader that goes away after the first line, as `| head -1` does.
struct ClosesAfterOneLine(usize);

impl Write for ClosesAfterOneLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0 >= 1 {
            return Err(std::io::Error::new(
                ErrorKind::BrokenPipe,
                "reader went away",
            ));
        }
        self.0 += buf.iter().filter(|b| **b == b'\n').count();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn output_survives_a_reader_that_goes_away() {
    let db = TestDatabase::new().await;
    let admin = Admin::new(db.store.clone()).projection(ticks(&db, false));
    let mut out = Out::new(Box::new(ClosesAfterOneLine(0)));
    admin.execute(AdminCommand::Status, &mut out).await.unwrap();
    assert!(out.is_closed());
    db.drop().await;
}

#[tokio::test]
async fn connection_errors_say_what_happened_at_once() {
    // Nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let error = database_at(&format!("postgres://postgres@127.0.0.1:{port}/postgres"))
        .connect()
        .await
        .unwrap_err()
        .report();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "it waited for a pool timeout"
    );
    assert!(
        error.contains("connection refused") && error.contains(&port.to_string()),
        "{error}"
    );

    let url = database_url();
    let (base, _) = url.rsplit_once('/').unwrap();
    let error = database_at(&format!("{base}/no_such_database_here"))
        .connect()
        .await
        .unwrap_err()
        .report();
    assert!(
        error.contains("no_such_database_here") && error.contains("createdb"),
        "{error}"
    );
    assert!(
        !error.contains(".c\"") && !error.contains("line:"),
        "no source lines: {error}"
    );

    let error = database_at("").connect().await.unwrap_err().report();
    assert!(error.contains("empty"), "{error}");
}

fn database_at(url: &str) -> Database {
    Database {
        database_url: url.to_owned(),
        schema: "es".to_owned(),
        pool_size: 8,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reports_a_runner_that_stops_and_ends() {
    let db = TestDatabase::new().await;
    tick(&db.store, &unique_stream("clock"), 12, 14).await;
    // A projection whose policy stops at tick 13: `run` must not hang.
    let failing = ticks(&db, true).error_policy(es_postgres::ErrorPolicy::STOP);
    let admin = Admin::new(db.store.clone()).projection(failing);
    let (result, out) = tokio::time::timeout(
        Duration::from_secs(30),
        execute(
            &admin,
            AdminCommand::Run {
                skip_type_check: false,
            },
        ),
    )
    .await
    .expect("run ends when its runner stops");
    assert!(result.is_err());
    assert!(out.contains("stopped") && out.contains("unlucky"), "{out}");
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_refuses_a_registry_that_cannot_read_stored_types_and_check_names_them() {
    let db = TestDatabase::new().await;
    let clock = unique_stream("clock");
    tick(&db.store, &clock, 1, 2).await;
    let admin = Admin::new(db.store.clone()).projection(ticks(&db, false));
    let (result, out) = execute(&admin, AdminCommand::Check).await;
    assert!(result.is_ok(), "{result:?} {out}");

    // `Ticked` renamed `Tocked` in a release that forgot the upcaster.
    let renamed = NewEvent::new(
        "Tocked",
        1,
        serde_json::value::to_raw_value(&serde_json::json!({"n": 3})).unwrap(),
    );
    db.store
        .append(&clock, ExpectedVersion::Any, vec![renamed])
        .await
        .unwrap();
    // Checks read as of the transaction horizon, which other tests can hold back.
    db.settle().await;
    let (result, _) = execute(&admin, AdminCommand::Check).await;
    let report = result.unwrap_err().report();
    assert!(
        report.contains("ticks") && report.contains("Tocked v1") && report.contains("renamed"),
        "{report}"
    );
    let (result, out) = tokio::time::timeout(
        Duration::from_secs(30),
        execute(
            &admin,
            AdminCommand::Run {
                skip_type_check: false,
            },
        ),
    )
    .await
    .expect("a refused run ends at once");
    let report = result.unwrap_err().report();
    assert!(report.contains("Tocked"), "{report}");
    assert!(!out.contains("running"), "nothing was started: {out}");
    db.drop().await;
}

#[tokio::test]
async fn the_schema_gate_names_what_a_release_would_not_decode_and_the_catalogue_exports() {
    let db = TestDatabase::new().await;
    let clock = unique_stream("gate");
    tick(&db.store, &clock, 1, 2).await;
    db.settle().await;
    let events = || es_core::EventCatalogue::new(db.store.upcasters()).add::<Tick>();

    // Without registered event types: refused, saying what to register.
    let bare = Admin::new(db.store.clone());
    let (result, _) = execute(&bare, AdminCommand::Schema(SchemaCommand::Check)).await;
    assert!(result.unwrap_err().report().contains("Admin::events"));

    let admin = Admin::new(db.store.clone()).events(events());
    let (result, out) = execute(&admin, AdminCommand::Schema(SchemaCommand::Check)).await;
    assert!(result.is_ok(), "{result:?} {out}");
    assert!(out.contains("every stored event type decodes"), "{out}");

    // A release that renamed a type without an upcaster wrote `Tocked`; another wrote `Ticked`
    // at a version this code does not know yet.
    let payload = || serde_json::value::to_raw_value(&serde_json::json!({"n": 3})).unwrap();
    db.store
        .append(
            &clock,
            ExpectedVersion::Any,
            vec![
                NewEvent::new("Tocked", 1, payload()),
                NewEvent::new("Ticked", 7, payload()),
            ],
        )
        .await
        .unwrap();
    db.settle().await;
    let (result, out) = execute(&admin, AdminCommand::Schema(SchemaCommand::Check)).await;
    let error = result.unwrap_err();
    assert_eq!(error.exit_code(), 1, "a deploy step fails");
    let report = error.report();
    assert!(report.contains("2 stored event type(s)"), "{report}");
    assert!(
        out.contains("Tocked v1") && out.contains("renamed"),
        "{out}"
    );
    assert!(out.contains("Ticked v7") && out.contains("newer"), "{out}");

    // The catalogue, as JSON: no database needed.
    let (result, out) = execute(&admin, AdminCommand::Schema(SchemaCommand::Export)).await;
    assert!(result.is_ok(), "{result:?}");
    let exported: serde_json::Value = serde_json::from_str(&out).unwrap();
    let types = exported["event_types"].as_array().unwrap();
    assert_eq!(types.len(), Tick::TYPES.len());
    assert!(
        types
            .iter()
            .any(|t| t["name"] == "Ticked" && t["version"] == 1)
    );
    db.drop().await;
}
