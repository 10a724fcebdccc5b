use es_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, es_macros::DomainEvent, Serialize, Deserialize)]
enum Event {
    Opened { owner: String },
    #[event(name = "FundsDeposited", version = 3)]
    Deposited(u64),
    #[event(version = 2)]
    Closed,
}

fn main() {
    assert_eq!(Event::TYPES.len(), 3);
    assert_eq!(Event::TYPES[1].name, "FundsDeposited");
    assert_eq!(Event::TYPES[1].version, 3);
    for (event, name, version) in [
        (Event::Opened { owner: "ann".into() }, "Opened", 1),
        (Event::Deposited(5), "FundsDeposited", 3),
        (Event::Closed, "Closed", 2),
    ] {
        assert_eq!(event.event_type(), name);
        assert_eq!(event.schema_version(), version);
        let payload = event.encode().unwrap();
        assert_eq!(Event::decode(name, payload.get()).unwrap(), event);
    }
    let payload = serde_json::value::to_raw_value(&5).unwrap();
    assert!(matches!(
        Event::decode("Deposited", payload.get()),
        Err(es_core::DecodeError::UnknownType(_))
    ));
}
