//! Test support: a given/when/then kit for aggregates and a conformance suite for event stores.
//!
//! Enabled by the `testing` feature, usually as a dev-dependency:
//! `es-core = { version = "…", features = ["testing"] }`.

pub mod conformance;
pub mod evolution;
pub mod lifecycle;
mod scenario;

pub use scenario::{AggregateTest, Outcome};
