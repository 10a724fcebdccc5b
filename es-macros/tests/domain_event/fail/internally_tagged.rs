#[derive(es_macros::DomainEvent, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type")]
enum Event {
    Opened { at: u64 },
}

fn main() {}
