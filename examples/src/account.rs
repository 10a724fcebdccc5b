//! A bank account: opened for an owner in a currency, deposits and withdrawals, the debit,
//! credit and refund steps of transfers, never overdrawn, closed only when empty.

use es_core::Upcasters;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// What can be asked of an account.
#[derive(Clone, Debug)]
pub enum AccountCommand {
    /// Open the account for `owner`.
    Open {
        /// Who owns it.
        owner: String,
        /// ISO 4217 code, such as `EUR`.
        currency: String,
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
    /// Take money out for a transfer (the transfer saga's first step).
    Debit {
        /// The transfer's id.
        transfer: String,
        /// In cents.
        amount: u64,
    },
    /// Put a transfer's money in (its second step).
    Credit {
        /// The transfer's id.
        transfer: String,
        /// In cents.
        amount: u64,
    },
    /// Give back what a transfer debited when it could not be credited (its compensation).
    /// Accepted even on a closed account: the money was this account's.
    Refund {
        /// The transfer's id.
        transfer: String,
        /// In cents.
        amount: u64,
    },
}

/// What happened to an account.
#[derive(Clone, Debug, PartialEq, es_core::DomainEvent, Serialize, Deserialize)]
#[event(apply_trait = ApplyAccountEvent)]
pub enum AccountEvent {
    /// The account was opened. Version 1 had no currency: every account was in euros
    /// ([`upcasters`] lifts those events).
    #[event(version = 2)]
    Opened {
        /// Who owns it.
        owner: String,
        /// ISO 4217 code.
        currency: String,
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
    /// Money was taken out for a transfer.
    TransferDebited {
        /// The transfer's id.
        transfer: String,
        /// In cents.
        amount: u64,
    },
    /// A transfer's money came in.
    TransferCredited {
        /// The transfer's id.
        transfer: String,
        /// In cents.
        amount: u64,
    },
    /// A transfer that could not complete gave its money back.
    TransferRefunded {
        /// The transfer's id.
        transfer: String,
        /// In cents.
        amount: u64,
    },
}

/// How to read account events stored by earlier versions of this code.
pub fn upcasters() -> Upcasters {
    // Before accounts had a currency, every account was in euros.
    Upcasters::new().add("Opened", 1, |mut payload| {
        payload["currency"] = json!("EUR");
        Ok(payload)
    })
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
    /// A refund on an account that never existed.
    #[error("the account was never opened")]
    NeverOpened,
    /// A deposit or withdrawal of nothing.
    #[error("amounts must be positive")]
    ZeroAmount,
    /// A withdrawal larger than the balance.
    #[error("insufficient funds: balance {balance} cents, asked {asked} cents")]
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
#[derive(Clone, Debug, Default, PartialEq, es_core::Aggregate, Serialize, Deserialize)]
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
    /// ISO 4217 code, once opened.
    pub currency: Option<String>,
    /// In cents.
    pub balance: u64,
    /// Whether it was closed.
    pub closed: bool,
}

impl Account {
    fn is_open(&self) -> bool {
        self.owner.is_some() && !self.closed
    }

    fn decide(&self, command: &AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        use AccountCommand::*;
        match command {
            Open { .. } if self.owner.is_some() => Err(AccountError::AlreadyOpen),
            Open { owner, currency } => Ok(vec![AccountEvent::Opened {
                owner: owner.clone(),
                currency: currency.clone(),
            }]),
            Refund { .. } if self.owner.is_none() => Err(AccountError::NeverOpened),
            Refund { amount: 0, .. } => Err(AccountError::ZeroAmount),
            Refund { transfer, amount } => Ok(vec![AccountEvent::TransferRefunded {
                transfer: transfer.clone(),
                amount: *amount,
            }]),
            _ if !self.is_open() => Err(AccountError::NotOpen),
            Deposit { amount: 0 }
            | Withdraw { amount: 0 }
            | Debit { amount: 0, .. }
            | Credit { amount: 0, .. } => Err(AccountError::ZeroAmount),
            Deposit { amount } => Ok(vec![AccountEvent::Deposited { amount: *amount }]),
            Withdraw { amount } | Debit { amount, .. } if *amount > self.balance => {
                Err(AccountError::InsufficientFunds {
                    balance: self.balance,
                    asked: *amount,
                })
            }
            Withdraw { amount } => Ok(vec![AccountEvent::Withdrawn { amount: *amount }]),
            Debit { transfer, amount } => Ok(vec![AccountEvent::TransferDebited {
                transfer: transfer.clone(),
                amount: *amount,
            }]),
            Credit { transfer, amount } => Ok(vec![AccountEvent::TransferCredited {
                transfer: transfer.clone(),
                amount: *amount,
            }]),
            Close if self.balance > 0 => Err(AccountError::NotEmpty(self.balance)),
            Close => Ok(vec![AccountEvent::Closed]),
        }
    }
}

impl ApplyAccountEvent for Account {
    fn on_opened(&mut self, owner: &str, currency: &str) {
        self.owner = Some(owner.to_owned());
        self.currency = Some(currency.to_owned());
    }

    fn on_deposited(&mut self, amount: &u64) {
        self.balance += amount;
    }

    fn on_withdrawn(&mut self, amount: &u64) {
        self.balance = self.balance.saturating_sub(*amount);
    }

    fn on_closed(&mut self) {
        self.closed = true;
    }

    fn on_transfer_debited(&mut self, _transfer: &str, amount: &u64) {
        self.balance = self.balance.saturating_sub(*amount);
    }

    fn on_transfer_credited(&mut self, _transfer: &str, amount: &u64) {
        self.balance += amount;
    }

    fn on_transfer_refunded(&mut self, _transfer: &str, amount: &u64) {
        self.balance += amount;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use es_core::testing::AggregateTest;

    fn opened() -> AccountEvent {
        AccountEvent::Opened {
            owner: "ann".into(),
            currency: "EUR".into(),
        }
    }

    #[test]
    fn withdrawals_and_debits_never_overdraw() {
        AggregateTest::<Account>::given([opened(), AccountEvent::Deposited { amount: 10 }])
            .when(AccountCommand::Withdraw { amount: 11 })
            .then_error(AccountError::InsufficientFunds {
                balance: 10,
                asked: 11,
            });
        AggregateTest::<Account>::given([opened(), AccountEvent::Deposited { amount: 10 }])
            .when(AccountCommand::Debit {
                transfer: "t1".into(),
                amount: 11,
            })
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

    #[test]
    fn closed_accounts_refuse_credits_but_take_refunds() {
        let closed = [opened(), AccountEvent::Closed];
        AggregateTest::<Account>::given(closed.clone())
            .when(AccountCommand::Credit {
                transfer: "t1".into(),
                amount: 5,
            })
            .then_error(AccountError::NotOpen);
        let state = AggregateTest::<Account>::given(closed)
            .when(AccountCommand::Refund {
                transfer: "t1".into(),
                amount: 5,
            })
            .then([AccountEvent::TransferRefunded {
                transfer: "t1".into(),
                amount: 5,
            }]);
        assert_eq!(state.balance, 5);
        AggregateTest::<Account>::given_nothing()
            .when(AccountCommand::Refund {
                transfer: "t1".into(),
                amount: 5,
            })
            .then_error(AccountError::NeverOpened);
    }

    #[tokio::test]
    async fn version_1_openings_load_in_euros() {
        use es_core::{EventStore, ExpectedVersion, InMemoryEventStore, NewEvent, Repository};
        use std::sync::Arc;

        upcasters()
            .validate::<AccountEvent>()
            .expect("every stored version lifts");
        let store = Arc::new(InMemoryEventStore::new());
        let stream = es_core::StreamId::new("account-carol").expect("a valid stream id");
        let v1 = serde_json::value::to_raw_value(&json!({ "owner": "Carol" })).expect("json");
        store
            .append(
                &stream,
                ExpectedVersion::NoStream,
                vec![NewEvent::new("Opened", 1, v1)],
            )
            .await
            .expect("append");
        let carol = Repository::<Account>::new(store)
            .with_upcasters(Arc::new(upcasters()))
            .load(&stream)
            .await
            .expect("the v1 event loads");
        assert_eq!(carol.state.owner.as_deref(), Some("Carol"));
        assert_eq!(carol.state.currency.as_deref(), Some("EUR"));
    }
}
