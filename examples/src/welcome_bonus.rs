//! Choreography: a policy that reacts to one event with one command, with no workflow to
//! orchestrate. Every newly opened account receives a welcome bonus.
//!
//! It runs on the same runners as the transfer saga (a saga whose state is `()`), so it gets
//! the same guarantees: durable checkpoint, idempotent commands under redelivery, and the
//! opening's correlation id on the bonus deposit.

use es_core::{Envelope, Saga};
use serde::{Deserialize, Serialize};

use crate::account::AccountEvent;

/// Deposit a bonus into a new account.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PayBonus {
    /// The account's id.
    pub account: String,
    /// In cents.
    pub amount: u64,
}

/// The policy: `amount` cents for every account opened.
#[derive(Clone, Copy, Debug)]
pub struct WelcomeBonus {
    /// In cents.
    pub amount: u64,
}

impl Default for WelcomeBonus {
    /// The bank's bonus: 5.00.
    fn default() -> Self {
        Self { amount: 500 }
    }
}

impl Saga for WelcomeBonus {
    // All account events (version-1 openings lifted by `crate::account::upcasters`, which the
    // runner must be given); it reacts to openings only.
    type Event = AccountEvent;
    type State = ();
    type Command = PayBonus;

    fn name(&self) -> &str {
        "welcome_bonus"
    }

    fn instance_of(&self, event: &Envelope<AccountEvent>) -> Option<String> {
        matches!(event.payload, AccountEvent::Opened { .. })
            .then(|| event.stream_id.id().to_owned())
    }

    fn react(&self, _: &mut (), event: &Envelope<AccountEvent>) -> Vec<PayBonus> {
        vec![PayBonus {
            account: event.stream_id.id().to_owned(),
            amount: self.amount,
        }]
    }
}
