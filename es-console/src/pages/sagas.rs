//! `/sagas`: every saga; `/saga?name=`: one, with its instances' state, its outbox, its
//! deadlines and its dead letters (retry or discard them: POSTs checked by
//! [`crate::security`]).

use axum::extract::{Form, Query, State};
use axum::http::HeaderMap;
use axum::response::Html as HtmlResponse;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::overview::{SagaSummary, sagas, sagas_table};
use super::{action_form, held_by, respond};
use crate::html::{Href, Html};
use crate::queries::{self, DeadLetterView, Deadline, OutboxCommand, SagaInstance};
use crate::{ConsoleError, Shared};

/// The query of `/saga`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct SagaQuery {
    name: String,
    after: Option<String>,
    /// The outbox `seq` the page of dead letters starts after.
    dead_after: Option<i64>,
    limit: Option<usize>,
}

/// The form of a retry or a discard.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct DeadLetterForm {
    name: String,
    command_id: String,
    token: Option<String>,
    csrf: Option<String>,
}

/// What `/saga` shows.
#[derive(Clone, Debug, Serialize)]
pub struct SagaPage {
    /// The saga at a glance.
    pub saga: SagaSummary,
    /// Its instances (a page of them, by id).
    pub instances: Vec<SagaInstance>,
    /// Commands in its outbox, oldest first (at most a page).
    pub outbox: Vec<OutboxCommand>,
    /// Deadlines waiting, soonest first (at most a page).
    pub deadlines: Vec<Deadline>,
    /// Its dead-lettered commands, in the order they were issued (at most a page: the
    /// saga's `dead_lettered` says how many there are).
    pub dead_letters: Vec<DeadLetterView>,
    /// What the last action did, when the page answers one.
    pub notice: Option<String>,
    /// The page size: each list above holds at most this many.
    pub page: usize,
}

pub(crate) async fn load(
    state: &crate::State,
    name: &str,
    after: Option<&str>,
    dead_after: Option<i64>,
    limit: Option<usize>,
) -> Result<SagaPage, ConsoleError> {
    let saga = sagas(state)
        .await?
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| {
            ConsoleError::NotFound(format!(
                "no saga named {name:?}; registered: {}",
                state.admin.saga_names().join(", ")
            ))
        })?;
    let page = queries::page_size(limit);
    let after = after
        .map(|a| super::text_param("instance", a))
        .transpose()?;
    let (instances, outbox, deadlines) =
        queries::saga_tables(state.admin.store(), name, after, page).await?;
    let dead_letters = queries::dead_letters(state.admin.store(), name, dead_after, page).await?;
    Ok(SagaPage {
        saga,
        instances,
        outbox,
        deadlines,
        dead_letters,
        notice: None,
        page,
    })
}

pub(crate) async fn list_page(
    State(state): State<Shared>,
) -> Result<HtmlResponse<String>, ConsoleError> {
    let sagas = sagas(&state).await?;
    let mut h = Html::default();
    sagas_table(&mut h, &state.prefix, &sagas);
    h.raw("<p>")
        .link(&Href::new(&state.prefix, "/api/sagas"), "JSON")
        .raw("</p>");
    Ok(respond(&state.prefix, "Sagas", h))
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

fn render(state: &crate::State, view: &SagaPage) -> HtmlResponse<String> {
    let prefix = &state.prefix;
    let s = &view.saga;
    let mut h = Html::default();
    if let Some(notice) = &view.notice {
        h.raw("<p class=\"ok notice\">").text(notice).raw("</p>");
    }
    h.raw("<table>")
        .row(["held by".to_owned(), held_by(s.holder.as_ref())])
        .row(["checkpoint".to_owned(), s.checkpoint.to_string()])
        .row(["lag (events)".to_owned(), s.lag_events.to_string()])
        .row(["outbox pending".to_owned(), s.outbox_pending.to_string()])
        .row(["dead letters".to_owned(), s.dead_lettered.to_string()])
        .row([
            "deadlines".to_owned(),
            format!(
                "{} waiting ({} due, {} failing)",
                s.deadlines_waiting, s.deadlines_due, s.deadlines_failing
            ),
        ])
        .raw("</table><h2>Dead letters</h2>");
    if view.dead_letters.is_empty() {
        h.raw("<p class=\"ok\">None.</p>");
    } else {
        h.raw("<table>")
            .head_row(&["command", "instance", "attempts", "error", "dead since", ""]);
        for d in &view.dead_letters {
            h.raw("<tr><td>")
                .json(&d.command)
                .raw("</td><td>")
                .text(&d.instance)
                .raw("</td><td>")
                .show(d.attempts)
                .raw("</td><td>")
                .text(d.error.as_deref().unwrap_or(""))
                .raw("</td><td>")
                .text(time(d.dead_at))
                .raw("</td><td>");
            if state.security.writable() {
                let fields = [
                    ("name", s.name.clone()),
                    ("command_id", d.command_id.to_string()),
                ];
                action_form(
                    &mut h,
                    state,
                    &Href::new(prefix, "/saga/retry"),
                    &fields,
                    "Retry",
                );
                action_form(
                    &mut h,
                    state,
                    &Href::new(prefix, "/saga/discard"),
                    &fields,
                    "Discard",
                );
            }
            h.raw("</td></tr>");
        }
        h.raw("</table>");
        if view.dead_letters.len() == view.page
            && let Some(last) = view.dead_letters.last()
        {
            h.raw("<p class=\"pager\">").link(
                &Href::new(prefix, "/saga")
                    .param("name", &s.name)
                    .param("dead_after", last.seq.to_string())
                    .param("limit", view.page.to_string()),
                "more dead letters",
            );
            h.raw("</p>");
        }
    }
    h.raw("<h2>Outbox</h2>");
    if view.outbox.is_empty() {
        h.raw("<p>Empty.</p>");
    } else {
        h.raw("<table>")
            .head_row(&["command", "instance", "issued", "attempts", "last error"]);
        for c in &view.outbox {
            h.raw("<tr><td>")
                .json(&c.command.to_string())
                .raw("</td><td>")
                .text(&c.instance)
                .raw("</td><td>")
                .text(time(c.created_at))
                .raw("</td><td>")
                .show(c.attempts)
                .raw("</td><td>")
                .text(c.last_error.as_deref().unwrap_or(""))
                .raw("</td></tr>");
        }
        h.raw("</table>");
    }
    h.raw("<h2>Deadlines waiting</h2>");
    if view.deadlines.is_empty() {
        h.raw("<p>None.</p>");
    } else {
        h.raw("<table>").head_row(&["instance", "deadline", "due"]);
        for d in &view.deadlines {
            h.row([d.instance.clone(), d.name.clone(), time(d.due)]);
        }
        h.raw("</table>");
    }
    h.raw("<h2>Instances</h2>");
    if view.instances.is_empty() {
        h.raw("<p>None.</p>");
    } else {
        h.raw("<table>").head_row(&["instance", "state", "updated"]);
        for i in &view.instances {
            h.raw("<tr><td>")
                .text(&i.instance)
                .raw("</td><td>")
                .json(&i.state.to_string())
                .raw("</td><td>")
                .text(time(i.updated_at))
                .raw("</td></tr>");
        }
        h.raw("</table>");
        if view.instances.len() == view.page
            && let Some(last) = view.instances.last()
        {
            h.raw("<p class=\"pager\">").link(
                &Href::new(prefix, "/saga")
                    .param("name", &s.name)
                    .param("after", &last.instance)
                    .param("limit", view.page.to_string()),
                "more instances",
            );
            h.raw("</p>");
        }
    }
    h.raw("<p>")
        .link(
            &Href::new(prefix, "/api/saga").param("name", &s.name),
            "JSON",
        )
        .raw("</p>");
    respond(prefix, &format!("Saga {}", s.name), h)
}

pub(crate) async fn page(
    State(state): State<Shared>,
    Query(query): Query<SagaQuery>,
) -> Result<HtmlResponse<String>, ConsoleError> {
    let view = load(
        &state,
        &query.name,
        query.after.as_deref(),
        query.dead_after,
        query.limit,
    )
    .await?;
    Ok(render(&state, &view))
}

async fn dead_letter_action(
    state: &crate::State,
    headers: &HeaderMap,
    form: DeadLetterForm,
    retry: bool,
) -> Result<HtmlResponse<String>, ConsoleError> {
    state
        .security
        .check(headers, form.token.as_deref(), form.csrf.as_deref())?;
    let id = Uuid::parse_str(&form.command_id).map_err(|_| {
        ConsoleError::BadRequest(format!("{:?} is not a command id", form.command_id))
    })?;
    let done = if retry {
        state.admin.retry_dead_letters(&form.name, &[id]).await?
    } else {
        state.admin.discard_dead_letters(&form.name, &[id]).await?
    };
    let mut view = load(state, &form.name, None, None, None).await?;
    view.notice = Some(format!(
        "{} {done} dead-lettered command(s).",
        if retry { "Retried" } else { "Discarded" }
    ));
    Ok(render(state, &view))
}

/// `POST /saga/retry`.
pub(crate) async fn retry(
    State(state): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<DeadLetterForm>,
) -> Result<HtmlResponse<String>, ConsoleError> {
    dead_letter_action(&state, &headers, form, true).await
}

/// `POST /saga/discard`.
pub(crate) async fn discard(
    State(state): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<DeadLetterForm>,
) -> Result<HtmlResponse<String>, ConsoleError> {
    dead_letter_action(&state, &headers, form, false).await
}
