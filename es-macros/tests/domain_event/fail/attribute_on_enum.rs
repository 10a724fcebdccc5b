#[derive(es_macros::DomainEvent, serde::Serialize, serde::Deserialize)]
#[event(version = 2)]
enum Event {
    Opened,
}

fn main() {}
