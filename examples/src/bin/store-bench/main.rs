//! Measures the framework beside raw SQL doing the same database work, in the same run.
//!
//! ```text
//! cargo run --release -p es-examples --bin store-bench            # every workload
//! cargo run --release -p es-examples --bin store-bench -- loads   # some: commands, long-stream,
//!                                                                 # appends, notify, follow,
//!                                                                 # import, rebuild, reads,
//!                                                                 # loads, growth
//! ```
//!
//! Uses `DATABASE_URL` (default: the local server). Each side works in a schema of its own,
//! `bench_fw` and `bench_raw`, recreated per repetition and built by the same migrations; the
//! raw side's then loses the framework's triggers and row checks, so it writes plain tables. Every figure is the median of 3 repetitions,
//! the two sides alternating which goes first. Payloads are ~300 bytes of JSON, metadata ~150.
//! See docs/benchmarks.md for what each raw side does and the figures of the last run.

mod appends;
mod commands;
mod follow;
mod growth;
mod harness;
mod import;
mod reads;
mod rebuild;

use harness::{BoxError, print_table};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

const WORKLOADS: [&str; 10] = [
    "commands",
    "long-stream",
    "appends",
    "notify",
    "follow",
    "import",
    "rebuild",
    "reads",
    "loads",
    "growth",
];

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .connect(&url)
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("rebuild-child") {
        let side = args.get(1).ok_or("rebuild-child needs a side")?;
        return rebuild::child(&pool, side).await;
    }
    if let Some(unknown) = args.iter().find(|a| !WORKLOADS.contains(&a.as_str())) {
        return Err(format!(
            "unknown workload {unknown:?}; known: {}",
            WORKLOADS.join(", ")
        )
        .into());
    }
    let wanted = |name: &str| args.is_empty() || args.iter().any(|a| a == name);
    // The rebuild reads what the import wrote.
    if wanted("rebuild") && !wanted("import") {
        return Err("the rebuild workload needs the import workload's events: run both".into());
    }

    print_machine(&pool).await?;
    let mut commands = Vec::new();
    if wanted("commands") {
        commands.extend(commands::on_new_streams(&pool).await?);
    }
    if wanted("long-stream") {
        commands.extend(commands::on_a_long_stream(&pool).await?);
    }
    let mut events = Vec::new();
    if wanted("appends") {
        events.extend(appends::run(&pool).await?);
    }
    let mut wakeup = Vec::new();
    if wanted("notify") {
        wakeup.push(appends::notify_cost(&pool).await?);
    }
    let latency = if wanted("follow") {
        follow::run(&pool).await?
    } else {
        Vec::new()
    };
    if wanted("import") {
        events.push(import::run(&pool).await?);
    }
    if wanted("rebuild") {
        events.push(rebuild::run().await?);
    }
    if wanted("reads") {
        events.extend(reads::run(&pool).await?);
    }
    let loads = if wanted("loads") {
        reads::loads(&pool).await?
    } else {
        Vec::new()
    };
    // Last: it leaves the most behind in caches and WAL.
    let growth = if wanted("growth") {
        growth::run(&pool).await?
    } else {
        Vec::new()
    };

    print_table("Commands (higher is better)", "commands/s", &commands);
    print_table(
        "Appends, import, rebuild, reads (higher is better)",
        "events/s",
        &events,
    );
    print_table(
        "Waking followers: coalesced (framework column) vs a NOTIFY per append (raw column)",
        "events/s",
        &wakeup,
    );
    print_table(
        "Loading a 10,000-event order (lower is better)",
        "ms",
        &loads,
    );
    follow::print(&latency);
    growth::print(&growth);
    // What the workloads stored is of no use once measured.
    for schema in [
        "bench_fw",
        "bench_raw",
        "bench_read",
        "bench_load",
        "bench_follow",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE"
        )))
        .execute(&pool)
        .await?;
    }
    Ok(())
}

async fn print_machine(pool: &PgPool) -> Result<(), BoxError> {
    let version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(pool)
        .await?;
    let mut settings = Vec::new();
    for name in [
        "fsync",
        "synchronous_commit",
        "shared_buffers",
        "wal_level",
        "max_wal_size",
        "max_connections",
    ] {
        let value: String = sqlx::query_scalar("SELECT current_setting($1)")
            .bind(name)
            .fetch_one(pool)
            .await?;
        settings.push(format!("{name}={value}"));
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_owned())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or("?".to_owned(), |kb| format!("{} GiB", kb / 1024 / 1024));
    println!(
        "machine: {cores} cores, {memory} RAM; PostgreSQL {version}; {}",
        settings.join(", ")
    );
    Ok(())
}
