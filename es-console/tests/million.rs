//! Every page within its time budget on a store of a million events: each answers in under
//! 200 ms of server time (the `Server-Timing` header), including the largest category, a
//! stream of 200,000 events at its start, middle and end, the global log near its middle and
//! an event with its trace.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use axum::http::StatusCode;
use common::*;
use es_admin::Admin;
use es_console::Console;
use es_postgres::sqlx;
use es_postgres::testing::TestDatabase;

/// The budget of one page, in server time.
const BUDGET_MS: f64 = 200.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_answers_within_200_ms_with_a_million_events() {
    let db = TestDatabase::new().await;
    let started = Instant::now();
    // 200,000 events in one stream (`big-1`), the other 800,000 in 100,000 streams of 8
    // (`account-N`); every three events one piece of work, each caused by the one before.
    // The indexes on random ids are built after the rows (sorting beats a million random
    // inserts), and the row check is left out for the seed (the rows are the test's own).
    sqlx::raw_sql(db.schema.sql(
        "ALTER TABLE {schema}.events DROP CONSTRAINT events_event_id_key, \
             DROP CONSTRAINT events_row_is_valid; \
         DROP INDEX {schema}.events_correlation_id; \
         INSERT INTO {schema}.events (event_id, stream_id, stream_version, event_type, \
             schema_version, correlation_id, causation_id, payload) \
         SELECT md5('e' || i)::uuid, \
                CASE WHEN i <= 200000 THEN 'big-1' ELSE 'account-' || ((i - 200001) / 8) END, \
                CASE WHEN i <= 200000 THEN i ELSE (i - 200001) % 8 + 1 END, \
                'Written', 1, md5('c' || (i / 3))::uuid, \
                CASE WHEN i % 3 <> 0 THEN md5('e' || (i - 1))::uuid END, \
                json_build_object('text', 'note ' || i) \
         FROM generate_series(1, 1000000) AS i; \
         INSERT INTO {schema}.streams (stream_id, version) \
         SELECT 'big-1', 200000 UNION ALL \
         SELECT 'account-' || n, 8 FROM generate_series(0, 99999) AS n; \
         INSERT INTO {schema}.projection_checkpoints (projection, transaction_id, position) \
         SELECT 'notes', transaction_id, position FROM {schema}.events \
         ORDER BY transaction_id DESC, position DESC OFFSET 1000 LIMIT 1; \
         INSERT INTO {schema}.parked_events (projection, event_id, transaction_id, position, \
             stream_id, event_type, error, attempts) \
         SELECT 'notes', event_id, transaction_id, position, stream_id, event_type, \
                'poisoned', 1 FROM {schema}.events WHERE event_id = md5('e' || 500000)::uuid; \
         ALTER TABLE {schema}.events ADD CONSTRAINT events_event_id_key UNIQUE (event_id); \
         CREATE INDEX events_correlation_id ON {schema}.events (correlation_id); \
         ANALYZE {schema}.events; ANALYZE {schema}.streams;",
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    db.settle().await;
    eprintln!("seeded 1,000,000 events in {:?}", started.elapsed());

    let fail = Arc::new(AtomicBool::new(false));
    let admin = Admin::new(db.store.clone()).projection(notes(&db, &fail));
    let router = Console::new(admin)
        .admin_token("test-admin-token")
        .unwrap()
        .router();
    let middle: (i64, i64) = sqlx::query_as(db.schema.sql(
        "SELECT transaction_id, position FROM {schema}.events \
         WHERE event_id = md5('e' || 500000)::uuid",
    ))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let middle_event: uuid::Uuid = sqlx::query_scalar("SELECT md5('e' || 500000)::uuid")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let correlation: uuid::Uuid = sqlx::query_scalar("SELECT md5('c' || (500000 / 3))::uuid")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let at = format!("{}.{}", middle.0, middle.1);
    let pages = [
        "/".to_owned(),
        "/api/overview".to_owned(),
        "/streams".to_owned(),
        "/streams?category=account".to_owned(),
        "/streams?category=account&after=account-50000&limit=200".to_owned(),
        "/streams?category=big".to_owned(),
        "/stream?id=big-1".to_owned(),
        "/stream?id=big-1&after=100000&limit=200".to_owned(),
        "/stream?id=big-1&before=200001".to_owned(),
        "/api/stream?id=big-1&after=150000&limit=200".to_owned(),
        "/stream?id=account-77777".to_owned(),
        format!("/event/{middle_event}"),
        format!("/api/event/{middle_event}"),
        format!("/trace/{correlation}"),
        "/log".to_owned(),
        format!("/log?at={at}&limit=200"),
        format!("/api/log?at={at}"),
        "/projections".to_owned(),
        "/projection?name=notes".to_owned(),
        "/sagas".to_owned(),
        "/health/ready".to_owned(),
    ];
    let mut report = Vec::new();
    for page in &pages {
        // The best of three: the page's own cost, not the noise of tests running beside it.
        let mut best = f64::MAX;
        let mut first = None;
        for _ in 0..3 {
            let answer = get(&router, page).await;
            assert!(
                answer.status == StatusCode::OK
                    || (page == "/health/ready"
                        && answer.status == StatusCode::SERVICE_UNAVAILABLE),
                "{page}: {} {}",
                answer.status,
                answer.body
            );
            best = best.min(answer.server_millis());
            first.get_or_insert(answer.server_millis());
        }
        let first = first.unwrap_or(best);
        report.push(format!("{best:>7.1} ms (first {first:>6.1} ms)  {page}"));
        assert!(
            best < BUDGET_MS,
            "{page} took {best:.1} ms of server time (budget {BUDGET_MS} ms)\n{}",
            report.join("\n")
        );
    }
    eprintln!(
        "server time per page (best of 3, and the first request), 1,000,000 events:\n{}",
        report.join("\n")
    );
    db.drop().await;
}
