//! Runnable domain services built on the framework. The `bank` binary is the README's main
//! example; `bank-admin` lists, rebuilds and repairs its projections; `store-bench` measures the
//! PostgreSQL store beside raw SQL.
//!
//! - `account.rs`: a bank account aggregate with derived events.
//! - `projections.rs`: its read models in PostgreSQL; `bank-admin` operates them.

pub mod account;
pub mod projections;

/// The README's example, compiled and run as a doctest so it stays true.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
