//! The console in a real browser: headless Chromium driven through chromedriver follows a
//! piece of work from the overview to a stream, an event and its trace, then replays a parked
//! event with the admin token and sees it applied. Screenshots are kept under
//! `target/console-screenshots/`.
//!
//! Needs `chromium` and `chromedriver` (Debian: `apt-get install -y chromium chromium-driver`;
//! `.ci/run` and `scripts/test` install them when missing). `CHROMEDRIVER` and `CHROMIUM`
//! name other binaries.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use es_admin::Admin;
use es_console::Console;
use es_core::{EventStore, ExpectedVersion, StreamId};
use es_postgres::testing::TestDatabase;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

const TOKEN: &str = "browser-admin-token";

/// The binary `var` names, or the first of `candidates` that exists.
fn binary(var: &str, candidates: &[&str]) -> Option<PathBuf> {
    if let Ok(path) = std::env::var(var) {
        return Some(PathBuf::from(path));
    }
    candidates.iter().map(PathBuf::from).find(|p| p.exists())
}

fn screenshots_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.unwrap();
    std::fs::write(screenshots_dir().join(name), png).unwrap();
}

/// A free port on the loopback interface.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The page's visible text. A page still loading after a click or a submit replaces its body
/// under the reader (a stale element): read the new one.
async fn text(client: &Client) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let read = match client.find(Locator::Css("body")).await {
            Ok(body) => body.text().await,
            Err(error) => Err(error),
        };
        match read {
            Ok(text) => return text,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(error) => panic!("reading the page: {error}"),
        }
    }
}

/// The page's visible text once it holds `needle`: a submitted form's answer, not the page
/// the form was on.
async fn text_with(client: &Client, needle: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = text(client).await;
        if text.contains(needle) || std::time::Instant::now() >= deadline {
            return text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn click_link(client: &Client, text: &str) {
    client
        .find(Locator::LinkText(text))
        .await
        .unwrap_or_else(|e| panic!("no link {text:?}: {e}"))
        .click()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_follows_a_piece_of_work_and_replays_a_parked_event_in_a_browser() {
    let install = "install them with `apt-get install -y chromium chromium-driver` (Debian), \
                   or name them with CHROMEDRIVER and CHROMIUM; .ci/run and scripts/test \
                   install them when missing";
    let Some(chromedriver) = binary("CHROMEDRIVER", &["/usr/bin/chromedriver"]) else {
        panic!("the browser test needs chromedriver and headless Chromium: {install}");
    };
    let Some(chromium) = binary(
        "CHROMIUM",
        &["/usr/bin/chromium", "/usr/bin/chromium-browser"],
    ) else {
        panic!("the browser test needs headless Chromium: {install}");
    };

    // The store: a piece of work across two streams whose effect the projection parks.
    let db = TestDatabase::new().await;
    let fail = Arc::new(AtomicBool::new(true));
    work(&db.store, "order-1", "payment-1", true).await;
    db.store
        .append(
            &StreamId::new("order-2").unwrap(),
            ExpectedVersion::Any,
            (0..3).map(|i| note(&format!("note {i}"))).collect(),
        )
        .await
        .unwrap();
    db.settle().await;
    let runner = notes(&db, &fail);
    runner.catch_up().await.unwrap();
    assert_eq!(runner.parked().await.unwrap().len(), 1);
    fail.store(false, Ordering::SeqCst);

    // The console, on a port of its own, with an admin token.
    let console = Console::new(Admin::new(db.store.clone()).projection(notes(&db, &fail)))
        .admin_token(TOKEN)
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(console.serve(listener, async move {
        let _ = stopped.await;
    }));

    // chromedriver, and a browser session through it.
    let port = free_port();
    let mut driver = tokio::process::Command::new(&chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}; {install}", chromedriver.display()));
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "chromedriver did not listen on port {port} within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let profile = std::env::temp_dir().join(format!(
        "es-console-chromium-{}-{}",
        std::process::id(),
        started.elapsed().as_nanos()
    ));
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        json!({
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,900",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .unwrap_or_else(|e| panic!("no browser session through chromedriver: {e}"));

    // The overview: the projection with its parked event.
    client.goto(&format!("{base}/")).await.unwrap();
    let overview = text(&client).await;
    assert!(
        overview.contains("Overview") && overview.contains("notes"),
        "{overview}"
    );
    screenshot(&client, "overview.png").await;

    // To the streams, a category, a stream.
    click_link(&client, "Browse streams").await;
    click_link(&client, "order").await;
    click_link(&client, "order-1").await;
    let stream = text(&client).await;
    assert!(
        stream.contains("Stream order-1") && stream.contains("asked"),
        "{stream}"
    );
    screenshot(&client, "stream.png").await;

    // An event, its causation tree, then the trace of its correlation id.
    click_link(&client, "v1").await;
    let event = text(&client).await;
    assert!(
        event.contains("Causation tree") && event.contains("payment-1"),
        "{event}"
    );
    screenshot(&client, "event.png").await;
    let correlation = client
        .find(Locator::Css("a[href*='/trace/']"))
        .await
        .unwrap();
    correlation.click().await.unwrap();
    let trace = text(&client).await;
    assert!(
        trace.starts_with("Overview") || trace.contains("Trace"),
        "{trace}"
    );
    assert!(
        trace.contains("order-1") && trace.contains("payment-1"),
        "{trace}"
    );
    screenshot(&client, "trace.png").await;

    // The projection: the parked event, replayed with the token through the form.
    click_link(&client, "Projections").await;
    click_link(&client, "notes").await;
    let projection = text(&client).await;
    assert!(projection.contains("poisoned"), "{projection}");
    screenshot(&client, "projection-parked.png").await;
    let form = client
        .form(Locator::Css("form[action='/projection/replay']"))
        .await
        .unwrap();
    form.set_by_name("token", TOKEN).await.unwrap();
    form.submit().await.unwrap();
    let replayed = text_with(&client, "Replayed").await;
    assert!(
        replayed.contains("Replayed 1 parked event") && replayed.contains("No parked event"),
        "{replayed}"
    );
    screenshot(&client, "projection-replayed.png").await;
    assert_eq!(
        noted(&db, "payment-1").await,
        2,
        "the replayed event is applied"
    );

    client.close().await.unwrap();
    let _ = driver.kill().await;
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&profile);
    db.drop().await;
}
