//! `/`: the store, the transaction horizon, and every projection and saga at a glance.

use axum::extract::State;
use axum::response::Html as HtmlResponse;
use es_core::{EventStore as _, Position};
use serde::Serialize;

use super::{Holder, held_by, respond, seconds};
use crate::html::{Href, Html};
use crate::queries::{self, StoreNumbers};
use crate::{ConsoleError, Shared};

/// What the overview shows.
#[derive(Clone, Debug, Serialize)]
pub struct Overview {
    /// The schema the store is in.
    pub schema: String,
    /// The position of the last event readers can see.
    pub head: Position,
    /// Counts read cheaply (no scan of the events).
    pub store: StoreNumbers,
    /// How far readers are held back by open transactions.
    pub horizon: HorizonView,
    /// Every registered projection.
    pub projections: Vec<ProjectionSummary>,
    /// Every registered saga.
    pub sagas: Vec<SagaSummary>,
}

/// The transaction horizon (see `es_postgres::Horizon`).
#[derive(Clone, Debug, Serialize)]
pub struct HorizonView {
    /// The oldest transaction still running.
    pub xmin: u64,
    /// Committed events readers cannot see yet.
    pub held_back_events: u64,
    /// How long the oldest of them has waited, in seconds.
    pub held_back_seconds: Option<f64>,
    /// The server process of the oldest writer, if any.
    pub oldest_writer_pid: Option<i32>,
    /// Transactions prepared for two-phase commit.
    pub prepared_transactions: u64,
}

/// One projection, as listed.
#[derive(Clone, Debug, Serialize)]
pub struct ProjectionSummary {
    /// Its key (`name`, or `name#i/n` for a part).
    pub name: String,
    /// Who runs it.
    pub holder: Option<Holder>,
    /// The last event it applied.
    pub checkpoint: Position,
    /// Events it has not applied yet.
    pub lag_events: u64,
    /// How long the oldest of those has waited, in seconds.
    pub lag_seconds: Option<f64>,
    /// Events it parked.
    pub parked: u64,
    /// Whether a rebuild is unfinished.
    pub rebuilding: bool,
    /// What this process's runner instance is doing.
    pub state: String,
}

/// One saga, as listed.
#[derive(Clone, Debug, Serialize)]
pub struct SagaSummary {
    /// Its name.
    pub name: String,
    /// Who runs it.
    pub holder: Option<Holder>,
    /// The last event its feed took into account.
    pub checkpoint: Position,
    /// Events its feed has not taken into account yet.
    pub lag_events: u64,
    /// How long the oldest of those has waited, in seconds.
    pub lag_seconds: Option<f64>,
    /// Commands waiting in its outbox.
    pub outbox_pending: u64,
    /// Commands dead-lettered.
    pub dead_lettered: u64,
    /// Deadlines waiting.
    pub deadlines_waiting: u64,
    /// Of those, already due.
    pub deadlines_due: u64,
    /// Of those, whose reaction failed at least once.
    pub deadlines_failing: u64,
}

pub(crate) async fn projections(
    state: &crate::State,
) -> Result<Vec<ProjectionSummary>, ConsoleError> {
    Ok(state
        .admin
        .projection_views()
        .await?
        .into_iter()
        .map(|v| ProjectionSummary {
            holder: Holder::from(v.holder.as_ref()),
            checkpoint: v.status.checkpoint,
            lag_events: v.status.lag_events,
            lag_seconds: v.status.lag.map(|d| d.as_secs_f64()),
            parked: v.status.parked,
            rebuilding: v.status.rebuilding,
            state: v.status.state.to_string(),
            name: v.status.name,
        })
        .collect())
}

pub(crate) async fn sagas(state: &crate::State) -> Result<Vec<SagaSummary>, ConsoleError> {
    Ok(state
        .admin
        .saga_views()
        .await?
        .into_iter()
        .map(|v| SagaSummary {
            holder: Holder::from(v.holder.as_ref()),
            checkpoint: v.feed.checkpoint,
            lag_events: v.feed.lag_events,
            lag_seconds: v.feed.lag.map(|d| d.as_secs_f64()),
            outbox_pending: v.outbox.pending,
            dead_lettered: v.outbox.dead_lettered,
            deadlines_waiting: v.deadlines.waiting,
            deadlines_due: v.deadlines.due,
            deadlines_failing: v.deadlines.failing,
            name: v.feed.name,
        })
        .collect())
}

pub(crate) async fn load(state: &crate::State) -> Result<Overview, ConsoleError> {
    let store = state.admin.store();
    let horizon = store.horizon().await?;
    Ok(Overview {
        schema: store.schema().to_string(),
        head: store.head().await?,
        store: queries::store_numbers(store).await?,
        horizon: HorizonView {
            xmin: horizon.xmin,
            held_back_events: horizon.held_back_events,
            held_back_seconds: horizon.held_back_for.map(|d| d.as_secs_f64()),
            oldest_writer_pid: horizon.oldest_writer_pid,
            prepared_transactions: horizon.prepared_transactions,
        },
        projections: projections(state).await?,
        sagas: sagas(state).await?,
    })
}

fn estimate(value: Option<u64>) -> String {
    value.map_or_else(|| "not analyzed yet".to_owned(), |n| n.to_string())
}

fn secs(value: Option<f64>) -> String {
    seconds(value.map(std::time::Duration::from_secs_f64))
}

/// The projections table, shared with `/projections`.
pub(crate) fn projections_table(h: &mut Html, prefix: &str, projections: &[ProjectionSummary]) {
    if projections.is_empty() {
        h.raw("<p>No projection is registered.</p>");
        return;
    }
    h.raw("<table>").head_row(&[
        "projection",
        "held by",
        "checkpoint",
        "lag (events)",
        "lag (s)",
        "parked",
        "notes",
    ]);
    for p in projections {
        h.raw("<tr><td>")
            .link(
                &Href::new(prefix, "/projection").param("name", &p.name),
                &p.name,
            )
            .raw("</td>");
        if p.holder.is_none() {
            h.raw("<td class=\"bad\">");
        } else {
            h.raw("<td>");
        }
        h.text(held_by(p.holder.as_ref()))
            .raw("</td><td>")
            .show(p.checkpoint)
            .raw("</td><td>")
            .show(p.lag_events)
            .raw("</td><td>")
            .text(secs(p.lag_seconds))
            .raw("</td>");
        if p.parked > 0 {
            h.raw("<td class=\"bad\">");
        } else {
            h.raw("<td>");
        }
        h.show(p.parked).raw("</td><td>");
        if p.rebuilding {
            h.raw("rebuild unfinished; ");
        }
        if p.parked > 0 {
            h.raw("parked events: replay or skip them");
        }
        h.raw("</td></tr>");
    }
    h.raw("</table>");
}

/// The sagas table, shared with `/sagas`.
pub(crate) fn sagas_table(h: &mut Html, prefix: &str, sagas: &[SagaSummary]) {
    if sagas.is_empty() {
        h.raw("<p>No saga is registered.</p>");
        return;
    }
    h.raw("<table>").head_row(&[
        "saga",
        "held by",
        "checkpoint",
        "lag (events)",
        "outbox pending",
        "dead letters",
        "deadlines (due, failing)",
    ]);
    for s in sagas {
        h.raw("<tr><td>")
            .link(&Href::new(prefix, "/saga").param("name", &s.name), &s.name)
            .raw("</td>");
        if s.holder.is_none() {
            h.raw("<td class=\"bad\">");
        } else {
            h.raw("<td>");
        }
        h.text(held_by(s.holder.as_ref()))
            .raw("</td><td>")
            .show(s.checkpoint)
            .raw("</td><td>")
            .show(s.lag_events)
            .raw("</td><td>")
            .show(s.outbox_pending)
            .raw("</td>");
        if s.dead_lettered > 0 {
            h.raw("<td class=\"bad\">");
        } else {
            h.raw("<td>");
        }
        h.show(s.dead_lettered)
            .raw("</td><td>")
            .text(format!(
                "{} ({} due, {} failing)",
                s.deadlines_waiting, s.deadlines_due, s.deadlines_failing
            ))
            .raw("</td></tr>");
    }
    h.raw("</table>");
}

/// The overview page.
pub(crate) async fn page(
    State(state): State<Shared>,
) -> Result<HtmlResponse<String>, ConsoleError> {
    let o = load(&state).await?;
    let prefix = &state.prefix;
    let mut h = Html::default();
    h.raw("<table>")
        .row(["schema", o.schema.as_str()])
        .raw("<tr><td>head (last readable event)</td><td>")
        .link(&Href::new(prefix, "/log"), o.head.to_string())
        .raw("</td></tr>")
        .row([
            "events (positions issued)".to_owned(),
            o.store.positions_issued.to_string(),
        ])
        .row([
            "events (estimate)".to_owned(),
            estimate(o.store.events_estimate),
        ])
        .row([
            "streams (estimate)".to_owned(),
            estimate(o.store.streams_estimate),
        ])
        .raw("<tr><td>transaction horizon</td><td>");
    if o.horizon.held_back_events == 0 {
        h.raw("<span class=\"ok\">no committed event is held back</span>");
    } else {
        h.raw("<span class=\"bad\">")
            .text(format!(
                "{} committed event(s) wait, for {} s, behind transaction {}{}",
                o.horizon.held_back_events,
                secs(o.horizon.held_back_seconds),
                o.horizon.xmin,
                o.horizon
                    .oldest_writer_pid
                    .map(|pid| format!(" (server process {pid})"))
                    .unwrap_or_default()
            ))
            .raw("</span>");
    }
    if o.horizon.prepared_transactions > 0 {
        h.text(format!(
            "; {} prepared transaction(s) hold it",
            o.horizon.prepared_transactions
        ));
    }
    h.raw("</td></tr></table><h2>Projections</h2>");
    projections_table(&mut h, prefix, &o.projections);
    h.raw("<h2>Sagas</h2>");
    sagas_table(&mut h, prefix, &o.sagas);
    h.raw("<p>")
        .link(&Href::new(prefix, "/streams"), "Browse streams")
        .raw(" · ")
        .link(&Href::new(prefix, "/log"), "The global log")
        .raw(" · ")
        .link(&Href::new(prefix, "/api/overview"), "JSON")
        .raw("</p>");
    Ok(respond(prefix, "Overview", h))
}
