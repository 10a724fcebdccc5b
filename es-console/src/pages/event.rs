//! `/event/{id}`: one event, its envelope and payload (as stored and upcast), and the
//! causation tree of its correlation id; `/trace/{correlation_id}`: that tree alone.

use std::collections::{HashMap, HashSet};

use axum::extract::{Path, State};
use axum::response::Html as HtmlResponse;
use serde::Serialize;
use uuid::Uuid;

use super::{position_param, respond, upcast};
use crate::html::{Href, Html};
use crate::queries::{self, EventView, TRACE_LIMIT};
use crate::{ConsoleError, Shared};

/// What `/event/{id}` shows.
#[derive(Clone, Debug, Serialize)]
pub struct EventPage {
    /// The event.
    pub event: EventView,
    /// The events of its correlation id, as a tree of causes and effects (depth first).
    pub trace: Vec<TraceNode>,
    /// Whether the correlation id has more events than a trace shows.
    pub trace_truncated: bool,
}

/// One event of a causation tree, at its depth (0: caused by nothing in the trace).
#[derive(Clone, Debug, Serialize)]
pub struct TraceNode {
    /// How deep under its roots.
    pub depth: usize,
    /// The event's id.
    pub event_id: Uuid,
    /// What caused it.
    pub causation_id: Option<Uuid>,
    /// Its stream.
    pub stream_id: String,
    /// Its version there.
    pub stream_version: u64,
    /// Its type.
    pub event_type: String,
}

/// Orders `events` (one correlation id, in global order) depth first, each under the event
/// that caused it; events whose cause is not in the set are roots.
pub(crate) fn tree(events: &[EventView]) -> Vec<TraceNode> {
    let ids: HashSet<Uuid> = events.iter().map(|e| e.event_id).collect();
    let mut children: HashMap<Uuid, Vec<&EventView>> = HashMap::new();
    let mut roots = Vec::new();
    for event in events {
        match event
            .causation_id
            .filter(|cause| ids.contains(cause) && *cause != event.event_id)
        {
            Some(cause) => children.entry(cause).or_default().push(event),
            None => roots.push(event),
        }
    }
    let mut out = Vec::with_capacity(events.len());
    let mut seen = HashSet::new();
    let mut stack: Vec<(&EventView, usize)> = roots.into_iter().rev().map(|e| (e, 0)).collect();
    while let Some((event, depth)) = stack.pop() {
        // A cycle of causes (only a hand-written row could make one) is drawn once.
        if !seen.insert(event.event_id) {
            continue;
        }
        out.push(TraceNode {
            depth,
            event_id: event.event_id,
            causation_id: event.causation_id,
            stream_id: event.stream_id.clone(),
            stream_version: event.stream_version,
            event_type: event.event_type.clone(),
        });
        if let Some(effects) = children.get(&event.event_id) {
            stack.extend(effects.iter().rev().map(|e| (*e, depth + 1)));
        }
    }
    out
}

fn parse_uuid(text: &str, what: &str) -> Result<Uuid, ConsoleError> {
    Uuid::parse_str(text)
        .map_err(|_| ConsoleError::BadRequest(format!("{text:?} is not {what} (a UUID)")))
}

pub(crate) async fn load(state: &crate::State, id: &str) -> Result<EventPage, ConsoleError> {
    let id = parse_uuid(id, "an event id")?;
    let store = state.admin.store();
    let event = queries::event(store, id)
        .await?
        .ok_or_else(|| ConsoleError::NotFound(format!("no event {id}")))?;
    let correlated = queries::correlated(store, event.correlation_id).await?;
    Ok(EventPage {
        trace_truncated: correlated.len() >= TRACE_LIMIT,
        trace: tree(&correlated),
        event,
    })
}

/// The events of one correlation id, as a tree.
pub(crate) async fn load_trace(
    state: &crate::State,
    correlation_id: &str,
) -> Result<Vec<TraceNode>, ConsoleError> {
    let id = parse_uuid(correlation_id, "a correlation id")?;
    let events = queries::correlated(state.admin.store(), id).await?;
    if events.is_empty() {
        return Err(ConsoleError::NotFound(format!(
            "no event has correlation id {id}"
        )));
    }
    Ok(tree(&events))
}

fn trace_list(h: &mut Html, prefix: &str, trace: &[TraceNode], here: Option<Uuid>) {
    h.raw("<ul class=\"tree\">");
    for node in trace {
        if Some(node.event_id) == here {
            h.raw("<li class=\"here\">");
        } else {
            h.raw("<li>");
        }
        h.text(format!("{}└─ ", "\u{a0}\u{a0}\u{a0}".repeat(node.depth)))
            .link(
                &Href::new(prefix, "/event").segment(node.event_id),
                &node.event_type,
            )
            .raw(" in ")
            .link(
                &Href::new(prefix, "/stream").param("id", &node.stream_id),
                &node.stream_id,
            )
            .text(format!(" v{}", node.stream_version))
            .raw("</li>");
    }
    h.raw("</ul>");
}

pub(crate) async fn page(
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Result<HtmlResponse<String>, ConsoleError> {
    let view = load(&state, &id).await?;
    let prefix = &state.prefix;
    let e = &view.event;
    let mut h = Html::default();
    h.raw("<table>")
        .row(["event id".to_owned(), e.event_id.to_string()])
        .raw("<tr><td>stream</td><td>")
        .link(
            &Href::new(prefix, "/stream").param("id", &e.stream_id),
            &e.stream_id,
        )
        .text(format!(" at version {}", e.stream_version))
        .raw(" (")
        .link(
            &Href::new(prefix, "/stream")
                .param("id", &e.stream_id)
                .param("after", e.stream_version.saturating_sub(1)),
            "its page",
        )
        .raw(")</td></tr><tr><td>position</td><td>")
        .link(
            &Href::new(prefix, "/log").param("at", position_param(e.position)),
            e.position.to_string(),
        )
        .raw(" (the global log around it)</td></tr>")
        .row(["type".to_owned(), e.event_type.clone()])
        .row([
            "schema version (stored)".to_owned(),
            e.schema_version.to_string(),
        ])
        .row(["recorded at".to_owned(), e.recorded_at.to_rfc3339()])
        .raw("<tr><td>correlation id</td><td>")
        .link(
            &Href::new(prefix, "/trace").segment(e.correlation_id),
            e.correlation_id.to_string(),
        )
        .raw("</td></tr><tr><td>causation id</td><td>");
    match e.causation_id {
        Some(cause) => {
            h.link(
                &Href::new(prefix, "/event").segment(cause),
                cause.to_string(),
            );
        }
        None => {
            h.raw("-");
        }
    }
    h.raw("</td></tr><tr><td>metadata</td><td>")
        .pre(e.metadata.get())
        .raw("</td></tr><tr><td>payload (as stored)</td><td>")
        .pre(e.payload.get())
        .raw("</td></tr><tr><td>as upcast to the current version</td><td>");
    upcast(&mut h, &e.upcast);
    h.raw("</td></tr></table><h2>Causation tree</h2>");
    if view.trace_truncated {
        h.raw("<p class=\"bad\">The correlation id has more events than a trace shows; the first ones are drawn.</p>");
    }
    trace_list(&mut h, prefix, &view.trace, Some(e.event_id));
    h.raw("<p>")
        .link(&Href::new(prefix, "/api/event").segment(e.event_id), "JSON")
        .raw("</p>");
    Ok(respond(prefix, &format!("Event {}", e.event_type), h))
}

pub(crate) async fn trace_page(
    State(state): State<Shared>,
    Path(correlation_id): Path<String>,
) -> Result<HtmlResponse<String>, ConsoleError> {
    let trace = load_trace(&state, &correlation_id).await?;
    let prefix = &state.prefix;
    let mut h = Html::default();
    trace_list(&mut h, prefix, &trace, None);
    Ok(respond(prefix, &format!("Trace {correlation_id}"), h))
}
