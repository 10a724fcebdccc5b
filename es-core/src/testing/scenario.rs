//! Given/when/then tests of an aggregate's decisions, with no store.

use std::fmt::Debug;

use crate::Aggregate;

/// An aggregate built from past events, ready to receive a command.
///
/// ```
/// # use es_core::{Aggregate, DomainEvent, EventType, DecodeError};
/// # use serde::{Serialize, Deserialize};
/// # use serde_json::value::RawValue;
/// # #[derive(Default)] struct Light { on: bool }
/// # #[derive(Debug, PartialEq, Serialize, Deserialize)] enum Switched { On, Off }
/// # impl DomainEvent for Switched {
/// #     const TYPES: &'static [EventType] = &[EventType { name: "On", version: 1 }, EventType { name: "Off", version: 1 }];
/// #     fn event_type(&self) -> &'static str { match self { Switched::On => "On", Switched::Off => "Off" } }
/// #     fn encode(&self) -> Result<Box<RawValue>, serde_json::Error> { es_core::encode_tagged(self) }
/// #     fn decode(t: &str, p: &str) -> Result<Self, DecodeError> { Ok(es_core::decode_tagged(t, p)?) }
/// # }
/// # #[derive(Debug, PartialEq, thiserror::Error)] #[error("already on")] struct AlreadyOn;
/// # impl Aggregate for Light {
/// #     const CATEGORY: &'static str = "light";
/// #     type Command = (); type Event = Switched; type Error = AlreadyOn;
/// #     fn decide(&self, _: &()) -> Result<Vec<Switched>, AlreadyOn> { if self.on { Err(AlreadyOn) } else { Ok(vec![Switched::On]) } }
/// #     fn apply(&mut self, e: &Switched) { self.on = *e == Switched::On; }
/// # }
/// use es_core::testing::AggregateTest;
///
/// AggregateTest::<Light>::given([Switched::On, Switched::Off])
///     .when(())
///     .then([Switched::On]);
/// AggregateTest::<Light>::given([Switched::On]).when(()).then_error(AlreadyOn);
/// ```
pub struct AggregateTest<A> {
    state: A,
}

impl<A: Aggregate> AggregateTest<A> {
    /// An aggregate that has recorded `events`.
    pub fn given(events: impl IntoIterator<Item = A::Event>) -> Self {
        let mut state = A::default();
        for event in events {
            state.apply(&event);
        }
        Self { state }
    }

    /// A new aggregate, with no events.
    pub fn given_nothing() -> Self {
        Self {
            state: A::default(),
        }
    }

    /// Sends `command`.
    pub fn when(self, command: A::Command) -> Outcome<A> {
        let result = self.state.decide(&command);
        Outcome {
            state: self.state,
            result,
        }
    }
}

/// What an aggregate decided in an [`AggregateTest`].
pub struct Outcome<A: Aggregate> {
    state: A,
    result: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> Outcome<A> {
    /// Asserts the command was accepted with exactly `expected`; returns the state after them.
    #[track_caller]
    pub fn then(self, expected: impl IntoIterator<Item = A::Event>) -> A
    where
        A::Event: PartialEq + Debug,
    {
        let expected: Vec<_> = expected.into_iter().collect();
        match self.result {
            Ok(events) => {
                assert_eq!(events, expected, "the command produced other events");
                let mut state = self.state;
                for event in &events {
                    state.apply(event);
                }
                state
            }
            Err(err) => panic!("expected events {expected:?}, the command was rejected: {err}"),
        }
    }

    /// Asserts the command was rejected with `expected`.
    #[track_caller]
    pub fn then_error(self, expected: A::Error)
    where
        A::Error: PartialEq,
        A::Event: Debug,
    {
        match self.result {
            Err(err) => assert!(err == expected, "expected error {expected}, got {err}"),
            Ok(events) => panic!("expected error {expected}, the command produced {events:?}"),
        }
    }

    /// Asserts the command was rejected with an error `check` accepts.
    #[track_caller]
    pub fn then_error_matches(self, check: impl FnOnce(&A::Error) -> bool)
    where
        A::Event: Debug,
    {
        match self.result {
            Err(err) => assert!(
                check(&err),
                "the command was rejected with an unexpected error: {err}"
            ),
            Ok(events) => panic!("expected the command to be rejected, it produced {events:?}"),
        }
    }
}
