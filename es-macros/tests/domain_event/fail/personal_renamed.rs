use es_core::Personal;

#[derive(es_macros::DomainEvent, serde::Serialize, serde::Deserialize)]
struct Registered {
    #[event(personal)]
    #[serde(rename = "mail")]
    email: Personal<String>,
}

fn main() {}
