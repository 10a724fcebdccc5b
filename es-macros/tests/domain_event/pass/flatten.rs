use es_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, es_macros::DomainEvent, Serialize, Deserialize)]
enum AccountEvent {
    Opened { owner: String },
    #[event(version = 2)]
    Deposited { cents: u64 },
}

#[derive(Debug, PartialEq, es_macros::DomainEvent, Serialize, Deserialize)]
struct TransferRequested {
    amount: u64,
}

/// A reader of both aggregates' events, plus one event type of its own.
#[derive(Debug, PartialEq, es_macros::DomainEvent, Serialize, Deserialize)]
#[event(apply_trait = ApplyFlow)]
enum Flow {
    #[event(flatten)]
    Account(AccountEvent),
    #[event(flatten)]
    Transfer(TransferRequested),
    #[event(name = "Audited")]
    Audit { by: String },
}

/// Only flattened variants: no serde needed.
#[derive(Debug, PartialEq, es_macros::DomainEvent)]
enum Flattened {
    #[event(flatten)]
    Account(AccountEvent),
}

struct Seen(Vec<String>);

impl ApplyFlow for Seen {
    fn on_account(&mut self, event: &AccountEvent) {
        self.0.push(event.event_type().to_owned());
    }
    fn on_transfer(&mut self, _: &TransferRequested) {
        self.0.push("transfer".into());
    }
    fn on_audit(&mut self, by: &str) {
        self.0.push(by.to_owned());
    }
}

fn main() {
    let names: Vec<_> = Flow::TYPES.iter().map(|t| (t.name, t.version)).collect();
    assert_eq!(
        names,
        [("Opened", 1), ("Deposited", 2), ("TransferRequested", 1), ("Audited", 1)]
    );
    for (event, name, version, json) in [
        (Flow::Account(AccountEvent::Opened { owner: "ann".into() }), "Opened", 1, r#"{"owner":"ann"}"#),
        (Flow::Account(AccountEvent::Deposited { cents: 5 }), "Deposited", 2, r#"{"cents":5}"#),
        (Flow::Transfer(TransferRequested { amount: 7 }), "TransferRequested", 1, r#"{"amount":7}"#),
        (Flow::Audit { by: "ops".into() }, "Audited", 1, r#"{"by":"ops"}"#),
    ] {
        assert_eq!(event.event_type(), name);
        assert_eq!(event.schema_version(), version);
        let payload = event.encode().unwrap();
        assert_eq!(payload.get(), json, "the payload is the inner event's own");
        assert_eq!(Flow::decode(name, payload.get()).unwrap(), event);
    }
    let payload = serde_json::value::to_raw_value(&5).unwrap();
    assert!(matches!(
        Flow::decode("Closed", payload.get()),
        Err(es_core::DecodeError::UnknownType(_))
    ));

    let mut seen = Seen(Vec::new());
    Flow::Account(AccountEvent::Deposited { cents: 1 }).apply_to(&mut seen);
    Flow::Audit { by: "ops".into() }.apply_to(&mut seen);
    assert_eq!(seen.0, ["Deposited", "ops"]);

    assert_eq!(Flattened::TYPES.len(), 2);
    let payload = Flattened::Account(AccountEvent::Deposited { cents: 3 }).encode().unwrap();
    assert_eq!(
        Flattened::decode("Deposited", payload.get()).unwrap(),
        Flattened::Account(AccountEvent::Deposited { cents: 3 })
    );
}
