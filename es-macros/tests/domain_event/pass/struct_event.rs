use es_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, es_macros::DomainEvent, Serialize, Deserialize)]
#[event(name = "user.registered", version = 2)]
struct UserRegistered {
    #[serde(rename = "e-mail")]
    email: String,
}

fn main() {
    let event = UserRegistered { email: "a@b.c".into() };
    assert_eq!(event.event_type(), "user.registered");
    assert_eq!(event.schema_version(), 2);
    let payload = event.encode().unwrap();
    assert_eq!(payload.get(), r#"{"e-mail":"a@b.c"}"#);
    assert_eq!(UserRegistered::decode("user.registered", payload.get()).unwrap(), event);
}
