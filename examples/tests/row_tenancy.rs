//! The bank for two tenants sharing one row-tenancy store: the same account and transfer ids
//! in each, both transfer sagas running at once, snapshots kept; each tenant's money moves
//! within its own rows only.

use std::sync::Arc;

use es_core::CommandContext;
use es_examples::account::{self, AccountCommand};
use es_examples::bank::Bank;
use es_examples::transfer::TransferStatus;
use es_postgres::testing::TestTenancy;
use es_postgres::{PgEventStore, PgSnapshotStore};

async fn bank_of(store: &PgEventStore, deposit: u64) -> Bank {
    let bank = Bank::new(
        Arc::new(store.clone()),
        Arc::new(PgSnapshotStore::new(store)),
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
            AccountCommand::Deposit { amount: deposit },
            CommandContext::new(),
        )
        .await
        .expect("deposited");
    bank
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_run_the_same_bank_in_one_store_apart() {
    let fixture = TestTenancy::new(&["acme", "globex"]).await;
    let upcasters = Arc::new(account::upcasters());
    let acme = fixture
        .open("acme")
        .await
        .with_upcasters(Arc::clone(&upcasters));
    let globex = fixture.open("globex").await.with_upcasters(upcasters);
    let acme_bank = bank_of(&acme, 10_000).await;
    let globex_bank = bank_of(&globex, 500).await;
    // The same transfer id in both: acme's succeeds, globex's is refused (too little money).
    acme_bank
        .request_transfer("t-1", "alice", "bob", 2_500)
        .await
        .expect("requested");
    globex_bank
        .request_transfer("t-1", "alice", "bob", 2_500)
        .await
        .expect("requested");

    // Both tenants' transfer sagas, fed and dispatched side by side.
    let (acme_saga, _) = acme_bank.pg_sagas(&acme);
    let (globex_saga, _) = globex_bank.pg_sagas(&globex);
    for _ in 0..40 {
        fixture.db.settle().await;
        let (a, g) = tokio::join!(acme_saga.catch_up(), globex_saga.catch_up());
        a.expect("acme fed");
        g.expect("globex fed");
        let (a, g) = tokio::join!(acme_saga.dispatch_pending(), globex_saga.dispatch_pending());
        let dispatched = a.expect("acme dispatched") + g.expect("globex dispatched");
        let pending = acme_saga.pending().await.expect("counted")
            + globex_saga.pending().await.expect("counted");
        if dispatched == 0 && pending == 0 {
            break;
        }
    }
    let balance =
        async |bank: &Bank, id: &str| bank.accounts.load(id).await.expect("loaded").state.balance;
    assert_eq!(balance(&acme_bank, "alice").await, 7_500);
    assert_eq!(balance(&acme_bank, "bob").await, 2_500);
    assert_eq!(
        balance(&globex_bank, "alice").await,
        500,
        "refused: nothing moved"
    );
    assert_eq!(balance(&globex_bank, "bob").await, 0);
    let status = async |bank: &Bank| {
        bank.transfers
            .load("t-1")
            .await
            .expect("loaded")
            .state
            .status
    };
    assert_eq!(status(&acme_bank).await, TransferStatus::Completed);
    assert_eq!(status(&globex_bank).await, TransferStatus::Rejected);
}
