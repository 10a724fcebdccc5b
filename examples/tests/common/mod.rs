//! What several tests run: one transfer on PostgreSQL, start to end.

use std::sync::Arc;

use es_core::{CommandContext, EventStore, RecordedEvent};
use es_examples::account::{self, AccountCommand};
use es_examples::bank::Bank;
use es_postgres::PgSnapshotStore;
use es_postgres::testing::TestDatabase;
use uuid::Uuid;

/// Opens alice and bob, deposits into alice, and carries out transfer `t-1` of 25.00 from
/// alice to bob through the transfer saga (fed and dispatched step by step on this task).
/// Returns the transfer's correlation id and its events; the schema is dropped.
pub async fn one_transfer() -> (Uuid, Vec<RecordedEvent>) {
    let db = TestDatabase::new().await;
    let store = db
        .store
        .clone()
        .with_upcasters(Arc::new(account::upcasters()));
    let bank = Bank::new(
        Arc::new(store.clone()),
        Arc::new(PgSnapshotStore::new(&store)),
    );
    for (id, owner) in [("alice", "Alice"), ("bob", "Bob")] {
        let open = AccountCommand::Open {
            owner: owner.into(),
            currency: "EUR".into(),
        };
        bank.accounts
            .execute_with(id, open, CommandContext::new())
            .await
            .expect("opened");
    }
    bank.accounts
        .execute_with(
            "alice",
            AccountCommand::Deposit { amount: 10_000 },
            CommandContext::new(),
        )
        .await
        .expect("deposited");
    let (transfers, _) = bank.pg_sagas(&store);
    let correlation = bank
        .request_transfer("t-1", "alice", "bob", 2_500)
        .await
        .expect("requested");
    // Feed, then dispatch, until the transfer has run its course.
    for _ in 0..20 {
        db.settle().await;
        transfers.catch_up().await.expect("fed");
        if transfers.dispatch_pending().await.expect("dispatched") == 0
            && transfers.pending().await.expect("counted") == 0
        {
            break;
        }
    }
    let stored = store.read_correlated(correlation, 100).await.expect("read");
    db.drop().await;
    (correlation, stored)
}
