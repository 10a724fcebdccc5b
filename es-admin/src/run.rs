//! `run`: every registered projection and saga, live, until Ctrl-C or until one stops.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::{Admin, AdminError, Out};

pub(crate) async fn run(admin: &Admin, out: &mut Out) -> Result<(), AdminError> {
    install_logging();
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for projection in &admin.projections {
        let (projection, stopped) = (Arc::clone(projection), stopped.clone());
        let what = format!("projection {}", projection.name());
        tasks.spawn(async move { (what, projection.run(stopped).await) });
    }
    for saga in &admin.sagas {
        let (saga, stopped) = (Arc::clone(saga), stopped.clone());
        let what = format!("saga {}", saga.name());
        tasks.spawn(async move { (what, saga.run(stopped).await) });
    }
    if tasks.is_empty() {
        return out.line("nothing to run: the service registered no projection and no saga");
    }
    out.line(format_args!(
        "running {} projection(s) and {} saga(s); Ctrl-C stops them (a second Ctrl-C at once)",
        admin.projections.len(),
        admin.sagas.len()
    ))?;
    let mut failures = Vec::new();
    tokio::select! {
        signal = tokio::signal::ctrl_c() => {
            signal?;
            out.line("stopping")?;
        }
        Some(joined) = tasks.join_next() => {
            // A runner that ends by itself is reported at once, and the others stopped.
            let (what, result) = outcome(joined);
            match result {
                Ok(()) => out.line(format_args!("{what} stopped by itself; stopping the others"))?,
                Err(error) => {
                    out.line(format_args!("{what} stopped: {error}; stopping the others"))?;
                    failures.push(error);
                }
            }
        }
    }
    let _ = stop.send(true);
    let forced = tokio::spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "stopping at once");
            std::process::exit(130);
        }
    });
    while let Some(joined) = tasks.join_next().await {
        let (what, result) = outcome(joined);
        if let Err(error) = result {
            out.line(format_args!("{what} stopped: {error}"))?;
            failures.push(error);
        }
    }
    forced.abort();
    match failures.into_iter().next() {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

type Ended = (String, Result<(), es_postgres::ProjectionError>);

fn outcome(joined: Result<Ended, tokio::task::JoinError>) -> (String, Result<(), AdminError>) {
    match joined {
        Ok((what, result)) => (what, result.map_err(AdminError::from)),
        Err(error) => (
            "a runner".to_owned(),
            Err(AdminError::Runner(format!(
                "a runner's task failed: {error}"
            ))),
        ),
    }
}

/// Logs to stderr at the level `RUST_LOG` names (`error`, `warn`, `info`, `debug`, `trace`;
/// default `info`), so retries, parked events and warnings show; a service that installed its
/// own subscriber keeps it.
fn install_logging() {
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|level| {
            level
                .parse::<tracing_subscriber::filter::LevelFilter>()
                .ok()
        })
        .unwrap_or(tracing_subscriber::filter::LevelFilter::INFO);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .try_init();
}
