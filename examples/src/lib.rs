//! Runnable domain services built on the framework. The `bank` binary is the README's main
//! example; `bank-admin` (the `es-admin` CLI with the bank's parts registered) lists, rebuilds
//! and repairs its projections and sagas; `store-bench` measures the PostgreSQL store beside
//! raw SQL.
//!
//! - `account.rs`: the bank account aggregate, with an upcaster for its version-1 events.
//! - `transfer.rs`: the transfer aggregate, the record of one transfer.
//! - `transfer_saga.rs`: orchestration: the saga that moves a transfer's money, compensating
//!   with a refund when the credit is refused.
//! - `welcome_bonus.rs`: choreography: a policy paying a bonus into every new account.
//! - `bank.rs`: the command handlers and the dispatcher that runs what the saga and the
//!   policy issue.
//! - `projections.rs`: the read models in PostgreSQL; `bank-admin` operates them.

pub mod account;
pub mod bank;
pub mod projections;
pub mod transfer;
pub mod transfer_saga;
pub mod welcome_bonus;

/// The README and the guides in `docs/`: every Rust block in them is compiled and run as a
/// doctest, so they stay true. (docs/getting-started.md is made of whole files a reader pastes
/// into a crate of their own: `tests/getting_started.rs` does exactly that instead.)
#[cfg(doctest)]
pub mod docs {
    #[doc = include_str!("../../README.md")]
    pub struct Readme;
    #[doc = include_str!("../../docs/concepts.md")]
    pub struct Concepts;
    #[doc = include_str!("../../docs/schema-evolution.md")]
    pub struct SchemaEvolution;
    #[doc = include_str!("../../docs/snapshots.md")]
    pub struct Snapshots;
    #[doc = include_str!("../../docs/projections.md")]
    pub struct Projections;
    #[doc = include_str!("../../docs/sagas.md")]
    pub struct Sagas;
    #[doc = include_str!("../../docs/operations.md")]
    pub struct Operations;
    #[doc = include_str!("../../docs/comparison.md")]
    pub struct Comparison;
    #[doc = include_str!("../../docs/benchmarks.md")]
    pub struct Benchmarks;
    #[doc = include_str!("../../docs/scaling.md")]
    pub struct Scaling;
    #[doc = include_str!("../../docs/personal-data.md")]
    pub struct PersonalData;
    #[doc = include_str!("../../docs/tenancy.md")]
    pub struct Tenancy;
    #[doc = include_str!("../../docs/lifecycle.md")]
    pub struct Lifecycle;
}
