#[derive(es_macros::DomainEvent, serde::Serialize, serde::Deserialize)]
enum Event {
    #[event(version = 0)]
    Opened,
}

fn main() {}
