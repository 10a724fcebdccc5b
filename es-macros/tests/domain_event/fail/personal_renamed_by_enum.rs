use es_core::Personal;

#[derive(es_macros::DomainEvent, serde::Serialize, serde::Deserialize)]
#[serde(rename_all_fields = "camelCase")]
enum Event {
    Registered {
        #[event(personal)]
        ship_to: Personal<String>,
    },
}

fn main() {}
