//! The bank's admin CLI: es-admin's subcommands, with the bank's projections and sagas
//! registered, and one command of its own to seed events.
//!
//! ```text
//! bank-admin status                     projections and sagas: holder, lag, parked, dead letters
//! bank-admin rebuild <projection>       rebuild in place (resumes an interrupted one)
//! bank-admin rebuild --blue-green <projection>
//!                                       build beside the live version, then swap it in
//! bank-admin parked <projection>        list parked events;  replay <projection>: apply them again
//! bank-admin dead-letter list <saga>    dead-lettered commands; retry / discard them
//! bank-admin trace <correlation-id>     one piece of work across streams, as causes and effects
//! bank-admin run                        keep every projection and saga live until Ctrl-C
//! bank-admin seed --events N            append N deposits across accounts (for trying the above)
//! ```
//!
//! Works on `DATABASE_URL` (default: the local server), schema `bank_example`, the one the
//! `bank` example writes when run with `DATABASE_URL` set.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use es_admin::{Admin, AdminCommand, Database};
use es_core::{EventCatalogue, EventStore, ExpectedVersion, NewEvent, StreamId};
use es_examples::account::{self, AccountEvent};
use es_examples::bank::Bank;
use es_examples::projections::{AccountBalances, ActivityByType, TransferHistory};
use es_examples::transfer::TransferEvent;
use es_postgres::{PgEventStore, PgSnapshotStore, ProjectionRunner, SchemaName};

#[derive(Parser)]
#[command(
    name = "bank-admin",
    about = "Operate the bank example's projections and sagas"
)]
#[command(mut_arg("schema", |arg| arg.default_value("bank_example")))]
struct Cli {
    #[command(flatten)]
    database: Database,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Admin(AdminCommand),
    /// Append deposits across 100 accounts, for trying the other commands.
    Seed {
        /// How many events.
        #[arg(long, default_value_t = 10_000)]
        events: usize,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let store = match cli.database.connect().await {
        Ok(store) => store.with_upcasters(Arc::new(account::upcasters())),
        Err(error) => {
            eprintln!("{}", error.report());
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Admin(command) => match admin(&store) {
            Ok(admin) => admin.run_command(command).await,
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        },
        Command::Seed { events } => match seed(&store, events).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        },
    }
}

/// The bank's projections (each rebuildable blue/green into `<schema>_next`) and sagas.
fn admin(store: &PgEventStore) -> Result<Admin, es_postgres::PgError> {
    let next = SchemaName::new(format!("{}_next", store.schema()))?;
    let bank = Bank::new(
        Arc::new(store.clone()),
        Arc::new(PgSnapshotStore::new(store)),
    );
    let (transfers, bonuses) = bank.pg_sagas(store);
    let events = EventCatalogue::new(store.upcasters())
        .add::<AccountEvent>()
        .add::<TransferEvent>();
    Ok(Admin::new(store.clone())
        .events(events)
        .projection_with_next(
            ProjectionRunner::new(store.clone(), AccountBalances::new(store.schema())),
            AccountBalances::new,
            next.clone(),
        )
        .projection_with_next(
            ProjectionRunner::new(store.clone(), ActivityByType::new(store.schema())),
            ActivityByType::new,
            next.clone(),
        )
        .projection_with_next(
            ProjectionRunner::new(store.clone(), TransferHistory::new(store.schema())),
            TransferHistory::new,
            next,
        )
        .saga(transfers)
        .saga(bonuses))
}

async fn seed(store: &PgEventStore, events: usize) -> Result<(), Box<dyn std::error::Error>> {
    store.migrate().await?;
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
    Ok(())
}
