//! `/projections`: every projection and part; `/projection?name=`: one, with its parked
//! events (replay them, skip one) and, while a rebuild is unfinished, its progress (the page
//! refreshes itself). Replay and skip are POSTs checked by [`crate::security`].

use axum::extract::{Form, Query, State};
use axum::http::HeaderMap;
use axum::response::Html as HtmlResponse;
use es_core::{EventStore as _, Position};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::overview::{ProjectionSummary, projections, projections_table};
use super::{action_form, held_by, position_param, respond};
use crate::html::{Href, Html};
use crate::queries::{self, ParkedView};
use crate::{ConsoleError, Shared};

/// The query of `/projection`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct NameQuery {
    pub(crate) name: String,
}

/// The form of a replay or a skip.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ActionForm {
    name: String,
    event_id: Option<String>,
    token: Option<String>,
    csrf: Option<String>,
}

/// How far an unfinished rebuild has got.
#[derive(Clone, Debug, Serialize)]
pub struct RebuildProgress {
    /// Events still to apply.
    pub events_to_go: u64,
    /// The share of the log applied, by sequence number, in percent.
    pub percent: f64,
}

/// What `/projection` shows.
#[derive(Clone, Debug, Serialize)]
pub struct ProjectionPage {
    /// The projection.
    pub projection: ProjectionSummary,
    /// The last readable event.
    pub head: Position,
    /// Its parked events, oldest first.
    pub parked: Vec<ParkedView>,
    /// The rebuild's progress, while one is unfinished.
    pub rebuild: Option<RebuildProgress>,
    /// What the last action did, when the page answers one.
    pub notice: Option<String>,
}

pub(crate) async fn load(state: &crate::State, name: &str) -> Result<ProjectionPage, ConsoleError> {
    let projection = projections(state)
        .await?
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(|| {
            ConsoleError::NotFound(format!(
                "no projection named {name:?}; registered: {}",
                state.admin.projection_names().join(", ")
            ))
        })?;
    let head = state.admin.store().head().await?;
    // The oldest parked events, a page of them: a projection may have parked many.
    let parked = queries::parked(state.admin.store(), name, queries::MAX_PAGE).await?;
    let rebuild = projection.rebuilding.then(|| RebuildProgress {
        events_to_go: projection.lag_events,
        percent: if head.sequence == 0 {
            100.0
        } else {
            (projection.checkpoint.sequence as f64 / head.sequence as f64 * 100.0).min(100.0)
        },
    });
    Ok(ProjectionPage {
        projection,
        head,
        parked,
        rebuild,
        notice: None,
    })
}

pub(crate) async fn list_page(
    State(state): State<Shared>,
) -> Result<HtmlResponse<String>, ConsoleError> {
    let projections = projections(&state).await?;
    let mut h = Html::default();
    projections_table(&mut h, &state.prefix, &projections);
    h.raw("<p>")
        .link(&Href::new(&state.prefix, "/api/projections"), "JSON")
        .raw("</p>");
    Ok(respond(&state.prefix, "Projections", h))
}

fn render(state: &crate::State, view: &ProjectionPage) -> HtmlResponse<String> {
    let prefix = &state.prefix;
    let p = &view.projection;
    let mut h = Html::default();
    if let Some(notice) = &view.notice {
        h.raw("<p class=\"ok notice\">").text(notice).raw("</p>");
    }
    h.raw("<table>")
        .row(["held by".to_owned(), held_by(p.holder.as_ref())])
        .row(["state (this process)".to_owned(), p.state.clone()])
        .raw("<tr><td>checkpoint</td><td>")
        .link(
            &Href::new(prefix, "/log").param("at", position_param(p.checkpoint)),
            p.checkpoint.to_string(),
        )
        .raw("</td></tr>")
        .row(["head".to_owned(), view.head.to_string()])
        .row(["lag (events)".to_owned(), p.lag_events.to_string()])
        .row([
            "lag (s)".to_owned(),
            p.lag_seconds
                .map_or_else(|| "-".to_owned(), |s| format!("{s:.1}")),
        ])
        .row(["parked".to_owned(), p.parked.to_string()])
        .raw("</table>");
    if let Some(rebuild) = &view.rebuild {
        h.raw("<h2>Rebuild in progress</h2><p><progress max=\"100\" value=\"")
            .attr(format!("{:.0}", rebuild.percent))
            .raw("\"></progress> ")
            .text(format!(
                "{:.1}% applied, {} events to go (this page refreshes every 5 s)",
                rebuild.percent, rebuild.events_to_go
            ))
            .raw("</p>");
    }
    h.raw("<h2>Parked events</h2>");
    if view.parked.is_empty() {
        h.raw("<p class=\"ok\">No parked event.</p>");
    } else {
        if state.security.writable() {
            h.raw("<div>Replay every parked event (those still failing stay parked): ");
            action_form(
                &mut h,
                state,
                &Href::new(prefix, "/projection/replay"),
                &[("name", p.name.clone())],
                "Replay parked events",
            );
            h.raw("</div>");
        } else {
            h.raw("<p>Read-only console: start it with an admin token to replay or skip.</p>");
        }
        h.raw("<table class=\"parked\">").head_row(&[
            "event",
            "position",
            "stream",
            "type",
            "attempts",
            "error",
            "parked at",
            "",
        ]);
        for parked in &view.parked {
            h.raw("<tr><td>")
                .link(
                    &Href::new(prefix, "/event").segment(parked.event_id),
                    parked.event_id.to_string(),
                )
                .raw("</td><td>")
                .link(
                    &Href::new(prefix, "/log").param("at", position_param(parked.position)),
                    parked.position.to_string(),
                )
                .raw("</td><td>")
                .link(
                    &Href::new(prefix, "/stream").param("id", &parked.stream_id),
                    &parked.stream_id,
                )
                .raw("</td><td>")
                .text(&parked.event_type)
                .raw("</td><td>")
                .show(parked.attempts)
                .raw("</td><td>")
                .el("pre", &parked.error)
                .raw("</td><td>")
                .text(
                    parked
                        .parked_at
                        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                        .unwrap_or_default(),
                )
                .raw("</td><td>");
            if state.security.writable() {
                action_form(
                    &mut h,
                    state,
                    &Href::new(prefix, "/projection/skip"),
                    &[
                        ("name", p.name.clone()),
                        ("event_id", parked.event_id.to_string()),
                    ],
                    "Skip (never apply)",
                );
            }
            h.raw("</td></tr>");
        }
        h.raw("</table>");
        if p.parked > view.parked.len() as u64 {
            h.raw("<p>")
                .text(format!(
                    "The oldest {} of {} parked events are shown; replaying or skipping them \
                     shows the next ones.",
                    view.parked.len(),
                    p.parked
                ))
                .raw("</p>");
        }
    }
    h.raw("<p>")
        .link(
            &Href::new(prefix, "/api/projection").param("name", &p.name),
            "JSON",
        )
        .raw("</p>");
    HtmlResponse(crate::html::page(
        prefix,
        &format!("Projection {}", p.name),
        view.rebuild.is_some(),
        h,
    ))
}

pub(crate) async fn page(
    State(state): State<Shared>,
    Query(query): Query<NameQuery>,
) -> Result<HtmlResponse<String>, ConsoleError> {
    let view = load(&state, &query.name).await?;
    Ok(render(&state, &view))
}

/// `POST /projection/replay`: replays the projection's parked events.
pub(crate) async fn replay(
    State(state): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Result<HtmlResponse<String>, ConsoleError> {
    state
        .security
        .check(&headers, form.token.as_deref(), form.csrf.as_deref())?;
    let report = state.admin.replay_parked(&form.name).await?;
    let mut view = load(&state, &form.name).await?;
    view.notice = Some(format!(
        "Replayed {} parked event(s); {} still failing (they stay parked); {} taken by another \
         replay meanwhile.",
        report.replayed, report.still_failing, report.taken_elsewhere
    ));
    Ok(render(&state, &view))
}

/// `POST /projection/skip`: removes one parked event without applying it.
pub(crate) async fn skip(
    State(state): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Result<HtmlResponse<String>, ConsoleError> {
    state
        .security
        .check(&headers, form.token.as_deref(), form.csrf.as_deref())?;
    let text = form.event_id.as_deref().unwrap_or("");
    let event_id = Uuid::parse_str(text)
        .map_err(|_| ConsoleError::BadRequest(format!("{text:?} is not an event id")))?;
    let skipped = state.admin.skip_parked(&form.name, event_id).await?;
    let mut view = load(&state, &form.name).await?;
    view.notice = Some(if skipped {
        format!("Skipped event {event_id}: it will never be applied.")
    } else {
        format!("Event {event_id} was not parked (any more): nothing skipped.")
    });
    Ok(render(&state, &view))
}
