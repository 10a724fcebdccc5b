#[derive(Default, es_macros::Aggregate)]
#[aggregate(command = (), event = E, error = std::fmt::Error)]
struct Account;

fn main() {}
