#[derive(Default, es_macros::Aggregate)]
#[aggregate(category = "account", command = (), event = E, error = std::fmt::Error, snapshot_every = 0)]
struct Account;

fn main() {}
