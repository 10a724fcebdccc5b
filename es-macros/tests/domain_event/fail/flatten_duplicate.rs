use es_core::DomainEvent;

#[derive(es_macros::DomainEvent, serde::Serialize, serde::Deserialize)]
enum Inner {
    Opened,
}

/// `Opened` would decode to two variants.
#[derive(es_macros::DomainEvent, serde::Serialize, serde::Deserialize)]
enum Clash {
    #[event(flatten)]
    Account(Inner),
    Opened,
}

fn main() {
    let _ = Clash::TYPES;
}
