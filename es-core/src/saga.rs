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
//! A saga that must not wait forever lists [`Deadline`]s for an instance, derived from its state
//! ([`Saga::deadlines`]); when one passes while still listed, the runner calls
//! [`Saga::on_deadline`], whose commands get the same treatment as those of `react`.
//!
//! [`SagaRunner`] keeps its state in memory, for tests and the quickstart; the PostgreSQL runner
//! in `es-postgres` keeps state, outbox, deadlines and checkpoint durable.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::{BoxError, CommandContext, DomainEvent, Envelope, EventStore, Position, Upcasters};

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

    /// The deadlines an instance in `state` waits on; none by default. After every reaction the
    /// runner keeps exactly these scheduled: new names are added, a changed due time replaces
    /// the old one, names no longer listed are cancelled.
    ///
    /// Derive due times from the state (for example from an event's `recorded_at` kept there),
    /// never from the clock: the list must be the same each time it is asked for.
    fn deadlines(&self, state: &Self::State) -> Vec<Deadline> {
        let _ = state;
        Vec::new()
    }

    /// Reacts to `deadline` passing while `instance` still listed it: updates the state and
    /// returns the commands to issue, as `react` does. A deadline fires once; one still listed
    /// afterwards with the same due time does not fire again.
    fn on_deadline(
        &self,
        instance: &str,
        state: &mut Self::State,
        deadline: &Deadline,
    ) -> Vec<Self::Command> {
        let _ = (instance, state, deadline);
        Vec::new()
    }
}

/// A named point in time at which a saga instance wants to act if nothing else happened first
/// (a payment that never came, a reply that timed out).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deadline {
    name: String,
    due: DateTime<Utc>,
}

impl Deadline {
    /// The deadline `name` of an instance, due at `due` (kept to the microsecond, the precision
    /// stores keep).
    pub fn new(name: impl Into<String>, due: DateTime<Utc>) -> Self {
        Self {
            name: name.into(),
            due: due.trunc_subsecs(6),
        }
    }

    /// Its name, unique within the instance.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// When it falls due.
    pub fn due(&self) -> DateTime<Utc> {
        self.due
    }
}

/// A deadline as a runner keeps it: what fires it and what its commands carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduledDeadline {
    /// The instance it belongs to.
    pub instance: String,
    /// The deadline.
    pub deadline: Deadline,
    /// The id its commands derive theirs from: derived from the event (or deadline) whose
    /// reaction scheduled it, so a redelivery schedules the same one.
    pub fire_id: Uuid,
    /// The correlation id of the event that scheduled it.
    pub correlation_id: Uuid,
    /// The event that scheduled it: the cause of its commands.
    pub causation_id: Uuid,
}

/// What a saga reaction answered: an event, or a deadline that passed. The commands and
/// deadlines the reaction produces derive their ids from it and carry its correlation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cause {
    /// The id the produced ids derive from: the event's id, or the deadline's fire id.
    pub id: Uuid,
    /// Which of the events an upcaster split the stored event into (see
    /// [`Envelope::split_index`]); 0 for a deadline.
    pub split_index: u32,
    /// The correlation id the produced commands carry.
    pub correlation_id: Uuid,
    /// The cause the produced commands name.
    pub causation_id: Uuid,
}

impl Cause {
    /// A reaction to `event`: it is the cause of what the reaction issues.
    pub fn event<E>(event: &Envelope<E>) -> Self {
        Self {
            id: event.event_id,
            split_index: event.split_index,
            correlation_id: event.correlation_id,
            causation_id: event.event_id,
        }
    }

    /// A reaction to `deadline` passing: what it issues descends from the deadline's fire id
    /// and names the event that scheduled it as its cause.
    pub fn deadline(deadline: &ScheduledDeadline) -> Self {
        Self {
            id: deadline.fire_id,
            split_index: 0,
            correlation_id: deadline.correlation_id,
            causation_id: deadline.causation_id,
        }
    }
}

/// What a derived id is for: the two kinds never share an id.
#[derive(Clone, Copy)]
enum Derived {
    Command = 1,
    Deadline = 2,
}

/// The namespace of every id sagas derive (a fixed, random UUID).
const SAGA_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2a5e_93d4_4b0e_8a7f_d25c_41e9_b803);

/// The id of the `index`-th command (or deadline) `saga` produces in its reaction to `cause`: a
/// name-based UUID (version 5) of the saga's name, the cause's id and split index, the kind
/// and the index. Stable across releases and processes, so a redelivered cause produces the
/// same ids; distinct across sagas reacting to one event and across the events an upcaster
/// split one stored event into.
pub fn saga_command_id(saga: &str, cause: &Cause, index: u32) -> Uuid {
    derive_saga_id(saga, cause, Derived::Command, index)
}

fn derive_saga_id(saga: &str, cause: &Cause, kind: Derived, index: u32) -> Uuid {
    let mut name = Vec::with_capacity(saga.len() + 32);
    // Length-prefixed, so no saga name is a prefix of another's input.
    name.extend_from_slice(&(saga.len() as u64).to_be_bytes());
    name.extend_from_slice(saga.as_bytes());
    name.extend_from_slice(cause.id.as_bytes());
    name.extend_from_slice(&cause.split_index.to_be_bytes());
    name.push(kind as u8);
    name.extend_from_slice(&index.to_be_bytes());
    Uuid::new_v5(&SAGA_ID_NAMESPACE, &name)
}

/// A saga listed two deadlines of one name for one instance: which one it means is unknowable,
/// so the reaction is refused (both runners treat it as a failure of the event).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "saga {saga} lists deadline {name:?} twice for instance {instance}; deadline names must be unique per instance"
)]
pub struct DuplicateDeadline {
    /// The saga.
    pub saga: String,
    /// The instance.
    pub instance: String,
    /// The name listed twice.
    pub name: String,
}

/// The deadlines to keep for `instance` after a reaction to `cause` took its state from one
/// listing `before` to `state`: `None` when the list did not change (what is kept stays as it
/// is, fired marks included), otherwise every deadline now listed, for the runner to keep
/// exactly these (unchanged ones keep their fire id). Refused when the list names one deadline
/// twice.
pub fn rescheduled_deadlines<S: Saga>(
    saga: &S,
    instance: &str,
    before: &[Deadline],
    state: &S::State,
    cause: Cause,
) -> Result<Option<Vec<ScheduledDeadline>>, DuplicateDeadline> {
    let now = saga.deadlines(state);
    if now == before {
        return Ok(None);
    }
    let mut names = std::collections::HashSet::with_capacity(now.len());
    if let Some(twice) = now.iter().find(|d| !names.insert(d.name())) {
        return Err(DuplicateDeadline {
            saga: saga.name().to_owned(),
            instance: instance.to_owned(),
            name: twice.name().to_owned(),
        });
    }
    Ok(Some(
        now.into_iter()
            .enumerate()
            .map(|(index, deadline)| ScheduledDeadline {
                instance: instance.to_owned(),
                deadline,
                fire_id: derive_saga_id(saga.name(), &cause, Derived::Deadline, index as u32),
                correlation_id: cause.correlation_id,
                causation_id: cause.causation_id,
            })
            .collect(),
    ))
}

/// Runs `saga`'s reaction to the passing of `scheduled` and gives each command its context: id
/// derived from the deadline's fire id, idempotent, with the correlation and cause of the event
/// that scheduled it.
pub fn issue_on_deadline<S: Saga>(
    saga: &S,
    state: &mut S::State,
    scheduled: &ScheduledDeadline,
) -> Vec<Issued<S::Command>> {
    with_contexts(
        saga.name(),
        saga.on_deadline(&scheduled.instance, state, &scheduled.deadline),
        Cause::deadline(scheduled),
    )
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
/// from the saga, the event and the command's index ([`saga_command_id`]), idempotent,
/// correlated with the event, caused by it.
pub fn issue<S: Saga>(
    saga: &S,
    state: &mut S::State,
    event: &Envelope<S::Event>,
) -> Vec<Issued<S::Command>> {
    with_contexts(saga.name(), saga.react(state, event), Cause::event(event))
}

fn with_contexts<C>(saga: &str, commands: Vec<C>, cause: Cause) -> Vec<Issued<C>> {
    commands
        .into_iter()
        .enumerate()
        .map(|(index, command)| Issued {
            command,
            context: CommandContext::new()
                .idempotent(saga_command_id(saga, &cause, index as u32))
                .correlated_with(cause.correlation_id)
                .caused_by(cause.causation_id),
        })
        .collect()
}

/// Runs a saga over any [`EventStore`], keeping instance states, deadlines and its checkpoint in
/// memory: for unit tests and the in-memory quickstart. Commands are dispatched as soon as an
/// event issues them; a failed dispatch stops the round, and the next round redelivers the
/// event. Deadlines fire when [`fire_deadlines`](Self::fire_deadlines) is called with a time
/// past them, so tests choose the clock.
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
    /// Per instance, the deadlines it waits on and whether each has fired.
    deadlines: HashMap<String, Vec<(ScheduledDeadline, bool)>>,
}

/// Keeps exactly `wanted` for the instance: unchanged ones (same name and due time) keep
/// their fire id and fired mark, changed and new ones are scheduled afresh.
fn reconcile(kept: &mut Vec<(ScheduledDeadline, bool)>, wanted: Vec<ScheduledDeadline>) {
    let mut next = Vec::with_capacity(wanted.len());
    for scheduled in wanted {
        match kept
            .iter()
            .position(|(k, _)| k.deadline == scheduled.deadline)
        {
            Some(i) => next.push(kept.swap_remove(i)),
            None => next.push((scheduled, false)),
        }
    }
    *kept = next;
}

impl<S: Saga, D: CommandDispatcher<S::Command>> SagaRunner<S, D> {
    /// A runner of `saga` over `store`, from the start of the log.
    pub fn new(store: Arc<dyn EventStore>, saga: S, dispatcher: D) -> Self {
        Self {
            upcasters: store.upcasters(),
            store,
            saga,
            dispatcher,
            progress: Mutex::new(Progress {
                checkpoint: Position::START,
                states: HashMap::new(),
                deadlines: HashMap::new(),
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
                let mut events = Vec::with_capacity(1);
                self.upcasters
                    .select_ref_into::<S::Event>(&recorded, &mut events)?;
                for event in events {
                    self.handle(&event).await?;
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
        self.step(&instance, Cause::event(event), None, |state, _| {
            issue(&self.saga, state, event)
        })
        .await
    }

    /// Fires every deadline due at or before `now` that has not fired: runs
    /// [`Saga::on_deadline`] and dispatches its commands. Returns how many fired; a failed
    /// dispatch stops the round, and the deadline fires again at the next call.
    pub async fn fire_deadlines(&self, now: DateTime<Utc>) -> Result<u64, BoxError> {
        let due: Vec<ScheduledDeadline> = self
            .lock()
            .deadlines
            .values()
            .flatten()
            .filter(|(s, fired)| !fired && s.deadline.due() <= now)
            .map(|(s, _)| s.clone())
            .collect();
        let mut fired = 0;
        for scheduled in due {
            let cause = Cause::deadline(&scheduled);
            // Fired only if the instance still lists it: the saga may have moved on.
            self.step(
                &scheduled.instance,
                cause,
                Some(&scheduled),
                |state, listed| {
                    if listed.contains(&scheduled.deadline) {
                        issue_on_deadline(&self.saga, state, &scheduled)
                    } else {
                        Vec::new()
                    }
                },
            )
            .await?;
            fired += 1;
        }
        Ok(fired)
    }

    /// Runs `react` on a copy of `instance`'s state (and the deadlines it listed) and
    /// dispatches what it issues; only then keeps the new state and deadlines (and marks
    /// `firing` fired), so a failed round delivers the same input again to the state it first
    /// saw.
    async fn step(
        &self,
        instance: &str,
        cause: Cause,
        firing: Option<&ScheduledDeadline>,
        react: impl FnOnce(&mut S::State, &[Deadline]) -> Vec<Issued<S::Command>>,
    ) -> Result<(), BoxError> {
        let (mut state, rescheduled, issued) = {
            let progress = self.lock();
            let mut state = match progress.states.get(instance) {
                Some(state) => clone_state::<S>(state)?,
                None => S::State::default(),
            };
            let before = self.saga.deadlines(&state);
            let issued = react(&mut state, &before);
            let rescheduled = rescheduled_deadlines(&self.saga, instance, &before, &state, cause)?;
            (state, rescheduled, issued)
        };
        for Issued { command, context } in issued {
            self.dispatcher.dispatch(command, context).await?;
        }
        let mut progress = self.lock();
        let kept = progress.deadlines.entry(instance.to_owned()).or_default();
        if let Some(entry) = kept.iter_mut().find(|(k, _)| Some(k) == firing) {
            entry.1 = true;
        }
        if let Some(wanted) = rescheduled {
            reconcile(kept, wanted);
        }
        std::mem::swap(
            progress.states.entry(instance.to_owned()).or_default(),
            &mut state,
        );
        Ok(())
    }

    /// The deadlines `instance` waits on that have not fired yet.
    pub fn deadlines(&self, instance: &str) -> Vec<Deadline> {
        self.lock()
            .deadlines
            .get(instance)
            .into_iter()
            .flatten()
            .filter(|(_, fired)| !fired)
            .map(|(s, _)| s.deadline.clone())
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scheduled(name: &str, minute: i64, fire: u128) -> ScheduledDeadline {
        ScheduledDeadline {
            instance: "i".into(),
            deadline: Deadline::new(
                name,
                DateTime::UNIX_EPOCH + chrono::Duration::minutes(minute),
            ),
            fire_id: Uuid::from_u128(fire),
            correlation_id: Uuid::nil(),
            causation_id: Uuid::nil(),
        }
    }

    #[test]
    fn reconciling_keeps_unchanged_deadlines_rearms_moved_ones_and_drops_the_rest() {
        let mut kept = vec![
            (scheduled("pay", 10, 1), true),
            (scheduled("ship", 20, 2), false),
            (scheduled("remind", 5, 3), true),
        ];
        reconcile(
            &mut kept,
            vec![scheduled("pay", 10, 9), scheduled("ship", 30, 9)],
        );
        assert_eq!(
            kept,
            vec![
                // Unchanged: keeps its fire id and stays fired.
                (scheduled("pay", 10, 1), true),
                // Moved: scheduled afresh, not fired.
                (scheduled("ship", 30, 9), false),
            ]
        );
    }

    #[test]
    fn deadlines_keep_the_precision_stores_keep() {
        let due = DateTime::UNIX_EPOCH + chrono::Duration::nanoseconds(1_234_567);
        assert_eq!(
            Deadline::new("d", due).due(),
            DateTime::UNIX_EPOCH + chrono::Duration::microseconds(1_234)
        );
    }
}
