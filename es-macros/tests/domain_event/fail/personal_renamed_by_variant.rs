use es_core::Personal;

#[derive(es_macros::DomainEvent, serde::Serialize, serde::Deserialize)]
enum Event {
    #[serde(rename_all = "camelCase")]
    Registered {
        #[event(personal)]
        ship_to: Personal<String>,
    },
}

fn main() {}
