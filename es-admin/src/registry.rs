//! What a service registers with the CLI: its projection runners and saga runners, behind
//! object-safe traits so the commands treat them alike whatever their event types.

use std::sync::Arc;

use async_trait::async_trait;
use es_core::{CommandDispatcher, Saga};
use es_postgres::{
    DeadLetter, DeadlineStatus, ErrorPolicy, LockHolder, OutboxStatus, ParkedEvent, PgEventStore,
    PgProjection, PgSagaRunner, Progress, ProjectionError, ProjectionRunner, ProjectionStatus,
    ReplayReport, SchemaName,
};
use tokio::sync::watch;
use uuid::Uuid;

/// How to rebuild a projection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rebuild {
    /// In place, resuming an interrupted rebuild.
    InPlace,
    /// In place, from the start whatever an interrupted rebuild did.
    FromScratch,
    /// Built beside the live version, then swapped in.
    BlueGreen,
}

/// A registered projection runner.
#[async_trait]
pub(crate) trait ManagedProjection: Send + Sync {
    fn name(&self) -> &str;
    async fn status(&self) -> Result<ProjectionStatus, ProjectionError>;
    async fn observe(&self) -> Result<ProjectionStatus, ProjectionError>;
    async fn holder(&self) -> Result<Option<LockHolder>, ProjectionError>;
    fn can_blue_green(&self) -> bool;
    async fn build_holder(&self) -> Result<Option<LockHolder>, ProjectionError>;
    /// Pool connections it may use at once while running.
    fn pool_demand(&self) -> u32 {
        1
    }
    /// `Ok(None)`: another instance holds the projection.
    async fn rebuild(
        &self,
        how: Rebuild,
        policy: ErrorPolicy,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<Option<u64>, ProjectionError>;
    async fn parked(&self) -> Result<Vec<ParkedEvent>, ProjectionError>;
    async fn replay(&self) -> Result<ReplayReport, ProjectionError>;
    async fn skip(&self, event_id: Uuid) -> Result<bool, ProjectionError>;
    async fn run(&self, stop: watch::Receiver<bool>) -> Result<(), ProjectionError>;
    async fn check_stored_types(&self) -> Result<(), ProjectionError>;
}

/// Builds an instance of a projection writing into the given schema.
type BuildIn<P> = Box<dyn Fn(&SchemaName) -> P + Send + Sync>;

/// A projection runner, and how to build its next version for a blue/green rebuild.
pub(crate) struct Projection<P> {
    pub(crate) runner: ProjectionRunner<P>,
    pub(crate) next: Option<(BuildIn<P>, SchemaName)>,
}

#[async_trait]
impl<P: PgProjection> ManagedProjection for Projection<P> {
    fn name(&self) -> &str {
        self.runner.key()
    }
    async fn status(&self) -> Result<ProjectionStatus, ProjectionError> {
        self.runner.status().await
    }
    async fn observe(&self) -> Result<ProjectionStatus, ProjectionError> {
        self.runner.observe().await
    }
    async fn holder(&self) -> Result<Option<LockHolder>, ProjectionError> {
        self.runner.holder().await
    }
    fn can_blue_green(&self) -> bool {
        self.next.is_some()
    }
    async fn build_holder(&self) -> Result<Option<LockHolder>, ProjectionError> {
        self.runner.blue_green_holder().await
    }
    async fn rebuild(
        &self,
        how: Rebuild,
        policy: ErrorPolicy,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<Option<u64>, ProjectionError> {
        match how {
            Rebuild::InPlace => self.runner.try_rebuild(policy, progress).await,
            Rebuild::FromScratch => self.runner.try_rebuild_from_scratch(policy, progress).await,
            Rebuild::BlueGreen => {
                let Some((build, schema)) = &self.next else {
                    return Err(ProjectionError::BlueGreen {
                        projection: self.name().to_owned(),
                        reason: "the service registered no next version for it".to_owned(),
                    });
                };
                self.runner
                    .try_rebuild_blue_green(build(schema), policy, progress)
                    .await
            }
        }
    }
    async fn parked(&self) -> Result<Vec<ParkedEvent>, ProjectionError> {
        self.runner.parked().await
    }
    async fn replay(&self) -> Result<ReplayReport, ProjectionError> {
        self.runner.replay_parked().await
    }
    async fn skip(&self, event_id: Uuid) -> Result<bool, ProjectionError> {
        self.runner.skip_parked(event_id).await
    }
    async fn check_stored_types(&self) -> Result<(), ProjectionError> {
        self.runner.check_stored_types().await
    }
    async fn run(&self, mut stop: watch::Receiver<bool>) -> Result<(), ProjectionError> {
        self.runner
            .run(async move {
                let _ = stop.wait_for(|stop| *stop).await;
            })
            .await
    }
}

/// What the CLI reports of a saga.
pub(crate) struct SagaStatus {
    pub(crate) feed: ProjectionStatus,
    pub(crate) outbox: OutboxStatus,
    pub(crate) deadlines: DeadlineStatus,
}

/// A registered saga runner.
#[async_trait]
pub(crate) trait ManagedSaga: Send + Sync {
    fn name(&self) -> &str;
    async fn status(&self) -> Result<SagaStatus, ProjectionError>;
    async fn observe(&self) -> Result<(), ProjectionError>;
    async fn holder(&self) -> Result<Option<LockHolder>, ProjectionError>;
    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, ProjectionError>;
    async fn retry(&self, ids: &[Uuid]) -> Result<u64, ProjectionError>;
    async fn discard(&self, ids: &[Uuid]) -> Result<u64, ProjectionError>;
    async fn run(&self, stop: watch::Receiver<bool>) -> Result<(), ProjectionError>;
    /// Pool connections it may use at once while running.
    fn pool_demand(&self) -> u32;
    async fn check_stored_types(&self) -> Result<(), ProjectionError>;
}

#[async_trait]
impl<S: Saga, D: CommandDispatcher<S::Command> + 'static> ManagedSaga for PgSagaRunner<S, D> {
    fn name(&self) -> &str {
        self.feed().key()
    }
    fn pool_demand(&self) -> u32 {
        PgSagaRunner::pool_demand(self)
    }
    async fn status(&self) -> Result<SagaStatus, ProjectionError> {
        Ok(SagaStatus {
            feed: self.feed().status().await?,
            outbox: self.outbox_status().await?,
            deadlines: self.deadline_status().await?,
        })
    }
    async fn observe(&self) -> Result<(), ProjectionError> {
        PgSagaRunner::observe(self).await.map(|_| ())
    }
    async fn holder(&self) -> Result<Option<LockHolder>, ProjectionError> {
        self.feed().holder().await
    }
    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, ProjectionError> {
        PgSagaRunner::dead_letters(self).await
    }
    async fn retry(&self, ids: &[Uuid]) -> Result<u64, ProjectionError> {
        self.retry_dead_letters(ids).await
    }
    async fn discard(&self, ids: &[Uuid]) -> Result<u64, ProjectionError> {
        self.discard_dead_letters(ids).await
    }
    async fn check_stored_types(&self) -> Result<(), ProjectionError> {
        PgSagaRunner::check_stored_types(self).await
    }
    async fn run(&self, mut stop: watch::Receiver<bool>) -> Result<(), ProjectionError> {
        PgSagaRunner::run(self, async move {
            let _ = stop.wait_for(|stop| *stop).await;
        })
        .await
    }
}

/// The CLI of one service: its store, and the projections and sagas it registered.
///
/// ```no_run
/// # use es_admin::{Admin, AdminCommand, Database};
/// # async fn example(database: Database, command: AdminCommand) {
/// let store = database.connect().await.expect("the store");
/// let admin = Admin::new(store);
///     // .projection(ProjectionRunner::new(store.clone(), MyReadModel::new()))
///     // .saga(PgSagaRunner::new(store.clone(), MySaga, my_dispatcher))
/// let exit = admin.run_command(command).await;
/// # let _ = exit;
/// # }
/// ```
pub struct Admin {
    pub(crate) store: PgEventStore,
    pub(crate) projections: Vec<Arc<dyn ManagedProjection>>,
    pub(crate) sagas: Vec<Arc<dyn ManagedSaga>>,
    pub(crate) catalogue: Option<es_core::EventCatalogue>,
}

impl Admin {
    /// The CLI over `store` (from [`Database::connect`](crate::Database::connect)), with nothing
    /// registered yet.
    pub fn new(store: PgEventStore) -> Self {
        Self {
            store,
            projections: Vec::new(),
            sagas: Vec::new(),
            catalogue: None,
        }
    }

    /// Registers the service's event types and upcasters: what `schema check` compares the
    /// stored types with, and what `schema export` prints.
    pub fn events(mut self, catalogue: es_core::EventCatalogue) -> Self {
        self.catalogue = Some(catalogue);
        self
    }

    /// Registers a projection, under its runner's key (the projection's name, or
    /// `name#i/n` for a part).
    pub fn projection<P: PgProjection>(mut self, runner: ProjectionRunner<P>) -> Self {
        self.projections
            .push(Arc::new(Projection { runner, next: None }));
        self
    }

    /// Registers a projection that can be rebuilt blue/green: `next` builds an instance of it
    /// writing into another schema, `next_schema`, where its next version is built before the
    /// swap.
    pub fn projection_with_next<P: PgProjection>(
        mut self,
        runner: ProjectionRunner<P>,
        next: impl Fn(&SchemaName) -> P + Send + Sync + 'static,
        next_schema: SchemaName,
    ) -> Self {
        self.projections.push(Arc::new(Projection {
            runner,
            next: Some((Box::new(next), next_schema)),
        }));
        self
    }

    /// Registers a saga runner (its feed, dispatcher and deadlines).
    pub fn saga<S: Saga, D: CommandDispatcher<S::Command> + 'static>(
        mut self,
        runner: PgSagaRunner<S, D>,
    ) -> Self {
        self.sagas.push(Arc::new(runner));
        self
    }

    /// The store the CLI works on.
    pub fn store(&self) -> &PgEventStore {
        &self.store
    }

    pub(crate) fn find_projection(
        &self,
        name: &str,
    ) -> Result<Arc<dyn ManagedProjection>, crate::AdminError> {
        self.projections
            .iter()
            .find(|p| p.name() == name)
            .cloned()
            .ok_or_else(|| crate::AdminError::Unknown {
                kind: "projection",
                name: name.to_owned(),
                known: names(self.projections.iter().map(|p| p.name())),
            })
    }

    pub(crate) fn find_saga(&self, name: &str) -> Result<Arc<dyn ManagedSaga>, crate::AdminError> {
        self.sagas
            .iter()
            .find(|s| s.name() == name)
            .cloned()
            .ok_or_else(|| crate::AdminError::Unknown {
                kind: "saga",
                name: name.to_owned(),
                known: names(self.sagas.iter().map(|s| s.name())),
            })
    }
}

fn names<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}
