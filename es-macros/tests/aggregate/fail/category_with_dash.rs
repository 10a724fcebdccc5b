#[derive(Default, es_macros::Aggregate)]
#[aggregate(category = "bank-account", command = (), event = E, error = std::fmt::Error)]
struct Account;

fn main() {}
