//! `/streams`: the stream categories; `/streams?category=c`: the streams of one category with
//! their version and last event time. Both paged by key (`after=`), never by offset.

use axum::extract::{Query, State};
use axum::response::Html as HtmlResponse;
use serde::{Deserialize, Serialize};

use super::respond;
use crate::html::{Href, Html};
use crate::queries::{self, Category, StreamSummary};
use crate::{ConsoleError, Shared};

/// The query of `/streams`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct StreamsQuery {
    category: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

/// What `/streams` shows: the categories, or one category's streams.
#[derive(Clone, Debug, Serialize)]
pub struct StreamsView {
    /// The category listed, when one was asked for.
    pub category: Option<String>,
    /// The categories (when no category was asked for).
    pub categories: Vec<Category>,
    /// The category's streams.
    pub streams: Vec<StreamSummary>,
    /// The `after` of the next page, when there may be one.
    pub next_after: Option<String>,
}

pub(crate) async fn load(
    state: &crate::State,
    query: &StreamsQuery,
) -> Result<StreamsView, ConsoleError> {
    let limit = queries::page_size(query.limit);
    let store = state.admin.store();
    let after = query
        .after
        .as_deref()
        .map(|a| super::text_param("after", a))
        .transpose()?;
    let category = query
        .category
        .as_deref()
        .map(|c| super::text_param("category", c))
        .transpose()?;
    match category.filter(|c| !c.is_empty()) {
        None => {
            let categories = queries::categories(store, after, limit).await?;
            let next_after = (categories.len() == limit)
                .then(|| categories.last().map(|c| c.category.clone()))
                .flatten();
            Ok(StreamsView {
                category: None,
                categories,
                streams: Vec::new(),
                next_after,
            })
        }
        Some(category) => {
            let streams = queries::streams(store, category, after, limit).await?;
            let next_after = (streams.len() == limit)
                .then(|| streams.last().map(|s| s.stream_id.clone()))
                .flatten();
            Ok(StreamsView {
                category: Some(category.to_owned()),
                categories: Vec::new(),
                streams,
                next_after,
            })
        }
    }
}

pub(crate) async fn page(
    State(state): State<Shared>,
    Query(query): Query<StreamsQuery>,
) -> Result<HtmlResponse<String>, ConsoleError> {
    let view = load(&state, &query).await?;
    let prefix = &state.prefix;
    let mut h = Html::default();
    h.raw("<form method=\"get\" action=\"")
        .attr(Href::new(prefix, "/stream").as_str())
        .raw("\">Open a stream by id: <input name=\"id\" required> <button>Open</button></form>");
    let title = match &view.category {
        None => {
            h.raw("<table>")
                .head_row(&["category", "events (as last counted)"]);
            for c in &view.categories {
                h.raw("<tr><td>")
                    .link(
                        &Href::new(prefix, "/streams").param("category", &c.category),
                        &c.category,
                    )
                    .raw("</td><td>")
                    .text(
                        c.events_counted
                            .map_or_else(|| "-".to_owned(), |n| n.to_string()),
                    )
                    .raw("</td></tr>");
            }
            h.raw("</table>");
            if view.categories.is_empty() {
                h.raw("<p>No stream is stored.</p>");
            }
            "Stream categories".to_owned()
        }
        Some(category) => {
            h.raw("<table>")
                .head_row(&["stream", "version", "last event recorded"]);
            for s in &view.streams {
                h.raw("<tr><td>")
                    .link(
                        &Href::new(prefix, "/stream").param("id", &s.stream_id),
                        &s.stream_id,
                    )
                    .raw("</td><td>")
                    .show(s.version)
                    .raw("</td><td>")
                    .text(
                        s.last_recorded_at
                            .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
                            .unwrap_or_default(),
                    )
                    .raw("</td></tr>");
            }
            h.raw("</table>");
            format!("Streams of {category}")
        }
    };
    h.raw("<p class=\"pager\">");
    let mut first = Href::new(prefix, "/streams");
    let mut next = Href::new(prefix, "/streams");
    if let Some(category) = &view.category {
        first = first.param("category", category);
        next = next.param("category", category);
    }
    h.link(&first, "first page");
    if let Some(after) = &view.next_after {
        h.link(
            &next
                .param("after", after)
                .param("limit", queries::page_size(query.limit)),
            "next page",
        );
    }
    h.raw("</p>");
    Ok(respond(prefix, &title, h))
}
