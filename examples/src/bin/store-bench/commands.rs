//! Commands through `CommandHandler` (load, decide, append) beside hand-written code doing the
//! same reads and writes: on new streams, and on one order whose stream has grown long, with
//! and without snapshots.

use std::sync::Arc;
use std::time::{Duration, Instant};

use es_core::{
    CommandContext, CommandHandler, EventStore, ExpectedVersion, NewEvent, Repository,
    SnapshotPolicy, StreamId,
};
use es_postgres::{PgEventStore, PgSnapshotStore};
use serde::{Deserialize, Serialize};
use sqlx::{AssertSqlSafe, PgPool, Row};
use uuid::Uuid;

use crate::appends::raw_append;
use crate::harness::{
    BoxError, Figure, Rep, Side, alternate, compare_rates, fresh_store, metadata, stream_rows,
};

/// Add a line to an order.
#[derive(Clone, Debug)]
pub struct AddLine {
    pub customer: String,
    pub sku: String,
    pub quantity: u32,
    pub unit_price: u64,
}

/// A line was added: about 300 bytes of JSON.
#[derive(Clone, Debug, PartialEq, es_core::DomainEvent, Serialize, Deserialize)]
#[event(apply_trait = ApplyOrderEvent)]
pub enum OrderEvent {
    LineAdded {
        order_id: Uuid,
        customer: String,
        sku: String,
        quantity: u32,
        unit_price: u64,
        currency: String,
        note: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("quantity must be positive")]
    ZeroQuantity,
}

/// An order: its lines and total; snapshotted every 100 events.
#[derive(Clone, Debug, Default, es_core::Aggregate, Serialize, Deserialize)]
#[aggregate(
    category = "order",
    command = AddLine,
    event = OrderEvent,
    error = OrderError,
    snapshot_every = 100
)]
pub struct Order {
    pub id: Option<Uuid>,
    pub lines: u64,
    pub total: u64,
}

impl Order {
    fn decide(&self, command: &AddLine) -> Result<Vec<OrderEvent>, OrderError> {
        if command.quantity == 0 {
            return Err(OrderError::ZeroQuantity);
        }
        Ok(vec![line(self.id.unwrap_or_else(Uuid::now_v7), command)])
    }
}

impl ApplyOrderEvent for Order {
    fn on_line_added(
        &mut self,
        order_id: &Uuid,
        _customer: &str,
        _sku: &str,
        quantity: &u32,
        unit_price: &u64,
        _currency: &str,
        _note: &str,
    ) {
        self.id = Some(*order_id);
        self.lines += 1;
        self.total += u64::from(*quantity) * unit_price;
    }
}

pub fn line(order_id: Uuid, command: &AddLine) -> OrderEvent {
    OrderEvent::LineAdded {
        order_id,
        customer: command.customer.clone(),
        sku: command.sku.clone(),
        quantity: command.quantity,
        unit_price: command.unit_price,
        currency: "EUR".into(),
        note: "benchmark line padded to about three hundred bytes of JSON with its fields \
               ............................................................"
            .into(),
    }
}

/// Line `n` of order `order_id`, as an event to append, with the benchmark's metadata.
pub fn line_event(order_id: Uuid, n: usize) -> Result<NewEvent, BoxError> {
    Ok(NewEvent::from_event(&line(order_id, &add_line(n)))?.with_metadata(metadata()))
}

pub fn add_line(n: usize) -> AddLine {
    AddLine {
        customer: format!("customer-{:08}", n % 10_000),
        sku: format!("SKU-{:06}", n % 1000),
        quantity: (n % 5 + 1) as u32,
        unit_price: 1999,
    }
}

fn context() -> CommandContext {
    let mut context = CommandContext::new();
    context.metadata = metadata();
    context
}

/// The events the raw side writes for `command`: the same as the framework's.
fn raw_events(command: &AddLine, order_id: Uuid) -> Result<Vec<NewEvent>, BoxError> {
    let context = context();
    Ok(vec![
        NewEvent::from_event(&line(order_id, command))?
            .with_metadata(context.metadata)
            .correlated_with(context.command_id)
            .caused_by(context.command_id),
    ])
}

pub async fn on_new_streams(pool: &PgPool) -> Result<Vec<Figure>, BoxError> {
    let mut figures = Vec::new();
    for (name, clients, per_client) in [
        ("command on a new stream, 1 client", 1, 2_000),
        ("command on a new stream, 8 clients", 8, 1_000),
    ] {
        figures.push(
            compare_rates(name, clients * per_client, |rep| {
                new_stream_commands(pool, rep, clients, per_client)
            })
            .await?,
        );
    }
    Ok(figures)
}

async fn new_stream_commands(
    pool: &PgPool,
    rep: Rep,
    clients: usize,
    per_client: usize,
) -> Result<Duration, BoxError> {
    let store = fresh_store(pool, rep.side.schema()).await?;
    let handler = Arc::new(CommandHandler::<Order>::new(Arc::new(store.clone())));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (handler, pool) = (Arc::clone(&handler), pool.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..per_client {
                let id = format!("{client}-{i}");
                let stream = format!("order-{id}");
                let command = add_line(i);
                match rep.side {
                    Side::Framework => {
                        handler.execute_with(&id, command, context()).await?;
                    }
                    Side::Raw => {
                        // The same read (finding the stream empty), then the same append.
                        let rows = stream_rows(&pool, "bench_raw", &stream, 1).await?.len();
                        assert!(rows == 0);
                        raw_append(
                            &pool,
                            "bench_raw",
                            &stream,
                            ExpectedVersion::NoStream,
                            &raw_events(&command, Uuid::now_v7())?,
                        )
                        .await?;
                    }
                }
            }
            Ok::<_, BoxError>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(start.elapsed())
}

/// 100 commands, one client, on an order whose stream already holds `length - 100` events, so it
/// ends at `length`; with snapshots, the newest one was taken at `length - 100`.
pub async fn on_a_long_stream(pool: &PgPool) -> Result<Vec<Figure>, BoxError> {
    let mut figures = Vec::new();
    for snapshots in [false, true] {
        for length in [1_000usize, 10_000] {
            let name = format!(
                "100 commands on one order at {length} events, {}",
                if snapshots {
                    "snapshot every 100"
                } else {
                    "no snapshots"
                }
            );
            let (framework, raw) = alternate(|rep| async move {
                let elapsed = long_stream_commands(pool, rep, length, snapshots).await?;
                Ok(100.0 / elapsed.as_secs_f64())
            })
            .await?;
            eprintln!("{name}: framework {framework:.0}/s, raw {raw:.0}/s");
            figures.push(Figure {
                name,
                framework,
                raw,
                note: String::new(),
            });
        }
    }
    Ok(figures)
}

async fn long_stream_commands(
    pool: &PgPool,
    rep: Rep,
    length: usize,
    snapshots: bool,
) -> Result<Duration, BoxError> {
    let schema = rep.side.schema();
    let store = fresh_store(pool, schema).await?;
    let stream = StreamId::new("order-long")?;
    let order_id = Uuid::now_v7();
    let seeded = length - 100;
    let history = (0..seeded)
        .map(|n| line_event(order_id, n))
        .collect::<Result<Vec<_>, _>>()?;
    store.import(&[(stream.clone(), history)]).await?;
    let mut state = Order::default();
    for n in 0..seeded {
        es_core::Aggregate::apply(&mut state, &line(order_id, &add_line(n)));
    }
    let snapshot_store = PgSnapshotStore::new(&store);
    if snapshots {
        save_snapshot(&snapshot_store, &stream, seeded as u64, &state).await?;
    }
    crate::harness::vacuum(pool, schema).await?;

    let shared: Arc<dyn EventStore> = Arc::new(store.clone());
    let mut repository = Repository::<Order>::new(Arc::clone(&shared));
    if snapshots {
        repository = repository.with_snapshots(
            Arc::new(snapshot_store.clone()),
            SnapshotPolicy::EveryNEvents(100),
        );
    }
    let handler = CommandHandler::with_repository(repository);

    let start = Instant::now();
    for i in 0..100 {
        let command = add_line(seeded + i);
        match rep.side {
            Side::Framework => {
                handler.execute_with("long", command, context()).await?;
            }
            Side::Raw => {
                raw_command(
                    pool,
                    &store,
                    &stream,
                    seeded + i,
                    snapshots,
                    &command,
                    order_id,
                    &mut state,
                )
                .await?;
            }
        }
    }
    Ok(start.elapsed())
}

/// What the framework's command does to the database, by hand: read the snapshot row (with
/// snapshots) and the events after it, append at the version found, and save a snapshot when
/// the stream reaches a multiple of 100.
#[allow(clippy::too_many_arguments)]
async fn raw_command(
    pool: &PgPool,
    store: &PgEventStore,
    stream: &StreamId,
    version: usize,
    snapshots: bool,
    command: &AddLine,
    order_id: Uuid,
    state: &mut Order,
) -> Result<(), BoxError> {
    let schema = store.schema().as_str();
    let from = if snapshots {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT stream_version, snapshot_version, state::text FROM {schema}.snapshots \
             WHERE stream_id = $1"
        )))
        .bind(stream.as_str())
        .fetch_one(pool)
        .await?;
        let taken: i64 = row.try_get(0)?;
        taken + 1
    } else {
        1
    };
    let read = stream_rows(pool, schema, stream.as_str(), from)
        .await?
        .len();
    assert_eq!(from as usize + read - 1, version);
    let event = line(order_id, command);
    es_core::Aggregate::apply(state, &event);
    raw_append(
        pool,
        schema,
        stream.as_str(),
        ExpectedVersion::Exact(version as u64),
        &raw_events(command, order_id)?,
    )
    .await?;
    if snapshots && (version + 1).is_multiple_of(100) {
        save_snapshot(
            &PgSnapshotStore::new(store),
            stream,
            version as u64 + 1,
            state,
        )
        .await?;
    }
    Ok(())
}

async fn save_snapshot(
    snapshots: &PgSnapshotStore,
    stream: &StreamId,
    version: u64,
    state: &Order,
) -> Result<(), BoxError> {
    use es_core::SnapshotStore;
    snapshots
        .save(es_core::Snapshot {
            stream_id: stream.clone(),
            stream_version: version,
            snapshot_version: <Order as es_core::Aggregate>::SNAPSHOT_VERSION,
            state: serde_json::value::to_raw_value(state)?,
            taken_at: chrono::Utc::now(),
        })
        .await?;
    Ok(())
}
