//! Whether a projection can read every event type stored in the categories it reads: the
//! start-up check that catches a type renamed without an upcaster, or a schema version the
//! code cannot read, before any event is passed over or parked.

use std::collections::HashSet;

use es_core::current_version;

use super::runner::ProjectionRunner;
use super::{PgProjection, ProjectionError};
use crate::StoredType;

/// A stored event type a projection cannot read, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UnreadableType {
    /// The type as stored, with its category, schema version and count.
    pub stored: StoredType,
    /// Why the projection cannot read it.
    pub reason: String,
}

impl UnreadableType {
    pub(crate) fn new(stored: StoredType, reason: String) -> Self {
        Self { stored, reason }
    }
}

impl std::fmt::Display for UnreadableType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} v{} in category {} ({} event(s)): {}",
            self.stored.event_type,
            self.stored.schema_version,
            self.stored.category,
            self.stored.events,
            self.reason
        )
    }
}

impl<P: PgProjection> ProjectionRunner<P> {
    /// The stored event types this projection cannot read, in the categories it reads (see
    /// [`PgEventStore::stored_types`](crate::PgEventStore::stored_types)):
    ///
    /// - a type neither its events nor an upcaster know, in a category where it reads other
    ///   types, unless [`PgProjection::ignores`] it: what a type renamed without an upcaster
    ///   looks like, and what the runner would pass over;
    /// - a schema version newer than its code's (written by a newer release);
    /// - an older schema version no upcaster lifts.
    ///
    /// Run it at start-up to refuse a registry that would lose events in silence
    /// ([`check_stored_types`](Self::check_stored_types)); `es-admin run` does.
    pub async fn unreadable_types(&self) -> Result<Vec<UnreadableType>, ProjectionError> {
        self.unreadable(true).await
    }

    /// With `unknown_types` false, only the version rules: for saga feeds, whose event types
    /// are by design the few they react to.
    pub(crate) async fn unreadable(
        &self,
        unknown_types: bool,
    ) -> Result<Vec<UnreadableType>, ProjectionError> {
        let stored = self
            .store
            .stored_types()
            .await
            .map_err(|e| self.store_error(e))?;
        // The store's own types (a deleted stream's tombstone) are passed over unless taken.
        let wanted: Vec<&StoredType> = stored
            .iter()
            .filter(|t| self.projection.wants_category(&t.category))
            .filter(|t| {
                !es_core::is_store_type(&t.event_type)
                    || current_version::<P::Event>(&t.event_type).is_some()
            })
            .collect();
        // Categories it reads: where a type of its own enum is stored (an application-wide
        // registry's upcasters lift types of every category, so they do not say which).
        let read: HashSet<&str> = wanted
            .iter()
            .filter(|t| current_version::<P::Event>(&t.event_type).is_some())
            .map(|t| t.category.as_str())
            .collect();
        let mut unreadable = Vec::new();
        for stored in wanted {
            let reason = match current_version::<P::Event>(&stored.event_type) {
                // Lifted into something (a renamed or split type): the upcasters' own
                // start-up validation covers their chains.
                None if self.upcasters.lifts(&stored.event_type) => None,
                None if unknown_types
                    && read.contains(stored.category.as_str())
                    && !self.projection.ignores(&stored.event_type) =>
                {
                    Some(
                        "no event of the projection has this name and no upcaster lifts it \
                         (renamed without an upcaster? else list it in PgProjection::ignores)"
                            .to_owned(),
                    )
                }
                None => None,
                Some(current) if stored.schema_version > current => Some(format!(
                    "stored at a newer schema version than this code's ({current}): written \
                     by a newer release"
                )),
                Some(current) => (stored.schema_version..current)
                    .find(|from| !self.upcasters.lifts_from(&stored.event_type, *from))
                    .map(|missing| {
                        format!("no upcaster lifts version {missing} (current: {current})")
                    }),
            };
            if let Some(reason) = reason {
                unreadable.push(UnreadableType {
                    stored: stored.clone(),
                    reason,
                });
            }
        }
        Ok(unreadable)
    }

    /// [`unreadable_types`](Self::unreadable_types) as a refusal:
    /// [`ProjectionError::UnreadableTypes`] naming each type when there is any.
    pub async fn check_stored_types(&self) -> Result<(), ProjectionError> {
        let types = self.unreadable_types().await?;
        if types.is_empty() {
            return Ok(());
        }
        Err(ProjectionError::UnreadableTypes {
            projection: self.key().to_owned(),
            types,
        })
    }
}
