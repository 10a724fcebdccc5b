//! Operates the bank's projections: status and lag, rebuilds with progress, parked events.
//!
//! ```text
//! bank-admin status                 every projection and saga: checkpoint, head, lag, parked
//!                                   events, commands waiting
//! bank-admin rebuild <projection>   rebuild in place, with a progress bar
//! bank-admin rebuild --blue-green <projection>
//!                                   build beside the live version, then swap it in
//! bank-admin parked <projection>    list parked events
//! bank-admin replay <projection>    replay parked events
//! bank-admin trace <correlation-id>  one piece of work across streams, as causes and effects
//! bank-admin run                    keep every projection and saga live until Ctrl-C
//! bank-admin seed --events N        append N deposits across accounts (for trying the above)
//! ```
//!
//! Works on `DATABASE_URL` (default: the local server), schema `bank_example`, the one the
//! `bank` example writes when run with `DATABASE_URL` set.

use std::sync::Arc;

use async_trait::async_trait;
use clap::{Parser, Subcommand};
use es_core::{EventStore, ExpectedVersion, NewEvent, StreamId};
use es_examples::account::{self, AccountEvent};
use es_examples::bank::Bank;
use es_examples::projections::{AccountBalances, ActivityByType, TransferHistory};
use es_examples::trace::trace;
use es_postgres::{
    ErrorPolicy, ParkedEvent, PgEventStore, PgProjection, PgSnapshotStore, Progress,
    ProjectionError, ProjectionRunner, ProjectionStatus, ReplayReport, SchemaName,
};
use indicatif::{ProgressBar, ProgressStyle};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
#[command(name = "bank-admin", about = "Operate the bank example's projections")]
struct Cli {
    /// The PostgreSQL server.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    /// The event store's schema.
    #[arg(long, default_value = "bank_example")]
    schema: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every projection's checkpoint, head, lag and parked events.
    Status,
    /// Rebuild a projection from the first event, stopping at the first failure.
    Rebuild {
        /// The projection's name.
        projection: String,
        /// Build the new version in schema `<schema>_next` while the live one keeps serving,
        /// then swap it in atomically (instead of emptying the live tables and replaying).
        #[arg(long)]
        blue_green: bool,
    },
    /// List a projection's parked events.
    Parked {
        /// The projection's name.
        projection: String,
    },
    /// Apply a projection's parked events again.
    Replay {
        /// The projection's name.
        projection: String,
    },
    /// Keep every projection and saga live (catch up, then follow) until Ctrl-C.
    Run,
    /// Show every event of one correlation id (a transfer, say), each under its cause.
    Trace {
        /// The correlation id, as `bank` prints it or `transfer_history.correlation_id` holds.
        correlation_id: uuid::Uuid,
    },
    /// Append deposits across 100 accounts, for trying the other commands.
    Seed {
        /// How many events.
        #[arg(long, default_value_t = 10_000)]
        events: usize,
    },
}

/// What the CLI needs of a runner, whatever its projection's type.
#[async_trait]
trait Operate: Send + Sync {
    fn name(&self) -> String;
    async fn status(&self) -> Result<ProjectionStatus, ProjectionError>;
    async fn rebuild(
        &self,
        blue_green: bool,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<u64, ProjectionError>;
    async fn parked(&self) -> Result<Vec<ParkedEvent>, ProjectionError>;
    async fn replay(&self) -> Result<ReplayReport, ProjectionError>;
    async fn run(&self, stop: tokio::sync::watch::Receiver<bool>) -> Result<(), ProjectionError>;
}

/// A runner, and how to make its projection write into another schema (for blue/green).
struct Managed<P> {
    runner: ProjectionRunner<P>,
    build_in: fn(&SchemaName) -> P,
    next_schema: SchemaName,
}

impl<P: PgProjection> Managed<P> {
    fn new(store: &PgEventStore, build_in: fn(&SchemaName) -> P) -> Result<Self, BoxError> {
        Ok(Self {
            runner: ProjectionRunner::new(store.clone(), build_in(store.schema()))
                .with_upcasters(Arc::new(account::upcasters())),
            build_in,
            next_schema: SchemaName::new(format!("{}_next", store.schema()))?,
        })
    }
}

#[async_trait]
impl<P: PgProjection> Operate for Managed<P> {
    fn name(&self) -> String {
        self.runner.projection().name().to_owned()
    }
    async fn status(&self) -> Result<ProjectionStatus, ProjectionError> {
        self.runner.status().await
    }
    async fn rebuild(
        &self,
        blue_green: bool,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<u64, ProjectionError> {
        if blue_green {
            let next = (self.build_in)(&self.next_schema);
            self.runner
                .rebuild_blue_green(next, ErrorPolicy::STOP, progress)
                .await
        } else {
            self.runner.rebuild(ErrorPolicy::STOP, progress).await
        }
    }
    async fn parked(&self) -> Result<Vec<ParkedEvent>, ProjectionError> {
        self.runner.parked().await
    }
    async fn replay(&self) -> Result<ReplayReport, ProjectionError> {
        self.runner.replay_parked().await
    }
    async fn run(
        &self,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), ProjectionError> {
        self.runner
            .run(async move {
                let _ = stop.wait_for(|stop| *stop).await;
            })
            .await
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let cli = Cli::parse();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(&cli.database_url)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", cli.database_url))?;
    let store = PgEventStore::with_schema(pool, &cli.schema)?;
    store.migrate().await?;
    let projections: Vec<Arc<dyn Operate>> = vec![
        Arc::new(Managed::new(&store, AccountBalances::new)?),
        Arc::new(Managed::new(&store, ActivityByType::new)?),
        Arc::new(Managed::new(&store, TransferHistory::new)?),
    ];
    // The bank's sagas, run by `run` beside the projections, and reported by `status`.
    let bank = Bank::new(
        Arc::new(store.clone()),
        Arc::new(PgSnapshotStore::new(&store)),
    );
    let (transfers, bonuses) = bank.pg_sagas(&store);
    let (transfers, bonuses) = (Arc::new(transfers), Arc::new(bonuses));
    let find = |name: &str| {
        projections
            .iter()
            .find(|p| p.name() == name)
            .cloned()
            .ok_or_else(|| {
                let known: Vec<_> = projections.iter().map(|p| p.name()).collect();
                format!("no projection {name:?}; known: {}", known.join(", "))
            })
    };

    match cli.command {
        Command::Status => {
            println!(
                "{:<18} {:>14} {:>14} {:>10} {:>10} {:>7}",
                "projection", "checkpoint", "head", "lag", "lag (s)", "parked"
            );
            for projection in &projections {
                let s = projection.status().await?;
                println!(
                    "{:<18} {:>14} {:>14} {:>10} {:>10.1} {:>7}",
                    s.name,
                    s.checkpoint.to_string(),
                    s.head.to_string(),
                    s.lag_events,
                    s.lag.map_or(0.0, |d| d.as_secs_f64()),
                    s.parked
                );
            }
            println!(
                "\n{:<18} {:>14} {:>10} {:>10} {:>9} {:>14}",
                "saga", "checkpoint", "lag", "lag (s)", "commands", "deadlines"
            );
            for (status, pending, deadlines) in [
                (
                    transfers.feed().status().await?,
                    transfers.pending().await?,
                    transfers.deadline_status().await?,
                ),
                (
                    bonuses.feed().status().await?,
                    bonuses.pending().await?,
                    bonuses.deadline_status().await?,
                ),
            ] {
                println!(
                    "{:<18} {:>14} {:>10} {:>10.1} {:>9} {:>14}",
                    status.name,
                    status.checkpoint.to_string(),
                    status.lag_events,
                    status.lag.map_or(0.0, |d| d.as_secs_f64()),
                    pending,
                    format!("{} ({} due)", deadlines.waiting, deadlines.due),
                );
            }
        }
        Command::Trace { correlation_id } => match trace(&store, correlation_id).await? {
            Some(drawn) => print!("{drawn}"),
            None => println!("no event carries correlation id {correlation_id}"),
        },
        Command::Rebuild {
            projection,
            blue_green,
        } => {
            let projection = find(&projection)?;
            let total: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM {}.events",
                store.schema()
            )))
            .fetch_one(store.pool())
            .await?;
            let bar = ProgressBar::new(total.max(0) as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:40}] {pos}/{len} events, {per_sec}, ETA {eta}",
                )?
                .progress_chars("=> "),
            );
            let how = if blue_green { "blue/green" } else { "in place" };
            bar.set_message(format!("rebuilding {} {how}", projection.name()));
            let read = projection
                .rebuild(blue_green, &|progress| bar.set_position(progress.events))
                .await?;
            bar.finish();
            println!("rebuilt {} {how} from {read} events", projection.name());
        }
        Command::Parked { projection } => {
            let parked = find(&projection)?.parked().await?;
            if parked.is_empty() {
                println!("no parked events");
            }
            for p in parked {
                println!(
                    "{} {} {} at {} ({} attempts, parked {}): {}",
                    p.event_id,
                    p.event_type,
                    p.stream_id,
                    p.position,
                    p.attempts,
                    p.parked_at,
                    p.error
                );
            }
        }
        Command::Replay { projection } => {
            let report = find(&projection)?.replay().await?;
            println!(
                "replayed {}, still failing {}",
                report.replayed, report.still_failing
            );
        }
        Command::Run => {
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let mut tasks = Vec::new();
            for projection in &projections {
                let projection = Arc::clone(projection);
                let stopped = stopped.clone();
                tasks.push(tokio::spawn(async move { projection.run(stopped).await }));
            }
            let until_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            let saga_tasks = [
                tokio::spawn({
                    let (saga, stopped) = (Arc::clone(&transfers), until_stopped(stopped.clone()));
                    async move { saga.run(stopped).await }
                }),
                tokio::spawn({
                    let (saga, stopped) = (Arc::clone(&bonuses), until_stopped(stopped.clone()));
                    async move { saga.run(stopped).await }
                }),
            ];
            println!("projections and sagas running; Ctrl-C stops them after their current batch");
            tokio::signal::ctrl_c().await?;
            stop.send(true)?;
            for task in tasks {
                task.await??;
            }
            for task in saga_tasks {
                task.await??;
            }
        }
        Command::Seed { events } => {
            let started = std::time::Instant::now();
            for account in 0..100 {
                let stream = StreamId::new(format!("account-seed{account:03}"))?;
                let share = events / 100 + usize::from(account < events % 100);
                let mut written = 0;
                while written < share {
                    let batch = (share - written).min(500);
                    let new = (0..batch)
                        .map(|i| {
                            let event = if written == 0 && i == 0 {
                                AccountEvent::Opened {
                                    owner: format!("owner {account}"),
                                    currency: "EUR".into(),
                                }
                            } else {
                                AccountEvent::Deposited { amount: 100 }
                            };
                            NewEvent::from_event(&event)
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    store.append(&stream, ExpectedVersion::Any, new).await?;
                    written += batch;
                }
            }
            println!("appended {events} events in {:?}", started.elapsed());
        }
    }
    Ok(())
}
