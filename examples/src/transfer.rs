//! A money transfer between two accounts: the record of one workflow. The transfer saga
//! ([`crate::transfer_saga`]) moves the money; this aggregate holds what was asked and how it
//! ended.

use serde::{Deserialize, Serialize};

/// What can be asked of a transfer.
#[derive(Clone, Debug)]
pub enum TransferCommand {
    /// Ask to move `amount` from one account to another.
    Request {
        /// The account debited.
        from: String,
        /// The account credited.
        to: String,
        /// In cents.
        amount: u64,
    },
    /// Record that the source account refused the debit: nothing moved.
    Reject {
        /// The account's refusal.
        reason: String,
    },
    /// Record that the target account refused the credit: the debit must be refunded.
    RefuseCredit {
        /// The account's refusal.
        reason: String,
    },
    /// Record that the money arrived.
    Complete,
    /// Record that the refund is done: the transfer is cancelled.
    Cancel {
        /// Why it could not complete.
        reason: String,
    },
}

/// What happened to a transfer.
#[derive(Clone, Debug, PartialEq, es_core::DomainEvent, Serialize, Deserialize)]
#[event(apply_trait = ApplyTransferEvent)]
pub enum TransferEvent {
    /// A transfer was asked for.
    TransferRequested {
        /// The account debited.
        from: String,
        /// The account credited.
        to: String,
        /// In cents.
        amount: u64,
    },
    /// The source refused the debit; nothing moved.
    TransferRejected {
        /// The account's refusal.
        reason: String,
    },
    /// The target refused the credit; a refund follows.
    CreditRefused {
        /// The account's refusal.
        reason: String,
    },
    /// The money arrived.
    TransferCompleted,
    /// The debit was refunded; the transfer did not happen.
    TransferCancelled {
        /// Why it could not complete.
        reason: String,
    },
}

/// Why a transfer refused a command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// Requesting a transfer id twice.
    #[error("this transfer was already requested")]
    AlreadyRequested,
    /// A transfer from an account to itself.
    #[error("a transfer needs two different accounts")]
    SameAccount,
    /// A transfer of nothing.
    #[error("amounts must be positive")]
    ZeroAmount,
    /// A step recorded on a transfer nobody requested.
    #[error("no such transfer")]
    NotRequested,
    /// A step recorded on a transfer that already ended.
    #[error("the transfer already ended: {0:?}")]
    Ended(TransferStatus),
}

/// Where a transfer stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferStatus {
    /// Not requested.
    #[default]
    None,
    /// Requested; the saga is moving the money.
    Pending,
    /// The target refused the credit; the saga is refunding the source.
    Compensating,
    /// The money arrived.
    Completed,
    /// The source refused the debit.
    Rejected,
    /// Refunded after the target refused the credit.
    Cancelled,
}

impl TransferStatus {
    /// Whether the transfer ended.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Rejected | Self::Cancelled)
    }
}

/// The state of a transfer.
#[derive(Clone, Debug, Default, PartialEq, es_core::Aggregate, Serialize, Deserialize)]
#[aggregate(
    category = "transfer",
    command = TransferCommand,
    event = TransferEvent,
    error = TransferError
)]
pub struct Transfer {
    /// The account debited.
    pub from: String,
    /// The account credited.
    pub to: String,
    /// In cents.
    pub amount: u64,
    /// Where it stands.
    pub status: TransferStatus,
    /// Why it did not complete, when it did not.
    pub reason: Option<String>,
}

impl Transfer {
    fn decide(&self, command: &TransferCommand) -> Result<Vec<TransferEvent>, TransferError> {
        use TransferCommand::*;
        use TransferStatus as S;
        match (command, self.status) {
            (Request { .. }, S::None) => {}
            (Request { .. }, _) => return Err(TransferError::AlreadyRequested),
            (_, S::None) => return Err(TransferError::NotRequested),
            (_, status) if status.is_final() => return Err(TransferError::Ended(status)),
            _ => {}
        }
        Ok(vec![match command.clone() {
            Request { from, to, .. } if from == to => return Err(TransferError::SameAccount),
            Request { amount: 0, .. } => return Err(TransferError::ZeroAmount),
            Request { from, to, amount } => TransferEvent::TransferRequested { from, to, amount },
            Reject { reason } => TransferEvent::TransferRejected { reason },
            RefuseCredit { reason } => TransferEvent::CreditRefused { reason },
            Complete => TransferEvent::TransferCompleted,
            Cancel { reason } => TransferEvent::TransferCancelled { reason },
        }])
    }
}

impl ApplyTransferEvent for Transfer {
    fn on_transfer_requested(&mut self, from: &str, to: &str, amount: &u64) {
        self.from = from.to_owned();
        self.to = to.to_owned();
        self.amount = *amount;
        self.status = TransferStatus::Pending;
    }

    fn on_transfer_rejected(&mut self, reason: &str) {
        self.status = TransferStatus::Rejected;
        self.reason = Some(reason.to_owned());
    }

    fn on_credit_refused(&mut self, reason: &str) {
        self.status = TransferStatus::Compensating;
        self.reason = Some(reason.to_owned());
    }

    fn on_transfer_completed(&mut self) {
        self.status = TransferStatus::Completed;
    }

    fn on_transfer_cancelled(&mut self, reason: &str) {
        self.status = TransferStatus::Cancelled;
        self.reason = Some(reason.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use es_core::testing::AggregateTest;

    fn requested() -> TransferEvent {
        TransferEvent::TransferRequested {
            from: "alice".into(),
            to: "bob".into(),
            amount: 5,
        }
    }

    #[test]
    fn a_transfer_is_requested_once_between_two_accounts() {
        AggregateTest::<Transfer>::given_nothing()
            .when(TransferCommand::Request {
                from: "alice".into(),
                to: "alice".into(),
                amount: 5,
            })
            .then_error(TransferError::SameAccount);
        AggregateTest::<Transfer>::given([requested()])
            .when(TransferCommand::Request {
                from: "alice".into(),
                to: "bob".into(),
                amount: 5,
            })
            .then_error(TransferError::AlreadyRequested);
    }

    #[test]
    fn an_ended_transfer_takes_no_more_steps() {
        AggregateTest::<Transfer>::given([requested(), TransferEvent::TransferCompleted])
            .when(TransferCommand::Cancel {
                reason: "late".into(),
            })
            .then_error(TransferError::Ended(TransferStatus::Completed));
        AggregateTest::<Transfer>::given_nothing()
            .when(TransferCommand::Complete)
            .then_error(TransferError::NotRequested);
        let state = AggregateTest::<Transfer>::given([
            requested(),
            TransferEvent::CreditRefused {
                reason: "closed".into(),
            },
        ])
        .when(TransferCommand::Cancel {
            reason: "closed".into(),
        })
        .then([TransferEvent::TransferCancelled {
            reason: "closed".into(),
        }]);
        assert_eq!(state.status, TransferStatus::Cancelled);
    }
}
