//! `/log`: the global log, in reading order, around a position (`at=tx.seq`), after or
//! before one, or its newest events; keyset on the primary key `(transaction_id, position)`.

use axum::extract::{Query, State};
use axum::response::Html as HtmlResponse;
use es_core::Position;
use serde::{Deserialize, Serialize};

use super::{events_table, parse_position, position_param, respond};
use crate::html::{Href, Html};
use crate::queries::{self, EventView, LogPage};
use crate::{ConsoleError, Shared};

/// The query of `/log`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct LogQuery {
    at: Option<String>,
    after: Option<String>,
    before: Option<String>,
    limit: Option<usize>,
}

/// What `/log` shows.
#[derive(Clone, Debug, Serialize)]
pub struct LogView {
    /// The position asked for, when the page is around one.
    pub at: Option<Position>,
    /// The events, in reading order.
    pub events: Vec<EventView>,
}

pub(crate) async fn load(state: &crate::State, query: &LogQuery) -> Result<LogView, ConsoleError> {
    let page = if let Some(at) = &query.at {
        LogPage::Around(parse_position(at)?)
    } else if let Some(after) = &query.after {
        LogPage::After(parse_position(after)?)
    } else if let Some(before) = &query.before {
        LogPage::Before(parse_position(before)?)
    } else {
        LogPage::Newest
    };
    let events = queries::log(state.admin.store(), page, queries::page_size(query.limit)).await?;
    Ok(LogView {
        at: match page {
            LogPage::Around(at) => Some(at),
            _ => None,
        },
        events,
    })
}

pub(crate) async fn page(
    State(state): State<Shared>,
    Query(query): Query<LogQuery>,
) -> Result<HtmlResponse<String>, ConsoleError> {
    let view = load(&state, &query).await?;
    let prefix = &state.prefix;
    let limit = queries::page_size(query.limit);
    let here = view
        .at
        .and_then(|at| view.events.iter().find(|e| e.position == at))
        .map(|e| e.event_id);
    let mut h = Html::default();
    h.raw("<form method=\"get\" action=\"")
        .attr(Href::new(prefix, "/log").as_str())
        .raw("\">Go to position (transaction.sequence): <input name=\"at\" required> <button>Go</button></form>");
    let pager = |h: &mut Html| {
        h.raw("<p class=\"pager\">");
        if let Some(first) = view.events.first() {
            h.link(
                &Href::new(prefix, "/log")
                    .param("before", position_param(first.position))
                    .param("limit", limit),
                "earlier",
            );
        }
        if let Some(last) = view.events.last() {
            h.link(
                &Href::new(prefix, "/log")
                    .param("after", position_param(last.position))
                    .param("limit", limit),
                "later",
            );
        }
        h.link(&Href::new(prefix, "/log"), "newest");
        h.raw("</p>");
    };
    pager(&mut h);
    if view.events.is_empty() {
        h.raw("<p>No events here.</p>");
    }
    events_table(&mut h, prefix, &view.events, here);
    pager(&mut h);
    Ok(respond(prefix, "Global log", h))
}
