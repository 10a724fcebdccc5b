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
//! bank-admin serve [--bind 127.0.0.1:8080] [--allow-host NAME]...
//!                                       the web console (es-console): read-only unless given
//!                                       an admin token (ES_CONSOLE_TOKEN); /metrics too
//! ```
//!
//! Works on `DATABASE_URL` (default: the local server), schema `bank_example`, the one the
//! `bank` example writes when run with `DATABASE_URL` set.

use std::net::SocketAddr;
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
    /// Serve the web console: streams, events and their causes, the global log,
    /// projections (replay or skip parked events), sagas, health and /metrics.
    Serve {
        /// The address to listen on. Keep it on the loopback interface unless something in
        /// front of it authenticates its users.
        #[arg(long, default_value = "127.0.0.1:8080")]
        bind: SocketAddr,
        /// Another host name (or address) the console answers for, besides localhost,
        /// 127.0.0.1, [::1] and the bind address; requests naming any other host are refused
        /// (a defence against DNS rebinding). Repeat for several.
        #[arg(long = "allow-host", value_name = "NAME")]
        allow_hosts: Vec<String>,
        /// Allows the console's repairs to whoever gives this token (at least 8 characters);
        /// without it the console is read-only. Prefer the environment variable
        /// ES_CONSOLE_TOKEN: a command line is visible to every user of the machine (`ps`).
        #[arg(long, env = "ES_CONSOLE_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
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
        Command::Serve {
            bind,
            allow_hosts,
            admin_token,
        } => match serve(&store, bind, allow_hosts, admin_token).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Serves the console over the bank's registry until Ctrl-C.
async fn serve(
    store: &PgEventStore,
    bind: SocketAddr,
    allow_hosts: Vec<String>,
    admin_token: Option<String>,
) -> Result<(), Box<dyn std::error::Error>> {
    // The bind address is a name the console is reached by (unless it is every interface).
    let bind_host = (!bind.ip().is_unspecified()).then(|| bind.ip().to_string());
    let mut console = es_console::Console::try_new(admin(store)?)?
        .allowed_hosts(bind_host.into_iter().chain(allow_hosts))
        .metrics(es_admin::prometheus_recorder()?);
    let writable = admin_token.is_some();
    if let Some(token) = admin_token {
        console = console.admin_token(token)?;
    }
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|e| format!("cannot listen on {bind}: {e}"))?;
    println!(
        "es-console at http://{}/ ({})",
        listener.local_addr()?,
        if writable {
            "repairs allowed with the admin token"
        } else {
            "read-only: give --admin-token or ES_CONSOLE_TOKEN to allow repairs"
        }
    );
    console
        .serve(listener, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
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
