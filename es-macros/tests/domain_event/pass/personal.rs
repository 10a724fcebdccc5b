use es_core::{DomainEvent, NewEvent, Personal, PersonalData};
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, es_macros::DomainEvent, Serialize, Deserialize)]
enum Customer {
    Registered {
        #[event(personal)]
        email: Personal<String>,
        #[event(personal)]
        r#type: Personal<u32>,
        plan: String,
    },
    Shipped {
        #[event(subject)]
        customer: u64,
        #[event(personal)]
        address: Personal<String>,
    },
    Closed,
}

#[derive(Debug, PartialEq, es_macros::DomainEvent, Serialize, Deserialize)]
struct Moved {
    #[event(subject)]
    person: String,
    #[event(personal)]
    city: Personal<String>,
}

#[derive(Debug, PartialEq, es_macros::DomainEvent)]
enum All {
    #[event(flatten)]
    Customer(Customer),
    #[event(flatten)]
    Moved(Moved),
}

fn main() {
    let registered = Customer::Registered {
        email: "a@b.c".to_owned().into(),
        r#type: Personal::Known(3),
        plan: "gold".into(),
    };
    assert_eq!(
        registered.personal_data(),
        Some(PersonalData { subject: None, fields: &["email", "type"] })
    );
    let shipped = Customer::Shipped { customer: 42, address: "x".to_owned().into() };
    assert_eq!(
        shipped.personal_data(),
        Some(PersonalData { subject: Some("42".into()), fields: &["address"] })
    );
    assert_eq!(Customer::Closed.personal_data(), None);
    let moved = Moved { person: "p-1".into(), city: "Oxford".to_owned().into() };
    assert_eq!(moved.personal_data().unwrap().subject.as_deref(), Some("p-1"));
    assert_eq!(All::Moved(moved).personal_data().unwrap().fields, &["city"]);
    assert_eq!(NewEvent::from_event(&registered).unwrap().personal.unwrap().fields, &["email", "type"]);

    // A redacted field decodes as such; the rest of the event as written.
    let redacted = Customer::decode("Registered", r#"{"email":{"$redacted":true},"type":{"$redacted":true},"plan":"gold"}"#).unwrap();
    assert_eq!(
        redacted,
        Customer::Registered { email: Personal::Redacted, r#type: Personal::Redacted, plan: "gold".into() }
    );
}
