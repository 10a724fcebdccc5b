//! The admin CLI of the event-sourcing framework, as clap subcommands a service embeds in its
//! own binary, with its own projections and sagas registered: status (who holds what, lag,
//! parked events, dead letters, the transaction horizon), rebuilds in place or blue/green with
//! progress, parked events and their replay, dead-lettered saga commands, traces of one
//! correlation id, and running everything live.
//!
//! Read-only and repair commands never create a schema: pointed at the wrong database, they
//! say so. Errors print as sentences; output survives `| head`.
//!
//! # Layout
//! - `database.rs`: [`Database`], the `--database-url` and `--schema` options, connecting
//!   without creating anything.
//! - `registry.rs`: [`Admin`], what a service registers.
//! - `commands.rs`: [`AdminCommand`] and what each subcommand does; `status.rs`, `run.rs` and
//!   `progress.rs` hold the larger ones (traces are drawn by `es_core::trace`).
//! - `metrics.rs`: [`Admin::observe`] and, with the `prometheus` feature,
//!   `prometheus_recorder`.
//! - `output.rs`: [`Out`], where commands print. `error.rs`: [`AdminError`].
//!
//! # Example
//! A service's admin binary:
//! ```no_run
//! use clap::Parser;
//! use es_admin::{Admin, AdminCommand, Database};
//!
//! #[derive(Parser)]
//! struct Cli {
//!     #[command(flatten)]
//!     database: Database,
//!     #[command(subcommand)]
//!     command: AdminCommand,
//! }
//!
//! #[tokio::main]
//! async fn main() -> std::process::ExitCode {
//!     let cli = Cli::parse();
//!     let store = match cli.database.connect().await {
//!         Ok(store) => store,
//!         Err(error) => {
//!             eprintln!("{}", error.report());
//!             return std::process::ExitCode::FAILURE;
//!         }
//!     };
//!     let admin = Admin::new(store.clone());
//!     // .projection(ProjectionRunner::new(store.clone(), MyReadModel::new()))
//!     // .saga(PgSagaRunner::new(store.clone(), MySaga, MyDispatcher::new(&store)));
//!     admin.run_command(cli.command).await
//! }
//! ```

mod commands;
mod database;
mod error;
mod inspect;
mod metrics;
mod output;
mod progress;
mod registry;
mod run;
mod status;

pub use commands::{AdminCommand, DeadLetterCommand, OnError, SchemaCommand};
pub use database::Database;
pub use error::AdminError;
pub use inspect::{ProjectionView, SagaView};
#[cfg(feature = "otel")]
pub use metrics::{OtelExport, otel_layer};
#[cfg(feature = "prometheus")]
pub use metrics::{SECONDS_BUCKETS, prometheus_recorder};
pub use output::Out;
pub use registry::Admin;
