#[derive(es_macros::DomainEvent, serde::Serialize, serde::Deserialize)]
enum Event {
    Moved {
        #[event(subject)]
        customer: String,
        city: String,
    },
}

fn main() {}
