#[derive(es_macros::DomainEvent, serde::Serialize, serde::Deserialize)]
enum Event {}

fn main() {}
