//! Orchestration: the transfer saga moves money between two accounts one step at a time, and
//! undoes the debit when the credit is refused.
//!
//! ```text
//! TransferRequested ──> Debit(from) ──> TransferDebited ──> Credit(to) ──> TransferCredited ──> Complete
//!                            │                                   │
//!                         refused                             refused
//!                            ▼                                   ▼
//!                   TransferRejected (end)       CreditRefused ──> Refund(from) ──> TransferRefunded ──> Cancel
//! ```
//!
//! The saga is pure ([`TransferSaga::react`]); [`crate::bank::Bank`] executes its steps. A
//! runner (`es_core::SagaRunner` in memory, `es_postgres::PgSagaRunner` durably) feeds it.

use es_core::{Envelope, Saga};
use serde::{Deserialize, Serialize};

/// The events the saga follows: the transfer's own and the accounts' transfer steps. Variant
/// names are the stored event types, so one enum reads events of both aggregates.
#[derive(Clone, Debug, PartialEq, es_macros::DomainEvent, Serialize, Deserialize)]
pub enum TransferFlow {
    /// A transfer was asked for: start.
    TransferRequested {
        /// The account debited.
        from: String,
        /// The account credited.
        to: String,
        /// In cents.
        amount: u64,
    },
    /// The source account paid.
    TransferDebited {
        /// The transfer's id.
        transfer: String,
        /// In cents.
        amount: u64,
    },
    /// The target account received.
    TransferCredited {
        /// The transfer's id.
        transfer: String,
        /// In cents.
        amount: u64,
    },
    /// The source account got its money back.
    TransferRefunded {
        /// The transfer's id.
        transfer: String,
        /// In cents.
        amount: u64,
    },
    /// The source refused the debit.
    TransferRejected {
        /// The refusal.
        reason: String,
    },
    /// The target refused the credit.
    CreditRefused {
        /// The refusal.
        reason: String,
    },
    /// The transfer ended well.
    TransferCompleted,
    /// The transfer ended refunded.
    TransferCancelled {
        /// Why.
        reason: String,
    },
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
        use TransferFlow::*;
        match &event.payload {
            TransferDebited { transfer, .. }
            | TransferCredited { transfer, .. }
            | TransferRefunded { transfer, .. } => Some(transfer.clone()),
            _ => Some(event.stream_id.id().to_owned()),
        }
    }

    fn react(
        &self,
        state: &mut TransferProcess,
        event: &Envelope<TransferFlow>,
    ) -> Vec<TransferStep> {
        use TransferFlow::*;
        let Some(transfer) = self.instance_of(event) else {
            return Vec::new();
        };
        // Each outcome moves the workflow on only from the stage that waits for it, so an
        // event seen out of place (an operator's manual fix, say) changes nothing.
        let action = match (&event.payload, state.stage) {
            (TransferRequested { from, to, amount }, Stage::New) => {
                state.from = from.clone();
                state.to = to.clone();
                state.amount = *amount;
                state.stage = Stage::Debiting;
                TransferAction::Debit {
                    account: from.clone(),
                    amount: *amount,
                }
            }
            (TransferDebited { .. }, Stage::Debiting) => {
                state.stage = Stage::Crediting;
                TransferAction::Credit {
                    account: state.to.clone(),
                    amount: state.amount,
                }
            }
            (TransferCredited { .. }, Stage::Crediting) => {
                state.stage = Stage::Finishing;
                TransferAction::Complete
            }
            (CreditRefused { reason }, Stage::Crediting) => {
                state.stage = Stage::Refunding;
                state.reason = Some(reason.clone());
                TransferAction::Refund {
                    account: state.from.clone(),
                    amount: state.amount,
                }
            }
            (TransferRefunded { .. }, Stage::Refunding) => {
                state.stage = Stage::Finishing;
                TransferAction::Cancel {
                    reason: state.reason.clone().unwrap_or_default(),
                }
            }
            (TransferRejected { .. } | TransferCompleted | TransferCancelled { .. }, _) => {
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
            TransferFlow::TransferRequested {
                from: "alice".into(),
                to: "bob".into(),
                amount: 7,
            },
        )
    }

    fn account_step(
        account: &str,
        make: fn(String, u64) -> TransferFlow,
    ) -> Envelope<TransferFlow> {
        envelope(&format!("account-{account}"), make("t1".into(), 7))
    }

    #[test]
    fn a_refused_credit_is_compensated_by_a_refund() {
        let (state, actions) = steps(vec![
            requested(),
            account_step("alice", |transfer, amount| TransferFlow::TransferDebited {
                transfer,
                amount,
            }),
            envelope(
                "transfer-t1",
                TransferFlow::CreditRefused {
                    reason: "closed".into(),
                },
            ),
            account_step("alice", |transfer, amount| TransferFlow::TransferRefunded {
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
            account_step("bob", |transfer, amount| TransferFlow::TransferCredited {
                transfer,
                amount,
            })
        };
        let (state, actions) = steps(vec![credited(), requested(), credited()]);
        assert_eq!(actions.len(), 1, "only the debit: {actions:?}");
        assert_eq!(state.stage, Stage::Debiting);
    }
}
