//! The subcommands, and what each does.

use std::io::Write as _;
use std::process::ExitCode;

use es_core::EventStore;
use es_postgres::{ErrorPolicy, OnFailure, ProjectionError};
use uuid::Uuid;

use crate::registry::Rebuild;
use es_core::trace;

use crate::{Admin, AdminError, Out, progress, run, status};

/// The admin subcommands a service's CLI embeds (`#[command(subcommand)]`, or flattened into
/// its own subcommand enum).
#[derive(Clone, Debug, clap::Subcommand)]
#[non_exhaustive]
pub enum AdminCommand {
    /// Every projection and saga: which process holds it, checkpoint, lag, parked events,
    /// commands waiting and dead-lettered, deadlines; and events held back by the transaction
    /// horizon.
    Status,
    /// Rebuild a projection from the first event (in place, resuming an interrupted rebuild;
    /// or blue/green). Refused at once while another process runs the projection.
    Rebuild {
        /// The projection's name.
        projection: String,
        /// Build the next version beside the live one, which keeps serving and following,
        /// then swap it in (the service must register a next version).
        #[arg(long)]
        blue_green: bool,
        /// Start over even when an interrupted rebuild could resume.
        #[arg(long, conflicts_with = "blue_green")]
        from_scratch: bool,
        /// What to do with an event that fails: stop (the default, naming it), park it for a
        /// later replay and go on, or skip it.
        #[arg(long, value_enum, default_value_t = OnError::Stop)]
        on_error: OnError,
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
    /// A saga's dead-lettered commands.
    #[command(subcommand)]
    DeadLetter(DeadLetterCommand),
    /// Show every event of one correlation id, each under its cause.
    Trace {
        /// The correlation id.
        correlation_id: Uuid,
    },
    /// Check that every projection and saga can read every event type stored in the
    /// categories it reads (a type renamed without an upcaster, a schema version the code
    /// cannot read); exit code 1 naming each one when not.
    Check,
    /// The schema gate for deploys, and the catalogue of event types.
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// Keep every projection and saga running (catch up, then follow) until Ctrl-C. Refused
    /// at start when `check` fails.
    Run {
        /// Start even when a projection or saga cannot read some stored event types (it
        /// passes over unknown types with a warning and parks what does not decode).
        #[arg(long)]
        skip_type_check: bool,
    },
}

/// The schema gate, and the catalogue of event types.
#[derive(Clone, Debug, clap::Subcommand)]
#[non_exhaustive]
pub enum SchemaCommand {
    /// Compare every (type, schema version) stored with this release's event types and
    /// upcasters; exit code 1 naming each one it would not decode. Run it before a deploy.
    Check,
    /// Print the catalogue of this release's event types as JSON: name, current version, the
    /// older versions it reads, JSON Schema where known. Needs no database.
    Export,
}

/// What to do with dead-lettered commands.
#[derive(Clone, Debug, clap::Subcommand)]
#[non_exhaustive]
pub enum DeadLetterCommand {
    /// List them.
    List {
        /// The saga's name.
        saga: String,
    },
    /// Put them back in line, their attempts reset.
    Retry {
        /// The saga's name.
        saga: String,
        /// The commands' ids (`list` shows them).
        #[arg(required_unless_present = "all")]
        ids: Vec<Uuid>,
        /// Every dead-lettered command of the saga.
        #[arg(long)]
        all: bool,
    },
    /// Remove them for good (the saga is not told).
    Discard {
        /// The saga's name.
        saga: String,
        /// The commands' ids.
        #[arg(required = true)]
        ids: Vec<Uuid>,
    },
}

/// An error policy, on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnError {
    /// Stop at the first failure, naming the event.
    Stop,
    /// Park the failing event (replayable) and go on.
    Park,
    /// Skip the failing event and go on.
    Skip,
}

impl OnError {
    fn policy(self) -> ErrorPolicy {
        let then = match self {
            OnError::Stop => OnFailure::Stop,
            OnError::Park => OnFailure::Park,
            OnError::Skip => OnFailure::Skip,
        };
        ErrorPolicy {
            retries: 0,
            backoff: std::time::Duration::ZERO,
            then,
        }
    }
}

impl Admin {
    /// Runs `command`, printing to stdout and errors to stderr as sentences; the exit code to
    /// end the process with (0: done; 1: failed; 2: another process holds what was asked).
    pub async fn run_command(&self, command: AdminCommand) -> ExitCode {
        let mut out = Out::stdout();
        match self.execute(command, &mut out).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                // Not eprintln!, which panics when stderr is closed (`2>&1 | head`).
                let _ = writeln!(std::io::stderr(), "{}", error.report());
                ExitCode::from(error.exit_code())
            }
        }
    }

    /// Runs `command`, writing to `out`.
    pub async fn execute(&self, command: AdminCommand, out: &mut Out) -> Result<(), AdminError> {
        if matches!(command, AdminCommand::Schema(SchemaCommand::Export)) {
            // The code's own catalogue: nothing to read from the database.
            return self.schema(SchemaCommand::Export, out).await;
        }
        if matches!(command, AdminCommand::Run { .. }) {
            // Running is what the service does: it creates or migrates the schema.
            self.store.migrate().await?;
            self.check_pool()?;
        } else {
            self.check_schema().await?;
        }
        match command {
            AdminCommand::Status => status::print(self, out).await,
            AdminCommand::Rebuild {
                projection,
                blue_green,
                from_scratch,
                on_error,
            } => {
                let how = match (blue_green, from_scratch) {
                    (true, _) => Rebuild::BlueGreen,
                    (false, true) => Rebuild::FromScratch,
                    (false, false) => Rebuild::InPlace,
                };
                self.rebuild(&projection, how, on_error, out).await
            }
            AdminCommand::Parked { projection } => {
                let parked = self.find_projection(&projection)?.parked().await?;
                if parked.is_empty() {
                    out.line(format_args!("{projection}: no parked events"))?;
                }
                for p in parked {
                    out.line(format_args!(
                        "{} {} in {} at {}, {} attempt(s), parked {}: {}",
                        p.event_id,
                        p.event_type,
                        p.stream_id,
                        p.position,
                        p.attempts,
                        p.parked_at.format("%Y-%m-%d %H:%M:%S"),
                        p.error
                    ))?;
                }
                Ok(())
            }
            AdminCommand::Replay { projection } => {
                let report = self.find_projection(&projection)?.replay().await?;
                out.line(format_args!(
                    "{projection}: replayed {}, still failing {} (they stay parked), taken by \
                     another replay {}",
                    report.replayed, report.still_failing, report.taken_elsewhere
                ))
            }
            AdminCommand::DeadLetter(command) => self.dead_letters(command, out).await,
            AdminCommand::Trace { correlation_id } => {
                let events = self
                    .store
                    .read_correlated(correlation_id, trace::LIMIT)
                    .await?;
                if events.is_empty() {
                    return out.line(format_args!(
                        "no event carries correlation id {correlation_id}"
                    ));
                }
                for line in trace::render(&events).lines() {
                    out.line(line)?;
                }
                Ok(())
            }
            AdminCommand::Check => {
                self.check_types(out).await?;
                out.line(
                    "every projection and saga reads every event type stored in its categories",
                )
            }
            AdminCommand::Schema(command) => self.schema(command, out).await,
            AdminCommand::Run { skip_type_check } => {
                if !skip_type_check {
                    self.check_types(out).await?;
                }
                run::run(self, out).await
            }
        }
    }

    async fn schema(&self, command: SchemaCommand, out: &mut Out) -> Result<(), AdminError> {
        let Some(catalogue) = &self.catalogue else {
            return Err(AdminError::Config(
                "no event types are registered: give the CLI the service's event types with \
                 Admin::events(EventCatalogue::new(store.upcasters()).add::<YourEvent>())"
                    .to_owned(),
            ));
        };
        match command {
            SchemaCommand::Export => {
                let text = serde_json::to_string_pretty(&catalogue.export())
                    .map_err(|e| AdminError::Config(e.to_string()))?;
                for line in text.lines() {
                    out.line(line)?;
                }
                Ok(())
            }
            SchemaCommand::Check => {
                for (name, one, other) in catalogue.conflicts() {
                    out.line(format_args!(
                        "{name}: registered at schema versions {one} and {other} by two event \
                         types of this code"
                    ))?;
                }
                let unreadable = self.store.unreadable_types(catalogue).await?;
                for t in &unreadable {
                    out.line(format_args!("{t}"))?;
                }
                if !unreadable.is_empty() || !catalogue.conflicts().is_empty() {
                    return Err(AdminError::SchemaGate(format!(
                        "this release cannot read {} stored event type(s) and has {} \
                         conflicting type(s): deploying it would lose or park those events",
                        unreadable.len(),
                        catalogue.conflicts().len()
                    )));
                }
                out.line(format_args!(
                    "every stored event type decodes with this release ({} event types known \
                     to the code)",
                    catalogue.entries().count()
                ))
            }
        }
    }

    /// Refuses, naming each, the stored event types some registered projection or saga
    /// cannot read.
    async fn check_types(&self, out: &mut Out) -> Result<(), AdminError> {
        let mut refusals = Vec::new();
        for projection in &self.projections {
            if let Err(error) = projection.check_stored_types().await {
                refusals.push(error);
            }
        }
        for saga in &self.sagas {
            if let Err(error) = saga.check_stored_types().await {
                refusals.push(error);
            }
        }
        let Some(last) = refusals.pop() else {
            return Ok(());
        };
        for error in refusals {
            out.line(format_args!("{}", AdminError::from(error).report()))?;
        }
        Err(AdminError::from(last))
    }

    /// The store must exist and be migrated by this release: other commands change nothing
    /// about the schema, and a schema an older or newer release migrated would fail halfway.
    async fn check_schema(&self) -> Result<(), AdminError> {
        let schema = self.store.schema().to_string();
        match self.store.migration_state().await? {
            es_postgres::MigrationState::Missing => {
                Err(es_postgres::PgError::NoSuchSchema { schema }.into())
            }
            es_postgres::MigrationState::Behind { applied, required } => {
                Err(es_postgres::PgError::MigrationMismatch {
                    schema,
                    applied,
                    known: required,
                    advice: "start the service (or `run`) once to migrate it",
                }
                .into())
            }
            es_postgres::MigrationState::Ahead { applied, known } => {
                Err(es_postgres::PgError::MigrationMismatch {
                    schema,
                    applied,
                    known,
                    advice: "use the admin binary of the release that migrated it",
                }
                .into())
            }
            _ => Ok(()),
        }
    }

    /// Every registered runner shares the store's pool: refuse at once when what they may
    /// use together exceeds it, rather than stall on its acquire timeout.
    fn check_pool(&self) -> Result<(), AdminError> {
        let size = self.store.pool().options().get_max_connections();
        let wanted: u32 = self
            .projections
            .iter()
            .map(|p| p.pool_demand())
            .sum::<u32>()
            + self.sagas.iter().map(|s| s.pool_demand()).sum::<u32>();
        if wanted > size {
            return Err(AdminError::Config(format!(
                "the registered projections and sagas may use {wanted} pool connections at once \
                 (a read each, and each saga's dispatcher and the commands it runs), but the \
                 pool allows {size}: raise --pool-size, or lower the sagas' dispatch concurrency"
            )));
        }
        Ok(())
    }

    async fn rebuild(
        &self,
        name: &str,
        how: Rebuild,
        on_error: OnError,
        out: &mut Out,
    ) -> Result<(), AdminError> {
        let projection = self.find_projection(name)?;
        if how == Rebuild::BlueGreen && !projection.can_blue_green() {
            return Err(ProjectionError::BlueGreen {
                projection: name.to_owned(),
                reason: "the service registered no next version for it \
                         (Admin::projection_with_next)"
                    .to_owned(),
            }
            .into());
        }
        let bar = progress::bar(name, how);
        let result = projection
            .rebuild(how, on_error.policy(), &|p| progress::show(&bar, p))
            .await;
        bar.finish_and_clear();
        match result {
            Ok(Some(read)) => {
                let parked = projection.status().await?.parked;
                out.line(format_args!(
                    "{name}: rebuilt {} from {read} events{}",
                    match how {
                        Rebuild::BlueGreen => "blue/green",
                        _ => "in place",
                    },
                    if parked > 0 {
                        format!("; {parked} event(s) parked (see `parked {name}`)")
                    } else {
                        String::new()
                    }
                ))
            }
            Ok(None) if how == Rebuild::BlueGreen => {
                let by = describe(projection.build_holder().await?);
                Err(AdminError::Busy(format!(
                    "the next version of {name} is being built by {by} already: wait for it, or \
                     stop it first"
                )))
            }
            Ok(None) => {
                let holder = projection.holder().await?;
                let by = describe(holder);
                Err(AdminError::Busy(format!(
                    "{name} is running in {by}: a rebuild in place needs it stopped. Stop it, or \
                     rebuild with --blue-green, which builds beside it and swaps"
                )))
            }
            Err(error) => {
                let status = projection.status().await.ok();
                let state = match (how, status) {
                    (Rebuild::BlueGreen, _) => {
                        "The live read model is untouched; the next version was not swapped in, \
                         and the next --blue-green rebuild builds it from the start."
                            .to_owned()
                    }
                    (_, Some(status)) => format!(
                        "The read model holds the events up to {} ({} of the log not applied \
                         yet); live runners resume from there. Fix the cause and run `rebuild \
                         {name}` again to resume, or add --on-error park to set failing events \
                         aside.",
                        status.checkpoint, status.lag_events
                    ),
                    (_, None) => "The read model's state could not be read.".to_owned(),
                };
                out.line(format_args!("{name}: the rebuild stopped. {state}"))?;
                Err(error.into())
            }
        }
    }

    async fn dead_letters(
        &self,
        command: DeadLetterCommand,
        out: &mut Out,
    ) -> Result<(), AdminError> {
        match command {
            DeadLetterCommand::List { saga } => {
                let letters = self.find_saga(&saga)?.dead_letters().await?;
                if letters.is_empty() {
                    out.line(format_args!("{saga}: no dead-lettered commands"))?;
                }
                for d in letters {
                    out.line(format_args!(
                        "{} instance {}, {} attempt(s), dead since {}: {}\n    {}",
                        d.command_id,
                        d.instance,
                        d.attempts,
                        d.dead_at.format("%Y-%m-%d %H:%M:%S"),
                        d.error.as_deref().unwrap_or("no error recorded"),
                        d.command
                    ))?;
                }
                Ok(())
            }
            DeadLetterCommand::Retry { saga, ids, all } => {
                let runner = self.find_saga(&saga)?;
                let ids = if all {
                    runner
                        .dead_letters()
                        .await?
                        .into_iter()
                        .map(|d| d.command_id)
                        .collect()
                } else {
                    ids
                };
                let retried = runner.retry(&ids).await?;
                out.line(format_args!(
                    "{saga}: {retried} command(s) back in line{}",
                    missing(ids.len(), retried)
                ))
            }
            DeadLetterCommand::Discard { saga, ids } => {
                let discarded = self.find_saga(&saga)?.discard(&ids).await?;
                out.line(format_args!(
                    "{saga}: {discarded} command(s) discarded{}",
                    missing(ids.len(), discarded)
                ))
            }
        }
    }
}

/// Who holds a lock, for a sentence.
fn describe(holder: Option<es_postgres::LockHolder>) -> String {
    holder.map_or_else(
        || "another process".to_owned(),
        |h| {
            format!(
                "process {} ({}{})",
                h.pid,
                h.application_name,
                h.client_addr
                    .map(|a| format!(" from {a}"))
                    .unwrap_or_default()
            )
        },
    )
}

fn missing(asked: usize, done: u64) -> String {
    let missing = asked as u64 - done.min(asked as u64);
    if missing == 0 {
        String::new()
    } else {
        format!(" ({missing} of the ids given are not dead-lettered)")
    }
}
