#[derive(es_macros::Aggregate)]
#[aggregate(category = "account")]
enum Account {
    Open,
}

fn main() {}
