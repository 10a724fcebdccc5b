#[derive(Default, es_macros::Aggregate)]
#[aggregate(category = "account", comand = (), event = E, error = std::fmt::Error)]
struct Account;

fn main() {}
