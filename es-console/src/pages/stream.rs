//! `/stream?id=`: one stream's events in version order, a page at a time (keyset on the
//! version: `after=v` or `before=v`), each with its envelope and its payload as stored and as
//! upcast to the current version.

use axum::extract::{Query, State};
use axum::response::Html as HtmlResponse;
use serde::{Deserialize, Serialize};

use super::{events_table, respond};
use crate::html::{Href, Html};
use crate::queries::{self, EventView, StreamPage};
use crate::{ConsoleError, Shared};

/// The query of `/stream`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct StreamQuery {
    id: String,
    after: Option<u64>,
    before: Option<u64>,
    limit: Option<usize>,
}

/// What `/stream` shows.
#[derive(Clone, Debug, Serialize)]
pub struct StreamPageView {
    /// The stream's id.
    pub stream_id: String,
    /// Its version: how many events it holds.
    pub version: u64,
    /// This page's events, in version order.
    pub events: Vec<EventView>,
}

pub(crate) async fn load(
    state: &crate::State,
    query: &StreamQuery,
) -> Result<StreamPageView, ConsoleError> {
    let store = state.admin.store();
    super::stream_id_param(&query.id)?;
    let version = queries::stream_version(store, &query.id)
        .await?
        .ok_or_else(|| ConsoleError::NotFound(format!("no stream {:?}", query.id)))?;
    let page = match (query.after, query.before) {
        (_, Some(before)) => StreamPage::Before(before),
        (Some(after), None) => StreamPage::After(after),
        (None, None) => StreamPage::After(0),
    };
    let events =
        queries::stream_events(store, &query.id, page, queries::page_size(query.limit)).await?;
    Ok(StreamPageView {
        stream_id: query.id.clone(),
        version,
        events,
    })
}

pub(crate) async fn page(
    State(state): State<Shared>,
    Query(query): Query<StreamQuery>,
) -> Result<HtmlResponse<String>, ConsoleError> {
    let view = load(&state, &query).await?;
    let prefix = &state.prefix;
    let limit = queries::page_size(query.limit);
    let mut h = Html::default();
    h.raw("<p>")
        .text(format!("{} event(s); ", view.version))
        .raw("category ")
        .link(
            &Href::new(prefix, "/streams").param(
                "category",
                view.stream_id.split('-').next().unwrap_or_default(),
            ),
            view.stream_id.split('-').next().unwrap_or_default(),
        )
        .raw("</p>");
    let pager = |h: &mut Html| {
        let base = Href::new(prefix, "/stream").param("id", &view.stream_id);
        h.raw("<p class=\"pager\">");
        h.link(&base.clone().param("limit", limit), "first");
        if let Some(first) = view.events.first()
            && first.stream_version > 1
        {
            h.link(
                &base
                    .clone()
                    .param("before", first.stream_version)
                    .param("limit", limit),
                "previous",
            );
        }
        if let Some(last) = view.events.last()
            && last.stream_version < view.version
        {
            h.link(
                &base
                    .clone()
                    .param("after", last.stream_version)
                    .param("limit", limit),
                "next",
            );
        }
        h.link(
            &base
                .clone()
                .param("before", view.version.saturating_add(1))
                .param("limit", limit),
            "last",
        );
        h.link(
            &Href::new(prefix, "/api/stream")
                .param("id", &view.stream_id)
                .param("limit", limit),
            "JSON",
        );
        h.raw("</p>");
    };
    pager(&mut h);
    events_table(&mut h, prefix, &view.events, None);
    pager(&mut h);
    Ok(respond(prefix, &format!("Stream {}", view.stream_id), h))
}
