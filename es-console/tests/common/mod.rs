//! What the console's tests share: a projection that can be made to fail, seeding, and
//! requests through the router without a socket.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use es_core::{BoxError, DomainEvent, Envelope, EventStore, ExpectedVersion, NewEvent, StreamId};
use es_postgres::sqlx::{self, PgConnection};
use es_postgres::testing::TestDatabase;
use es_postgres::{PgEventStore, PgProjection, ProjectionRunner, SchemaName, async_trait};
use serde::{Deserialize, Serialize};
use tower::ServiceExt as _;
use uuid::Uuid;

/// The tests' one event type.
#[derive(Clone, Debug, PartialEq, DomainEvent, Serialize, Deserialize)]
pub enum Note {
    /// Some text written to a stream.
    Written { text: String },
}

/// Counts notes per stream; fails on a note whose text contains `poison` while `fail` is set.
pub struct Notes {
    pub schema: SchemaName,
    pub fail: Arc<AtomicBool>,
}

#[async_trait]
impl PgProjection for Notes {
    type Event = Note;

    fn name(&self) -> &str {
        "notes"
    }

    async fn setup(&self, conn: &mut PgConnection) -> Result<(), BoxError> {
        sqlx::raw_sql(self.schema.sql(
            "CREATE TABLE IF NOT EXISTS {schema}.notes (stream_id text PRIMARY KEY, n bigint NOT NULL)",
        ))
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), BoxError> {
        sqlx::query(self.schema.sql("DELETE FROM {schema}.notes"))
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn apply(&self, conn: &mut PgConnection, event: &Envelope<Note>) -> Result<(), BoxError> {
        let Note::Written { text } = &event.payload;
        if text.contains("poison") && self.fail.load(Ordering::SeqCst) {
            return Err(format!("cannot apply {text:?}: poisoned").into());
        }
        sqlx::query(self.schema.sql(
            "INSERT INTO {schema}.notes AS t VALUES ($1, 1) \
             ON CONFLICT (stream_id) DO UPDATE SET n = t.n + 1",
        ))
        .bind(event.stream_id.as_str())
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// A runner of [`Notes`] that parks what fails at once.
pub fn notes(db: &TestDatabase, fail: &Arc<AtomicBool>) -> ProjectionRunner<Notes> {
    ProjectionRunner::new(
        db.store.clone(),
        Notes {
            schema: db.schema.clone(),
            fail: Arc::clone(fail),
        },
    )
    .error_policy(es_postgres::ErrorPolicy::retry_then_park(
        0,
        Duration::from_millis(1),
    ))
    .lock_retry_interval(Duration::from_millis(50))
    .poll_interval(Duration::from_millis(50))
}

/// The count the projection keeps for `stream`.
pub async fn noted(db: &TestDatabase, stream: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(
        db.schema
            .sql("SELECT n FROM {schema}.notes WHERE stream_id = $1"),
    )
    .bind(stream)
    .fetch_optional(&db.pool)
    .await
    .unwrap()
    .unwrap_or(0)
}

/// A note.
pub fn note(text: &str) -> NewEvent {
    NewEvent::from_event(&Note::Written {
        text: text.to_owned(),
    })
    .unwrap()
}

/// One piece of work: a command's first event in `first`, and its effects in `second` (one
/// caused by the first event, one by that effect), sharing a correlation id. Returns the
/// correlation id and the three event ids in causal order.
pub async fn work(
    store: &PgEventStore,
    first: &str,
    second: &str,
    poison: bool,
) -> (Uuid, [Uuid; 3]) {
    let correlation = Uuid::now_v7();
    let cause = note("asked").correlated_with(correlation);
    let effect = note(if poison { "effect poison" } else { "effect" })
        .correlated_with(correlation)
        .caused_by(cause.event_id);
    let last = note("done")
        .correlated_with(correlation)
        .caused_by(effect.event_id);
    let ids = [cause.event_id, effect.event_id, last.event_id];
    store
        .append(
            &StreamId::new(first).unwrap(),
            ExpectedVersion::Any,
            vec![cause],
        )
        .await
        .unwrap();
    store
        .append(
            &StreamId::new(second).unwrap(),
            ExpectedVersion::Any,
            vec![effect, last],
        )
        .await
        .unwrap();
    (correlation, ids)
}

/// Waits until `check` holds, for at most 30 s.
pub async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A response, read whole.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    /// The server time the `Server-Timing` header gives, in milliseconds.
    pub fn server_millis(&self) -> f64 {
        let header = self
            .headers
            .get("server-timing")
            .expect("a Server-Timing header")
            .to_str()
            .unwrap();
        header
            .split("dur=")
            .nth(1)
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| panic!("no duration in Server-Timing {header:?}"))
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// `GET uri` through the router.
pub async fn get(router: &Router, uri: &str) -> Answer {
    send(router, Request::get(uri).body(Body::empty()).unwrap()).await
}

/// `POST uri` with a form body and extra headers.
pub async fn post_form(
    router: &Router,
    uri: &str,
    form: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> Answer {
    let body: String = form
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}={}",
                percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
            )
        })
        .collect::<Vec<_>>()
        .join("&");
    let mut request = Request::post(uri)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("host", "127.0.0.1:8080");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(router, request.body(Body::from(body)).unwrap()).await
}

pub async fn send(router: &Router, request: Request<Body>) -> Answer {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 64 << 20)
        .await
        .unwrap();
    Answer {
        status,
        headers,
        body: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

/// A URL query value, percent-encoded.
pub fn enc(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The CSRF token a page's forms carry.
pub fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no CSRF field in {page}"));
    let rest = &page[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}
