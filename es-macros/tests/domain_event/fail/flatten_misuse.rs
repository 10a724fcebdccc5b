#[derive(es_macros::DomainEvent, serde::Serialize, serde::Deserialize)]
enum Inner {
    Opened,
}

#[derive(es_macros::DomainEvent, serde::Serialize, serde::Deserialize)]
enum NamedFlatten {
    #[event(flatten, name = "Renamed")]
    Account(Inner),
}

#[derive(es_macros::DomainEvent, serde::Serialize, serde::Deserialize)]
enum TwoFields {
    #[event(flatten)]
    Account(Inner, Inner),
}

#[derive(es_macros::DomainEvent, serde::Serialize, serde::Deserialize)]
#[event(flatten)]
struct NotAVariant {
    amount: u64,
}

fn main() {}
