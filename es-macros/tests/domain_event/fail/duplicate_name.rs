#[derive(es_macros::DomainEvent, serde::Serialize, serde::Deserialize)]
enum Event {
    Opened,
    #[event(name = "Opened")]
    Reopened,
}

fn main() {}
