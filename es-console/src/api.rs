//! The same data as the pages, as JSON: `/api/...` beside each page, loaded by the page's own
//! module. Errors answer `{"error": "..."}` with the page's status code.

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;

use crate::Shared;
use crate::error::ApiError;
use crate::pages::{event, log, overview, projections, sagas, stream, streams};

type Api<T> = Result<Json<T>, ApiError>;

pub(crate) async fn overview(State(state): State<Shared>) -> Api<overview::Overview> {
    Ok(Json(overview::load(&state).await?))
}

pub(crate) async fn streams(
    State(state): State<Shared>,
    Query(query): Query<streams::StreamsQuery>,
) -> Api<streams::StreamsView> {
    Ok(Json(streams::load(&state, &query).await?))
}

pub(crate) async fn stream(
    State(state): State<Shared>,
    Query(query): Query<stream::StreamQuery>,
) -> Api<stream::StreamPageView> {
    Ok(Json(stream::load(&state, &query).await?))
}

pub(crate) async fn event(
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Api<event::EventPage> {
    Ok(Json(event::load(&state, &id).await?))
}

pub(crate) async fn trace(
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Api<Vec<event::TraceNode>> {
    Ok(Json(event::load_trace(&state, &id).await?))
}

pub(crate) async fn log(
    State(state): State<Shared>,
    Query(query): Query<log::LogQuery>,
) -> Api<log::LogView> {
    Ok(Json(log::load(&state, &query).await?))
}

pub(crate) async fn projections(
    State(state): State<Shared>,
) -> Api<Vec<overview::ProjectionSummary>> {
    Ok(Json(overview::projections(&state).await?))
}

pub(crate) async fn projection(
    State(state): State<Shared>,
    Query(query): Query<projections::NameQuery>,
) -> Api<projections::ProjectionPage> {
    Ok(Json(projections::load(&state, &query.name).await?))
}

pub(crate) async fn sagas(State(state): State<Shared>) -> Api<Vec<overview::SagaSummary>> {
    Ok(Json(overview::sagas(&state).await?))
}

/// The query of `/api/saga`.
#[derive(Debug, Deserialize)]
pub(crate) struct SagaQuery {
    name: String,
    after: Option<String>,
    dead_after: Option<i64>,
    limit: Option<usize>,
}

pub(crate) async fn saga(
    State(state): State<Shared>,
    Query(query): Query<SagaQuery>,
) -> Api<sagas::SagaPage> {
    Ok(Json(
        sagas::load(
            &state,
            &query.name,
            query.after.as_deref(),
            query.dead_after,
            query.limit,
        )
        .await?,
    ))
}
