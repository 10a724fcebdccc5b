//! `status`: every projection and saga at a glance, and the transaction horizon.

use std::time::Duration;

use es_postgres::{LockHolder, ProjectionStatus};

use crate::{Admin, AdminError, Out};

pub(crate) async fn print(admin: &Admin, out: &mut Out) -> Result<(), AdminError> {
    let horizon = admin.store.horizon().await?;
    out.line(format_args!(
        "{:<26} {:<22} {:>10} {:>9} {:>8} {:>7}",
        "projection", "held by", "checkpoint", "lag", "lag (s)", "parked"
    ))?;
    for projection in &admin.projections {
        let status = projection.status().await?;
        let holder = projection.holder().await?;
        out.line(format_args!(
            "{:<26} {:<22} {:>10} {:>9} {:>8} {:>7}{}",
            status.name,
            held_by(holder.as_ref()),
            status.checkpoint.sequence,
            status.lag_events,
            seconds(status.lag),
            status.parked,
            notes(&status)
        ))?;
    }
    if !admin.sagas.is_empty() {
        out.line("")?;
        out.line(format_args!(
            "{:<26} {:<22} {:>10} {:>9} {:>8} {:>8} {:>5} {:>12}",
            "saga", "held by", "checkpoint", "lag", "lag (s)", "commands", "dead", "deadlines"
        ))?;
    }
    for saga in &admin.sagas {
        let status = saga.status().await?;
        let holder = saga.holder().await?;
        let deadlines = format!(
            "{} ({} due{})",
            status.deadlines.waiting,
            status.deadlines.due,
            if status.deadlines.failing > 0 {
                format!(", {} failing", status.deadlines.failing)
            } else {
                String::new()
            }
        );
        out.line(format_args!(
            "{:<26} {:<22} {:>10} {:>9} {:>8} {:>8} {:>5} {:>12}{}",
            status.feed.name,
            held_by(holder.as_ref()),
            status.feed.checkpoint.sequence,
            status.feed.lag_events,
            seconds(status.feed.lag),
            status.outbox.pending,
            status.outbox.dead_lettered,
            deadlines,
            notes(&status.feed)
        ))?;
    }
    out.line("")?;
    if horizon.held_back_events == 0 {
        out.line("horizon: no committed event is held back")?;
    } else {
        out.line(format_args!(
            "horizon: {} committed event(s) wait, for {} s, behind transaction {}{}{}: readers \
             see them once it ends",
            horizon.held_back_events,
            seconds(horizon.held_back_for),
            horizon.xmin,
            horizon
                .oldest_writer_pid
                .map(|pid| format!(" (server process {pid})"))
                .unwrap_or_default(),
            horizon
                .oldest_writer_age
                .map(|age| format!(", running for {} s", seconds(Some(age))))
                .unwrap_or_default(),
        ))?;
    }
    if horizon.prepared_transactions > 0 {
        out.line(format_args!(
            "horizon: {} prepared transaction(s) hold it (see pg_prepared_xacts)",
            horizon.prepared_transactions
        ))?;
    }
    out.line(
        "(held by: the server process id and client address of the session holding the lock; \
         checkpoint: the sequence number of the last event applied; lag: events not applied \
         yet, and the age of the oldest)",
    )?;
    Ok(())
}

/// `-` when nobody runs it, `pid@address` (or `pid@local`) of the session holding its lock.
fn held_by(holder: Option<&LockHolder>) -> String {
    match holder {
        None => "-".to_owned(),
        Some(h) => format!("{}@{}", h.pid, h.client_addr.as_deref().unwrap_or("local")),
    }
}

fn seconds(duration: Option<Duration>) -> String {
    format!("{:.1}", duration.map_or(0.0, |d| d.as_secs_f64()))
}

fn notes(status: &ProjectionStatus) -> String {
    let mut notes = Vec::new();
    if status.rebuilding {
        notes.push("rebuild unfinished: it resumes".to_owned());
    }
    if status.parked > 0 {
        notes.push("parked events: see `parked`, then `replay`".to_owned());
    }
    if notes.is_empty() {
        String::new()
    } else {
        format!("  [{}]", notes.join("; "))
    }
}
