//! Schema evolution: upcasters lift stored events to the current schema before decoding.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use serde_json::Value;

use crate::{DecodeError, DomainEvent, Envelope, EventDecodeError, RecordedEvent, current_version};

/// One event an upcaster produces: a type name, the schema version its payload is now at, and
/// the payload.
#[derive(Clone, Debug, PartialEq)]
pub struct Upcasted {
    /// The (possibly renamed) type name.
    pub event_type: String,
    /// The schema version `payload` is at.
    pub schema_version: u32,
    /// The payload.
    pub payload: Value,
}

type Step = Arc<dyn Fn(Value) -> Result<Vec<Upcasted>, String> + Send + Sync>;

/// A registry of upcasters: for an event type and a schema version, how to lift a payload to the
/// next version (or rename the type, split the event into several, or retire it).
///
/// Every read path decodes through it: aggregate loads ([`Repository`](crate::Repository)) and
/// global-log readers ([`Upcasters::decode`]). Writing always uses the current version.
///
/// ```
/// use es_core::Upcasters;
/// use serde_json::json;
///
/// // v1 stored `{"amount": 5}` in euros; v2 stores cents with a currency.
/// let upcasters = Upcasters::new().add("Deposited", 1, |mut payload| {
///     let euros = payload["amount"].as_u64().ok_or("amount is not a number")?;
///     payload["amount"] = json!(euros * 100);
///     payload["currency"] = json!("EUR");
///     Ok(payload)
/// });
/// ```
#[derive(Clone, Default)]
pub struct Upcasters {
    steps: HashMap<(String, u32), Step>,
    /// The types some step starts from: what lets the common case (nothing to lift) be
    /// decided without building a key per event.
    lifted: HashSet<String>,
    duplicates: Vec<(String, u32)>,
}

/// A registry that cannot lift every stored version of an event type to the current one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpcasterError {
    /// A version below the current one has no upcaster, so events stored at it cannot load.
    #[error(
        "event type {event_type} is at schema version {current}, but no upcaster lifts version {missing}"
    )]
    Hole {
        /// The event type.
        event_type: String,
        /// The version nothing lifts.
        missing: u32,
        /// The current version.
        current: u32,
    },
    /// Two upcasters for the same type and version.
    #[error("two upcasters lift event type {event_type} from version {from}")]
    Duplicate {
        /// The event type.
        event_type: String,
        /// The version.
        from: u32,
    },
    /// An upcaster starts at or above the current version: it would never run, or loop.
    #[error(
        "an upcaster lifts {event_type} from version {from}, but the current version is {current}"
    )]
    BeyondCurrent {
        /// The event type.
        event_type: String,
        /// The version the upcaster starts from.
        from: u32,
        /// The current version.
        current: u32,
    },
}

/// Chains longer than this are taken to be a loop (an upcaster that renames back and forth).
const MAX_STEPS: usize = 64;

impl Upcasters {
    /// An empty registry: events must be stored at their current version.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lifts payloads of `event_type` stored at version `from` to version `from + 1`.
    pub fn add(
        self,
        event_type: &str,
        from: u32,
        upcast: impl Fn(Value) -> Result<Value, String> + Send + Sync + 'static,
    ) -> Self {
        let name = event_type.to_owned();
        self.add_transform(event_type, from, move |payload| {
            Ok(vec![Upcasted {
                event_type: name.clone(),
                schema_version: from + 1,
                payload: upcast(payload)?,
            }])
        })
    }

    /// The general form: turns one stored event of `event_type` at version `from` into any
    /// number of events: one with another name (a rename), several (a split), or none (a retired
    /// event, which readers then skip). Each result goes on through the chain of its own type
    /// from its own version.
    pub fn add_transform(
        mut self,
        event_type: &str,
        from: u32,
        transform: impl Fn(Value) -> Result<Vec<Upcasted>, String> + Send + Sync + 'static,
    ) -> Self {
        let key = (event_type.to_owned(), from);
        if self.steps.contains_key(&key) {
            self.duplicates.push(key.clone());
        }
        self.lifted.insert(event_type.to_owned());
        self.steps.insert(key, Arc::new(transform));
        self
    }

    /// Whether some upcaster starts from `event_type` (a current or an old, renamed type).
    pub fn lifts(&self, event_type: &str) -> bool {
        self.lifted.contains(event_type)
    }

    /// Whether an upcaster lifts `event_type` stored at `schema_version`.
    pub fn lifts_from(&self, event_type: &str, schema_version: u32) -> bool {
        self.lifted.contains(event_type)
            && self
                .steps
                .contains_key(&(event_type.to_owned(), schema_version))
    }

    /// Checks, at start-up, that every stored version of every type of `E` can be lifted to the
    /// current one: each version from 1 up to the current one has an upcaster, none is
    /// registered twice, none starts at or beyond the current version.
    pub fn validate<E: DomainEvent>(&self) -> Result<(), UpcasterError> {
        if let Some((event_type, from)) = self.duplicates.first() {
            return Err(UpcasterError::Duplicate {
                event_type: event_type.clone(),
                from: *from,
            });
        }
        for ty in E::TYPES {
            for missing in 1..ty.version {
                if !self.steps.contains_key(&(ty.name.to_owned(), missing)) {
                    return Err(UpcasterError::Hole {
                        event_type: ty.name.to_owned(),
                        missing,
                        current: ty.version,
                    });
                }
            }
        }
        for (event_type, from) in self.steps.keys() {
            if let Some(current) = current_version::<E>(event_type)
                && *from >= current
            {
                return Err(UpcasterError::BeyondCurrent {
                    event_type: event_type.clone(),
                    from: *from,
                    current,
                });
            }
        }
        Ok(())
    }

    /// Lifts a stored event to the current schema and decodes it: usually one event, none for a
    /// retired one, several for a split one. Each keeps the stored envelope (id, stream, version,
    /// position...) with its type and schema version updated.
    ///
    /// Nothing is half-applied: either every resulting event decodes, or the error names the
    /// stored event and the version where lifting failed.
    pub fn decode<E: DomainEvent>(
        &self,
        recorded: RecordedEvent,
    ) -> Result<Vec<Envelope<E>>, EventDecodeError> {
        let mut out = Vec::with_capacity(1);
        self.decode_into(recorded, &mut out)?;
        Ok(out)
    }

    /// As [`decode`](Self::decode), appending the events to `out`: spares a vector per event
    /// to callers decoding many.
    pub fn decode_into<E: DomainEvent>(
        &self,
        recorded: RecordedEvent,
        out: &mut Vec<Envelope<E>>,
    ) -> Result<(), EventDecodeError> {
        if !self.needs_lifting(&recorded) {
            let event = decode_current::<E>(&recorded)?;
            out.push(recorded.map(|_| event));
            return Ok(());
        }
        self.lift_selecting(recorded, out, false)
    }

    /// As [`decode_into`](Self::decode_into), from a borrowed event: copies the envelope but
    /// not the raw payload, for callers that must keep the stored event.
    pub fn decode_ref_into<E: DomainEvent>(
        &self,
        recorded: &RecordedEvent,
        out: &mut Vec<Envelope<E>>,
    ) -> Result<(), EventDecodeError> {
        self.decode_ref_selecting(recorded, out, false)
    }

    /// As [`decode_ref_into`](Self::decode_ref_into), for readers of the global log that
    /// take only the types of `E` (a projection, a saga) while sharing a registry written for
    /// all of an application's events: an event that is not of a type of `E` once lifted is
    /// left out instead of failing. Everything else fails as in `decode_ref_into`.
    pub fn select_ref_into<E: DomainEvent>(
        &self,
        recorded: &RecordedEvent,
        out: &mut Vec<Envelope<E>>,
    ) -> Result<(), EventDecodeError> {
        self.decode_ref_selecting(recorded, out, true)
    }

    /// Decodes a borrowed event; with `select`, events not of `E`'s types (once lifted) are
    /// left out.
    fn decode_ref_selecting<E: DomainEvent>(
        &self,
        recorded: &RecordedEvent,
        out: &mut Vec<Envelope<E>>,
        select: bool,
    ) -> Result<(), EventDecodeError> {
        if !self.needs_lifting(recorded) {
            if select && current_version::<E>(&recorded.event_type).is_none() {
                return Ok(());
            }
            let event = decode_current::<E>(recorded)?;
            out.push(recorded.with_payload(event));
            return Ok(());
        }
        self.lift_selecting(recorded.clone(), out, select)
    }

    /// Runs the whole chain of upcasters on one payload stored as `event_type` at
    /// `schema_version`, without decoding the results: the events a reader would decode, as
    /// (type, version, payload), in order. An event no upcaster lifts comes back as it is.
    /// What a schema gate uses to check, with a stored sample, where each chain ends.
    pub fn lift(
        &self,
        event_type: &str,
        schema_version: u32,
        payload: Value,
    ) -> Result<Vec<Upcasted>, String> {
        let mut pending = VecDeque::from([Upcasted {
            event_type: event_type.to_owned(),
            schema_version,
            payload,
        }]);
        let mut done = Vec::new();
        let mut steps = 0;
        while let Some(item) = pending.pop_front() {
            match self
                .steps
                .get(&(item.event_type.clone(), item.schema_version))
            {
                Some(step) => {
                    steps += 1;
                    if steps > MAX_STEPS {
                        return Err(format!("more than {MAX_STEPS} upcasting steps: a loop?"));
                    }
                    let from = item.schema_version;
                    let produced = step(item.payload).map_err(|reason| {
                        format!(
                            "the upcaster of {} v{from} failed: {reason}",
                            item.event_type
                        )
                    })?;
                    for next in produced.into_iter().rev() {
                        pending.push_front(next);
                    }
                }
                None => done.push(item),
            }
        }
        Ok(done)
    }

    fn needs_lifting(&self, recorded: &RecordedEvent) -> bool {
        self.lifted.contains(recorded.event_type.as_str())
            && self
                .steps
                .contains_key(&(recorded.event_type.clone(), recorded.schema_version))
    }

    /// Lifts `recorded` step by step; with `select`, results of types `E` does not know are
    /// left out.
    fn lift_selecting<E: DomainEvent>(
        &self,
        recorded: RecordedEvent,
        out: &mut Vec<Envelope<E>>,
        select: bool,
    ) -> Result<(), EventDecodeError> {
        let fail = |recorded: &RecordedEvent, source| EventDecodeError {
            event: Box::new(recorded.event_ref()),
            source,
        };
        let payload: Value = serde_json::from_str(recorded.payload.get())
            .map_err(|e| fail(&recorded, DecodeError::Payload(e)))?;
        let mut pending = VecDeque::from([Upcasted {
            event_type: recorded.event_type.clone(),
            schema_version: recorded.schema_version,
            payload,
        }]);
        let mut done = Vec::new();
        // Counts every final event, selected or not, so the split index of an event is the
        // same for every reader whatever it selects.
        let mut produced = 0u32;
        let mut steps = 0;
        while let Some(item) = pending.pop_front() {
            let key = (item.event_type.clone(), item.schema_version);
            match self.steps.get(&key) {
                Some(step) => {
                    steps += 1;
                    if steps > MAX_STEPS {
                        return Err(fail(
                            &recorded,
                            DecodeError::Upcast {
                                from: item.schema_version,
                                reason: format!("more than {MAX_STEPS} upcasting steps: a loop?"),
                            },
                        ));
                    }
                    let from = item.schema_version;
                    let produced = step(item.payload)
                        .map_err(|reason| fail(&recorded, DecodeError::Upcast { from, reason }))?;
                    // Results keep their order, ahead of anything still pending.
                    for next in produced.into_iter().rev() {
                        pending.push_front(next);
                    }
                }
                None if select && current_version::<E>(&item.event_type).is_none() => {
                    produced += 1;
                }
                None => {
                    check_current::<E>(&item.event_type, item.schema_version)
                        .map_err(|e| fail(&recorded, e))?;
                    let raw = serde_json::to_string(&item.payload)
                        .map_err(|e| fail(&recorded, DecodeError::Payload(e)))?;
                    let event =
                        E::decode(&item.event_type, &raw).map_err(|e| fail(&recorded, e))?;
                    done.push((item.event_type, item.schema_version, produced, event));
                    produced += 1;
                }
            }
        }
        out.extend(
            done.into_iter()
                .map(|(event_type, schema_version, split, event)| {
                    let mut envelope = recorded.with_payload(event);
                    envelope.event_type = event_type;
                    envelope.schema_version = schema_version;
                    envelope.split_index = split;
                    envelope
                }),
        );
        Ok(())
    }
}

/// Decodes a payload stored at its type's current version.
fn decode_current<E: DomainEvent>(recorded: &RecordedEvent) -> Result<E, EventDecodeError> {
    check_current::<E>(&recorded.event_type, recorded.schema_version)
        .and_then(|()| E::decode(&recorded.event_type, recorded.payload.get()))
        .map_err(|source| EventDecodeError {
            event: Box::new(recorded.event_ref()),
            source,
        })
}

/// A payload with no upcaster left must be at its type's current version.
fn check_current<E: DomainEvent>(event_type: &str, stored: u32) -> Result<(), DecodeError> {
    match current_version::<E>(event_type) {
        None => Err(DecodeError::UnknownType(event_type.to_owned())),
        Some(current) if stored > current => Err(DecodeError::FutureVersion { stored, current }),
        Some(current) if stored < current => Err(DecodeError::Upcast {
            from: stored,
            reason: format!(
                "no upcaster lifts {event_type} from version {stored} (current: {current})"
            ),
        }),
        Some(_) => Ok(()),
    }
}

impl std::fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut keys: Vec<_> = self.steps.keys().collect();
        keys.sort();
        f.debug_struct("Upcasters").field("steps", &keys).finish()
    }
}
