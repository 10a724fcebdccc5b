//! The bank's command side: one command handler per aggregate, and the dispatcher that runs
//! the commands the transfer saga and the welcome-bonus policy issue.

use std::sync::Arc;

use async_trait::async_trait;
use es_core::{
    BoxError, CommandContext, CommandDispatcher, CommandError, CommandHandler, EventStore,
    Repository, SagaRunner, SnapshotStore,
};
use es_postgres::{PgEventStore, PgSagaRunner};
use uuid::Uuid;

use crate::account::{Account, AccountCommand};
use crate::transfer::{Transfer, TransferCommand, TransferError};
use crate::transfer_saga::{TransferAction, TransferSaga, TransferStep};
use crate::welcome_bonus::{PayBonus, WelcomeBonus};

/// The command handlers of the bank's aggregates.
#[derive(Clone)]
pub struct Bank {
    /// Accounts: read through the upcasters, snapshotted every 100 events.
    pub accounts: CommandHandler<Account>,
    /// Transfers.
    pub transfers: CommandHandler<Transfer>,
}

impl Bank {
    /// The bank over `store` (which carries the account upcasters, [`account::upcasters`]),
    /// with account snapshots in `snapshots`.
    pub fn new(store: Arc<dyn EventStore>, snapshots: Arc<dyn SnapshotStore>) -> Self {
        let accounts = Repository::new(Arc::clone(&store)).with_snapshot_store(snapshots);
        Self {
            accounts: CommandHandler::with_repository(accounts),
            transfers: CommandHandler::new(store),
        }
    }

    /// The transfer saga and the welcome-bonus policy on in-memory runners over `store`,
    /// dispatching to this bank. Both read account events through the store's upcasters.
    pub fn memory_sagas(
        &self,
        store: Arc<dyn EventStore>,
    ) -> (
        SagaRunner<TransferSaga, Bank>,
        SagaRunner<WelcomeBonus, Bank>,
    ) {
        (
            SagaRunner::new(Arc::clone(&store), TransferSaga, self.clone()),
            SagaRunner::new(store, WelcomeBonus::default(), self.clone()),
        )
    }

    /// The same two on durable PostgreSQL runners over `store`.
    pub fn pg_sagas(
        &self,
        store: &PgEventStore,
    ) -> (
        PgSagaRunner<TransferSaga, Bank>,
        PgSagaRunner<WelcomeBonus, Bank>,
    ) {
        // Four commands at once each: with three projections, what bank-admin's pool of 16
        // holds (see PgSagaRunner::pool_demand).
        (
            PgSagaRunner::new(store.clone(), TransferSaga, self.clone()).dispatch_concurrency(4),
            PgSagaRunner::new(store.clone(), WelcomeBonus::default(), self.clone())
                .dispatch_concurrency(4),
        )
    }

    /// Asks for a transfer, which the transfer saga then carries out, and returns its
    /// correlation id: the request's command id, which every event the saga causes carries on.
    pub async fn request_transfer(
        &self,
        transfer: &str,
        from: &str,
        to: &str,
        amount: u64,
    ) -> Result<Uuid, CommandError<TransferError>> {
        let request = TransferCommand::Request {
            from: from.into(),
            to: to.into(),
            amount,
        };
        let context = CommandContext::new();
        let correlation_id = context.effective_correlation_id();
        self.transfers
            .execute_with(transfer, request, context)
            .await?;
        Ok(correlation_id)
    }

    /// Runs `command` on `account`; when the account refuses, records `on_refusal` on the
    /// transfer instead, for the saga to react to. The refusal is recorded as a follow-up of
    /// the step, so a redelivered step finds it and is not tried again (the account's state may
    /// have changed since, and the step must keep its first outcome).
    async fn step_or_refusal(
        &self,
        transfer: &str,
        account: &str,
        command: AccountCommand,
        on_refusal: fn(String) -> TransferCommand,
        context: CommandContext,
    ) -> Result<(), BoxError> {
        let refusal = context.follow_up(0);
        if self.transfers.was_executed(transfer, &refusal).await? {
            return Ok(());
        }
        match self.accounts.execute_with(account, command, context).await {
            Ok(_) => Ok(()),
            Err(CommandError::Domain(refused)) => {
                let reason = format!("account {account}: {refused}");
                self.transfers
                    .execute_with(transfer, on_refusal(reason), refusal)
                    .await?;
                Ok(())
            }
            Err(other) => Err(other.into()),
        }
    }
}

#[async_trait]
impl CommandDispatcher<TransferStep> for Bank {
    async fn dispatch(&self, step: TransferStep, context: CommandContext) -> Result<(), BoxError> {
        let transfer = step.transfer;
        match step.action {
            TransferAction::Debit { account, amount } => {
                let debit = AccountCommand::Debit {
                    transfer: transfer.clone(),
                    amount,
                };
                let reject = |reason| TransferCommand::Reject { reason };
                self.step_or_refusal(&transfer, &account, debit, reject, context)
                    .await
            }
            TransferAction::Credit { account, amount } => {
                let credit = AccountCommand::Credit {
                    transfer: transfer.clone(),
                    amount,
                };
                let refuse = |reason| TransferCommand::RefuseCredit { reason };
                self.step_or_refusal(&transfer, &account, credit, refuse, context)
                    .await
            }
            // A refused refund is a defect, not an outcome: it fails the dispatch, which
            // keeps the command pending and visible to operators.
            TransferAction::Refund { account, amount } => {
                let refund = AccountCommand::Refund { transfer, amount };
                self.accounts
                    .execute_with(&account, refund, context)
                    .await?;
                Ok(())
            }
            TransferAction::Complete => {
                self.transfers
                    .execute_with(&transfer, TransferCommand::Complete, context)
                    .await?;
                Ok(())
            }
            TransferAction::Cancel { reason } => {
                self.transfers
                    .execute_with(&transfer, TransferCommand::Cancel { reason }, context)
                    .await?;
                Ok(())
            }
        }
    }
}

#[async_trait]
impl CommandDispatcher<PayBonus> for Bank {
    async fn dispatch(&self, bonus: PayBonus, context: CommandContext) -> Result<(), BoxError> {
        let deposit = AccountCommand::Deposit {
            amount: bonus.amount,
        };
        let context = context.with_metadata("reason", "welcome bonus".into());
        match self
            .accounts
            .execute_with(&bonus.account, deposit, context)
            .await
        {
            // Closed before the bonus arrived: no bonus, nothing to retry.
            Ok(_) | Err(CommandError::Domain(_)) => Ok(()),
            Err(other) => Err(other.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account;
    use crate::transfer::TransferStatus;
    use es_core::{InMemoryEventStore, InMemorySnapshotStore};

    async fn bank_with(accounts: &[(&str, u64)]) -> Bank {
        let bank = Bank::new(
            Arc::new(InMemoryEventStore::new().with_upcasters(Arc::new(account::upcasters()))),
            Arc::new(InMemorySnapshotStore::new()),
        );
        for (id, balance) in accounts {
            let open = AccountCommand::Open {
                owner: id.to_string(),
                currency: "EUR".into(),
            };
            bank.accounts.execute(id, open).await.unwrap();
            if *balance > 0 {
                let deposit = AccountCommand::Deposit { amount: *balance };
                bank.accounts.execute(id, deposit).await.unwrap();
            }
        }
        bank
    }

    /// Transfer t1's debit of 10 from alice, with the context its every delivery carries.
    fn alice_debits_10() -> (TransferStep, CommandContext) {
        let debit = TransferStep {
            transfer: "t1".into(),
            action: TransferAction::Debit {
                account: "alice".into(),
                amount: 10,
            },
        };
        (
            debit,
            CommandContext::new().idempotent(uuid::Uuid::now_v7()),
        )
    }

    /// A redelivered step keeps its first outcome: a debit refused, then redelivered after the
    /// account was funded, must not take the money of a transfer already rejected.
    #[tokio::test]
    async fn a_refused_step_stays_refused_when_redelivered() {
        let bank = bank_with(&[("alice", 0), ("bob", 0)]).await;
        bank.request_transfer("t1", "alice", "bob", 10)
            .await
            .unwrap();
        let (debit, context) = alice_debits_10();
        bank.dispatch(debit.clone(), context.clone()).await.unwrap();
        let rejected = bank.transfers.load("t1").await.unwrap().state;
        assert_eq!(rejected.status, TransferStatus::Rejected);

        let deposit = AccountCommand::Deposit { amount: 100 };
        bank.accounts.execute("alice", deposit).await.unwrap();
        bank.dispatch(debit, context).await.unwrap();
        let alice = bank.accounts.load("alice").await.unwrap();
        assert_eq!(
            alice.state.balance, 100,
            "the redelivered debit did not run"
        );
        let transfer = bank.transfers.load("t1").await.unwrap();
        assert_eq!(transfer.version, 2, "the refusal was recorded once");
    }

    /// A redelivered step that succeeded does nothing the second time.
    #[tokio::test]
    async fn a_successful_step_runs_once_when_redelivered() {
        let bank = bank_with(&[("alice", 50), ("bob", 0)]).await;
        bank.request_transfer("t1", "alice", "bob", 10)
            .await
            .unwrap();
        let (debit, context) = alice_debits_10();
        for _ in 0..3 {
            bank.dispatch(debit.clone(), context.clone()).await.unwrap();
        }
        assert_eq!(bank.accounts.load("alice").await.unwrap().state.balance, 40);
    }
}
