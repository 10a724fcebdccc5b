//! The README's main command, run as a newcomer runs it: in memory, then on PostgreSQL, followed
//! by the admin CLI on what it wrote.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use es_postgres::testing::{TestDatabase, database_url};

fn run(command: &mut Command) -> String {
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().unwrap();
    let stdout = String::from_utf8(stdout).unwrap();
    let stderr = String::from_utf8_lossy(&stderr);
    assert!(status.success(), "{command:?} failed\n{stdout}\n{stderr}");
    stdout
}

/// What every run must print, whatever the store.
fn assert_the_story(out: &str) {
    for expected in [
        "the welcome-bonus policy saw alice's opening and deposited 5.00: balance 105.00",
        "bob asked to withdraw 500.00, but holds 5.00: refused",
        "8 withdrawals of 1.00 at once: balance 105.00 -> 97.00, version 11",
        "owner Carol, currency EUR",
        "t-1 completed",
        "t-2 rejected at the debit",
        "t-3 cancelled: debited, credit refused (account dave: the account is not open)",
        "alice now holds 72.00",
        "bob now holds 30.00",
        "loaded from the snapshot at version 200",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in\n{out}");
    }
    // The trace of t-3: five events, each caused by the one above it.
    let trace: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.contains("transfer t-3, correlation id"))
        .skip(1)
        .take(5)
        .collect();
    let expected = [
        "TransferRequested",
        "TransferDebited",
        "CreditRefused",
        "TransferRefunded",
        "TransferCancelled",
    ];
    for (depth, (line, event)) in trace.iter().zip(expected).enumerate() {
        let indent = 5 + 3 * depth;
        assert!(
            line[indent..].starts_with(&format!("└─ {event}")),
            "line {depth} of the trace: {line:?}\n{out}"
        );
    }
}

fn bank() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bank"))
}

#[test]
fn the_main_example_runs_in_memory() {
    let out = run(bank().env_remove("DATABASE_URL"));
    assert!(out.starts_with("Running on the in-memory store"), "{out}");
    assert_the_story(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_main_example_runs_on_postgres_and_the_admin_cli_operates_it() {
    let db = TestDatabase::new().await;
    let schema = db.schema.to_string();
    let url = database_url();
    let out = run(bank().env("DATABASE_URL", &url).args(["--schema", &schema]));
    assert!(out.starts_with("Running on PostgreSQL"), "{out}");
    assert_the_story(&out);
    assert!(
        out.contains("t-3  alice -> dave      10.00  cancelled"),
        "the transfer history read model: {out}"
    );

    let admin = |args: &[&str]| {
        run(Command::new(env!("CARGO_BIN_EXE_bank-admin"))
            .env("DATABASE_URL", &url)
            .args(["--schema", &schema])
            .args(args))
    };
    let correlation = out
        .lines()
        .find_map(|l| l.split_once("transfer t-3, correlation id "))
        .map(|(_, id)| id.trim_end_matches(':').to_owned())
        .unwrap();
    let traced = admin(&["trace", &correlation]);
    let events: Vec<&str> = traced
        .lines()
        .map(|l| l.trim_start().trim_start_matches("└─ "))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        events,
        [
            "TransferRequested",
            "TransferDebited",
            "CreditRefused",
            "TransferRefunded",
            "TransferCancelled"
        ],
        "{traced}"
    );

    let status = admin(&["status"]);
    // Projections and sagas: name, held by, checkpoint, lag...
    for (name, lag_column) in [
        ("account_balances", 3),
        ("activity_by_type", 3),
        ("transfer_history", 3),
        ("transfer_saga", 3),
        ("welcome_bonus", 3),
    ] {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        let lag = line.split_whitespace().nth(lag_column).unwrap();
        assert_eq!(lag, "0", "{name} caught up: {status}");
    }

    // Rebuilding a read model whose log holds a version-1 event (carol's opening) gives the
    // same rows: the runner reads through the upcasters.
    let balances = format!("SELECT account, balance FROM \"{schema}\".account_balances ORDER BY 1");
    let before: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(balances.clone()))
        .fetch_all(&db.pool)
        .await
        .unwrap();
    admin(&["rebuild", "account_balances"]);
    admin(&["rebuild", "--blue-green", "account_balances"]);
    let after: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(balances))
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(before, after);
    assert!(before.contains(&("carol".to_owned(), 500)), "{before:?}");

    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}_next\" CASCADE"
    )))
    .execute(&db.pool)
    .await
    .unwrap();
    db.drop().await;
}
