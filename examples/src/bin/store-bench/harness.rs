//! What every workload shares: the two sides, repetitions and medians, fresh schemas, the
//! payload and metadata shapes, and the tables printed at the end.

use std::future::Future;
use std::time::Duration;

use es_core::{Metadata, NewEvent};
use es_postgres::PgEventStore;
use serde_json::value::RawValue;
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, PgExecutor, PgPool};
use uuid::Uuid;

/// Repetitions of each measurement; figures are their medians.
pub const REPS: usize = 3;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Framework,
    Raw,
}

impl Side {
    /// The schema each side works in: both built by the store's migrations, so tables, indexes
    /// and triggers are identical.
    pub fn schema(self) -> &'static str {
        match self {
            Side::Framework => "bench_fw",
            Side::Raw => "bench_raw",
        }
    }
}

/// One repetition of one side.
#[derive(Clone, Copy, Debug)]
pub struct Rep {
    pub side: Side,
    pub index: usize,
}

/// A figure of both sides: medians, in the unit of its table.
pub struct Figure {
    pub name: String,
    pub framework: f64,
    pub raw: f64,
    /// Anything else worth printing beside the figure (memory, ...).
    pub note: String,
}

/// Runs `work` [`REPS`] times for each side, alternating which side goes first so neither
/// always gets the warmer cache, and returns the medians of `items / elapsed`.
pub async fn compare_rates<F, Fut>(name: &str, items: usize, work: F) -> Result<Figure, BoxError>
where
    F: Fn(Rep) -> Fut,
    Fut: Future<Output = Result<Duration, BoxError>>,
{
    let (framework, raw) = alternate(|rep| {
        let run = work(rep);
        async move { Ok(items as f64 / run.await?.as_secs_f64()) }
    })
    .await?;
    eprintln!(
        "{name}: framework {framework:.0}/s, raw {raw:.0}/s, ratio {:.2}",
        framework / raw
    );
    Ok(Figure {
        name: name.to_owned(),
        framework,
        raw,
        note: String::new(),
    })
}

/// Runs `measure` [`REPS`] times per side, alternating; returns the two medians.
pub async fn alternate<F, Fut>(measure: F) -> Result<(f64, f64), BoxError>
where
    F: Fn(Rep) -> Fut,
    Fut: Future<Output = Result<f64, BoxError>>,
{
    let (mut framework, mut raw) = (Vec::new(), Vec::new());
    for index in 0..REPS {
        let order = if index % 2 == 0 {
            [Side::Framework, Side::Raw]
        } else {
            [Side::Raw, Side::Framework]
        };
        for side in order {
            let value = measure(Rep { side, index }).await?;
            match side {
                Side::Framework => framework.push(value),
                Side::Raw => raw.push(value),
            }
        }
    }
    Ok((median(framework), median(raw)))
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// Drops and recreates `schema` with the store's migrations. The raw side's schema is then
/// stripped of what only the framework has (its triggers and row checks), so the raw side
/// writes plain tables and the framework's whole cost shows in the comparison.
pub async fn fresh_store(pool: &PgPool, schema: &str) -> Result<PgEventStore, BoxError> {
    sqlx::query(AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE"
    )))
    .execute(pool)
    .await?;
    let store = PgEventStore::with_schema(pool.clone(), schema)?;
    store.migrate().await?;
    if schema == Side::Raw.schema() {
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP TRIGGER events_are_immutable ON {schema}.events; \
             DROP TRIGGER events_are_not_truncated ON {schema}.events; \
             ALTER TABLE {schema}.events DROP CONSTRAINT events_row_is_valid"
        )))
        .execute(pool)
        .await?;
    }
    Ok(store)
}

/// Puts back the per-statement NOTIFY trigger earlier releases woke followers with, to
/// measure what it cost appends.
pub async fn add_notify_trigger(pool: &PgPool, schema: &str) -> Result<(), BoxError> {
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE FUNCTION {schema}.notify_events_appended() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN PERFORM pg_notify(TG_TABLE_SCHEMA || '.events', ''); RETURN NULL; END $$; \
         CREATE TRIGGER events_appended AFTER INSERT ON {schema}.events \
         FOR EACH STATEMENT EXECUTE FUNCTION {schema}.notify_events_appended()"
    )))
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn vacuum(pool: &PgPool, schema: &str) -> Result<(), BoxError> {
    sqlx::query(AssertSqlSafe(format!("VACUUM ANALYZE {schema}.events")))
        .execute(pool)
        .await?;
    Ok(())
}

/// Writes out what earlier work left dirty (a checkpoint), so that a measurement is not of
/// the server flushing the previous workload's pages.
pub async fn settle(pool: &PgPool) -> Result<(), BoxError> {
    sqlx::query("CHECKPOINT").execute(pool).await?;
    Ok(())
}

/// About 300 bytes of JSON.
pub fn payload(n: usize) -> Box<RawValue> {
    let text = format!(
        r#"{{"order_id":"{}","customer":"customer-{n:08}","amount_cents":{n},"currency":"EUR","lines":[{{"sku":"SKU-{n:06}","quantity":2,"unit_price":1999}},{{"sku":"SKU-{:06}","quantity":1,"unit_price":4999}}],"note":"benchmark payload padded to about three hundred bytes ....."}}"#,
        Uuid::now_v7(),
        n + 1
    );
    RawValue::from_string(text).expect("valid JSON")
}

/// About 150 bytes of JSON.
pub fn metadata() -> Metadata {
    Metadata::new()
        .with("user", "bench-user-0001")
        .with("tenant", "tenant-bench")
        .with("trace_id", Uuid::now_v7().to_string())
        .with("source", "store-bench/append-workload/v1")
}

pub fn event(n: usize) -> NewEvent {
    NewEvent::new("OrderPlaced", 1, payload(n)).with_metadata(metadata())
}

/// Prints a markdown table: `unit` names the figures' unit; `higher_is_better` decides which
/// way the ratio reads.
pub fn print_table(title: &str, unit: &str, figures: &[Figure]) {
    if figures.is_empty() {
        return;
    }
    println!("\n### {title}\n");
    println!("| workload | framework {unit} | raw SQL {unit} | framework/raw | |");
    println!("|---|---:|---:|---:|---|");
    for f in figures {
        let precision = if f.framework < 100.0 { 2 } else { 0 };
        println!(
            "| {} | {:.*} | {:.*} | {:.2} | {} |",
            f.name,
            precision,
            f.framework,
            precision,
            f.raw,
            f.framework / f.raw,
            f.note
        );
    }
}

/// The columns the store selects for every event read: what raw reads fetch too.
const COLUMNS: &str = "transaction_id, position, event_id, stream_id, stream_version, \
    event_type, schema_version, recorded_at, correlation_id, causation_id, metadata::text, \
    payload::text";

/// A stream's rows from version `from` on, read by hand as the store reads them.
pub async fn stream_rows(
    pool: &PgPool,
    schema: &str,
    stream: &str,
    from: i64,
) -> Result<Vec<PgRow>, BoxError> {
    Ok(sqlx::query(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM {schema}.events WHERE stream_id = $1 AND stream_version >= $2 \
         ORDER BY stream_version"
    )))
    .bind(stream)
    .bind(from)
    .fetch_all(pool)
    .await?)
}

/// Up to `limit` rows of the global log after `(transaction_id, position)`: the store's index
/// walk, without its transaction horizon.
pub async fn log_page<'c>(
    executor: impl PgExecutor<'c>,
    schema: &str,
    after: (i64, i64),
    limit: i64,
) -> Result<Vec<PgRow>, BoxError> {
    Ok(sqlx::query(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM {schema}.events WHERE (transaction_id, position) > ($1, $2) \
         ORDER BY transaction_id, position LIMIT $3"
    )))
    .bind(after.0)
    .bind(after.1)
    .bind(limit)
    .fetch_all(executor)
    .await?)
}
