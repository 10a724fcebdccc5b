//! Command handling: load an aggregate, decide, append with optimistic concurrency, retry.

use std::sync::Arc;

use tracing::Instrument;
use uuid::Uuid;

use crate::{
    Aggregate, AppendResult, CommandError, DomainEvent, EventStore, ExpectedVersion, Loaded,
    Metadata, NewEvent, Repository, StoreError, StreamId,
};

/// The tracing context and options of one command.
#[derive(Clone, Debug)]
pub struct CommandContext {
    /// The command's own id: the causation id of the events it produces unless
    /// [`caused_by`](Self::caused_by) names another cause.
    pub command_id: Uuid,
    /// The correlation id to stamp on every event; defaults to the command id, so a command that
    /// starts a piece of work starts its correlation.
    pub correlation_id: Option<Uuid>,
    /// The id of the message that caused the command (an event, for a saga or reaction).
    pub causation_id: Option<Uuid>,
    /// Metadata copied onto every event.
    pub metadata: Metadata,
    /// The version the caller saw. When set, the command is decided only against that version
    /// and a conflict is returned, not retried.
    pub expected_version: Option<ExpectedVersion>,
    /// Whether executing the same command id again must do nothing; see
    /// [`idempotent`](Self::idempotent).
    pub idempotent: bool,
}

impl Default for CommandContext {
    fn default() -> Self {
        Self {
            command_id: Uuid::now_v7(),
            correlation_id: None,
            causation_id: None,
            metadata: Metadata::new(),
            expected_version: None,
            idempotent: false,
        }
    }
}

impl CommandContext {
    /// A context with a fresh command id.
    pub fn new() -> Self {
        Self::default()
    }

    /// Continues the work correlated by `correlation_id`.
    pub fn correlated_with(mut self, correlation_id: Uuid) -> Self {
        self.correlation_id = Some(correlation_id);
        self
    }

    /// Records that `causation_id` (usually an event) caused this command.
    pub fn caused_by(mut self, causation_id: Uuid) -> Self {
        self.causation_id = Some(causation_id);
        self
    }

    /// Adds one metadata entry.
    pub fn with_metadata(mut self, key: impl Into<String>, value: serde_json::Value) -> Self {
        self.metadata.insert(key, value);
        self
    }

    /// Makes the command idempotent under the id `command_id`: its events get ids derived from
    /// the command id ([`derived_event_id`]), and executing a command whose first event is
    /// already stored does nothing and reports [`Executed::deduplicated`]. For commands that may
    /// be delivered more than once (sagas, message consumers): derive `command_id` from what
    /// caused it, so each redelivery carries the same id.
    pub fn idempotent(mut self, command_id: Uuid) -> Self {
        self.command_id = command_id;
        self.idempotent = true;
        self
    }

    /// The context of a further command run on behalf of this one, such as recording on a
    /// saga's own aggregate that the domain refused this command. `index` tells such commands
    /// apart. Same correlation, causation and metadata; when this command is idempotent, so is
    /// the follow-up, under an id derived from this one's, so a redelivery repeats it
    /// harmlessly too.
    pub fn follow_up(&self, index: u32) -> CommandContext {
        // Counted down from the top so the id never equals one of this command's event ids,
        // which are derived from the same command id counting up from 0.
        let command_id = derived_event_id(self.command_id, u32::MAX - index);
        CommandContext {
            command_id,
            correlation_id: Some(self.effective_correlation_id()),
            causation_id: Some(self.effective_causation_id()),
            metadata: self.metadata.clone(),
            expected_version: None,
            idempotent: self.idempotent,
        }
    }

    /// Decides only against this version; see [`CommandContext::expected_version`].
    pub fn expecting(mut self, expected: ExpectedVersion) -> Self {
        self.expected_version = Some(expected);
        self
    }

    /// The correlation id the command's events carry.
    pub fn effective_correlation_id(&self) -> Uuid {
        self.correlation_id.unwrap_or(self.command_id)
    }

    /// The causation id the command's events carry.
    pub fn effective_causation_id(&self) -> Uuid {
        self.causation_id.unwrap_or(self.command_id)
    }
}

/// How often the handler tries again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Reload-and-decide rounds after a version conflict, before the conflict is returned.
    pub conflict_retries: u32,
    /// Re-sends of the same events after a transient store failure. Safe: the store deduplicates
    /// by event id when the first attempt did commit.
    pub transient_retries: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            conflict_retries: 10,
            transient_retries: 3,
        }
    }
}

/// The result of an accepted command.
#[derive(Debug)]
pub struct Executed<A: Aggregate> {
    /// The state after the new events.
    pub state: A,
    /// The stream version after the command.
    pub version: u64,
    /// The events the command produced (empty when it changed nothing).
    pub events: Vec<A::Event>,
    /// What the store wrote; `None` when there was nothing to write.
    pub append: Option<AppendResult>,
    /// An idempotent command already executed (by an earlier or a concurrent delivery): nothing
    /// was decided or written this time, `events` is empty, and `state`/`version` are the
    /// aggregate's as loaded now, with the first execution's events applied once.
    pub deduplicated: bool,
}

/// The id of event `index` (from 0) of the idempotent command `command_id`: the same for every
/// execution of the command, distinct across commands and indexes.
pub fn derived_event_id(command_id: Uuid, index: u32) -> Uuid {
    // A fixed 128-bit mix (multiply by odd constants, xor-shift): stable across releases,
    // spreads every input bit, and is not its own inverse, so ids derived from derived ids
    // (a saga's command from an event, that command's events) never fall back on an earlier id.
    let mut x = command_id.as_u128()
        ^ (u128::from(index) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
    x = x.wrapping_mul(0xda94_2042_e4dd_58b5_8c8f_f8a1_a7bf_3f2d);
    x ^= x >> 67;
    x = x.wrapping_mul(0x2545_f491_4f6c_dd1d_9e37_79b9_7f4a_7c17);
    x ^= x >> 59;
    let mut bytes = x.to_be_bytes();
    // Version 8 (custom) and the RFC 4122 variant.
    bytes[6] = (bytes[6] & 0x0f) | 0x80;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    Uuid::from_bytes(bytes)
}

/// Executes commands against aggregates of type `A`: load, decide, append with the loaded
/// version, and on a version conflict reload and decide again (bounded by [`RetryPolicy`]).
pub struct CommandHandler<A> {
    repository: Repository<A>,
    retry: RetryPolicy,
}

impl<A> Clone for CommandHandler<A> {
    fn clone(&self) -> Self {
        Self {
            repository: self.repository.clone(),
            retry: self.retry,
        }
    }
}

impl<A: Aggregate> CommandHandler<A> {
    /// A handler over `store` with the default retry policy.
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self {
            repository: Repository::new(store),
            retry: RetryPolicy::default(),
        }
    }

    /// A handler loading and snapshotting through `repository`.
    pub fn with_repository(repository: Repository<A>) -> Self {
        Self {
            repository,
            retry: RetryPolicy::default(),
        }
    }

    /// Replaces the retry policy.
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The repository the handler loads through.
    pub fn repository(&self) -> &Repository<A> {
        &self.repository
    }

    /// Loads the aggregate `id`.
    pub async fn load(&self, id: &str) -> Result<Loaded<A>, CommandError<A::Error>> {
        let stream = Repository::<A>::stream_id(id)?;
        self.repository.load(&stream).await
    }

    /// Executes `command` on the aggregate `id` with a fresh context.
    pub async fn execute(
        &self,
        id: &str,
        command: A::Command,
    ) -> Result<Executed<A>, CommandError<A::Error>> {
        self.execute_with(id, command, CommandContext::new()).await
    }

    /// Whether the idempotent command of `context` already took effect on the aggregate `id`
    /// (its first event is stored in that aggregate's stream). A dispatcher uses it to ask
    /// whether an outcome it records on refusal (see [`CommandContext::follow_up`]) is already
    /// recorded, so a redelivered step that was refused before is not tried again against a
    /// state that has changed since.
    pub async fn was_executed(
        &self,
        id: &str,
        context: &CommandContext,
    ) -> Result<bool, CommandError<A::Error>> {
        let stream = Repository::<A>::stream_id(id)?;
        Ok(self.executed_in(&stream, context).await?)
    }

    async fn executed_in(
        &self,
        stream: &StreamId,
        context: &CommandContext,
    ) -> Result<bool, StoreError> {
        if !context.idempotent {
            return Ok(false);
        }
        let first = derived_event_id(context.command_id, 0);
        Ok(self
            .repository
            .store()
            .read_event(first)
            .await?
            .is_some_and(|event| event.stream_id == *stream))
    }

    /// Executes `command` on the aggregate `id` within `context`.
    pub async fn execute_with(
        &self,
        id: &str,
        command: A::Command,
        context: CommandContext,
    ) -> Result<Executed<A>, CommandError<A::Error>> {
        let stream = match Repository::<A>::stream_id(id) {
            Ok(stream) => stream,
            Err(error) => {
                crate::telemetry::command_done(A::CATEGORY, "failed", std::time::Duration::ZERO);
                return Err(error);
            }
        };
        let span = tracing::info_span!(
            "execute",
            aggregate = A::CATEGORY,
            stream = %stream,
            command_id = %context.command_id,
            correlation_id = %context.effective_correlation_id(),
            causation_id = %context.effective_causation_id(),
        );
        let started = std::time::Instant::now();
        let result = self
            .execute_in(&stream, &command, &context)
            .instrument(span)
            .await;
        crate::telemetry::command_done(A::CATEGORY, outcome(&result), started.elapsed());
        result
    }

    async fn execute_in(
        &self,
        stream: &StreamId,
        command: &A::Command,
        context: &CommandContext,
    ) -> Result<Executed<A>, CommandError<A::Error>> {
        let mut conflicts = 0;
        loop {
            let loaded = self.repository.load(stream).await?;
            // Asked after loading, not before: a delivery of the same command that committed
            // before this load is found here; one that commits later decided against the
            // state loaded here, so deciding again writes the same ids and is found a repeat.
            if self.executed_in(stream, context).await? {
                tracing::debug!("idempotent command already executed");
                // Reloaded: the other delivery may have committed after the load above.
                return Ok(deduplicated(self.repository.load(stream).await?, None));
            }
            let (mut state, version) = (loaded.state, loaded.version);
            let expected = match context.expected_version {
                Some(expected) if !expected.accepts((version > 0).then_some(version)) => {
                    return Err(CommandError::Conflict(crate::ConflictError {
                        stream: stream.clone(),
                        expected,
                        actual: (version > 0).then_some(version),
                    }));
                }
                _ => ExpectedVersion::Exact(version),
            };
            let events = match state.decide(command) {
                Ok(events) => events,
                Err(refusal) => {
                    // Another delivery may have executed the command meanwhile: its outcome
                    // stands, not a refusal decided against a state that has moved on.
                    if self.executed_in(stream, context).await? {
                        return Ok(deduplicated(self.repository.load(stream).await?, None));
                    }
                    return Err(CommandError::Domain(refusal));
                }
            };
            if events.is_empty() {
                return Ok(Executed {
                    state,
                    version,
                    events,
                    append: None,
                    deduplicated: false,
                });
            }
            let new_events = encode_events(&events, context)?;
            match self.append(stream, expected, new_events).await {
                Ok(Sent { append, resent }) if append.deduplicated && !resent => {
                    // Another delivery of this idempotent command wrote these events first.
                    // Its outcome stands; applying them to this state would count them twice.
                    tracing::debug!("idempotent command executed by another delivery");
                    let now = self.repository.load(stream).await?;
                    return Ok(deduplicated(now, Some(append)));
                }
                Ok(Sent { append, .. }) => {
                    // A repeat found only after a re-send is this execution's own first
                    // attempt, whose outcome was unknown: these events are ours (the append
                    // result still says the re-send found them stored).
                    for event in &events {
                        state.apply(event);
                    }
                    tracing::debug!(version = append.last_version, "command executed");
                    self.repository
                        .snapshot_if_due(
                            stream,
                            &state,
                            version,
                            append.last_version,
                            loaded.snapshot_at,
                        )
                        .await;
                    return Ok(Executed {
                        state,
                        version: append.last_version,
                        events,
                        append: Some(append),
                        deduplicated: false,
                    });
                }
                Err(StoreError::Conflict(conflict))
                    if context.expected_version.is_none()
                        && conflicts < self.retry.conflict_retries =>
                {
                    conflicts += 1;
                    crate::telemetry::command_retried(A::CATEGORY, "conflict");
                    tracing::debug!(%conflict, attempt = conflicts, "version conflict, deciding again");
                }
                Err(err) => {
                    // An idempotent command another delivery executed meanwhile, with events
                    // that differ from this decision's (a time in the payload, say), is
                    // refused by the store; its outcome stands.
                    let repeat = matches!(
                        err,
                        StoreError::EventIdReused { .. } | StoreError::Conflict(_)
                    );
                    if repeat && self.executed_in(stream, context).await? {
                        tracing::debug!("idempotent command executed by another delivery");
                        return Ok(deduplicated(self.repository.load(stream).await?, None));
                    }
                    return Err(err.into());
                }
            }
        }
    }

    /// Appends, re-sending the same events (same ids) after transient failures.
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Sent, StoreError> {
        let mut failures = 0;
        loop {
            match self
                .repository
                .store()
                .append(stream, expected, events.clone())
                .await
            {
                Err(err) if err.is_transient() && failures < self.retry.transient_retries => {
                    failures += 1;
                    crate::telemetry::command_retried(A::CATEGORY, "resend");
                    tracing::warn!(error = %err, attempt = failures, "append outcome unknown, re-sending the same events");
                }
                result => {
                    return result.map(|append| Sent {
                        append,
                        resent: failures > 0,
                    });
                }
            }
        }
    }
}

/// The `outcome` label of a command's metrics.
fn outcome<A: Aggregate>(result: &Result<Executed<A>, CommandError<A::Error>>) -> &'static str {
    match result {
        Ok(executed) if executed.deduplicated => "deduplicated",
        Ok(_) => "executed",
        Err(CommandError::Domain(_)) => "refused",
        Err(CommandError::Conflict(_)) => "conflict",
        Err(_) => "failed",
    }
}

/// What an append returned, and whether it took a re-send.
struct Sent {
    append: AppendResult,
    resent: bool,
}

/// The outcome of an idempotent command found already executed: nothing decided this time,
/// the aggregate as loaded now.
fn deduplicated<A: Aggregate>(loaded: Loaded<A>, append: Option<AppendResult>) -> Executed<A> {
    Executed {
        state: loaded.state,
        version: loaded.version,
        events: Vec::new(),
        append,
        deduplicated: true,
    }
}

fn encode_events<E: DomainEvent, DomainErr: std::error::Error>(
    events: &[E],
    context: &CommandContext,
) -> Result<Vec<NewEvent>, CommandError<DomainErr>> {
    let correlation = context.effective_correlation_id();
    let causation = context.effective_causation_id();
    #[cfg(feature = "otel")]
    let metadata = crate::otel::stamped(&context.metadata);
    #[cfg(not(feature = "otel"))]
    let metadata = &context.metadata;
    events
        .iter()
        .enumerate()
        .map(|(index, event)| {
            let mut new = NewEvent::from_event(event).map_err(|source| CommandError::Encode {
                event_type: event.event_type(),
                source,
            })?;
            if context.idempotent {
                new.event_id = derived_event_id(context.command_id, index as u32);
            }
            Ok(new
                .correlated_with(correlation)
                .caused_by(causation)
                .with_metadata((*metadata).clone()))
        })
        .collect()
}
