//! Derive macros for the event-sourcing framework, re-exported by nothing: depend on `es-macros`
//! beside `es-core`.
//!
//! - [`DomainEvent`]: names, versions and (de)serializes an event enum or struct; optionally a
//!   trait with one apply method per event.
//! - [`Aggregate`]: the aggregate's category, types, snapshot settings, and the glue to its
//!   `decide` method and per-event apply methods.
//!
//! ```
//! use es_core::DomainEvent as _;
//! use es_macros::DomainEvent;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, PartialEq, DomainEvent, Serialize, Deserialize)]
//! enum AccountEvent {
//!     Opened { owner: String },
//!     #[event(name = "FundsDeposited", version = 2)]
//!     Deposited { amount: i64, currency: String },
//!     Closed,
//! }
//!
//! let event = AccountEvent::Deposited { amount: 5, currency: "EUR".into() };
//! assert_eq!(event.event_type(), "FundsDeposited");
//! assert_eq!(event.schema_version(), 2);
//! let payload = event.encode().unwrap();
//! assert_eq!(payload.get(), r#"{"amount":5,"currency":"EUR"}"#);
//! assert_eq!(AccountEvent::decode("FundsDeposited", payload.get()).unwrap(), event);
//! assert_eq!(AccountEvent::TYPES.len(), 3);
//! ```

use proc_macro::TokenStream;

mod aggregate;
mod domain_event;
mod personal;

/// Derives `es_core::DomainEvent` for an enum (one event type per variant) or a struct (one
/// event type).
///
/// The payload is what serde writes for the variant's data (its fields, its one value, or `null`
/// for a unit variant); the type name travels beside it. The enum must use serde's default,
/// externally tagged representation, so `Serialize` and `Deserialize` are derived beside this.
///
/// Attributes, on a variant (or on the struct):
/// - `#[event(name = "...")]`: the stored type name; defaults to the variant (struct) name. Use
///   this, not `#[serde(rename)]`, to rename.
/// - `#[event(version = N)]`: the current schema version, from 1 (the default). Raise it with
///   each payload change that needs an upcaster.
///
/// - `#[event(flatten)]`, on a one-field tuple variant such as `Account(AccountEvent)`: the
///   variant holds every event type of another `DomainEvent` type, stored under that type's
///   names, versions and payloads. For readers of several aggregates' events (a saga, a
///   projection): `enum Flow { #[event(flatten)] Account(AccountEvent), #[event(flatten)]
///   Transfer(TransferEvent) }`. Only variants that are one event type each need serde; two
///   types sharing a name fail compilation where `TYPES` is used.
///
/// On an enum, `#[event(apply_trait = ApplyMyEvent)]` also generates a trait `ApplyMyEvent`
/// with one method per variant (`on_<variant in snake_case>`, taking the variant's fields by
/// reference) and `MyEvent::apply_to(&self, &mut impl ApplyMyEvent)`, which calls the one that
/// matches: what `#[derive(Aggregate)]` uses to apply events.
#[proc_macro_derive(DomainEvent, attributes(event))]
pub fn derive_domain_event(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    domain_event::expand(input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Derives `es_core::Aggregate` for an aggregate's state struct (which must implement
/// `Default`).
///
/// `#[aggregate(...)]` takes:
/// - `category = "account"` (required): the stream category; instance `42` lives in
///   `account-42`.
/// - `command = T`, `event = T`, `error = T` (required): the aggregate's types.
/// - `snapshot_version = N` (default 1): raise when the state's serialized form changes.
/// - `snapshot_every = N`: take a snapshot every `N` events (default: never).
/// - `decide = method` (default `decide`): the inherent method
///   `fn(&self, &Command) -> Result<Vec<Event>, Error>` that decides.
/// - `apply = method`: an inherent `fn(&mut self, &Event)` that applies events. Without it,
///   events are applied through the event enum's `apply_to` (see
///   `#[event(apply_trait = ...)]` on [`DomainEvent`]), one method per event.
///
/// ```
/// use es_macros::{Aggregate, DomainEvent};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Default, Aggregate, Serialize, Deserialize)]
/// #[aggregate(category = "counter", command = u32, event = CounterEvent, error = TooBig, snapshot_every = 100)]
/// struct Counter { value: u32 }
///
/// #[derive(Debug, DomainEvent, Serialize, Deserialize)]
/// #[event(apply_trait = ApplyCounterEvent)]
/// enum CounterEvent { Added { by: u32 }, Reset }
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("the counter would pass 100")]
/// struct TooBig;
///
/// impl Counter {
///     fn decide(&self, by: &u32) -> Result<Vec<CounterEvent>, TooBig> {
///         if self.value + by > 100 { return Err(TooBig) }
///         Ok(vec![CounterEvent::Added { by: *by }])
///     }
/// }
///
/// impl ApplyCounterEvent for Counter {
///     fn on_added(&mut self, by: &u32) { self.value += by }
///     fn on_reset(&mut self) { self.value = 0 }
/// }
///
/// use es_core::Aggregate as _;
/// let mut counter = Counter::default();
/// for event in counter.decide(&5).unwrap() { counter.apply(&event); }
/// assert_eq!(counter.value, 5);
/// assert_eq!(Counter::CATEGORY, "counter");
/// ```
#[proc_macro_derive(Aggregate, attributes(aggregate))]
pub fn derive_aggregate(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    aggregate::expand(input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
