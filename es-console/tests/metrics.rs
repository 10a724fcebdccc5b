//! `/metrics`: Prometheus text after `Admin::observe`, when the console has a handle (feature
//! `prometheus`); 404 otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::http::StatusCode;
use common::*;
use es_admin::Admin;
use es_console::Console;
use es_postgres::testing::TestDatabase;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_from_the_handle_after_observing_the_registry() {
    let db = TestDatabase::new().await;
    let fail = Arc::new(AtomicBool::new(true));
    work(&db.store, "order-1", "payment-1", true).await;
    db.settle().await;
    notes(&db, &fail).catch_up().await.unwrap();

    let without = Console::new(Admin::new(db.store.clone())).router();
    assert_eq!(
        get(&without, "/metrics").await.status,
        StatusCode::NOT_FOUND
    );

    let handle = es_admin::prometheus_recorder().unwrap();
    let router = Console::new(Admin::new(db.store.clone()).projection(notes(&db, &fail)))
        .metrics(handle)
        .router();
    let answer = get(&router, "/metrics").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let parked = answer
        .body
        .lines()
        .find(|l| {
            l.starts_with("es_projection_parked_events{") && l.contains("projection=\"notes\"")
        })
        .unwrap_or_else(|| panic!("no parked gauge for notes in {}", answer.body));
    assert!(parked.ends_with(" 1"), "{parked}");
    db.drop().await;
}
