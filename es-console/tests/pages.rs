//! The console's pages and JSON endpoints through its router, against a real PostgreSQL:
//! what each page shows, hostile data shown as text, capped pages, the security of its
//! repairs, readiness, and rows it cannot show.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::StatusCode;
use common::*;
use es_admin::Admin;
use es_console::{Console, ReadyBound};
use es_core::{EventStore, ExpectedVersion, NewEvent, StreamId, Upcasters};
use es_postgres::sqlx;
use es_postgres::testing::TestDatabase;
use serde_json::json;

const TOKEN: &str = "test-admin-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_shows_the_seeded_store() {
    let db = TestDatabase::new().await;
    let fail = Arc::new(AtomicBool::new(false));
    let (correlation, ids) = work(&db.store, "order-1", "payment-1", false).await;
    db.store
        .append(
            &StreamId::new("order-2").unwrap(),
            ExpectedVersion::Any,
            (0..5).map(|i| note(&format!("n{i}"))).collect(),
        )
        .await
        .unwrap();
    db.settle().await;
    notes(&db, &fail).catch_up().await.unwrap();
    let admin = Admin::new(db.store.clone()).projection(notes(&db, &fail));
    let router = Console::new(admin).router();

    let overview = get(&router, "/").await;
    assert_eq!(overview.status, StatusCode::OK, "{}", overview.body);
    assert!(overview.body.contains("notes"), "{}", overview.body);
    assert!(overview.headers.contains_key("server-timing"));
    let api = get(&router, "/api/overview").await.json();
    assert_eq!(api["projections"][0]["name"], "notes");
    assert_eq!(api["projections"][0]["lag_events"], 0);
    assert!(api["store"]["positions_issued"].as_u64().unwrap() >= 8);

    let categories = get(&router, "/streams").await;
    assert_eq!(categories.status, StatusCode::OK, "{}", categories.body);
    for category in ["order", "payment"] {
        assert!(
            categories.body.contains(&format!("category={category}")),
            "{}",
            categories.body
        );
    }
    let api = get(&router, "/api/streams").await.json();
    let names: Vec<_> = api["categories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["category"].clone())
        .collect();
    assert_eq!(names, vec![json!("order"), json!("payment")]);

    let orders = get(&router, "/api/streams?category=order").await.json();
    let streams: Vec<_> = orders["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["stream_id"].clone(), s["version"].clone()))
        .collect();
    assert_eq!(
        streams,
        vec![(json!("order-1"), json!(1)), (json!("order-2"), json!(5))]
    );
    assert!(orders["streams"][0]["last_recorded_at"].is_string());
    let page = get(&router, "/streams?category=order").await;
    assert!(page.body.contains("order-2"), "{}", page.body);

    // A stream, paged by version.
    let stream = get(&router, "/stream?id=order-2&limit=2").await;
    assert_eq!(stream.status, StatusCode::OK, "{}", stream.body);
    assert!(
        stream.body.contains("n0") && stream.body.contains("n1") && !stream.body.contains("n2")
    );
    assert!(
        stream.body.contains("after=2"),
        "a next page link: {}",
        stream.body
    );
    let next = get(&router, "/api/stream?id=order-2&after=2&limit=2")
        .await
        .json();
    let versions: Vec<_> = next["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["stream_version"].clone())
        .collect();
    assert_eq!(versions, vec![json!(3), json!(4)]);
    let last = get(&router, "/api/stream?id=order-2&before=6&limit=2")
        .await
        .json();
    let versions: Vec<_> = last["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["stream_version"].clone())
        .collect();
    assert_eq!(versions, vec![json!(4), json!(5)]);
    assert_eq!(
        get(&router, "/stream?id=order-404").await.status,
        StatusCode::NOT_FOUND
    );

    // An event and its causation tree: the effect under its cause, the last under the effect.
    let event = get(&router, &format!("/event/{}", ids[1])).await;
    assert_eq!(event.status, StatusCode::OK, "{}", event.body);
    assert!(event.body.contains(&correlation.to_string()));
    let api = get(&router, &format!("/api/event/{}", ids[1])).await.json();
    let tree: Vec<_> = api["trace"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["event_id"].as_str().unwrap().to_owned(),
                n["depth"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        tree,
        vec![
            (ids[0].to_string(), 0),
            (ids[1].to_string(), 1),
            (ids[2].to_string(), 2)
        ]
    );
    assert_eq!(api["event"]["upcast"]["kind"], "as_stored");
    let trace = get(&router, &format!("/trace/{correlation}")).await;
    assert_eq!(trace.status, StatusCode::OK);
    assert!(trace.body.contains("payment-1"));
    assert_eq!(
        get(&router, "/event/not-a-uuid").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        get(&router, &format!("/event/{}", uuid::Uuid::now_v7()))
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    // The global log: newest, and around the effect's position.
    let newest = get(&router, "/api/log").await.json();
    assert_eq!(newest["events"].as_array().unwrap().len(), 8);
    let position = &api["event"]["position"];
    let at = format!("{}.{}", position["transaction"], position["sequence"]);
    let around = get(&router, &format!("/api/log?at={at}&limit=2"))
        .await
        .json();
    let around: Vec<_> = around["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(around, vec![ids[0].to_string(), ids[1].to_string()]);
    let log = get(&router, &format!("/log?at={at}")).await;
    assert!(log.body.contains("class=\"here\""), "{}", log.body);
    assert_eq!(
        get(&router, "/log?at=nonsense").await.status,
        StatusCode::BAD_REQUEST
    );

    // Projections and sagas.
    let projections = get(&router, "/projections").await;
    assert!(
        projections.body.contains("projection?name=notes"),
        "{}",
        projections.body
    );
    let projection = get(&router, "/projection?name=notes").await;
    assert!(
        projection.body.contains("No parked event"),
        "{}",
        projection.body
    );
    assert_eq!(
        get(&router, "/projection?name=nope").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(get(&router, "/sagas").await.status, StatusCode::OK);
    assert_eq!(get(&router, "/api/sagas").await.json(), json!([]));
    assert_eq!(
        get(&router, "/no/such/page").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(get(&router, "/health/live").await.status, StatusCode::OK);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_stream_ids_and_payloads_are_shown_as_text() {
    let db = TestDatabase::new().await;
    let hostile = "<script>alert(1)</script>";
    let stream = format!("{hostile}-a/b?c#d%e+f g&h=é");
    db.store
        .append(
            &StreamId::new(stream.clone()).unwrap(),
            ExpectedVersion::Any,
            vec![note(hostile).with_metadata(es_core::Metadata::new().with("who", hostile))],
        )
        .await
        .unwrap();
    db.settle().await;
    let router = Console::new(Admin::new(db.store.clone())).router();
    let escaped = "&lt;script&gt;alert(1)&lt;/script&gt;";
    let category = get(&router, &format!("/streams?category={}", enc(hostile))).await;
    assert!(category.body.contains(escaped), "{}", category.body);
    let stream_page = get(&router, &format!("/stream?id={}", enc(&stream))).await;
    assert_eq!(stream_page.status, StatusCode::OK, "{}", stream_page.body);
    let api = get(&router, &format!("/api/stream?id={}", enc(&stream)))
        .await
        .json();
    assert_eq!(
        api["stream_id"],
        json!(stream),
        "the id survives the round trip"
    );
    let event_id = api["events"][0]["event_id"].as_str().unwrap().to_owned();
    let event = get(&router, &format!("/event/{event_id}")).await;
    let log = get(&router, "/log").await;
    let categories = get(&router, "/streams").await;
    for page in [&category, &stream_page, &event, &log, &categories] {
        assert!(!page.body.contains(hostile), "unescaped: {}", page.body);
        assert!(page.body.contains(escaped), "{}", page.body);
    }
    // Links to the stream carry its id percent-encoded, and lead back to it.
    assert!(
        stream_page.body.contains(
            "id=%3Cscript%3Ealert%281%29%3C%2Fscript%3E-a%2Fb%3Fc%23d%25e%2Bf%20g%26h%3D%C3%A9"
        ),
        "{}",
        stream_page.body
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_capped_and_events_shown_as_upcast() {
    let db = TestDatabase::new().await;
    let store = db
        .store
        .clone()
        .with_upcasters(Arc::new(Upcasters::new().add("OldNote", 1, |mut p| {
            p["text"] = json!(format!("lifted {}", p["words"].as_str().unwrap_or("")));
            Ok(p)
        })));
    let old = NewEvent::new(
        "OldNote",
        1,
        // Stored as written: key order and spacing are kept, and shown so.
        serde_json::value::RawValue::from_string(r#"{"words": "hello",  "b": 1}"#.to_owned())
            .unwrap(),
    );
    let stream = StreamId::new("big-1").unwrap();
    store
        .append(&stream, ExpectedVersion::Any, vec![old])
        .await
        .unwrap();
    for chunk in 0..3 {
        store
            .append(
                &stream,
                ExpectedVersion::Any,
                (0..100).map(|i| note(&format!("{chunk}.{i}"))).collect(),
            )
            .await
            .unwrap();
    }
    db.settle().await;
    let router = Console::new(Admin::new(store)).router();
    let page = get(&router, "/api/stream?id=big-1&limit=100000")
        .await
        .json();
    assert_eq!(
        page["events"].as_array().unwrap().len(),
        es_console::MAX_PAGE
    );
    assert_eq!(
        get(&router, "/api/log?limit=100000").await.json()["events"]
            .as_array()
            .unwrap()
            .len(),
        es_console::MAX_PAGE
    );
    let first = &page["events"][0];
    assert_eq!(first["payload"], json!({"words": "hello", "b": 1}));
    assert_eq!(first["upcast"]["kind"], "lifted");
    assert_eq!(first["upcast"]["events"][0]["schema_version"], 2);
    assert_eq!(
        first["upcast"]["events"][0]["payload"]["text"],
        "lifted hello"
    );
    let html = get(&router, "/stream?id=big-1&limit=1").await;
    assert!(
        html.body.contains("lifted hello")
            && html.body.contains("OldNote")
            && html
                .body
                .contains("{&quot;words&quot;: &quot;hello&quot;,  &quot;b&quot;: 1}"),
        "{}",
        html.body
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repairs_need_the_token_and_a_same_origin_form() {
    let db = TestDatabase::new().await;
    let fail = Arc::new(AtomicBool::new(true));
    work(&db.store, "order-7", "payment-7", true).await;
    db.settle().await;
    let runner = notes(&db, &fail);
    runner.catch_up().await.unwrap();
    let parked = runner.parked().await.unwrap();
    assert_eq!(parked.len(), 1, "the poisoned effect is parked");

    // Read-only: no forms, and a POST is refused.
    let read_only =
        Console::new(Admin::new(db.store.clone()).projection(notes(&db, &fail))).router();
    let page = get(&read_only, "/projection?name=notes").await;
    assert!(
        page.body.contains("Read-only console") && !page.body.contains("<form class"),
        "{}",
        page.body
    );
    let refused = post_form(
        &read_only,
        "/projection/replay",
        &[("name", "notes"), ("token", TOKEN)],
        &[],
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);

    let console = Console::new(Admin::new(db.store.clone()).projection(notes(&db, &fail)))
        .admin_token(TOKEN)
        .unwrap();
    let router = console.router();
    let page = get(&router, "/projection?name=notes").await;
    assert!(
        page.body.contains("effect poison") || page.body.contains("poisoned"),
        "{}",
        page.body
    );
    let csrf = csrf_of(&page.body);
    let same_origin = [
        ("origin", "http://127.0.0.1:8080"),
        ("sec-fetch-site", "same-origin"),
    ];
    for (form, headers, why) in [
        (
            vec![("name", "notes"), ("token", TOKEN)],
            &same_origin[..],
            "no CSRF token",
        ),
        (
            vec![
                ("name", "notes"),
                ("token", "wrong-token"),
                ("csrf", csrf.as_str()),
            ],
            &same_origin[..],
            "wrong token",
        ),
        (
            vec![("name", "notes"), ("csrf", csrf.as_str())],
            &same_origin[..],
            "no token",
        ),
        (
            vec![("name", "notes"), ("token", TOKEN), ("csrf", csrf.as_str())],
            &[("origin", "http://evil.example")][..],
            "another origin",
        ),
        (
            vec![("name", "notes"), ("token", TOKEN), ("csrf", csrf.as_str())],
            &[("sec-fetch-site", "cross-site")][..],
            "another site",
        ),
    ] {
        let answer = post_form(&router, "/projection/replay", &form, headers).await;
        assert_eq!(
            answer.status,
            StatusCode::FORBIDDEN,
            "{why}: {}",
            answer.body
        );
    }
    assert_eq!(
        runner.parked().await.unwrap().len(),
        1,
        "nothing was replayed"
    );
    // A GET never changes anything.
    assert_eq!(
        get(&router, "/projection/replay?name=notes").await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );

    // Still failing: it stays parked. Fixed: replayed and applied.
    let form = [("name", "notes"), ("token", TOKEN), ("csrf", csrf.as_str())];
    let answer = post_form(&router, "/projection/replay", &form, &same_origin).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert!(answer.body.contains("1 still failing"), "{}", answer.body);
    fail.store(false, Ordering::SeqCst);
    let answer = post_form(&router, "/projection/replay", &form, &same_origin).await;
    assert!(
        answer.body.contains("Replayed 1 parked event"),
        "{}",
        answer.body
    );
    assert!(answer.body.contains("No parked event"), "{}", answer.body);
    assert_eq!(noted(&db, "payment-7").await, 2);

    // Skip: park another, skip it by header token (an API client), never applied.
    fail.store(true, Ordering::SeqCst);
    work(&db.store, "order-8", "payment-8", true).await;
    db.settle().await;
    runner.catch_up().await.unwrap();
    let parked = runner.parked().await.unwrap();
    assert_eq!(parked.len(), 1);
    let id = parked[0].event_id.to_string();
    let answer = post_form(
        &router,
        "/projection/skip",
        &[("name", "notes"), ("event_id", &id)],
        &[("x-admin-token", TOKEN)],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert!(
        answer.body.contains("it will never be applied"),
        "{}",
        answer.body
    );
    assert!(runner.parked().await.unwrap().is_empty());
    fail.store(false, Ordering::SeqCst);
    assert_eq!(runner.replay_parked().await.unwrap().replayed, 0);
    assert_eq!(
        noted(&db, "payment-8").await,
        1,
        "only the last event of payment-8 applied"
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_names_a_runner_that_is_not_running_or_lags() {
    let db = TestDatabase::new().await;
    let fail = Arc::new(AtomicBool::new(false));
    work(&db.store, "order-9", "payment-9", false).await;
    db.settle().await;
    let router = Console::new(Admin::new(db.store.clone()).projection(notes(&db, &fail)))
        .ready_within(ReadyBound {
            max_lag_events: 100,
            max_lag: std::time::Duration::from_secs(3600),
        })
        .router();
    let answer = get(&router, "/health/ready").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    let reason = answer.json()["reason"].as_str().unwrap().to_owned();
    assert!(
        reason.contains("projection notes is not running"),
        "{reason}"
    );

    // Running (another instance holds the lock): ready once caught up.
    let runner = notes(&db, &fail);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        runner
            .run(async move {
                let _ = stopped.await;
            })
            .await
    });
    wait_until("the console says ready", async || {
        get(&router, "/health/ready").await.status == StatusCode::OK
    })
    .await;

    // Lagging past the bound: not ready, naming it.
    let strict = Console::new(Admin::new(db.store.clone()).projection(notes(&db, &fail)))
        .ready_within(ReadyBound {
            max_lag_events: 0,
            max_lag: std::time::Duration::ZERO,
        })
        .router();
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    work(&db.store, "order-10", "payment-10", false).await;
    db.settle().await;
    let answer = get(&strict, "/health/ready").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        answer.json()["reason"].as_str().unwrap().contains("notes"),
        "{}",
        answer.body
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_console_cannot_show_gives_an_error_page_naming_it() {
    let db = TestDatabase::new().await;
    let id = uuid::Uuid::now_v7();
    // A row from before the store checked rows, or edited by hand.
    sqlx::query(
        db.schema
            .sql("ALTER TABLE {schema}.events DROP CONSTRAINT events_row_is_valid"),
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(db.schema.sql(
        "INSERT INTO {schema}.events (event_id, stream_id, stream_version, event_type, \
         schema_version, recorded_at, correlation_id, payload) \
         VALUES ($1, 'broken-1', 1, 'Written', 1, 'infinity', $1, '{}')",
    ))
    .bind(id)
    .execute(&db.pool)
    .await
    .unwrap();
    let router = Console::new(Admin::new(db.store.clone())).router();
    let page = get(&router, &format!("/event/{id}")).await;
    assert_eq!(page.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        page.body
            .contains(&format!("malformed event {id} (column recorded_at)")),
        "{}",
        page.body
    );
    let api = get(&router, &format!("/api/event/{id}")).await;
    assert!(
        api.json()["error"]
            .as_str()
            .unwrap()
            .contains("recorded_at"),
        "{}",
        api.body
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_rebuild_shows_its_progress_on_a_page_that_refreshes_itself() {
    let db = TestDatabase::new().await;
    db.store
        .append(
            &StreamId::new("order-1").unwrap(),
            ExpectedVersion::Any,
            (0..10).map(|i| note(&format!("n{i}"))).collect(),
        )
        .await
        .unwrap();
    db.settle().await;
    // A rebuild that got through the first four events (then stopped, or is running).
    sqlx::query(db.schema.sql(
        "INSERT INTO {schema}.projection_checkpoints \
             (projection, transaction_id, position, rebuild_started_at) \
         SELECT 'notes', transaction_id, position, now() FROM {schema}.events \
         ORDER BY transaction_id, position OFFSET 3 LIMIT 1",
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    let fail = Arc::new(AtomicBool::new(false));
    let router = Console::new(Admin::new(db.store.clone()).projection(notes(&db, &fail))).router();
    let api = get(&router, "/api/projection?name=notes").await.json();
    assert_eq!(api["rebuild"]["events_to_go"], 6, "{api}");
    assert_eq!(api["projection"]["rebuilding"], true);
    let page = get(&router, "/projection?name=notes").await;
    assert!(page.body.contains("Rebuild in progress"), "{}", page.body);
    assert!(
        page.body.contains("<progress max=\"100\" value=\""),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("http-equiv=\"refresh\""),
        "{}",
        page.body
    );
    let overview = get(&router, "/").await;
    assert!(
        overview.body.contains("rebuild unfinished"),
        "{}",
        overview.body
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_category_is_listed_once_in_order_with_exactly_its_streams() {
    let db = TestDatabase::new().await;
    // Ids of category `a` are not contiguous in id order: `a b-1` and `a!-2` (categories
    // `a b` and `a!`) sort between `a` and `a-5`.
    for id in ["a-5", "a", "a b-1", "a!-2", "a.b", "b-1", "a-10"] {
        db.store
            .append(
                &StreamId::new(id).unwrap(),
                ExpectedVersion::Any,
                vec![note(id)],
            )
            .await
            .unwrap();
    }
    db.settle().await;
    let router = Console::new(Admin::new(db.store.clone())).router();
    let names = |api: serde_json::Value| -> Vec<String> {
        api["categories"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["category"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names(get(&router, "/api/streams").await.json()),
        vec!["a", "a b", "a!", "a.b", "b"]
    );
    // Paged: two at a time, after the last one shown.
    let first = get(&router, "/api/streams?limit=2").await.json();
    assert_eq!(first["next_after"], "a b");
    assert_eq!(
        names(
            get(
                &router,
                &format!("/api/streams?limit=2&after={}", enc("a b"))
            )
            .await
            .json()
        ),
        vec!["a!", "a.b"]
    );
    let streams = |api: serde_json::Value| -> Vec<String> {
        api["streams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["stream_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        streams(get(&router, "/api/streams?category=a").await.json()),
        vec!["a", "a-10", "a-5"]
    );
    assert_eq!(
        streams(
            get(&router, "/api/streams?category=a&limit=1&after=a")
                .await
                .json()
        ),
        vec!["a-10"]
    );
    assert_eq!(
        streams(
            get(&router, &format!("/api/streams?category={}", enc("a b")))
                .await
                .json()
        ),
        vec!["a b-1"]
    );
    db.drop().await;
}

/// `GET uri` with a `Host` header.
async fn get_for_host(router: &axum::Router, uri: &str, host: &str) -> Answer {
    send(
        router,
        axum::http::Request::get(uri)
            .header("host", host)
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await
}

fn has_security_headers(answer: &Answer) -> bool {
    let h = |name: &str| {
        answer
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    h("x-frame-options") == "DENY"
        && h("content-security-policy").contains("frame-ancestors 'none'")
        && h("content-security-policy").contains("default-src 'none'")
        && h("x-content-type-options") == "nosniff"
        && h("referrer-policy") == "same-origin"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allowed_hosts_are_answered_and_every_response_forbids_framing() {
    let db = TestDatabase::new().await;
    work(&db.store, "order-1", "payment-1", false).await;
    db.settle().await;
    let router = Console::new(Admin::new(db.store.clone()))
        .allowed_hosts(["Console.Internal", "10.0.0.5:9000"])
        .router();
    for host in [
        "127.0.0.1:8080",
        "localhost:3000",
        "LOCALHOST",
        "[::1]:8080",
        "console.internal:8443",
        "10.0.0.5:8080",
    ] {
        let answer = get_for_host(&router, "/api/streams", host).await;
        assert_eq!(answer.status, StatusCode::OK, "{host}: {}", answer.body);
        assert!(
            has_security_headers(&answer),
            "{host}: {:?}",
            answer.headers
        );
    }
    // A page on rebind.evil whose name now resolves to 127.0.0.1 reads nothing.
    for uri in ["/api/streams", "/", "/event/x", "/nothing"] {
        let answer = get_for_host(&router, uri, "rebind.evil:8080").await;
        assert_eq!(answer.status, StatusCode::MISDIRECTED_REQUEST, "{uri}");
        assert!(
            answer.body.contains("\"rebind.evil\"") && answer.body.contains("allowed_hosts"),
            "{}",
            answer.body
        );
        assert!(!answer.body.contains("order-1"));
        assert!(has_security_headers(&answer));
    }
    let answer = get_for_host(&router, "/", "localhost.evil").await;
    assert_eq!(answer.status, StatusCode::MISDIRECTED_REQUEST);
    // Probes and scrapers name the pod's address; no Host at all is a client of its own.
    let answer = get_for_host(&router, "/health/live", "10.1.2.3:8080").await;
    assert_eq!(answer.status, StatusCode::OK);
    let answer = get(&router, "/api/streams").await;
    assert_eq!(answer.status, StatusCode::OK);
    let answer = get(&router, "/nothing").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert!(has_security_headers(&answer));
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_under_a_prefix_every_link_and_error_page_stays_inside_it() {
    let db = TestDatabase::new().await;
    work(&db.store, "order-1", "payment-1", false).await;
    db.settle().await;
    let console = Console::new(Admin::new(db.store.clone())).mounted_at("/console/");
    let app = axum::Router::new().nest("/console", console.router());
    let overview = get(&app, "/console").await;
    assert_eq!(overview.status, StatusCode::OK, "{}", overview.body);
    assert!(
        overview.body.contains("<a href=\"/console\">Overview</a>"),
        "{}",
        overview.body
    );
    // Every link on the overview and the streams page answers.
    let streams = get(&app, "/console/streams?category=order").await;
    for page in [&overview.body, &streams.body] {
        for link in page.split("href=\"").skip(1) {
            let href = link[..link.find('"').unwrap()].replace("&amp;", "&");
            assert!(href.starts_with("/console"), "{href}");
            let answer = get(&app, &href).await;
            assert_eq!(answer.status, StatusCode::OK, "{href}: {}", answer.body);
        }
    }
    for uri in [
        "/console/nothing",
        "/console/stream?id=order-404",
        "/console/event/not-a-uuid",
    ] {
        let error = get(&app, uri).await;
        assert!(error.status.is_client_error(), "{uri}");
        assert!(
            error.body.contains("<a href=\"/console\">Overview</a>")
                && error
                    .body
                    .contains("<a href=\"/console/streams\">Streams</a>"),
            "{uri}: {}",
            error.body
        );
        assert!(has_security_headers(&error));
    }
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_never_pages_past_an_event_an_older_transaction_commits_late() {
    let db = TestDatabase::new().await;
    work(&db.store, "order-1", "payment-1", false).await;
    db.settle().await;
    let router = Console::new(Admin::new(db.store.clone())).router();
    // An older transaction takes its id; a newer one appends and commits meanwhile.
    let mut late = db.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *late)
        .await
        .unwrap();
    db.store
        .append(
            &StreamId::new("newer-1").unwrap(),
            ExpectedVersion::Any,
            vec![note("newer")],
        )
        .await
        .unwrap();
    let newest = get(&router, "/api/log").await.json();
    let events = newest["events"].as_array().unwrap().clone();
    assert!(
        !events.iter().any(|e| e["stream_id"] == "newer-1"),
        "an event above the horizon is not readable yet: {events:?}"
    );
    let last = &events.last().unwrap()["position"];
    let later = format!(
        "/api/log?after={}.{}",
        last["transaction"].as_u64().unwrap(),
        last["sequence"].as_u64().unwrap()
    );
    // The older transaction commits its event, ordered before the newer one.
    db.store
        .append_in(
            &mut late,
            &StreamId::new("late-1").unwrap(),
            ExpectedVersion::Any,
            vec![note("late")],
        )
        .await
        .unwrap();
    late.commit().await.unwrap();
    db.settle().await;
    let page = get(&router, &later).await.json();
    let streams: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["stream_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        streams,
        ["late-1", "newer-1"],
        "\"later\" from the last page shows the late event"
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_values_no_stream_id_can_hold_are_bad_requests() {
    let db = TestDatabase::new().await;
    work(&db.store, "order-1", "payment-1", false).await;
    db.settle().await;
    let router = Console::new(Admin::new(db.store.clone())).router();
    let long = "x".repeat(513);
    for uri in [
        "/stream?id=%00".to_owned(),
        "/api/stream?id=order%001".to_owned(),
        "/stream?id=".to_owned(),
        format!("/stream?id={long}"),
        format!("/api/stream?id={long}"),
        "/streams?category=%00".to_owned(),
        "/api/streams?category=order&after=a%00".to_owned(),
        "/streams?after=%00".to_owned(),
    ] {
        let answer = get(&router, &uri).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{uri}: {}",
            answer.body
        );
    }
    // Long values no stream holds find nothing.
    let answer = get(&router, &format!("/api/streams?category={long}")).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert!(answer.json()["streams"].as_array().unwrap().is_empty());
    let answer = get(&router, &format!("/streams?category=order&after={long}")).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_runner_behind_the_bound_is_unready_unless_it_is_rebuilding() {
    let db = TestDatabase::new().await;
    let fail = Arc::new(AtomicBool::new(false));
    work(&db.store, "order-1", "payment-1", false).await;
    db.settle().await;
    notes(&db, &fail).catch_up().await.unwrap();
    let strict = Console::new(Admin::new(db.store.clone()).projection(notes(&db, &fail)))
        .ready_within(ReadyBound {
            max_lag_events: 0,
            max_lag: std::time::Duration::ZERO,
        })
        .router();
    let ready = async || {
        let answer = get(&strict, "/health/ready").await;
        (answer.status, answer.json())
    };

    // A runner that runs (holds its lock) but cannot apply: its read model is locked.
    let behind = async |rebuilding: bool| {
        work(&db.store, "order-2", "payment-2", false).await;
        db.settle().await;
        if rebuilding {
            sqlx::query(db.schema.sql(
                "UPDATE {schema}.projection_checkpoints SET rebuild_started_at = now() \
                 WHERE projection = 'notes'",
            ))
            .execute(&db.pool)
            .await
            .unwrap();
        }
        let mut blocker = db.pool.begin().await.unwrap();
        sqlx::query(
            db.schema
                .sql("LOCK TABLE {schema}.notes IN ACCESS EXCLUSIVE MODE"),
        )
        .execute(&mut *blocker)
        .await
        .unwrap();
        let runner = notes(&db, &fail);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(async move {
            runner
                .run(async move {
                    let _ = stopped.await;
                })
                .await
        });
        (blocker, stop, running)
    };

    let (blocker, stop, running) = behind(false).await;
    wait_until("the running runner is seen lagging", async || {
        let (status, body) = ready().await;
        status == StatusCode::SERVICE_UNAVAILABLE
            && body["runners"][0]["active"] == true
            && body["reason"]
                .as_str()
                .is_some_and(|r| r.contains("projection notes lags"))
    })
    .await;
    blocker.commit().await.unwrap();
    let _ = stop.send(());
    running.await.unwrap().unwrap();

    // Rebuilt in place, as far behind: ready, and said to be rebuilding.
    let (blocker, stop, running) = behind(true).await;
    wait_until("the rebuilding runner is seen running", async || {
        let (status, body) = ready().await;
        body["runners"][0]["active"] == true && {
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(body["runners"][0]["rebuilding"], true, "{body}");
            assert!(body["runners"][0]["lag_events"].as_u64().unwrap() > 0);
            true
        }
    })
    .await;
    blocker.commit().await.unwrap();
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    db.drop().await;
}
