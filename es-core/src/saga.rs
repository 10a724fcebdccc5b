//! Sagas (process managers): coordinate work across aggregates by reacting to events with
//! commands, keeping state per instance, and compensating when a step fails.
//!
//! A [`Saga`] is pure: given its state and an event, it updates the state and returns the
//! commands to issue. A runner feeds it the global log and hands the commands to a
//! [`CommandDispatcher`]. Each command gets an id derived from the event that caused it and its
//! index ([`issue`]), and runs as an idempotent command ([`CommandContext::idempotent`]): a
//! redelivered event (after a crash, a retry) issues the same command ids, and a command that
//! already ran does nothing. Its events carry the causing event's correlation id, so a whole
//! workflow can be traced from its first command.
//!
//! [`SagaRunner`] keeps its state in memory, for tests and the quickstart; the PostgreSQL runner
//! in `es-postgres` keeps state, outbox and checkpoint durable.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{
    BoxError, CommandContext, DomainEvent, Envelope, EventStore, Position, Upcasters,
    current_version, derived_event_id,
};

/// A process manager: per instance (one transfer, one order...), a state and a reaction to each
/// event of interest.
pub trait Saga: Send + Sync + 'static {
    /// The events it reacts to (an enum over several aggregates' events is usual).
    type Event: DomainEvent;
    /// The state of one instance.
    type State: Default + Serialize + DeserializeOwned + Send + Sync;
    /// The commands it issues.
    type Command: Serialize + DeserializeOwned + Send + Sync + std::fmt::Debug;

    /// A unique name: the key of its state, checkpoint and pending commands.
    fn name(&self) -> &str;

    /// The instance `event` belongs to, or `None` when the saga ignores it.
    fn instance_of(&self, event: &Envelope<Self::Event>) -> Option<String>;

    /// Updates the instance's state for `event` and returns the commands to issue, in order.
    /// Must be deterministic: a redelivered event must issue the same commands.
    fn react(&self, state: &mut Self::State, event: &Envelope<Self::Event>) -> Vec<Self::Command>;
}

/// Executes a saga's commands, usually by calling the command handlers of their aggregates
/// with the given context (which makes them idempotent and carries the correlation).
///
/// A command the domain refuses is an outcome, not a failure: record it as an event (for
/// example a `TransferFailed` on the saga's own aggregate) so the saga reacts and compensates,
/// and return `Ok`. Return `Err` only for failures worth retrying (the store is down): the
/// runner keeps the command and delivers it again.
#[async_trait]
pub trait CommandDispatcher<C>: Send + Sync {
    /// Executes `command`.
    async fn dispatch(&self, command: C, context: CommandContext) -> Result<(), BoxError>;
}

/// A command a saga issued, with the context it must run in.
#[derive(Clone, Debug)]
pub struct Issued<C> {
    /// The command.
    pub command: C,
    /// Its idempotency id, correlation and causation.
    pub context: CommandContext,
}

/// Runs `saga`'s reaction to `event` and gives each command its context: command id derived
/// from the event id and the command's index, idempotent, correlated with the event, caused by
/// it.
pub fn issue<S: Saga>(
    saga: &S,
    state: &mut S::State,
    event: &Envelope<S::Event>,
) -> Vec<Issued<S::Command>> {
    saga.react(state, event)
        .into_iter()
        .enumerate()
        .map(|(index, command)| Issued {
            command,
            context: CommandContext::new()
                .idempotent(derived_event_id(event.event_id, index as u32))
                .correlated_with(event.correlation_id)
                .caused_by(event.event_id),
        })
        .collect()
}

/// Runs a saga over any [`EventStore`], keeping instance states and its checkpoint in memory:
/// for unit tests and the in-memory quickstart. Commands are dispatched as soon as an event
/// issues them; a failed dispatch stops the round, and the next round redelivers the event.
pub struct SagaRunner<S: Saga, D> {
    store: Arc<dyn EventStore>,
    saga: S,
    dispatcher: D,
    upcasters: Arc<Upcasters>,
    progress: Mutex<Progress<S::State>>,
}

struct Progress<T> {
    checkpoint: Position,
    states: HashMap<String, T>,
}

impl<S: Saga, D: CommandDispatcher<S::Command>> SagaRunner<S, D> {
    /// A runner of `saga` over `store`, from the start of the log.
    pub fn new(store: Arc<dyn EventStore>, saga: S, dispatcher: D) -> Self {
        Self {
            store,
            saga,
            dispatcher,
            upcasters: Arc::new(Upcasters::new()),
            progress: Mutex::new(Progress {
                checkpoint: Position::START,
                states: HashMap::new(),
            }),
        }
    }

    /// Lifts old events through `upcasters` before the saga sees them.
    pub fn with_upcasters(mut self, upcasters: Arc<Upcasters>) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// Reacts to every event readable now, including those its own commands append, until
    /// none is left; returns how many events it read.
    pub async fn catch_up(&self) -> Result<u64, BoxError> {
        let mut read = 0;
        loop {
            let after = self.lock().checkpoint;
            let batch = self.store.read_all(after, 500).await?;
            if batch.is_empty() {
                return Ok(read);
            }
            for recorded in batch {
                let position = recorded.position;
                if current_version::<S::Event>(&recorded.event_type).is_some()
                    || self.upcasters.lifts(&recorded.event_type)
                {
                    let mut events = Vec::with_capacity(1);
                    self.upcasters
                        .select_ref_into::<S::Event>(&recorded, &mut events)?;
                    for event in events {
                        self.handle(&event).await?;
                    }
                }
                self.lock().checkpoint = position;
                read += 1;
            }
        }
    }

    async fn handle(&self, event: &Envelope<S::Event>) -> Result<(), BoxError> {
        let Some(instance) = self.saga.instance_of(event) else {
            return Ok(());
        };
        // React on a copy: the state changes only once every command is dispatched, so a
        // failed round redelivers the event to the state it first saw.
        let (mut state, issued) = {
            let progress = self.lock();
            let mut state = match progress.states.get(&instance) {
                Some(state) => clone_state::<S>(state)?,
                None => S::State::default(),
            };
            let issued = issue(&self.saga, &mut state, event);
            (state, issued)
        };
        for Issued { command, context } in issued {
            self.dispatcher.dispatch(command, context).await?;
        }
        std::mem::swap(self.lock().states.entry(instance).or_default(), &mut state);
        Ok(())
    }

    /// The state of `instance`, if the saga has seen it.
    pub fn state(&self, instance: &str) -> Option<S::State> {
        let progress = self.lock();
        progress
            .states
            .get(instance)
            .and_then(|state| clone_state::<S>(state).ok())
    }

    /// The saga.
    pub fn saga(&self) -> &S {
        &self.saga
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Progress<S::State>> {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// States are only required to serialize (that is how durable runners keep them), so a copy
/// goes through JSON.
fn clone_state<S: Saga>(state: &S::State) -> Result<S::State, BoxError> {
    Ok(serde_json::from_value(serde_json::to_value(state)?)?)
}
