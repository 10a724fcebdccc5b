//! A web console for a service built on the event-sourcing framework: an axum [`Router`]
//! over the service's [`es_admin::Admin`] registry that any service mounts, showing its
//! store, projections and sagas as server-rendered HTML (no JavaScript, plain links and
//! forms) and the same data as JSON.
//!
//! # Pages
//! | path | what | JSON |
//! | --- | --- | --- |
//! | `/` | overview: head, horizon, events, projections and sagas at a glance | `/api/overview` |
//! | `/streams` | stream categories; `?category=` its streams, version and last event time | `/api/streams` |
//! | `/stream?id=` | one stream's events, paged by version, payload as stored and upcast | `/api/stream` |
//! | `/event/{id}` | one event and the causation tree of its correlation id | `/api/event/{id}` |
//! | `/trace/{correlation_id}` | one piece of work as a causation tree | `/api/trace/{id}` |
//! | `/log?at=tx.seq` | the global log around a position (or `after=`, `before=`) | `/api/log` |
//! | `/projections`, `/projection?name=` | checkpoint, lag, state, parked events (replay, skip), rebuild progress | `/api/projections`, `/api/projection` |
//! | `/sagas`, `/saga?name=` | feed, outbox, deadlines, dead letters (retry, discard) | `/api/sagas`, `/api/saga` |
//! | `/health/live`, `/health/ready` | liveness; readiness: every runner active and within the lag bound (a projection rebuilt in place: active); the fleet's state, for alerting | |
//! | `/metrics` | Prometheus text, with the `prometheus` feature and [`Console::metrics`] | |
//!
//! Every response carries a `Server-Timing` header with the time the server spent on it.
//!
//! # Security
//! The console is read-only unless built with [`Console::admin_token`]; then replaying or
//! skipping parked events and retrying or discarding dead letters are POSTs that carry the
//! token (form field `token` or header `x-admin-token`) and pass a CSRF check (a CSRF token
//! in every form, derived from the admin token so that replicas behind a load balancer agree
//! on it; `Origin` must name the console itself, and `Sec-Fetch-Site` be `same-origin` or
//! `none`, the operator's own navigation).
//! Tokens are compared in constant time. Everything shown is escaped; every query is bound;
//! pages hold at most [`MAX_PAGE`] rows. Bind it to `127.0.0.1` (what `bank-admin serve`
//! does by default) or put it behind your own authentication.
//!
//! Every request must name a host the console answers for ([`Console::allowed_hosts`];
//! always `localhost`, `127.0.0.1` and `[::1]`), or is refused with `421 Misdirected
//! Request`: a defence against DNS rebinding. Every response forbids framing
//! (`X-Frame-Options`, CSP `frame-ancestors 'none'`), allows no script nor any other source
//! (`default-src 'none'`, the console's own inline CSS only), and sends no referrer to
//! other sites (`Referrer-Policy: same-origin`).
//!
//! # Layout
//! - `html.rs`: the HTML builder and the one escaping function; `security.rs`: tokens and
//!   CSRF; `timing.rs`: the `Server-Timing` middleware; `health.rs`: health endpoints.
//! - `queries/`: the console's own reads of the store, each served by an index and paged by key
//!   (`sagas.rs`: a saga's tables).
//! - `pages/`: one module per page, loading what it shows and rendering it; `api.rs`: the
//!   same as JSON. `error.rs`: [`ConsoleError`].
//!
//! # Example
//! ```no_run
//! use es_admin::Admin;
//! use es_console::Console;
//! use es_postgres::PgEventStore;
//!
//! # async fn example(store: PgEventStore) -> Result<(), es_console::ConsoleError> {
//! let admin = Admin::new(store.clone());
//! // .projection(ProjectionRunner::new(store.clone(), MyReadModel::new()))
//! let console = Console::new(admin).admin_token("a long random secret")?;
//! // Mount it in the service's own router...
//! let app = axum::Router::new().nest("/console", console.clone().mounted_at("/console").router());
//! # let _ = app;
//! // ...or serve it alone.
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! console.serve(listener, std::future::pending()).await?;
//! # Ok(())
//! # }
//! ```

mod api;
mod error;
mod health;
mod html;
mod pages;
mod queries;
mod security;
mod timing;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use es_admin::Admin;

pub use error::ConsoleError;
pub use health::ReadyBound;
pub use pages::Holder;
pub use pages::event::{EventPage, TraceNode};
pub use pages::log::LogView;
pub use pages::overview::{HorizonView, Overview, ProjectionSummary, SagaSummary};
pub use pages::projections::{ProjectionPage, RebuildProgress};
pub use pages::sagas::SagaPage;
pub use pages::stream::StreamPageView;
pub use pages::streams::StreamsView;
pub use queries::{
    Category, DEFAULT_PAGE, DeadLetterView, Deadline, EventView, MAX_PAGE, OutboxCommand,
    ParkedView, SagaInstance, StoreNumbers, StreamSummary, Upcast, UpcastEvent,
};
pub use security::TOKEN_HEADER;

/// What every handler shares.
pub(crate) struct State {
    pub(crate) admin: Arc<Admin>,
    pub(crate) security: security::Security,
    pub(crate) prefix: String,
    pub(crate) ready: ReadyBound,
    #[cfg(feature = "prometheus")]
    pub(crate) metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

pub(crate) type Shared = Arc<State>;

/// The console of one service: build it over the service's [`Admin`], then take its
/// [`router`](Self::router) or [`serve`](Self::serve) it.
#[derive(Clone)]
pub struct Console {
    admin: Arc<Admin>,
    security: security::Security,
    prefix: String,
    ready: ReadyBound,
    #[cfg(feature = "prometheus")]
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("security", &self.security)
            .field("prefix", &self.prefix)
            .field("ready", &self.ready)
            .finish_non_exhaustive()
    }
}

impl Console {
    /// A read-only console over `admin`, served at the root of its router.
    pub fn new(admin: impl Into<Arc<Admin>>) -> Self {
        Self {
            admin: admin.into(),
            security: security::Security::new(),
            prefix: String::new(),
            ready: ReadyBound::default(),
            #[cfg(feature = "prometheus")]
            metrics: None,
        }
    }

    /// As [`new`](Self::new); it never fails (it did when the CSRF token was random, per
    /// process: it is now derived from the admin token).
    pub fn try_new(admin: impl Into<Arc<Admin>>) -> Result<Self, ConsoleError> {
        Ok(Self::new(admin))
    }

    /// Allows the console's repairs (replay or skip parked events, retry or discard dead
    /// letters) to whoever gives `token` (at least 8 characters).
    pub fn admin_token(self, token: impl Into<String>) -> Result<Self, ConsoleError> {
        Ok(Self {
            security: self.security.with_admin_token(token.into())?,
            ..self
        })
    }

    /// Also answers requests for `hosts` (names or addresses, such as `console.internal` or
    /// `10.0.0.5`; a port, if given, is ignored). The console always answers for `localhost`,
    /// `127.0.0.1` and `[::1]` on any port, and for requests without a `Host` header; a
    /// request naming any other host is refused with `421 Misdirected Request` (a defence
    /// against DNS rebinding: a page whose own name was made to resolve to the console's
    /// address cannot read it from an operator's browser). `/health/*` and `/metrics`
    /// answer for any host, as probes and scrapers name the address they call.
    pub fn allowed_hosts<I, S>(self, hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self {
            security: self.security.with_hosts(hosts),
            ..self
        }
    }

    /// The path the router is nested under in the service's router (such as `/console`), so
    /// the console's links point inside it. Default: the root.
    pub fn mounted_at(self, prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into().trim_end_matches('/').to_owned(),
            ..self
        }
    }

    /// How much lag `/health/ready` tolerates (default: [`ReadyBound::default`]).
    pub fn ready_within(self, bound: ReadyBound) -> Self {
        Self {
            ready: bound,
            ..self
        }
    }

    /// Serves `/metrics` from `handle` (installed with `es_admin::prometheus_recorder`),
    /// after `Admin::observe` sets the registry's gauges. Without it, `/metrics` is 404.
    #[cfg(feature = "prometheus")]
    pub fn metrics(self, handle: metrics_exporter_prometheus::PrometheusHandle) -> Self {
        Self {
            metrics: Some(handle),
            ..self
        }
    }

    /// The console's routes, to mount or serve.
    pub fn router(self) -> Router {
        let state: Shared = Arc::new(State {
            admin: self.admin,
            security: self.security,
            prefix: self.prefix,
            ready: self.ready,
            #[cfg(feature = "prometheus")]
            metrics: self.metrics,
        });
        Router::new()
            .route("/", get(pages::overview::page))
            .route("/streams", get(pages::streams::page))
            .route("/stream", get(pages::stream::page))
            .route("/event/{id}", get(pages::event::page))
            .route("/trace/{correlation_id}", get(pages::event::trace_page))
            .route("/log", get(pages::log::page))
            .route("/projections", get(pages::projections::list_page))
            .route("/projection", get(pages::projections::page))
            .route("/projection/replay", post(pages::projections::replay))
            .route("/projection/skip", post(pages::projections::skip))
            .route("/sagas", get(pages::sagas::list_page))
            .route("/saga", get(pages::sagas::page))
            .route("/saga/retry", post(pages::sagas::retry))
            .route("/saga/discard", post(pages::sagas::discard))
            .route("/api/overview", get(api::overview))
            .route("/api/streams", get(api::streams))
            .route("/api/stream", get(api::stream))
            .route("/api/event/{id}", get(api::event))
            .route("/api/trace/{correlation_id}", get(api::trace))
            .route("/api/log", get(api::log))
            .route("/api/projections", get(api::projections))
            .route("/api/projection", get(api::projection))
            .route("/api/sagas", get(api::sagas))
            .route("/api/saga", get(api::saga))
            .route("/health/live", get(health::live))
            .route("/health/ready", get(health::ready))
            .route("/metrics", get(health::metrics))
            .fallback(not_found)
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                security::guard,
            ))
            .layer(axum::middleware::from_fn(timing::server_timing))
            .with_state(state)
    }

    /// Serves the console on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ConsoleError> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await?;
        Ok(())
    }
}

async fn not_found() -> ConsoleError {
    ConsoleError::NotFound("no such page".to_owned())
}
