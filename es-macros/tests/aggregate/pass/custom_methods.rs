use es_core::Aggregate;
use serde::{Deserialize, Serialize};

#[derive(Default, es_macros::Aggregate)]
#[aggregate(category = "light", command = (), event = Switched, error = Never, decide = toggle, apply = evolve)]
struct Light {
    on: bool,
}

#[derive(Debug, es_macros::DomainEvent, Serialize, Deserialize)]
enum Switched {
    On,
    Off,
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Light {
    fn toggle(&self, _: &()) -> Result<Vec<Switched>, Never> {
        Ok(vec![if self.on { Switched::Off } else { Switched::On }])
    }

    fn evolve(&mut self, event: &Switched) {
        self.on = matches!(event, Switched::On);
    }
}

fn main() {
    let mut light = Light::default();
    for event in light.decide(&()).unwrap() {
        light.apply(&event);
    }
    assert!(light.on);
    assert_eq!(Light::SNAPSHOT_VERSION, 1);
}
