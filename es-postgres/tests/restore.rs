//! Restoring a logical dump into another cluster: scripts/advance-xid-epoch finds the stored
//! transaction ids ahead of the new cluster's, advances its epoch, and new events then order
//! after the restored ones. Runs on two throwaway clusters of its own.

#![allow(clippy::unwrap_used)]

use std::process::Command;

use es_core::testing::conformance::test_event;
use es_core::{EventStore, ExpectedVersion, Position, StreamId};
use es_postgres::PgEventStore;
use es_postgres::testing::TestCluster;
use sqlx::postgres::PgPoolOptions;

fn script(cluster: &TestCluster, args: &[&str]) -> (i32, String) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/advance-xid-epoch");
    let output = Command::new("bash")
        .arg(path)
        .args(args)
        .args(["--url", &cluster.url()])
        .env("PG_BIN", cluster.bin_dir())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

async fn store(cluster: &TestCluster) -> PgEventStore {
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&cluster.url())
        .await
        .unwrap();
    PgEventStore::new(pool)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_cluster_is_advanced_past_the_stored_transaction_ids() {
    let original = TestCluster::start(&[]);
    let source = store(&original).await;
    source.migrate().await.unwrap();
    // The original cluster has run for a while: its ids are ahead of a fresh cluster's.
    for _ in 0..1500 {
        sqlx::query("SELECT pg_current_xact_id()")
            .execute(source.pool())
            .await
            .unwrap();
    }
    let stream = StreamId::new("order-1").unwrap();
    source
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![test_event(1), test_event(2)],
        )
        .await
        .unwrap();
    source.pool().close().await;

    let restored = TestCluster::start(&[]);
    let dump = restored.data_dir.join("dump.sql");
    let dump = dump.to_str().unwrap();
    let port = original.port.to_string();
    original.run(
        "pg_dump",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-f",
            dump,
            "postgres",
        ],
    );
    let port = restored.port.to_string();
    restored.run(
        "psql",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            dump,
            "postgres",
        ],
    );

    let (code, text) = script(&restored, &["check"]);
    assert_eq!(code, 1, "the check sees the stored ids ahead: {text}");
    let (code, text) = script(
        &restored,
        &["advance", "--pgdata", restored.data_dir.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{text}");
    let (code, text) = script(&restored, &["check"]);
    assert_eq!(code, 0, "{text}");

    // New events now order after the restored ones.
    let target = store(&restored).await;
    target
        .append(&stream, ExpectedVersion::Exact(2), vec![test_event(3)])
        .await
        .unwrap();
    let log = target.read_all(Position::START, 10).await.unwrap();
    let versions: Vec<u64> = log.iter().map(|e| e.stream_version).collect();
    assert_eq!(versions, [1, 2, 3]);
    target.pool().close().await;
}
