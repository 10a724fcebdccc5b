#[derive(Default, es_macros::Aggregate)]
struct Account;

fn main() {}
