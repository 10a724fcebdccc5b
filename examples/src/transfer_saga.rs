//! Orchestration: the transfer saga moves money between two accounts one step at a time, and
//! undoes the debit when the credit is refused.
//!
//! ```text
//! TransferRequested -> Debit(from) -> TransferDebited -> Credit(to) -> TransferCredited -> Complete
//!                           |                                |
//!                        refused                          refused
//!                           v                                v
//!                  TransferRejected (end)     CreditRefused -> Refund(from)
//!                                                            -> TransferRefunded -> Cancel
//! ```
//!
//! The saga is pure ([`Saga::react`]); [`crate::bank::Bank`] executes its steps. A runner
//! (`es_core::SagaRunner` in memory, `es_postgres::PgSagaRunner` durably) feeds it.

use es_core::{Envelope, Saga};
use serde::{Deserialize, Serialize};

use crate::account::AccountEvent;
use crate::transfer::TransferEvent;

/// The events the saga follows: every event of both aggregates, under their stored names.
#[derive(Clone, Debug, PartialEq, es_core::DomainEvent)]
pub enum TransferFlow {
    /// An account's event.
    #[event(flatten)]
    Account(AccountEvent),
    /// A transfer's event.
    #[event(flatten)]
    Transfer(TransferEvent),
}

/// One command the saga issues, for the transfer `transfer`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransferStep {
    /// The transfer's id.
    pub transfer: String,
    /// What to do.
    pub action: TransferAction,
}

/// What a step does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TransferAction {
    /// Debit the source account.
    Debit {
        /// The account.
        account: String,
        /// In cents.
        amount: u64,
    },
    /// Credit the target account.
    Credit {
        /// The account.
        account: String,
        /// In cents.
        amount: u64,
    },
    /// Compensate: refund the source account.
    Refund {
        /// The account.
        account: String,
        /// In cents.
        amount: u64,
    },
    /// Record on the transfer that it completed.
    Complete,
    /// Record on the transfer that it was cancelled.
    Cancel {
        /// Why.
        reason: String,
    },
}

/// Where one transfer's workflow stands: the saga's per-instance state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TransferProcess {
    /// The account debited.
    pub from: String,
    /// The account credited.
    pub to: String,
    /// In cents.
    pub amount: u64,
    /// The step it waits on.
    pub stage: Stage,
    /// Why the credit was refused, while refunding.
    pub reason: Option<String>,
}

/// The step a transfer's workflow waits on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    /// Nothing seen yet.
    #[default]
    New,
    /// Waiting for the debit's outcome.
    Debiting,
    /// Waiting for the credit's outcome.
    Crediting,
    /// Waiting for the refund.
    Refunding,
    /// Waiting for the transfer to record its end.
    Finishing,
    /// Ended.
    Done,
}

/// The orchestrator of transfers.
#[derive(Clone, Copy, Debug, Default)]
pub struct TransferSaga;

impl Saga for TransferSaga {
    type Event = TransferFlow;
    type State = TransferProcess;
    type Command = TransferStep;

    fn name(&self) -> &str {
        "transfer_saga"
    }

    fn instance_of(&self, event: &Envelope<TransferFlow>) -> Option<String> {
        use AccountEvent::*;
        match &event.payload {
            TransferFlow::Transfer(_) => Some(event.stream_id.id().to_owned()),
            TransferFlow::Account(
                TransferDebited { transfer, .. }
                | TransferCredited { transfer, .. }
                | TransferRefunded { transfer, .. },
            ) => Some(transfer.clone()),
            // Deposits, withdrawals...: not part of any transfer.
            TransferFlow::Account(_) => None,
        }
    }

    fn react(
        &self,
        state: &mut TransferProcess,
        event: &Envelope<TransferFlow>,
    ) -> Vec<TransferStep> {
        use TransferFlow::{Account, Transfer};
        let Some(transfer) = self.instance_of(event) else {
            return Vec::new();
        };
        // Each outcome moves the workflow on only from the stage that waits for it, so an
        // event seen out of place (an operator's manual fix, say) changes nothing.
        let action = match (&event.payload, state.stage) {
            (Transfer(TransferEvent::TransferRequested { from, to, amount }), Stage::New) => {
                state.from = from.clone();
                state.to = to.clone();
                state.amount = *amount;
                state.stage = Stage::Debiting;
                TransferAction::Debit {
                    account: from.clone(),
                    amount: *amount,
                }
            }
            (Account(AccountEvent::TransferDebited { .. }), Stage::Debiting) => {
                state.stage = Stage::Crediting;
                TransferAction::Credit {
                    account: state.to.clone(),
                    amount: state.amount,
                }
            }
            (Account(AccountEvent::TransferCredited { .. }), Stage::Crediting) => {
                state.stage = Stage::Finishing;
                TransferAction::Complete
            }
            (Transfer(TransferEvent::CreditRefused { reason }), Stage::Crediting) => {
                state.stage = Stage::Refunding;
                state.reason = Some(reason.clone());
                TransferAction::Refund {
                    account: state.from.clone(),
                    amount: state.amount,
                }
            }
            (Account(AccountEvent::TransferRefunded { .. }), Stage::Refunding) => {
                state.stage = Stage::Finishing;
                TransferAction::Cancel {
                    reason: state.reason.clone().unwrap_or_default(),
                }
            }
            (
                Transfer(
                    TransferEvent::TransferRejected { .. }
                    | TransferEvent::TransferCompleted
                    | TransferEvent::TransferCancelled { .. },
                ),
                _,
            ) => {
                state.stage = Stage::Done;
                return Vec::new();
            }
            _ => return Vec::new(),
        };
        vec![TransferStep { transfer, action }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use es_core::{Position, StreamId};
    use uuid::Uuid;

    fn envelope(stream: &str, payload: TransferFlow) -> Envelope<TransferFlow> {
        Envelope {
            event_id: Uuid::now_v7(),
            stream_id: StreamId::new(stream).expect("a valid stream id"),
            stream_version: 1,
            position: Position::START,
            event_type: String::new(),
            schema_version: 1,
            recorded_at: chrono::Utc::now(),
            correlation_id: Uuid::now_v7(),
            causation_id: None,
            metadata: Default::default(),
            split_index: 0,
            payload,
        }
    }

    fn steps(events: Vec<Envelope<TransferFlow>>) -> (TransferProcess, Vec<TransferAction>) {
        let mut state = TransferProcess::default();
        let actions = events
            .iter()
            .flat_map(|e| TransferSaga.react(&mut state, e))
            .map(|step| step.action)
            .collect();
        (state, actions)
    }

    fn requested() -> Envelope<TransferFlow> {
        envelope(
            "transfer-t1",
            TransferFlow::Transfer(TransferEvent::TransferRequested {
                from: "alice".into(),
                to: "bob".into(),
                amount: 7,
            }),
        )
    }

    fn account_step(
        account: &str,
        make: fn(String, u64) -> AccountEvent,
    ) -> Envelope<TransferFlow> {
        envelope(
            &format!("account-{account}"),
            TransferFlow::Account(make("t1".into(), 7)),
        )
    }

    #[test]
    fn a_refused_credit_is_compensated_by_a_refund() {
        let (state, actions) = steps(vec![
            requested(),
            account_step("alice", |transfer, amount| AccountEvent::TransferDebited {
                transfer,
                amount,
            }),
            envelope(
                "transfer-t1",
                TransferFlow::Transfer(TransferEvent::CreditRefused {
                    reason: "closed".into(),
                }),
            ),
            account_step("alice", |transfer, amount| AccountEvent::TransferRefunded {
                transfer,
                amount,
            }),
        ]);
        let account = |a: &str| a.to_owned();
        assert_eq!(
            actions,
            vec![
                TransferAction::Debit {
                    account: account("alice"),
                    amount: 7
                },
                TransferAction::Credit {
                    account: account("bob"),
                    amount: 7
                },
                TransferAction::Refund {
                    account: account("alice"),
                    amount: 7
                },
                TransferAction::Cancel {
                    reason: "closed".into()
                },
            ]
        );
        assert_eq!(state.stage, Stage::Finishing);
    }

    #[test]
    fn outcomes_out_of_place_change_nothing() {
        let credited = || {
            account_step("bob", |transfer, amount| AccountEvent::TransferCredited {
                transfer,
                amount,
            })
        };
        let (state, actions) = steps(vec![credited(), requested(), credited()]);
        assert_eq!(actions.len(), 1, "only the debit: {actions:?}");
        assert_eq!(state.stage, Stage::Debiting);
    }
}
