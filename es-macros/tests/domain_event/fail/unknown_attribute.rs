#[derive(es_macros::DomainEvent, serde::Serialize, serde::Deserialize)]
enum Event {
    #[event(nmae = "Opened")]
    Opened,
}

fn main() {}
