//! The console's pages: each module loads what its page shows (a plain, serializable struct,
//! also what the JSON endpoint of the same path returns) and renders it.

pub(crate) mod event;
pub(crate) mod log;
pub(crate) mod overview;
pub(crate) mod projections;
pub(crate) mod sagas;
pub(crate) mod stream;
pub(crate) mod streams;

use std::time::Duration;

use axum::response::Html as HtmlResponse;
use es_core::Position;
use es_postgres::LockHolder;
use serde::Serialize;

use crate::ConsoleError;
use crate::html::{Href, Html};
use crate::queries::{EventView, Upcast};

/// A position as a URL parameter: `transaction.sequence`.
pub(crate) fn position_param(position: Position) -> String {
    format!("{}.{}", position.transaction, position.sequence)
}

/// Reads [`position_param`]'s format back.
pub(crate) fn parse_position(text: &str) -> Result<Position, ConsoleError> {
    let bad = || {
        ConsoleError::BadRequest(format!(
            "{text:?} is not a position: expected transaction.sequence, such as 1234.56"
        ))
    };
    let (transaction, sequence) = text.split_once('.').ok_or_else(bad)?;
    Ok(Position::new(
        transaction.parse().map_err(|_| bad())?,
        sequence.parse().map_err(|_| bad())?,
    ))
}

/// A text query value, checked before it reaches the store: PostgreSQL text holds no NUL
/// byte (a query binding one fails), so no stored value has one. `what` names the parameter.
pub(crate) fn text_param<'a>(what: &str, value: &'a str) -> Result<&'a str, ConsoleError> {
    if value.contains('\0') {
        return Err(ConsoleError::BadRequest(format!(
            "the {what} {value:?} holds a NUL byte, which nothing stored holds"
        )));
    }
    Ok(value)
}

/// A stream id from a query, checked as `es_core::StreamId::new` checks one (not empty, at
/// most 512 bytes, no NUL byte).
pub(crate) fn stream_id_param(value: &str) -> Result<&str, ConsoleError> {
    es_core::StreamId::new(value).map_err(|e| {
        let shown: String = value.chars().take(80).collect();
        ConsoleError::BadRequest(format!("{shown:?} is not a stream id: {e}"))
    })?;
    Ok(value)
}

/// Seconds, one decimal: `-` for none.
pub(crate) fn seconds(duration: Option<Duration>) -> String {
    duration.map_or_else(|| "-".to_owned(), |d| format!("{:.1}", d.as_secs_f64()))
}

/// Who holds a runner's lock, as a JSON-friendly struct.
#[derive(Clone, Debug, Serialize)]
pub struct Holder {
    /// The server process id of its session.
    pub pid: i32,
    /// The client's address (`None`: a Unix socket, or not visible to this role).
    pub client_addr: Option<String>,
    /// The session's application name.
    pub application_name: String,
}

impl Holder {
    pub(crate) fn from(holder: Option<&LockHolder>) -> Option<Self> {
        holder.map(|h| Holder {
            pid: h.pid,
            client_addr: h.client_addr.clone(),
            application_name: h.application_name.clone(),
        })
    }
}

/// `pid@address`, or `nobody`.
pub(crate) fn held_by(holder: Option<&Holder>) -> String {
    match holder {
        None => "nobody".to_owned(),
        Some(h) => format!("{}@{}", h.pid, h.client_addr.as_deref().unwrap_or("local")),
    }
}

/// A rendered page.
pub(crate) fn respond(prefix: &str, title: &str, body: Html) -> HtmlResponse<String> {
    HtmlResponse(crate::html::page(prefix, title, false, body))
}

/// A table of events: envelope, payload as stored and as upcast. `here` is highlighted.
pub(crate) fn events_table(
    h: &mut Html,
    prefix: &str,
    events: &[EventView],
    here: Option<uuid::Uuid>,
) {
    h.raw("<table class=\"events\">");
    h.head_row(&[
        "position",
        "stream",
        "version",
        "type",
        "recorded",
        "correlation, causation, metadata",
        "payload (as stored)",
        "as upcast",
    ]);
    for event in events {
        if Some(event.event_id) == here {
            h.raw("<tr class=\"here\"><td>");
        } else {
            h.raw("<tr><td>");
        }
        h.link(
            &Href::new(prefix, "/log").param("at", position_param(event.position)),
            event.position.to_string(),
        );
        h.raw("</td><td>");
        h.link(
            &Href::new(prefix, "/stream").param("id", &event.stream_id),
            &event.stream_id,
        );
        h.raw("</td><td>");
        h.link(
            &Href::new(prefix, "/event").segment(event.event_id),
            format!("v{}", event.stream_version),
        );
        h.raw("</td><td>")
            .text(&event.event_type)
            .raw(" <small>(schema v")
            .show(event.schema_version)
            .raw(")</small></td><td>")
            .show(event.recorded_at.format("%Y-%m-%d %H:%M:%S%.3f"))
            .raw("</td><td><small>");
        h.link(
            &Href::new(prefix, "/trace").segment(event.correlation_id),
            short(event.correlation_id),
        );
        if let Some(cause) = event.causation_id {
            h.raw(" ← ")
                .link(&Href::new(prefix, "/event").segment(cause), short(cause));
        }
        h.raw("</small>");
        if event.metadata.get() != "{}" {
            h.pre(event.metadata.get());
        }
        h.raw("</td><td>");
        h.pre(event.payload.get());
        h.raw("</td><td>");
        upcast(h, &event.upcast);
        h.raw("</td></tr>");
    }
    h.raw("</table>");
}

/// The last block of a UUID (random in v4 and v7 ids, where the first is a timestamp):
/// enough to tell ids apart on one page; the link holds the whole id.
fn short(id: uuid::Uuid) -> String {
    let text = id.to_string();
    format!("…{}", text.rsplit('-').next().unwrap_or(&text))
}

/// What readers decode an event as.
pub(crate) fn upcast(h: &mut Html, upcast: &Upcast) {
    match upcast {
        Upcast::AsStored => {
            h.raw("<small>as stored (current version)</small>");
        }
        Upcast::Lifted { events } if events.is_empty() => {
            h.raw("<small>retired: readers skip it</small>");
        }
        Upcast::Lifted { events } => {
            for event in events {
                h.raw("<small>")
                    .text(&event.event_type)
                    .raw(" v")
                    .show(event.schema_version)
                    .raw("</small>");
                h.json(&event.payload.to_string());
            }
        }
        Upcast::Failed { reason } => {
            h.raw("<span class=\"bad\">").text(reason).raw("</span>");
        }
    }
}

/// A form posting to `action` with the admin token and the CSRF token.
pub(crate) fn action_form(
    h: &mut Html,
    state: &crate::State,
    action: &Href,
    fields: &[(&'static str, String)],
    button: &'static str,
) {
    h.raw("<form class=\"inline\" method=\"post\" action=\"")
        .attr(action.as_str())
        .raw("\">");
    for (name, value) in fields {
        h.hidden(name, value);
    }
    h.hidden("csrf", state.security.csrf());
    h.raw("<input type=\"password\" name=\"token\" placeholder=\"admin token\" required> <button type=\"submit\">")
        .raw(button)
        .raw("</button></form>");
}
