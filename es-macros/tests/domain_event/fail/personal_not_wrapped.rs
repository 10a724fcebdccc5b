#[derive(es_macros::DomainEvent, serde::Serialize, serde::Deserialize)]
enum Event {
    Registered {
        #[event(personal)]
        email: String,
    },
}

fn main() {}
