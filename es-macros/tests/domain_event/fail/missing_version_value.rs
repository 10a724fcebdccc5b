#[derive(es_macros::DomainEvent, serde::Serialize, serde::Deserialize)]
enum Event {
    #[event(version)]
    Opened,
}

fn main() {}
