use es_core::Personal;

#[derive(es_macros::DomainEvent, serde::Serialize, serde::Deserialize)]
enum Event {
    Registered {
        #[event(personal, subject)]
        email: Personal<String>,
    },
}

fn main() {}
