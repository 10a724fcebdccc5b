#[derive(es_macros::DomainEvent)]
union Event {
    a: u32,
}

fn main() {}
