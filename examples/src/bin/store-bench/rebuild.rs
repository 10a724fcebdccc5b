//! Rebuilding a read model from the 1,000,000 imported events, each run in a child process of
//! its own so its peak memory is its own: `ProjectionRunner::rebuild` beside a hand-written loop
//! doing the same reads and writes.

use std::collections::HashMap;
use std::time::Instant;

use async_trait::async_trait;
use es_core::{BoxError as CoreError, Envelope};
use es_postgres::{
    ErrorPolicy, PgEventStore, PgProjection, ProjectionRunner, ReadModel, SchemaName,
};
use serde::Deserialize;
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool, Row};

use crate::commands::OrderEvent;
use crate::harness::{BoxError, Figure, Side, alternate};

/// Events per transaction on both sides.
const BATCH: usize = 500;

/// Per customer: lines ordered and units. One upsert per customer touched in a batch.
struct CustomerLines {
    schema: SchemaName,
    table: String,
}

impl CustomerLines {
    fn new(schema: &SchemaName, table: &str) -> Self {
        Self {
            schema: schema.clone(),
            table: format!("{schema}.{table}"),
        }
    }
}

#[async_trait]
impl PgProjection for CustomerLines {
    type Event = OrderEvent;

    fn name(&self) -> &str {
        "customer_lines"
    }

    fn read_model(&self) -> Option<ReadModel> {
        ReadModel::new(self.schema.clone(), ["customer_lines"]).ok()
    }

    async fn setup(&self, conn: &mut PgConnection) -> Result<(), CoreError> {
        sqlx::query(AssertSqlSafe(create_table(&self.table)))
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), CoreError> {
        sqlx::query(AssertSqlSafe(format!("TRUNCATE {}", self.table)))
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &Envelope<OrderEvent>,
    ) -> Result<(), CoreError> {
        self.apply_batch(conn, std::slice::from_ref(event)).await
    }

    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        events: &[Envelope<OrderEvent>],
    ) -> Result<(), CoreError> {
        let mut totals: HashMap<&str, (i64, i64)> = HashMap::new();
        for event in events {
            let OrderEvent::LineAdded {
                customer, quantity, ..
            } = &event.payload;
            let entry = totals.entry(customer.as_str()).or_default();
            entry.0 += 1;
            entry.1 += i64::from(*quantity);
        }
        upsert(conn, &self.table, totals).await?;
        Ok(())
    }
}

fn create_table(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (customer text PRIMARY KEY, lines bigint NOT NULL, \
         units bigint NOT NULL)"
    )
}

async fn upsert(
    conn: &mut PgConnection,
    table: &str,
    totals: HashMap<&str, (i64, i64)>,
) -> Result<(), sqlx::Error> {
    let mut customers = Vec::with_capacity(totals.len());
    let mut lines = Vec::with_capacity(totals.len());
    let mut units = Vec::with_capacity(totals.len());
    for (customer, (l, u)) in totals {
        customers.push(customer);
        lines.push(l);
        units.push(u);
    }
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {table} AS t (customer, lines, units) \
         SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[]) \
         ON CONFLICT (customer) DO UPDATE SET lines = t.lines + EXCLUDED.lines, \
           units = t.units + EXCLUDED.units"
    )))
    .bind(&customers)
    .bind(&lines)
    .bind(&units)
    .execute(conn)
    .await?;
    Ok(())
}

/// Runs each side's rebuild 3 times, each in a child process (`store-bench rebuild-child`).
pub async fn run() -> Result<Figure, BoxError> {
    let peaks = std::sync::Mutex::new((Vec::new(), Vec::new()));
    let (framework, raw) = alternate(|rep| {
        let peaks = &peaks;
        async move {
            let side = match rep.side {
                Side::Framework => "framework",
                Side::Raw => "raw",
            };
            let output = std::process::Command::new(std::env::current_exe()?)
                .args(["rebuild-child", side])
                .output()?;
            if !output.status.success() {
                return Err(format!(
                    "the {side} rebuild failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                )
                .into());
            }
            let text = String::from_utf8(output.stdout)?;
            let mut fields = text.split_whitespace();
            let seconds: f64 = fields.next().ok_or("no time")?.parse()?;
            let peak_kb: f64 = fields.next().ok_or("no peak")?.parse()?;
            let mut peaks = peaks.lock().map_err(|_| "poisoned")?;
            match rep.side {
                Side::Framework => peaks.0.push(peak_kb),
                Side::Raw => peaks.1.push(peak_kb),
            }
            let events = (crate::import::STREAMS * crate::import::PER_STREAM) as f64;
            Ok(events / seconds)
        }
    })
    .await?;
    let (fw_peaks, raw_peaks) = peaks.into_inner().map_err(|_| "poisoned")?;
    let note = format!(
        "peak RSS {:.1} MB vs {:.1} MB",
        crate::harness::median(fw_peaks) / 1024.0,
        crate::harness::median(raw_peaks) / 1024.0
    );
    eprintln!("rebuild: framework {framework:.0}/s, raw {raw:.0}/s, {note}");
    Ok(Figure {
        name: "projection rebuild of 1,000,000 events, batches of 500".to_owned(),
        framework,
        raw,
        note,
    })
}

/// The child: one rebuild; prints seconds and peak RSS in kB.
pub async fn child(pool: &PgPool, side: &str) -> Result<(), BoxError> {
    let store = PgEventStore::with_schema(pool.clone(), "bench_fw")?;
    let start;
    match side {
        "framework" => {
            let runner = ProjectionRunner::new(
                store.clone(),
                CustomerLines::new(store.schema(), "customer_lines"),
            )
            .batch_size(BATCH);
            start = Instant::now();
            runner.rebuild(ErrorPolicy::STOP, |_| {}).await?;
        }
        _ => {
            let mut conn = pool.acquire().await?;
            // Several statements: the simple query protocol.
            sqlx::Executor::execute(
                &mut *conn,
                AssertSqlSafe(format!(
                    "{}; TRUNCATE bench_fw.customer_lines_raw; \
                 CREATE TABLE IF NOT EXISTS bench_fw.raw_checkpoint (id int PRIMARY KEY, \
                 transaction_id bigint, position bigint); \
                 INSERT INTO bench_fw.raw_checkpoint VALUES (1, 0, 0) \
                 ON CONFLICT (id) DO UPDATE SET transaction_id = 0, position = 0",
                    create_table("bench_fw.customer_lines_raw")
                )),
            )
            .await?;
            start = Instant::now();
            raw_rebuild(&mut conn).await?;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    println!("{seconds} {}", peak_rss_kb()?);
    Ok(())
}

/// The payload fields the read model needs.
#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    customer: std::borrow::Cow<'a, str>,
    quantity: i64,
}

/// Pages of 500 in global order; per page, in one transaction: lock the checkpoint row, upsert
/// the totals of the page, save the checkpoint.
async fn raw_rebuild(conn: &mut PgConnection) -> Result<(), BoxError> {
    let mut after = (0i64, 0i64);
    loop {
        let rows = crate::harness::log_page(&mut *conn, "bench_fw", after, BATCH as i64).await?;
        let Some(last) = rows.last() else {
            return Ok(());
        };
        after = (last.try_get(0)?, last.try_get(1)?);
        let mut tx = conn.begin().await?;
        sqlx::query("SELECT transaction_id FROM bench_fw.raw_checkpoint WHERE id = 1 FOR UPDATE")
            .execute(&mut *tx)
            .await?;
        let mut totals: HashMap<String, (i64, i64)> = HashMap::new();
        for row in &rows {
            let payload: &str = row.try_get(11)?;
            let line: Line<'_> = serde_json::from_str(payload)?;
            let entry = totals.entry(line.customer.into_owned()).or_default();
            entry.0 += 1;
            entry.1 += line.quantity;
        }
        let borrowed = totals.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        upsert(&mut tx, "bench_fw.customer_lines_raw", borrowed).await?;
        sqlx::query(
            "UPDATE bench_fw.raw_checkpoint SET transaction_id = $1, position = $2 WHERE id = 1",
        )
        .bind(after.0)
        .bind(after.1)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
}

fn peak_rss_kb() -> Result<u64, BoxError> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .ok_or("no VmHWM in /proc/self/status")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .ok_or("malformed VmHWM")?
        .parse()?)
}
