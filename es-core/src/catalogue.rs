//! The event types a service's code can read: what a deploy's schema gate checks stored events
//! against, and the catalogue published to teams that consume the events.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::{DomainEvent, Upcasters};

/// One event type of a catalogue.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct CatalogueEntry {
    /// The type name, as stored.
    pub name: String,
    /// The schema version the code writes and reads.
    pub version: u32,
    /// The Rust type (enum) that holds it.
    pub rust_type: &'static str,
    /// A JSON Schema of its payload, when one was given.
    pub schema: Option<Value>,
}

/// Every event type a service's code reads, at its current schema version, with the
/// upcasters that lift older versions (and renamed, split or retired types).
///
/// ```
/// use std::sync::Arc;
/// use es_core::testing::evolution::{LedgerEvent, ledger_upcasters};
/// use es_core::EventCatalogue;
///
/// let catalogue = EventCatalogue::new(Arc::new(ledger_upcasters())).add::<LedgerEvent>();
/// assert_eq!(catalogue.unreadable("Credited", 3), None);
/// assert_eq!(catalogue.unreadable("Credited", 1), None); // lifted by an upcaster
/// assert!(catalogue.unreadable("Credited", 4).unwrap().contains("newer"));
/// assert!(catalogue.unreadable("Refunded", 1).unwrap().contains("no event type"));
/// ```
#[derive(Clone, Default)]
pub struct EventCatalogue {
    entries: BTreeMap<String, CatalogueEntry>,
    /// Names registered at two different versions (two enums disagree).
    conflicts: Vec<(String, u32, u32)>,
    upcasters: Arc<Upcasters>,
}

impl EventCatalogue {
    /// An empty catalogue reading through `upcasters` (the store's).
    pub fn new(upcasters: Arc<Upcasters>) -> Self {
        Self {
            upcasters,
            ..Self::default()
        }
    }

    /// Adds every type of `E` (an aggregate's events, or an application-wide enum).
    pub fn add<E: DomainEvent>(self) -> Self {
        self.add_with_schemas::<E>(|_| None)
    }

    /// Adds every type of `E`, with the JSON Schema `schema` gives for a type name (`None`
    /// where there is none).
    pub fn add_with_schemas<E: DomainEvent>(
        mut self,
        schema: impl Fn(&str) -> Option<Value>,
    ) -> Self {
        for t in E::TYPES {
            let entry = CatalogueEntry {
                name: t.name.to_owned(),
                version: t.version,
                rust_type: std::any::type_name::<E>(),
                schema: schema(t.name),
            };
            match self.entries.get_mut(t.name) {
                Some(existing) if existing.version != t.version => {
                    self.conflicts
                        .push((t.name.to_owned(), existing.version, t.version));
                }
                Some(existing) => {
                    if existing.schema.is_none() {
                        existing.schema = entry.schema;
                    }
                }
                None => {
                    self.entries.insert(t.name.to_owned(), entry);
                }
            }
        }
        self
    }

    /// The types, by name.
    pub fn entries(&self) -> impl Iterator<Item = &CatalogueEntry> {
        self.entries.values()
    }

    /// Names two registered enums give different current versions: `(name, one, other)`.
    pub fn conflicts(&self) -> &[(String, u32, u32)] {
        &self.conflicts
    }

    /// Why an event stored as `event_type` at `version` would not decode with this code;
    /// `None` when it would.
    pub fn unreadable(&self, event_type: &str, version: u32) -> Option<String> {
        if crate::lifecycle::is_store_type(event_type) {
            // The store's own (a tombstone): readers pass over it unless they take it.
            return None;
        }
        match self.entries.get(event_type) {
            Some(entry) if version > entry.version => Some(format!(
                "stored at schema version {version}, newer than this code's {}: written by a \
                 newer release",
                entry.version
            )),
            Some(entry) if version == entry.version => None,
            // Where the chain ends is for `unreadable_sample` to find out, with a payload.
            Some(_) if self.upcasters.lifts_from(event_type, version) => None,
            Some(entry) => Some(format!(
                "no upcaster lifts version {version} (current: {})",
                entry.version
            )),
            // Renamed, split or retired by an upcaster: its chain is the upcasters' to check.
            None if self.upcasters.lifts_from(event_type, version) => None,
            None if self.upcasters.lifts(event_type) => Some(format!(
                "upcasters lift other versions of {event_type}, but not version {version}"
            )),
            None => Some(
                "no event type of this code has this name and no upcaster lifts it (renamed \
                 or removed without an upcaster?)"
                    .to_owned(),
            ),
        }
    }

    /// Whether this code needs a stored payload to judge `(event_type, version)`: an upcaster
    /// lifts it, and only running the chain on a real payload says what it ends as.
    pub fn needs_sample(&self, event_type: &str, version: u32) -> bool {
        !crate::lifecycle::is_store_type(event_type)
            && self.upcasters.lifts_from(event_type, version)
    }

    /// Why a stored event of `event_type` at `version`, with `payload` (a stored sample),
    /// would not decode: runs its upcaster chain and checks that each event it ends as is a
    /// type of this code at its current version. `None` when every one is (or the chain
    /// retires the event).
    pub fn unreadable_sample(
        &self,
        event_type: &str,
        version: u32,
        payload: Value,
    ) -> Option<String> {
        if let Some(reason) = self.unreadable(event_type, version) {
            return Some(reason);
        }
        let lifted = match self.upcasters.lift(event_type, version, payload) {
            Ok(lifted) => lifted,
            Err(reason) => return Some(format!("upcasting a stored sample failed: {reason}")),
        };
        lifted
            .iter()
            .find_map(|out| match self.entries.get(&out.event_type) {
                None => Some(format!(
                    "upcasters lift it into {} v{}, which this code does not know",
                    out.event_type, out.schema_version
                )),
                Some(entry) if entry.version != out.schema_version => Some(format!(
                    "upcasters lift it into {} v{}, but this code reads version {}",
                    out.event_type, out.schema_version, entry.version
                )),
                Some(_) => None,
            })
    }

    /// The catalogue as JSON: each type with its current version, the Rust type holding it,
    /// its JSON Schema when known, and the older stored versions upcasters lift.
    pub fn export(&self) -> Value {
        let types: Vec<Value> = self
            .entries
            .values()
            .map(|e| {
                let lifted: Vec<u32> = (1..e.version)
                    .filter(|v| self.upcasters.lifts_from(&e.name, *v))
                    .collect();
                json!({
                    "name": e.name,
                    "version": e.version,
                    "rust_type": e.rust_type,
                    "reads_older_versions": lifted,
                    "schema": e.schema,
                })
            })
            .collect();
        json!({ "event_types": types })
    }
}

impl std::fmt::Debug for EventCatalogue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventCatalogue")
            .field("entries", &self.entries)
            .field("conflicts", &self.conflicts)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::evolution::{LedgerEvent, ledger_upcasters};

    #[test]
    fn stored_types_are_judged_against_the_code_and_its_upcasters() {
        let catalogue = EventCatalogue::new(Arc::new(ledger_upcasters())).add::<LedgerEvent>();
        assert_eq!(catalogue.unreadable("Credited", 3), None);
        assert_eq!(catalogue.unreadable("Credited", 2), None);
        assert_eq!(catalogue.unreadable("Credited", 1), None);
        assert!(catalogue.unreadable("Credited", 9).is_some());
        assert_eq!(
            catalogue.unreadable("Noted", 1),
            None,
            "renamed by an upcaster"
        );
        assert!(catalogue.unreadable("Noted", 7).is_some());
        assert!(catalogue.unreadable("Gone", 1).is_some());
        let bare = EventCatalogue::new(Arc::new(Upcasters::new())).add::<LedgerEvent>();
        assert!(
            bare.unreadable("Credited", 1)
                .unwrap()
                .contains("version 1")
        );
    }

    #[test]
    fn a_sample_shows_where_an_upcaster_chain_ends() {
        let catalogue = EventCatalogue::new(Arc::new(ledger_upcasters())).add::<LedgerEvent>();
        assert_eq!(
            catalogue.unreadable_sample("Credited", 1, json!({ "amount": 5 })),
            None
        );
        assert_eq!(
            catalogue.unreadable_sample("Noted", 1, json!({ "note": "x" })),
            None
        );
        // A rename into a type this code no longer has.
        let renamed = Upcasters::new().add_transform("Old", 1, |p| {
            Ok(vec![crate::Upcasted {
                event_type: "Gone".into(),
                schema_version: 1,
                payload: p,
            }])
        });
        let catalogue = EventCatalogue::new(Arc::new(renamed)).add::<LedgerEvent>();
        assert_eq!(catalogue.unreadable("Old", 1), None, "a step exists");
        let reason = catalogue.unreadable_sample("Old", 1, json!({})).unwrap();
        assert!(reason.contains("Gone v1"), "{reason}");
        // A step that fails on stored data, and one that jumps a version.
        let failing = Upcasters::new().add("Credited", 2, |_| Err("no memo".into()));
        let catalogue = EventCatalogue::new(Arc::new(failing)).add::<LedgerEvent>();
        let reason = catalogue
            .unreadable_sample("Credited", 2, json!({}))
            .unwrap();
        assert!(reason.contains("no memo"), "{reason}");
        let jump = Upcasters::new().add_transform("Credited", 1, |p| {
            Ok(vec![crate::Upcasted {
                event_type: "Credited".into(),
                schema_version: 3,
                payload: p,
            }])
        });
        let catalogue = EventCatalogue::new(Arc::new(jump)).add::<LedgerEvent>();
        assert_eq!(catalogue.unreadable("Credited", 1), None);
        assert_eq!(catalogue.unreadable_sample("Credited", 1, json!({})), None);
    }

    #[test]
    fn the_export_lists_each_type_once_with_what_it_reads() {
        let catalogue = EventCatalogue::new(Arc::new(ledger_upcasters()))
            .add_with_schemas::<LedgerEvent>(|name| {
                (name == "Debited").then(|| json!({ "type": "object" }))
            })
            .add::<LedgerEvent>();
        assert!(catalogue.conflicts().is_empty());
        let exported = catalogue.export();
        let types = exported["event_types"].as_array().unwrap();
        assert_eq!(types.len(), 3);
        let credited = types.iter().find(|t| t["name"] == "Credited").unwrap();
        assert_eq!(credited["version"], 3);
        assert_eq!(credited["reads_older_versions"], json!([1, 2]));
        let debited = types.iter().find(|t| t["name"] == "Debited").unwrap();
        assert_eq!(debited["schema"], json!({ "type": "object" }));
    }
}
