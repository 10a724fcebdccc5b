use es_core::Personal;

#[derive(es_macros::DomainEvent, serde::Serialize, serde::Deserialize)]
enum Event {
    Registered(#[event(personal)] Personal<String>),
}

fn main() {}
