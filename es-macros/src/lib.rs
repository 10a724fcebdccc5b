//! Derive macros for the event-sourcing framework, re-exported by nothing: depend on `es-macros`
//! beside `es-core`.
//!
//! - [`DomainEvent`]: names, versions and (de)serializes an event enum or struct.
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
//! assert_eq!(AccountEvent::decode("FundsDeposited", &payload).unwrap(), event);
//! assert_eq!(AccountEvent::TYPES.len(), 3);
//! ```

use proc_macro::TokenStream;

mod domain_event;

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
#[proc_macro_derive(DomainEvent, attributes(event))]
pub fn derive_domain_event(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    domain_event::expand(input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
