use es_core::{Aggregate, SnapshotPolicy};
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, es_macros::Aggregate, Serialize, Deserialize)]
#[aggregate(
    category = "account",
    command = Command,
    event = Event,
    error = Error,
    snapshot_version = 3,
    snapshot_every = 50
)]
struct Account {
    owner: Option<String>,
    balance: u64,
}

enum Command {
    Open(String),
    Deposit(u64),
}

#[derive(Debug, PartialEq, es_macros::DomainEvent, Serialize, Deserialize)]
#[event(apply_trait = ApplyEvent)]
enum Event {
    Opened { owner: String },
    #[event(name = "FundsDeposited", version = 2)]
    Deposited(u64),
    Frozen,
}

#[derive(Debug, thiserror::Error)]
#[error("not open")]
struct Error;

impl Account {
    fn decide(&self, command: &Command) -> Result<Vec<Event>, Error> {
        match command {
            Command::Open(owner) => Ok(vec![Event::Opened { owner: owner.clone() }]),
            Command::Deposit(_) if self.owner.is_none() => Err(Error),
            Command::Deposit(amount) => Ok(vec![Event::Deposited(*amount)]),
        }
    }
}

impl ApplyEvent for Account {
    fn on_opened(&mut self, owner: &str) {
        self.owner = Some(owner.to_owned());
    }
    fn on_deposited(&mut self, amount: &u64) {
        self.balance += amount;
    }
    fn on_frozen(&mut self) {}
}

fn main() {
    assert_eq!(Account::CATEGORY, "account");
    assert_eq!(Account::SNAPSHOT_VERSION, 3);
    assert!(matches!(Account::snapshot_policy(), SnapshotPolicy::EveryNEvents(50)));
    let mut account = Account::default();
    assert!(account.decide(&Command::Deposit(1)).is_err());
    for command in [Command::Open("ann".into()), Command::Deposit(7)] {
        for event in account.decide(&command).unwrap() {
            account.apply(&event);
        }
    }
    assert_eq!((account.owner.as_deref(), account.balance), (Some("ann"), 7));
}
