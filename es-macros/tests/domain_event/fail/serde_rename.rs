#[derive(es_macros::DomainEvent, serde::Serialize, serde::Deserialize)]
enum Event {
    #[serde(rename = "opened")]
    Opened,
}

fn main() {}
