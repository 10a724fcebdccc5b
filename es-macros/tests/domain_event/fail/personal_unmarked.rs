use es_core::Personal;

#[derive(es_macros::DomainEvent, serde::Serialize, serde::Deserialize)]
enum Event {
    Registered {
        emails: Vec<Personal<String>>,
    },
}

fn main() {}
