//! What a service registered, read back for programs other than the CLI (a web console, a
//! health check): every projection and saga with its status and who holds it, their parked
//! events and dead letters, and the repairs the CLI offers, one at a time.

use es_postgres::{
    DeadLetter, DeadlineStatus, LockHolder, OutboxStatus, ParkedEvent, ProjectionStatus,
    ReplayReport,
};
use uuid::Uuid;

use crate::{Admin, AdminError};

/// One registered projection (or part of one) as it is now.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ProjectionView {
    /// Its checkpoint, lag, parked count and whether a rebuild is unfinished.
    pub status: ProjectionStatus,
    /// The session holding its lock (the instance running it), if any.
    pub holder: Option<LockHolder>,
    /// The session holding the lock of a blue/green build of its next version, if any.
    pub build_holder: Option<LockHolder>,
    /// Whether the service registered a next version to rebuild it blue/green into.
    pub can_blue_green: bool,
}

/// One registered saga as it is now.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SagaView {
    /// Its feed: checkpoint and lag in the events it reacts to.
    pub feed: ProjectionStatus,
    /// Its outbox: commands pending and dead-lettered.
    pub outbox: OutboxStatus,
    /// Its deadlines: waiting, due, failing.
    pub deadlines: DeadlineStatus,
    /// The session holding its lock (the instance running it), if any.
    pub holder: Option<LockHolder>,
}

impl Admin {
    /// The keys of the registered projections (and parts), in registration order.
    pub fn projection_names(&self) -> Vec<&str> {
        self.projections.iter().map(|p| p.name()).collect()
    }

    /// The names of the registered sagas, in registration order.
    pub fn saga_names(&self) -> Vec<&str> {
        self.sagas.iter().map(|s| s.name()).collect()
    }

    /// The service's event types and upcasters, when it registered them with
    /// [`events`](Self::events).
    pub fn catalogue(&self) -> Option<&es_core::EventCatalogue> {
        self.catalogue.as_ref()
    }

    /// Every registered projection as it is now, in registration order.
    pub async fn projection_views(&self) -> Result<Vec<ProjectionView>, AdminError> {
        let mut views = Vec::with_capacity(self.projections.len());
        for projection in &self.projections {
            views.push(ProjectionView {
                status: projection.status().await?,
                holder: projection.holder().await?,
                build_holder: if projection.can_blue_green() {
                    projection.build_holder().await?
                } else {
                    None
                },
                can_blue_green: projection.can_blue_green(),
            });
        }
        Ok(views)
    }

    /// Every registered saga as it is now, in registration order.
    pub async fn saga_views(&self) -> Result<Vec<SagaView>, AdminError> {
        let mut views = Vec::with_capacity(self.sagas.len());
        for saga in &self.sagas {
            let status = saga.status().await?;
            views.push(SagaView {
                feed: status.feed,
                outbox: status.outbox,
                deadlines: status.deadlines,
                holder: saga.holder().await?,
            });
        }
        Ok(views)
    }

    /// The events the projection `name` parked, oldest position first.
    pub async fn parked_events(&self, name: &str) -> Result<Vec<ParkedEvent>, AdminError> {
        Ok(self.find_projection(name)?.parked().await?)
    }

    /// Applies the parked events of the projection `name` again (as `replay` does).
    pub async fn replay_parked(&self, name: &str) -> Result<ReplayReport, AdminError> {
        Ok(self.find_projection(name)?.replay().await?)
    }

    /// Gives up on one parked event of the projection `name`: removes it without applying
    /// it. `Ok(false)` when it was not parked (any more).
    pub async fn skip_parked(&self, name: &str, event_id: Uuid) -> Result<bool, AdminError> {
        Ok(self.find_projection(name)?.skip(event_id).await?)
    }

    /// The dead-lettered commands of the saga `name`.
    pub async fn saga_dead_letters(&self, name: &str) -> Result<Vec<DeadLetter>, AdminError> {
        Ok(self.find_saga(name)?.dead_letters().await?)
    }

    /// Puts dead-lettered commands of the saga `name` back in its outbox; how many were.
    pub async fn retry_dead_letters(&self, name: &str, ids: &[Uuid]) -> Result<u64, AdminError> {
        Ok(self.find_saga(name)?.retry(ids).await?)
    }

    /// Drops dead-lettered commands of the saga `name` for good; how many were.
    pub async fn discard_dead_letters(&self, name: &str, ids: &[Uuid]) -> Result<u64, AdminError> {
        Ok(self.find_saga(name)?.discard(ids).await?)
    }
}
