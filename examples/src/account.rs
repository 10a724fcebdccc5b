//! A bank account: opened for an owner, deposits and withdrawals, never overdrawn, closed only
//! when empty.

use serde::{Deserialize, Serialize};

/// What can be asked of an account.
#[derive(Clone, Debug)]
pub enum AccountCommand {
    /// Open the account for `owner`.
    Open {
        /// Who owns it.
        owner: String,
    },
    /// Put money in.
    Deposit {
        /// In cents.
        amount: u64,
    },
    /// Take money out.
    Withdraw {
        /// In cents.
        amount: u64,
    },
    /// Close the account; it must be empty.
    Close,
}

/// What happened to an account.
#[derive(Clone, Debug, PartialEq, es_macros::DomainEvent, Serialize, Deserialize)]
#[event(apply_trait = ApplyAccountEvent)]
pub enum AccountEvent {
    /// The account was opened.
    Opened {
        /// Who owns it.
        owner: String,
    },
    /// Money was put in.
    Deposited {
        /// In cents.
        amount: u64,
    },
    /// Money was taken out.
    Withdrawn {
        /// In cents.
        amount: u64,
    },
    /// The account was closed.
    Closed,
}

/// Why an account refused a command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// Opening an account twice.
    #[error("the account is already open")]
    AlreadyOpen,
    /// Anything but opening on an account that is not open.
    #[error("the account is not open")]
    NotOpen,
    /// A deposit or withdrawal of nothing.
    #[error("amounts must be positive")]
    ZeroAmount,
    /// A withdrawal larger than the balance.
    #[error("insufficient funds: balance {balance}, asked {asked}")]
    InsufficientFunds {
        /// The balance.
        balance: u64,
        /// The amount asked.
        asked: u64,
    },
    /// Closing an account that still holds money.
    #[error("the account still holds {0}")]
    NotEmpty(u64),
}

/// The state of an account, rebuilt from its events; snapshotted every 100 events.
#[derive(Clone, Debug, Default, PartialEq, es_macros::Aggregate, Serialize, Deserialize)]
#[aggregate(
    category = "account",
    command = AccountCommand,
    event = AccountEvent,
    error = AccountError,
    snapshot_every = 100
)]
pub struct Account {
    /// Who owns it, once opened.
    pub owner: Option<String>,
    /// In cents.
    pub balance: u64,
    /// Whether it was closed.
    pub closed: bool,
}

impl Account {
    fn is_open(&self) -> bool {
        self.owner.is_some() && !self.closed
    }
}

impl Account {
    fn decide(&self, command: &AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        use AccountCommand::*;
        match command {
            Open { .. } if self.owner.is_some() => Err(AccountError::AlreadyOpen),
            Open { owner } => Ok(vec![AccountEvent::Opened {
                owner: owner.clone(),
            }]),
            _ if !self.is_open() => Err(AccountError::NotOpen),
            Deposit { amount: 0 } | Withdraw { amount: 0 } => Err(AccountError::ZeroAmount),
            Deposit { amount } => Ok(vec![AccountEvent::Deposited { amount: *amount }]),
            Withdraw { amount } if *amount > self.balance => Err(AccountError::InsufficientFunds {
                balance: self.balance,
                asked: *amount,
            }),
            Withdraw { amount } => Ok(vec![AccountEvent::Withdrawn { amount: *amount }]),
            Close if self.balance > 0 => Err(AccountError::NotEmpty(self.balance)),
            Close => Ok(vec![AccountEvent::Closed]),
        }
    }
}

impl ApplyAccountEvent for Account {
    fn on_opened(&mut self, owner: &String) {
        self.owner = Some(owner.clone());
    }

    fn on_deposited(&mut self, amount: &u64) {
        self.balance += amount;
    }

    fn on_withdrawn(&mut self, amount: &u64) {
        self.balance -= amount;
    }

    fn on_closed(&mut self) {
        self.closed = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use es_core::testing::AggregateTest;

    fn opened() -> AccountEvent {
        AccountEvent::Opened {
            owner: "ann".into(),
        }
    }

    #[test]
    fn withdrawals_never_overdraw() {
        AggregateTest::<Account>::given([opened(), AccountEvent::Deposited { amount: 10 }])
            .when(AccountCommand::Withdraw { amount: 11 })
            .then_error(AccountError::InsufficientFunds {
                balance: 10,
                asked: 11,
            });
        let state =
            AggregateTest::<Account>::given([opened(), AccountEvent::Deposited { amount: 10 }])
                .when(AccountCommand::Withdraw { amount: 10 })
                .then([AccountEvent::Withdrawn { amount: 10 }]);
        assert_eq!(state.balance, 0);
    }

    #[test]
    fn only_empty_open_accounts_close() {
        AggregateTest::<Account>::given([opened(), AccountEvent::Deposited { amount: 1 }])
            .when(AccountCommand::Close)
            .then_error(AccountError::NotEmpty(1));
        AggregateTest::<Account>::given([opened()])
            .when(AccountCommand::Close)
            .then([AccountEvent::Closed]);
        AggregateTest::<Account>::given([opened(), AccountEvent::Closed])
            .when(AccountCommand::Deposit { amount: 1 })
            .then_error(AccountError::NotOpen);
        AggregateTest::<Account>::given_nothing()
            .when(AccountCommand::Deposit { amount: 1 })
            .then_error(AccountError::NotOpen);
    }
}
